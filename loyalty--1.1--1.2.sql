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

-- ---------------------------------------------------------------------------
-- Scale-out on Citus: loyalty.distribute(invoice) and its layout of the
-- tables (src/sql/85_citus.sql).  Superuser only: nothing is granted.
-- ---------------------------------------------------------------------------
CREATE FUNCTION @extschema@._citus_layout()
RETURNS TABLE (table_name regclass, layout text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass,
           CASE WHEN k.keys[1:2] OPERATOR(pg_catalog.=) ARRAY['program_id', 'account_key']::name[] THEN 'distributed'
                WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid
                                    AND a.attname OPERATOR(pg_catalog.=) 'account_key' AND NOT a.attisdropped)
                  OR c.relname OPERATOR(pg_catalog.=) 'rebate_agreement' THEN 'reference'
                ELSE 'local' END
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
       AND d.refobjid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e
                                               WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty')
      CROSS JOIN LATERAL (SELECT ARRAY(SELECT a.attname FROM pg_catalog.pg_constraint p,
                                              pg_catalog.unnest(p.conkey) WITH ORDINALITY u(attnum, n),
                                              pg_catalog.pg_attribute a
                                        WHERE p.conrelid OPERATOR(pg_catalog.=) c.oid AND p.contype OPERATOR(pg_catalog.=) 'p'
                                          AND a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.=) u.attnum
                                        ORDER BY u.n) AS keys) k
     WHERE c.relkind OPERATOR(pg_catalog.=) 'r'
     ORDER BY 2 DESC, c.relname
$$;
COMMENT ON FUNCTION @extschema@._citus_layout() IS
'Internal: how loyalty.distribute() lays out each of loyalty''s tables on Citus: distributed (primary key led by program_id, account_key), reference (configuration, no account key; and rebate_agreement, whose account key is optional) or local (no account key in the primary key: rejected_event, partner_login).';

CREATE FUNCTION @extschema@.distribute(invoice regclass)
RETURNS TABLE (table_name regclass, layout text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_column text;
    key_type   regtype;
    fks        text[] := '{}';
    undo       text := '';
    t          record;
    r          record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty.distribute() lays out loyalty''s tables on a Citus cluster.',
                  HINT = 'On a single server nothing needs distributing; on Citus, CREATE EXTENSION citus first.';
    END IF;
    IF NOT (SELECT u.rolsuper FROM pg_catalog.pg_roles u WHERE u.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'permission denied to distribute loyalty''s tables'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'loyalty.distribute() alters the extension''s tables on every node.',
                  HINT = 'Run it as a superuser, once, before attaching distributed tables.';
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey), a.atttypid::pg_catalog.regtype'
         || ' FROM pg_catalog.pg_dist_partition p JOIN pg_catalog.pg_attribute a'
         || '   ON a.attrelid OPERATOR(pg_catalog.=) p.logicalrelid'
         || '  AND a.attname OPERATOR(pg_catalog.=) pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)'
         || ' WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1 AND p.partmethod OPERATOR(pg_catalog.=) ''h'''
       INTO key_column, key_type USING invoice;
    IF key_column IS NULL THEN
        RAISE EXCEPTION '% is not a hash-distributed table', invoice
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'invoice names the ERP table distributed by customer that loyalty''s tables are co-located with.',
                  HINT = pg_catalog.format('SELECT create_distributed_table(%L, ''customer_id''), then loyalty.distribute(%L).',
                                           invoice::text, invoice::text);
    END IF;
    IF key_type OPERATOR(pg_catalog.<>) 'pg_catalog.text'::pg_catalog.regtype THEN
        RAISE EXCEPTION '% is distributed by %, a column of type %', invoice, pg_catalog.quote_ident(key_column), key_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty keeps account keys as text, and Citus co-locates only tables whose distribution columns have the same type.',
                  HINT = 'Distribute the invoice table by a text customer key, or keep it on one server; see "Running on Citus" in loyalty''s README.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'loyalty has attached tables'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Their triggers were created for tables on this node; distributing loyalty''s tables under them would accrue on shells.',
                  HINT = 'Detach them (loyalty.detach()), distribute, then attach the distributed invoice table.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                WHERE p.logicalrelid OPERATOR(pg_catalog.=) '@extschema@.account'::pg_catalog.regclass) THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p, pg_catalog.pg_dist_partition a
                        WHERE p.logicalrelid OPERATOR(pg_catalog.=) invoice
                          AND a.logicalrelid OPERATOR(pg_catalog.=) '@extschema@.account'::pg_catalog.regclass
                          AND a.colocationid OPERATOR(pg_catalog.=) p.colocationid) THEN
            RAISE EXCEPTION 'loyalty''s tables are distributed with another table'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format('%s is not co-located with loyalty.account.', invoice),
                      HINT = 'Distribute the invoice table with colocate_with => ''loyalty.account''.';
        END IF;
        RETURN QUERY SELECT * FROM @extschema@._citus_layout();
        RETURN;
    END IF;

    -- 1. the foreign keys and partner policies, on every node
    FOR t IN SELECT c.conrelid::regclass AS rel, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def,
                    l.layout OPERATOR(pg_catalog.<>) 'local' AND f.layout OPERATOR(pg_catalog.<>) 'local' AS kept
               FROM pg_catalog.pg_constraint c
               JOIN @extschema@._citus_layout() l ON l.table_name OPERATOR(pg_catalog.=) c.conrelid
               JOIN @extschema@._citus_layout() f ON f.table_name OPERATOR(pg_catalog.=) c.confrelid
              WHERE c.contype OPERATOR(pg_catalog.=) 'f'
              ORDER BY 1::text, 2
    LOOP
        undo := undo || pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I;', t.rel, t.conname);
        IF t.kept THEN
            fks := fks || pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', t.rel, t.conname, t.def);
        END IF;
    END LOOP;
    FOR t IN SELECT pg_catalog.format('%I.%I', p.schemaname, p.tablename) AS rel FROM pg_catalog.pg_policies p
              WHERE p.schemaname OPERATOR(pg_catalog.=) '@extschema@' AND p.policyname OPERATOR(pg_catalog.=) 'partner'
    LOOP
        undo := undo || pg_catalog.format('DROP POLICY IF EXISTS partner ON %s;', t.rel);
    END LOOP;
    FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                  || ' FROM pg_catalog.run_command_on_workers($1) w'
               USING 'SET citus.enable_ddl_propagation = off;' || undo
    LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not prepare loyalty''s tables on worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = r.result,
                      HINT = 'Fix the worker (CREATE EXTENSION loyalty must have run there), then run loyalty.distribute() again; it picks up where it stopped.';
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    EXECUTE undo;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'on', true);

    -- 2. reference and distributed tables (the cache triggers on the
    -- configuration tables only invalidate this node's caches)
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- foreign keys to reference tables need one connection per node
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOR t IN SELECT * FROM @extschema@._citus_layout() l WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        IF t.layout OPERATOR(pg_catalog.=) 'reference' THEN
            EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t.table_name;
        ELSE
            EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''account_key'', colocate_with => $2)'
              USING t.table_name, invoice::text;
        END IF;
    END LOOP;

    -- 3. the foreign keys back, except those of the local tables: a
    -- reference or distributed table may reference a reference table, and
    -- a distributed one a co-located table on the account key
    FOR t IN SELECT k.def FROM pg_catalog.unnest(fks) k(def) LOOP
        EXECUTE t.def;
    END LOOP;
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;
COMMENT ON FUNCTION @extschema@.distribute(regclass) IS
'Lays out loyalty''s tables on a Citus cluster around invoice, an ERP table hash-distributed by a text customer key: configuration tables become reference tables, account-scoped tables are distributed by account_key co-located with invoice, rejected_event and partner_login stay local to each node. Drops the foreign keys and partner policies Citus cannot take on every node, re-creates the keys it can. Superuser, once, before attaching the distributed invoice table; running it again is harmless. Returns each table''s layout.';

