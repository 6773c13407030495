-- Version 10: low-balance alerts (issue 17; docs/design.md, "Balance alerts").
--
-- One alert per account x asset: fires when available falls below `threshold`
-- and again when it comes back to `recovery` or above (recovery >= threshold,
-- so a balance hovering around the threshold does not flap), with
-- `percent` the two are percentages of `basis`, the amount of the pair's last
-- Grant (kept up to date by the writer). `state` is where the balance was at
-- the last change: the writer moves it, and records each crossing's event,
-- in the same transaction as the change that crossed (one writer: once per
-- crossing, whatever the concurrency).
CREATE TABLE balance_alerts (
    account_id  text NOT NULL,
    asset       text NOT NULL,
    threshold   bigint NOT NULL CHECK (threshold >= 0),
    recovery    bigint NOT NULL CHECK (recovery >= threshold),
    percent     boolean NOT NULL,
    basis       bigint NOT NULL CHECK (basis >= 0),
    state       text NOT NULL CHECK (state IN ('above', 'below', 'exhausted')),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (account_id, asset),
    CHECK (NOT percent OR recovery <= 100)
);

-- Each crossing, written with the journal rows of the transaction that crossed
-- (same xid, same transaction id): WatchTransactions sends it in that
-- transaction's message. Immutable like the journal.
CREATE TABLE alert_events (
    event_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    transaction_id  uuid NOT NULL,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    kind            text NOT NULL
        CHECK (kind IN ('balance_below', 'balance_recovered', 'balance_exhausted')),
    available       bigint NOT NULL,
    threshold       bigint NOT NULL,
    recovery        bigint NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX alert_events_transaction ON alert_events (xid, transaction_id);
CREATE TRIGGER alert_events_no_update_delete BEFORE UPDATE OR DELETE ON alert_events
    FOR EACH ROW EXECUTE FUNCTION entries_are_immutable();
