// Public surface of @creditledger/client.
export {
  type Amount,
  type CallSettings,
  type ChargeInput,
  type CreateAccountInput,
  DEFAULT_KEEPALIVE_MS,
  DEFAULT_TIMEOUT_MS,
  type GetAccountInput,
  type GetBalanceInput,
  type GetReservationGroupInput,
  type GetReservationInput,
  type GrantInput,
  LedgerClient,
  type LedgerClientOptions,
  type ListEntriesInput,
  type Mutation,
  type RefundInput,
  type ReleaseInput,
  type ReserveGroupInput,
  type ReserveGroupLegInput,
  type ReserveInput,
  type SettleInput,
  type TlsOptions,
} from "./client.js";
export {
  AccountExists,
  AccountNotFound,
  AmountExceedsRemaining,
  AmountExceedsSettled,
  Contention,
  DatabaseUnavailable,
  ERROR_DOMAIN,
  type ErrorContext,
  type FieldViolation,
  IdempotencyKeyReused,
  InsufficientCredits,
  InvalidArgument,
  LedgerError,
  REPLAYED_METADATA_KEY,
  ReservationClosed,
  ReservationExpired,
  ReservationNotFound,
  WriterUnavailable,
  codeName,
  toLedgerError,
} from "./errors.js";
export { DEFAULT_RETRY_POLICY, RETRYABLE_CODES, type RetryPolicy, backoffMs } from "./retry.js";
// The generated messages and the service descriptor, for callers that need them.
export * from "./gen/creditledger/v1/ledger_pb.js";
// Helpers for the well-known types the messages use (ttl, expiresAt, createdAt).
export { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
export { Code, ConnectError } from "@connectrpc/connect";
