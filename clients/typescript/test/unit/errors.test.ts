// The error classes against the one list of reasons (the proto's ErrorReason
// enum, generated), their accessors, and the call policy: deadline per call,
// RetryInfo, request id, the entry iterator and the reservation helper.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createRouterTransport } from "@connectrpc/connect";

import { ErrorInfoSchema, RetryInfoSchema } from "../../src/gen/google/rpc/error_details_pb.js";
import {
  AmountExceedsRemaining,
  AmountExceedsSettled,
  type ChargeRequest,
  ChargeResponseSchema,
  DeadlineExceeded,
  ErrorReason,
  FailedPrecondition,
  KNOWN_REASONS,
  LedgerClient,
  LedgerError,
  LedgerService,
  RateLimited,
  REQUEST_ID_HEADER,
  Reservation_State,
  Unavailable,
  errorClassOf,
  toLedgerError,
} from "../../src/index.js";

const PREFIX = "ERROR_REASON_";

/** The wire strings of the generated enum, UNSPECIFIED left out. */
function protoReasons(): string[] {
  return Object.keys(ErrorReason)
    .filter((name) => Number.isNaN(Number(name)))
    .filter((name) => name !== "UNSPECIFIED")
    .map((name) => (name.startsWith(PREFIX) ? name.slice(PREFIX.length) : name));
}

function reasonError(
  code: Code,
  reason: string,
  metadata: Record<string, string> = {},
  retryDelayMs?: number,
): ConnectError {
  const details: ConstructorParameters<typeof ConnectError>[3] = [
    { desc: ErrorInfoSchema, value: { reason, domain: "creditledger.v1", metadata } },
  ];
  if (retryDelayMs !== undefined) {
    details.push({
      desc: RetryInfoSchema,
      value: {
        retryDelay: { seconds: BigInt(Math.floor(retryDelayMs / 1000)), nanos: (retryDelayMs % 1000) * 1_000_000 },
      },
    });
  }
  return new ConnectError(`${reason} from the fake`, code, undefined, details);
}

function fakeCharge(handler: (request: ChargeRequest, headers: Headers, attempt: number) => void): {
  client: LedgerClient;
  arrivals: number[];
  headers: Headers[];
} {
  const arrivals: number[] = [];
  const headers: Headers[] = [];
  const transport = createRouterTransport((router: ConnectRouter) => {
    router.service(LedgerService, {
      charge(request, context) {
        arrivals.push(performance.now());
        headers.push(context.requestHeader);
        handler(request, context.requestHeader, arrivals.length);
        return create(ChargeResponseSchema, {});
      },
    });
  });
  const client = new LedgerClient({
    target: "unused",
    transport,
    retry: { initialBackoffMs: 1, maxBackoffMs: 5, maxAttempts: 100_000 },
  });
  return { client, arrivals, headers };
}

describe("error classes", { timeout: 10_000 }, () => {
  test("one class per reason of the proto's ErrorReason enum, no more", () => {
    const reasons = protoReasons();
    assert.ok(reasons.length >= 18, reasons.join());
    assert.deepEqual([...KNOWN_REASONS].sort(), [...reasons].sort());
    for (const reason of reasons) {
      const cls = errorClassOf(reason);
      assert.ok(cls !== undefined, reason);
      const error = toLedgerError(reasonError(Code.FailedPrecondition, reason), { attempts: 1 });
      assert.ok(error instanceof cls && error instanceof LedgerError, reason);
      assert.equal(error.reason, reason);
    }
  });

  test("typed accessors: remaining, refundable, retry delay, request id", () => {
    const remaining = toLedgerError(
      reasonError(Code.FailedPrecondition, "AMOUNT_EXCEEDS_REMAINING", { remaining: "200", requested: "300" }),
      { attempts: 1 },
    );
    assert.ok(remaining instanceof AmountExceedsRemaining && remaining instanceof FailedPrecondition);
    assert.equal(remaining.remaining, 200n);
    assert.equal(remaining.requested, 300n);
    const refund = toLedgerError(
      reasonError(Code.FailedPrecondition, "AMOUNT_EXCEEDS_SETTLED", { refundable: "5", request_id: "srv-1" }),
      { attempts: 1, requestId: "sent-1" },
    );
    assert.ok(refund instanceof AmountExceedsSettled);
    assert.equal(refund.refundable, 5n);
    assert.equal(refund.requestId, "srv-1"); // the server's wins over the one sent
    const limited = toLedgerError(reasonError(Code.ResourceExhausted, "RATE_LIMITED", {}, 1_250), {
      attempts: 1,
      requestId: "sent-2",
    });
    assert.ok(limited instanceof RateLimited && limited.retryable);
    assert.equal(limited.retryDelayMs, 1_250);
    assert.equal(limited.requestId, "sent-2");
    const bare = toLedgerError(new ConnectError("down", Code.Unavailable), { attempts: 1 });
    assert.ok(bare instanceof Unavailable);
    assert.equal(bare.retryDelayMs, undefined);
  });
});

