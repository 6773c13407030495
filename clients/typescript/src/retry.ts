// The client's own retries: which codes, how long to wait, when to stop.
//
// Only codes that say "nothing was decided, try again" are retried. A
// mutating call keeps its idempotency key across these retries, so a retry of
// a call whose first attempt did commit is replayed, never applied twice.
import { Code, ConnectError } from "@connectrpc/connect";

import { retryDelayMsOf } from "./errors.js";

/** Bounds of the client's retries of one call. */
export interface RetryPolicy {
  /** Attempts in all, the first included; 1 turns retries off. */
  readonly maxAttempts: number;
  /** Backoff ceiling before the first retry. */
  readonly initialBackoffMs: number;
  /** Backoff ceiling never grows past this. */
  readonly maxBackoffMs: number;
  /** The ceiling is multiplied by this after every retry. */
  readonly backoffMultiplier: number;
  /** The whole call, attempts and waits, ends by then (the overall deadline). */
  readonly overallTimeoutMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 50,
  maxBackoffMs: 2_000,
  backoffMultiplier: 2,
  overallTimeoutMs: 30_000,
});

/**
 * UNAVAILABLE (server down or restarting, database unreachable),
 * DEADLINE_EXCEEDED (an attempt timed out), ABORTED (contention) and
 * RESOURCE_EXHAUSTED (shed load). Never INVALID_ARGUMENT,
 * FAILED_PRECONDITION, NOT_FOUND...: those outcomes are final.
 */
export const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
  Code.ResourceExhausted,
]);

/**
 * The wait before retry number `retryIndex` (0 for the first retry):
 * uniform in [0, ceiling] ("full jitter"), the ceiling growing exponentially
 * up to maxBackoffMs, so that clients that failed together do not come back
 * together. The same schedule as the Python client's.
 */
export function backoffMs(policy: RetryPolicy, retryIndex: number, random: () => number = Math.random): number {
  const ceilingMs = Math.min(
    policy.maxBackoffMs,
    policy.initialBackoffMs * policy.backoffMultiplier ** retryIndex,
  );
  return Math.round(random() * ceilingMs);
}

/** Thrown with the last failure and how many attempts led to it. */
export class RetriesEnded extends Error {
  override readonly name = "RetriesEnded";
  constructor(
    override readonly cause: ConnectError,
    readonly attempts: number,
  ) {
    super(cause.message);
  }
}

/** Waits `ms`; rejects with CANCELED when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new ConnectError("call cancelled while waiting to retry", Code.Canceled));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new ConnectError("call cancelled while waiting to retry", Code.Canceled));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Runs `attempt` until it succeeds, fails with a code that is not retryable,
 * or the policy's attempts or overall deadline are spent. Each attempt gets
 * `attemptTimeoutMs` or what is left of the overall deadline, whichever is
 * shorter; a retry that the backoff or the server's RetryInfo delay would
 * start past the deadline is not made. Throws RetriesEnded wrapping the last
 * failure.
 */
export async function withRetries<T>(
  attempt: (timeoutMs: number) => Promise<T>,
  policy: RetryPolicy,
  attemptTimeoutMs: number,
  signal?: AbortSignal,
): Promise<T> {
  const deadline = Date.now() + policy.overallTimeoutMs;
  for (let attempts = 1; ; attempts++) {
    const remainingMs = deadline - Date.now();
    try {
      return await attempt(Math.max(1, Math.min(attemptTimeoutMs, remainingMs)));
    } catch (error) {
      const failure = ConnectError.from(error);
      // The server's RetryInfo (RATE_LIMITED sends one) is a floor: sooner is refused again.
      const waitMs = Math.max(backoffMs(policy, attempts - 1), retryDelayMsOf(failure) ?? 0);
      const retry =
        RETRYABLE_CODES.has(failure.code) &&
        attempts < policy.maxAttempts &&
        Date.now() + waitMs < deadline &&
        signal?.aborted !== true;
      if (!retry) {
        throw new RetriesEnded(failure, attempts);
      }
      try {
        await sleep(waitMs, signal);
      } catch (cancelled) {
        throw new RetriesEnded(ConnectError.from(cancelled), attempts);
      }
    }
  }
}
