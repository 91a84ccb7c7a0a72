-- loyalty 1.1 -> 1.2.  Everything that changed in the SQL surface since the
-- 1.1 release, in the order it was made: one section per change, headed by
-- a comment naming it, appended at the end.  A fresh 1.2 install
-- (loyalty--1.2.sql, built from src/sql/), 1.1 + this script and 1.0 +
-- loyalty--1.0--1.1.sql + this script must end with the same catalog:
-- test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.2'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- SQL functions with SQL-standard bodies (RETURN expr, BEGIN ATOMIC) become
-- string bodies (AS $$ SELECT expr $$), same signature, volatility,
-- parallel safety and settings.  Citus cannot run a SQL-standard body once
-- loyalty's tables are Citus tables (syntax error at or near "RETURN", with
-- an empty QUERY line); a string body it can.  A string body is parsed when
-- called, with the function's search_path (pg_catalog, pg_temp): every
-- loyalty object in them is qualified.  CREATE OR REPLACE keeps the
-- comments and grants.
CREATE OR REPLACE FUNCTION @extschema@._today(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _today.program_id)
$$;

CREATE OR REPLACE FUNCTION @extschema@._window_months(w interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT GREATEST(1, (pg_catalog.date_part('year', w) OPERATOR(pg_catalog.*) 12
                               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', w)
                               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', w) OPERATOR(pg_catalog./) 30))::integer)
$$;

CREATE OR REPLACE FUNCTION @extschema@._as_local(rel regclass, col text, expr text, zone text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, zone)
            ELSE expr END
$$;

CREATE OR REPLACE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT (pg_catalog.date_trunc('month', @extschema@._today(p.program_id)::timestamp)
                - pg_catalog.make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id)
$$;

CREATE OR REPLACE FUNCTION @extschema@._period_length(period text) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT pg_catalog.make_interval(months => CASE period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
$$;

CREATE OR REPLACE FUNCTION @extschema@._period_start(program_id integer, period_end date) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT CASE WHEN pg_catalog.isfinite(period_end)
                         AND pg_catalog.date_trunc('month', (period_end OPERATOR(pg_catalog.+) 1)::timestamp)
                             OPERATOR(pg_catalog.=) (period_end OPERATOR(pg_catalog.+) 1)::timestamp
                         AND (pg_catalog.date_part('month', period_end OPERATOR(pg_catalog.+) 1)::integer
                              OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                             OPERATOR(pg_catalog.=) (1 OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                    THEN ((period_end OPERATOR(pg_catalog.+) 1)::timestamp
                          OPERATOR(pg_catalog.-) @extschema@._period_length(p.settlement_period))::date END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_start.program_id)
$$;

CREATE OR REPLACE FUNCTION @extschema@._program_problem(program text) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN program IS NULL
            THEN ARRAY['22004', 'program must not be NULL',
                       'program is the name of a loyalty program, as given to loyalty.create_program().',
                       'List programs with SELECT name FROM loyalty.program.']
            WHEN NOT EXISTS (SELECT FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program)
            THEN ARRAY['42704', pg_catalog.format('loyalty program "%s" does not exist', program),
                       'program names no program of this database (names are case-sensitive).',
                       'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.'] END
$$;

CREATE OR REPLACE FUNCTION @extschema@._period_end_problem(program_id integer, period_end date) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT CASE WHEN period_end IS NULL OR NOT pg_catalog.isfinite(period_end)
                    THEN ARRAY[CASE WHEN period_end IS NULL THEN '22004' ELSE '22023' END,
                               'period_end must be a date, not ' || coalesce(period_end::text, 'NULL'),
                               'period_end is the last day of a settlement period of the program.',
                               'For example period_end => ''2025-03-31''.']
                    WHEN @extschema@._period_start(program_id, period_end) IS NULL
                    THEN ARRAY['22023', pg_catalog.format('period_end %s is not the last day of a %s', period_end, p.settlement_period),
                               pg_catalog.format('Program "%s" settles by %s; period_end is the last day of one.', p.name, p.settlement_period),
                               pg_catalog.format('The %s around it ends on %s; the one before ended on %s.', p.settlement_period,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.+) @extschema@._period_length(p.settlement_period)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date)] END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_end_problem.program_id)
$$;

CREATE OR REPLACE FUNCTION @extschema@._cron_schema() RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT n.nspname FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                                   AND d.refobjid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                                   AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) d.objid
        WHERE e.extname OPERATOR(pg_catalog.=) 'pg_cron' LIMIT 1)
$$;

CREATE OR REPLACE FUNCTION @extschema@._valid_benefit(benefit text, value pg_catalog.jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE benefit
    WHEN 'payment_terms_days' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>=) 0 AND (value)::text::numeric OPERATOR(pg_catalog.<=) 3650
         AND (value)::text::numeric OPERATOR(pg_catalog.=) pg_catalog.trunc((value)::text::numeric)
    WHEN 'support_sla_hours' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>) 0
    WHEN 'mdf_rate' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>=) 0 AND (value)::text::numeric OPERATOR(pg_catalog.<=) 1
    WHEN 'priority_shipping' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    WHEN 'early_access' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    WHEN 'dedicated_account_manager' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    ELSE pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) ANY (ARRAY['number', 'string', 'boolean'])
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._tier_at(program_id integer, account_key text, as_of date) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT h.new_tier FROM @extschema@.tier_history h
        WHERE h.program_id OPERATOR(pg_catalog.=) _tier_at.program_id
          AND h.account_key OPERATOR(pg_catalog.=) _tier_at.account_key
          AND h.effective_from OPERATOR(pg_catalog.<=) _tier_at.as_of
        ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1)
