-- Version 14: grant schedules (issue 23). A schedule issues period n's lot
-- exactly once: the lot carries (schedule_id, period), unique with its
-- category (the period's allowance once, its rollover once), and every batch
-- that issues periods also moves the schedule's next_period on.
CREATE TABLE grant_schedules (
    schedule_id   uuid PRIMARY KEY,
    account_id    text NOT NULL,
    asset         text NOT NULL,
    amount        bigint NOT NULL CHECK (amount > 0),
    unit          text NOT NULL CHECK (unit IN ('month', 'week', 'day', 'fixed')),
    count         integer NOT NULL CHECK (count > 0),
    anchor        timestamptz NOT NULL,
    time_zone     text NOT NULL,
    ends_at       timestamptz,
    priority      integer NOT NULL,
    category      text NOT NULL,
    lot_life_s    bigint,
    -- {"cap_amount", "cap_percent", "life_s", "priority"} or NULL: no rollover.
    rollover      jsonb,
    first_period  integer NOT NULL,
    next_period   integer NOT NULL CHECK (next_period >= first_period),
    -- When next_period starts ('9999-12-31' when none will): the sweeper's index.
    next_start    timestamptz NOT NULL,
    state         text NOT NULL CHECK (state IN ('active', 'cancelled')),
    metadata      jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    -- UpdateGrantSchedule's changes: [{"from_period", "amount", "rollover"}], oldest first.
    terms         jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX grant_schedules_pair ON grant_schedules (account_id, asset) WHERE state = 'active';
CREATE INDEX grant_schedules_account ON grant_schedules (account_id, created_at, schedule_id);
CREATE INDEX grant_schedules_due ON grant_schedules (next_start) WHERE state = 'active';

ALTER TABLE lots ADD COLUMN schedule_id uuid;
ALTER TABLE lots ADD COLUMN period integer;
CREATE UNIQUE INDEX lots_schedule_period ON lots (schedule_id, period, category)
    WHERE schedule_id IS NOT NULL;
