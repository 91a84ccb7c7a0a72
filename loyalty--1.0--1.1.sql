-- loyalty 1.0 -> 1.1.  Everything that changed in the SQL surface since the
-- 1.0 release, in the order it was made.  A fresh 1.1 install
-- (loyalty--1.1.sql, built from src/sql/) and 1.0 + this script must end
-- with the same catalog: test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.1'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The program's calendar: a time zone of its own for "today" (tier upgrades,
-- segment changes, the rolling window), and one definition of the window in
-- months shared by the trigger and balance().
ALTER TABLE @extschema@.program
    ADD COLUMN time_zone text NOT NULL DEFAULT pg_catalog.current_setting('TimeZone')
        CHECK (pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL);
COMMENT ON COLUMN @extschema@.program.time_zone IS 'The program''s calendar: what "today" is for tier upgrades, segment changes and the rolling window, whichever time zone the posting session uses (default: the creating session''s TimeZone).';

CREATE FUNCTION @extschema@._today(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _today.program_id);
COMMENT ON FUNCTION @extschema@._today(integer) IS 'Internal: today in the program''s time zone.';

CREATE FUNCTION @extschema@._window_months(w interval) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN GREATEST(1, (pg_catalog.date_part('year', w) OPERATOR(pg_catalog.*) 12
                               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', w)
                               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', w) OPERATOR(pg_catalog./) 30))::integer);
COMMENT ON FUNCTION @extschema@._window_months(interval) IS 'Internal: a qualification window in whole calendar months.';
REVOKE ALL ON FUNCTION @extschema@._today(integer), @extschema@._window_months(interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (pg_catalog.date_trunc('month', @extschema@._today(p.program_id)::timestamp)
                - pg_catalog.make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id);

-- balance(): zeros for a customer without an account, the first tier when its
-- threshold is 0, the rolling window in the program's calendar
CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
BEGIN
    -- a customer without an account (not enrolled, or not yet invoiced) has
    -- nothing: a zero row, so that a set-based BI query does not abort
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key;
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= @extschema@._today(pid);
    -- below every upgrade, the first tier applies when its threshold is 0
    IF tier IS NULL THEN
        SELECT @extschema@.tier_of(p.ladder, 0) INTO tier FROM @extschema@.program p WHERE p.program_id = pid;
    END IF;
END
$$;

COMMENT ON FUNCTION @extschema@.balance(text, text) IS 'An account''s points, lifetime qualifying spend, rolling qualifying spend (the tier window) and tier; zeros (and the first tier when its threshold is 0) for a customer with no account yet.';
