// ListReservations against the real Python server: an account's open holds,
// oldest first, a page at a time, filtered by state.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { InvalidArgument, LedgerClient, Reservation_State } from "../../src/index.js";
import { type LedgerServer, startLedgerServer } from "./server.js";

const ASSET = "sms";

describe("listReservations against ledger serve", { timeout: 180_000 }, () => {
  let server: LedgerServer;
  let client: LedgerClient;
  const accountId = `ops-${randomBytes(4).toString("hex")}`;

  before(async () => {
    server = await startLedgerServer();
    client = new LedgerClient({ target: server.target });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("open holds page by page, oldest first; a closed one only under CLOSED", async () => {
    await client.createAccount({ accountId });
    await client.grant({ accountId, asset: ASSET, amount: 100 });
    const held: string[] = [];
    for (let i = 0; i < 3; i++) {
      const reserved = await client.reserve({ accountId, asset: ASSET, amount: 10 });
      held.push(reserved.reservation?.reservationId ?? "");
    }
    await client.charge({ accountId, asset: ASSET, amount: 5 });

    const first = await client.listReservations({ accountId, state: Reservation_State.OPEN, pageSize: 2 });
    assert.equal(first.reservations.length, 2);
    assert.notEqual(first.nextPageToken, "");
    const second = await client.listReservations({
      accountId,
      state: Reservation_State.OPEN,
      pageSize: 2,
      pageToken: first.nextPageToken,
    });
    assert.equal(second.nextPageToken, "");
    const ids = [...first.reservations, ...second.reservations].map((r) => r.reservationId);
    assert.deepEqual(ids, held);

    const closed = await client.listReservations({ accountId, state: Reservation_State.CLOSED });
    assert.equal(closed.reservations.length, 1);
    assert.equal(closed.reservations[0]?.settled, 5n);
  });

  test("a token of another query is InvalidArgument naming page_token", async () => {
    const page = await client.listReservations({ accountId, state: Reservation_State.OPEN, pageSize: 1 });
    await assert.rejects(
      client.listReservations({ accountId, state: Reservation_State.CLOSED, pageToken: page.nextPageToken }),
      (error: unknown) => {
        assert.ok(error instanceof InvalidArgument, String(error));
        assert.equal(error.fieldViolations[0]?.field, "page_token");
        return true;
      },
    );
  });
});
