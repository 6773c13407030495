// The reservation helper: hold credits for a piece of work, pay for what it
// used, give the rest back, and never give finished work away.
//
//   const sent = await client.withReservation(
//     { accountId, asset: "crm_credits", amount: 3_000, idempotencyKey: `run-${runId}` },
//     async (hold) => {
//       if (hold.finished) return 0;          // an earlier run already closed it
//       for (const customer of customers) { await send(customer); hold.use(1); }
//       return customers.length;
//     },
//   );
//
// When the work returns, what `hold.use()` recorded is settled, final (the
// rest goes back to available). When it throws, the same settle is made, so
// delivered work is paid for, unless `onError` is "release". The settle and
// release keys derive from the reservation, so rerunning the work with the
// same reserve key replays them instead of failing RESERVATION_CLOSED.
import type { Amount, LedgerClient, Mutation, ReserveInput } from "./client.js";
import {
  type ReleaseResponse,
  type Reservation,
  Reservation_State,
  type SettleResponse,
} from "./gen/creditledger/v1/ledger_pb.js";

/** What the helper does when the work throws: settle what was used (default), or release it all. */
export type HoldOnError = "settle" | "release";

/** The idempotency key of the helper's final Settle of a reservation. */
export function holdSettleKey(reservationId: string): string {
  return `hold:${reservationId}:settle`;
}

/** The idempotency key of the helper's Release of a reservation. */
export function holdReleaseKey(reservationId: string): string {
  return `hold:${reservationId}:release`;
}

/** Credits held for one piece of work, and what it used so far. */
export class Hold {
  /** The reservation: the reserve's outcome, or its current state when the reserve was replayed. */
  readonly reservation: Reservation;
  /** True when the reserve replayed an earlier one with the same key. */
  readonly replayed: boolean;
  /** What leaving with an exception does; the work may change it. */
  onError: HoldOnError;
  /** Credits recorded as used. */
  used = 0n;
  /** The helper's settle or release, once the work has ended. */
  result: Mutation<SettleResponse> | Mutation<ReleaseResponse> | undefined;
  /** When the work threw and the settle or release failed too: that failure (the work's error is rethrown). */
  closeError: unknown;

  constructor(reservation: Reservation, replayed: boolean, onError: HoldOnError) {
    this.reservation = reservation;
    this.replayed = replayed;
    this.onError = onError;
  }

  get reservationId(): string {
    return this.reservation.reservationId;
  }

  /** True when the reservation was already closed or expired as the work began: do not do it again. */
  get finished(): boolean {
    return this.reservation.state !== Reservation_State.OPEN;
  }

  /** Held credits not used yet (of what the reservation still held as the work began). */
  get unused(): bigint {
    return this.reservation.remaining - this.used;
  }

  /** Records that `amount` credits were consumed. Throws RangeError past the hold, Error on a finished hold. */
  use(amount: Amount): void {
    if (this.finished) {
      throw new Error(
        `reservation ${this.reservationId} is already ${Reservation_State[this.reservation.state].toLowerCase()} ` +
          "(an earlier run finished it): check hold.finished before doing the work",
      );
    }
    const n = BigInt(amount);
    if (n <= 0n) {
      throw new RangeError(`use() takes a positive amount, got ${String(amount)}`);
    }
    if (n > this.unused) {
      throw new RangeError(
        `use(${String(n)}) exceeds the hold: ${String(this.unused)} of ${String(this.reservation.remaining)} unused`,
      );
    }
    this.used += n;
  }
}

/** Options of withReservation. */
export interface HoldOptions {
  /** "settle" (default): pay for what was used when the work throws; "release": give it all back. */
  readonly onError?: HoldOnError;
}

/** The body of LedgerClient.withReservation; see there. */
export async function withReservation<T>(
  client: LedgerClient,
  input: ReserveInput,
  work: (hold: Hold) => Promise<T>,
  options: HoldOptions = {},
): Promise<T> {
  const onError = options.onError ?? "settle";
  if (onError !== "settle" && onError !== "release") {
    throw new RangeError(`onError is "settle" or "release", got ${String(onError)}`);
  }
  const reserved = await client.reserve(input);
  let reservation = reserved.reservation;
  if (reservation === undefined) {
    throw new Error("Reserve answered without a reservation");
  }
  if (reserved.replayed) {
    // The replay is the reserve's first outcome; what happened since decides.
    reservation = (await client.getReservation({ reservationId: reservation.reservationId })).reservation ?? reservation;
  }
  const hold = new Hold(reservation, reserved.replayed, onError);
  let value: T;
  try {
    value = await work(hold);
  } catch (error) {
    if (!hold.finished) {
      try {
        await close(client, hold, hold.used > 0n && hold.onError === "settle");
      } catch (closeError) {
        // The work's own error matters more; a rerun with the same reserve key closes the hold.
        hold.closeError = closeError;
      }
    }
    throw error;
  }
  if (!hold.finished) {
    await close(client, hold, true);
  }
  return value;
}

async function close(client: LedgerClient, hold: Hold, settle: boolean): Promise<void> {
  const reservationId = hold.reservationId;
  hold.result = settle
    ? await client.settle({ reservationId, amount: hold.used, final: true, idempotencyKey: holdSettleKey(reservationId) })
    : await client.release({ reservationId, idempotencyKey: holdReleaseKey(reservationId) });
}
