// SubmitBatch and the Batcher against the real Python server on loopback:
// per-command outcomes in order, typed per-command errors, replays per
// command, and an atomic batch that fails whole naming the command.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { IdempotencyKeyReused, InsufficientCredits, LedgerClient } from "../../src/index.js";
import { type LedgerServer, startLedgerServer } from "./server.js";

const ASSET = "email";

describe("SubmitBatch against ledger serve", { timeout: 180_000 }, () => {
  let server: LedgerServer;
  let client: LedgerClient;

  before(async () => {
    server = await startLedgerServer();
    client = new LedgerClient({ target: server.target });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  async function funded(amount: number): Promise<string> {
    const accountId = `batch-${randomBytes(4).toString("hex")}`;
    await client.createAccount({ accountId });
    await client.grant({ accountId, asset: ASSET, amount });
    return accountId;
  }

  test("each command's own outcome, in order; a second submit replays each", async () => {
    const accountId = await funded(10);
    const commands = [
      { charge: { accountId, asset: ASSET, amount: 4, idempotencyKey: `a-${accountId}` } },
      { charge: { accountId, asset: ASSET, amount: 40, idempotencyKey: `b-${accountId}` } },
      { grant: { accountId, asset: ASSET, amount: 1, idempotencyKey: `c-${accountId}` } },
    ];
    const outcomes = await client.submitBatch(commands);
    assert.deepEqual(
      outcomes.map((o) => (o.ok ? o.kind : o.error.reason)),
      ["charge", "INSUFFICIENT_CREDITS", "grant"],
    );
    const failed = outcomes[1];
    assert.ok(failed !== undefined && !failed.ok && failed.error instanceof InsufficientCredits);
    assert.equal(failed.error.requested, 40n);
    const again = await client.submitBatch(commands);
    assert.deepEqual(
      again.map((o) => o.replayed),
      [true, true, true],
    );
    const { balance } = await client.getBalance({ accountId, asset: ASSET });
    assert.equal(balance?.available, 7n);
  });

  test("an atomic batch fails whole, naming the command, and records nothing", async () => {
    const accountId = await funded(5);
    const commands = [
      { charge: { accountId, asset: ASSET, amount: 2, idempotencyKey: `x-${accountId}` } },
      { charge: { accountId, asset: ASSET, amount: 9, idempotencyKey: `y-${accountId}` } },
    ];
    await assert.rejects(client.submitBatch(commands, { atomic: true }), (error: unknown) => {
      assert.ok(error instanceof InsufficientCredits, String(error));
      assert.equal(error.metadata["batch_index"], "1");
      return true;
    });
    assert.equal((await client.getBalance({ accountId, asset: ASSET })).balance?.available, 5n);
    await client.grant({ accountId, asset: ASSET, amount: 6 });
    const outcomes = await client.submitBatch(commands, { atomic: true });
    assert.deepEqual(
      outcomes.map((o) => o.ok && !o.replayed),
      [true, true],
    );
  });

  test("the Batcher settles each caller's own promise", async () => {
    const accountId = await funded(30);
    const batcher = client.batcher({ maxCommands: 8, maxDelayMs: 20 });
    const key = `k-${accountId}`;
    const charges = Array.from({ length: 20 }, () => batcher.charge({ accountId, asset: ASSET, amount: 1 }));
    // Handlers attached before the flush, so no rejection goes unhandled for a moment.
    const over = assert.rejects(batcher.charge({ accountId, asset: ASSET, amount: 1000 }), InsufficientCredits);
    const first = batcher.charge({ accountId, asset: ASSET, amount: 2, idempotencyKey: key });
    const reused = assert.rejects(
      batcher.charge({ accountId, asset: ASSET, amount: 3, idempotencyKey: key }),
      IdempotencyKeyReused,
    );
    await batcher.close();
    const done = await Promise.all(charges);
    assert.equal(new Set(done.map((c) => c.reservation?.reservationId)).size, 20);
    await over;
    assert.equal((await first).replayed, false);
    await reused;
    assert.equal((await client.getBalance({ accountId, asset: ASSET })).balance?.available, 8n);
  });
});
