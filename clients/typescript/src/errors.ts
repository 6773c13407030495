// Typed errors built from the server's google.rpc.Status details.
//
// The server sends every expected failure as a gRPC status whose
// grpc-status-details-bin trailer holds a google.rpc.ErrorInfo (domain
// "creditledger.v1", a stable UPPER_SNAKE reason, string metadata) and, for
// INVALID_ARGUMENT, a google.rpc.BadRequest. Callers branch on the class
// (`err instanceof InsufficientCredits`) or on `err.reason`; the raw
// ConnectError stays reachable as `err.cause`.
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of every reason this server defines. */
export const ERROR_DOMAIN = "creditledger.v1";

/** Trailing metadata the server sets when it replays a key's first outcome. */
export const REPLAYED_METADATA_KEY = "idempotent-replayed";

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
  }
}

function int64Metadata(metadata: Readonly<Record<string, string>>, key: string): bigint {
  const text = metadata[key];
  // -1n says the server omitted the value; amounts themselves are never negative.
  return text !== undefined && /^-?\d+$/.test(text) ? BigInt(text) : -1n;
}

/** FAILED_PRECONDITION: available is smaller than the amount asked for. */
export class InsufficientCredits extends LedgerError {
  override readonly name: string = "InsufficientCredits";
  /** Credits that were available (-1n if the server did not say). */
  readonly available: bigint;
  /** Credits the call asked for (-1n if the server did not say). */
  readonly requested: bigint;

  constructor(cause: ConnectError, context: ErrorContext) {
    super(cause, context);
    this.available = int64Metadata(this.metadata, "available");
    this.requested = int64Metadata(this.metadata, "requested");
  }
}

/** One field the server refused, from google.rpc.BadRequest. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** INVALID_ARGUMENT: the request broke a documented limit; do not retry it. */
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

/* One class per stable reason, so callers can `instanceof` instead of comparing strings. */
export class IdempotencyKeyReused extends LedgerError {
  override readonly name: string = "IdempotencyKeyReused";
}
export class AccountNotFound extends LedgerError {
  override readonly name: string = "AccountNotFound";
}
export class AccountExists extends LedgerError {
  override readonly name: string = "AccountExists";
}
export class ReservationNotFound extends LedgerError {
  override readonly name: string = "ReservationNotFound";
}
export class ReservationClosed extends LedgerError {
  override readonly name: string = "ReservationClosed";
}
export class ReservationExpired extends LedgerError {
  override readonly name: string = "ReservationExpired";
}
export class AmountExceedsRemaining extends LedgerError {
  override readonly name: string = "AmountExceedsRemaining";
}
export class AmountExceedsSettled extends LedgerError {
  override readonly name: string = "AmountExceedsSettled";
}
/** ABORTED: the server ran out of serialization retries; the client retries it itself. */
export class Contention extends LedgerError {
  override readonly name: string = "Contention";
}
/** UNAVAILABLE: the server could not reach its database; the client retries it itself. */
export class DatabaseUnavailable extends LedgerError {
  override readonly name: string = "DatabaseUnavailable";
}

/** UNAVAILABLE: the elected writer could not be reached or changed; the client retries it itself. */
export class WriterUnavailable extends LedgerError {
  override readonly name: string = "WriterUnavailable";
}

type LedgerErrorClass = new (cause: ConnectError, context: ErrorContext) => LedgerError;

const CLASS_BY_REASON: ReadonlyMap<string, LedgerErrorClass> = new Map<string, LedgerErrorClass>([
  ["INSUFFICIENT_CREDITS", InsufficientCredits],
  ["IDEMPOTENCY_KEY_REUSED", IdempotencyKeyReused],
  ["ACCOUNT_NOT_FOUND", AccountNotFound],
  ["ACCOUNT_EXISTS", AccountExists],
  ["RESERVATION_NOT_FOUND", ReservationNotFound],
  ["RESERVATION_CLOSED", ReservationClosed],
  ["RESERVATION_EXPIRED", ReservationExpired],
  ["AMOUNT_EXCEEDS_REMAINING", AmountExceedsRemaining],
  ["AMOUNT_EXCEEDS_SETTLED", AmountExceedsSettled],
  ["CONTENTION", Contention],
  ["DATABASE_UNAVAILABLE", DatabaseUnavailable],
  ["WRITER_UNAVAILABLE", WriterUnavailable],
]);

/**
 * Turns a failed call into the most specific LedgerError: by ErrorInfo
 * reason of our domain first, then INVALID_ARGUMENT by code; anything else
 * (a transport failure, an unknown reason) is a plain LedgerError.
 */
export function toLedgerError(error: unknown, context: ErrorContext): LedgerError {
  const cause = ConnectError.from(error);
  const info = cause.findDetails(ErrorInfoSchema)[0];
  const byReason = info?.domain === ERROR_DOMAIN ? CLASS_BY_REASON.get(info.reason) : undefined;
  if (byReason !== undefined) {
    return new byReason(cause, context);
  }
  if (cause.code === Code.InvalidArgument) {
    return new InvalidArgument(cause, context);
  }
  return new LedgerError(cause, context);
}
