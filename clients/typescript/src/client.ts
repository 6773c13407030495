// LedgerClient: a thin typed wrapper over the generated LedgerService stub.
//
// What it adds to the stub is policy, the same as the Python client's:
// - every mutating call carries an idempotency key, the caller's or a fresh
//   UUID, and keeps it across the client's own retries, so a retry after a
//   lost response is replayed by the server instead of applied twice;
// - retries only on UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED and
//   RESOURCE_EXHAUSTED, with jittered exponential backoff, bounded by
//   attempts and by an overall deadline (see retry.ts);
// - a deadline per call (attempts and pauses share it) and a cap per attempt;
// - an x-request-id on every call, kept across its retries, on every error;
// - the server's RetryInfo delay honoured;
// - failures as typed errors built from google.rpc.ErrorInfo (errors.ts);
// - `replayed` on results, from the `idempotent-replayed` trailer.
import { randomUUID } from "node:crypto";
import type * as http2 from "node:http2";

import { type DescMessage, type MessageInitShape, create } from "@bufbuild/protobuf";
import { type CallOptions, Code, type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { type BatchCommandInput, type BatchOutcome, Batcher, type BatcherOptions, batchCommands, batchOutcomes } from "./batch.js";
import { AccountExists, type LedgerError, REPLAYED_METADATA_KEY, REQUEST_ID_HEADER, toLedgerError } from "./errors.js";
import {
  type BalanceAlert,
  type CancelGrantScheduleRequestSchema,
  type CancelGrantScheduleResponse,
  type ChargeRequestSchema,
  type ChargeResponse,
  type CreateAccountRequestSchema,
  type CreateAccountResponse,
  CreateAccountResponseSchema,
  type CreateGrantScheduleRequestSchema,
  type CreateGrantScheduleResponse,
  type DeleteBalanceAlertRequestSchema,
  type Entry,
  type GetAccountRequestSchema,
  type GetAccountResponse,
  type GetBalanceRequestSchema,
  type GetBalanceResponse,
  type GetBreakageRequestSchema,
  type GetBreakageResponse,
  type GetGrantScheduleRequestSchema,
  type GetGrantScheduleResponse,
  type GetReservationGroupRequestSchema,
  type GetReservationGroupResponse,
  type GetReservationRequestSchema,
  type GetReservationResponse,
  type GetStatementRequestSchema,
  type GetStatementResponse,
  type GrantSchedule,
  type GrantRequestSchema,
  type GrantResponse,
  LedgerService,
  type ListBalanceAlertsRequestSchema,
  type ListEntriesRequestSchema,
  type ListEntriesResponse,
  type ListGrantSchedulesRequestSchema,
  type ListGrantSchedulesResponse,
  type ListReservationsRequestSchema,
  type ListReservationsResponse,
  type RefundRequestSchema,
  type RefundResponse,
  type ReleaseRequestSchema,
  type ReleaseResponse,
  type ReserveGroupLegSchema,
  type ReserveGroupRequestSchema,
  type ReserveGroupResponse,
  type ReserveRequestSchema,
  type ReserveResponse,
  type SetBalanceAlertRequestSchema,
  type SetMemberCapRequestSchema,
  type SetMemberCapResponse,
  type SetSpendingLimitsRequestSchema,
  type SetSpendingLimitsResponse,
  type SettleRequestSchema,
  type SettleResponse,
  type StreamedTransaction,
  SubmitBatchRequestSchema,
  type UpdateGrantScheduleRequestSchema,
  type UpdateGrantScheduleResponse,
  type VoidGrantRequestSchema,
  type VoidGrantResponse,
  type WatchTransactionsRequestSchema,
} from "./gen/creditledger/v1/ledger_pb.js";
import { type Hold, type HoldOptions, withReservation } from "./hold.js";
import { DEFAULT_RETRY_POLICY, RETRYABLE_CODES, RetriesEnded, type RetryPolicy, backoffMs, sleep, withRetries } from "./retry.js";

/** Per-attempt cap when the client sets none: a hung connection is given up and retried. */
export const DEFAULT_TIMEOUT_MS = 5_000;

/**
 * Interval of HTTP/2 PINGs on a connection with calls in flight, so a dead
 * server is noticed. Idle connections are not pinged: gRPC servers close
 * connections that ping too often without calls (GOAWAY too_many_pings).
 */
export const DEFAULT_KEEPALIVE_MS = 60_000;

/** TLS settings: the CA to trust, a client certificate, a server name to check. */
export type TlsOptions = Pick<
  http2.SecureClientSessionOptions,
  "ca" | "cert" | "key" | "servername" | "rejectUnauthorized"
>;

export interface LedgerClientOptions {
  /** "host:port", or a URL ("http://host:port", "https://host:port"). */
  readonly target: string;
  /** true for TLS with the system's CAs, or the TLS settings; off by default. */
  readonly tls?: boolean | TlsOptions;
  /** Sent as `authorization: Bearer <token>`; a function is asked on every attempt. */
  readonly token?: string | (() => string | Promise<string>);
  /** Extra request metadata sent with every call. */
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * The most one attempt may take (a hung connection is then retried). The
   * deadline of a whole call is `retry.overallTimeoutMs`, or the call's own
   * `timeoutMs`.
   */
  readonly timeoutMs?: number;
  /** Retry bounds; fields left out keep DEFAULT_RETRY_POLICY's. */
  readonly retry?: Partial<RetryPolicy>;
  /** HTTP/2 PING interval. */
  readonly keepaliveMs?: number;
  /** Connect interceptors (logging, tracing) run on every attempt of every call. */
  readonly interceptors?: readonly Interceptor[];
  /** Use this transport instead of building one (target, tls and keepalive are then ignored). */
  readonly transport?: Transport;
}

/** Per-call settings. */
export interface CallSettings {
  /**
   * Deadline of the whole call: every attempt and every pause between them
   * fits in it (without it, the client's retry.overallTimeoutMs).
   */
  readonly timeoutMs?: number;
  /** Cancels the call, including its waits between retries. */
  readonly signal?: AbortSignal;
  /**
   * Extra request metadata for this call. An `x-request-id` here is sent as
   * the call's request id; without one the client makes a UUID per call.
   */
  readonly headers?: Readonly<Record<string, string>>;
  /** Retry bounds of this call; fields left out keep the client's. */
  readonly retry?: Partial<RetryPolicy>;
}

/** The result of a mutating call. */
export type Mutation<Response> = Response & {
  /** True when the server replayed the first outcome of this idempotency key. */
  readonly replayed: boolean;
  /** The key sent: the caller's, or the one the client made. */
  readonly idempotencyKey: string;
};

/** An amount: a bigint, or a number that is a safe integer. */
export type Amount = bigint | number;

type Init<Desc extends DescMessage> = Omit<MessageInitShape<Desc>, "$typeName">;
/** Makes the fields K required and turns `amount` into an Amount. */
type Input<Desc extends DescMessage, K extends keyof Init<Desc>> = Omit<Init<Desc>, K | "amount"> & {
  [P in K]-?: P extends "amount" ? Amount : Exclude<Init<Desc>[P], undefined>;
};

export type CreateAccountInput = Input<typeof CreateAccountRequestSchema, "accountId">;
export type GetAccountInput = Input<typeof GetAccountRequestSchema, "accountId">;
export type GrantInput = Input<typeof GrantRequestSchema, "accountId" | "asset" | "amount">;
export type ReserveInput = Input<typeof ReserveRequestSchema, "accountId" | "asset" | "amount">;
export type ReserveGroupLegInput = Input<typeof ReserveGroupLegSchema, "accountId" | "asset" | "amount" | "legKey">;
export type ReserveGroupInput = Omit<Input<typeof ReserveGroupRequestSchema, never>, "legs"> & {
  readonly legs: readonly ReserveGroupLegInput[];
};
export type SettleInput = Input<typeof SettleRequestSchema, "reservationId" | "amount">;
export type ReleaseInput = Input<typeof ReleaseRequestSchema, "reservationId"> & { readonly amount?: Amount };
export type RefundInput = Input<typeof RefundRequestSchema, "reservationId" | "amount">;
export type ChargeInput = Input<typeof ChargeRequestSchema, "accountId" | "asset" | "amount">;
export type GetReservationInput = Input<typeof GetReservationRequestSchema, "reservationId">;
export type GetReservationGroupInput = Input<typeof GetReservationGroupRequestSchema, "groupId">;
export type GetBalanceInput = Input<typeof GetBalanceRequestSchema, "accountId" | "asset">;
export type ListEntriesInput = Input<typeof ListEntriesRequestSchema, "accountId">;
export type ListReservationsInput = Input<typeof ListReservationsRequestSchema, "accountId">;
/** `floor` (<= 0): how far below zero a DEBT-mode spend of the pair may go. */
export type SetSpendingLimitsInput = Omit<Input<typeof SetSpendingLimitsRequestSchema, "accountId" | "asset">, "floor"> & {
  readonly floor: Amount;
};
/** `cap` unset removes the window's cap. */
export type SetMemberCapInput = Omit<Input<typeof SetMemberCapRequestSchema, "accountId" | "asset" | "window">, "cap"> & {
  readonly cap?: Amount;
};
/** `amount` 0 or unset: every unspent credit of the lot. */
export type VoidGrantInput = Input<typeof VoidGrantRequestSchema, "lotId"> & { readonly amount?: Amount };
export type CreateGrantScheduleInput = Omit<
  Input<typeof CreateGrantScheduleRequestSchema, "accountId" | "asset" | "amount" | "periodUnit">,
  "periodCount"
> & {
  /** How many units a period lasts (seconds for PERIOD_UNIT_FIXED); unset: 1. */
  readonly periodCount?: Amount;
};
export type GetGrantScheduleInput = Input<typeof GetGrantScheduleRequestSchema, "scheduleId">;
export type ListGrantSchedulesInput = Input<typeof ListGrantSchedulesRequestSchema, "accountId">;
/** `amount` unset keeps the amount. */
export type UpdateGrantScheduleInput = Input<typeof UpdateGrantScheduleRequestSchema, "scheduleId"> & {
  readonly amount?: Amount;
};
export type CancelGrantScheduleInput = Input<typeof CancelGrantScheduleRequestSchema, "scheduleId">;
export type GetBreakageInput = Input<typeof GetBreakageRequestSchema, "accountId" | "asset">;
export type GetStatementInput = Input<typeof GetStatementRequestSchema, "accountId" | "asset" | "fromTime" | "toTime">;
export type SetBalanceAlertInput = Omit<
  Input<typeof SetBalanceAlertRequestSchema, "accountId" | "asset">,
  "threshold" | "recovery"
> & {
  /** An amount, or with `percent` 0 to 100 of the pair's last Grant; 0 never fires. */
  readonly threshold: Amount;
  /** threshold or more; 0 or unset: the threshold itself. */
  readonly recovery?: Amount;
};
export type ListBalanceAlertsInput = Input<typeof ListBalanceAlertsRequestSchema, "accountId">;
export type DeleteBalanceAlertInput = Input<typeof DeleteBalanceAlertRequestSchema, "accountId" | "asset">;
export type WatchTransactionsInput = Input<typeof WatchTransactionsRequestSchema, never>;

/** Settings of a change stream. */
export interface WatchSettings extends Omit<CallSettings, "timeoutMs"> {
  /**
   * The most the stream spends reconnecting after one failure (attempts and
   * pauses); not a deadline of the stream. Default: the client's
   * retry.overallTimeoutMs.
   */
  readonly reconnectTimeoutMs?: number;
  /**
   * Called with the position of each message without transactions (a
   * checkpoint: nothing the filter lets through committed up to it). Record it
   * as you record transactions' positions, or a quiet filter resumes from far back.
   */
  readonly onCheckpoint?: (position: string) => void;
}

/** int64 on the wire is a bigint here; a number must be a safe integer (a programmer error otherwise). */
function toInt64(amount: Amount): bigint {
  if (typeof amount === "number" && !Number.isSafeInteger(amount)) {
    throw new RangeError(`amount must be a safe integer or a bigint, got ${String(amount)}`);
  }
  return BigInt(amount);
}

interface MutationInput {
  readonly idempotencyKey?: string;
  readonly amount?: Amount;
}
type Int64Amount = { amount?: bigint };
type Keyed = { idempotencyKey: string };

function amountOf(input: MutationInput): Int64Amount {
  return input.amount === undefined ? {} : { amount: toInt64(input.amount) };
}

/** The caller's x-request-id, whatever its case, from the last headers that set one. */
function requestIdOf(...sources: (Readonly<Record<string, string>> | undefined)[]): string | undefined {
  let found: string | undefined;
  for (const source of sources) {
    for (const [name, value] of Object.entries(source ?? {})) {
      if (name.toLowerCase() === REQUEST_ID_HEADER && value !== "") {
        found = value;
      }
    }
  }
  return found;
}

function baseUrlOf(target: string, tls: boolean): string {
  if (target.includes("://")) {
    return target;
  }
  return `${tls ? "https" : "http"}://${target}`;
}

/**
 * A client of creditledger.v1.LedgerService. One instance per process is
 * enough: it multiplexes calls over one HTTP/2 connection. Every method
 * throws a LedgerError (or a subclass named after the ErrorInfo reason,
 * e.g. InsufficientCredits) when the call fails; a RangeError for an
 * amount that is not an integer.
 */
export class LedgerClient {
  readonly stub: Client<typeof LedgerService>;
  private readonly options: LedgerClientOptions;
  private readonly retryPolicy: RetryPolicy;
  private readonly sessionManager: Http2SessionManager | undefined;

  constructor(options: LedgerClientOptions) {
    this.options = options;
    this.retryPolicy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    if ((options.timeoutMs ?? DEFAULT_TIMEOUT_MS) <= 0 || this.retryPolicy.overallTimeoutMs <= 0) {
      throw new RangeError("timeoutMs and retry.overallTimeoutMs must be > 0");
    }
    if (!Number.isInteger(this.retryPolicy.maxAttempts) || this.retryPolicy.maxAttempts < 1) {
      throw new RangeError("retry.maxAttempts must be an integer >= 1");
    }
    let transport = options.transport;
    if (transport === undefined) {
      const baseUrl = baseUrlOf(options.target, options.tls !== undefined && options.tls !== false);
      const tlsOptions = typeof options.tls === "object" ? options.tls : {};
      this.sessionManager = new Http2SessionManager(
        baseUrl,
        { pingIntervalMs: options.keepaliveMs ?? DEFAULT_KEEPALIVE_MS },
        baseUrl.startsWith("https:") ? tlsOptions : {},
      );
      transport = createGrpcTransport({
        baseUrl,
        sessionManager: this.sessionManager,
        interceptors: [...(options.interceptors ?? [])],
      });
    }
    this.stub = createClient(LedgerService, transport);
  }

  /** Closes the connection; calls in flight fail with CANCELLED or UNAVAILABLE. */
  close(): void {
    this.sessionManager?.abort();
  }

  /**
   * Creates an account (with `parentId`: a member spending that pool's lots
   * when it has none of its own). Throws AccountExists when the id is taken (unless
   * `existOk`: then returns the existing account), InvalidArgument.
   * CreateAccount has no idempotency key: a create retried after a lost
   * response answers AccountExists, which `existOk` reads as success.
   */
  async createAccount(
    input: CreateAccountInput,
    settings?: CallSettings & { readonly existOk?: boolean },
  ): Promise<CreateAccountResponse> {
    try {
      return await this.read((options) => this.stub.createAccount(input, options), settings);
    } catch (error) {
      if (!(error instanceof AccountExists && settings?.existOk === true)) {
        throw error;
      }
      const { account } = await this.getAccount({ accountId: input.accountId }, settings);
      return create(CreateAccountResponseSchema, account === undefined ? {} : { account });
    }
  }

  /** Reads an account and its balances. Throws AccountNotFound. */
  getAccount(input: GetAccountInput, settings?: CallSettings): Promise<GetAccountResponse> {
    return this.read((options) => this.stub.getAccount(input, options), settings);
  }

  /** Adds credits as a new lot. Throws AccountNotFound, IdempotencyKeyReused, InvalidArgument. */
  grant(input: GrantInput, settings?: CallSettings): Promise<Mutation<GrantResponse>> {
    return this.mutate(this.stub.grant, input, settings);
  }

  /**
   * Holds credits, all or nothing. Throws InsufficientCredits,
   * AccountNotFound, IdempotencyKeyReused, InvalidArgument.
   */
  reserve(input: ReserveInput, settings?: CallSettings): Promise<Mutation<ReserveResponse>> {
    return this.mutate(this.stub.reserve, input, settings);
  }

  /**
   * Holds every leg or none (`overage` unset or REJECT); DEBT lets each leg go
   * below zero down to its pair's floor, still all or none; CAP holds what is
   * left for each leg, in order, possibly 0 (such a leg has no reservationId;
   * a group that took nothing, no groupId). Throws InsufficientCredits (legKey),
   * CapExceeded, AccountNotFound, IdempotencyKeyReused, InvalidArgument.
   */
  reserveGroup(input: ReserveGroupInput, settings?: CallSettings): Promise<Mutation<ReserveGroupResponse>> {
    const legs = input.legs.map((leg) => ({ ...leg, amount: toInt64(leg.amount) }));
    return this.mutate(this.stub.reserveGroup, { ...input, legs }, settings);
  }

  /**
   * Consumes part or all of a hold (`final` also releases the rest).
   * Throws ReservationNotFound, ReservationClosed, ReservationExpired,
   * AmountExceedsRemaining, IdempotencyKeyReused, InvalidArgument.
   */
  settle(input: SettleInput, settings?: CallSettings): Promise<Mutation<SettleResponse>> {
    return this.mutate(this.stub.settle, input, settings);
  }

  /** Gives held credits back (amount 0 or unset: all that remains). Throws as settle does. */
  release(input: ReleaseInput, settings?: CallSettings): Promise<Mutation<ReleaseResponse>> {
    return this.mutate(this.stub.release, input, settings);
  }

  /**
   * Gives settled credits back to available. Throws ReservationNotFound,
   * AmountExceedsSettled, IdempotencyKeyReused, InvalidArgument.
   */
  refund(input: RefundInput, settings?: CallSettings): Promise<Mutation<RefundResponse>> {
    return this.mutate(this.stub.refund, input, settings);
  }

  /**
   * Reserves and settles in one atomic step. Throws InsufficientCredits,
   * AccountNotFound, IdempotencyKeyReused, InvalidArgument.
   */
  charge(input: ChargeInput, settings?: CallSettings): Promise<Mutation<ChargeResponse>> {
    return this.mutate(this.stub.charge, input, settings);
  }

  /** Reads one reservation. Throws ReservationNotFound. */
  getReservation(input: GetReservationInput, settings?: CallSettings): Promise<GetReservationResponse> {
    return this.read((options) => this.stub.getReservation(input, options), settings);
  }

  /** Reads a group's legs. Throws ReservationGroupNotFound. */
  getReservationGroup(input: GetReservationGroupInput, settings?: CallSettings): Promise<GetReservationGroupResponse> {
    return this.read((options) => this.stub.getReservationGroup(input, options), settings);
  }

  /**
   * Reads one balance; an asset never granted reads as zeros. With
   * `asOfTime` (deadlines due by then applied) or `asOfPosition` (a
   * StreamedTransaction.position): the balance as it was then (neither with
   * `expiringWithin` nor `includeLots`). Throws AccountNotFound, InvalidArgument.
   */
  getBalance(input: GetBalanceInput, settings?: CallSettings): Promise<GetBalanceResponse> {
    return this.read((options) => this.stub.getBalance(input, options), settings);
  }

  /** Reads one page of an account's journal, newest first. Throws AccountNotFound, InvalidArgument. */
  listEntries(input: ListEntriesInput, settings?: CallSettings): Promise<ListEntriesResponse> {
    return this.read((options) => this.stub.listEntries(input, options), settings);
  }

  /** One page of an account's reservations, oldest first; `state` filters (unset: every state). */
  listReservations(input: ListReservationsInput, settings?: CallSettings): Promise<ListReservationsResponse> {
    return this.read((options) => this.stub.listReservations(input, options), settings);
  }

  /**
   * Sets how far below zero a DEBT-mode spend of the pair may go (`floor` <= 0).
   * Needs the admin permission. Throws AccountNotFound, PreconditionFailed,
   * PermissionDenied, IdempotencyKeyReused, InvalidArgument.
   */
  setSpendingLimits(input: SetSpendingLimitsInput, settings?: CallSettings): Promise<Mutation<SetSpendingLimitsResponse>> {
    return this.mutate(this.stub.setSpendingLimits, { ...input, floor: toInt64(input.floor) }, settings);
  }

  /**
   * Caps what the account may spend per `window` (`cap` unset removes it).
   * Needs the admin permission. Throws AccountNotFound, PreconditionFailed,
   * PermissionDenied, IdempotencyKeyReused, InvalidArgument.
   */
  setMemberCap(input: SetMemberCapInput, settings?: CallSettings): Promise<Mutation<SetMemberCapResponse>> {
    const { cap, ...rest } = input;
    return this.mutate(this.stub.setMemberCap, cap === undefined ? rest : { ...rest, cap: toInt64(cap) }, settings);
  }

  /**
   * Takes back unspent credits of one lot (`amount` unset or 0: all), never
   * held ones. Throws LotNotFound, CreditsHeld, AmountExceedsUnspent,
   * IdempotencyKeyReused, InvalidArgument.
   */
  voidGrant(input: VoidGrantInput, settings?: CallSettings): Promise<Mutation<VoidGrantResponse>> {
    return this.mutate(this.stub.voidGrant, input, settings);
  }

  /**
   * Grants `amount` every `periodCount` (default 1) `periodUnit`s from
   * `anchor` (default now) in `timeZone` (default UTC); the current period is
   * granted at once. Throws AccountNotFound, ScheduleLimitExceeded,
   * IdempotencyKeyReused, InvalidArgument.
   */
  createGrantSchedule(
    input: CreateGrantScheduleInput,
    settings?: CallSettings,
  ): Promise<Mutation<CreateGrantScheduleResponse>> {
    const { periodCount, ...rest } = input;
    return this.mutate(this.stub.createGrantSchedule, { ...rest, periodCount: toInt64(periodCount ?? 1) }, settings);
  }

  /** One schedule, as it is now. Throws ScheduleNotFound. */
  getGrantSchedule(input: GetGrantScheduleInput, settings?: CallSettings): Promise<GetGrantScheduleResponse> {
    return this.read((options) => this.stub.getGrantSchedule(input, options), settings);
  }

  /** One page of an account's schedules, oldest first. Throws AccountNotFound, InvalidArgument. */
  listGrantSchedules(input: ListGrantSchedulesInput, settings?: CallSettings): Promise<ListGrantSchedulesResponse> {
    return this.read((options) => this.stub.listGrantSchedules(input, options), settings);
  }

  /**
   * Every schedule of an account, oldest first, page after page.
   * `settings.timeoutMs` is the deadline of each page's call. Throws as listGrantSchedules.
   */
  async *iterGrantSchedules(
    input: Omit<ListGrantSchedulesInput, "pageToken">,
    settings?: CallSettings,
  ): AsyncGenerator<GrantSchedule> {
    let pageToken = "";
    do {
      const page = await this.listGrantSchedules({ ...input, pageToken }, settings);
      yield* page.schedules;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * New amount and/or rollover from the next period on (the current period
   * keeps its own). Throws ScheduleNotFound, IdempotencyKeyReused, InvalidArgument.
   */
  updateGrantSchedule(
    input: UpdateGrantScheduleInput,
    settings?: CallSettings,
  ): Promise<Mutation<UpdateGrantScheduleResponse>> {
    return this.mutate(this.stub.updateGrantSchedule, input, settings);
  }

  /**
   * No period starts after now; the current period's lot stays (and no longer
   * rolls over) unless `voidRemainder`. Throws ScheduleNotFound,
   * IdempotencyKeyReused, InvalidArgument.
   */
  cancelGrantSchedule(
    input: CancelGrantScheduleInput,
    settings?: CallSettings,
  ): Promise<Mutation<CancelGrantScheduleResponse>> {
    return this.mutate(this.stub.cancelGrantSchedule, input, settings);
  }

  /**
   * Credits written off at lot expiry in [start, end), by category and cost
   * basis. Throws AccountNotFound, InvalidArgument.
   */
  getBreakage(input: GetBreakageInput, settings?: CallSettings): Promise<GetBreakageResponse> {
    return this.read((options) => this.stub.getBreakage(input, options), settings);
  }

  /**
   * What took effect on the pair in (fromTime, toTime]: opening, one line per
   * movement, closing, and a page of entries (`nextPageToken` for the next,
   * with the same arguments). Throws AccountNotFound, InvalidArgument.
   */
  getStatement(input: GetStatementInput, settings?: CallSettings): Promise<GetStatementResponse> {
    return this.read((options) => this.stub.getStatement(input, options), settings);
  }

  /**
   * Sets the pair's low-balance alert (one per pair; setting again replaces
   * it). Its crossings come on the change stream. Idempotent, so retried.
   * Throws AccountNotFound, AlertLimitExceeded, PermissionDenied, InvalidArgument.
   */
  async setBalanceAlert(input: SetBalanceAlertInput, settings?: CallSettings): Promise<BalanceAlert | undefined> {
    const request = {
      ...input,
      threshold: toInt64(input.threshold),
      recovery: toInt64(input.recovery ?? 0),
    };
    const { alert } = await this.read((options) => this.stub.setBalanceAlert(request, options), settings);
    return alert;
  }

  /** The account's alerts, by asset. Throws AccountNotFound, InvalidArgument. */
  async listBalanceAlerts(input: ListBalanceAlertsInput, settings?: CallSettings): Promise<BalanceAlert[]> {
    const { alerts } = await this.read((options) => this.stub.listBalanceAlerts(input, options), settings);
    return alerts;
  }

  /** Deletes the pair's alert; false when there was none. Idempotent, so retried. */
  async deleteBalanceAlert(input: DeleteBalanceAlertInput, settings?: CallSettings): Promise<boolean> {
    const { deleted } = await this.read((options) => this.stub.deleteBalanceAlert(input, options), settings);
    return deleted;
  }

  /**
   * Every committed transaction the filters (and the caller's scope) let
   * through, in position order, for as long as the caller iterates: after
   * `afterPosition`, or `fromNow`, or (neither) from the journal's start.
   *
   * When the stream fails with a retryable code (UNAVAILABLE: a server
   * stopping or restarting, its database unreachable) it reconnects after the
   * last position it yielded (or a later checkpoint), with the retry policy's
   * backoff, for at most `settings.reconnectTimeoutMs` after one failure.
   * Within one iteration each transaction comes once. Delivery is at least
   * once across your restarts: record `transaction.position` once handled,
   * resume with `afterPosition`, and deduplicate by position (text order is
   * stream order). With `fromNow`, a failure before the first message starts
   * from now again: start from a position when nothing may be missed.
   * Throws TooManyStreams, PermissionDenied, InvalidArgument, and after the
   * reconnects Unavailable.
   */
  async *watchTransactions(
    input: WatchTransactionsInput,
    settings?: WatchSettings,
  ): AsyncGenerator<StreamedTransaction> {
    let position = input.afterPosition ?? "";
    const fromNow = input.fromNow === true;
    const policy = {
      ...this.retryPolicy,
      ...settings?.retry,
      ...(settings?.reconnectTimeoutMs === undefined ? {} : { overallTimeoutMs: settings.reconnectTimeoutMs }),
    };
    const requestId = requestIdOf(this.options.headers, settings?.headers) ?? randomUUID();
    let failures = 0; // connections failed since the last message
    let deadline = 0;
    let callbackFailed: { readonly error: unknown } | undefined;
    for (;;) {
      const request = { ...input, afterPosition: position, fromNow: fromNow && position === "" };
      let failure: LedgerError;
      try {
        const stream = this.stub.watchTransactions(request, {
          headers: await this.headers(settings, requestId),
          ...(settings?.signal === undefined ? {} : { signal: settings.signal }),
        });
        for await (const message of stream) {
          failures = 0;
          for (const transaction of message.transactions) {
            if (position !== "" && transaction.position <= position) {
              continue; // yielded already: never twice, never backwards
            }
            position = transaction.position;
            yield transaction;
          }
          if (message.transactions.length === 0 && message.position > position) {
            position = message.position;
            try {
              settings?.onCheckpoint?.(position);
            } catch (error) {
              callbackFailed = { error }; // the caller's own error: not a stream failure
              throw error;
            }
          }
        }
        return; // the server ended the stream
      } catch (error) {
        if (callbackFailed !== undefined) {
          throw callbackFailed.error;
        }
        failures += 1;
        failure = toLedgerError(error, { attempts: failures, requestId });
      }
      if (failures === 1) {
        deadline = Date.now() + policy.overallTimeoutMs;
      }
      const waitMs = Math.max(backoffMs(policy, failures - 1), failure.retryDelayMs ?? 0);
      // A lost connection reads as CANCELED in connect-node (the HTTP/2 session
      // is gone, its streams closed with CANCEL): unless our own signal asked
      // for it, that is a connection to make again, as UNAVAILABLE is.
      const lost = failure.code === Code.Canceled && settings?.signal?.aborted !== true;
      const retry =
        (lost || (failure.retryable && RETRYABLE_CODES.has(failure.code))) &&
        failures < policy.maxAttempts &&
        Date.now() + waitMs < deadline &&
        settings?.signal?.aborted !== true;
      if (!retry) {
        throw failure;
      }
      try {
        await sleep(waitMs, settings?.signal);
      } catch (cancelled) {
        throw toLedgerError(cancelled, { attempts: failures, requestId });
      }
    }
  }

  /**
   * Runs up to 1,000 commands (Charge, Reserve, Settle, Release, Refund,
   * Grant) in one call, in order. Each outcome holds the command's response
   * or the LedgerError its single call would throw, and its own `replayed`.
   * With `atomic`, all or nothing: one failing command throws its error for
   * the whole call (`metadata.batch_index` names it) and nothing is
   * recorded, so a corrected retry with the same keys runs. Throws
   * InvalidArgument for the batch's own limits, and what any call throws.
   */
  async submitBatch(
    commands: readonly BatchCommandInput[],
    settings?: CallSettings & { readonly atomic?: boolean },
  ): Promise<BatchOutcome[]> {
    const { commands: wire, keys } = batchCommands(commands, toInt64);
    const request = create(SubmitBatchRequestSchema, { commands: wire, atomic: settings?.atomic ?? false });
    const { response } = await this.run((options) => this.stub.submitBatch(request, options), settings, undefined);
    return batchOutcomes(response.outcomes, keys);
  }

  /** A Batcher: gathers callers' commands into SubmitBatch calls by size or delay. */
  batcher(options?: BatcherOptions): Batcher {
    return new Batcher(this, options);
  }

  /**
   * Holds `input.amount` for `work`, then settles what `hold.use()` recorded,
   * final, and returns what `work` returned. If `work` throws, the same settle
   * is made (delivered work is paid for) unless `options.onError` or
   * `hold.onError` is "release", then the work's error is rethrown. The
   * settle and release keys derive from the reservation, so rerunning with
   * the same `input.idempotencyKey` replays them; when that reservation is
   * already closed, `hold.finished` is true, `hold.use()` throws and nothing
   * more is settled. Throws as reserve, settle and release do.
   */
  withReservation<T>(input: ReserveInput, work: (hold: Hold) => Promise<T>, options?: HoldOptions): Promise<T> {
    return withReservation(this, input, work, options);
  }

  /**
   * Every entry of an account's journal, newest first, page after page.
   * `settings.timeoutMs` is the deadline of each page's call. Throws as listEntries.
   */
  async *iterEntries(input: Omit<ListEntriesInput, "pageToken">, settings?: CallSettings): AsyncGenerator<Entry> {
    let pageToken = "";
    do {
      const page = await this.listEntries({ ...input, pageToken }, settings);
      yield* page.entries;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  private async read<Response>(
    invoke: (options: CallOptions) => Promise<Response>,
    settings: CallSettings | undefined,
  ): Promise<Response> {
    const { response } = await this.run(invoke, settings, undefined);
    return response;
  }

  /** A mutating call: amount as int64, the idempotency key made once and kept across retries. */
  private async mutate<In extends MutationInput, Response extends object>(
    method: (request: Omit<In, "amount"> & Int64Amount & Keyed, options: CallOptions) => Promise<Response>,
    input: In,
    settings: CallSettings | undefined,
  ): Promise<Mutation<Response>> {
    const idempotencyKey =
      input.idempotencyKey !== undefined && input.idempotencyKey !== "" ? input.idempotencyKey : randomUUID();
    const request = { ...input, ...amountOf(input), idempotencyKey };
    const { response, replayed } = await this.run((options) => method(request, options), settings, idempotencyKey);
    return Object.assign(response, { replayed, idempotencyKey });
  }

  /** One call with its retries; failures come out as LedgerErrors. */
  private async run<Response>(
    invoke: (options: CallOptions) => Promise<Response>,
    settings: CallSettings | undefined,
    idempotencyKey: string | undefined,
  ): Promise<{ response: Response; replayed: boolean }> {
    const callTimeoutMs = settings?.timeoutMs;
    if (callTimeoutMs !== undefined && !(callTimeoutMs > 0)) {
      throw new RangeError(`timeoutMs must be > 0, got ${String(callTimeoutMs)}`);
    }
    const policy = {
      ...this.retryPolicy,
      ...settings?.retry,
      ...(callTimeoutMs === undefined ? {} : { overallTimeoutMs: callTimeoutMs }),
    };
    const attemptTimeoutMs = this.options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const requestId = requestIdOf(this.options.headers, settings?.headers) ?? randomUUID();
    try {
      return await withRetries(
        async (attemptTimeoutMs) => {
          let replayed = false;
          const markReplayed = (metadata: Headers): void => {
            replayed ||= metadata.get(REPLAYED_METADATA_KEY) === "true";
          };
          const response = await invoke({
            timeoutMs: attemptTimeoutMs,
            headers: await this.headers(settings, requestId),
            onHeader: markReplayed,
            onTrailer: markReplayed,
            ...(settings?.signal === undefined ? {} : { signal: settings.signal }),
          });
          return { response, replayed };
        },
        policy,
        attemptTimeoutMs,
        settings?.signal,
      );
    } catch (error) {
      if (error instanceof RetriesEnded) {
        throw toLedgerError(error.cause, { attempts: error.attempts, idempotencyKey, requestId });
      }
      throw error;
    }
  }

  private async headers(settings: CallSettings | undefined, requestId: string): Promise<Record<string, string>> {
    const headers: Record<string, string> = { ...this.options.headers, ...settings?.headers };
    if (requestIdOf(headers) === undefined) {
      headers[REQUEST_ID_HEADER] = requestId;
    }
    const token = this.options.token;
    if (token !== undefined) {
      headers["authorization"] = `Bearer ${typeof token === "function" ? await token() : token}`;
    }
    return headers;
  }
}
