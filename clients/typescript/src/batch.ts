// SubmitBatch: commands in, one outcome per command out, and a Batcher that
// gathers many callers' commands (one Charge per email open, say) into few
// calls, flushed by size or a few milliseconds after the first one waits.
//
// Every command keeps its own idempotency key (the caller's, or one made when
// the command is queued) across the client's retries of the call, so a retried
// flush replays each command instead of applying it twice.
import { randomUUID } from "node:crypto";

import { ConnectError } from "@connectrpc/connect";

import type { Amount, CallSettings, ChargeInput, GrantInput, LedgerClient, Mutation, RefundInput, ReleaseInput, ReserveInput, SettleInput } from "./client.js";
import { REPLAYED_METADATA_KEY, type LedgerError, toLedgerError } from "./errors.js";
import type {
  BatchCommand,
  BatchOutcome as BatchOutcomePb,
  ChargeResponse,
  GrantResponse,
  RefundResponse,
  ReleaseResponse,
  ReserveResponse,
  SettleResponse,
} from "./gen/creditledger/v1/ledger_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/** Commands per SubmitBatch call, as the server limits them (BATCH_COMMANDS_MAX). */
export const BATCH_COMMANDS_MAX = 1000;

/** One command of a batch: the input of its single-call method, under its name. */
export type BatchCommandInput =
  | { readonly charge: ChargeInput }
  | { readonly reserve: ReserveInput }
  | { readonly settle: SettleInput }
  | { readonly release: ReleaseInput }
  | { readonly refund: RefundInput }
  | { readonly grant: GrantInput };

/** What a command's single call would have answered. */
export type BatchResult =
  | { readonly kind: "charge"; readonly response: ChargeResponse }
  | { readonly kind: "reserve"; readonly response: ReserveResponse }
  | { readonly kind: "settle"; readonly response: SettleResponse }
  | { readonly kind: "release"; readonly response: ReleaseResponse }
  | { readonly kind: "refund"; readonly response: RefundResponse }
  | { readonly kind: "grant"; readonly response: GrantResponse };

/** One command's outcome: its result, or the LedgerError its single call would throw. */
export type BatchOutcome = (
  | (BatchResult & { readonly ok: true })
  | { readonly ok: false; readonly error: LedgerError }
) & {
  /** True when the server replayed this key's first outcome. */
  readonly replayed: boolean;
  /** The command's key: the caller's, or the one the client made. */
  readonly idempotencyKey: string;
};

type Int64 = (amount: Amount) => bigint;

/** The wire form of commands, each with its key fixed now (kept across retries). */
export function batchCommands(commands: readonly BatchCommandInput[], toInt64: Int64): {
  commands: Omit<BatchCommand, "$typeName" | "$unknown">[];
  keys: string[];
} {
  const keys: string[] = [];
  const wire = commands.map((command) => {
    const [kind, input] = Object.entries(command)[0] as [BatchResult["kind"], ChargeInput];
    const key = input.idempotencyKey !== undefined && input.idempotencyKey !== "" ? input.idempotencyKey : randomUUID();
    keys.push(key);
    const value = { ...input, idempotencyKey: key, ...(input.amount === undefined ? {} : { amount: toInt64(input.amount) }) };
    return { command: { case: kind, value } } as unknown as Omit<BatchCommand, "$typeName" | "$unknown">;
  });
  return { commands: wire, keys };
}

/** Each command's outcome, in order. */
export function batchOutcomes(outcomes: readonly BatchOutcomePb[], keys: readonly string[]): BatchOutcome[] {
  return outcomes.map((outcome, index) => {
    const common = { replayed: outcome.replayed, idempotencyKey: keys[index] ?? "" };
    const { case: kind, value } = outcome.outcome;
    if (kind === "error") {
      return { ok: false, error: statusError(value, common.replayed, common.idempotencyKey), ...common };
    }
    if (kind === undefined) {
      throw new Error("a batch outcome with neither result nor error");
    }
    return { ok: true, kind, response: value, ...common } as BatchOutcome;
  });
}

