// Typed errors built from the server's google.rpc.Status details.
//
// The server sends every expected failure as a gRPC status whose
// grpc-status-details-bin trailer holds a google.rpc.ErrorInfo (domain
// "creditledger.v1", a stable UPPER_SNAKE reason, string metadata) and, for
// INVALID_ARGUMENT, a google.rpc.BadRequest. Callers branch on the class
// (`err instanceof InsufficientCredits`) or on `err.reason`; the raw
// ConnectError stays reachable as `err.cause`.
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of every reason this server defines. */
export const ERROR_DOMAIN = "creditledger.v1";

/** Trailing metadata the server sets when it replays a key's first outcome. */
export const REPLAYED_METADATA_KEY = "idempotent-replayed";

/**
 * The request id header: the client sends one on every call (the caller's, or
 * a UUID kept across the call's retries); the server returns it in trailers
 * and as ErrorInfo metadata `request_id`, and logs it on every line of the call.
 */
export const REQUEST_ID_HEADER = "x-request-id";
const REQUEST_ID_METADATA = "request_id";

const CODE_NAMES: Readonly<Record<Code, string>> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** The canonical gRPC name of a status code, e.g. "FAILED_PRECONDITION". */
export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${String(code)}`;
}

/** What the client knew about the call when it failed. */
export interface ErrorContext {
  /** How many attempts the client made (1 when it did not retry). */
  readonly attempts: number;
  /** The key the client sent; retry later with it to keep exactly-once. */
  readonly idempotencyKey?: string | undefined;
  /** The x-request-id the client sent, for when the server answered none. */
  readonly requestId?: string | undefined;
}

/** The server's google.rpc.RetryInfo delay in milliseconds, or undefined when it sent none. */
export function retryDelayMsOf(cause: ConnectError): number | undefined {
  const delay = cause.findDetails(RetryInfoSchema)[0]?.retryDelay;
  if (delay === undefined) {
    return undefined;
  }
  return Math.max(0, Number(delay.seconds) * 1_000 + Math.round(delay.nanos / 1_000_000));
}

/**
 * Base of every error a LedgerClient call throws for a failed RPC.
 * `code` is the gRPC status code (Connect's Code has the same numbers),
 * `reason` the ErrorInfo reason ("" when the status carried none, e.g. a
 * transport failure), `metadata` the ErrorInfo metadata.
 */
export class LedgerError extends Error {
  override readonly name: string = "LedgerError";
  readonly code: Code;
  readonly codeName: string;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** True when the server replayed this key's first (failed) outcome. */
  readonly replayed: boolean;
  readonly attempts: number;
  readonly idempotencyKey: string | undefined;
  /**
   * The call's request id, to find its lines in the server's logs: the
   * server's (ErrorInfo metadata, else the x-request-id trailer), else the
   * one the client sent; "" only when neither is known.
   */
  readonly requestId: string;
  /** The server's RetryInfo delay (RATE_LIMITED sends one): do not retry sooner. */
  readonly retryDelayMs: number | undefined;
  /** The raw status: details, response headers and trailers. */
  override readonly cause: ConnectError;

  constructor(cause: ConnectError, context: ErrorContext) {
    const info = cause.findDetails(ErrorInfoSchema)[0];
    const reason = info?.reason ?? "";
    const name = codeName(cause.code);
    super(reason ? `${name} ${reason}: ${cause.rawMessage}` : `${name}: ${cause.rawMessage}`);
    this.cause = cause;
    this.code = cause.code;
    this.codeName = name;
    this.reason = reason;
    this.domain = info?.domain ?? "";
    this.metadata = Object.freeze({ ...(info?.metadata ?? {}) });
    this.replayed = cause.metadata.get(REPLAYED_METADATA_KEY) === "true";
    this.attempts = context.attempts;
    this.idempotencyKey = context.idempotencyKey;
    this.requestId =
      this.metadata[REQUEST_ID_METADATA] || cause.metadata.get(REQUEST_ID_HEADER) || context.requestId || "";
    this.retryDelayMs = retryDelayMsOf(cause);
  }

  /** Whether a retry with the same idempotency key may succeed. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  /** An int64 the server put in the ErrorInfo metadata; -1n when absent. */
  protected int64(key: string): bigint {
    const text = this.metadata[key];
    // -1n says the server omitted the value; amounts themselves are never negative.
    return text !== undefined && /^-?\d+$/.test(text) ? BigInt(text) : -1n;
  }
}

const RETRYABLE: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
  Code.ResourceExhausted,
]);

/** One field the server refused, from google.rpc.BadRequest. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/* Families by gRPC code, so a caller can catch a whole category at once. */

/** INVALID_ARGUMENT: the request broke a documented limit; `fieldViolations` says where. Do not retry it. */
export class InvalidArgument extends LedgerError {
  override readonly name: string = "InvalidArgument";
  readonly fieldViolations: readonly FieldViolation[];

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.fieldViolations = cause
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) => badRequest.fieldViolations)
      .map(({ field, description }) => ({ field, description }));
  }
}
/** NOT_FOUND: the account, reservation or group does not exist. */
export class NotFound extends LedgerError {
  override readonly name: string = "NotFound";
}
/** ALREADY_EXISTS. */
export class AlreadyExists extends LedgerError {
  override readonly name: string = "AlreadyExists";
}
/** FAILED_PRECONDITION: the ledger's state refuses the request; retrying will not help. */
export class FailedPrecondition extends LedgerError {
  override readonly name: string = "FailedPrecondition";
}
/** UNAVAILABLE: the server (or its database) could not be reached; retryable with the same key. */
export class Unavailable extends LedgerError {
  override readonly name: string = "Unavailable";
}
/** DEADLINE_EXCEEDED: no answer in time; the request may or may not have been applied. */
export class DeadlineExceeded extends LedgerError {
  override readonly name: string = "DeadlineExceeded";
}
/** ABORTED: the server gave up under contention; retryable with the same key. */
export class Aborted extends LedgerError {
  override readonly name: string = "Aborted";
}
/** RESOURCE_EXHAUSTED: rate limited; retryable later with the same key. */
export class ResourceExhausted extends LedgerError {
  override readonly name: string = "ResourceExhausted";
}
/** UNAUTHENTICATED: no token, or a token the server does not accept (reason UNAUTHENTICATED). */
export class Unauthenticated extends LedgerError {
  override readonly name: string = "Unauthenticated";
}
/** PERMISSION_DENIED: the token is valid but may not do this (reason PERMISSION_DENIED). */
export class PermissionDenied extends LedgerError {
  override readonly name: string = "PermissionDenied";
}
/** INTERNAL: a bug in the server, logged there with its stack trace (find it by requestId). */
export class Internal extends LedgerError {
  override readonly name: string = "Internal";
}

/* One class per stable reason, so callers can `instanceof` instead of comparing strings. */

/** ACCOUNT_NOT_FOUND. */
export class AccountNotFound extends NotFound {
  override readonly name: string = "AccountNotFound";
}
/** RESERVATION_NOT_FOUND. */
export class ReservationNotFound extends NotFound {
  override readonly name: string = "ReservationNotFound";
}
/** RESERVATION_GROUP_NOT_FOUND. */
export class ReservationGroupNotFound extends NotFound {
  override readonly name: string = "ReservationGroupNotFound";
}
/** ACCOUNT_EXISTS: CreateAccount of an id that is taken. */
export class AccountExists extends AlreadyExists {
  override readonly name: string = "AccountExists";
}
/** INSUFFICIENT_CREDITS: available is smaller than the amount asked for; nothing changed. */
export class InsufficientCredits extends FailedPrecondition {
  override readonly name: string = "InsufficientCredits";
  /** Credits that were available (-1n if the server did not say). */
  readonly available: bigint;
  /** Credits the call asked for (-1n if the server did not say). */
  readonly requested: bigint;
  /** The account that lacked credits (for a group: the failing leg's). */
  readonly accountId: string;
  /** The asset that lacked credits. */
  readonly asset: string;
  /** For ReserveGroup, the leg that failed; "" otherwise. */
  readonly legKey: string;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.available = this.int64("available");
    this.requested = this.int64("requested");
    this.accountId = this.metadata["account_id"] ?? "";
    this.asset = this.metadata["asset"] ?? "";
    this.legKey = this.metadata["leg_key"] ?? "";
  }
}
/** IDEMPOTENCY_KEY_REUSED: the key was used before with a different request. */
export class IdempotencyKeyReused extends FailedPrecondition {
  override readonly name: string = "IdempotencyKeyReused";
}
/** RESERVATION_CLOSED: the reservation was fully settled or released. */
export class ReservationClosed extends FailedPrecondition {
  override readonly name: string = "ReservationClosed";
}
/** RESERVATION_EXPIRED: the reservation passed its expiresAt; its hold was released. */
export class ReservationExpired extends FailedPrecondition {
  override readonly name: string = "ReservationExpired";
}
/** AMOUNT_EXCEEDS_REMAINING: settle or release of more than is still held. */
export class AmountExceedsRemaining extends FailedPrecondition {
  override readonly name: string = "AmountExceedsRemaining";
  /** What the reservation still holds (-1n if the server did not say). */
  readonly remaining: bigint;
  /** What the call asked for. */
  readonly requested: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.remaining = this.int64("remaining");
    this.requested = this.int64("requested");
  }
}
/** AMOUNT_EXCEEDS_SETTLED: refund of more than was settled and not yet refunded. */
export class AmountExceedsSettled extends FailedPrecondition {
  override readonly name: string = "AmountExceedsSettled";
  /** Settled minus already refunded (-1n if the server did not say). */
  readonly refundable: bigint;
  /** What the call asked for. */
  readonly requested: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.refundable = this.int64("refundable");
    this.requested = this.int64("requested");
  }
}
/** BALANCE_LIMIT_EXCEEDED: a grant would take the balance past the ledger's limit. */
export class BalanceLimitExceeded extends FailedPrecondition {
  override readonly name: string = "BalanceLimitExceeded";
  /** The largest balance the ledger keeps. */
  readonly limit: bigint;
  /** What the grant asked for. */
  readonly requested: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.limit = this.int64("limit");
    this.requested = this.int64("requested");
  }
}
/** LOT_LIMIT_EXCEEDED: a grant to an account and asset that already hold the most live lots. */
export class LotLimitExceeded extends FailedPrecondition {
  override readonly name: string = "LotLimitExceeded";
  /** The most live lots one account may hold of one asset (-1n if the server did not say). */
  readonly limit: bigint;
  /** The live lots the account holds of the asset. */
  readonly liveLots: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.limit = this.int64("limit");
    this.liveLots = this.int64("live_lots");
  }
}
/** PRECONDITION_FAILED: a precondition of the request did not hold; nothing changed. */
export class PreconditionFailed extends FailedPrecondition {
  override readonly name: string = "PreconditionFailed";
  /** The pair's current version. */
  readonly version: bigint;
  /** The pair's current available. */
  readonly available: bigint;
  /** The pair's current held credits. */
  readonly held: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.version = this.int64("version");
    this.available = this.int64("available");
    this.held = this.int64("held");
  }
}
/** POOL_DEPTH_EXCEEDED: CreateAccount under a parent that already has the most ancestors. */
export class PoolDepthExceeded extends FailedPrecondition {
  override readonly name: string = "PoolDepthExceeded";
}
/** CAP_EXCEEDED: a spend would take the member past a cap; nothing changed. */
export class CapExceeded extends FailedPrecondition {
  override readonly name: string = "CapExceeded";
  /** The cap. */
  readonly cap: bigint;
  /** What the cap still leaves. */
  readonly remaining: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.cap = this.int64("cap");
    this.remaining = this.int64("remaining");
  }
}
/** LOT_NOT_FOUND: no such lot (VoidGrant). */
export class LotNotFound extends NotFound {
  override readonly name: string = "LotNotFound";
}
/** SCHEDULE_NOT_FOUND: no such grant schedule. */
export class ScheduleNotFound extends NotFound {
  override readonly name: string = "ScheduleNotFound";
}
/** SCHEDULE_LIMIT_EXCEEDED: the account and asset have the most active schedules. */
export class ScheduleLimitExceeded extends FailedPrecondition {
  override readonly name: string = "ScheduleLimitExceeded";
  /** The most active schedules one account may have of one asset. */
  readonly limit: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.limit = this.int64("limit");
  }
}
/** CREDITS_HELD: VoidGrant of credits that open reservations hold; settle or release them first. */
export class CreditsHeld extends FailedPrecondition {
  override readonly name: string = "CreditsHeld";
  /** The lot's credits held by open reservations. */
  readonly held: bigint;
  /** The lot's unspent, unheld credits: what may be voided. */
  readonly unspent: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.held = this.int64("held");
    this.unspent = this.int64("unspent");
  }
}
/** AMOUNT_EXCEEDS_UNSPENT: VoidGrant of more than the lot's unspent remainder. */
export class AmountExceedsUnspent extends FailedPrecondition {
  override readonly name: string = "AmountExceedsUnspent";
  /** The lot's unspent, unheld credits: what may be voided. */
  readonly unspent: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.unspent = this.int64("unspent");
  }
}
/** CONTENTION (ABORTED): the server ran out of serialization retries; the client retries it itself. */
export class Contention extends Aborted {
  override readonly name: string = "Contention";
}
/** DATABASE_UNAVAILABLE (UNAVAILABLE): the server could not reach its database; the client retries it itself. */
export class DatabaseUnavailable extends Unavailable {
  override readonly name: string = "DatabaseUnavailable";
}
/** WRITER_UNAVAILABLE (UNAVAILABLE): the elected writer could not be reached or changed; the client retries it itself. */
export class WriterUnavailable extends Unavailable {
  override readonly name: string = "WriterUnavailable";
}
/** RATE_LIMITED (RESOURCE_EXHAUSTED): too many requests; `retryDelayMs` says when to come back. */
export class RateLimited extends ResourceExhausted {
  override readonly name: string = "RateLimited";
}

/**
 * TOO_MANY_CONCURRENT_CALLS (RESOURCE_EXHAUSTED): too many calls in flight on the connection,
 * from this caller, or from callers known only by their address (`metadata.limit` names the
 * limit); nothing was done. `retryDelayMs` says when to come back.
 */
export class TooManyConcurrentCalls extends RateLimited {
  override readonly name: string = "TooManyConcurrentCalls";
}
/** ALERT_LIMIT_EXCEEDED (FAILED_PRECONDITION): the account has ALERTS_PER_ACCOUNT_MAX balance alerts already. */
export class AlertLimitExceeded extends FailedPrecondition {
  override readonly name: string = "AlertLimitExceeded";
}
/** TOP_UP_REQUEST_NOT_PENDING (FAILED_PRECONDITION): a Grant's top_up_request_id is no pending top-up request of its account and asset. */
export class TopUpRequestNotPending extends FailedPrecondition {
  override readonly name: string = "TopUpRequestNotPending";
}
/** TOO_MANY_STREAMS (RESOURCE_EXHAUSTED): the caller holds WATCH_STREAMS_PER_CALLER_MAX change streams open already. */
export class TooManyStreams extends ResourceExhausted {
  override readonly name: string = "TooManyStreams";
  /** Not until the caller closes a stream: the same call is refused again. */
  override get retryable(): boolean {
    return false;
  }
}

type LedgerErrorClass = new (cause: ConnectError, context: ErrorContext) => LedgerError;

/**
 * Every ErrorInfo reason and its class. tests/unit/test_error_reasons.py (in
 * the Python suite) and test/unit/errors.test.ts check it against the proto's
 * ErrorReason enum, the one list of reasons.
 */
const CLASS_BY_REASON: ReadonlyMap<string, LedgerErrorClass> = new Map<string, LedgerErrorClass>([
  ["INVALID_ARGUMENT", InvalidArgument],
  ["ACCOUNT_NOT_FOUND", AccountNotFound],
  ["RESERVATION_NOT_FOUND", ReservationNotFound],
  ["RESERVATION_GROUP_NOT_FOUND", ReservationGroupNotFound],
  ["ACCOUNT_EXISTS", AccountExists],
  ["INSUFFICIENT_CREDITS", InsufficientCredits],
  ["IDEMPOTENCY_KEY_REUSED", IdempotencyKeyReused],
  ["RESERVATION_CLOSED", ReservationClosed],
  ["RESERVATION_EXPIRED", ReservationExpired],
  ["AMOUNT_EXCEEDS_REMAINING", AmountExceedsRemaining],
  ["AMOUNT_EXCEEDS_SETTLED", AmountExceedsSettled],
  ["BALANCE_LIMIT_EXCEEDED", BalanceLimitExceeded],
  ["LOT_LIMIT_EXCEEDED", LotLimitExceeded],
  ["PRECONDITION_FAILED", PreconditionFailed],
  ["POOL_DEPTH_EXCEEDED", PoolDepthExceeded],
  ["CAP_EXCEEDED", CapExceeded],
  ["LOT_NOT_FOUND", LotNotFound],
  ["SCHEDULE_NOT_FOUND", ScheduleNotFound],
  ["SCHEDULE_LIMIT_EXCEEDED", ScheduleLimitExceeded],
  ["CREDITS_HELD", CreditsHeld],
  ["AMOUNT_EXCEEDS_UNSPENT", AmountExceedsUnspent],
  ["CONTENTION", Contention],
  ["DATABASE_UNAVAILABLE", DatabaseUnavailable],
  ["WRITER_UNAVAILABLE", WriterUnavailable],
  ["UNAUTHENTICATED", Unauthenticated],
  ["PERMISSION_DENIED", PermissionDenied],
  ["RATE_LIMITED", RateLimited],
  ["TOO_MANY_CONCURRENT_CALLS", TooManyConcurrentCalls],
  ["TOO_MANY_STREAMS", TooManyStreams],
  ["ALERT_LIMIT_EXCEEDED", AlertLimitExceeded],
  ["TOP_UP_REQUEST_NOT_PENDING", TopUpRequestNotPending],
  ["INTERNAL", Internal],
  ["DEADLINE_EXCEEDED", DeadlineExceeded],
]);

const CLASS_BY_CODE: ReadonlyMap<Code, LedgerErrorClass> = new Map<Code, LedgerErrorClass>([
  [Code.InvalidArgument, InvalidArgument],
  [Code.NotFound, NotFound],
  [Code.AlreadyExists, AlreadyExists],
  [Code.FailedPrecondition, FailedPrecondition],
  [Code.Unavailable, Unavailable],
  [Code.DeadlineExceeded, DeadlineExceeded],
  [Code.Aborted, Aborted],
  [Code.ResourceExhausted, ResourceExhausted],
  [Code.Unauthenticated, Unauthenticated],
  [Code.PermissionDenied, PermissionDenied],
  [Code.Internal, Internal],
]);

/** Every reason this client turns into its own class. */
export const KNOWN_REASONS: ReadonlySet<string> = new Set(CLASS_BY_REASON.keys());

/** The class a reason becomes, or undefined for a reason this client does not know. */
export function errorClassOf(reason: string): LedgerErrorClass | undefined {
  return CLASS_BY_REASON.get(reason);
}

/**
 * Turns a failed call into the most specific LedgerError: by ErrorInfo
 * reason of our domain first, then by code family; anything else (an
 * unknown code) is a plain LedgerError.
 */
export function toLedgerError(error: unknown, context: ErrorContext): LedgerError {
  const cause = ConnectError.from(error);
  const info = cause.findDetails(ErrorInfoSchema)[0];
  const byReason = info?.domain === ERROR_DOMAIN ? CLASS_BY_REASON.get(info.reason) : undefined;
  const cls = byReason ?? CLASS_BY_CODE.get(cause.code) ?? LedgerError;
  return new cls(cause, context);
}
