-- Creditledger schema, version 1.
-- Amounts are bigint in the asset's smallest unit. System accounts
-- (@issuance, @consumed, @expired) have no balance row: their totals are
-- derived from entries, so no row is written by every transaction.

CREATE TABLE accounts (
    account_id  text PRIMARY KEY,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL
);

-- Materialized per (account, asset); `ledger verify` proves it equals the entries.
CREATE TABLE balances (
    account_id  text NOT NULL,
    asset       text NOT NULL,
    available   bigint NOT NULL CHECK (available >= 0),
    reserved    bigint NOT NULL CHECK (reserved >= 0),
    granted     bigint NOT NULL CHECK (granted >= 0),
    settled     bigint NOT NULL CHECK (settled >= 0),
    refunded    bigint NOT NULL CHECK (refunded >= 0),
    expired     bigint NOT NULL CHECK (expired >= 0),
    PRIMARY KEY (account_id, asset)
);

-- One lot per grant (and per refund into an expired lot).
CREATE TABLE lots (
    lot_id      uuid PRIMARY KEY,
    account_id  text NOT NULL,
    asset       text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    priority    integer NOT NULL,
    source      text NOT NULL,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL
);
CREATE INDEX lots_spendable ON lots (account_id, asset) WHERE remaining > 0;
CREATE INDEX lots_due ON lots (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

CREATE TABLE reservations (
    reservation_id  uuid PRIMARY KEY,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    settled         bigint NOT NULL CHECK (settled >= 0),
    released        bigint NOT NULL CHECK (released >= 0),
    refunded        bigint NOT NULL CHECK (refunded >= 0),
    state           text NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    metadata        jsonb NOT NULL,
    group_id        uuid,
    leg_key         text NOT NULL DEFAULT '',
    -- [[lot_id, held, settled, released, refunded], ...]: where the hold came from.
    allocations     jsonb NOT NULL,
    CHECK (settled + released <= amount),
    CHECK (refunded <= settled)
);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE state = 'open';
CREATE INDEX reservations_group ON reservations (group_id) WHERE group_id IS NOT NULL;

-- The journal. Immutable: corrections are new entries.
-- No foreign keys: under SERIALIZABLE an FK check on a freshly inserted key
-- conflicts on index pages; `ledger verify` checks the references instead.
CREATE TABLE entries (
    entry_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  uuid NOT NULL,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    amount          bigint NOT NULL,
    movement        text NOT NULL,
    bucket          text NOT NULL CHECK (bucket IN ('available', 'held', 'system')),
    reservation_id  uuid,
    lot_id          uuid,
    created_at      timestamptz NOT NULL
);
CREATE INDEX entries_account ON entries (account_id, entry_id DESC);

CREATE FUNCTION entries_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are immutable (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER entries_no_update_delete BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION entries_are_immutable();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION entries_are_immutable();

-- The first outcome of every idempotency key, written in the same
-- transaction as its effect. Scoped by caller.
CREATE TABLE idempotency (
    caller        text NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    request_hash  bytea NOT NULL,
    outcome       jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
