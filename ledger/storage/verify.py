"""`ledger verify`: every invariant, checked against the database in one snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.storage import hosts

# Every reservation, hot or archived (`ledger archive reservations`): the
# invariants hold for both, and entries keep pointing at archived ones.
_ALL_RESERVATIONS = (
    "(SELECT * FROM reservations UNION ALL"
    " SELECT (jsonb_populate_record(NULL::reservations, doc)).* FROM reservations_archive)"
)

# (name, what it means, query returning offending rows; none means it holds)
CHECKS: list[tuple[str, str, str]] = [
    (
        "transactions_balance",
        "every ledger transaction's entries sum to zero per asset",
        "SELECT transaction_id, asset, sum(amount) AS total FROM entries GROUP BY 1, 2 HAVING sum(amount) <> 0",
    ),
    (
        "assets_balance",
        "all entries of an asset sum to zero",
        "SELECT asset, sum(amount) AS total FROM entries GROUP BY 1 HAVING sum(amount) <> 0",
    ),
    (
        "balances_match_entries",
        "each balance (available, reserved, debt and lifetime totals) equals its entries"
        " (lifetime totals saturate at INT64_MAX: workingset.saturating)",
        """WITH e AS (
          SELECT account_id, asset,
            coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0) AS available,
            coalesce(sum(amount) FILTER (WHERE bucket = 'held'), 0) AS reserved,
            least(coalesce(sum(amount) FILTER (WHERE movement = 'grant'), 0), 9223372036854775807) AS granted,
            least(coalesce(-sum(amount) FILTER (WHERE movement = 'settle'), 0), 9223372036854775807) AS settled,
            least(coalesce(sum(amount) FILTER (WHERE movement = 'refund'), 0), 9223372036854775807) AS refunded,
            least(coalesce(-sum(amount) FILTER (WHERE movement = 'lot_expiry'), 0), 9223372036854775807) AS expired,
            coalesce(sum(amount) FILTER (WHERE movement IN ('debt', 'debt_repayment')), 0) AS debt
          FROM entries WHERE bucket <> 'system' GROUP BY 1, 2)
        SELECT coalesce(b.account_id, e.account_id) AS account_id, coalesce(b.asset, e.asset) AS asset,
               b.available, e.available AS entries_available, b.reserved, e.reserved AS entries_reserved,
               b.granted, e.granted AS entries_granted, b.settled, e.settled AS entries_settled,
               b.refunded, e.refunded AS entries_refunded, b.expired, e.expired AS entries_expired,
               b.debt, e.debt AS entries_debt
        FROM balances b FULL JOIN e ON b.account_id = e.account_id AND b.asset = e.asset
        WHERE (coalesce(b.available, 0), coalesce(b.reserved, 0), coalesce(b.granted, 0),
               coalesce(b.settled, 0), coalesce(b.refunded, 0), coalesce(b.expired, 0), coalesce(b.debt, 0))
           IS DISTINCT FROM (coalesce(e.available, 0), coalesce(e.reserved, 0), coalesce(e.granted, 0),
               coalesce(e.settled, 0), coalesce(e.refunded, 0), coalesce(e.expired, 0), coalesce(e.debt, 0))""",
    ),
    (
        "never_below_floor",
        "no spend (reserve, charge) left its pair's position (available - debt) below the"
        " floor in force, replayed from the journal: entries in order and every floor set"
        " (spending_limits; a floor set at the spend's own instant counts if lower)",
        """WITH t AS (
          SELECT account_id, asset, transaction_id, min(entry_id) AS first_id, min(created_at) AS at,
                 coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0)
                 - coalesce(sum(amount) FILTER (WHERE movement IN ('debt', 'debt_repayment')), 0) AS delta,
                 bool_or(bucket = 'available' AND amount < 0 AND movement IN ('reserve', 'settle')) AS spend
          FROM entries WHERE bucket <> 'system' GROUP BY 1, 2, 3
        ), run AS (
          SELECT account_id, asset, transaction_id, at, spend,
                 sum(delta) OVER (PARTITION BY account_id, asset ORDER BY first_id) AS position
          FROM t
        )
        SELECT r.account_id, r.asset, r.transaction_id, r.position, coalesce(f.floor, 0) AS floor
        FROM run r LEFT JOIN LATERAL (
          SELECT min(s.value) AS floor FROM spending_limits s
          WHERE s.account_id = r.account_id AND s.asset = r.asset AND s.kind = 'floor'
            AND s.created_at <= r.at
            AND s.created_at >= coalesce((SELECT max(p.created_at) FROM spending_limits p
                 WHERE p.account_id = r.account_id AND p.asset = r.asset AND p.kind = 'floor'
                   AND p.created_at < r.at), '-infinity')
        ) f ON true
        WHERE r.spend AND r.position < coalesce(f.floor, 0)""",
    ),
    (
        "cap_held_matches_open_holds",
        "each account's cap_held equals what its spends' open reservations hold, on its own"
        " pair or a pool's (member_id)",
        """WITH h AS (SELECT coalesce(member_id, account_id) AS account_id, asset,
                          sum(amount - settled - released - expired) AS held
                   FROM reservations WHERE state = 'open' GROUP BY 1, 2)
        SELECT coalesce(b.account_id, h.account_id) AS account_id, coalesce(b.asset, h.asset) AS asset,
               b.cap_held, h.held
        FROM balances b FULL JOIN h ON b.account_id = h.account_id AND b.asset = h.asset
        WHERE coalesce(b.cap_held, 0) <> coalesce(h.held, 0)""",
    ),
    (
        "never_past_cap",
        "no spend (reserve, charge) took an account past a cap in force, replayed from the"
        " journal: per spender, held now (held entries of its reservations) plus settled"
        " (@consumed settle entries) in the UTC day, calendar month or ever",
        f"""WITH r AS (
          SELECT reservation_id, coalesce(member_id, account_id) AS spender FROM {_ALL_RESERVATIONS} x
        ), ev AS (
          SELECT r.spender, e.asset, e.transaction_id, min(e.entry_id) AS first_id,
                 min(e.created_at) AS at,
                 coalesce(sum(e.amount) FILTER (WHERE e.bucket = 'held'), 0) AS d_held,
                 coalesce(sum(e.amount) FILTER (WHERE e.account_id = '@consumed'
                                                  AND e.movement = 'settle'), 0) AS d_spent,
                 bool_or((e.bucket = 'held' AND e.amount > 0 AND e.movement = 'reserve')
                         OR (e.bucket = 'available' AND e.amount < 0 AND e.movement = 'settle')) AS spend
          FROM entries e JOIN r USING (reservation_id)
          GROUP BY 1, 2, 3
        ), run AS (
          SELECT spender, asset, transaction_id, at, spend,
                 sum(d_held) OVER (PARTITION BY spender, asset ORDER BY first_id) AS held,
                 sum(d_spent) OVER (PARTITION BY spender, asset ORDER BY first_id) AS spent_total,
                 sum(d_spent) OVER (PARTITION BY spender, asset, (at AT TIME ZONE 'UTC')::date
                                    ORDER BY first_id) AS spent_day,
                 sum(d_spent) OVER (PARTITION BY spender, asset,
                                    date_trunc('month', at AT TIME ZONE 'UTC') ORDER BY first_id) AS spent_month
          FROM ev
        ), checks AS (
          SELECT run.*, k.kind,
                 run.held + CASE k.kind WHEN 'cap_day' THEN run.spent_day
                                        WHEN 'cap_month' THEN run.spent_month
                                        ELSE run.spent_total END AS used
          FROM run CROSS JOIN (VALUES ('cap_day'), ('cap_month'), ('cap_lifetime')) AS k(kind)
          WHERE run.spend
        )
        SELECT c.spender AS account_id, c.asset, c.transaction_id, c.kind, c.used, f.cap
        FROM checks c JOIN LATERAL (
          SELECT min(s.value) AS cap FROM spending_limits s
          WHERE s.account_id = c.spender AND s.asset = c.asset AND s.kind = c.kind
            AND s.created_at <= c.at
            AND s.created_at >= coalesce((SELECT max(p.created_at) FROM spending_limits p
                 WHERE p.account_id = c.spender AND p.asset = c.asset AND p.kind = c.kind
                   AND p.created_at < c.at), '-infinity')
        ) f ON true
        WHERE f.cap IS NOT NULL AND c.used > f.cap""",
    ),
    (
        "versions_count_changes",
        "each pair's version equals the ledger transactions that moved it plus the floors set"
        " on it (each change of a pair, a command or a deadline, is one transaction:"
        " docs/design.md, 'Versions')",
        """WITH e AS (SELECT account_id, asset, count(DISTINCT transaction_id) AS changes
                   FROM entries WHERE bucket <> 'system' GROUP BY 1, 2
                   UNION ALL
                   SELECT account_id, asset, count(*) FROM spending_limits GROUP BY 1, 2),
             c AS (SELECT account_id, asset, sum(changes) AS changes FROM e GROUP BY 1, 2)
        SELECT b.account_id, b.asset, b.version, coalesce(c.changes, 0) AS changes
        FROM balances b LEFT JOIN c USING (account_id, asset)
        WHERE b.version <> coalesce(c.changes, 0)""",
    ),
    (
        "balance_after_matches_entries",
        "each customer entry's balance-after columns (the change stream's and as-of"
        " reads' source) equal the running sums of its account x asset's entries",
        """SELECT account_id, asset, entry_id FROM (
          SELECT account_id, asset, entry_id,
            (available_after, reserved_after, granted_after, settled_after, refunded_after,
             expired_after) AS stored,
            (coalesce(sum(amount) FILTER (WHERE bucket = 'available') OVER w, 0)::int8,
             coalesce(sum(amount) FILTER (WHERE bucket = 'held') OVER w, 0)::int8,
             least(coalesce(sum(amount) FILTER (WHERE movement = 'grant') OVER w, 0), 9223372036854775807)::int8,
             least(coalesce(-sum(amount) FILTER (WHERE movement = 'settle') OVER w, 0), 9223372036854775807)::int8,
             least(coalesce(sum(amount) FILTER (WHERE movement = 'refund') OVER w, 0), 9223372036854775807)::int8,
             least(coalesce(-sum(amount) FILTER (WHERE movement = 'lot_expiry') OVER w, 0), 9223372036854775807)::int8
            ) AS derived
          FROM entries WHERE bucket <> 'system'
          WINDOW w AS (PARTITION BY account_id, asset ORDER BY xid, entry_id)) AS e
        WHERE stored IS DISTINCT FROM derived""",
    ),
    (
        "statements_reconcile",
        "a random sample of 100 statements (a pair's journal between two of its rows):"
        " the opening balance plus the entries between is the closing balance",
        """WITH pick AS (
          SELECT account_id, asset, xid, entry_id, available_after, reserved_after
          FROM entries WHERE bucket <> 'system' ORDER BY random() LIMIT 100
        ), win AS (
          SELECT p.account_id, p.asset, o.xid AS open_xid, o.entry_id AS opening_entry_id,
                 p.xid AS close_xid, p.entry_id AS closing_entry_id,
                 o.available_after AS opening_available, o.reserved_after AS opening_reserved,
                 p.available_after AS closing_available, p.reserved_after AS closing_reserved
          FROM pick p CROSS JOIN LATERAL (
            SELECT xid, entry_id, available_after, reserved_after FROM entries o
            WHERE o.account_id = p.account_id AND o.asset = p.asset AND o.bucket <> 'system'
              AND (o.xid, o.entry_id) < (p.xid, p.entry_id)
            ORDER BY random() LIMIT 1) AS o
        )
        SELECT w.account_id, w.asset, w.opening_entry_id, w.closing_entry_id FROM win w
        CROSS JOIN LATERAL (
          SELECT coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0) AS available,
                 coalesce(sum(amount) FILTER (WHERE bucket = 'held'), 0) AS reserved
          FROM entries e WHERE e.account_id = w.account_id AND e.asset = w.asset
            AND e.bucket <> 'system' AND (e.xid, e.entry_id) > (w.open_xid, w.opening_entry_id)
            AND (e.xid, e.entry_id) <= (w.close_xid, w.closing_entry_id)) AS moved
        WHERE w.opening_available + moved.available <> w.closing_available
           OR w.opening_reserved + moved.reserved <> w.closing_reserved""",
    ),
    (
        "reserved_matches_open_reservations",
        "reserved equals the remaining of open reservations' allocations on the pair"
        " (a split spend holds on each account its lots belong to)",
        """WITH r AS (SELECT coalesce(a->>'account_id', x.account_id) AS account_id, x.asset,
                          sum((a->>'drawn')::int8 - (a->>'settled')::int8 - (a->>'released')::int8
                              - coalesce((a->>'expired')::int8, 0)) AS held
                   FROM reservations x, jsonb_array_elements(x.allocations) AS a
                   WHERE x.state = 'open' GROUP BY 1, 2)
        SELECT coalesce(b.account_id, r.account_id) AS account_id, coalesce(b.asset, r.asset) AS asset,
               b.reserved, r.held
        FROM balances b FULL JOIN r ON b.account_id = r.account_id AND b.asset = r.asset
        WHERE coalesce(b.reserved, 0) <> coalesce(r.held, 0)""",
    ),
    (
        "available_not_negative",
        "no available or reserved balance is negative",
        "SELECT account_id, asset, available, reserved FROM balances WHERE available < 0 OR reserved < 0",
    ),
    (
        "reservation_caps",
        "settled + released + expired <= amount and refunded <= settled; closed ones hold nothing"
        " (the rule: rules.refund and rules._exceeds_remaining; the constraints: the CHECKs of"
        " reservations in migrations 0001 and 0005; docs/design.md, 'Where a rule lives')",
        f"""SELECT reservation_id, state, amount, settled, released, expired, refunded FROM {_ALL_RESERVATIONS} r
        WHERE settled + released + expired > amount OR refunded > settled OR settled < 0 OR released < 0
           OR refunded < 0 OR expired < 0 OR (state <> 'open' AND settled + released + expired <> amount)""",
    ),
    (
        "reservation_allocations",
        "a reservation's per-lot allocations add up to its totals",
        f"""SELECT r.reservation_id, r.amount, r.settled, r.released, r.expired, r.refunded, a.drawn,
               a.settled AS a_settled, a.released AS a_released, a.expired AS a_expired,
               a.refunded AS a_refunded
        FROM {_ALL_RESERVATIONS} r CROSS JOIN LATERAL (
          SELECT coalesce(sum((x->>'drawn')::int8), 0) AS drawn,
                 coalesce(sum((x->>'settled')::int8), 0) AS settled,
                 coalesce(sum((x->>'released')::int8), 0) AS released,
                 coalesce(sum((x->>'expired')::int8), 0) AS expired,
                 coalesce(sum((x->>'refunded')::int8), 0) AS refunded
          FROM jsonb_array_elements(r.allocations) AS x) a
        WHERE (a.drawn, a.settled, a.released, a.expired, a.refunded) IS DISTINCT FROM
              (r.amount, r.settled, r.released, r.expired, r.refunded)""",
    ),
    (
        "reservation_held_on",
        "a reservation's held_on lists the accounts other than its own whose lots its"
        " allocations name (ListReservations and VoidGrant find split holds by it;"
        " migration 0020)",
        """SELECT r.reservation_id, r.account_id, r.held_on, a.named
        FROM reservations r CROSS JOIN LATERAL (
          SELECT ARRAY(SELECT DISTINCT x->>'account_id' FROM jsonb_array_elements(r.allocations) AS x
                       WHERE x->>'account_id' <> r.account_id) AS named) a
        WHERE NOT (r.held_on @> a.named AND a.named @> r.held_on)""",
    ),
    (
        "reservation_holds_match_entries",
        "each reservation's held entries equal what it still holds",
        """WITH h AS (SELECT reservation_id, sum(amount) AS held FROM entries
                   WHERE bucket = 'held' GROUP BY 1)
        SELECT r.reservation_id, r.state, r.amount - r.settled - r.released - r.expired AS remaining, h.held
        FROM reservations r LEFT JOIN h USING (reservation_id)
        WHERE coalesce(h.held, 0)
              <> CASE WHEN r.state = 'open' THEN r.amount - r.settled - r.released - r.expired ELSE 0 END""",
    ),
    (
        # Its own check, not a UNION ALL in the one above: joined to a union, the
        # planner lost the key's uniqueness, estimated 90 M rows and, under verify's
        # LIMIT, chose a nested loop over every reservation x every hold (minutes).
        "archived_reservations_hold_nothing",
        "an archived reservation's held entries sum to zero",
        """WITH h AS (SELECT reservation_id, sum(amount) AS held FROM entries
                   WHERE bucket = 'held' GROUP BY 1)
        SELECT a.reservation_id, h.held FROM reservations_archive a JOIN h USING (reservation_id)
        WHERE h.held <> 0""",
    ),
    (
        "reservation_in_one_table",
        "an archived reservation is no longer in the hot table",
        "SELECT reservation_id FROM reservations JOIN reservations_archive USING (reservation_id)",
    ),
    (
        "lot_bounds",
        "every lot's remaining is between 0 and its amount",
        "SELECT lot_id, amount, remaining FROM lots WHERE remaining < 0 OR remaining > amount",
    ),
    (
        "available_matches_lots",
        "available equals the sum of the lots' unreserved remainders",
        """WITH l AS (SELECT account_id, asset, sum(remaining) AS remaining FROM lots GROUP BY 1, 2)
        SELECT coalesce(b.account_id, l.account_id) AS account_id, coalesce(b.asset, l.asset) AS asset,
               b.available, l.remaining
        FROM balances b FULL JOIN l ON b.account_id = l.account_id AND b.asset = l.asset
        WHERE coalesce(b.available, 0) <> coalesce(l.remaining, 0)""",
    ),
    (
        "lots_match_entries",
        "each lot's remaining equals its available-bucket entries",
        """WITH e AS (SELECT lot_id, sum(amount) AS available FROM entries
                   WHERE bucket = 'available' AND lot_id IS NOT NULL GROUP BY 1)
        SELECT l.lot_id, l.remaining, e.available FROM lots l LEFT JOIN e USING (lot_id)
        WHERE l.remaining <> coalesce(e.available, 0)""",
    ),
    (
        "nothing_spent_from_expired_lots",
        "no credit is reserved or charged from a lot after its expiry",
        """SELECT e.entry_id, e.lot_id, e.movement, e.created_at, l.expires_at FROM entries e JOIN lots l USING (lot_id)
        WHERE e.bucket = 'available' AND e.amount < 0 AND e.movement IN ('reserve', 'settle')
          AND l.expires_at IS NOT NULL AND e.created_at >= l.expires_at""",
    ),
    (
        "expired_matches_write_offs",
        "credits written off equal the expired movements to @expired",
        """SELECT asset, sum(amount) FILTER (WHERE account_id = '@expired') AS to_expired,
               (SELECT coalesce(sum(expired), 0) FROM balances b WHERE b.asset = e.asset) AS balances_expired
        FROM entries e WHERE movement = 'lot_expiry'
          AND NOT EXISTS (SELECT 1 FROM balances s WHERE s.asset = e.asset AND s.expired = 9223372036854775807)
        GROUP BY asset
        HAVING sum(amount) FILTER (WHERE account_id = '@expired')
               <> (SELECT coalesce(sum(expired), 0) FROM balances b WHERE b.asset = e.asset)""",
    ),
]

# Grant schedules (issue 23; ledger/domain/schedules.py).
CHECKS += [
    (
        "schedule_periods_issued_once",
        "each grant schedule's periods first_period .. next_period - 1 have one lot each,"
        " and no other period has one (the unique key lots_schedule_period, migration 0014)",
        """WITH l AS (SELECT schedule_id, count(*) AS lots, count(DISTINCT period) AS periods,
                          min(period) AS lo, max(period) AS hi
                   FROM lots WHERE schedule_id IS NOT NULL AND category <> 'rollover' GROUP BY 1)
        SELECT s.schedule_id, s.first_period, s.next_period, l.lots, l.periods, l.lo, l.hi
        FROM grant_schedules s LEFT JOIN l USING (schedule_id)
        WHERE coalesce(l.lots, 0) <> s.next_period - s.first_period
           OR coalesce(l.periods, 0) <> s.next_period - s.first_period
           OR (l.lots > 0 AND (l.lo <> s.first_period OR l.hi <> s.next_period - 1))""",
    ),
    (
        "rollover_within_cap",
        "a rollover lot comes from its period's allowance lot and never exceeds the"
        " schedule's cap (amount, percentage of the period's amount) nor that lot",
        # The period's rollover terms: the last UpdateGrantSchedule change from
        # that period or before (terms), else the schedule's own (rollover).
        """SELECT r.lot_id, r.schedule_id, r.period, r.amount, a.amount AS period_amount, t.ro
        FROM lots r JOIN grant_schedules s USING (schedule_id)
        CROSS JOIN LATERAL (SELECT coalesce(
            (SELECT x->'rollover' FROM jsonb_array_elements(s.terms) AS x
             WHERE (x->>'from_period')::int <= r.period
             ORDER BY (x->>'from_period')::int DESC LIMIT 1), s.rollover, 'null'::jsonb) AS ro) AS t
        LEFT JOIN lots a ON a.schedule_id = r.schedule_id AND a.period = r.period
                        AND a.category <> 'rollover'
        WHERE r.category = 'rollover'
          AND (a.lot_id IS NULL OR a.category <> 'allowance' OR t.ro = 'null'::jsonb
               OR r.amount > a.amount
               OR r.amount > coalesce((t.ro->>'cap_amount')::int8, r.amount)
               OR r.amount > coalesce(a.amount * (t.ro->>'cap_percent')::int8 / 100, r.amount))""",
    ),
    (
        "rollover_only_from_allowance",
        "rollover entries take credits only from allowance lots and give them only to rollover lots",
        """SELECT e.entry_id, e.lot_id, l.category, e.amount FROM entries e JOIN lots l USING (lot_id)
        WHERE e.movement = 'rollover' AND e.bucket = 'available'
          AND ((e.amount < 0 AND l.category <> 'allowance') OR (e.amount > 0 AND l.category <> 'rollover'))""",
    ),
]

# Breakage (GetBreakage) is read from the write-off entries of lots: each is a
# lot's, never before the lot expired, and they add up to what @expired received.
CHECKS += [
    (
        "breakage_is_lot_write_offs",
        "per asset, the customer side of lot_expiry entries (each naming a lot, GetBreakage's"
        " source) equals what the system account @expired received",
        """SELECT e.asset,
               -sum(e.amount) FILTER (WHERE e.account_id NOT LIKE '@%' AND l.lot_id IS NOT NULL) AS breakage,
               sum(e.amount) FILTER (WHERE e.account_id = '@expired') AS to_expired
        FROM entries e LEFT JOIN lots l USING (lot_id)
        WHERE e.movement = 'lot_expiry'
        GROUP BY e.asset
        HAVING coalesce(-sum(e.amount) FILTER (WHERE e.account_id NOT LIKE '@%' AND l.lot_id IS NOT NULL), 0)
               <> coalesce(sum(e.amount) FILTER (WHERE e.account_id = '@expired'), 0)""",
    ),
    (
        "breakage_after_expiry",
        "no credit is written off as breakage before its lot's expiry",
        """SELECT e.entry_id, e.lot_id, e.created_at, l.expires_at FROM entries e JOIN lots l USING (lot_id)
        WHERE e.movement = 'lot_expiry' AND e.bucket <> 'system'
          AND (l.expires_at IS NULL OR e.created_at < l.expires_at)""",
    ),
]

# Not broken ledgers, but a sweeper that is behind.
WARNINGS: list[tuple[str, str, str]] = [
    (
        "reservations_overdue",
        "open reservations more than 60 s past expiry",
        "SELECT reservation_id, expires_at FROM reservations WHERE state = 'open' AND expires_at < now() - interval '60 seconds'",
    ),
    (
        "lots_overdue",
        "lots with a remainder more than 60 s past expiry",
        "SELECT lot_id, expires_at, remaining FROM lots WHERE remaining > 0 AND expires_at < now() - interval '60 seconds'",
    ),
    (
        "schedules_overdue",
        "grant schedules whose next period started more than 60 s ago and is not yet"
        " written down (every read and rule sees it already)",
        "SELECT schedule_id, next_period, next_start FROM grant_schedules"
        " WHERE state = 'active' AND next_start < now() - interval '60 seconds'",
    ),
]


# `verify --account ID`: each check's offending rows that concern one account,
# by the key its rows carry. Asset-wide checks keep the rows of the account's
# assets (an asset that does not sum to zero concerns every holder). The
# checks themselves run whole, so a scoped run proves nothing more about the
# other accounts, and costs as much as a full one.
_ACCOUNT_SCOPE = {
    "account_id": "q.account_id = $1",
    "reservation_id": "q.reservation_id IN (SELECT reservation_id FROM reservations WHERE account_id = $1"
    " UNION ALL SELECT reservation_id FROM reservations_archive WHERE doc->>'account_id' = $1)",
    "lot_id": "q.lot_id IN (SELECT lot_id FROM lots WHERE account_id = $1)",
    "schedule_id": "q.schedule_id IN (SELECT schedule_id FROM grant_schedules WHERE account_id = $1)",
    "transaction_id": "q.transaction_id IN (SELECT transaction_id FROM entries WHERE account_id = $1)",
    "asset": "q.asset IN (SELECT asset FROM balances WHERE account_id = $1)",
}
# The key of each check's and warning's rows (the first column naming a thing).
_SCOPE_OF = {
    "transactions_balance": "transaction_id",
    "assets_balance": "asset",
    "balances_match_entries": "account_id",
    "versions_count_changes": "account_id",
    "never_below_floor": "account_id",
    "cap_held_matches_open_holds": "account_id",
    "never_past_cap": "account_id",
    "balance_after_matches_entries": "account_id",
    "statements_reconcile": "account_id",
    "reserved_matches_open_reservations": "account_id",
    "available_not_negative": "account_id",
    "reservation_caps": "reservation_id",
    "reservation_allocations": "reservation_id",
    "reservation_held_on": "reservation_id",
    "reservation_holds_match_entries": "reservation_id",
    "lot_bounds": "lot_id",
    "available_matches_lots": "account_id",
    "lots_match_entries": "lot_id",
    "nothing_spent_from_expired_lots": "lot_id",
    "expired_matches_write_offs": "asset",
    "reservations_overdue": "reservation_id",
    "archived_reservations_hold_nothing": "reservation_id",
    "reservation_in_one_table": "reservation_id",
    "lots_overdue": "lot_id",
    "schedule_periods_issued_once": "schedule_id",
    "rollover_within_cap": "lot_id",
    "rollover_only_from_allowance": "lot_id",
    "schedules_overdue": "schedule_id",
    "breakage_is_lot_write_offs": "asset",
    "breakage_after_expiry": "lot_id",
}


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    violations: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    warnings: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


async def verify(url: str, sample_max: int = 10, account_id: str | None = None) -> Report:
    """Every check in one read-only snapshot; with `account_id`, only the offending
    rows that concern that account (see _ACCOUNT_SCOPE). Raises OSError,
    asyncpg.PostgresError or TimeoutError when the database cannot be read."""
    conn = await hosts.connect(url, 10.0)
    report = Report()
    args: tuple[str, ...] = () if account_id is None else (account_id,)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for table in (
                "accounts",
                "balances",
                "lots",
                "reservations",
                "reservations_archive",
                "grant_schedules",
                "entries",
                "idempotency",
                "spending_limits",
            ):
                report.counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
            for name, _, sql in CHECKS:
                report.checked.append(name)
                rows = await conn.fetch(_sampled(name, sql, sample_max, args), *args)
                if rows:
                    report.violations[name] = [dict(r) for r in rows]
            for name, _, sql in WARNINGS:
                rows = await conn.fetch(_sampled(name, sql, sample_max, args), *args)
                if rows:
                    report.warnings[name] = [dict(r) for r in rows]
    finally:
        await conn.close()
    return report


def _sampled(name: str, sql: str, sample_max: int, args: tuple[str, ...]) -> str:
    where = f" WHERE {_ACCOUNT_SCOPE[_SCOPE_OF[name]]}" if args else ""
    return f"SELECT * FROM ({sql}) AS q{where} LIMIT {int(sample_max)}"


async def account_exists(url: str, account_id: str) -> bool:
    conn = await hosts.connect(url, 10.0)
    try:
        found = await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id)
    finally:
        await conn.close()
    return found is not None


def describe(name: str) -> str:
    for n, text, _ in CHECKS + WARNINGS:
        if n == name:
            return text
    return name
