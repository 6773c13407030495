"""Prometheus metrics. Names and labels are a contract (docs/design.md).

No label ever carries an account id, reservation id or idempotency key. The
one caller-chosen label value, `asset`, is `_all` unless asset labels are
turned on (`--metrics-asset-labels`): /metrics has no authentication, and
asset names are every tenant's business. When on, it is capped: past
ASSET_LABELS_MAX distinct assets a process counts the rest under `_other`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, Info

ASSET_LABELS_MAX = 64
OTHER_ASSET = "_other"
#: The asset label's value while asset labels are off (the default).
ALL_ASSETS = "_all"

_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# The names and labels of go-grpc-prometheus / py-grpc-prometheus, so that
# the ecosystem's dashboards work unchanged.
GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "RPC stream messages received by the server (one per unary request).",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_MSG_SENT = Counter(
    "grpc_server_msg_sent_total",
    "RPC stream messages sent by the server (one per unary response).",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS_S,
)

CREDITS_MOVED = Counter(
    "ledger_credits_moved", "Credits moved, by asset and movement.", ["asset", "movement"]
)
# The method label is `grpc_method` here too, so one matcher selects a method
# across the gRPC and the ledger's own series.
REJECTIONS = Counter(
    "ledger_rejections", "Business rejections by method and reason.", ["grpc_method", "reason"]
)
REPLAYS = Counter(
    "ledger_idempotent_replays", "Replies replayed from an idempotency record.", ["grpc_method"]
)
SERIALIZATION_RETRIES = Counter(
    "ledger_serialization_retries", "Transactions retried after a serialization conflict."
)
RETRIES_EXHAUSTED = Counter(
    "ledger_retries_exhausted",
    "Batches (and single units: CreateAccount, reads) that failed with CONTENTION after every retry.",
)
TRANSACTION_SECONDS = Histogram(
    "ledger_transaction_seconds",
    "Duration of database transactions.",
    ["kind"],
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "ledger_batch_size",
    "Commands per writer batch (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
POOL_SIZE = Gauge("ledger_db_pool_size", "Connections in the database pool.")
# The pool opens connections lazily up to this: saturation is in use / max size, not
# in use / size (two long-held connections of a quiet pool of two are not saturation).
POOL_MAX_SIZE = Gauge("ledger_db_pool_max_size", "Most connections the database pool opens.")
POOL_IN_USE = Gauge("ledger_db_pool_in_use", "Pool connections in use.")
POOL_WAITING = Gauge("ledger_db_pool_waiting", "Tasks waiting for a pool connection.")
OPEN_RESERVATIONS = Gauge("ledger_open_reservations", "Reservations open right now.")
OLDEST_OVERDUE_S = Gauge(
    "ledger_oldest_overdue_reservation_seconds",
    "Age past expiry of the oldest open reservation the sweeper has not expired yet.",
)
IDEMPOTENCY_PARTITIONS_AHEAD_S = Gauge(
    "ledger_idempotency_partitions_ahead_seconds",
    "How long the idempotency partitions stay ready: seconds until keys written then"
    " (expiring after the longest retention plus two partitions) would find no partition"
    " and writes answer UNAVAILABLE. maintained_by: `external` (a server that may not"
    " run the DDL: the owner's `ledger maintain` keeps it ~48 h) or `server` (it makes them"
    " itself every few seconds, one or two partitions ahead).",
    ["maintained_by"],
)
# The limit label is one of the door's limits, lower case (ledger.transport.slots):
# calls_per_connection_max, calls_per_peer_max, anonymous_calls_max,
# watch_streams_per_peer_max, watch_streams_max.
CALL_LIMIT_REFUSALS = Counter(
    "ledger_call_limit_refusals",
    "Calls refused at once because a concurrency limit was reached, by limit.",
    ["limit"],
)
# Every limit from the start at 0: a rate() over it then answers 0 instead of no
# data on a server that never refused (dashboards, alert rules).
for _limit in (
    "calls_per_connection_max",
    "calls_per_peer_max",
    "anonymous_calls_max",
    "watch_streams_per_peer_max",
    "watch_streams_max",
):
    CALL_LIMIT_REFUSALS.labels(_limit)
HEALTH_SERVING = Gauge("ledger_health_serving", "1 when the server reports SERVING, else 0.")
BUILD_INFO = Info("ledger_build", "Build information.")

# grpc_code values as go-grpc-prometheus spells them (Go's codes.Code.String()),
# so fleet dashboards matching grpc_code=~"Unavailable|Internal" see the ledger.
GRPC_CODE_NAMES: dict[str, str] = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}


def grpc_code_label(code_name: str) -> str:
    """The grpc_code label value of a status code given by its enum name (CANCELLED -> Canceled)."""
    return GRPC_CODE_NAMES[code_name]


_assets_seen: set[str] = set()
_assets_lock = threading.Lock()
_asset_labels = [False]


def set_asset_labels(enabled: bool) -> None:
    """Whether /metrics names assets (off by default: it has no authentication)."""
    _asset_labels[0] = enabled


def asset_label(asset: str) -> str:
    """The label value for an asset, bounded in number; ALL_ASSETS when labels are off."""
    if not _asset_labels[0]:
        return ALL_ASSETS
    if asset in _assets_seen:
        return asset
    with _assets_lock:
        if len(_assets_seen) < ASSET_LABELS_MAX:
            _assets_seen.add(asset)
            return asset
    return OTHER_ASSET


def record_moved(moved: list[tuple[str, str, int]]) -> None:
    totals: dict[tuple[str, str], int] = {}
    for asset, movement, amount in moved:
        key = (asset_label(asset), movement)
        totals[key] = totals.get(key, 0) + amount
    for (asset, movement), amount in totals.items():
        CREDITS_MOVED.labels(asset, movement).inc(amount)


def set_build_info(version: str) -> None:
    BUILD_INFO.info({"version": version})


# ---- one writer per database (ledger.service.election)
WRITER_LEADER = Gauge(
    "ledger_writer_leader", "1 while this process holds the writer lease, else 0."
)
WRITER_TERM = Gauge("ledger_writer_term", "The writer term this process last held.")
FORWARDED = Counter(
    "ledger_forwarded_commands_total",
    "Commands this process forwarded to the elected writer, by outcome (ok, error, unavailable).",
    ["outcome"],
)
FORWARD_CALLS = Histogram(
    "ledger_forward_call_commands",
    "Commands per internal call to the writer (forwarding coalesces them).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

# The change stream (WatchTransactions). No label per stream: the lag of each
# stream is observed into one histogram (per transaction sent: now minus its
# commit instant), and the gauge is the largest lag among open streams.
STREAMS_OPEN = Gauge("ledger_streams_open", "WatchTransactions streams open.")
STREAM_LAG_SECONDS = Histogram(
    "ledger_stream_lag_seconds",
    "Per transaction sent on a change stream: seconds between its commit instant and its sending.",
    buckets=(*_LATENCY_BUCKETS_S, 30.0, 60.0, 300.0, 3600.0),
)
STREAM_LAG_MAX = Gauge(
    "ledger_stream_lag_max_seconds",
    "The largest lag among open change streams (0 when all are caught up).",
)


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every value, at one lock per bucket touched:
    a stream observes the lag of every transaction it sends (a page's are
    close together), and observe() walks the bounds in Python and takes a
    lock for each value. Same buckets (the first bound >= v), same sum."""
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    for v in values:
        i = bisect_left(bounds, v)
        counts[i] = counts.get(i, 0) + 1
        total += v
    if not counts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    histogram._sum.inc(total)
    for i, n in counts.items():
        histogram._buckets[i].inc(n)
