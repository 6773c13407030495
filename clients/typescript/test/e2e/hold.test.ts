// The reservation helper against the real Python server: a run that used
// 2,800 of 3,000 credits and then failed pays for the 2,800 and gives 200
// back; a rerun with the same reserve key replays instead of failing.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { AccountNotFound, LedgerClient, Reservation_State } from "../../src/index.js";
import { type LedgerServer, startLedgerServer } from "./server.js";

const ASSET = "crm_credits";

describe("withReservation against ledger serve", { timeout: 180_000 }, () => {
  let server: LedgerServer;
  let client: LedgerClient;
  const accountId = `crm-${randomBytes(4).toString("hex")}`;

  before(async () => {
    server = await startLedgerServer();
    client = new LedgerClient({ target: server.target });
    await client.createAccount({ accountId });
    await client.grant({ accountId, asset: ASSET, amount: 3_000 });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("2,800 used then an error: 2,800 settled, 200 released; a rerun replays", async () => {
    const input = { accountId, asset: ASSET, amount: 3_000, idempotencyKey: `run-${randomBytes(4).toString("hex")}` };
    let reservationId = "";
    await assert.rejects(
      client.withReservation(input, async (hold) => {
        reservationId = hold.reservationId;
        for (let i = 0; i < 28; i++) {
          hold.use(100);
        }
        await Promise.resolve();
        throw new Error("the 2,801st send failed");
      }),
      /2,801st/,
    );
    const { reservation } = await client.getReservation({ reservationId });
    assert.equal(reservation?.settled, 2_800n);
    assert.equal(reservation?.released, 200n);
    assert.equal(reservation?.state, Reservation_State.CLOSED);
    const before = (await client.getBalance({ accountId, asset: ASSET })).balance;
    assert.equal(before?.available, 200n);
    assert.equal(before?.settled, 2_800n);

    const rerun = await client.withReservation(input, async (hold) => {
      assert.equal(hold.replayed, true);
      assert.equal(hold.finished, true);
      assert.equal(hold.reservationId, reservationId);
      assert.throws(() => hold.use(1), /already closed/);
      return "skipped";
    });
    assert.equal(rerun, "skipped");
    const afterRerun = (await client.getBalance({ accountId, asset: ASSET })).balance;
    assert.equal(afterRerun?.settled, 2_800n, "no second settle");
    assert.equal(afterRerun?.available, 200n);
  });

  test("errors from the real server carry a request id", async () => {
    await assert.rejects(client.getAccount({ accountId: "nobody-here" }), (error: unknown) => {
      assert.ok(error instanceof AccountNotFound);
      assert.ok(error.requestId !== "");
      return true;
    });
  });
});
