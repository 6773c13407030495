// The email scenario of the README against the real Python server on
// loopback: 30 credits buy 30 emails, the 31st is refused, and a retried
// charge is replayed instead of charged twice.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  AccountNotFound,
  IdempotencyKeyReused,
  InsufficientCredits,
  InvalidArgument,
  LedgerClient,
  Reservation_State,
} from "../../src/index.js";
import { type LedgerServer, startLedgerServer } from "./server.js";

const ASSET = "email";

describe("email scenario against ledger serve", { timeout: 180_000 }, () => {
  let server: LedgerServer;
  let client: LedgerClient;
  const accountId = `acme-${randomBytes(4).toString("hex")}`;

  before(async () => {
    server = await startLedgerServer();
    client = new LedgerClient({ target: server.target });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("30 credits pay for 30 emails; the 31st is InsufficientCredits; balance 0", async () => {
    const created = await client.createAccount({ accountId, metadata: { plan: "starter" } });
    assert.equal(created.account?.accountId, accountId);
    const granted = await client.grant({ accountId, asset: ASSET, amount: 30, source: "purchase" });
    assert.equal(granted.replayed, false);
    assert.equal(granted.balance?.available, 30n);

    for (let i = 0; i < 30; i++) {
      const charged = await client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: `email-${String(i)}` });
      assert.equal(charged.replayed, false);
      assert.equal(charged.reservation?.state, Reservation_State.CLOSED);
      assert.equal(charged.balance?.available, BigInt(29 - i));
    }

    await assert.rejects(
      client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: "email-30" }),
      (error: unknown) => {
        assert.ok(error instanceof InsufficientCredits, String(error));
        assert.equal(error.reason, "INSUFFICIENT_CREDITS");
        assert.equal(error.domain, "creditledger.v1");
        assert.equal(error.available, 0n);
        assert.equal(error.requested, 1n);
        assert.equal(error.attempts, 1);
        return true;
      },
    );

    const { balance } = await client.getBalance({ accountId, asset: ASSET });
    assert.equal(balance?.available, 0n);
    assert.equal(balance?.reserved, 0n);
    assert.equal(balance?.granted, 30n);
    assert.equal(balance?.settled, 30n);
  });

  test("a retry with the same key is replayed and charges nothing", async () => {
    const topUp = await client.grant({ accountId, asset: ASSET, amount: 5, idempotencyKey: "top-up-1" });
    assert.equal(topUp.balance?.available, 5n);

    const first = await client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: "email-retry" });
    const retry = await client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: "email-retry" });
    assert.equal(first.replayed, false);
    assert.equal(retry.replayed, true);
    assert.equal(retry.reservation?.reservationId, first.reservation?.reservationId);

    const { balance } = await client.getBalance({ accountId, asset: ASSET });
    assert.equal(balance?.available, 4n, "the replay must not charge again");
    assert.equal(balance?.settled, 31n);

    // The 31st email's refusal was its key's first outcome: it stays final,
    // even now that credits are available, and says it is a replay.
    await assert.rejects(
      client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: "email-30" }),
      (error: unknown) => {
        assert.ok(error instanceof InsufficientCredits, String(error));
        assert.equal(error.replayed, true);
        return true;
      },
    );

    // An old email's key from the first test is replayed too, long after.
    const old = await client.charge({ accountId, asset: ASSET, amount: 1, idempotencyKey: "email-0" });
    assert.equal(old.replayed, true);
    assert.equal((await client.getBalance({ accountId, asset: ASSET })).balance?.available, 4n);
  });

  test("typed errors from the real server", async () => {
    await assert.rejects(client.getAccount({ accountId: "nobody-here" }), AccountNotFound);
    await assert.rejects(
      client.charge({ accountId, asset: ASSET, amount: 2, idempotencyKey: "email-retry" }),
      IdempotencyKeyReused,
    );
    await assert.rejects(client.grant({ accountId, asset: ASSET, amount: 0 }), (error: unknown) => {
      assert.ok(error instanceof InvalidArgument, String(error));
      const fields = error.fieldViolations.map((violation) => violation.field);
      assert.ok(fields.includes("amount"), JSON.stringify(error.fieldViolations));
      return true;
    });
  });
});
