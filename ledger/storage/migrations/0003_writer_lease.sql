-- One writer per database (docs/design.md, "One writer per database").
--
-- The replicas elect the writer through this one row: whoever finds it expired
-- (or its holder's lease session gone) bumps the term and becomes the writer;
-- the writer renews expires_at every lease/3 seconds. Times are the database's
-- clock, so the replicas' clocks never matter.
--
-- `term` is UNIQUE on purpose: every batch of the writer ends with
-- ledger_writer_fence(), whose SELECT ... FOR KEY SHARE then conflicts with a
-- change of the term (a key update) but not with a renewal (expires_at only).
-- Under SERIALIZABLE a term changed since the batch's snapshot is a
-- serialization failure, a term changed before it is "not found": either way a
-- deposed writer's batch cannot commit. A takeover that comes while a batch
-- holds the lock waits for that batch's COMMIT, so it is ordered after it.
CREATE TABLE writer_lease (
    id          int PRIMARY KEY CHECK (id = 1),
    term        bigint NOT NULL UNIQUE,
    holder      text NOT NULL,          -- the instance id of the writer process
    address     text NOT NULL,          -- host:port of its internal WriterService
    holder_pid  int NOT NULL,           -- pg_backend_pid() of its lease session
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);

INSERT INTO writer_lease (id, term, holder, address, holder_pid, expires_at, acquired_at)
VALUES (1, 0, '', '', 0, '-infinity', '-infinity');

-- Raises LW001 unless the session's ledger.writer_term is the current term.
CREATE FUNCTION ledger_writer_fence() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    claimed bigint := nullif(current_setting('ledger.writer_term', true), '')::bigint;
BEGIN
    PERFORM 1 FROM writer_lease WHERE id = 1 AND term = claimed FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'writer term % is not the current writer term', claimed
            USING ERRCODE = 'LW001';
    END IF;
END $$;