REVOKE ALL ON FUNCTION @extschema@._citus_layout(), @extschema@.distribute(regclass) FROM PUBLIC;

-- Settlement on Citus: after loyalty.distribute(), _settle_accounts and
-- _settle_tiers run statements Citus pushes down (one task per shard);
-- _settle_expiry and _settle_rebates refuse, with a clear error, the steps
-- not built for a distributed layout (expiry, rebate agreements).
CREATE OR REPLACE FUNCTION @extschema@._settle_accounts(pid integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    prev_end date;
    cutoff timestamptz;
    win_start date;
    names text[];
    thresholds numeric[];
    has_req boolean;
    distributed boolean := false;
    n bigint;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT max(r.period_end) INTO prev_end FROM @extschema@.settlement_run r
    WHERE r.program_id = pid AND r.period_end < _settle_accounts.period_end;
    cutoff := period_start::timestamp AT TIME ZONE prog.time_zone;
    win_start := (date_trunc('month', period_end::timestamp)
                  - make_interval(months => @extschema@._window_months(prog.qualification_window) - 1))::date;
    -- the ladder by rank (1 = lowest), for array look-ups instead of joins
    SELECT array_agg(t.name ORDER BY t.rank), array_agg(t.threshold ORDER BY t.rank)
    INTO names, thresholds FROM @extschema@.tiers(prog.ladder) t;
    has_req := EXISTS (SELECT FROM @extschema@.tier_requirement r WHERE r.program_id = pid);
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
           INTO distributed USING '@extschema@.settlement_account'::regclass;
    END IF;
    IF distributed THEN
        -- On Citus (loyalty.distribute()), the same decision as below in a
        -- form Citus pushes down whole: every table it reads is distributed
        -- by account_key with settlement_account and joined on it, so the
        -- INSERT runs as one task per shard, on the node holding it.  The
        -- accounts are the union of the three sources (a FULL JOIN on a
        -- coalesce is not a join on the distribution column), each CTE
        -- read twice is inlined, and the margin grace counts the scaled
        -- thresholds with width_bucket instead of a correlated subquery.
        -- Action counts (tier_basis action, tier requirements) read the
        -- action log through a function, which a shard query cannot do.
        IF has_req OR prog.tier_basis = 'action' THEN
            RAISE EXCEPTION 'program "%" qualifies tiers on action counts, which settlement cannot count on Citus', prog.name
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Its tier basis is action, or its tiers have action requirements (loyalty.tier_requirement): they are counted by a function that reads the distributed action log, which Citus cannot run inside the pushed-down settlement.',
                      HINT = 'Qualify tiers on qualifying spend or points on Citus, or keep the program on a single server.';
        END IF;
        EXECUTE $q$
    INSERT INTO @extschema@.settlement_account AS s
        (program_id, account_key, period_end, qualifying_to_date, points_to_date, period_qualifying, carried_qualifying,
         period_points, carried_points, measure, old_tier, qualified_tier, new_tier, periods_below, outcome)
    WITH m AS NOT MATERIALIZED (
        SELECT b.account_key,
               sum(b.q) FILTER (WHERE b.month <= $4) AS q_to_date,
               sum(b.p) FILTER (WHERE b.month <= $4) AS p_to_date,
               sum(b.q) FILTER (WHERE b.month >= $3 AND b.month <= $4) AS q_period,
               sum(b.p) FILTER (WHERE b.month >= $3 AND b.month <= $4) AS p_period,
               sum(b.q) FILTER (WHERE b.month >= $6 AND b.month <= $4) AS q_window,
               sum(b.p) FILTER (WHERE b.month >= $6 AND b.month <= $4) AS p_window
        FROM (SELECT f.account_key, x.month, x.q, x.p
              FROM @extschema@.balance_folded f, unnest(f.m_month, f.m_qualifying, f.m_points) AS x(month, q, p)
              WHERE f.program_id = $1
              UNION ALL
              SELECT d.account_key, x.month, x.q, x.p
              FROM @extschema@.balance_delta d, unnest(d.m_month, d.m_qualifying, d.m_points) AS x(month, q, p)
              WHERE d.program_id = $1) b
        GROUP BY b.account_key),
    prev AS NOT MATERIALIZED (
        SELECT x.account_key, x.qualifying_to_date, x.points_to_date, x.periods_below
        FROM @extschema@.settlement_account x
        WHERE x.program_id = $1 AND x.period_end = $2),
    keys AS (
        SELECT x.account_key FROM @extschema@.account x WHERE x.program_id = $1
        UNION SELECT m.account_key FROM m
        UNION SELECT prev.account_key FROM prev),
    base AS (
        SELECT k.account_key, a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE $9 WHEN 'points' THEN coalesce(m.p_window, 0) ELSE coalesce(m.q_window, 0) END AS measure,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted,
               x.account_key IS NOT NULL AS reached
        FROM keys k
             LEFT JOIN @extschema@.account a ON a.program_id = $1 AND a.account_key = k.account_key
             LEFT JOIN m ON m.account_key = k.account_key
             LEFT JOIN prev pv ON pv.account_key = k.account_key
             LEFT JOIN @extschema@.tier_grant g ON g.program_id = $1 AND g.account_key = a.account_key
             LEFT JOIN (SELECT h.account_key, h.new_tier FROM @extschema@.tier_history h
                         WHERE h.program_id = $1 AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= $5
                         GROUP BY h.account_key, h.new_tier) x
                    ON x.account_key = k.account_key AND x.new_tier = a.tier),
    ranked AS (
        SELECT b.*, array_position($7, b.tier) AS cur_rank,
               coalesce(@extschema@.tier_rank($10, b.measure), 0) AS q_rank,
               CASE WHEN $11 = 'margin' THEN width_bucket(b.measure, $13) ELSE 0 END AS margin_rank,
               b.reached AS reached_in_period
        FROM base b),
    decided AS (
        SELECT r.*,
               CASE WHEN NOT r.enrolled OR $10 IS NULL THEN r.cur_rank
                    WHEN r.granted THEN r.cur_rank
                    WHEN r.tier IS NOT NULL AND r.cur_rank IS NULL THEN NULL
                    WHEN r.q_rank >= coalesce(r.cur_rank, 0) THEN r.q_rank
                    WHEN r.reached_in_period THEN r.cur_rank
                    WHEN $11 = 'one_level' THEN greatest(r.q_rank, r.cur_rank - 1)
                    WHEN $11 = 'margin' THEN greatest(r.q_rank, least(r.margin_rank, r.cur_rank))
                    WHEN $11 = 'periods' AND r.below_prev + 1 < $12 THEN r.cur_rank
                    ELSE r.q_rank END AS new_rank
        FROM ranked r)
    SELECT $1, d.account_key, $4, d.q_to_date, d.p_to_date, d.q_period,
           d.q_to_date - d.q_period - d.q_prev, d.p_period, d.p_to_date - d.p_period - d.p_prev,
           d.measure, d.tier, $7[d.q_rank],
           CASE WHEN d.new_rank IS NULL THEN d.tier ELSE $7[d.new_rank] END,
           CASE WHEN d.enrolled AND NOT d.granted AND d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                     AND d.new_rank = d.cur_rank AND NOT d.reached_in_period
                THEN d.below_prev + 1 ELSE 0 END,
           CASE WHEN d.granted THEN 'manual'
                WHEN d.new_rank IS NULL OR d.new_rank = coalesce(d.cur_rank, 0) THEN
                     CASE WHEN d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                          THEN CASE WHEN d.reached_in_period THEN 'kept' ELSE 'held' END
                          ELSE 'same' END
                WHEN d.new_rank > coalesce(d.cur_rank, 0) THEN 'up'
                WHEN d.new_rank > d.q_rank THEN 'grace'
                ELSE 'down' END
    FROM decided d
        $q$ USING pid, prev_end, period_start, period_end, cutoff, win_start, names, thresholds, prog.tier_basis,
                  prog.ladder, prog.tier_grace, prog.tier_grace_value,
                  (SELECT array_agg(t OPERATOR(pg_catalog.*) (1 OPERATOR(pg_catalog.-) prog.tier_grace_value) ORDER BY i)
                   FROM unnest(thresholds) WITH ORDINALITY AS l(t, i));
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;

    INSERT INTO @extschema@.settlement_account AS s
        (program_id, account_key, period_end, qualifying_to_date, points_to_date, period_qualifying, carried_qualifying,
         period_points, carried_points, measure, old_tier, qualified_tier, new_tier, periods_below, outcome)
    -- The month sums of every account, summed over the three ranges the run
    -- needs.  These are the per-month arrays loyalty.accrual_month unnests
    -- (folded rows and deltas not folded yet), summed row by row: grouping
    -- them by month first, as the view does, costs ten times more and is
    -- not needed for sums over ranges.
    WITH m AS (
        SELECT u.account_key, sum(u.q_to_date) AS q_to_date, sum(u.p_to_date) AS p_to_date,
               sum(u.q_period) AS q_period, sum(u.p_period) AS p_period,
               sum(u.q_window) AS q_window, sum(u.p_window) AS p_window
        FROM (SELECT f.account_key, f.m_month, f.m_qualifying, f.m_points
              FROM @extschema@.balance_folded f WHERE f.program_id = pid
              UNION ALL
              SELECT d.account_key, d.m_month, d.m_qualifying, d.m_points
              FROM @extschema@.balance_delta d WHERE d.program_id = pid) b,
             LATERAL (SELECT b.account_key,
                             sum(x.q) FILTER (WHERE x.month <= period_end) AS q_to_date,
                             sum(x.p) FILTER (WHERE x.month <= period_end) AS p_to_date,
                             sum(x.q) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS q_period,
                             sum(x.p) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS p_period,
                             sum(x.q) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS q_window,
                             sum(x.p) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS p_window
                      FROM unnest(b.m_month, b.m_qualifying, b.m_points) AS x(month, q, p)) u
        GROUP BY u.account_key),
    -- upgrades on accrual recorded in the period or after it (a run late
    -- after the period's end): they stand until the next period's end
    recent AS (
        SELECT DISTINCT h.account_key, h.new_tier
        FROM @extschema@.tier_history h
        WHERE h.program_id = pid AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= cutoff),
    granted AS (
        SELECT g.account_key FROM @extschema@.tier_grant g WHERE g.program_id = pid),
    prev AS (
        SELECT x.account_key, x.qualifying_to_date, x.points_to_date, x.periods_below
        FROM @extschema@.settlement_account x
        WHERE x.program_id = pid AND x.period_end = prev_end),
    acts AS (
        SELECT c.account_key, c.action, c.actions
        FROM (SELECT DISTINCT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid
              UNION SELECT prog.tier_action WHERE prog.tier_action IS NOT NULL) a,
             LATERAL (SELECT x.account_key, a.action, x.actions
                      FROM @extschema@._action_counts(pid, a.action, win_start, period_end + 1) x) c),
    base AS (
        SELECT coalesce(a.account_key, m.account_key, pv.account_key) AS account_key,
               a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE prog.tier_basis WHEN 'qualifying' THEN coalesce(m.q_window, 0)
                                    WHEN 'points' THEN coalesce(m.p_window, 0)
                                    ELSE coalesce((SELECT c.actions FROM acts c
                                                   WHERE c.account_key = coalesce(a.account_key, m.account_key, pv.account_key)
                                                     AND c.action = prog.tier_action), 0) END AS measure,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted
        FROM (SELECT * FROM @extschema@.account x WHERE x.program_id = pid) a
             FULL JOIN m ON m.account_key = a.account_key
             FULL JOIN prev pv ON pv.account_key = coalesce(a.account_key, m.account_key)
             LEFT JOIN granted g ON g.account_key = a.account_key),
    ranked AS (
        SELECT b.*,
               array_position(names, b.tier) AS cur_rank,
               -- the highest tier whose threshold the measure reaches (and,
               -- when the program has any, whose extra requirements the
               -- account meets)
               CASE WHEN NOT has_req THEN coalesce(@extschema@.tier_rank(prog.ladder, b.measure), 0)
                    ELSE coalesce((SELECT max(l.rank) FROM unnest(names, thresholds) WITH ORDINALITY AS l(name, threshold, rank)
                                   WHERE l.threshold <= b.measure
                                     AND NOT EXISTS (SELECT FROM @extschema@.tier_requirement r
                                                     WHERE r.program_id = pid AND r.tier = l.name
                                                       AND coalesce((SELECT c.actions FROM acts c
                                                                     WHERE c.account_key = b.account_key AND c.action = r.action), 0)
                                                           < r.min_count)), 0) END AS q_rank,
               -- the margin grace: the highest tier kept within the margin
               CASE WHEN prog.tier_grace = 'margin'
                    THEN coalesce((SELECT max(l.rank) FROM unnest(thresholds) WITH ORDINALITY AS l(threshold, rank)
                                   WHERE l.threshold * (1 - prog.tier_grace_value) <= b.measure), 0)
                    ELSE 0 END AS margin_rank,
               x.account_key IS NOT NULL AS reached_in_period
        FROM base b LEFT JOIN recent x ON x.account_key = b.account_key AND x.new_tier = b.tier),
    decided AS (
        SELECT r.*,
               CASE WHEN NOT r.enrolled OR prog.ladder IS NULL THEN r.cur_rank
                    WHEN r.granted THEN r.cur_rank
                    WHEN r.tier IS NOT NULL AND r.cur_rank IS NULL THEN NULL   -- a tier off the ladder: kept
                    WHEN r.q_rank >= coalesce(r.cur_rank, 0) THEN r.q_rank
                    WHEN r.reached_in_period THEN r.cur_rank
                    WHEN prog.tier_grace = 'one_level' THEN greatest(r.q_rank, r.cur_rank - 1)
                    WHEN prog.tier_grace = 'margin' THEN greatest(r.q_rank, least(r.margin_rank, r.cur_rank))
                    WHEN prog.tier_grace = 'periods' AND r.below_prev + 1 < prog.tier_grace_value THEN r.cur_rank
                    ELSE r.q_rank END AS new_rank
        FROM ranked r)
    SELECT pid, d.account_key, period_end, d.q_to_date, d.p_to_date, d.q_period,
           d.q_to_date - d.q_period - d.q_prev, d.p_period, d.p_to_date - d.p_period - d.p_prev,
           d.measure, d.tier, names[d.q_rank],
           CASE WHEN d.new_rank IS NULL THEN d.tier ELSE names[d.new_rank] END,
           CASE WHEN d.enrolled AND NOT d.granted AND d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                     AND d.new_rank = d.cur_rank AND NOT d.reached_in_period
                THEN d.below_prev + 1 ELSE 0 END,
           CASE WHEN d.granted THEN 'manual'
                WHEN d.new_rank IS NULL OR d.new_rank = coalesce(d.cur_rank, 0) THEN
                     CASE WHEN d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                          THEN CASE WHEN d.reached_in_period THEN 'kept' ELSE 'held' END
                          ELSE 'same' END
                WHEN d.new_rank > coalesce(d.cur_rank, 0) THEN 'up'
                WHEN d.new_rank > d.q_rank THEN 'grace'
                ELSE 'down' END
    FROM decided d;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;


CREATE OR REPLACE FUNCTION @extschema@._settle_tiers(pid integer, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    tomorrow date := @extschema@._today(pid) + 1;
    distributed boolean := false;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
           INTO distributed USING '@extschema@.settlement_account'::regclass;
    END IF;
    IF distributed THEN
        -- On Citus, two statements Citus pushes down (one task per shard):
        -- a data-modifying CTE feeding a distributed INSERT is planned on
        -- the coordinator, and correlated subqueries are not pushed down.
        -- The history first, for the accounts whose tier is still the one
        -- the run read, then the accounts themselves: the same rows as
        -- below, where the UPDATE's RETURNING feeds the history.
        EXECUTE $q$
    INSERT INTO @extschema@.tier_history
        (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)
    SELECT $1, s.account_key, coalesce(h.last_no, 0) + 1,
           greatest($3, f.last_doc_date + 1, d.last_doc_date + 1),
           s.old_tier, s.new_tier,
           CASE WHEN s.outcome = 'up' THEN 'requalification' WHEN s.outcome = 'grace' THEN 'grace' ELSE 'downgrade' END,
           s.measure
    FROM @extschema@.settlement_account s
    JOIN @extschema@.account a ON a.program_id = $1 AND a.account_key = s.account_key
                              AND a.tier IS NOT DISTINCT FROM s.old_tier
    LEFT JOIN (SELECT x.account_key, max(x.change_no) AS last_no FROM @extschema@.tier_history x
                WHERE x.program_id = $1 GROUP BY x.account_key) h ON h.account_key = s.account_key
    LEFT JOIN @extschema@.balance_folded f ON f.program_id = $1 AND f.account_key = s.account_key
    LEFT JOIN (SELECT x.account_key, max(x.last_doc_date) AS last_doc_date FROM @extschema@.balance_delta x
                WHERE x.program_id = $1 GROUP BY x.account_key) d ON d.account_key = s.account_key
    WHERE s.program_id = $1 AND s.period_end = $2 AND s.outcome IN ('up', 'down', 'grace')
        $q$ USING pid, period_end, tomorrow;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXECUTE $q$
    UPDATE @extschema@.account a SET tier = s.new_tier,
           tier_since = CASE WHEN s.new_tier IS NULL THEN NULL ELSE $3 END
    FROM @extschema@.settlement_account s
    WHERE a.program_id = $1 AND a.account_key = s.account_key AND a.tier IS NOT DISTINCT FROM s.old_tier
      AND s.program_id = $1 AND s.period_end = $2 AND s.outcome IN ('up', 'down', 'grace')
        $q$ USING pid, period_end, pg_catalog.now();
        RETURN n;
    END IF;
    -- the latest document date of each account that moves (what
    -- loyalty.balance's last_doc_date says) and its last change number:
    -- index probes per moving account (the run's rows are too fresh for
    -- the planner to size a join with them)
    WITH c AS (
        SELECT s.account_key, s.old_tier, s.new_tier, s.outcome, s.measure,
               coalesce((SELECT max(h.change_no) FROM @extschema@.tier_history h
                         WHERE h.program_id = pid AND h.account_key = s.account_key), 0) + 1 AS change_no,
               greatest(tomorrow,
                        (SELECT f.last_doc_date FROM @extschema@.balance_folded f
                         WHERE f.program_id = pid AND f.account_key = s.account_key) + 1,
                        (SELECT max(d.last_doc_date) FROM @extschema@.balance_delta d
                         WHERE d.program_id = pid AND d.account_key = s.account_key) + 1) AS effective_from
        FROM @extschema@.settlement_account s
        WHERE s.program_id = pid AND s.period_end = _settle_tiers.period_end
          AND s.outcome IN ('up', 'down', 'grace')),
    upd AS (
        UPDATE @extschema@.account a SET tier = c.new_tier,
               tier_since = CASE WHEN c.new_tier IS NULL THEN NULL ELSE pg_catalog.now() END
        FROM c
        WHERE a.program_id = pid AND a.account_key = c.account_key AND a.tier IS NOT DISTINCT FROM c.old_tier
        RETURNING c.*)
    INSERT INTO @extschema@.tier_history
        (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)
    SELECT pid, u.account_key, u.change_no, u.effective_from, u.old_tier, u.new_tier,
           CASE u.outcome WHEN 'up' THEN 'requalification' WHEN 'grace' THEN 'grace' ELSE 'downgrade' END,
           u.measure
    FROM upd u ORDER BY u.account_key;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;


CREATE OR REPLACE FUNCTION @extschema@._settle_expiry(program_id integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked text[];
    t date := @extschema@._expiry_threshold($1, $3);
    total bigint;
    distributed boolean := false;
BEGIN
    IF t IS NULL THEN
        RETURN 0;               -- no lifetime: points never expire
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus')
       AND pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
           INTO distributed USING '@extschema@.balance_delta'::regclass;
    END IF;
    IF distributed THEN
        -- expiry is a debit: it locks accounts, waits for postings in flight
        -- and posts with this node's transaction id, none of which is built
        -- for accounts whose rows are on the workers yet
        RAISE EXCEPTION 'points of program "%" cannot expire on Citus yet',
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'The program has a point_lifetime: settlement would expire points, a debit that loyalty runs on a single server only; nothing was settled.',
                  HINT = 'Settle programs without point_lifetime on Citus, or keep this program on a single server.';
    END IF;
    WITH due AS (SELECT d.account_key FROM @extschema@._expiry_due($1, $3, NULL) d),
    lock AS (
        SELECT a.account_key FROM @extschema@.account a
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key IN (SELECT due.account_key FROM due)
        ORDER BY a.account_key
        FOR NO KEY UPDATE OF a),
    numbered AS (
        UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
        FROM lock k
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.account_key
        RETURNING a.account_key)
    SELECT pg_catalog.array_agg(n.account_key) INTO locked FROM numbered n;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: every debit of these accounts that
    -- committed before the lock is counted
    WITH due AS (
        SELECT d.account_key, d.points, @extschema@._ledger_number() AS n
        FROM @extschema@._expiry_due($1, $3, NULL) d
        JOIN pg_catalog.unnest(locked) k(account_key) ON k.account_key OPERATOR(pg_catalog.=) d.account_key),
    entries AS (
        INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                             member_id, corrects, corrects_xid, reason)
        SELECT $1, d.account_key, d.n, 'expire', OPERATOR(pg_catalog.-) d.points, 0, 0, NULL, NULL, NULL,
               pg_catalog.format('expiry at %s: points of months before %s', $3, t)
        FROM due d
        RETURNING l.points),
    deltas AS (
        INSERT INTO @extschema@.balance_delta AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
        SELECT $1, d.account_key, d.n, OPERATOR(pg_catalog.-) d.points, 0, 0, 1
        FROM due d
        RETURNING b.points)
    SELECT coalesce(OPERATOR(pg_catalog.-) pg_catalog.sum(e.points), 0)::bigint INTO total FROM entries e;
    RETURN total;
END
$$;


CREATE OR REPLACE FUNCTION @extschema@._settle_rebates(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    distributed boolean := false;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), $1);
    -- no agreement, no rebate (_rebate_periods joins every row to one)
    IF NOT EXISTS (SELECT FROM @extschema@.rebate_agreement g WHERE g.program_id OPERATOR(pg_catalog.=) $1) THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus')
       AND pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
           INTO distributed USING '@extschema@.balance_delta'::regclass;
    END IF;
    IF distributed THEN
        -- _rebate_periods is a SQL function with parameters over
        -- distributed tables: Citus cannot plan it
        RAISE EXCEPTION 'rebates of program "%" cannot be settled on Citus yet',
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'The program has rebate agreements; their true-up reads the distributed tables through a SQL function Citus cannot plan; nothing was settled.',
                  HINT = 'Settle programs without rebate agreements on Citus, or keep this program on a single server.';
    END IF;
    -- a new statement, a new snapshot: after the lock
    SELECT pg_catalog.array_agg(x.agreement_id ORDER BY x.account_key, x.agreement_id, x.period_end) AS g,
           pg_catalog.array_agg(x.account_key ORDER BY x.account_key, x.agreement_id, x.period_end) AS a,
           pg_catalog.array_agg(x.period_start ORDER BY x.account_key, x.agreement_id, x.period_end) AS s,
           pg_catalog.array_agg(x.period_end ORDER BY x.account_key, x.agreement_id, x.period_end) AS e,
           pg_catalog.array_agg(x.volume ORDER BY x.account_key, x.agreement_id, x.period_end) AS v,
           pg_catalog.array_agg(x.final ORDER BY x.account_key, x.agreement_id, x.period_end) AS f,
           pg_catalog.array_agg(x.accrued ORDER BY x.account_key, x.agreement_id, x.period_end) AS c,
           pg_catalog.array_agg(x.last_final ORDER BY x.account_key, x.agreement_id, x.period_end) AS lf,
           pg_catalog.array_agg(coalesce(x.adjustments OPERATOR(pg_catalog.+) 1, 0) ORDER BY x.account_key, x.agreement_id, x.period_end) AS n
    INTO r
    FROM @extschema@._rebate_periods($1, $3, false) x
    WHERE CASE WHEN x.adjustments IS NULL THEN x.final OPERATOR(pg_catalog.<>) 0 OR x.accrued OPERATOR(pg_catalog.<>) 0
               ELSE x.final OPERATOR(pg_catalog.<>) x.last_final END;
    IF r.g IS NULL THEN
        RETURN 0;
    END IF;
    RETURN @extschema@._write_settlement_lines($1, $3, r.g, r.a, r.s, r.e, r.v, r.f, r.c, r.lf, r.n);
END
$$;



-- Redemption on Citus: distribute() registers loyalty.redeem as a Citus
-- distributed function by account_key (_citus_functions), so that a call
-- runs on the node holding the account's shard.
CREATE OR REPLACE FUNCTION @extschema@._citus_functions() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''account_key'', colocate_with => ''@extschema@.account'')'
      USING '@extschema@.redeem(text, text, text, integer, text)'::pg_catalog.regprocedure;
END
$$;

COMMENT ON FUNCTION @extschema@._citus_functions() IS
'Internal: registers the debits written in C (loyalty.redeem) as Citus distributed functions by account_key, co-located with loyalty.account, so that Citus runs a call on the node holding the account''s shard.';
REVOKE ALL ON FUNCTION @extschema@._citus_functions() FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.distribute(invoice regclass)
RETURNS TABLE (table_name regclass, layout text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_column text;
    key_type   regtype;
    fks        text[] := '{}';
    undo       text := '';
    t          record;
    r          record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty.distribute() lays out loyalty''s tables on a Citus cluster.',
                  HINT = 'On a single server nothing needs distributing; on Citus, CREATE EXTENSION citus first.';
    END IF;
    IF NOT (SELECT u.rolsuper FROM pg_catalog.pg_roles u WHERE u.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'permission denied to distribute loyalty''s tables'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'loyalty.distribute() alters the extension''s tables on every node.',
                  HINT = 'Run it as a superuser, once, before attaching distributed tables.';
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey), a.atttypid::pg_catalog.regtype'
         || ' FROM pg_catalog.pg_dist_partition p JOIN pg_catalog.pg_attribute a'
         || '   ON a.attrelid OPERATOR(pg_catalog.=) p.logicalrelid'
         || '  AND a.attname OPERATOR(pg_catalog.=) pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)'
         || ' WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1 AND p.partmethod OPERATOR(pg_catalog.=) ''h'''
       INTO key_column, key_type USING invoice;
    IF key_column IS NULL THEN
        RAISE EXCEPTION '% is not a hash-distributed table', invoice
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'invoice names the ERP table distributed by customer that loyalty''s tables are co-located with.',
                  HINT = pg_catalog.format('SELECT create_distributed_table(%L, ''customer_id''), then loyalty.distribute(%L).',
                                           invoice::text, invoice::text);
    END IF;
    IF key_type OPERATOR(pg_catalog.<>) 'pg_catalog.text'::pg_catalog.regtype THEN
        RAISE EXCEPTION '% is distributed by %, a column of type %', invoice, pg_catalog.quote_ident(key_column), key_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty keeps account keys as text, and Citus co-locates only tables whose distribution columns have the same type.',
                  HINT = 'Distribute the invoice table by a text customer key, or keep it on one server; see "Running on Citus" in loyalty''s README.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'loyalty has attached tables'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Their triggers were created for tables on this node; distributing loyalty''s tables under them would accrue on shells.',
                  HINT = 'Detach them (loyalty.detach()), distribute, then attach the distributed invoice table.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                WHERE p.logicalrelid OPERATOR(pg_catalog.=) '@extschema@.account'::pg_catalog.regclass) THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p, pg_catalog.pg_dist_partition a
                        WHERE p.logicalrelid OPERATOR(pg_catalog.=) invoice
                          AND a.logicalrelid OPERATOR(pg_catalog.=) '@extschema@.account'::pg_catalog.regclass
                          AND a.colocationid OPERATOR(pg_catalog.=) p.colocationid) THEN
            RAISE EXCEPTION 'loyalty''s tables are distributed with another table'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format('%s is not co-located with loyalty.account.', invoice),
                      HINT = 'Distribute the invoice table with colocate_with => ''loyalty.account''.';
        END IF;
        PERFORM @extschema@._citus_functions();
        RETURN QUERY SELECT * FROM @extschema@._citus_layout();
        RETURN;
    END IF;

    -- 1. the foreign keys and partner policies, on every node
    FOR t IN SELECT c.conrelid::regclass AS rel, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def,
                    l.layout OPERATOR(pg_catalog.<>) 'local' AND f.layout OPERATOR(pg_catalog.<>) 'local' AS kept
               FROM pg_catalog.pg_constraint c
               JOIN @extschema@._citus_layout() l ON l.table_name OPERATOR(pg_catalog.=) c.conrelid
               JOIN @extschema@._citus_layout() f ON f.table_name OPERATOR(pg_catalog.=) c.confrelid
              WHERE c.contype OPERATOR(pg_catalog.=) 'f'
              ORDER BY 1::text, 2
    LOOP
        undo := undo || pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I;', t.rel, t.conname);
        IF t.kept THEN
            fks := fks || pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', t.rel, t.conname, t.def);
        END IF;
    END LOOP;
    FOR t IN SELECT pg_catalog.format('%I.%I', p.schemaname, p.tablename) AS rel FROM pg_catalog.pg_policies p
              WHERE p.schemaname OPERATOR(pg_catalog.=) '@extschema@' AND p.policyname OPERATOR(pg_catalog.=) 'partner'
    LOOP
        undo := undo || pg_catalog.format('DROP POLICY IF EXISTS partner ON %s;', t.rel);
    END LOOP;
    FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                  || ' FROM pg_catalog.run_command_on_workers($1) w'
               USING 'SET citus.enable_ddl_propagation = off;' || undo
    LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not prepare loyalty''s tables on worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = r.result,
                      HINT = 'Fix the worker (CREATE EXTENSION loyalty must have run there), then run loyalty.distribute() again; it picks up where it stopped.';
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    EXECUTE undo;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'on', true);

    -- 2. reference and distributed tables (the cache triggers on the
    -- configuration tables only invalidate this node's caches)
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- foreign keys to reference tables need one connection per node
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOR t IN SELECT * FROM @extschema@._citus_layout() l WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        IF t.layout OPERATOR(pg_catalog.=) 'reference' THEN
            EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING t.table_name;
        ELSE
            EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''account_key'', colocate_with => $2)'
              USING t.table_name, invoice::text;
        END IF;
    END LOOP;

    -- 3. the foreign keys back, except those of the local tables: a
    -- reference or distributed table may reference a reference table, and
    -- a distributed one a co-located table on the account key
    FOR t IN SELECT k.def FROM pg_catalog.unnest(fks) k(def) LOOP
        EXECUTE t.def;
    END LOOP;
    PERFORM @extschema@._citus_functions();
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;

