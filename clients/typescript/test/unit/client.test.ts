// The client's policy against an in-memory fake of the service (Connect's
// router transport): no server, no network, milliseconds per test.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type HandlerContext,
  createRouterTransport,
} from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema } from "../../src/gen/google/rpc/error_details_pb.js";
import {
  AccountExists,
  ChargeResponseSchema,
  type ChargeRequest,
  DEFAULT_RETRY_POLICY,
  InsufficientCredits,
  InvalidArgument,
  LedgerClient,
  LedgerError,
  LedgerService,
  backoffMs,
} from "../../src/index.js";

const FAST_RETRIES = { initialBackoffMs: 1, maxBackoffMs: 2 };

function reasonError(code: Code, reason: string, metadata: Record<string, string> = {}): ConnectError {
  return new ConnectError(`${reason} from the fake`, code, undefined, [
    { desc: ErrorInfoSchema, value: { reason, domain: "creditledger.v1", metadata } },
  ]);
}

/** A client whose charge() runs `handler`; every request it saw is kept. */
function fakeCharge(
  handler: (request: ChargeRequest, context: HandlerContext, attempt: number) => void,
  options: { token?: string } = {},
): { client: LedgerClient; seen: ChargeRequest[]; headers: Headers[] } {
  const seen: ChargeRequest[] = [];
  const headers: Headers[] = [];
  const transport = createRouterTransport((router: ConnectRouter) => {
    router.service(LedgerService, {
      charge(request, context) {
        seen.push(request);
        headers.push(context.requestHeader);
        handler(request, context, seen.length);
        return create(ChargeResponseSchema, { balance: { accountId: request.accountId, available: 7n } });
      },
    });
  });
  const client = new LedgerClient({ target: "unused", transport, retry: FAST_RETRIES, ...options });
  return { client, seen, headers };
}

