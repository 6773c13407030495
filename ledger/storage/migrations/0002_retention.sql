-- Creditledger schema, version 2: data over time (docs/operations.md, "Retention").
--
-- 1. Idempotency records are range-partitioned by the time they expire, so that
--    retention is DETACH PARTITION ... CONCURRENTLY then DROP TABLE of a whole
--    partition (no DELETE, no dead tuples, no lock a writer waits on). Each row
--    carries its own expires_at: an applied outcome is kept longer than a
--    refused one. The sweeper (ledger/storage/idempotency.py) creates partitions
--    ahead of time and drops those whose upper bound has passed.
--
--    A partitioned table's unique index must include the partition key, so
--    (caller, key) is unique per partition only (each partition's primary key).
--    Across partitions the writer's SERIALIZABLE read of the key in every live
--    partition before it inserts keeps it unique: two transactions that both
--    find a key absent and insert it into different partitions each read the
--    other's partition, and SSI aborts one (tests/integration/test_idempotency_retention.py).
--
--    The existing table is kept, rows and all, as the partition
--    `idempotency_legacy`: no copy, no rewrite. Its rows get the expires_at they
--    were promised at the old default (7 days from this migration); an empty
--    table is simply dropped.
ALTER TABLE idempotency RENAME TO idempotency_legacy;
DROP INDEX idempotency_created;
ALTER TABLE idempotency_legacy
    ADD COLUMN expires_at timestamptz NOT NULL DEFAULT (now() + interval '7 days');
ALTER TABLE idempotency_legacy ALTER COLUMN expires_at DROP DEFAULT;

CREATE TABLE idempotency (
    caller        text NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    request_hash  bytea NOT NULL,
    outcome       jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    -- A lookup at time t ignores the row once expires_at <= t, whether or not
    -- its partition has been dropped yet: an expired key is never replayed.
    expires_at    timestamptz NOT NULL
) PARTITION BY RANGE (expires_at);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM idempotency_legacy) THEN
        EXECUTE format(
            'ALTER TABLE idempotency ATTACH PARTITION idempotency_legacy'
            ' FOR VALUES FROM (MINVALUE) TO (%L)',
            now() + interval '7 days' + interval '1 microsecond');
    ELSE
        DROP TABLE idempotency_legacy;
    END IF;
END
$$;

-- 2. Closed reservations move out of the hot table after a configurable age
--    (`ledger archive reservations --older-than-days N`). The archive keeps the
--    whole row as it was, as jsonb (later columns of `reservations` need no
--    change here; jsonb_populate_record(NULL::reservations, doc) reads it back),
--    so GetReservation still answers for an archived reservation; an operator
--    may export and delete it (docs/operations.md). Entries, the audit trail,
--    stay in `entries` forever and keep pointing at the id.
CREATE TABLE reservations_archive (
    reservation_id  uuid PRIMARY KEY,
    group_id        uuid,
    expires_at      timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL,
    doc             jsonb NOT NULL
);
CREATE INDEX reservations_archive_group ON reservations_archive (group_id) WHERE group_id IS NOT NULL;
-- What the archiver picks, oldest first, without scanning the open ones.
CREATE INDEX reservations_closed ON reservations (expires_at) WHERE state <> 'open';
