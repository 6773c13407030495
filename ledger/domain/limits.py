"""Every limit a caller can run into, in one place, named as errors name them."""

from __future__ import annotations

INT64_MAX = 2**63 - 1

AMOUNT_MAX = 10**15  # per operation; far below INT64_MAX so that sums cannot wrap
ACCOUNT_ID_LEN_MAX = 128
ASSET_LEN_MAX = 64
IDEMPOTENCY_KEY_LEN_MAX = 128
LEG_KEY_LEN_MAX = 64
METADATA_ENTRIES_MAX = 32
METADATA_KEY_LEN_MAX = 64  # printable ASCII: chars are bytes
METADATA_VALUE_LEN_MAX = 512  # bytes of UTF-8
SOURCE_LEN_MAX = 64
# Cost basis of one credit, in micros of its currency: at most one million units.
UNIT_COST_MICROS_MAX = 10**12
REASON_LEN_MAX = 256
PRIORITY_MIN = 0
PRIORITY_MAX = 1_000_000
PRIORITY_DEFAULT = 100
TTL_DEFAULT_S = 15 * 60
TTL_MIN_S = 1
TTL_MAX_S = 30 * 86400
EXPIRING_WITHIN_MAX_S = 3660 * 86400
GRANT_EXPIRY_MAX_S = 100 * 366 * 86400  # a lot may expire at most ~100 years ahead
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
PAGE_TOKEN_LEN_MAX = 256
GROUP_LEGS_MAX = 100
LOTS_LISTED_MAX = 1000
# Live (unspent, unexpired) lots of one account x asset: a Grant past it is refused
# (LOT_LIMIT_EXCEEDED), so that no command's cost grows with an account's history.
LIVE_LOTS_PER_PAIR_MAX = 1000
# The batch loads this many live lots of a spent pair, in spend order; more only if needed.
LOTS_LOADED_FIRST = 32
MESSAGE_BYTES_MAX = 64 * 1024
BATCH_COMMANDS_MAX = 1000  # commands per SubmitBatch request
BATCH_BYTES_MAX = 1024 * 1024  # bytes of one SubmitBatch request (other RPCs: MESSAGE_BYTES_MAX)
# Preconditions one mutation may carry (one per pair it touches; a group touches at most
# GROUP_LEGS_MAX pairs).
PRECONDITIONS_MAX = GROUP_LEGS_MAX
# The lowest floor SetSpendingLimits takes (credit extended to one pair, at most).
FLOOR_MIN = -AMOUNT_MAX
# Levels of ancestors above an account (a member's pool, the pool's pool, ...).
POOL_DEPTH_MAX = 3
# Grant schedules (ledger/domain/periods.py): the longest period of each unit,
# and the shortest fixed one.
SCHEDULE_PERIOD_MONTHS_MAX = 120
SCHEDULE_PERIOD_WEEKS_MAX = 520
SCHEDULE_PERIOD_DAYS_MAX = 3660
SCHEDULE_PERIOD_FIXED_S_MIN = 60
SCHEDULE_PERIOD_FIXED_S_MAX = 3660 * 86400
# Periods one batch issues per schedule; a longer backlog (downtime) is issued
# first by batches of its own, each this size (writer._drain_schedules).
SCHEDULE_PERIODS_PER_BATCH_MAX = 64
SCHEDULE_DRAIN_BATCHES_MAX = 1000
# Active schedules of one account x asset (every catch_up of the pair walks them).
SCHEDULES_PER_PAIR_MAX = 16
SCHEDULE_LOT_LIFE_S_MAX = 3660 * 86400
# A schedule's lots (each period's, each rollover) live at most this many
# periods: a schedule then has at most this many live lots (+1), and a pair's
# live schedule lots stay far below LIVE_LOTS_PER_PAIR_MAX and its balance far
# below INT64_MAX (SCHEDULES_PER_PAIR_MAX x 2 x this x AMOUNT_MAX).
SCHEDULE_LOT_LIFE_PERIODS_MAX = 12
# The change stream (WatchTransactions): streams one caller may hold open at once
# (RESOURCE_EXHAUSTED past it), journal rows one poll reads at most (the server
# holds at most one page per stream, whatever the consumer's speed), and the
# longest account prefix filter.
WATCH_STREAMS_PER_CALLER_MAX = 8
WATCH_PAGE_ROWS = 500
POSITION_LEN_MAX = 64
# Balance alerts one account may have (one per asset).
ALERTS_PER_ACCOUNT_MAX = 100
# Top-up requests of one account x asset awaiting their Grant: past it no new
# request is made (the billing side is not settling them; docs/design.md, "Top-up").
TOP_UP_PENDING_MAX = 32
