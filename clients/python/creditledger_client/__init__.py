"""Typed Python client of the Creditledger gRPC service.

    from creditledger_client import LedgerClient, InsufficientCredits

    async with LedgerClient("127.0.0.1:50051") as ledger:
        await ledger.grant("tenant-42:customer-7", "email_opens", 30)
        try:
            await ledger.charge("tenant-42:customer-7", "email_opens", 1)
        except InsufficientCredits as e:
            ...  # e.available, e.requested

`SyncLedgerClient` has the same methods for blocking code. The generated
messages and stubs are in `creditledger.v1` for anything this layer lacks.
"""

from creditledger_client._requests import new_idempotency_key
from creditledger_client.aio import AsyncReservation, LedgerClient
from creditledger_client.batch import Batcher, BatchOutcome, SyncBatcher
from creditledger_client.config import (
    DEFAULT_KEEPALIVE,
    NO_RETRY,
    ClientConfig,
    Keepalive,
    RetryPolicy,
    TlsConfig,
)
from creditledger_client.errors import (
    ERROR_CLASSES,
    KNOWN_REASONS,
    REQUEST_ID_HEADER,
    RETRYABLE_CODES,
    Aborted,
    AccountExists,
    AccountNotFound,
    AlertLimitExceeded,
    AlreadyExists,
    AmountExceedsRemaining,
    AmountExceedsSettled,
    BalanceLimitExceeded,
    Contention,
    DatabaseUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    IdempotencyKeyReused,
    InsufficientCredits,
    Internal,
    InvalidArgument,
    LedgerError,
    LotLimitExceeded,
    NotFound,
    PermissionDenied,
    RateLimited,
    ReservationClosed,
    ReservationExpired,
    ReservationGroupNotFound,
    ReservationNotFound,
    ResourceExhausted,
    TooManyStreams,
    Unauthenticated,
    Unavailable,
    WriterUnavailable,
)
from creditledger_client.hold import Hold
from creditledger_client.models import (
    Account,
    Balance,
    BalanceView,
    Bucket,
    Entry,
    EntryPage,
    GrantResult,
    GroupLeg,
    Lot,
    Movement,
    Reservation,
    ReservationGroup,
    ReservationPage,
    ReservationResult,
    ReservationState,
    ReserveGroupResult,
)
from creditledger_client.sync import SyncLedgerClient, SyncReservation

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_KEEPALIVE",
    "ERROR_CLASSES",
    "KNOWN_REASONS",
    "NO_RETRY",
    "REQUEST_ID_HEADER",
    "RETRYABLE_CODES",
    "Aborted",
    "Account",
    "AccountExists",
    "AccountNotFound",
    "AlertLimitExceeded",
    "AlreadyExists",
    "AmountExceedsRemaining",
    "AmountExceedsSettled",
    "AsyncReservation",
    "Balance",
    "BalanceLimitExceeded",
    "BalanceView",
    "BatchOutcome",
    "Batcher",
    "Bucket",
    "ClientConfig",
    "Contention",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "Entry",
    "EntryPage",
    "FailedPrecondition",
    "FieldViolation",
    "GrantResult",
    "GroupLeg",
    "Hold",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "Internal",
    "InvalidArgument",
    "Keepalive",
    "LedgerClient",
    "LedgerError",
    "Lot",
    "LotLimitExceeded",
    "Movement",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Reservation",
    "ReservationClosed",
    "ReservationExpired",
    "ReservationGroup",
    "ReservationGroupNotFound",
    "ReservationNotFound",
    "ReservationPage",
    "ReservationResult",
    "ReservationState",
    "ReserveGroupResult",
    "ResourceExhausted",
    "RetryPolicy",
    "SyncBatcher",
    "SyncLedgerClient",
    "SyncReservation",
    "TlsConfig",
    "TooManyStreams",
    "Unauthenticated",
    "Unavailable",
    "WriterUnavailable",
    "new_idempotency_key",
]