/** The typed error of a command's google.rpc.Status (as a failed single call would throw). */
function statusError(status: Status, replayed: boolean, idempotencyKey: string): LedgerError {
  const cause = new ConnectError(status.message, status.code, replayed ? { [REPLAYED_METADATA_KEY]: "true" } : {});
  for (const detail of status.details) {
    cause.details.push({ type: detail.typeUrl.slice(detail.typeUrl.lastIndexOf("/") + 1), value: detail.value });
  }
  return toLedgerError(cause, { attempts: 1, idempotencyKey });
}

export interface BatcherOptions {
  /** Send when this many commands wait (1 to 1000; default 100). */
  readonly maxCommands?: number;
  /** Send at latest this long after the first waiting command (default 5 ms). */
  readonly maxDelayMs?: number;
  /** Settings of each SubmitBatch call. */
  readonly settings?: CallSettings;
}

interface Waiting {
  readonly command: BatchCommandInput;
  readonly resolve: (outcome: BatchOutcome) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Gathers commands from many callers and sends them as SubmitBatch calls: when
 * `maxCommands` wait, or `maxDelayMs` after the first. Each caller's promise
 * settles with its own command's result, or rejects with its own LedgerError;
 * a failure of the whole call rejects every command of that call. `close()`
 * sends what waits and waits for every call in flight.
 */
export class Batcher {
  private readonly client: LedgerClient;
  private readonly maxCommands: number;
  private readonly maxDelayMs: number;
  private readonly settings: CallSettings | undefined;
  private waiting: Waiting[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly calls = new Set<Promise<void>>();

  constructor(client: LedgerClient, options: BatcherOptions = {}) {
    this.client = client;
    this.maxCommands = options.maxCommands ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5;
    this.settings = options.settings;
    if (!Number.isInteger(this.maxCommands) || this.maxCommands < 1 || this.maxCommands > BATCH_COMMANDS_MAX) {
      throw new RangeError(`maxCommands must be an integer from 1 to ${String(BATCH_COMMANDS_MAX)}`);
    }
  }

  /** Queues one command; its outcome (a failed command resolves with ok: false). */
  submit(command: BatchCommandInput): Promise<BatchOutcome> {
    return new Promise<BatchOutcome>((resolve, reject) => {
      this.waiting.push({ command, resolve, reject });
      if (this.waiting.length >= this.maxCommands) {
        this.flush();
      } else if (this.timer === undefined) {
        this.timer = setTimeout(() => this.flush(), this.maxDelayMs);
      }
    });
  }

  /** One Charge through the batcher; throws what LedgerClient.charge throws. */
  async charge(input: ChargeInput): Promise<Mutation<ChargeResponse>> {
    const outcome = await this.submit({ charge: input });
    if (!outcome.ok) {
      throw outcome.error;
    }
    if (outcome.kind !== "charge") {
      throw new Error(`a Charge answered ${outcome.kind}`);
    }
    return Object.assign(outcome.response, { replayed: outcome.replayed, idempotencyKey: outcome.idempotencyKey });
  }

  /** Sends what waits now, without waiting for the call. */
  flush(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const waiting = this.waiting;
    this.waiting = [];
    if (waiting.length === 0) {
      return;
    }
    const call = this.send(waiting).finally(() => this.calls.delete(call));
    this.calls.add(call);
  }

  /** Sends what waits and waits for every call in flight. */
  async close(): Promise<void> {
    this.flush();
    while (this.calls.size > 0) {
      await Promise.allSettled([...this.calls]);
    }
  }

  private async send(waiting: readonly Waiting[]): Promise<void> {
    let outcomes: BatchOutcome[];
    try {
      outcomes = await this.client.submitBatch(
        waiting.map((w) => w.command),
        this.settings,
      );
    } catch (error) {
      for (const w of waiting) {
        w.reject(error);
      }
      return;
    }
    waiting.forEach((w, index) => {
      const outcome = outcomes[index];
      if (outcome === undefined) {
        w.reject(new Error("the server answered fewer outcomes than commands"));
      } else {
        w.resolve(outcome);
      }
    });
  }
}