$$;

CREATE OR REPLACE FUNCTION @extschema@._benefit(program_id integer, account_key text, benefit text, as_of date) RETURNS pg_catalog.jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _benefit.program_id
          AND b.tier OPERATOR(pg_catalog.=) @extschema@._tier_at(_benefit.program_id, _benefit.account_key, _benefit.as_of)
          AND b.benefit OPERATOR(pg_catalog.=) _benefit.benefit)
$$;

CREATE OR REPLACE FUNCTION @extschema@._mdf_rate(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
          AND b.benefit OPERATOR(pg_catalog.=) 'mdf_rate'
          -- before its first recorded tier (a period settled from documents
          -- older than the program's history), the account counts at that tier
          AND b.tier OPERATOR(pg_catalog.=) coalesce(
                @extschema@._tier_at(_mdf_rate.program_id, _mdf_rate.account_key, _mdf_rate.as_of),
                (SELECT h.new_tier FROM @extschema@.tier_history h
                 WHERE h.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
                   AND h.account_key OPERATOR(pg_catalog.=) _mdf_rate.account_key
                 ORDER BY h.effective_from, h.change_no LIMIT 1)))::numeric
$$;

CREATE OR REPLACE FUNCTION @extschema@._expiry_threshold(program_id integer, cutoff date) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT pg_catalog.date_trunc('month', (cutoff OPERATOR(pg_catalog.-) p.point_lifetime))::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _expiry_threshold.program_id)
$$;

CREATE OR REPLACE FUNCTION @extschema@._caller() RETURNS regrole
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN CURRENT_USER OPERATOR(pg_catalog.<>)
                 (SELECT pg_catalog.pg_get_userbyid(e.extowner) FROM pg_catalog.pg_extension e
                  WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty')
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
            WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none'
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(SESSION_USER))
            ELSE pg_catalog.to_regrole(pg_catalog.quote_ident(pg_catalog.current_setting('role'))) END
$$;

CREATE OR REPLACE FUNCTION @extschema@._is_staff() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce((SELECT pg_catalog.pg_has_role(c.r, 'loyalty_reader', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_operator', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_admin', 'USAGE')
                 FROM (SELECT @extschema@._caller() AS r) c), false)
$$;