describe("call policy", { timeout: 20_000 }, () => {
  test("a call's timeoutMs bounds the whole call, retries included", async () => {
    const { client, arrivals } = fakeCharge(() => {
      throw new ConnectError("restarting", Code.Unavailable);
    });
    const started = performance.now();
    await assert.rejects(
      client.charge({ accountId: "a", asset: "email", amount: 1 }, { timeoutMs: 500 }),
      (error: unknown) => error instanceof Unavailable || error instanceof DeadlineExceeded,
    );
    // A generous bound: without the per-call deadline this runs 30 s.
    assert.ok(performance.now() - started < 3_000, `took ${String(performance.now() - started)} ms`);
    assert.ok(arrivals.length >= 2, "it retried inside the deadline");
  });

  test("the server's RetryInfo delay is waited before the retry", async () => {
    const { client, arrivals } = fakeCharge((_request, _headers, attempt) => {
      if (attempt === 1) {
        throw reasonError(Code.ResourceExhausted, "RATE_LIMITED", {}, 300);
      }
    });
    await client.charge({ accountId: "a", asset: "email", amount: 1 });
    assert.equal(arrivals.length, 2);
    const [first = 0, second = 0] = arrivals;
    assert.ok(second - first >= 295, `retried after ${String(second - first)} ms`); // backoff alone: <= 5 ms
  });

  test("a RetryInfo delay past the deadline ends the call with the delay on the error", async () => {
    const { client, arrivals } = fakeCharge(() => {
      throw reasonError(Code.ResourceExhausted, "RATE_LIMITED", {}, 5_000);
    });
    await assert.rejects(client.charge({ accountId: "a", asset: "email", amount: 1 }, { timeoutMs: 1_000 }), (e: unknown) => {
      assert.ok(e instanceof RateLimited);
      assert.equal(e.retryDelayMs, 5_000);
      return true;
    });
    assert.equal(arrivals.length, 1);
  });

  test("one x-request-id per call, on every attempt and on the error; the caller's is kept", async () => {
    const { client, headers } = fakeCharge(() => {
      throw new ConnectError("down", Code.Unavailable);
    });
    const error = await client
      .charge({ accountId: "a", asset: "email", amount: 1 }, { retry: { maxAttempts: 3 } })
      .then(() => assert.fail("should fail"), (e: unknown) => e);
    const sent = headers.map((h) => h.get(REQUEST_ID_HEADER));
    assert.equal(sent.length, 3);
    assert.equal(new Set(sent).size, 1);
    assert.ok(error instanceof LedgerError);
    assert.equal(error.requestId, sent[0]);

    const ok = fakeCharge(() => {});
    await ok.client.charge({ accountId: "a", asset: "email", amount: 1 }, { headers: { "X-Request-Id": "mine-1", "x-job": "j" } });
    assert.equal(ok.headers[0]?.get(REQUEST_ID_HEADER), "mine-1");
    assert.equal(ok.headers[0]?.get("x-job"), "j");
  });

  test("iterEntries walks every page", async () => {
    const transport = createRouterTransport((router: ConnectRouter) => {
      router.service(LedgerService, {
        listEntries(request) {
          const page = request.pageToken === "" ? 0 : Number(request.pageToken);
          return {
            entries: [{ entryId: String(page * 2) }, { entryId: String(page * 2 + 1) }],
            nextPageToken: page < 2 ? String(page + 1) : "",
          };
        },
      });
    });
    const client = new LedgerClient({ target: "unused", transport });
    const ids: string[] = [];
    for await (const entry of client.iterEntries({ accountId: "a" })) {
      ids.push(entry.entryId);
    }
    assert.deepEqual(ids, ["0", "1", "2", "3", "4", "5"]);
  });

  test("withReservation settles what was used when the work throws, with a derived key", async () => {
    const settles: { amount: bigint; final: boolean; key: string }[] = [];
    const releases: string[] = [];
    const transport = createRouterTransport((router: ConnectRouter) => {
      router.service(LedgerService, {
        reserve(request) {
          return {
            reservation: {
              reservationId: "res-1",
              amount: request.amount,
              remaining: request.amount,
              state: Reservation_State.OPEN,
            },
          };
        },
        settle(request) {
          settles.push({ amount: request.amount, final: request.final, key: request.idempotencyKey });
          return {};
        },
        release(request) {
          releases.push(request.idempotencyKey);
          return {};
        },
      });
    });
    const client = new LedgerClient({ target: "unused", transport });
    await assert.rejects(
      client.withReservation({ accountId: "a", asset: "crm", amount: 3_000 }, async (hold) => {
        hold.use(2_800);
        await Promise.resolve();
        throw new Error("send failed");
      }),
      /send failed/,
    );
    assert.deepEqual(settles, [{ amount: 2_800n, final: true, key: "hold:res-1:settle" }]);
    await assert.rejects(
      client.withReservation(
        { accountId: "a", asset: "crm", amount: 3_000 },
        async (hold) => {
          hold.use(10);
          await Promise.resolve();
          throw new Error("worthless");
        },
        { onError: "release" },
      ),
      /worthless/,
    );
    assert.deepEqual(releases, ["hold:res-1:release"]);
  });
});
