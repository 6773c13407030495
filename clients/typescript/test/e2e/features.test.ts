// The methods of issues 17, 18 and 23 against the real Python server: the
// change stream reconnecting through a proxy that cuts its connections,
// as-of balances, statements, alerts, spending limits and caps with
// preconditions, VoidGrant, grant schedules and breakage.
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { type Server, type Socket, connect, createServer } from "node:net";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";

import {
  AmountExceedsUnspent,
  BalanceEvent_Kind,
  CapExceeded,
  CapWindow,
  Comparison_Operator,
  Entry_Movement,
  GrantSchedule_PeriodUnit,
  GrantSchedule_State,
  InvalidArgument,
  LedgerClient,
  LotNotFound,
  OverageMode,
  PreconditionFailed,
  ScheduleNotFound,
  type StreamedTransaction,
  timestampFromDate,
} from "../../src/index.js";
import { type LedgerServer, startLedgerServer } from "./server.js";

const ASSET = "email_sends";

/** A loopback TCP proxy whose cut() drops every connection it carries; it keeps accepting. */
class CuttableProxy {
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;
  connections = 0;

  constructor(private readonly upstreamPort: number) {
    this.server = createServer((client) => {
      this.connections += 1;
      const upstream = connect(this.upstreamPort, "127.0.0.1");
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("error", () => undefined);
        socket.on("close", () => {
          this.sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  async start(): Promise<string> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    const address = this.server.address();
    assert.ok(address !== null && typeof address !== "string");
    return `127.0.0.1:${address.port}`;
  }

  cut(): void {
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  close(): void {
    this.cut();
    this.server.close();
  }
}

async function take(client: LedgerClient, n: number, input: Parameters<LedgerClient["watchTransactions"]>[0]) {
  const got: StreamedTransaction[] = [];
  for await (const transaction of client.watchTransactions(input)) {
    got.push(transaction);
    if (got.length === n) {
      break;
    }
  }
  return got;
}

describe("issues 17, 18 and 23 against ledger serve", { timeout: 180_000 }, () => {
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

  test("the stream reconnects after UNAVAILABLE from the last position it yielded", async () => {
    const tenant = `w${randomBytes(4).toString("hex")}-`;
    const accountId = `${tenant}a`;
    await client.createAccount({ accountId });
    await client.grant({ accountId, asset: ASSET, amount: 100 });
    const proxy = new CuttableProxy(Number(server.target.split(":")[1]));
    const through = new LedgerClient({ target: await proxy.start(), retry: { initialBackoffMs: 10, maxBackoffMs: 100 } });
    try {
      const seen: StreamedTransaction[] = [];
      let progress: () => void = () => undefined;
      const consumer = (async () => {
        for await (const transaction of through.watchTransactions({ accountPrefix: tenant })) {
          seen.push(transaction);
          progress();
          if (seen.length === 7) {
            return;
          }
        }
      })();
      let failed: unknown;
      consumer.catch((error: unknown) => (failed = error));
      const charge = async (): Promise<void> => {
        const next = new Promise<void>((resolve) => (progress = resolve));
        await client.charge({ accountId, asset: ASSET, amount: 1 });
        const late = new Promise<void>((resolve) => setTimeout(resolve, 10_000));
        await Promise.race([next, late, consumer]);
        if (failed !== undefined) {
          throw failed;
        }
      };
      for (const cutAfter of [3, 5]) {
        while (seen.length < cutAfter) {
          await charge();
        }
        proxy.cut(); // UNAVAILABLE on the stream: it must resume, not end or repeat
      }
      while (seen.length < 7) {
        await charge();
      }
      await consumer;
      const expected = await take(client, 7, { accountPrefix: tenant });
      assert.ok(proxy.connections >= 3, `reconnected: ${proxy.connections} connections`);
      assert.deepEqual(
        seen.map((t) => t.position),
        expected.map((t) => t.position),
      );
      assert.equal(seen[0]?.movement, Entry_Movement.GRANT);
      assert.deepEqual(
        seen.slice(1).map((t) => t.balances[0]?.available),
        [99n, 98n, 97n, 96n, 95n, 94n],
      );
    } finally {
      through.close();
      proxy.close();
    }
  });

  test("as-of balances, statements and alerts", async () => {
    const tenant = `s${randomBytes(4).toString("hex")}-`;
    const accountId = `${tenant}a`;
    const start = new Date(Date.now() - 1_000);
    await client.createAccount({ accountId });
    await client.grant({ accountId, asset: ASSET, amount: 100 });
    const alert = await client.setBalanceAlert({ accountId, asset: ASSET, threshold: 50, recovery: 80 });
    assert.equal(alert?.thresholdAmount, 50n);
    assert.deepEqual(
      (await client.listBalanceAlerts({ accountId })).map((a) => a.asset),
      [ASSET],
    );
    await client.charge({ accountId, asset: ASSET, amount: 30 });
    await client.charge({ accountId, asset: ASSET, amount: 30 });
    const txs = await take(client, 3, { accountPrefix: tenant });
    assert.deepEqual(
      txs[2]?.events.map((e) => e.kind),
      [BalanceEvent_Kind.BALANCE_BELOW],
    );
    const atGrant = await client.getBalance({ accountId, asset: ASSET, asOfPosition: txs[0]?.position ?? "" });
    assert.equal(atGrant.balance?.available, 100n);
    const commit = txs[1]?.commitTime;
    assert.ok(commit !== undefined);
    const atFirst = await client.getBalance({ accountId, asset: ASSET, asOfTime: commit });
    assert.equal(atFirst.balance?.available, 70n);
    await assert.rejects(
      client.getBalance({ accountId, asset: ASSET, asOfTime: commit, includeLots: true }),
      InvalidArgument,
    );
    const statement = await client.getStatement({
      accountId,
      asset: ASSET,
      fromTime: timestampFromDate(start),
      toTime: txs[2]?.commitTime ?? commit, // a Date would drop the microseconds
      pageSize: 1,
    });
    assert.equal(statement.opening?.available, 0n);
    assert.equal(statement.closing?.available, 40n);
    assert.equal(statement.entries.length, 1);
    assert.notEqual(statement.nextPageToken, "");
    assert.equal(await client.deleteBalanceAlert({ accountId, asset: ASSET }), true);
    assert.equal(await client.deleteBalanceAlert({ accountId, asset: ASSET }), false);
  });

  test("spending limits, member caps, preconditions and overage", async () => {
    const pool = `pool-${randomBytes(4).toString("hex")}`;
    const member = `${pool}:m`;
    await client.createAccount({ accountId: pool });
    const granted = await client.grant({ accountId: pool, asset: ASSET, amount: 100 });
    const idempotencyKey = randomUUID();
    const limits = await client.setSpendingLimits({ accountId: pool, asset: ASSET, floor: -20, idempotencyKey });
    assert.equal(limits.balance?.floor, -20n);
    assert.equal((await client.setSpendingLimits({ accountId: pool, asset: ASSET, floor: -20, idempotencyKey })).replayed, true);
    await assert.rejects(
      client.charge({
        accountId: pool,
        asset: ASSET,
        amount: 1,
        preconditions: [{ version: granted.balance?.version ?? 0n }],
      }),
      PreconditionFailed,
    );
    const debt = await client.charge({
      accountId: pool,
      asset: ASSET,
      amount: 110,
      overage: OverageMode.DEBT,
      preconditions: [
        { version: limits.balance?.version ?? 0n, available: { operator: Comparison_Operator.GE, value: 100n } },
      ],
    });
    assert.equal(debt.balance?.debt, 10n);
    const created = await client.createAccount({ accountId: member, parentId: pool });
    assert.equal(created.account?.parentId, pool);
    await client.grant({ accountId: pool, asset: ASSET, amount: 60 });
    const capped = await client.setMemberCap({ accountId: member, asset: ASSET, window: CapWindow.DAY, cap: 30 });
    assert.equal(capped.balance?.capDay, 30n);
    await assert.rejects(client.charge({ accountId: member, asset: ASSET, amount: 31 }), CapExceeded);
    const partial = await client.reserve({ accountId: member, asset: ASSET, amount: 31, overage: OverageMode.CAP });
    assert.equal(partial.taken, 30n);
    // A group in CAP mode: each leg takes what is left for it (the member's cap is spent).
    const group = await client.reserveGroup({
      legs: [
        { accountId: pool, asset: ASSET, amount: 5, legKey: "pool" },
        { accountId: member, asset: ASSET, amount: 5, legKey: "member" },
      ],
      overage: OverageMode.CAP,
    });
    assert.deepEqual(
      group.group?.reservations.map((r) => [r.legKey, r.amount, r.reservationId !== ""]),
      [
        ["pool", 5n, true],
        ["member", 0n, false],
      ],
    );
    const removed = await client.setMemberCap({ accountId: member, asset: ASSET, window: CapWindow.DAY });
    assert.equal(removed.balance?.capDay, undefined);
  });

  test("VoidGrant, grant schedules and breakage", async () => {
    const accountId = `sched-${randomBytes(4).toString("hex")}`;
    await client.createAccount({ accountId });
    const granted = await client.grant({
      accountId,
      asset: ASSET,
      amount: 100,
      category: "promotional",
      unitCostMicros: 2_000n,
      costCurrency: "USD",
    });
    const lotId = granted.lot?.lotId ?? "";
    const voided = await client.voidGrant({ lotId, amount: 40, reason: "goodwill expired" });
    assert.equal(voided.voided, 40n);
    assert.equal(voided.balance?.available, 60n);
    await assert.rejects(client.voidGrant({ lotId, amount: 61 }), AmountExceedsUnspent);
    await assert.rejects(client.voidGrant({ lotId: randomUUID() }), LotNotFound);

    const created = await client.createGrantSchedule({
      accountId,
      asset: ASSET,
      amount: 500,
      periodUnit: GrantSchedule_PeriodUnit.MONTH,
      category: "allowance",
      rollover: { capPercent: 50 },
    });
    const scheduleId = created.schedule?.scheduleId ?? "";
    assert.equal(created.balance?.available, 560n);
    assert.equal((await client.getGrantSchedule({ scheduleId })).schedule?.state, GrantSchedule_State.ACTIVE);
    const updated = await client.updateGrantSchedule({ scheduleId, amount: 600 });
    assert.equal(updated.schedule?.amount, 600n);
    const second = await client.createGrantSchedule({
      accountId,
      asset: ASSET,
      amount: 1,
      periodUnit: GrantSchedule_PeriodUnit.DAY,
    });
    const listed: string[] = [];
    for await (const schedule of client.iterGrantSchedules({ accountId, pageSize: 1 })) {
      listed.push(schedule.scheduleId);
    }
    assert.deepEqual(listed, [scheduleId, second.schedule?.scheduleId]);
    const cancelled = await client.cancelGrantSchedule({ scheduleId, voidRemainder: true });
    assert.equal(cancelled.schedule?.state, GrantSchedule_State.CANCELLED);
    assert.equal(cancelled.balance?.available, 61n);
    await assert.rejects(client.getGrantSchedule({ scheduleId: randomUUID() }), ScheduleNotFound);

    await client.grant({
      accountId,
      asset: "sms",
      amount: 10,
      expiresAt: timestampFromDate(new Date(Date.now() + 1_000)),
      category: "promotional",
      unitCostMicros: 1_000n,
      costCurrency: "USD",
    });
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const breakage = await client.getBreakage({ accountId, asset: "sms" });
    assert.equal(breakage.credits, 10n);
    assert.deepEqual(
      breakage.lines.map((l) => [l.category, l.costMicros]),
      [["promotional", 10_000n]],
    );
  });
});
