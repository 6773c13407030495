-- Version 15: top-up requests (issue 17; docs/design.md, "Top-up requests").
--
-- A balance alert may carry a top-up rule: at each BALANCE_BELOW crossing the
-- writer asks for top_up_target - available - (requests still pending), within
-- top_up_cap_month per calendar month (UTC; 0: no cap), as a TOP_UP_REQUESTED
-- event of the transaction that crossed. The ledger charges no one: the
-- caller's billing does, then sends a Grant naming the request, which removes
-- it from top_up_pending in the Grant's own transaction. The pending requests
-- and the month's total live on the alert row, which the writer already loads
-- with the pair and saves in the batch's one statement: no new hot row.
ALTER TABLE balance_alerts
    ADD COLUMN top_up_target bigint NOT NULL DEFAULT 0 CHECK (top_up_target >= 0),
    ADD COLUMN top_up_cap_month bigint NOT NULL DEFAULT 0 CHECK (top_up_cap_month >= 0),
    -- request id (uuid text) -> amount, for the requests no Grant has settled yet.
    ADD COLUMN top_up_pending jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The first day of the month top_up_requested_month counts (NULL: none yet).
    ADD COLUMN top_up_month date,
    ADD COLUMN top_up_requested_month bigint NOT NULL DEFAULT 0
        CHECK (top_up_requested_month >= 0);

-- The request travels with its transaction on the change stream like the
-- other crossings: its id (what the settling Grant names) and amount.
ALTER TABLE alert_events
    ADD COLUMN request_id uuid,
    ADD COLUMN amount bigint;
ALTER TABLE alert_events DROP CONSTRAINT alert_events_kind_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_kind_check
    CHECK (kind IN ('balance_below', 'balance_recovered', 'balance_exhausted', 'top_up_requested'));