describe("LedgerClient policy", { timeout: 10_000 }, () => {
  test("retries UNAVAILABLE with the same idempotency key it made", async () => {
    const { client, seen } = fakeCharge((_request, _context, attempt) => {
      if (attempt < 3) {
        throw new ConnectError("restarting", Code.Unavailable);
      }
    });
    const result = await client.charge({ accountId: "a", asset: "email", amount: 1 });
    assert.equal(seen.length, 3);
    assert.match(result.idempotencyKey, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      seen.map((request) => request.idempotencyKey),
      [result.idempotencyKey, result.idempotencyKey, result.idempotencyKey],
    );
    assert.equal(seen[0]?.amount, 1n);
    assert.equal(result.balance?.available, 7n);
    assert.equal(result.replayed, false);
  });

  test("a fresh key per call when the caller gives none", async () => {
    const { client, seen } = fakeCharge(() => {});
    await client.charge({ accountId: "a", asset: "email", amount: 1n });
    await client.charge({ accountId: "a", asset: "email", amount: 1n });
    assert.notEqual(seen[0]?.idempotencyKey, seen[1]?.idempotencyKey);
  });

  test("sends the caller's key and reports a replay from the trailer", async () => {
    const { client, seen } = fakeCharge((_request, context) => {
      context.responseTrailer.set("idempotent-replayed", "true");
    });
    const result = await client.charge({ accountId: "a", asset: "email", amount: 1n, idempotencyKey: "mail-1" });
    assert.equal(seen[0]?.idempotencyKey, "mail-1");
    assert.equal(result.idempotencyKey, "mail-1");
    assert.equal(result.replayed, true);
  });

  for (const code of [Code.DeadlineExceeded, Code.Aborted, Code.ResourceExhausted]) {
    test(`retries ${Code[code]}`, async () => {
      const { client, seen } = fakeCharge((_request, _context, attempt) => {
        if (attempt === 1) {
          throw new ConnectError("try again", code);
        }
      });
      await client.charge({ accountId: "a", asset: "email", amount: 1n });
      assert.equal(seen.length, 2);
    });
  }

  test("never retries FAILED_PRECONDITION; InsufficientCredits carries the amounts", async () => {
    const { client, seen } = fakeCharge(() => {
      throw reasonError(Code.FailedPrecondition, "INSUFFICIENT_CREDITS", { available: "0", requested: "1" });
    });
    const error = await client.charge({ accountId: "a", asset: "email", amount: 1n }).then(
      () => assert.fail("charge should fail"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof InsufficientCredits);
    assert.ok(error instanceof LedgerError);
    assert.equal(error.code, Code.FailedPrecondition);
    assert.equal(error.codeName, "FAILED_PRECONDITION");
    assert.equal(error.reason, "INSUFFICIENT_CREDITS");
    assert.equal(error.available, 0n);
    assert.equal(error.requested, 1n);
    assert.equal(error.attempts, 1);
    assert.equal(error.idempotencyKey, seen[0]?.idempotencyKey);
    assert.equal(seen.length, 1);
  });

  test("InvalidArgument carries the field violations", async () => {
    const { client, seen } = fakeCharge(() => {
      throw new ConnectError("bad amount", Code.InvalidArgument, undefined, [
        { desc: BadRequestSchema, value: { fieldViolations: [{ field: "amount", description: "must be > 0" }] } },
      ]);
    });
    await assert.rejects(client.charge({ accountId: "a", asset: "email", amount: 0n }), (error: unknown) => {
      assert.ok(error instanceof InvalidArgument);
      assert.deepEqual(error.fieldViolations, [{ field: "amount", description: "must be > 0" }]);
      return true;
    });
    assert.equal(seen.length, 1);
  });

  test("gives up after maxAttempts with the last status and the key to retry with", async () => {
    const { client, seen } = fakeCharge(() => {
      throw reasonError(Code.Unavailable, "DATABASE_UNAVAILABLE");
    });
    await assert.rejects(
      client.charge({ accountId: "a", asset: "email", amount: 1n, idempotencyKey: "k" }),
      (error: unknown) => {
        assert.ok(error instanceof LedgerError);
        assert.equal(error.name, "DatabaseUnavailable");
        assert.equal(error.code, Code.Unavailable);
        assert.equal(error.attempts, DEFAULT_RETRY_POLICY.maxAttempts);
        assert.equal(error.idempotencyKey, "k");
        return true;
      },
    );
    assert.equal(seen.length, DEFAULT_RETRY_POLICY.maxAttempts);
  });

  test("stops retrying at the overall deadline", async () => {
    const { client, seen } = fakeCharge(() => {
      throw new ConnectError("down", Code.Unavailable);
    });
    const started = Date.now();
    await assert.rejects(
      client.charge(
        { accountId: "a", asset: "email", amount: 1n },
        { retry: { maxAttempts: 1_000, initialBackoffMs: 20, maxBackoffMs: 20, overallTimeoutMs: 200 } },
      ),
      LedgerError,
    );
    assert.ok(Date.now() - started < 1_000);
    assert.ok(seen.length > 1 && seen.length < 100, `attempts: ${String(seen.length)}`);
  });

  test("sends the bearer token", async () => {
    const { client, headers } = fakeCharge(() => {}, { token: "s3cret" });
    await client.charge({ accountId: "a", asset: "email", amount: 1n });
    assert.equal(headers[0]?.get("authorization"), "Bearer s3cret");
  });

  test("refuses an amount that is not a safe integer before sending", async () => {
    const { client, seen } = fakeCharge(() => {});
    await assert.rejects(client.charge({ accountId: "a", asset: "email", amount: 1.5 }), RangeError);
    assert.equal(seen.length, 0);
  });

  test("createAccount with existOk reads an existing account as success", async () => {
    const transport = createRouterTransport((router: ConnectRouter) => {
      router.service(LedgerService, {
        createAccount() {
          throw reasonError(Code.AlreadyExists, "ACCOUNT_EXISTS");
        },
        getAccount(request) {
          return { account: { accountId: request.accountId } };
        },
      });
    });
    const client = new LedgerClient({ target: "unused", transport });
    await assert.rejects(client.createAccount({ accountId: "acme" }), AccountExists);
    const created = await client.createAccount({ accountId: "acme" }, { existOk: true });
    assert.equal(created.account?.accountId, "acme");
  });

  test("refuses a policy that cannot make one attempt", () => {
    assert.throws(() => new LedgerClient({ target: "unused", retry: { maxAttempts: 0 } }), RangeError);
    assert.throws(() => new LedgerClient({ target: "unused", timeoutMs: 0 }), RangeError);
  });

  test("backoff stays within [0, ceiling] and the ceiling grows to maxBackoffMs", () => {
    const policy = { ...DEFAULT_RETRY_POLICY, initialBackoffMs: 50, maxBackoffMs: 2_000 };
    assert.equal(backoffMs(policy, 0, () => 1), 50);
    assert.equal(backoffMs(policy, 3, () => 1), 400);
    assert.equal(backoffMs(policy, 10, () => 1), 2_000);
    assert.equal(backoffMs(policy, 10, () => 0), 0);
  });
});
