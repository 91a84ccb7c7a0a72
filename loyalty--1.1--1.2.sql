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
    role       text := pg_catalog.current_setting('session_replication_role');
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

    -- 4. the rows Citus copied into the shards stay on disk in this node's
    -- tables, out of sight but read by anything that opens them directly:
    -- removed, with loyalty's own guards (append-only ledger, accounts
    -- kept) silenced for this, since nothing is lost
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT l.table_name FROM @extschema@._citus_layout() l
              WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING t.table_name;
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role, true);
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;
COMMENT ON FUNCTION @extschema@.distribute(regclass) IS
'Lays out loyalty''s tables on a Citus cluster around invoice, an ERP table hash-distributed by a text customer key: configuration tables become reference tables, account-scoped tables are distributed by account_key co-located with invoice, rejected_event and partner_login stay local to each node. Drops the foreign keys and partner policies Citus cannot take on every node, re-creates the keys it can. Superuser, once, before attaching the distributed invoice table; running it again is harmless. Returns each table''s layout.';

-- detach() drops a distributed table's triggers with Citus's unsafe
-- triggers allowed, as attach() creates them.
CREATE OR REPLACE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    a @extschema@.attachment;
    trg text;
    unsafe text := pg_catalog.current_setting('citus.enable_unsafe_triggers', true);
BEGIN
    IF source IS NULL OR program IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN source IS NULL THEN 'source' ELSE 'program' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'detach takes the ERP table (source) and the name of the program attached to it.',
                  HINT = 'For example loyalty.detach(''erp.invoice'', ''Distributor Club'').';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = detach.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = detach.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            DETAIL = pg_catalog.format('No active attachment of program "%s" has source %s.', program, source),
            HINT = 'SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    -- first: on Citus, attachment is a reference table, which cannot be
    -- written after the parallel DDL of dropping a distributed table's triggers
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
    trg := 'loyalty_accrual_' || a.attachment_id;
    -- Citus drops a distributed table's triggers (on every shard) only with
    -- its unsafe triggers allowed, as attach() created them
    IF unsafe IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_ins', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_upd', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_del', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_truncate', source);
    IF a.header IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_ins', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_delete', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_truncate', a.header);
    END IF;
    IF a.product IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_upd', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_del', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_ins', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_truncate', a.product);
    END IF;
    IF unsafe IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', unsafe, true);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION @extschema@._citus_layout(), @extschema@.distribute(regclass) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- loyalty.rejected_event keyed by (program_id, account_key, rejected_xid,
-- event_no), distributable on Citus (src/sql/20_schema.sql, src/accrual.c).
-- The dead letters are filed under their account, like every account-scoped
-- table, and numbered within the transaction that parks them (as the
-- ledger's entries are) instead of by a shared identity: two ERP
-- transactions parking rows of one customer never wait for each other, and
-- loyalty.distribute() distributes the table with the invoice table, so a
-- row rejected on a shard is recorded on the shard's node, co-located with
-- it, and read from the coordinator.
--
-- event_id goes: a letter is named by its key (account_key, rejected_xid,
-- event_no) or found by its row (attachment_id, row_key), as the accrual
-- settles it.  Existing letters keep their number as event_no, with
-- rejected_xid 0 (no transaction has that id, so they never collide with
-- new ones); a letter without an account is filed under '' (the key
-- cannot be NULL, and no account has the key '').  Everything else is
-- kept as it was, resolved_at included.  The table is re-created (its key
-- leads with columns that came later in 1.1's order), out of the
-- extension first, which also drops it and its identity's sequence from
-- the tables pg_dump keeps; it is registered again below.  The old table
-- keeps its foreign keys until it is dropped: the new ones are named as a
-- fresh install names them.
-- ---------------------------------------------------------------------------
ALTER EXTENSION loyalty DROP SEQUENCE @extschema@.rejected_event_event_id_seq;
ALTER EXTENSION loyalty DROP TABLE @extschema@.rejected_event;
ALTER TABLE @extschema@.rejected_event RENAME TO rejected_event_1_1;
ALTER INDEX @extschema@.rejected_event_pkey RENAME TO rejected_event_1_1_pkey;
ALTER INDEX @extschema@.rejected_event_open RENAME TO rejected_event_1_1_open;

CREATE TABLE @extschema@.rejected_event (
    program_id    integer NOT NULL CONSTRAINT rejected_event_program_id_fkey REFERENCES @extschema@.program,
    account_key   text NOT NULL,
    rejected_xid  xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    event_no      bigint NOT NULL CHECK (event_no OPERATOR(pg_catalog.>) 0),
    attachment_id integer NOT NULL CONSTRAINT rejected_event_attachment_id_fkey REFERENCES @extschema@.attachment,
    row_key       text,
    reason        text NOT NULL,
    row_data      jsonb,
    rejected_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resolved_at   timestamptz,
    PRIMARY KEY (program_id, account_key, rejected_xid, event_no)
);
-- an account key over 1024 bytes (parked as "account key is longer than
-- 1024 bytes") takes the form the accrual now files it under: its first
-- whole characters up to 960 bytes and the MD5 of the whole, as row_key
INSERT INTO @extschema@.rejected_event
       (program_id, account_key, rejected_xid, event_no, attachment_id, row_key, reason, row_data,
        rejected_at, resolved_at)
SELECT o.program_id,
       CASE WHEN o.account_key IS NULL THEN ''
            WHEN pg_catalog.octet_length(o.account_key) OPERATOR(pg_catalog.<=) 1024 THEN o.account_key
            ELSE pg_catalog.left(o.account_key,
                                 (SELECT pg_catalog.max(i) FROM pg_catalog.generate_series(1, 960) i
                                   WHERE pg_catalog.octet_length(pg_catalog.left(o.account_key, i)) OPERATOR(pg_catalog.<=) 960))
                 OPERATOR(pg_catalog.||) '... (md5 ' OPERATOR(pg_catalog.||) pg_catalog.md5(o.account_key)
                 OPERATOR(pg_catalog.||) ')' END,
       '0'::xid8, o.event_id, o.attachment_id, o.row_key, o.reason, o.row_data, o.rejected_at, o.resolved_at
  FROM @extschema@.rejected_event_1_1 o;
DROP TABLE @extschema@.rejected_event_1_1;

CREATE INDEX rejected_event_open ON @extschema@.rejected_event (attachment_id, row_key) WHERE resolved_at IS NULL;
COMMENT ON TABLE @extschema@.rejected_event IS 'Dead letters: invoice rows a program could not accrue, with the reason; the ERP''s insert went through (unless the program is strict). A letter is identified by (program_id, account_key, rejected_xid, event_no).';
COMMENT ON COLUMN @extschema@.rejected_event.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rejected_event.account_key IS 'The row''s account key in text form; '''' (empty) when the row gave none (NULL or empty), since the column is part of the key: no account has the key '''' (loyalty.account refuses it). A key over 1024 bytes: its first bytes and the MD5 of the whole, as row_key.';
COMMENT ON COLUMN @extschema@.rejected_event.rejected_xid IS 'Transaction that parked the row (on Citus, the worker''s transaction that wrote the shard); 0 for letters parked before version 1.2.';
COMMENT ON COLUMN @extschema@.rejected_event.event_no IS 'Number within rejected_xid, from the counter that also numbers the transaction''s ledger entries (gaps mean nothing); letters parked before version 1.2 keep their former event_id here.';
COMMENT ON COLUMN @extschema@.rejected_event.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form (a key over 1024 bytes: its first bytes and the MD5 of the whole, since the column is indexed).';
COMMENT ON COLUMN @extschema@.rejected_event.reason IS 'Why it could not be accrued.';
COMMENT ON COLUMN @extschema@.rejected_event.row_data IS 'The source row as JSON.';
COMMENT ON COLUMN @extschema@.rejected_event.rejected_at IS 'When.';
COMMENT ON COLUMN @extschema@.rejected_event.resolved_at IS 'When it was settled: the row was deleted, or updated into a row that accrues (or parked for another reason); or when someone marked it handled.';
CREATE TRIGGER rejected_event_resolved_once BEFORE UPDATE OF resolved_at ON @extschema@.rejected_event
    FOR EACH ROW WHEN (OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at)
    EXECUTE FUNCTION @extschema@._rejected_resolved_once();
GRANT SELECT ON @extschema@.rejected_event TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT UPDATE (resolved_at) ON @extschema@.rejected_event TO loyalty_operator, loyalty_admin;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event', '');
-- on Citus the table is distributed with the invoice table now
COMMENT ON FUNCTION @extschema@._citus_layout() IS
'Internal: how loyalty.distribute() lays out each of loyalty''s tables on Citus: distributed (primary key led by program_id, account_key), reference (configuration, no account key; and rebate_agreement, whose account key is optional) or local (no account key in the primary key: partner_login).';
COMMENT ON FUNCTION @extschema@.distribute(regclass) IS
'Lays out loyalty''s tables on a Citus cluster around invoice, an ERP table hash-distributed by a text customer key: configuration tables become reference tables, account-scoped tables (the dead letters of rejected_event included) are distributed by account_key co-located with invoice, partner_login stays local to each node. Drops the foreign keys and partner policies Citus cannot take on every node, re-creates the keys it can. Superuser, once, before attaching the distributed invoice table; running it again is harmless. Returns each table''s layout.';

-- verify, explain_points and backfill of a Citus distributed table: shard by
-- shard on the node that holds it (_reconcile_shard, _explain_shard); the
-- facts query of an attachment row over a given table (_facts_sql(attachment,
-- regclass)); _verify_attachments reads the attachments in a statement of
-- its own; _verify_members and _verify_rebate_lines in PL/pgSQL (Citus cannot
-- plan the parameters of SQL functions).
CREATE OR REPLACE FUNCTION @extschema@._facts_sql(a @extschema@.attachment, source regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text;
    from_clause text;
    hdr text;
    pl text;
BEGIN
    key := CASE WHEN cardinality(a.key_columns) = 1 THEN format('(s.%I)::text', a.key_columns[1])
                ELSE format('(ROW(%s))::text', (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(a.key_columns) c)) END;
    -- a partitioned table is read with its partitions; a plain one alone
    from_clause := format('FROM %s %s s',
                          CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = source) = 'p' THEN '' ELSE 'ONLY' END,
                          source);
    IF a.header IS NULL THEN
        hdr := format('(%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency, (%s)::text AS doc_type,'
                      ' (%s)::date AS due_date, (%s)::date AS paid_date, true AS header_found',
                      a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
                      coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'));
    ELSE
        hdr := 'hh.account_key, hh.doc_date, hh.currency, hh.doc_type, hh.due_date, hh.paid_date, hh.found IS NOT NULL AS header_found';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency,'
            ' (%s)::text AS doc_type, (%s)::date AS due_date, (%s)::date AS paid_date, true AS found'
            ' FROM %s %s h WHERE h.%I %s s.%I) hh ON true',
            a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
            coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'),
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.header) = 'p' THEN '' ELSE 'ONLY' END,
            a.header, a.header_match_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.header_key_column)::regtype),
            a.header_key_column);
    END IF;
    -- the product line from the product table: the row of the line's product
    -- (by the key type's own equality), or its earlier line in force on the
    -- document's date (loyalty.product_history, matched by the key's text
    -- form), as the trigger looks them up (src/product.c)
    IF a.product IS NOT NULL THEN
        pl := 'CASE WHEN ph.found THEN ph.product_line ELSE pp.product_line END';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS product_line, (p.%I)::text AS product_key'
            ' FROM %s %s p WHERE p.%I %s s.%I) pp ON true'
            ' LEFT JOIN LATERAL (SELECT x.product_line, true AS found FROM @extschema@.product_history x'
            ' WHERE x.attachment_id OPERATOR(pg_catalog.=) %s'
            ' AND x.product_key OPERATOR(pg_catalog.=) coalesce(pp.product_key, (s.%I)::text)'
            ' AND x.valid_until OPERATOR(pg_catalog.>) %s ORDER BY x.valid_until LIMIT 1) ph ON true',
            a.product_line_expr, a.product_id_column,
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.product) = 'p' THEN '' ELSE 'ONLY' END,
            a.product, a.product_id_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.line_product_column)::regtype),
            a.line_product_column, a.attachment_id, a.line_product_column,
            CASE WHEN a.header IS NULL THEN format('(%s)::date', a.date_expr) ELSE 'hh.doc_date' END);
    ELSE
        pl := format('(%s)::text', coalesce(a.product_line_expr, 'NULL'));
    END IF;
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, %s AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  pl, from_clause);
END
$$;
COMMENT ON FUNCTION @extschema@._facts_sql(@extschema@.attachment, regclass) IS 'Internal: SQL that maps every row of a table (an attachment''s source, or a Citus shard of it) to the facts the points function takes.';
REVOKE ALL ON FUNCTION @extschema@._facts_sql(@extschema@.attachment, regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x WHERE x.attachment_id = attachment;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty attachment % does not exist', attachment USING ERRCODE = 'undefined_object';
    END IF;
    RETURN @extschema@._facts_sql(a, a.source);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_attachments(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ids integer[];
    sources oid[];
    headers oid[];
    products oid[];
    names text[];
BEGIN
    SELECT pg_catalog.array_agg(x.attachment_id ORDER BY x.attachment_id),
           pg_catalog.array_agg(x.source::oid ORDER BY x.attachment_id),
           pg_catalog.array_agg(x.header::oid ORDER BY x.attachment_id),
           pg_catalog.array_agg(x.product::oid ORDER BY x.attachment_id),
           pg_catalog.array_agg(x.source_name ORDER BY x.attachment_id)
      INTO ids, sources, headers, products, names
      FROM @extschema@.attachment x
     WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL;
    RETURN QUERY
    WITH x AS (
        SELECT * FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(sources), pg_catalog.unnest(headers),
                                pg_catalog.unnest(products), pg_catalog.unnest(names))
                      AS x(attachment_id, source, header, product, source_name)),
    att AS (
        SELECT x.attachment_id, x.source, x.header, x.product,
               pg_catalog.decode(x.attachment_id::text OPERATOR(pg_catalog.||) E'\\000', 'escape') AS arg
        FROM x
        WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source)),
    -- tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate, 64 instead;
    -- an accrual trigger must fire once, the TRUNCATE guard (shared by every
    -- attachment of a table) at least once
    need (attachment_id, rel, fn, arg, what, mask, bits, once) AS (
        SELECT a.attachment_id, a.source, '@extschema@.accrue()'::regprocedure::oid, a.arg, 'accrue AFTER ' OPERATOR(pg_catalog.||) e.event,
               67 OPERATOR(pg_catalog.|) e.bit, e.bit, true
        FROM att a, (VALUES ('INSERT', 4), ('UPDATE', 16), ('DELETE', 8)) AS e(event, bit)
      UNION ALL
        SELECT a.attachment_id, a.source, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
               '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
        FROM att a
      UNION ALL
        SELECT a.attachment_id, a.header, '@extschema@.accrue_header()'::regprocedure::oid, a.arg, 'accrue_header AFTER UPDATE', 83, 16, true
        FROM att a WHERE a.header IS NOT NULL
      UNION ALL
        SELECT a.attachment_id, a.header, '@extschema@.stash_header()'::regprocedure::oid, a.arg,
               'stash_header BEFORE ' OPERATOR(pg_catalog.||) e.event OPERATOR(pg_catalog.||) ' FOR EACH ROW',
               67 OPERATOR(pg_catalog.|) e.bit, 3 OPERATOR(pg_catalog.|) e.bit, true
        FROM att a, (VALUES ('DELETE', 8), ('UPDATE', 16)) AS e(event, bit) WHERE a.header IS NOT NULL
      UNION ALL
        SELECT a.attachment_id, a.header, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
               '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
        FROM att a WHERE a.header IS NOT NULL
      UNION ALL
        SELECT a.attachment_id, a.product, '@extschema@.track_product()'::regprocedure::oid, a.arg, 'track_product AFTER ' OPERATOR(pg_catalog.||) e.event,
               67 OPERATOR(pg_catalog.|) e.bit, e.bit, true
        FROM att a, (VALUES ('INSERT', 4), ('UPDATE', 16), ('DELETE', 8)) AS e(event, bit) WHERE a.product IS NOT NULL
      UNION ALL
        SELECT a.attachment_id, a.product, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
               '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
        FROM att a WHERE a.product IS NOT NULL)
    SELECT NULL::text, NULL::date, x.attachment_id, 'source_dropped: ' OPERATOR(pg_catalog.||) x.source_name, NULL::numeric, NULL::numeric
    FROM x
    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source)
    UNION ALL
    SELECT NULL::text, NULL::date, n.attachment_id,
           CASE WHEN t.enabled OPERATOR(pg_catalog.>) 0 THEN 'trigger_duplicate: '
                WHEN t.disabled OPERATOR(pg_catalog.>) 0 THEN 'trigger_disabled: '
                ELSE 'trigger_missing: ' END
           OPERATOR(pg_catalog.||) n.what OPERATOR(pg_catalog.||) ' on ' OPERATOR(pg_catalog.||) n.rel::regclass::text,
           1::numeric, t.enabled::numeric
    FROM need n,
         LATERAL (SELECT pg_catalog.count(*) FILTER (WHERE g.tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::"char"[])) AS enabled,
                         pg_catalog.count(*) FILTER (WHERE g.tgenabled OPERATOR(pg_catalog.=) ANY ('{D,R}'::"char"[])) AS disabled
                  FROM pg_catalog.pg_trigger g
                  WHERE g.tgrelid OPERATOR(pg_catalog.=) n.rel AND g.tgfoid OPERATOR(pg_catalog.=) n.fn
                    AND g.tgargs OPERATOR(pg_catalog.=) n.arg
                    AND (g.tgtype::integer OPERATOR(pg_catalog.&) n.mask) OPERATOR(pg_catalog.=) n.bits) AS t
    WHERE t.enabled OPERATOR(pg_catalog.=) 0 OR (n.once AND t.enabled OPERATOR(pg_catalog.>) 1);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_members(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
-- a ledger entry whose member is not a member of its account
SELECT l.account_key, NULL::date, NULL::integer, 'member_unknown:' OPERATOR(pg_catalog.||) l.member_id,
       0::numeric, pg_catalog.count(*)::numeric
FROM @extschema@.ledger l
WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2)
  AND l.member_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM @extschema@.member m
                  WHERE m.program_id OPERATOR(pg_catalog.=) l.program_id AND m.account_key OPERATOR(pg_catalog.=) l.account_key
                    AND m.member_id OPERATOR(pg_catalog.=) l.member_id)
GROUP BY l.account_key, l.member_id
UNION ALL
-- a member's running total that differs from the sums of their entries,
-- or that is below zero (redemptions check it; nothing else debits it)
SELECT coalesce(t.account_key, l.account_key), NULL, NULL, v.item, v.e, v.a
FROM (SELECT x.account_key, x.member_id, pg_catalog.sum(x.points) AS points, pg_catalog.count(*) AS n
      FROM @extschema@.ledger x
      WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
        AND x.member_id IS NOT NULL
      GROUP BY 1, 2) l
FULL JOIN (SELECT x.account_key, x.member_id, x.points, x.entry_count
           FROM @extschema@.member_points x
           WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) t
  ON t.account_key OPERATOR(pg_catalog.=) l.account_key AND t.member_id OPERATOR(pg_catalog.=) l.member_id,
LATERAL (VALUES ('member_points:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.points, 0)::numeric,
                 coalesce(t.points, 0)::numeric),
                ('member_entries:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.n, 0)::numeric,
                 coalesce(t.entry_count, 0)::numeric),
                ('member_overdrawn:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), 0::numeric,
                 LEAST(coalesce(t.points, 0), 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- a redemption whose spending entry (or, cancelled, whose giving back) is
-- missing from the ledger or differs from it
SELECT d.account_key, NULL, NULL, v.item, v.e, v.a
FROM @extschema@.redemption d
LEFT JOIN @extschema@.ledger s
  ON s.program_id OPERATOR(pg_catalog.=) d.program_id AND s.account_key OPERATOR(pg_catalog.=) d.account_key
     AND s.posted_xid OPERATOR(pg_catalog.=) d.posted_xid AND s.entry_no OPERATOR(pg_catalog.=) d.entry_no
     AND s.kind OPERATOR(pg_catalog.=) 'redeem' AND s.member_id IS NOT DISTINCT FROM d.member_id
LEFT JOIN @extschema@.ledger c
  ON c.program_id OPERATOR(pg_catalog.=) d.program_id AND c.account_key OPERATOR(pg_catalog.=) d.account_key
     AND c.posted_xid OPERATOR(pg_catalog.=) d.cancel_xid AND c.entry_no OPERATOR(pg_catalog.=) d.cancel_entry_no
     AND c.kind OPERATOR(pg_catalog.=) 'redeem' AND c.member_id IS NOT DISTINCT FROM d.member_id
     AND c.corrects_xid OPERATOR(pg_catalog.=) d.posted_xid AND c.corrects OPERATOR(pg_catalog.=) d.entry_no,
LATERAL (VALUES ('redemption_spent:' OPERATOR(pg_catalog.||) d.redemption_id::text, d.points::numeric,
                 (OPERATOR(pg_catalog.-) s.points)::numeric),
                ('redemption_given_back:' OPERATOR(pg_catalog.||) d.redemption_id::text,
                 CASE WHEN d.status OPERATOR(pg_catalog.=) 'cancelled' THEN d.points ELSE 0 END::numeric,
                 coalesce(c.points, 0)::numeric)) AS v(item, e, a)
WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR d.account_key OPERATOR(pg_catalog.=) $2)
  AND v.e IS DISTINCT FROM v.a
UNION ALL
-- an approved award whose entry is missing or differs, or any other award
-- that posted
SELECT w.account_key, NULL, NULL, 'award_points:' OPERATOR(pg_catalog.||) w.award_id::text,
       CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END::numeric,
       coalesce(l.points, 0)::numeric
FROM @extschema@.award w
LEFT JOIN @extschema@.ledger l
  ON l.program_id OPERATOR(pg_catalog.=) w.program_id AND l.account_key OPERATOR(pg_catalog.=) w.account_key
     AND l.posted_xid OPERATOR(pg_catalog.=) w.posted_xid AND l.entry_no OPERATOR(pg_catalog.=) w.entry_no
     AND l.kind OPERATOR(pg_catalog.=) 'award' AND l.member_id IS NOT DISTINCT FROM w.member_id
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR w.account_key OPERATOR(pg_catalog.=) $2)
  AND CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END IS DISTINCT FROM coalesce(l.points, 0);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_rebate_lines(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
WITH since AS (
    SELECT pg_catalog.min(pg_catalog.date_trunc('month', g.valid_from))::date AS month
    FROM @extschema@.rebate_agreement g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1 AND g.product_lines IS NOT NULL),
accrued AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.qualifying) AS qualifying, pg_catalog.sum(m.source_rows) AS n
    FROM @extschema@.accrual_month m, since
    WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.month OPERATOR(pg_catalog.>=) since.month
      AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2)
    GROUP BY 1, 2),
split AS (
    SELECT v.account_key, v.month, pg_catalog.sum(v.qualifying) AS qualifying, pg_catalog.sum(v.source_rows) AS n
    FROM @extschema@.rebate_line_volume v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2)
    GROUP BY 1, 2)
SELECT coalesce(a.account_key, s.account_key), coalesce(a.month, s.month), NULL::integer, v.item, v.e, v.a
FROM accrued a
     FULL JOIN (SELECT s.* FROM split s, since WHERE s.month OPERATOR(pg_catalog.>=) since.month) s
       ON s.account_key OPERATOR(pg_catalog.=) a.account_key AND s.month OPERATOR(pg_catalog.=) a.month,
     LATERAL (VALUES ('rebate_line_qualifying', coalesce(a.qualifying, 0), coalesce(s.qualifying, 0)),
                     ('rebate_line_rows', coalesce(a.n, 0)::numeric, coalesce(s.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._reconcile_shard(attachment integer, shard text, caller text, backfill boolean,
                                             since date, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_reconcile_shard' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION @extschema@._explain_shard(attachment integer, shard text, caller text, key text[], account text)
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_shard' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._reconcile_shard(integer, text, text, boolean, date, text) IS
    'Internal: verify''s comparison (or backfill''s posting) of one Citus shard of an attached table, on its node, with the co-located shards of loyalty''s tables.';
REVOKE ALL ON FUNCTION @extschema@._reconcile_shard(integer, text, text, boolean, date, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._explain_shard(integer, text, text, text[], text) IS
    'Internal: explain_points of the rows of one account of a Citus distributed table, on the node of its shard.';
REVOKE ALL ON FUNCTION @extschema@._explain_shard(integer, text, text, text[], text) FROM PUBLIC;

-- Reading and per-account functions on a distributed layout: no function
-- that reads a loyalty table by name inside a query Citus routes or pushes
-- down to the shards (a nested distributed query, refused on the worker),
-- no SQL function with parameters over a distributed table, no sub-select
-- nor volatile function inside a CASE in a write of a distributed table,
-- no volatile function in the SET of an upsert into a Citus table.
-- Configuration values are computed in statements of their own first;
-- account_status takes today from a materialized CTE over program.
-- Same signatures, comments and grants; _tier_at and _action_counts become
-- PL/pgSQL.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    win_start date;
    today date;
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'balance takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'').';
    END IF;
    PERFORM @extschema@._may_read(program, account_key);
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = balance.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    -- a customer without an account (not enrolled, or not yet invoiced) has
    -- nothing: a zero row, so that a set-based BI query does not abort
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key;
    -- the window's bounds as values: on Citus the query below runs on the
    -- account's shard, where a function reading loyalty.program by name
    -- would be a distributed query nested in a shard query
    win_start := @extschema@._rolling_start(pid);
    today := @extschema@._today(pid);
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= win_start AND m.month <= today;
    -- an upgrade is due as soon as the rolling spend reaches the next
    -- threshold (the next loyalty.fold() records it); below every upgrade,
    -- the first tier applies when its threshold is 0
    SELECT CASE WHEN tier IS NULL
                     OR @extschema@.tier_rank(p.ladder, rolling_qualifying)
                        > (SELECT t.rank FROM @extschema@.tiers(p.ladder) t WHERE t.name = tier)
                THEN coalesce(@extschema@.tier_of(p.ladder, rolling_qualifying), tier) ELSE tier END
    INTO tier FROM @extschema@.program p WHERE p.program_id = pid;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text, as_of date,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    zone text;
    win_start date;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    IF as_of IS NULL OR NOT isfinite(as_of) THEN
        RAISE EXCEPTION 'as_of must be a date, not %', coalesce(as_of::text, 'NULL')
            USING ERRCODE = CASE WHEN as_of IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'as_of is the day whose closing balance is asked for.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31''); without a date: loyalty.balance(program, account_key).';
    END IF;
    SELECT p.program_id, p.time_zone,
           (date_trunc('month', as_of::timestamp)
            - make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
    INTO pid, zone, win_start FROM @extschema@.program p WHERE p.name = balance.program;
    -- the ledger as it stood at the end of as_of in the program's calendar
    SELECT coalesce(sum(l.points), 0), coalesce(sum(l.qualifying), 0) INTO points, qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = balance.account_key
      AND l.posted_at < ((as_of + 1)::timestamp AT TIME ZONE zone);
    -- the rolling window ending with as_of's month, by document date
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= win_start AND m.month <= as_of;
    tier := @extschema@._tier_at(pid, account_key, as_of);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._tier_at(program_id integer, account_key text, as_of date) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT h.new_tier FROM @extschema@.tier_history h
            WHERE h.program_id OPERATOR(pg_catalog.=) _tier_at.program_id
              AND h.account_key OPERATOR(pg_catalog.=) _tier_at.account_key
              AND h.effective_from OPERATOR(pg_catalog.<=) _tier_at.as_of
            ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._set_tier(pid integer, account text, new_tier text, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_tier text;
    tomorrow date := @extschema@._today(pid) + 1;
    since timestamptz;
    change bigint;
    last_doc date;
BEGIN
    PERFORM @extschema@._tier_lock(pid);
    SELECT a.tier INTO old_tier FROM @extschema@.account a
    WHERE a.program_id = pid AND a.account_key = account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = pid)
            USING ERRCODE = 'no_data_found',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF old_tier IS NOT DISTINCT FROM new_tier THEN
        RETURN;
    END IF;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor now() inside a CASE
    since := CASE WHEN new_tier IS NULL THEN NULL ELSE now() END;
    SELECT coalesce(max(h.change_no), 0) + 1 INTO change FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = account;
    SELECT b.last_doc_date + 1 INTO last_doc FROM @extschema@.balance b
    WHERE b.program_id = pid AND b.account_key = account;
    UPDATE @extschema@.account a SET tier = new_tier, tier_since = since
    WHERE a.program_id = pid AND a.account_key = account;
    INSERT INTO @extschema@.tier_history (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason)
    VALUES (pid, account, change, greatest(tomorrow, coalesce(last_doc, tomorrow)), old_tier, new_tier, why);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.statement(program text, account_key text, period_end date)
RETURNS TABLE (section text, item text, value text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    prog @extschema@.program;
    pstart date;
    t text;
    since date;
    m numeric;
    nxt record;
    outcome text;
    zone_end timestamptz;
    zone_start timestamptz;
    soon bigint;
    closing bigint;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    e := coalesce(e, @extschema@._period_end_problem((SELECT p.program_id FROM @extschema@.program p WHERE p.name = statement.program),
                                                     period_end));
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.statement(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name = statement.program;
    pid := prog.program_id;
    pstart := @extschema@._period_start(pid, period_end);
    zone_start := pstart::timestamp AT TIME ZONE prog.time_zone;
    zone_end := (period_end + 1)::timestamp AT TIME ZONE prog.time_zone;
    -- the tier the period's settlement decided (in force from the day it
    -- ran), or, for a period not settled yet, the tier of its last day
    SELECT s.new_tier, s.outcome, s.measure INTO t, outcome, m FROM @extschema@.settlement_account s
    WHERE s.program_id = pid AND s.account_key = statement.account_key AND s.period_end = statement.period_end;
    IF NOT FOUND THEN
        t := @extschema@._tier_at(pid, account_key, period_end);
        m := @extschema@._measure(pid, account_key, period_end);
        outcome := 'not settled yet';
    END IF;
    SELECT max(h.effective_from) INTO since FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = statement.account_key AND h.new_tier = t;
    -- the next tier above the account's tier (or above what it measures)
    SELECT x.name, x.threshold, greatest(x.threshold - m, 0) AS gap INTO nxt
    FROM @extschema@.tiers(prog.ladder) x
    WHERE x.rank > greatest(coalesce((SELECT y.rank FROM @extschema@.tiers(prog.ladder) y WHERE y.name = t), 0),
                            coalesce(@extschema@.tier_rank(prog.ladder, m), 0))
    ORDER BY x.rank LIMIT 1;

    RETURN QUERY VALUES ('period', 'from', pstart::text), ('period', 'to', period_end::text),
                        ('tier', 'tier', t), ('tier', 'since', since::text), ('tier', 'settlement', outcome),
                        ('tier', 'measure (' || prog.tier_basis || ', rolling window)', m::text),
                        ('progress', 'next tier', nxt.name), ('progress', 'threshold', nxt.threshold::text),
                        ('progress', 'missing', nxt.gap::text);
    -- points earned in the period: accrual by document month and ERP table,
    -- the other kinds by posting date
    RETURN QUERY
    SELECT 'points earned', coalesce(a.source_name, '(unknown table)'), sum(x.points)::text
    FROM @extschema@.accrual_month x LEFT JOIN @extschema@.attachment a ON a.attachment_id = x.attachment_id
    WHERE x.program_id = pid AND x.account_key = statement.account_key AND x.month >= pstart AND x.month <= period_end
    GROUP BY a.source_name ORDER BY a.source_name;
    RETURN QUERY
    SELECT 'points earned', l.kind::text, sum(l.points)::text
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = statement.account_key
      AND l.kind IN ('award', 'adjust') AND l.posted_at >= zone_start AND l.posted_at < zone_end
    GROUP BY l.kind ORDER BY l.kind;
    -- as values: on Citus the query below runs on the account's shard, where
    -- these functions could not read the configuration by name
    soon := @extschema@._expiring_soon(pid, account_key, period_end);
    closing := (SELECT b.points FROM @extschema@.balance(program, account_key, period_end) b);
    RETURN QUERY
    SELECT 'points', v.item, v.value FROM (VALUES
        ('redeemed', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                      WHERE l.program_id = pid AND l.account_key = statement.account_key AND l.kind = 'redeem'
                        AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expired', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                     WHERE l.program_id = pid AND l.account_key = statement.account_key AND l.kind = 'expire'
                       AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expiring soon', soon::text),
        ('balance at period end', closing::text)) v(item, value);
    RETURN QUERY
    SELECT 'rebates', v.item, v.value FROM (VALUES
        ('accrued in period', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                               WHERE l.program_id = pid AND l.account_key = statement.account_key
                                 AND l.rebate <> 0 AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('balance at period end', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                                   WHERE l.program_id = pid AND l.account_key = statement.account_key
                                     AND l.rebate <> 0 AND l.posted_at < zone_end))) v(item, value);
    RETURN QUERY
    SELECT 'benefits', b.benefit, b.value::text FROM @extschema@.tier_benefit b
    WHERE b.program_id = pid AND b.tier = t ORDER BY b.benefit;
    -- what the next tier would add or change
    RETURN QUERY
    SELECT 'next tier unlocks', n.benefit, n.value::text FROM @extschema@.tier_benefit n
    WHERE n.program_id = pid AND n.tier = nxt.name
      AND n.value IS DISTINCT FROM (SELECT b.value FROM @extschema@.tier_benefit b
                                    WHERE b.program_id = pid AND b.tier = t AND b.benefit = n.benefit)
    ORDER BY n.benefit;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w @extschema@.award;
    entry bigint;
    xid xid8;
BEGIN
    SELECT * INTO w FROM @extschema@.award x WHERE x.award_id = award_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @extschema@._lock_for_debit(w.program_id, w.account_key);
    SELECT * INTO w FROM @extschema@.award x
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
    IF w.status <> 'pending' THEN
        RETURN;
    END IF;
    IF approve THEN
        entry := @extschema@._post_member(w.program_id, w.account_key, 'award', w.points,
                                          pg_catalog.format('%s x %s', w.quantity, w.action) || coalesce(' ref ' || w.reference, ''),
                                          w.member_id);
    END IF;
    -- the entry's transaction as a value: on Citus, an UPDATE of a
    -- distributed table may not call a volatile function inside a CASE
    IF entry IS NOT NULL THEN
        xid := pg_catalog.pg_current_xact_id();
    END IF;
    UPDATE @extschema@.award x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_award.note, posted_xid = xid, entry_no = entry
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._enroll(
    program           text,
    account_key       text,
    cooperation_model text,
    industry          text,
    region            text,
    potential_spend   numeric,
    cohort            text,
    enrolled_from     date,
    OUT enrolled_program integer,
    OUT restate       boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    policy text;
    before @extschema@.account;
    after @extschema@.account;
    since date;
    until date;
BEGIN
    IF account_key IS NULL OR account_key = '' THEN
        RAISE EXCEPTION 'account_key must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cohort IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cohort', cohort, ARRAY['pilot', 'control']);
    END IF;
    IF cooperation_model IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cooperation_model', cooperation_model,
                                          ARRAY['direct', 'distributor', 'integrator', 'reseller']);
    END IF;
    SELECT p.enrollment INTO policy FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT * INTO before FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor a function of the
    -- configuration (the coordinator evaluates it, the shard runs the rest)
    since := coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE @extschema@._today(pid) END);
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit', since)
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(_enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow (in
    -- the program's calendar), and never to a document already accrued: after
    -- the account's latest document date if that is later.  The old values
    -- stay for the documents before (the first change of a day keeps them:
    -- values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        SELECT b.last_doc_date + 1 INTO until FROM @extschema@.balance b
        WHERE b.program_id = pid AND b.account_key = _enroll.account_key;
        until := GREATEST(@extschema@._today(pid) + 1, until);
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, _enroll.account_key, until,
                before.cooperation_model, before.industry, before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all; so does a
    -- first enrolment of a customer whose documents were ignored so far.
    enrolled_program := pid;
    restate := (before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
                AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = _enroll.account_key))
               OR (before.account_key IS NULL
                   AND EXISTS (SELECT FROM @extschema@.unenrolled_activity u
                               WHERE u.program_id = pid AND u.account_key = _enroll.account_key AND u.source_rows <> 0));
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.roi(program text, pre daterange, post daterange, benefit_cost numeric DEFAULT NULL,
                               costs_until date DEFAULT NULL)
RETURNS TABLE (
    measured_on text, pilot_accounts bigint, control_accounts bigint,
    pilot_mean_change numeric, control_mean_change numeric,
    uplift_per_account numeric, uplift_ci_low numeric, uplift_ci_high numeric, std_error numeric, welch_df numeric,
    incremental_margin numeric, incremental_margin_ci_low numeric, incremental_margin_ci_high numeric,
    points_issued bigint, points_cost numeric, rebate_cost numeric, mdf_cost numeric, benefits_cost numeric,
    program_cost numeric, roi numeric, roi_ci_low numeric, roi_ci_high numeric, payback_months numeric,
    placebo_uplift numeric, placebo_ci_low numeric, placebo_ci_high numeric, parallel_trends text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    prog @extschema@.program;
    pid integer;
    c record;
    d @extschema@.did_result;
    pd @extschema@.did_result;
    est record;
    econ @extschema@.roi_settings;
    scale numeric;
    months numeric;
    mid date;
    rev numeric;
    unrated numeric;
    pts bigint;
    reb numeric;
    md numeric;
    ben numeric;
    cost numeric;
    inc numeric;
BEGIN
    -- the program by name, read as the caller (internal functions are not theirs)
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program x WHERE x.name = program;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    FOR c IN SELECT * FROM (VALUES (1, 'pre', pre), (2, 'post', post)) AS x(n, param, r) ORDER BY n LOOP
        IF c.r IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = format('%s is a range of document dates.', c.param),
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
        IF isempty(c.r) OR lower_inf(c.r) OR upper_inf(c.r) THEN
            RAISE EXCEPTION '% must be a bounded, non-empty date range, not %', c.param, c.r
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Means per account need a period of known length.',
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
    END LOOP;
    IF upper(pre) > lower(post) THEN
        RAISE EXCEPTION 'pre must end before post begins: % and % overlap', pre, post
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'pre is the period before the program started, post the period it ran.',
                  HINT = 'For example pre => daterange(''2024-01-01'', ''2025-01-01''), post => daterange(''2025-01-01'', ''2026-01-01'').';
    END IF;
    IF costs_until <= lower(post) OR costs_until = 'infinity' THEN
        RAISE EXCEPTION 'costs_until must be a date after post begins, not %', costs_until
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Rebates, MDF and awards posted from the start of post up to the day before costs_until count as the pilot''s cost.',
                  HINT = 'Leave it out for the end of post; give a later date to include the rebates settled after post.';
    END IF;
    IF benefit_cost < 0 OR benefit_cost IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'benefit_cost must be 0 or more, not %', benefit_cost
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'benefit_cost is what the pilot''s benefits cost over post, in program currency.',
                  HINT = 'Leave it out to use loyalty.roi_settings.benefit_cost_per_account_month.';
    END IF;
    SELECT * INTO econ FROM @extschema@.roi_settings s WHERE s.program_id = pid;
    scale := (upper(post) - lower(post))::numeric / (upper(pre) - lower(pre));
    months := (upper(post) - lower(post))::numeric / (365.25 / 12);
    mid := lower(pre) + (upper(pre) - lower(pre)) / 2;

    WITH x AS (
        SELECT s.account_key, s.doc_date, sum(s.margin) AS margin, sum(s.revenue) AS revenue,
               sum(s.unrated_revenue) AS unrated
        FROM @extschema@.sales(program, daterange(lower(pre), upper(post))) s
        GROUP BY 1, 2),
    m AS (
        SELECT x.account_key,
               sum(x.margin) FILTER (WHERE x.doc_date <@ pre) AS pre,
               sum(x.margin) FILTER (WHERE x.doc_date <@ post) AS post,
               sum(x.margin) FILTER (WHERE x.doc_date >= lower(pre) AND x.doc_date < mid) AS first_half,
               sum(x.margin) FILTER (WHERE x.doc_date >= mid AND x.doc_date < mid + (mid - lower(pre))) AS second_half
        FROM x GROUP BY 1),
    -- the experiment's accounts as a result of their own: on Citus the
    -- account table is distributed, and the sub-selects over x below can
    -- run only where the rest of the query is a result on the coordinator
    a AS MATERIALIZED (
        SELECT a.account_key, a.cohort FROM @extschema@.account a
        WHERE a.program_id = pid AND a.cohort IS NOT NULL)
    SELECT @extschema@.did(a.cohort = 'pilot', coalesce(m.pre, 0) * scale, coalesce(m.post, 0)) AS d,
           @extschema@.did(a.cohort = 'pilot', coalesce(m.first_half, 0), coalesce(m.second_half, 0)) AS pd,
           (SELECT sum(x.revenue) FROM x) AS rev, (SELECT sum(x.unrated) FROM x) AS unrated
    INTO est
    FROM a
    LEFT JOIN m ON m.account_key = a.account_key;
    d := est.d;
    pd := est.pd;
    rev := est.rev;
    unrated := est.unrated;

    -- the pilot's cost over post
    SELECT coalesce(sum(m.points), 0) INTO pts
    FROM @extschema@.accrual_month m JOIN @extschema@.account a USING (program_id, account_key)
    WHERE m.program_id = pid AND a.cohort = 'pilot'
      AND m.month >= date_trunc('month', lower(post)) AND m.month < upper(post);
    SELECT pts + coalesce(sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points > 0), 0),
           coalesce(sum(l.rebate), 0), coalesce(sum(l.mdf), 0)
    INTO pts, reb, md
    FROM @extschema@.ledger l JOIN @extschema@.account a USING (program_id, account_key)
    WHERE l.program_id = pid AND a.cohort = 'pilot'
      AND (l.posted_at AT TIME ZONE prog.time_zone)::date
          <@ daterange(lower(post), coalesce(costs_until, upper(post)));
    ben := coalesce(benefit_cost, coalesce(econ.benefit_cost_per_account_month, 0) * d.pilot_n * months);
    cost := pts * coalesce(econ.cost_per_point, 0) + reb + md + ben;
    inc := d.uplift::numeric * d.pilot_n;

    measured_on := CASE WHEN coalesce(rev, 0) = 0 THEN 'no sales'
                        WHEN unrated = 0 THEN 'margin'
                        WHEN unrated = rev THEN 'revenue (no margin rates set)'
                        ELSE format('margin; %s%% of revenue had no margin rate and counts as revenue',
                                    round(100 * unrated / rev, 1)) END;
    pilot_accounts := d.pilot_n;
    control_accounts := d.control_n;
    pilot_mean_change := round(d.pilot_mean_change::numeric, 2);
    control_mean_change := round(d.control_mean_change::numeric, 2);
    uplift_per_account := round(d.uplift::numeric, 2);
    uplift_ci_low := round(d.ci_low::numeric, 2);
    uplift_ci_high := round(d.ci_high::numeric, 2);
    std_error := round(d.std_error::numeric, 2);
    welch_df := round(d.welch_df::numeric, 1);
    incremental_margin := round(inc, 2);
    incremental_margin_ci_low := round(d.ci_low::numeric * d.pilot_n, 2);
    incremental_margin_ci_high := round(d.ci_high::numeric * d.pilot_n, 2);
    points_issued := pts;
    points_cost := round(pts * coalesce(econ.cost_per_point, 0), 2);
    rebate_cost := reb;
    mdf_cost := md;
    benefits_cost := round(ben, 2);
    program_cost := round(cost, 2);
    IF cost > 0 THEN
        roi := round((inc - cost) / cost, 4);
        roi_ci_low := round((d.ci_low::numeric * d.pilot_n - cost) / cost, 4);
        roi_ci_high := round((d.ci_high::numeric * d.pilot_n - cost) / cost, 4);
        IF inc > 0 THEN
            payback_months := round(cost / (inc / months), 1);
        END IF;
    END IF;
    placebo_uplift := round(pd.uplift::numeric, 2);
    placebo_ci_low := round(pd.ci_low::numeric, 2);
    placebo_ci_high := round(pd.ci_high::numeric, 2);
    parallel_trends := CASE WHEN pd.ci_low IS NULL THEN 'not checked: too few accounts'
                            WHEN pd.ci_low <= 0 AND pd.ci_high >= 0 THEN 'plausible: the placebo interval holds 0'
                            ELSE 'doubtful: the placebo interval excludes 0' END;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE VIEW @extschema@.account_status WITH (security_invoker = true) AS
-- each program's row with today in its calendar, a result of its own: on
-- Citus the coordinator computes it once and sends it to the shards (a
-- sub-select without FROM cannot go there, and now() on a shard is that
-- node's own transaction start)
WITH p AS MATERIALIZED (SELECT p.*, (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today
                        FROM @extschema@.program p)
SELECT p.name AS program, a.account_key, a.cooperation_model, a.industry, a.region, ap.cohort,
       a.tier, a.tier_since,
       coalesce(b.points, 0) AS points, coalesce(b.qualifying, 0) AS qualifying,
       coalesce(r.rolling, 0) AS rolling_qualifying,
       n.name AS next_tier, n.threshold AS next_tier_threshold, n.gap AS gap_to_next_tier,
       coalesce(b.rebate, 0) AS rebate, coalesce(b.mdf, 0) AS mdf, ap.potential_spend,
       b.last_doc_date AS last_invoice_date,
       p.today OPERATOR(pg_catalog.-) b.last_doc_date AS days_since_last_invoice,
       coalesce(w.trainings, 0) AS trainings_completed, coalesce(w.certifications, 0) AS certifications
FROM @extschema@.account a
JOIN p ON p.program_id OPERATOR(pg_catalog.=) a.program_id
-- staff only: a partner's row has them NULL
LEFT JOIN @extschema@.account_private ap ON ap.program_id OPERATOR(pg_catalog.=) a.program_id
                                         AND ap.account_key OPERATOR(pg_catalog.=) a.account_key
LEFT JOIN @extschema@.balance b ON b.program_id OPERATOR(pg_catalog.=) a.program_id
                               AND b.account_key OPERATOR(pg_catalog.=) a.account_key
-- the tier window: whole calendar months ending with the current one (as
-- loyalty.balance() counts it)
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(m.qualifying) AS rolling
    FROM @extschema@.accrual_month m
    WHERE m.program_id OPERATOR(pg_catalog.=) a.program_id AND m.account_key OPERATOR(pg_catalog.=) a.account_key
      AND m.month OPERATOR(pg_catalog.<=) p.today
      AND m.month OPERATOR(pg_catalog.>=) (pg_catalog.date_trunc('month', p.today::timestamp)
          OPERATOR(pg_catalog.-) pg_catalog.make_interval(months => GREATEST(1,
              (pg_catalog.date_part('year', p.qualification_window) OPERATOR(pg_catalog.*) 12
               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', p.qualification_window)
               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', p.qualification_window) OPERATOR(pg_catalog./) 30))::integer)
              OPERATOR(pg_catalog.-) 1))::date) r ON true
LEFT JOIN LATERAL @extschema@.next_tier(p.ladder, coalesce(r.rolling, 0)) n ON true
-- approved training and certification actions, its members' included
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(x.quantity)::bigint AS trainings,
           pg_catalog.sum(x.quantity) FILTER (WHERE ar.category OPERATOR(pg_catalog.=) 'certification')::bigint AS certifications
    FROM @extschema@.award x
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) x.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) x.action AND ar.valid_from OPERATOR(pg_catalog.=) x.rule_from
    WHERE x.program_id OPERATOR(pg_catalog.=) a.program_id AND x.account_key OPERATOR(pg_catalog.=) a.account_key
      AND x.status OPERATOR(pg_catalog.=) 'approved' AND ar.category IN ('training', 'certification')) w ON true;
CREATE OR REPLACE FUNCTION @extschema@._post_member(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    member_id    text,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._post($1, $2, $3, $4, $5, member_id => $6, corrects_xid => $7, corrects => $8);
BEGIN
    IF n IS NOT NULL AND $6 IS NOT NULL THEN
        INSERT INTO @extschema@.member_points AS m (program_id, account_key, member_id, points, earned, spent, entry_count)
        VALUES ($1, $2, $6, $4,
                CASE WHEN $3 OPERATOR(pg_catalog.<>) 'redeem' THEN $4 ELSE 0 END,
                CASE WHEN $3 OPERATOR(pg_catalog.=) 'redeem' THEN OPERATOR(pg_catalog.-) $4 ELSE 0 END, 1)
        ON CONFLICT ON CONSTRAINT member_points_pkey DO UPDATE
        SET points = m.points OPERATOR(pg_catalog.+) excluded.points,
            earned = m.earned OPERATOR(pg_catalog.+) excluded.earned,
            spent = m.spent OPERATOR(pg_catalog.+) excluded.spent,
            -- the inserted row's default, now(): on Citus the SET of an
            -- upsert into a distributed table may call no volatile function
            entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = excluded.updated_at;
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_roi_economics(
    program                        text,
    cost_per_point                 numeric DEFAULT NULL,
    benefit_cost_per_account_month numeric DEFAULT NULL,
    default_margin_rate            numeric DEFAULT NULL)
RETURNS @extschema@.roi_settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    r @extschema@.roi_settings;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF cost_per_point < 0 OR cost_per_point IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'cost_per_point must be 0 or more, not %', cost_per_point
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cost_per_point is what one issued point costs the company, in program currency.',
                  HINT = 'For example cost_per_point => 0.01 (a point worth one cent).';
    END IF;
    IF benefit_cost_per_account_month < 0 OR benefit_cost_per_account_month IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'benefit_cost_per_account_month must be 0 or more, not %', benefit_cost_per_account_month
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'benefit_cost_per_account_month is what the benefits of one pilot account cost per month.',
                  HINT = 'For example benefit_cost_per_account_month => 15.';
    END IF;
    IF NOT default_margin_rate BETWEEN -1 AND 1 THEN
        RAISE EXCEPTION 'default_margin_rate must be between -1 and 1, not %', default_margin_rate
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A margin rate is margin / revenue: 0.25 when a quarter of the revenue is margin.',
                  HINT = 'For example default_margin_rate => 0.2.';
    END IF;
    INSERT INTO @extschema@.roi_settings AS s (program_id, cost_per_point, benefit_cost_per_account_month, default_margin_rate)
    VALUES (pid, coalesce(cost_per_point, 0), coalesce(benefit_cost_per_account_month, 0), default_margin_rate)
    ON CONFLICT (program_id) DO UPDATE
    SET cost_per_point = coalesce(set_roi_economics.cost_per_point, s.cost_per_point),
        benefit_cost_per_account_month = coalesce(set_roi_economics.benefit_cost_per_account_month, s.benefit_cost_per_account_month),
        default_margin_rate = coalesce(set_roi_economics.default_margin_rate, s.default_margin_rate),
        -- the inserted row's default, now(): Citus refuses a volatile
        -- function in the SET of an upsert into one of its tables
        updated_at = excluded.updated_at
    RETURNING * INTO r;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_margin_rate(program text, product_line text, rate numeric)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF product_line IS NULL THEN
        RAISE EXCEPTION 'product_line must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'product_line is a product line as the program''s attachments map it.',
                  HINT = 'For the lines without a rate of their own use loyalty.set_roi_economics(program, default_margin_rate => ...).';
    END IF;
    IF rate IS NULL THEN
        DELETE FROM @extschema@.margin_rate m WHERE m.program_id = pid AND m.product_line = set_margin_rate.product_line;
        RETURN;
    END IF;
    IF NOT rate BETWEEN -1 AND 1 THEN
        RAISE EXCEPTION 'rate must be between -1 and 1, not %', rate
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A margin rate is margin / revenue: 0.25 when a quarter of the revenue is margin.',
                  HINT = 'Give 0.25, not 25; rate => NULL removes the line''s rate.';
    END IF;
    INSERT INTO @extschema@.margin_rate AS m (program_id, product_line, rate)
    VALUES (pid, product_line, rate)
    -- updated_at: the inserted row's default, now() (Citus refuses now() here)
    ON CONFLICT ON CONSTRAINT margin_rate_pkey DO UPDATE SET rate = excluded.rate, updated_at = excluded.updated_at;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL: on Citus, award is distributed, and Citus plans a
    -- query with parameters on it only as PL/pgSQL's custom plan
    RETURN QUERY
    SELECT w.account_key, pg_catalog.sum(w.quantity)::bigint
    FROM @extschema@.award w
    WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.action OPERATOR(pg_catalog.=) $2
      AND w.status OPERATOR(pg_catalog.=) 'approved'
      AND w.occurred_on OPERATOR(pg_catalog.>=) $3 AND w.occurred_on OPERATOR(pg_catalog.<) $4
    GROUP BY w.account_key;
END
$$;

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
    role       text := pg_catalog.current_setting('session_replication_role');
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

    -- 4. the rows Citus copied into the shards stay on disk in this node's
    -- tables, out of sight but read by anything that opens them directly:
    -- removed, with loyalty's own guards (append-only ledger, accounts
    -- kept) silenced for this, since nothing is lost
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT l.table_name FROM @extschema@._citus_layout() l
              WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING t.table_name;
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role, true);

    -- 5. the functions Citus runs where the account is
    PERFORM @extschema@._citus_functions();
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;


-- ---------------------------------------------------------------------------
-- Account keys in the type of the ERP's distribution column on Citus (text,
-- integer or bigint): the domain loyalty.account_key, loyalty._set_key_type(),
-- distribute() taking int and bigint keys, and the functions and views that
-- cast keys given as text to it (or key columns to text).
-- ---------------------------------------------------------------------------
-- account_key ---------------------------------------------------------------

-- The type of the account keys loyalty stores: text, unless
-- loyalty.distribute() laid the tables out around an ERP table distributed
-- by an integer or bigint customer key (Citus co-locates only tables whose
-- distribution columns have one type); it then re-creates this domain over
-- that type.  The API takes account keys as text; a statement compares or
-- stores one as p::@extschema@.account_key, which is the column's own type
-- on any layout (and no cast at all on text), so indexes and Citus's
-- routing by account still apply.  Used only inside function bodies and
-- statements, never by a column or a signature, so that it can be
-- re-created.  A view that hands a key column to a function taking text
-- writes key::pg_catalog.varchar::text: distribute() re-creates the views
-- from their stored definitions, and a cast from text to text leaves none.
-- A key given as text, as the value of a key column in INSERT ... VALUES,
-- is written (k OPERATOR(pg_catalog.||) '')::@extschema@.account_key: Citus
-- routes such an INSERT by that value and (12.1) cannot evaluate a parameter
-- cast straight to a domain ("failed to evaluate partition key in insert").
CREATE DOMAIN @extschema@.account_key AS text;
COMMENT ON DOMAIN @extschema@.account_key IS
'The type of loyalty''s account_key columns (text; integer or bigint after loyalty.distribute() around an ERP table distributed by such a key). Internal: statements cast account keys given as text to it.';

CREATE OR REPLACE VIEW @extschema@.balance WITH (security_invoker = true) AS
SELECT s.program_id, s.account_key,
       (s.points OPERATOR(pg_catalog.+) CASE WHEN s.pending THEN @extschema@.pending_caps(s.program_id, s.account_key::pg_catalog.varchar::text) ELSE 0 END)::bigint AS points,
       s.qualifying, s.rebate, s.mdf, s.entry_count::bigint AS entry_count, s.updated_at, s.last_doc_date
FROM (SELECT u.program_id, u.account_key, pg_catalog.sum(u.points) AS points, pg_catalog.sum(u.qualifying) AS qualifying,
             pg_catalog.sum(u.rebate) AS rebate, pg_catalog.sum(u.mdf) AS mdf, pg_catalog.sum(u.entry_count) AS entry_count,
             pg_catalog.max(u.updated_at) AS updated_at, pg_catalog.max(u.last_doc_date) AS last_doc_date,
             pg_catalog.bool_or(u.pending) AS pending
      FROM (SELECT f.program_id, f.account_key, f.points, f.qualifying, f.rebate, f.mdf, f.entry_count,
                   f.updated_at, f.last_doc_date, false AS pending
            FROM @extschema@.balance_folded f
            UNION ALL
            SELECT d.program_id, d.account_key, d.points, d.qualifying, d.rebate, d.mdf, d.entry_count,
                   d.posted_at, d.last_doc_date, true
            FROM @extschema@.balance_delta d) u
      GROUP BY u.program_id, u.account_key) s;

CREATE OR REPLACE VIEW @extschema@.kpi WITH (security_invoker = true) AS
WITH s AS (
    SELECT p.program_id, x.account_key, pg_catalog.date_trunc('quarter', x.doc_date::timestamp)::date AS quarter,
           x.product_line, x.revenue, x.margin
    FROM @extschema@.program p CROSS JOIN LATERAL @extschema@.sales(p.name) x
    -- the programs whose ERP tables the reader may read
    WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')))),
aq AS (
    SELECT s.program_id, s.account_key, s.quarter, pg_catalog.sum(s.revenue) AS revenue, pg_catalog.sum(s.margin) AS margin
    FROM s GROUP BY 1, 2, 3),
last_q AS (SELECT aq.program_id, pg_catalog.max(aq.quarter) AS quarter FROM aq GROUP BY 1),
-- an account buys a product line for the first time, after earlier purchases
first_buy AS (SELECT s.program_id, s.account_key, pg_catalog.min(s.quarter) AS quarter FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 GROUP BY 1, 2),
cross_sold AS (
    SELECT DISTINCT l.program_id, l.account_key, l.quarter
    FROM (SELECT s.program_id, s.account_key, s.product_line, pg_catalog.min(s.quarter) AS quarter
          FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 AND s.product_line IS NOT NULL GROUP BY 1, 2, 3) l
    JOIN first_buy f ON f.program_id OPERATOR(pg_catalog.=) l.program_id AND f.account_key OPERATOR(pg_catalog.=) l.account_key
    WHERE l.quarter OPERATOR(pg_catalog.>) f.quarter),
pts AS (
    SELECT m.program_id, m.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', m.month::timestamp)::date AS quarter,
           pg_catalog.sum(m.points) AS earned, 0::numeric AS redeemed
    FROM @extschema@.accrual_month m GROUP BY 1, 2, 3
    UNION ALL
    SELECT l.program_id, l.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', l.posted_at AT TIME ZONE p.time_zone)::date,
           pg_catalog.sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points OPERATOR(pg_catalog.>) 0),
           OPERATOR(pg_catalog.-) pg_catalog.sum(l.points) FILTER (WHERE l.kind OPERATOR(pg_catalog.=) 'redeem')
    FROM @extschema@.ledger l JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('award', 'adjust', 'redeem') GROUP BY 1, 2, 3),
pq AS (SELECT pts.program_id, pts.account_key, pts.quarter, pg_catalog.sum(pts.earned) AS earned,
              pg_catalog.sum(pts.redeemed) AS redeemed FROM pts GROUP BY 1, 2, 3),
-- approved actions by the quarter they occurred in (as tier qualification
-- and the caps count them), the members' with their account's
act AS (
    SELECT w.program_id, w.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', w.occurred_on::timestamp)::date AS quarter,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('training', 'certification')) AS trainings,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('referral', 'review', 'survey', 'lead')) AS advocacy
    FROM @extschema@.award w
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) w.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) w.action AND ar.valid_from OPERATOR(pg_catalog.=) w.rule_from
    WHERE w.status OPERATOR(pg_catalog.=) 'approved'
      AND ar.category IN ('training', 'certification', 'referral', 'review', 'survey', 'lead')
    GROUP BY 1, 2, 3),
-- every account and quarter with revenue or points, and the quarter after
-- one with revenue (up to the last quarter with data)
grid AS (
    SELECT aq.program_id, aq.account_key, aq.quarter FROM aq
    UNION
    SELECT aq.program_id, aq.account_key, (aq.quarter OPERATOR(pg_catalog.+) '3 months'::interval)::date
    FROM aq JOIN last_q USING (program_id) WHERE aq.quarter OPERATOR(pg_catalog.<) last_q.quarter
    UNION
    SELECT pq.program_id, pq.account_key, pq.quarter FROM pq
    UNION
    SELECT act.program_id, act.account_key, act.quarter FROM act),
r AS (
    SELECT g.program_id, g.quarter, coalesce(a.cooperation_model, 'none') AS segment, coalesce(a.cohort, 'none') AS cohort,
           a.potential_spend, coalesce(c.revenue, 0) AS revenue, coalesce(c.margin, 0) AS margin,
           coalesce(pr.revenue, 0) AS prev_revenue,
           coalesce(c.revenue OPERATOR(pg_catalog.>) 0, false) AS active,
           coalesce(pr.revenue OPERATOR(pg_catalog.>) 0, false) AS prev_active,
           x.account_key IS NOT NULL AS cross_sold,
           coalesce(q.earned, 0) AS earned, coalesce(q.redeemed, 0) AS redeemed,
           coalesce(t.trainings, 0) AS trainings, coalesce(t.advocacy, 0) AS advocacy
    FROM grid g
    LEFT JOIN @extschema@.account a ON a.program_id OPERATOR(pg_catalog.=) g.program_id
                                   AND a.account_key::pg_catalog.varchar::text OPERATOR(pg_catalog.=) g.account_key
    LEFT JOIN aq c ON c.program_id OPERATOR(pg_catalog.=) g.program_id AND c.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND c.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN aq pr ON pr.program_id OPERATOR(pg_catalog.=) g.program_id AND pr.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND pr.quarter OPERATOR(pg_catalog.=) (g.quarter OPERATOR(pg_catalog.-) '3 months'::interval)::date
    LEFT JOIN cross_sold x ON x.program_id OPERATOR(pg_catalog.=) g.program_id AND x.account_key OPERATOR(pg_catalog.=) g.account_key
                          AND x.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN pq q ON q.program_id OPERATOR(pg_catalog.=) g.program_id AND q.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND q.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN act t ON t.program_id OPERATOR(pg_catalog.=) g.program_id AND t.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND t.quarter OPERATOR(pg_catalog.=) g.quarter),
k AS (
    SELECT r.program_id, r.quarter, r.segment, r.cohort,
           pg_catalog.count(*) FILTER (WHERE r.active) AS active_accounts,
           pg_catalog.count(*) FILTER (WHERE r.prev_active) AS previously_active,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.prev_active) AS retained_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND NOT r.prev_active) AS new_or_returning,
           pg_catalog.sum(r.revenue) AS revenue, pg_catalog.sum(r.margin) AS margin,
           pg_catalog.sum(r.prev_revenue) FILTER (WHERE r.prev_active) AS prev_revenue,
           pg_catalog.sum(LEAST(GREATEST(r.revenue, 0), r.prev_revenue)) FILTER (WHERE r.prev_active) AS kept_revenue,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.prev_active) AS cohort_revenue,
           pg_catalog.count(*) FILTER (WHERE r.prev_active AND r.revenue OPERATOR(pg_catalog.>) r.prev_revenue) AS expansion_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.cross_sold) AS cross_sell_accounts,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet_revenue,
           pg_catalog.sum(r.potential_spend) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet,
           pg_catalog.sum(r.earned) AS points_earned, pg_catalog.sum(r.redeemed) AS points_redeemed,
           pg_catalog.sum(r.margin) FILTER (WHERE r.active) AS active_margin,
           pg_catalog.sum(r.trainings) AS trainings,
           pg_catalog.count(*) FILTER (WHERE r.trainings OPERATOR(pg_catalog.>) 0) AS accounts_trained,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.trainings OPERATOR(pg_catalog.>) 0) AS active_trained,
           pg_catalog.sum(r.advocacy) AS advocacy,
           pg_catalog.count(*) FILTER (WHERE r.advocacy OPERATOR(pg_catalog.>) 0) AS advocating_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.advocacy OPERATOR(pg_catalog.>) 0) AS active_advocating
    FROM r GROUP BY 1, 2, 3, 4)
SELECT p.name AS program, k.quarter, k.segment, k.cohort, k.active_accounts, k.previously_active, k.retained_accounts,
       k.new_or_returning,
       pg_catalog.round(k.retained_accounts::numeric OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0), 4) AS account_retention,
       k.revenue, k.margin,
       pg_catalog.round(k.kept_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS gross_revenue_retention,
       pg_catalog.round(k.cohort_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS net_revenue_retention,
       k.expansion_accounts, k.cross_sell_accounts,
       pg_catalog.round(4 OPERATOR(pg_catalog.*) k.wallet_revenue OPERATOR(pg_catalog./) NULLIF(k.wallet, 0), 4) AS share_of_wallet,
       k.points_earned, k.points_redeemed,
       pg_catalog.round(k.points_redeemed OPERATOR(pg_catalog./) NULLIF(k.points_earned, 0), 4) AS programme_utilisation,
       pg_catalog.round(k.active_margin OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0)
                        OPERATOR(pg_catalog./) NULLIF(1 OPERATOR(pg_catalog.-) (k.retained_accounts::numeric
                                                      OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0)), 0), 2) AS clv_estimate,
       k.trainings::bigint AS trainings_completed, k.accounts_trained,
       pg_catalog.round(k.active_trained::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS trained_share,
       k.advocacy::bigint AS advocacy_actions, k.advocating_accounts,
       pg_catalog.round(k.active_advocating::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS advocacy_share
FROM k JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) k.program_id
WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')));

CREATE OR REPLACE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL: on Citus, award is distributed, and Citus plans a
    -- query with parameters on it only as PL/pgSQL's custom plan
    RETURN QUERY
    SELECT w.account_key::text, pg_catalog.sum(w.quantity)::bigint
    FROM @extschema@.award w
    WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.action OPERATOR(pg_catalog.=) $2
      AND w.status OPERATOR(pg_catalog.=) 'approved'
      AND w.occurred_on OPERATOR(pg_catalog.>=) $3 AND w.occurred_on OPERATOR(pg_catalog.<) $4
    GROUP BY w.account_key;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._benefit(program_id integer, account_key text, benefit text, as_of date) RETURNS pg_catalog.jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _benefit.program_id
          AND b.tier OPERATOR(pg_catalog.=) @extschema@._tier_at(_benefit.program_id, _benefit.account_key::text, _benefit.as_of)
          AND b.benefit OPERATOR(pg_catalog.=) _benefit.benefit)
$$;

CREATE OR REPLACE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w @extschema@.award;
    entry bigint;
    xid xid8;
BEGIN
    SELECT * INTO w FROM @extschema@.award x WHERE x.award_id = award_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @extschema@._lock_for_debit(w.program_id, w.account_key::text);
    SELECT * INTO w FROM @extschema@.award x
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
    IF w.status <> 'pending' THEN
        RETURN;
    END IF;
    IF approve THEN
        entry := @extschema@._post_member(w.program_id, w.account_key::text, 'award', w.points,
                                          pg_catalog.format('%s x %s', w.quantity, w.action) || coalesce(' ref ' || w.reference, ''),
                                          w.member_id);
    END IF;
    -- the entry's transaction as a value: on Citus, an UPDATE of a
    -- distributed table may not call a volatile function inside a CASE
    IF entry IS NOT NULL THEN
        xid := pg_catalog.pg_current_xact_id();
    END IF;
    UPDATE @extschema@.award x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_award.note, posted_xid = xid, entry_no = entry
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._decide_mdf_claim(claim_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c @extschema@.mdf_claim;
    wallet numeric;
    entry bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @extschema@._lock_for_debit(c.program_id, c.account_key::text);
    PERFORM @extschema@._await_postings(c.program_id, c.account_key::text);
    SELECT * INTO c FROM @extschema@.mdf_claim x
    WHERE x.program_id = c.program_id AND x.account_key = c.account_key AND x.claim_no = c.claim_no;
    IF c.status <> 'pending' THEN
        RETURN;
    END IF;
    IF approve THEN
        SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = c.program_id AND b.account_key = c.account_key;
        IF coalesce(wallet, 0) < c.amount THEN
            RETURN;             -- the caller reports it
        END IF;
        entry := @extschema@._post(c.program_id, c.account_key::text, 'mdf', 0,
                                   pg_catalog.format('mdf claim: %s', c.purpose) || coalesce(' ref ' || c.reference, ''),
                                   mdf => -c.amount);
    END IF;
    UPDATE @extschema@.mdf_claim x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_mdf_claim.note,
        posted_xid = CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = entry
    WHERE x.program_id = c.program_id AND x.account_key = c.account_key AND x.claim_no = c.claim_no;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._enroll(
    program           text,
    account_key       text,
    cooperation_model text,
    industry          text,
    region            text,
    potential_spend   numeric,
    cohort            text,
    enrolled_from     date,
    OUT enrolled_program integer,
    OUT restate       boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    policy text;
    before @extschema@.account;
    after @extschema@.account;
    since date;
    until date;
BEGIN
    IF account_key IS NULL OR account_key = '' THEN
        RAISE EXCEPTION 'account_key must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cohort IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cohort', cohort, ARRAY['pilot', 'control']);
    END IF;
    IF cooperation_model IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cooperation_model', cooperation_model,
                                          ARRAY['direct', 'distributor', 'integrator', 'reseller']);
    END IF;
    SELECT p.enrollment INTO policy FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT * INTO before FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key::@extschema@.account_key;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor a function of the
    -- configuration (the coordinator evaluates it, the shard runs the rest)
    since := coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE @extschema@._today(pid) END);
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit', since)
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(_enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key::@extschema@.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow (in
    -- the program's calendar), and never to a document already accrued: after
    -- the account's latest document date if that is later.  The old values
    -- stay for the documents before (the first change of a day keeps them:
    -- values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        SELECT b.last_doc_date + 1 INTO until FROM @extschema@.balance b
        WHERE b.program_id = pid AND b.account_key = _enroll.account_key::@extschema@.account_key;
        until := GREATEST(@extschema@._today(pid) + 1, until);
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, (_enroll.account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, until,
                before.cooperation_model, before.industry, before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all; so does a
    -- first enrolment of a customer whose documents were ignored so far.
    enrolled_program := pid;
    restate := (before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
                AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = _enroll.account_key::@extschema@.account_key))
               OR (before.account_key IS NULL
                   AND EXISTS (SELECT FROM @extschema@.unenrolled_activity u
                               WHERE u.program_id = pid AND u.account_key = _enroll.account_key::@extschema@.account_key AND u.source_rows <> 0));
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._expiry_due(program_id integer, cutoff date, account text)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    t date := @extschema@._expiry_threshold($1, $2);
    zone text;
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    IF t IS NULL THEN
        RETURN;                 -- points of this program never expire
    END IF;
    SELECT p.time_zone INTO zone FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1;
    RETURN QUERY
    WITH other AS (
        -- the entries that are not accrual: credits by posting month, debits
        SELECT l.account_key,
               pg_catalog.date_trunc('month', l.posted_at AT TIME ZONE zone)::date AS month,
               l.kind OPERATOR(pg_catalog.=) ANY ('{redeem,expire}'::@extschema@.ledger_kind[])
                   OR l.points OPERATOR(pg_catalog.<) 0 AS debit,
               l.points
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($3 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $3::@extschema@.account_key)
          AND l.points OPERATOR(pg_catalog.<>) 0
          AND l.kind OPERATOR(pg_catalog.<>) ALL ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[])
          AND NOT (l.kind OPERATOR(pg_catalog.=) 'bonus' AND l.attachment_id IS NOT NULL)),
    series AS (
        SELECT u.account_key, u.month, pg_catalog.sum(u.acc)::bigint AS acc, pg_catalog.sum(u.cred)::bigint AS cred
        FROM (SELECT m.account_key, m.month, m.points AS acc, 0::bigint AS cred
              FROM @extschema@.accrual_month m
              WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($3 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $3::@extschema@.account_key)
              UNION ALL
              SELECT o.account_key, o.month, 0, o.points FROM other o WHERE NOT o.debit) u
        GROUP BY 1, 2),
    running AS (
        -- points earned up to each month, caps applied as the engine applies them
        SELECT s.account_key, s.month,
               CASE WHEN capped
                    THEN (SELECT coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(x.month), pg_catalog.array_agg(x.acc)), 0)
                          FROM series x
                          WHERE x.account_key OPERATOR(pg_catalog.=) s.account_key::@extschema@.account_key AND x.month OPERATOR(pg_catalog.<=) s.month)
                    ELSE pg_catalog.sum(s.acc) OVER w END
               OPERATOR(pg_catalog.+) pg_catalog.sum(s.cred) OVER w AS total
        FROM series s
        WINDOW w AS (PARTITION BY s.account_key ORDER BY s.month)),
    old AS (
        SELECT r.account_key,
               LEAST((pg_catalog.array_agg(r.total ORDER BY r.month DESC) FILTER (WHERE r.month OPERATOR(pg_catalog.<) t))[1],
                                pg_catalog.min(r.total) FILTER (WHERE r.month OPERATOR(pg_catalog.>=) t)) AS earned
        FROM running r
        GROUP BY 1
        HAVING pg_catalog.bool_or(r.month OPERATOR(pg_catalog.<) t)),
    spent AS (
        SELECT o.account_key, OPERATOR(pg_catalog.-) pg_catalog.sum(o.points) AS consumed
        FROM other o WHERE o.debit GROUP BY 1)
    SELECT o.account_key::text, (o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0))::bigint
    FROM old o LEFT JOIN spent s ON s.account_key OPERATOR(pg_catalog.=) o.account_key::@extschema@.account_key
    WHERE o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0) OPERATOR(pg_catalog.>) 0;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._lock_for_debit(program_id integer, account_key text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
    WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key
    RETURNING a.debit_no INTO n;
    IF n IS NULL THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', $2,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1)
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have balances to spend from.',
                  HINT = 'Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().';
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._may_act(program text, account_key text, member_id text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_act.account_key::@extschema@.account_key
                     AND (_may_act.member_id IS NULL OR pl.member_id OPERATOR(pg_catalog.=) _may_act.member_id)) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login acts for its own account only, as the account or as its own member.',
                  HINT = 'The account and member your login acts for are in loyalty.partner_login.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._may_read(program text, account_key text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_read.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login reads its own account only.',
                  HINT = 'The account your login may read is in loyalty.partner_login.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._mdf_rate(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
          AND b.benefit OPERATOR(pg_catalog.=) 'mdf_rate'
          -- before its first recorded tier (a period settled from documents
          -- older than the program's history), the account counts at that tier
          AND b.tier OPERATOR(pg_catalog.=) coalesce(
                @extschema@._tier_at(_mdf_rate.program_id, _mdf_rate.account_key::text, _mdf_rate.as_of),
                (SELECT h.new_tier FROM @extschema@.tier_history h
                 WHERE h.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
                   AND h.account_key OPERATOR(pg_catalog.=) _mdf_rate.account_key::@extschema@.account_key
                 ORDER BY h.effective_from, h.change_no LIMIT 1)))::numeric
$$;

CREATE OR REPLACE FUNCTION @extschema@._measure(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    win_start date;
    r numeric;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = _measure.program_id;
    win_start := (date_trunc('month', as_of::timestamp)
                  - make_interval(months => @extschema@._window_months(prog.qualification_window) - 1))::date;
    IF prog.tier_basis = 'action' THEN
        SELECT coalesce(sum(c.actions), 0) INTO r
        FROM @extschema@._action_counts(prog.program_id, prog.tier_action, win_start, as_of + 1) c
        WHERE c.account_key = _measure.account_key;
    ELSE
        SELECT coalesce(sum(CASE prog.tier_basis WHEN 'points' THEN m.points ELSE m.qualifying END), 0) INTO r
        FROM @extschema@.accrual_month m
        WHERE m.program_id = prog.program_id AND m.account_key = _measure.account_key::@extschema@.account_key
          AND m.month >= win_start AND m.month <= as_of;
    END IF;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._post(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    rebate       numeric DEFAULT 0,
    mdf          numeric DEFAULT 0,
    member_id    text DEFAULT NULL,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._ledger_number();
BEGIN
    IF kind = ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[]) THEN
        RAISE EXCEPTION 'ledger kind % is posted by accrual only', kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Accrual kinds are derived from invoice rows and checked against them by verify().';
    END IF;
    IF coalesce(points, 0) = 0 AND coalesce(rebate, 0) = 0 AND coalesce(mdf, 0) = 0 THEN
        RETURN NULL;            -- nothing to post
    END IF;
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    VALUES ($1, ($2 OPERATOR(pg_catalog.||) '')::@extschema@.account_key, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5);
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    VALUES ($1, ($2 OPERATOR(pg_catalog.||) '')::@extschema@.account_key, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), 1);
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._post_member(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    member_id    text,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._post($1, $2, $3, $4, $5, member_id => $6, corrects_xid => $7, corrects => $8);
BEGIN
    IF n IS NOT NULL AND $6 IS NOT NULL THEN
        INSERT INTO @extschema@.member_points AS m (program_id, account_key, member_id, points, earned, spent, entry_count)
        VALUES ($1, ($2 OPERATOR(pg_catalog.||) '')::@extschema@.account_key, $6, $4,
                CASE WHEN $3 OPERATOR(pg_catalog.<>) 'redeem' THEN $4 ELSE 0 END,
                CASE WHEN $3 OPERATOR(pg_catalog.=) 'redeem' THEN OPERATOR(pg_catalog.-) $4 ELSE 0 END, 1)
        ON CONFLICT ON CONSTRAINT member_points_pkey DO UPDATE
        SET points = m.points OPERATOR(pg_catalog.+) excluded.points,
            earned = m.earned OPERATOR(pg_catalog.+) excluded.earned,
            spent = m.spent OPERATOR(pg_catalog.+) excluded.spent,
            -- the inserted row's default, now(): on Citus the SET of an
            -- upsert into a distributed table may call no volatile function
            entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = excluded.updated_at;
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._post_rebates(program_id integer, account_keys text[], amounts numeric[], reasons text[])
RETURNS TABLE (ord bigint, entry_no bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
WITH r AS (
    SELECT u.ord, u.account_key, u.amount, u.reason, @extschema@._ledger_number() AS n
    FROM ROWS FROM (pg_catalog.unnest(account_keys), pg_catalog.unnest(amounts), pg_catalog.unnest(reasons))
         WITH ORDINALITY AS u(account_key, amount, reason, ord)
    WHERE u.amount OPERATOR(pg_catalog.<>) 0),
entries AS (
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    SELECT $1, r.account_key::@extschema@.account_key, r.n, 'rebate', 0, r.amount, 0, NULL, NULL, NULL, r.reason FROM r
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, r.account_key::@extschema@.account_key, r.n, 0, r.amount, 0, 1 FROM r
    RETURNING d.delta_no)
SELECT r.ord, r.n FROM r
$$;

CREATE OR REPLACE FUNCTION @extschema@._set_tier(pid integer, account text, new_tier text, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_tier text;
    tomorrow date := @extschema@._today(pid) + 1;
    since timestamptz;
    change bigint;
    last_doc date;
BEGIN
    PERFORM @extschema@._tier_lock(pid);
    SELECT a.tier INTO old_tier FROM @extschema@.account a
    WHERE a.program_id = pid AND a.account_key = account::@extschema@.account_key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = pid)
            USING ERRCODE = 'no_data_found',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF old_tier IS NOT DISTINCT FROM new_tier THEN
        RETURN;
    END IF;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor now() inside a CASE
    since := CASE WHEN new_tier IS NULL THEN NULL ELSE now() END;
    SELECT coalesce(max(h.change_no), 0) + 1 INTO change FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = account::@extschema@.account_key;
    SELECT b.last_doc_date + 1 INTO last_doc FROM @extschema@.balance b
    WHERE b.program_id = pid AND b.account_key = account::@extschema@.account_key;
    UPDATE @extschema@.account a SET tier = new_tier, tier_since = since
    WHERE a.program_id = pid AND a.account_key = account::@extschema@.account_key;
    INSERT INTO @extschema@.tier_history (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason)
    VALUES (pid, (account OPERATOR(pg_catalog.||) '')::@extschema@.account_key, change, greatest(tomorrow, coalesce(last_doc, tomorrow)), old_tier, new_tier, why);
END
$$;

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
                                                   WHERE c.account_key = coalesce(a.account_key, m.account_key, pv.account_key)::text
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
                                                                     WHERE c.account_key = b.account_key::text AND c.action = r.action), 0)
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
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key IN (SELECT due.account_key::@extschema@.account_key FROM due)
        ORDER BY a.account_key
        FOR NO KEY UPDATE OF a),
    numbered AS (
        UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
        FROM lock k
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.account_key::@extschema@.account_key
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
        SELECT $1, d.account_key::@extschema@.account_key, d.n, 'expire', OPERATOR(pg_catalog.-) d.points, 0, 0, NULL, NULL, NULL,
               pg_catalog.format('expiry at %s: points of months before %s', $3, t)
        FROM due d
        RETURNING l.points),
    deltas AS (
        INSERT INTO @extschema@.balance_delta AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
        SELECT $1, d.account_key::@extschema@.account_key, d.n, OPERATOR(pg_catalog.-) d.points, 0, 0, 1
        FROM due d
        RETURNING b.points)
    SELECT coalesce(OPERATOR(pg_catalog.-) pg_catalog.sum(e.points), 0)::bigint INTO total FROM entries e;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    IF period_start IS NULL OR period_end IS NULL OR period_end < period_start THEN
        RAISE EXCEPTION 'MDF period [%, %] is empty', period_start, period_end
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period_start and period_end are the period''s first and last days, both included (as loyalty.settle passes them).',
                  HINT = 'Give period_start <= period_end.';
    END IF;
    -- no tier of the program has an MDF rate: nothing to credit, without
    -- summing every account's spend and looking up its tier to find that out
    IF NOT EXISTS (SELECT FROM @extschema@.tier_benefit b
                   WHERE b.program_id = $1 AND b.benefit = 'mdf_rate') THEN
        RETURN 0;
    END IF;
    WITH spend AS (
        SELECT m.account_key, pg_catalog.sum(m.qualifying) AS spend
        FROM @extschema@.accrual_month m
        WHERE m.program_id = $1 AND m.month >= pg_catalog.date_trunc('month', $2)::date AND m.month <= $3
        GROUP BY m.account_key
    ), due AS (
        SELECT s.account_key, s.spend, @extschema@._mdf_rate($1, s.account_key::text, $3) AS rate
        FROM spend s
        WHERE NOT EXISTS (SELECT FROM @extschema@.mdf_accrual a
                          WHERE a.program_id = $1 AND a.account_key = s.account_key AND a.period_end = $3)
    ), credited AS (
        INSERT INTO @extschema@.mdf_accrual AS a (program_id, account_key, period_end, period_start, spend, rate, amount, entry_no)
        SELECT $1, d.account_key, $3, $2, d.spend, d.rate, x.amount,
               @extschema@._post($1, d.account_key::text, 'mdf', 0, pg_catalog.format('mdf accrual %s..%s', $2, $3), mdf => x.amount)
        FROM due d, LATERAL (SELECT pg_catalog.round(GREATEST(d.spend, 0) * coalesce(d.rate, 0), 2) AS amount) x
        WHERE x.amount > 0
        ORDER BY d.account_key
        RETURNING a.amount
    )
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO total FROM credited c;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._tier_at(program_id integer, account_key text, as_of date) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT h.new_tier FROM @extschema@.tier_history h
            WHERE h.program_id OPERATOR(pg_catalog.=) _tier_at.program_id
              AND h.account_key OPERATOR(pg_catalog.=) _tier_at.account_key::@extschema@.account_key
              AND h.effective_from OPERATOR(pg_catalog.<=) _tier_at.as_of
            ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_balance(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    RETURN QUERY
    -- the ledger, plus the cap entries the next fold books (loyalty.balance
    -- applies them already)
    WITH pending AS (
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key::text) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) d
        WHERE capped)
    SELECT coalesce(l.account_key, b.account_key)::text, NULL::date, NULL::integer, v.item, v.e, v.a
    FROM (SELECT coalesce(x.account_key, pe.account_key) AS account_key,
                 coalesce(x.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, x.qualifying,
                 x.rebate, x.mdf, x.n
          FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                       pg_catalog.sum(x.rebate) AS rebate, pg_catalog.sum(x.mdf) AS mdf, pg_catalog.count(*) AS n
                FROM @extschema@.ledger x
                WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
                GROUP BY 1) x
               FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) x.account_key::@extschema@.account_key) l
         FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.rebate, x.mdf, x.entry_count AS n
                    FROM @extschema@.balance x
                    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) b
           ON b.account_key OPERATOR(pg_catalog.=) l.account_key::@extschema@.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_rebate', coalesce(l.rebate, 0), coalesce(b.rebate, 0)),
                         ('balance_mdf', coalesce(l.mdf, 0), coalesce(b.mdf, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_ledger(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    RETURN QUERY
    -- _capped_points adds up the elements of a month (one per attachment);
    -- a program without caps needs only the sum
    WITH expected AS (
        SELECT m.account_key,
               coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(m.month) FILTER (WHERE capped),
                                                   pg_catalog.array_agg(m.points) FILTER (WHERE capped)),
                        pg_catalog.sum(m.points)) AS points,
               pg_catalog.sum(m.qualifying) AS qualifying
        FROM @extschema@.accrual_month m
        WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
        GROUP BY 1),
    posted AS (
        SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
          AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
        GROUP BY 1),
    -- the cap entries the next fold books, for the accounts with unfolded postings
    pending AS (
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key::text) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) d
        WHERE capped)
    SELECT coalesce(e.account_key, p.account_key)::text, NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e
         FULL JOIN (SELECT coalesce(po.account_key, pe.account_key) AS account_key,
                           coalesce(po.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, po.qualifying
                    FROM posted po FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) po.account_key::@extschema@.account_key) p
           ON p.account_key OPERATOR(pg_catalog.=) e.account_key::@extschema@.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_members(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
-- a ledger entry whose member is not a member of its account
SELECT l.account_key::text, NULL::date, NULL::integer, 'member_unknown:' OPERATOR(pg_catalog.||) l.member_id,
       0::numeric, pg_catalog.count(*)::numeric
FROM @extschema@.ledger l
WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND l.member_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM @extschema@.member m
                  WHERE m.program_id OPERATOR(pg_catalog.=) l.program_id AND m.account_key OPERATOR(pg_catalog.=) l.account_key::@extschema@.account_key
                    AND m.member_id OPERATOR(pg_catalog.=) l.member_id)
GROUP BY l.account_key, l.member_id
UNION ALL
-- a member's running total that differs from the sums of their entries,
-- or that is below zero (redemptions check it; nothing else debits it)
SELECT coalesce(t.account_key, l.account_key)::text, NULL, NULL, v.item, v.e, v.a
FROM (SELECT x.account_key, x.member_id, pg_catalog.sum(x.points) AS points, pg_catalog.count(*) AS n
      FROM @extschema@.ledger x
      WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
        AND x.member_id IS NOT NULL
      GROUP BY 1, 2) l
FULL JOIN (SELECT x.account_key, x.member_id, x.points, x.entry_count
           FROM @extschema@.member_points x
           WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) t
  ON t.account_key OPERATOR(pg_catalog.=) l.account_key::@extschema@.account_key AND t.member_id OPERATOR(pg_catalog.=) l.member_id,
LATERAL (VALUES ('member_points:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.points, 0)::numeric,
                 coalesce(t.points, 0)::numeric),
                ('member_entries:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.n, 0)::numeric,
                 coalesce(t.entry_count, 0)::numeric),
                ('member_overdrawn:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), 0::numeric,
                 LEAST(coalesce(t.points, 0), 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- a redemption whose spending entry (or, cancelled, whose giving back) is
-- missing from the ledger or differs from it
SELECT d.account_key::text, NULL, NULL, v.item, v.e, v.a
FROM @extschema@.redemption d
LEFT JOIN @extschema@.ledger s
  ON s.program_id OPERATOR(pg_catalog.=) d.program_id AND s.account_key OPERATOR(pg_catalog.=) d.account_key::@extschema@.account_key
     AND s.posted_xid OPERATOR(pg_catalog.=) d.posted_xid AND s.entry_no OPERATOR(pg_catalog.=) d.entry_no
     AND s.kind OPERATOR(pg_catalog.=) 'redeem' AND s.member_id IS NOT DISTINCT FROM d.member_id
LEFT JOIN @extschema@.ledger c
  ON c.program_id OPERATOR(pg_catalog.=) d.program_id AND c.account_key OPERATOR(pg_catalog.=) d.account_key::@extschema@.account_key
     AND c.posted_xid OPERATOR(pg_catalog.=) d.cancel_xid AND c.entry_no OPERATOR(pg_catalog.=) d.cancel_entry_no
     AND c.kind OPERATOR(pg_catalog.=) 'redeem' AND c.member_id IS NOT DISTINCT FROM d.member_id
     AND c.corrects_xid OPERATOR(pg_catalog.=) d.posted_xid AND c.corrects OPERATOR(pg_catalog.=) d.entry_no,
LATERAL (VALUES ('redemption_spent:' OPERATOR(pg_catalog.||) d.redemption_id::text, d.points::numeric,
                 (OPERATOR(pg_catalog.-) s.points)::numeric),
                ('redemption_given_back:' OPERATOR(pg_catalog.||) d.redemption_id::text,
                 CASE WHEN d.status OPERATOR(pg_catalog.=) 'cancelled' THEN d.points ELSE 0 END::numeric,
                 coalesce(c.points, 0)::numeric)) AS v(item, e, a)
WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR d.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND v.e IS DISTINCT FROM v.a
UNION ALL
-- an approved award whose entry is missing or differs, or any other award
-- that posted
SELECT w.account_key::text, NULL, NULL, 'award_points:' OPERATOR(pg_catalog.||) w.award_id::text,
       CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END::numeric,
       coalesce(l.points, 0)::numeric
FROM @extschema@.award w
LEFT JOIN @extschema@.ledger l
  ON l.program_id OPERATOR(pg_catalog.=) w.program_id AND l.account_key OPERATOR(pg_catalog.=) w.account_key::@extschema@.account_key
     AND l.posted_xid OPERATOR(pg_catalog.=) w.posted_xid AND l.entry_no OPERATOR(pg_catalog.=) w.entry_no
     AND l.kind OPERATOR(pg_catalog.=) 'award' AND l.member_id IS NOT DISTINCT FROM w.member_id
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
  AND CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END IS DISTINCT FROM coalesce(l.points, 0);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_rebate_lines(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
WITH since AS (
    SELECT pg_catalog.min(pg_catalog.date_trunc('month', g.valid_from))::date AS month
    FROM @extschema@.rebate_agreement g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1 AND g.product_lines IS NOT NULL),
accrued AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.qualifying) AS qualifying, pg_catalog.sum(m.source_rows) AS n
    FROM @extschema@.accrual_month m, since
    WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.month OPERATOR(pg_catalog.>=) since.month
      AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
    GROUP BY 1, 2),
split AS (
    SELECT v.account_key, v.month, pg_catalog.sum(v.qualifying) AS qualifying, pg_catalog.sum(v.source_rows) AS n
    FROM @extschema@.rebate_line_volume v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
    GROUP BY 1, 2)
SELECT coalesce(a.account_key, s.account_key)::text, coalesce(a.month, s.month), NULL::integer, v.item, v.e, v.a
FROM accrued a
     FULL JOIN (SELECT s.* FROM split s, since WHERE s.month OPERATOR(pg_catalog.>=) since.month) s
       ON s.account_key OPERATOR(pg_catalog.=) a.account_key::@extschema@.account_key AND s.month OPERATOR(pg_catalog.=) a.month,
     LATERAL (VALUES ('rebate_line_qualifying', coalesce(a.qualifying, 0), coalesce(s.qualifying, 0)),
                     ('rebate_line_rows', coalesce(a.n, 0)::numeric, coalesce(s.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._write_settlement_lines(program_id integer, settled_through date,
                                         agreement_ids text[], account_keys text[], period_starts date[], period_ends date[],
                                         volumes numeric[], finals numeric[], accrueds numeric[], last_finals numeric[],
                                         adjustment_nos integer[])
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur text := (SELECT p.currency FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1);
    keys text[];
    total numeric;
BEGIN
    -- the date in ISO form whatever the session's DateStyle: the key is stable
    keys := ARRAY(SELECT pg_catalog.format('LOY-%s-%s-%s-%s', $1, u.g, u.a, pg_catalog.to_char(u.e, 'YYYY-MM-DD'))
                         OPERATOR(pg_catalog.||) CASE WHEN u.n OPERATOR(pg_catalog.>) 0 THEN '-ADJ-' OPERATOR(pg_catalog.||) u.n ELSE '' END
                  FROM ROWS FROM (pg_catalog.unnest(agreement_ids), pg_catalog.unnest(account_keys),
                                  pg_catalog.unnest(period_ends), pg_catalog.unnest(adjustment_nos))
                       WITH ORDINALITY AS u(g, a, e, n, ord) ORDER BY u.ord);
    WITH posted AS (
        SELECT p.ord, p.entry_no
        FROM @extschema@._post_rebates($1, account_keys,
                                       ARRAY(SELECT f OPERATOR(pg_catalog.-) c
                                             FROM ROWS FROM (pg_catalog.unnest(finals), pg_catalog.unnest(accrueds))
                                                  WITH ORDINALITY AS u(f, c, ord) ORDER BY u.ord),
                                       ARRAY(SELECT pg_catalog.format('rebate %s %s', CASE WHEN u.n OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'true-up' END, u.k)
                                             FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(adjustment_nos))
                                                  WITH ORDINALITY AS u(k, n, ord) ORDER BY u.ord)) p),
    lines AS (
        SELECT u.*, p.entry_no
        FROM ROWS FROM (pg_catalog.unnest(agreement_ids), pg_catalog.unnest(account_keys), pg_catalog.unnest(period_starts),
                        pg_catalog.unnest(period_ends), pg_catalog.unnest(volumes), pg_catalog.unnest(finals),
                        pg_catalog.unnest(accrueds), pg_catalog.unnest(last_finals), pg_catalog.unnest(adjustment_nos),
                        pg_catalog.unnest(keys))
             WITH ORDINALITY AS u(g, a, s, e, v, f, c, lf, n, k, ord)
        LEFT JOIN posted p ON p.ord OPERATOR(pg_catalog.=) u.ord),
    postings AS (
        INSERT INTO @extschema@.rebate_posting (program_id, account_key, agreement_id, period_end, entry_no,
                                                period_start, kind, volume, amount)
        SELECT $1, l.a::@extschema@.account_key, l.g, l.e, l.entry_no, l.s, CASE WHEN l.n OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'trueup' END,
               l.v, l.f OPERATOR(pg_catalog.-) l.c
        FROM lines l WHERE l.entry_no IS NOT NULL),
    written AS (
        INSERT INTO @extschema@.settlement_line AS x (program_id, account_key, agreement_id, period_end, adjustment_no,
                                                      document_key, period_start, volume, final, accrued, amount,
                                                      credit_note, currency, settled_through, entry_no)
        SELECT $1, l.a::@extschema@.account_key, l.g, l.e, l.n, l.k, l.s, l.v, l.f, l.c, l.f OPERATOR(pg_catalog.-) l.c,
               l.f OPERATOR(pg_catalog.-) coalesce(l.lf, 0), cur, settled_through, l.entry_no
        FROM lines l
        RETURNING x.amount)
    SELECT coalesce(pg_catalog.sum(w.amount), 0) INTO total FROM written w;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.accrue_rebates(program text, as_of date DEFAULT NULL) RETURNS numeric
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    day date;
    keys text[];
    g text[]; a text[]; s date[]; e date[]; v numeric[]; d numeric[];
    total numeric;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF as_of IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'as_of must be a finite date, not %', as_of
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'as_of is the day the estimate is made for: the periods open on it are estimated.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
                            FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
    SELECT pg_catalog.array_agg(x.agreement_id ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.account_key ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.period_start ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.period_end ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.volume ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.final OPERATOR(pg_catalog.-) x.accrued ORDER BY x.account_key, x.agreement_id, x.period_end)
    INTO g, a, s, e, v, d
    FROM @extschema@._rebate_periods(pid, day, true) x
    WHERE x.adjustments IS NULL AND x.final OPERATOR(pg_catalog.<>) x.accrued;
    IF g IS NULL THEN
        RETURN 0;
    END IF;
    keys := ARRAY(SELECT pg_catalog.format('rebate estimate %s %s %s..%s', u.g, u.a, u.s, u.e)
                  FROM ROWS FROM (pg_catalog.unnest(g), pg_catalog.unnest(a), pg_catalog.unnest(s), pg_catalog.unnest(e))
                       WITH ORDINALITY AS u(g, a, s, e, ord) ORDER BY u.ord);
    WITH posted AS (SELECT p.ord, p.entry_no FROM @extschema@._post_rebates(pid, a, d, keys) p),
    rows AS (
        INSERT INTO @extschema@.rebate_posting AS r (program_id, account_key, agreement_id, period_end, entry_no,
                                                     period_start, kind, volume, amount)
        SELECT pid, u.a::@extschema@.account_key, u.g, u.e, p.entry_no, u.s, 'estimate', u.v, u.d
        FROM ROWS FROM (pg_catalog.unnest(g), pg_catalog.unnest(a), pg_catalog.unnest(s), pg_catalog.unnest(e),
                        pg_catalog.unnest(v), pg_catalog.unnest(d)) WITH ORDINALITY AS u(g, a, s, e, v, d, ord)
        JOIN posted p ON p.ord OPERATOR(pg_catalog.=) u.ord
        RETURNING r.amount)
    SELECT coalesce(pg_catalog.sum(x.amount), 0) INTO total FROM rows x;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.award(
    program     text,
    account_key text,
    action      text,
    occurred_on date DEFAULT NULL,
    member      text DEFAULT NULL,
    reference   text DEFAULT NULL,
    quantity    integer DEFAULT 1)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    today date;
    day date;
    rule @extschema@.action_rule;
    prior @extschema@.award;
    no bigint;
    earned numeric;
    granted bigint;
    used bigint;
    period_start date;
    st text;
    entry bigint;
    id uuid;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, (pg_catalog.now() AT TIME ZONE p.time_zone)::date INTO pid, today
    FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts earn points for actions.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key::@extschema@.account_key AND m.member_id = member) THEN
        RAISE EXCEPTION 'member "%" is not a member of account "%"', member, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'A member earns for the account they belong to.',
                  HINT = 'Add the person to loyalty.member first, or award the account (member => NULL).';
    END IF;
    day := coalesce(occurred_on, today);
    IF NOT pg_catalog.isfinite(day) OR day > today THEN
        RAISE EXCEPTION 'occurred_on % is not a day that has happened', day
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Today is %s in the program''s calendar.', today),
                  HINT = 'Give the day the action took place, or NULL for today.';
    END IF;
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'quantity must be a positive number of actions'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('quantity %s was given.', coalesce(quantity::text, 'NULL')),
                  HINT = 'Give 1 for one action.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the CRM''s identifier of the event.',
                  HINT = 'Give the event''s identifier, or NULL when there is none.';
    END IF;
    SELECT * INTO rule FROM @extschema@.action_rule r
    WHERE r.program_id = pid AND r.action = action AND r.valid_from <= day
    ORDER BY r.valid_from DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" has no rule in program "%" on %', action, program, day
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'action is an action of loyalty.action_rule in force on the day it occurred.',
                  HINT = 'Define it with loyalty.set_action_rule().';
    END IF;

    -- One award of the account at a time: the cap and the reference are
    -- checked on everything committed before.
    no := @extschema@._lock_for_debit(pid, account_key);
    IF reference IS NOT NULL THEN
        SELECT * INTO prior FROM @extschema@.award w
        WHERE w.program_id = pid AND w.account_key = account_key::@extschema@.account_key AND w.reference = reference;
        IF FOUND THEN
            IF (prior.action, prior.member_id, prior.occurred_on, prior.quantity)
               IS DISTINCT FROM (action, member, day, quantity) THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already awarded for another event', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It was awarded for %s x %s on %s%s.', prior.quantity, prior.action,
                                                     prior.occurred_on, coalesce(' by member ' || prior.member_id, '')),
                          HINT = 'A reference names one CRM event; give the new event its own reference.';
            END IF;
            RETURN prior.award_id;      -- the same event again: awarded once
        END IF;
    END IF;

    earned := rule.points::numeric * quantity;
    granted := LEAST(earned, 9223372036854775807);
    IF rule.cap_points IS NOT NULL THEN
        period_start := pg_catalog.date_trunc(rule.cap_period, day::timestamp)::date;
        SELECT coalesce(pg_catalog.sum(w.points), 0) INTO used FROM @extschema@.award w
        WHERE w.program_id = pid AND w.account_key = account_key::@extschema@.account_key AND w.action = action
          AND w.status <> 'rejected' AND w.occurred_on >= period_start
          AND w.occurred_on < (period_start + CASE rule.cap_period WHEN 'month' THEN interval '1 month'
                                                                   WHEN 'quarter' THEN interval '3 months'
                                                                   ELSE interval '1 year' END)::date;
        granted := GREATEST(0, LEAST(granted, rule.cap_points - used));
    END IF;
    st := CASE WHEN rule.needs_approval THEN 'pending' ELSE 'approved' END;
    IF st = 'approved' THEN
        entry := @extschema@._post_member(pid, account_key, 'award', granted,
                                          pg_catalog.format('%s x %s', quantity, action) || coalesce(' ref ' || reference, ''),
                                          member);
    END IF;
    INSERT INTO @extschema@.award AS w (program_id, account_key, award_no, action, member_id, occurred_on, quantity, rule_from,
                                        points, capped, reference, status, decided_at, posted_xid, entry_no)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, no, action, member, day, quantity, rule.valid_from, granted,
            LEAST(earned - granted, 9223372036854775807), reference, st,
            CASE WHEN st = 'approved' THEN pg_catalog.now() END,
            CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry)
    RETURNING w.award_id INTO id;
    RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    win_start date;
    today date;
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'balance takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'').';
    END IF;
    PERFORM @extschema@._may_read(program, account_key);
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = balance.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    -- a customer without an account (not enrolled, or not yet invoiced) has
    -- nothing: a zero row, so that a set-based BI query does not abort
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key::@extschema@.account_key;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key::@extschema@.account_key;
    -- the window's bounds as values: on Citus the query below runs on the
    -- account's shard, where a function reading loyalty.program by name
    -- would be a distributed query nested in a shard query
    win_start := @extschema@._rolling_start(pid);
    today := @extschema@._today(pid);
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key::@extschema@.account_key
      AND m.month >= win_start AND m.month <= today;
    -- an upgrade is due as soon as the rolling spend reaches the next
    -- threshold (the next loyalty.fold() records it); below every upgrade,
    -- the first tier applies when its threshold is 0
    SELECT CASE WHEN tier IS NULL
                     OR @extschema@.tier_rank(p.ladder, rolling_qualifying)
                        > (SELECT t.rank FROM @extschema@.tiers(p.ladder) t WHERE t.name = tier)
                THEN coalesce(@extschema@.tier_of(p.ladder, rolling_qualifying), tier) ELSE tier END
    INTO tier FROM @extschema@.program p WHERE p.program_id = pid;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text, as_of date,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    zone text;
    win_start date;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    IF as_of IS NULL OR NOT isfinite(as_of) THEN
        RAISE EXCEPTION 'as_of must be a date, not %', coalesce(as_of::text, 'NULL')
            USING ERRCODE = CASE WHEN as_of IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'as_of is the day whose closing balance is asked for.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31''); without a date: loyalty.balance(program, account_key).';
    END IF;
    SELECT p.program_id, p.time_zone,
           (date_trunc('month', as_of::timestamp)
            - make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
    INTO pid, zone, win_start FROM @extschema@.program p WHERE p.name = balance.program;
    -- the ledger as it stood at the end of as_of in the program's calendar
    SELECT coalesce(sum(l.points), 0), coalesce(sum(l.qualifying), 0) INTO points, qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = balance.account_key::@extschema@.account_key
      AND l.posted_at < ((as_of + 1)::timestamp AT TIME ZONE zone);
    -- the rolling window ending with as_of's month, by document date
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key::@extschema@.account_key
      AND m.month >= win_start AND m.month <= as_of;
    tier := @extschema@._tier_at(pid, account_key, as_of);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.benefits(program text, account_key text)
RETURNS TABLE (benefit text, value pg_catalog.jsonb, tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.benefits(''Distributor Club'', ''1042'').';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = benefits.program;
    RETURN QUERY
    SELECT b.benefit, b.value, b.tier
    FROM @extschema@.account a JOIN @extschema@.tier_benefit b ON b.program_id = a.program_id AND b.tier = a.tier
    WHERE a.program_id = pid AND a.account_key = benefits.account_key::@extschema@.account_key
    ORDER BY b.benefit;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.cancel_redemption(redemption_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d @extschema@.redemption;
    entry bigint;
BEGIN
    IF redemption_id IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'redemption_id is what loyalty.redeem() returned.',
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    SELECT * INTO d FROM @extschema@.redemption x WHERE x.redemption_id = redemption_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'redemption_id names no redemption'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No redemption has id %s; redemption_id is what loyalty.redeem() returned.', redemption_id),
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    -- the same lock order as redeem: the account, then the reward
    PERFORM @extschema@._lock_for_debit(d.program_id, d.account_key::text);
    SELECT * INTO d FROM @extschema@.redemption x
    WHERE x.program_id = d.program_id AND x.account_key = d.account_key AND x.redemption_no = d.redemption_no;
    IF d.status = 'cancelled' THEN
        RAISE EXCEPTION 'the redemption is already cancelled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Redemption %s was cancelled at %s; its points were given back then.', redemption_id, d.cancelled_at),
                  HINT = 'Nothing to do.';
    END IF;
    UPDATE @extschema@.reward x SET stock = x.stock + d.quantity
    WHERE x.program_id = d.program_id AND x.reward_id = d.reward_id AND x.stock IS NOT NULL;
    entry := @extschema@._post_member(d.program_id, d.account_key::text, 'redeem', d.points,
                                      pg_catalog.format('cancel redemption of %s x %s', d.quantity, d.reward_id),
                                      d.member_id, corrects_xid => d.posted_xid, corrects => d.entry_no);
    UPDATE @extschema@.redemption x
    SET status = 'cancelled', cancelled_at = pg_catalog.now(), cancel_xid = pg_catalog.pg_current_xact_id(), cancel_entry_no = entry
    WHERE x.program_id = d.program_id AND x.account_key = d.account_key AND x.redemption_no = d.redemption_no;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.claim_mdf(
    program     text,
    account_key text,
    amount      numeric,
    purpose     text,
    reference   text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    no bigint;
    prior @extschema@.mdf_claim;
    wallet numeric;
    reserved numeric;
    id uuid;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have an MDF wallet.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF amount IS NULL OR amount <= 0 OR amount = 'Infinity' OR amount = 'NaN' OR amount <> pg_catalog.round(amount, 2) THEN
        RAISE EXCEPTION 'amount must be a positive sum of money in cents'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('amount %s was given.', coalesce(amount::text, 'NULL')),
                  HINT = 'For example amount => 1500.00.';
    END IF;
    IF purpose IS NULL OR btrim(purpose) = '' THEN
        RAISE EXCEPTION 'purpose must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'purpose says what the funds pay for; the approver reads it.',
                  HINT = 'For example purpose => ''Trade show booth, spring fair''.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the partner portal''s identifier of the claim.',
                  HINT = 'Give the claim''s identifier, or NULL when there is none.';
    END IF;

    no := @extschema@._lock_for_debit(pid, account_key);
    PERFORM @extschema@._await_postings(pid, account_key);
    IF reference IS NOT NULL THEN
        SELECT * INTO prior FROM @extschema@.mdf_claim c
        WHERE c.program_id = pid AND c.account_key = account_key::@extschema@.account_key AND c.reference = reference;
        IF FOUND THEN
            IF prior.amount <> amount OR prior.purpose <> purpose THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already claimed for another amount or purpose', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It claimed %s for %s.', prior.amount, pg_catalog.quote_literal(prior.purpose)),
                          HINT = 'A reference names one claim; give a new claim its own reference.';
            END IF;
            RETURN prior.claim_id;      -- the same claim again
        END IF;
    END IF;
    SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = account_key::@extschema@.account_key;
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO reserved FROM @extschema@.mdf_claim c
    WHERE c.program_id = pid AND c.account_key = account_key::@extschema@.account_key AND c.status = 'pending';
    IF coalesce(wallet, 0) - reserved < amount THEN
        RAISE EXCEPTION 'account "%" has % of MDF available, % claimed', account_key, coalesce(wallet, 0) - reserved, amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('The wallet holds %s, of which pending claims reserve %s; it never goes below zero.',
                                             coalesce(wallet, 0), reserved),
                  HINT = 'Nothing was claimed. Claim less, or after the next settlement credits the wallet.';
    END IF;
    INSERT INTO @extschema@.mdf_claim AS c (program_id, account_key, claim_no, amount, purpose, reference)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, no, amount, purpose, reference)
    RETURNING c.claim_id INTO id;
    RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.create_rebate_agreement(
    program           text,
    agreement_id      text,
    schedule          @extschema@.rebate_schedule,
    account_key       text DEFAULT NULL,
    cooperation_model text DEFAULT NULL,
    region            text DEFAULT NULL,
    industry          text DEFAULT NULL,
    product_lines     text[] DEFAULT NULL,
    period            text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    prog @extschema@.program;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF prog.program_id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    IF agreement_id IS NULL OR NOT agreement_id OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.]{1,40}$' THEN
        RAISE EXCEPTION 'invalid agreement_id: %', coalesce(pg_catalog.quote_literal(agreement_id), 'NULL')
            USING ERRCODE = CASE WHEN agreement_id IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'agreement_id is the agreement''s code: 1 to 40 letters, digits, _ or . (it is part of the document keys of its settlement lines).',
                  HINT = 'For example agreement_id => ''DIST2026''.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rebate_agreement g
               WHERE g.program_id OPERATOR(pg_catalog.=) pid AND g.agreement_id OPERATOR(pg_catalog.=) create_rebate_agreement.agreement_id) THEN
        RAISE EXCEPTION 'agreement_id "%" is already used in program "%"', agreement_id, program
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Agreement codes are unique within a program, and never reused: settlement lines carry them.',
                  HINT = 'Choose another agreement_id, or end the existing one with loyalty.end_rebate_agreement().';
    END IF;
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'schedule is the rebate brackets applied to each period''s volume.',
                  HINT = 'For example schedule => ''retro: 0:0%, 100000:2%, 500000:3.5%''.';
    END IF;
    IF account_key IS NOT NULL AND (cooperation_model IS NOT NULL OR region IS NOT NULL OR industry IS NOT NULL) THEN
        RAISE EXCEPTION 'account_key and a segment cannot be given together'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An agreement covers one account (account_key) or every account of a segment (cooperation_model, region, industry).',
                  HINT = 'Give account_key alone, or the segment attributes alone.';
    END IF;
    IF account_key IS NOT NULL AND NOT EXISTS (
            SELECT FROM @extschema@.account a
            WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) create_rebate_agreement.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF cooperation_model IS NOT NULL AND NOT cooperation_model OPERATOR(pg_catalog.=) ANY (ARRAY['direct', 'distributor', 'integrator', 'reseller']) THEN
        RAISE EXCEPTION 'invalid value for cooperation_model: %', pg_catalog.quote_literal(cooperation_model)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cooperation_model must be one of direct, distributor, integrator, reseller.',
                  HINT = 'For example cooperation_model => ''distributor''; leave it out to match any.';
    END IF;
    IF region OPERATOR(pg_catalog.=) '' OR industry OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION '% must not be empty', CASE WHEN region OPERATOR(pg_catalog.=) '' THEN 'region' ELSE 'industry' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An empty segment attribute matches no account.',
                  HINT = 'Leave it out to match any value.';
    END IF;
    IF period IS NOT NULL AND NOT period OPERATOR(pg_catalog.=) ANY (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'invalid value for period: %', pg_catalog.quote_literal(period)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period must be one of month, quarter, year (calendar periods).',
                  HINT = 'For example period => ''quarter''; leave it out for the program''s settlement period.';
    END IF;
    IF valid_from IN ('infinity', '-infinity') OR valid_until IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION '% must be a finite date', CASE WHEN valid_from IN ('infinity', '-infinity') THEN 'valid_from' ELSE 'valid_until' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day the agreement applies to, valid_until the first day it no longer does.',
                  HINT = 'Leave valid_from out for today, valid_until for an open-ended agreement.';
    END IF;
    valid_from := coalesce(valid_from, (pg_catalog.now() AT TIME ZONE prog.time_zone)::date);
    IF valid_until IS NOT NULL AND valid_until OPERATOR(pg_catalog.<=) valid_from THEN
        RAISE EXCEPTION 'valid_until (%) must be after valid_from (%)', valid_until, valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Give a later valid_until, or leave it out for an open-ended agreement.';
    END IF;
    IF product_lines IS NOT NULL THEN
        product_lines := ARRAY(SELECT DISTINCT l FROM pg_catalog.unnest(product_lines) l ORDER BY 1);
        IF pg_catalog.cardinality(product_lines) OPERATOR(pg_catalog.=) 0
           OR EXISTS (SELECT FROM pg_catalog.unnest(product_lines) l WHERE l IS NULL OR l OPERATOR(pg_catalog.=) '') THEN
            RAISE EXCEPTION 'product_lines must list product lines, none NULL or empty'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'product_lines are the product lines (as the attachments map them) whose qualifying spend counts.',
                      HINT = 'For example product_lines => ''{networking,storage}''; leave it out to count all spend.';
        END IF;
        IF NOT EXISTS (SELECT FROM @extschema@.attachment x
                       WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.detached_at IS NULL
                         AND (x.product IS NOT NULL OR x.product_line_expr IS NOT NULL)) THEN
            RAISE EXCEPTION 'product_lines cannot be given: program "%" maps no product line', program
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'A product-line scope needs an attachment that maps each row''s product line.',
                      HINT = 'Attach the ERP table with product_line_column (or product => ...), or leave product_lines out.';
        END IF;
        -- The trigger splits the spend by these lines from now on: the
        -- documents the agreement counts must all be accrued after it.
        -- (Serialised with other agreements of the program.)
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
        IF EXISTS (SELECT FROM @extschema@.accrual_month m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid
                     AND m.month OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('month', valid_from)::date) THEN
            RAISE EXCEPTION 'valid_from % is too early for product_lines: program "%" has documents dated in % or later',
                            valid_from, program, pg_catalog.to_char(valid_from, 'YYYY-MM')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The spend of a product line is recorded as documents are accrued, from the first agreement scoping it on; documents accrued before cannot be split by product line.',
                      HINT = 'Give a valid_from whose month has no accrued documents yet (usually the first day of the next month).';
        END IF;
    END IF;
    INSERT INTO @extschema@.rebate_agreement (program_id, agreement_id, account_key, cooperation_model, region, industry,
                                              schedule, product_lines, period, valid_from, valid_until)
    VALUES (pid, agreement_id, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, cooperation_model, region, industry,
            schedule, product_lines, coalesce(period, prog.settlement_period), valid_from, valid_until);
END
$$;

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
    role       text := pg_catalog.current_setting('session_replication_role');
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
    IF key_type NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                        'pg_catalog.int8'::pg_catalog.regtype) THEN
        RAISE EXCEPTION '% is distributed by %, a column of type %', invoice, pg_catalog.quote_ident(key_column), key_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty stores account keys as text, integer or bigint, and Citus co-locates only tables whose distribution columns have the same type.',
                  HINT = 'Distribute the invoice table by a text, integer or bigint customer key; see "Running on Citus" in loyalty''s README.';
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
    -- and the account keys in the type of the invoice table's key, once
    -- nothing (keys, policies) stands in the way.  This node first, in this
    -- transaction: a stored key that does not fit the type stops it here,
    -- before the workers, whose part commits on its own.
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    EXECUTE undo;
    PERFORM @extschema@._set_key_type(key_type);
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'on', true);
    FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                  || ' FROM pg_catalog.run_command_on_workers($1) w'
               USING 'SET citus.enable_ddl_propagation = off;' || undo
                  || pg_catalog.format('SELECT @extschema@._set_key_type(%L);', key_type)
    LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not prepare loyalty''s tables on worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = r.result,
                      HINT = 'Fix the worker (CREATE EXTENSION loyalty must have run there), then run loyalty.distribute() again; it picks up where it stopped.';
        END IF;
    END LOOP;

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

    -- 4. the rows Citus copied into the shards stay on disk in this node's
    -- tables, out of sight but read by anything that opens them directly:
    -- removed, with loyalty's own guards (append-only ledger, accounts
    -- kept) silenced for this, since nothing is lost
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT l.table_name FROM @extschema@._citus_layout() l
              WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING t.table_name;
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role, true);

    -- 5. the functions Citus runs where the account is
    PERFORM @extschema@._citus_functions();
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.grant_partner(login regrole, program text, account_key text, member_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    -- the shared check of a program argument, raised here so that the
    -- error comes from this function (no internal helper in its CONTEXT)
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) grant_partner.program;
    IF login IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN login IS NULL THEN 'login' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'grant_partner maps a login role to one account of a program.',
                  HINT = 'For example loyalty.grant_partner(''acme_portal'', ''Distributor Club'', ''1042'').';
    END IF;
    IF (SELECT r.rolsuper OR r.rolcreaterole OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) login)
       OR pg_catalog.pg_has_role(login, 'loyalty_reader', 'USAGE') OR pg_catalog.pg_has_role(login, 'loyalty_operator', 'USAGE')
       OR pg_catalog.pg_has_role(login, 'loyalty_admin', 'USAGE') THEN
        RAISE EXCEPTION 'role % cannot be a partner login', login
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A superuser, a role that creates roles or bypasses row-level security, or a loyalty role reads every account: mapping it to one account would restrict nothing.',
                  HINT = 'Create a login role for the partner alone, e.g. CREATE ROLE acme_portal LOGIN.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a
                   WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) grant_partner.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program (loyalty.account).',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member_id IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid AND m.account_key OPERATOR(pg_catalog.=) grant_partner.account_key::@extschema@.account_key
                     AND m.member_id OPERATOR(pg_catalog.=) grant_partner.member_id) THEN
        RAISE EXCEPTION 'member "%" does not exist at account "%"', member_id, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'member_id must name a member of the account, or be NULL.',
                  HINT = 'Members are rows of loyalty.member.';
    END IF;
    INSERT INTO @extschema@.partner_login AS pl (login, program_id, account_key, member_id)
    VALUES (login, pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, member_id)
    ON CONFLICT ON CONSTRAINT partner_login_pkey DO UPDATE
    SET account_key = excluded.account_key, member_id = excluded.member_id, granted_at = pg_catalog.now();
    EXECUTE pg_catalog.format('GRANT loyalty_partner TO %I', pg_catalog.pg_get_userbyid(login));
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.grant_tier(program text, account_key text, tier text, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = grant_tier.program;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = grant_tier.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', coalesce(account_key, 'NULL'), program
            USING ERRCODE = CASE WHEN account_key IS NULL THEN 'null_value_not_allowed' ELSE 'no_data_found' END,
                  DETAIL = 'A tier is granted to an enrolled account.',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF tier IS NULL OR NOT (EXISTS (SELECT FROM @extschema@.program p, @extschema@.tiers(p.ladder) t
                                    WHERE p.program_id = pid AND t.name = grant_tier.tier)
                            OR EXISTS (SELECT FROM @extschema@.tier_benefit b
                                       WHERE b.program_id = pid AND b.tier = grant_tier.tier)) THEN
        RAISE EXCEPTION 'program "%" has no tier "%"', program, coalesce(tier, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A tier granted by hand is a ladder tier or a benefit-only tier (one with benefits and no threshold).',
                  HINT = 'Define a benefit-only tier with loyalty.set_benefit(program, tier, benefit, value) first.';
    END IF;
    PERFORM @extschema@._set_tier(pid, account_key, tier, 'manual');
    INSERT INTO @extschema@.tier_grant AS g (program_id, account_key, tier, reason)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, tier, reason)
    ON CONFLICT ON CONSTRAINT tier_grant_pkey DO UPDATE
    SET tier = excluded.tier, reason = excluded.reason, granted_at = excluded.granted_at, granted_by = excluded.granted_by;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.revoke_tier(program text, account_key text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    qualified text;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = revoke_tier.program;
    DELETE FROM @extschema@.tier_grant g WHERE g.program_id = pid AND g.account_key = revoke_tier.account_key::@extschema@.account_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account_key "%" holds no tier granted by hand in program "%"', coalesce(account_key, 'NULL'), program
            USING ERRCODE = CASE WHEN account_key IS NULL THEN 'null_value_not_allowed' ELSE 'no_data_found' END,
                  DETAIL = 'revoke_tier ends a tier given with loyalty.grant_tier().',
                  HINT = 'Granted tiers: SELECT * FROM loyalty.tier_grant.';
    END IF;
    -- back to what the account qualifies for today
    SELECT @extschema@.tier_of(p.ladder, @extschema@._measure(pid, revoke_tier.account_key, @extschema@._today(pid)))
    INTO qualified FROM @extschema@.program p WHERE p.program_id = pid;
    PERFORM @extschema@._set_tier(pid, account_key, qualified, 'manual');
    RETURN qualified;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.roi(program text, pre daterange, post daterange, benefit_cost numeric DEFAULT NULL,
                               costs_until date DEFAULT NULL)
RETURNS TABLE (
    measured_on text, pilot_accounts bigint, control_accounts bigint,
    pilot_mean_change numeric, control_mean_change numeric,
    uplift_per_account numeric, uplift_ci_low numeric, uplift_ci_high numeric, std_error numeric, welch_df numeric,
    incremental_margin numeric, incremental_margin_ci_low numeric, incremental_margin_ci_high numeric,
    points_issued bigint, points_cost numeric, rebate_cost numeric, mdf_cost numeric, benefits_cost numeric,
    program_cost numeric, roi numeric, roi_ci_low numeric, roi_ci_high numeric, payback_months numeric,
    placebo_uplift numeric, placebo_ci_low numeric, placebo_ci_high numeric, parallel_trends text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    prog @extschema@.program;
    pid integer;
    c record;
    d @extschema@.did_result;
    pd @extschema@.did_result;
    est record;
    econ @extschema@.roi_settings;
    scale numeric;
    months numeric;
    mid date;
    rev numeric;
    unrated numeric;
    pts bigint;
    reb numeric;
    md numeric;
    ben numeric;
    cost numeric;
    inc numeric;
BEGIN
    -- the program by name, read as the caller (internal functions are not theirs)
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program x WHERE x.name = program;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    FOR c IN SELECT * FROM (VALUES (1, 'pre', pre), (2, 'post', post)) AS x(n, param, r) ORDER BY n LOOP
        IF c.r IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = format('%s is a range of document dates.', c.param),
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
        IF isempty(c.r) OR lower_inf(c.r) OR upper_inf(c.r) THEN
            RAISE EXCEPTION '% must be a bounded, non-empty date range, not %', c.param, c.r
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Means per account need a period of known length.',
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
    END LOOP;
    IF upper(pre) > lower(post) THEN
        RAISE EXCEPTION 'pre must end before post begins: % and % overlap', pre, post
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'pre is the period before the program started, post the period it ran.',
                  HINT = 'For example pre => daterange(''2024-01-01'', ''2025-01-01''), post => daterange(''2025-01-01'', ''2026-01-01'').';
    END IF;
    IF costs_until <= lower(post) OR costs_until = 'infinity' THEN
        RAISE EXCEPTION 'costs_until must be a date after post begins, not %', costs_until
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Rebates, MDF and awards posted from the start of post up to the day before costs_until count as the pilot''s cost.',
                  HINT = 'Leave it out for the end of post; give a later date to include the rebates settled after post.';
    END IF;
    IF benefit_cost < 0 OR benefit_cost IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'benefit_cost must be 0 or more, not %', benefit_cost
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'benefit_cost is what the pilot''s benefits cost over post, in program currency.',
                  HINT = 'Leave it out to use loyalty.roi_settings.benefit_cost_per_account_month.';
    END IF;
    SELECT * INTO econ FROM @extschema@.roi_settings s WHERE s.program_id = pid;
    scale := (upper(post) - lower(post))::numeric / (upper(pre) - lower(pre));
    months := (upper(post) - lower(post))::numeric / (365.25 / 12);
    mid := lower(pre) + (upper(pre) - lower(pre)) / 2;

    WITH x AS (
        SELECT s.account_key, s.doc_date, sum(s.margin) AS margin, sum(s.revenue) AS revenue,
               sum(s.unrated_revenue) AS unrated
        FROM @extschema@.sales(program, daterange(lower(pre), upper(post))) s
        GROUP BY 1, 2),
    m AS (
        SELECT x.account_key,
               sum(x.margin) FILTER (WHERE x.doc_date <@ pre) AS pre,
               sum(x.margin) FILTER (WHERE x.doc_date <@ post) AS post,
               sum(x.margin) FILTER (WHERE x.doc_date >= lower(pre) AND x.doc_date < mid) AS first_half,
               sum(x.margin) FILTER (WHERE x.doc_date >= mid AND x.doc_date < mid + (mid - lower(pre))) AS second_half
        FROM x GROUP BY 1),
    -- the experiment's accounts as a result of their own: on Citus the
    -- account table is distributed, and the sub-selects over x below can
    -- run only where the rest of the query is a result on the coordinator
    a AS MATERIALIZED (
        SELECT a.account_key, a.cohort FROM @extschema@.account a
        WHERE a.program_id = pid AND a.cohort IS NOT NULL)
    SELECT @extschema@.did(a.cohort = 'pilot', coalesce(m.pre, 0) * scale, coalesce(m.post, 0)) AS d,
           @extschema@.did(a.cohort = 'pilot', coalesce(m.first_half, 0), coalesce(m.second_half, 0)) AS pd,
           (SELECT sum(x.revenue) FROM x) AS rev, (SELECT sum(x.unrated) FROM x) AS unrated
    INTO est
    FROM a
    LEFT JOIN m ON m.account_key = a.account_key::text;
    d := est.d;
    pd := est.pd;
    rev := est.rev;
    unrated := est.unrated;

    -- the pilot's cost over post
    SELECT coalesce(sum(m.points), 0) INTO pts
    FROM @extschema@.accrual_month m JOIN @extschema@.account a USING (program_id, account_key)
    WHERE m.program_id = pid AND a.cohort = 'pilot'
      AND m.month >= date_trunc('month', lower(post)) AND m.month < upper(post);
    SELECT pts + coalesce(sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points > 0), 0),
           coalesce(sum(l.rebate), 0), coalesce(sum(l.mdf), 0)
    INTO pts, reb, md
    FROM @extschema@.ledger l JOIN @extschema@.account a USING (program_id, account_key)
    WHERE l.program_id = pid AND a.cohort = 'pilot'
      AND (l.posted_at AT TIME ZONE prog.time_zone)::date
          <@ daterange(lower(post), coalesce(costs_until, upper(post)));
    ben := coalesce(benefit_cost, coalesce(econ.benefit_cost_per_account_month, 0) * d.pilot_n * months);
    cost := pts * coalesce(econ.cost_per_point, 0) + reb + md + ben;
    inc := d.uplift::numeric * d.pilot_n;

    measured_on := CASE WHEN coalesce(rev, 0) = 0 THEN 'no sales'
                        WHEN unrated = 0 THEN 'margin'
                        WHEN unrated = rev THEN 'revenue (no margin rates set)'
                        ELSE format('margin; %s%% of revenue had no margin rate and counts as revenue',
                                    round(100 * unrated / rev, 1)) END;
    pilot_accounts := d.pilot_n;
    control_accounts := d.control_n;
    pilot_mean_change := round(d.pilot_mean_change::numeric, 2);
    control_mean_change := round(d.control_mean_change::numeric, 2);
    uplift_per_account := round(d.uplift::numeric, 2);
    uplift_ci_low := round(d.ci_low::numeric, 2);
    uplift_ci_high := round(d.ci_high::numeric, 2);
    std_error := round(d.std_error::numeric, 2);
    welch_df := round(d.welch_df::numeric, 1);
    incremental_margin := round(inc, 2);
    incremental_margin_ci_low := round(d.ci_low::numeric * d.pilot_n, 2);
    incremental_margin_ci_high := round(d.ci_high::numeric * d.pilot_n, 2);
    points_issued := pts;
    points_cost := round(pts * coalesce(econ.cost_per_point, 0), 2);
    rebate_cost := reb;
    mdf_cost := md;
    benefits_cost := round(ben, 2);
    program_cost := round(cost, 2);
    IF cost > 0 THEN
        roi := round((inc - cost) / cost, 4);
        roi_ci_low := round((d.ci_low::numeric * d.pilot_n - cost) / cost, 4);
        roi_ci_high := round((d.ci_high::numeric * d.pilot_n - cost) / cost, 4);
        IF inc > 0 THEN
            payback_months := round(cost / (inc / months), 1);
        END IF;
    END IF;
    placebo_uplift := round(pd.uplift::numeric, 2);
    placebo_ci_low := round(pd.ci_low::numeric, 2);
    placebo_ci_high := round(pd.ci_high::numeric, 2);
    parallel_trends := CASE WHEN pd.ci_low IS NULL THEN 'not checked: too few accounts'
                            WHEN pd.ci_low <= 0 AND pd.ci_high >= 0 THEN 'plausible: the placebo interval holds 0'
                            ELSE 'doubtful: the placebo interval excludes 0' END;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.statement(program text, account_key text, period_end date)
RETURNS TABLE (section text, item text, value text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    prog @extschema@.program;
    pstart date;
    t text;
    since date;
    m numeric;
    nxt record;
    outcome text;
    zone_end timestamptz;
    zone_start timestamptz;
    soon bigint;
    closing bigint;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    e := coalesce(e, @extschema@._period_end_problem((SELECT p.program_id FROM @extschema@.program p WHERE p.name = statement.program),
                                                     period_end));
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.statement(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name = statement.program;
    pid := prog.program_id;
    pstart := @extschema@._period_start(pid, period_end);
    zone_start := pstart::timestamp AT TIME ZONE prog.time_zone;
    zone_end := (period_end + 1)::timestamp AT TIME ZONE prog.time_zone;
    -- the tier the period's settlement decided (in force from the day it
    -- ran), or, for a period not settled yet, the tier of its last day
    SELECT s.new_tier, s.outcome, s.measure INTO t, outcome, m FROM @extschema@.settlement_account s
    WHERE s.program_id = pid AND s.account_key = statement.account_key::@extschema@.account_key AND s.period_end = statement.period_end;
    IF NOT FOUND THEN
        t := @extschema@._tier_at(pid, account_key, period_end);
        m := @extschema@._measure(pid, account_key, period_end);
        outcome := 'not settled yet';
    END IF;
    SELECT max(h.effective_from) INTO since FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = statement.account_key::@extschema@.account_key AND h.new_tier = t;
    -- the next tier above the account's tier (or above what it measures)
    SELECT x.name, x.threshold, greatest(x.threshold - m, 0) AS gap INTO nxt
    FROM @extschema@.tiers(prog.ladder) x
    WHERE x.rank > greatest(coalesce((SELECT y.rank FROM @extschema@.tiers(prog.ladder) y WHERE y.name = t), 0),
                            coalesce(@extschema@.tier_rank(prog.ladder, m), 0))
    ORDER BY x.rank LIMIT 1;

    RETURN QUERY VALUES ('period', 'from', pstart::text), ('period', 'to', period_end::text),
                        ('tier', 'tier', t), ('tier', 'since', since::text), ('tier', 'settlement', outcome),
                        ('tier', 'measure (' || prog.tier_basis || ', rolling window)', m::text),
                        ('progress', 'next tier', nxt.name), ('progress', 'threshold', nxt.threshold::text),
                        ('progress', 'missing', nxt.gap::text);
    -- points earned in the period: accrual by document month and ERP table,
    -- the other kinds by posting date
    RETURN QUERY
    SELECT 'points earned', coalesce(a.source_name, '(unknown table)'), sum(x.points)::text
    FROM @extschema@.accrual_month x LEFT JOIN @extschema@.attachment a ON a.attachment_id = x.attachment_id
    WHERE x.program_id = pid AND x.account_key = statement.account_key::@extschema@.account_key AND x.month >= pstart AND x.month <= period_end
    GROUP BY a.source_name ORDER BY a.source_name;
    RETURN QUERY
    SELECT 'points earned', l.kind::text, sum(l.points)::text
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
      AND l.kind IN ('award', 'adjust') AND l.posted_at >= zone_start AND l.posted_at < zone_end
    GROUP BY l.kind ORDER BY l.kind;
    -- as values: on Citus the query below runs on the account's shard, where
    -- these functions could not read the configuration by name
    soon := @extschema@._expiring_soon(pid, account_key, period_end);
    closing := (SELECT b.points FROM @extschema@.balance(program, account_key, period_end) b);
    RETURN QUERY
    SELECT 'points', v.item, v.value FROM (VALUES
        ('redeemed', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                      WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key AND l.kind = 'redeem'
                        AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expired', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                     WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key AND l.kind = 'expire'
                       AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expiring soon', soon::text),
        ('balance at period end', closing::text)) v(item, value);
    RETURN QUERY
    SELECT 'rebates', v.item, v.value FROM (VALUES
        ('accrued in period', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                               WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
                                 AND l.rebate <> 0 AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('balance at period end', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                                   WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
                                     AND l.rebate <> 0 AND l.posted_at < zone_end))) v(item, value);
    RETURN QUERY
    SELECT 'benefits', b.benefit, b.value::text FROM @extschema@.tier_benefit b
    WHERE b.program_id = pid AND b.tier = t ORDER BY b.benefit;
    -- what the next tier would add or change
    RETURN QUERY
    SELECT 'next tier unlocks', n.benefit, n.value::text FROM @extschema@.tier_benefit n
    WHERE n.program_id = pid AND n.tier = nxt.name
      AND n.value IS DISTINCT FROM (SELECT b.value FROM @extschema@.tier_benefit b
                                    WHERE b.program_id = pid AND b.tier = t AND b.benefit = n.benefit)
    ORDER BY n.benefit;
END
$$;

-- The account keys' type follows the ERP's distribution column, because
-- Citus co-locates only tables whose distribution columns have one type:
-- every account_key column of loyalty's tables and the domain
-- @extschema@.account_key (src/sql/10_types.sql) become that type.  The
-- views over those columns are dropped and re-created from their own
-- definitions, with their options, owner, comments and grants; a check on
-- the key alone (account_key <> '') is about its text form and goes.  Run
-- by distribute() on each node, before any table is distributed.
CREATE FUNCTION @extschema@._set_key_type(key_type regtype) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ext      oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty');
    recreate text[] := '{}';
    retrigger text[] := '{}';
    doomed   text[] := '{}';
    comment  text := pg_catalog.obj_description('@extschema@.account_key'::pg_catalog.regtype, 'pg_type');
    t        record;
    k        record;
BEGIN
    IF key_type NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                        'pg_catalog.int8'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'account keys of type % are not supported', key_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty stores account keys as text, integer or bigint.',
                  HINT = 'Distribute the invoice table by a text, integer or bigint customer key.';
    END IF;
    IF (SELECT d.typbasetype FROM pg_catalog.pg_type d
         WHERE d.oid OPERATOR(pg_catalog.=) '@extschema@.account_key'::pg_catalog.regtype) OPERATOR(pg_catalog.=) key_type THEN
        RETURN;
    END IF;

    -- the views, in creation order (a view is created after those it reads)
    FOR t IN SELECT c.oid::pg_catalog.regclass AS v, c.reloptions, c.relowner::pg_catalog.regrole AS owner,
                    pg_catalog.pg_get_viewdef(c.oid) AS def, pg_catalog.obj_description(c.oid, 'pg_class') AS note
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                AND d.refobjid OPERATOR(pg_catalog.=) ext
              WHERE c.relkind OPERATOR(pg_catalog.=) 'v'
              ORDER BY c.oid
    LOOP
        doomed := doomed || t.v::text;
        recreate := recreate
            || pg_catalog.format('CREATE VIEW %s%s AS %s', t.v,
                                 CASE WHEN t.reloptions IS NOT NULL
                                      THEN pg_catalog.format(' WITH (%s)', pg_catalog.array_to_string(t.reloptions, ', ')) END,
                                 t.def)
            || pg_catalog.format('ALTER VIEW %s OWNER TO %s', t.v, t.owner)
            || pg_catalog.format('ALTER EXTENSION loyalty ADD VIEW %s', t.v)
            || pg_catalog.format('COMMENT ON VIEW %s IS %L', t.v, t.note)
            || ARRAY(SELECT pg_catalog.format('COMMENT ON COLUMN %s.%I IS %L', t.v, a.attname,
                                              pg_catalog.col_description(t.v, a.attnum))
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) t.v AND a.attnum OPERATOR(pg_catalog.>) 0
                        AND pg_catalog.col_description(t.v, a.attnum) IS NOT NULL)
            || ARRAY(SELECT pg_catalog.format('GRANT %s ON %s TO %s%s', g.privilege_type, t.v,
                                              CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                                   ELSE pg_catalog.quote_ident(g.grantee::pg_catalog.regrole::text) END,
                                              CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
                       FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) g
                      WHERE c.oid OPERATOR(pg_catalog.=) t.v);
    END LOOP;
    FOR t IN SELECT v FROM pg_catalog.unnest(doomed) v LOOP
        EXECUTE pg_catalog.format('ALTER EXTENSION loyalty DROP VIEW %s', t.v);
    END LOOP;
    IF pg_catalog.cardinality(doomed) OPERATOR(pg_catalog.>) 0 THEN
        EXECUTE 'DROP VIEW ' || pg_catalog.array_to_string(doomed, ', ');
    END IF;

    -- the triggers that name the key among their columns (UPDATE OF)
    FOR t IN SELECT DISTINCT g.oid, g.tgrelid::pg_catalog.regclass AS rel, g.tgname, g.tgenabled,
                    pg_catalog.pg_get_triggerdef(g.oid) AS def, pg_catalog.obj_description(g.oid, 'pg_trigger') AS note
               FROM pg_catalog.pg_trigger g
               JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
                AND d.objid OPERATOR(pg_catalog.=) g.oid AND d.refobjsubid OPERATOR(pg_catalog.>) 0
               JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid
                AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid AND a.attname OPERATOR(pg_catalog.=) 'account_key'
              WHERE EXISTS (SELECT FROM pg_catalog.pg_depend e
                             WHERE e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                               AND e.objid OPERATOR(pg_catalog.=) g.tgrelid AND e.deptype OPERATOR(pg_catalog.=) 'e'
                               AND e.refobjid OPERATOR(pg_catalog.=) ext)
              ORDER BY g.oid
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
        retrigger := retrigger || t.def
            || CASE t.tgenabled WHEN 'D' THEN pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', t.rel, t.tgname)
                                WHEN 'R' THEN pg_catalog.format('ALTER TABLE %s ENABLE REPLICA TRIGGER %I', t.rel, t.tgname)
                                WHEN 'A' THEN pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.tgname)
                                ELSE 'SELECT' END
            || pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', t.tgname, t.rel, t.note);
    END LOOP;

    -- the columns
    FOR t IN SELECT a.attrelid::pg_catalog.regclass AS rel, a.attnum
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
               JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                AND d.refobjid OPERATOR(pg_catalog.=) ext
              WHERE c.relkind OPERATOR(pg_catalog.=) 'r' AND a.attname OPERATOR(pg_catalog.=) 'account_key'
                AND NOT a.attisdropped
              ORDER BY c.oid
    LOOP
        FOR k IN SELECT c.conname FROM pg_catalog.pg_constraint c
                  WHERE c.conrelid OPERATOR(pg_catalog.=) t.rel AND c.contype OPERATOR(pg_catalog.=) 'c'
                    AND c.conkey OPERATOR(pg_catalog.=) ARRAY[t.attnum]
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', t.rel, k.conname);
        END LOOP;
        BEGIN
            EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN account_key TYPE %s USING account_key::%s',
                                      t.rel, key_type, key_type);
        EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
            RAISE EXCEPTION '% holds an account key that is not of type %', t.rel, key_type
                USING ERRCODE = 'data_exception',
                      DETAIL = SQLERRM,
                      HINT = 'The ERP''s customer keys and loyalty''s account keys must be one type: convert or remove the rows whose key does not fit (a dead letter without an account has the key ''''), then run loyalty.distribute() again.';
        END;
    END LOOP;

    -- the domain statements cast keys to
    ALTER EXTENSION loyalty DROP DOMAIN @extschema@.account_key;
    DROP DOMAIN @extschema@.account_key;
    EXECUTE pg_catalog.format('CREATE DOMAIN @extschema@.account_key AS %s', key_type);
    ALTER EXTENSION loyalty ADD DOMAIN @extschema@.account_key;
    EXECUTE pg_catalog.format('COMMENT ON DOMAIN @extschema@.account_key IS %L', comment);

    FOR t IN SELECT s FROM pg_catalog.unnest(retrigger || recreate) s LOOP
        EXECUTE t.s;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._set_key_type(regtype) IS
'Internal: makes every account_key column of loyalty''s tables, and the domain loyalty.account_key, of type key_type (text, integer or bigint), re-creating the views over them; loyalty.distribute() runs it on each node so that loyalty''s tables can be co-located with an ERP table distributed by such a key.';
REVOKE ALL ON FUNCTION @extschema@._set_key_type(regtype) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.distribute(regclass) IS
'Lays out loyalty''s tables on a Citus cluster around invoice, an ERP table hash-distributed by a text, integer or bigint customer key: account keys take that type; configuration tables become reference tables, account-scoped tables (the dead letters of rejected_event included) are distributed by account_key co-located with invoice, partner_login stays local to each node. Drops the foreign keys and partner policies Citus cannot take on every node, re-creates the keys it can. Superuser, once, before attaching the distributed invoice table; running it again is harmless. Returns each table''s layout.';

-- ---------------------------------------------------------------------------
-- redeem with the account key as a number, the form Citus routes to the
-- account's node around an ERP table distributed by an integer or bigint key.
-- ---------------------------------------------------------------------------
-- The same with the account key as a number, for an ERP whose customer keys
-- are integer or bigint.  On Citus (loyalty.distribute() around a table
-- distributed by such a key) Citus runs a call on the account's node by
-- this argument: a text key cannot be routed to an integer distribution
-- column.  A quoted key ('42') still calls the text version.
CREATE FUNCTION @extschema@.redeem(
    program     text,
    account_key bigint,
    reward      text,
    quantity    integer DEFAULT 1,
    member      text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'loyalty_redeem'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off;
COMMENT ON FUNCTION @extschema@.redeem(text, bigint, text, integer, text) IS
'loyalty.redeem(program, account_key, reward, quantity, member) with the account key as a number: the same redemption; on Citus around an ERP table distributed by an integer or bigint key, the form Citus runs on the account''s node.';
REVOKE ALL ON FUNCTION @extschema@.redeem(text, bigint, text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.redeem(text, bigint, text, integer, text) TO loyalty_operator, loyalty_partner;

CREATE OR REPLACE FUNCTION @extschema@._citus_functions() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- by the form whose key Citus can turn into the distribution column's
    -- type: text keys as text, integer and bigint keys as numbers
    EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''account_key'', colocate_with => ''@extschema@.account'')'
      USING CASE WHEN (SELECT d.typbasetype FROM pg_catalog.pg_type d
                        WHERE d.oid OPERATOR(pg_catalog.=) '@extschema@.account_key'::pg_catalog.regtype)
                      OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype
                 THEN '@extschema@.redeem(text, text, text, integer, text)'::pg_catalog.regprocedure
                 ELSE '@extschema@.redeem(text, bigint, text, integer, text)'::pg_catalog.regprocedure END;
END
$$;

COMMENT ON FUNCTION @extschema@._citus_functions() IS
'Internal: registers the debits written in C (loyalty.redeem: the text form on text keys, the bigint form on integer and bigint keys) as Citus distributed functions by account_key, co-located with loyalty.account, so that Citus runs a call on the node holding the account''s shard.';


-- ---------------------------------------------------------------------------
-- Invoice lines with a header table on Citus: both distributed by customer,
-- co-located with loyalty's tables; a line's header is the row of its key
-- and of the line's own customer, read in the co-located shard.
-- ---------------------------------------------------------------------------
-- The shard of tbl co-located with shard (a shard of another table
-- distributed with it), on this node; NULL when there is none.  PL/pgSQL:
-- it reads Citus's catalog, which exists only where Citus is installed.
CREATE FUNCTION @extschema@._colocated_shard(tbl regclass, shard regclass) RETURNS regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', tn.nspname,
                   tc.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s2.shardid))
              FROM pg_catalog.pg_class sc
              JOIN pg_catalog.pg_dist_shard s1 ON true
              JOIN pg_catalog.pg_class lc ON lc.oid OPERATOR(pg_catalog.=) s1.logicalrelid
              JOIN pg_catalog.pg_dist_partition p1 ON p1.logicalrelid OPERATOR(pg_catalog.=) s1.logicalrelid
              JOIN pg_catalog.pg_dist_partition p2 ON p2.logicalrelid OPERATOR(pg_catalog.=) tbl
                                                  AND p2.colocationid OPERATOR(pg_catalog.=) p1.colocationid
              JOIN pg_catalog.pg_dist_shard s2 ON s2.logicalrelid OPERATOR(pg_catalog.=) tbl
                                              AND s2.shardminvalue OPERATOR(pg_catalog.=) s1.shardminvalue
              JOIN pg_catalog.pg_class tc ON tc.oid OPERATOR(pg_catalog.=) tbl
              JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) tc.relnamespace
             WHERE sc.oid OPERATOR(pg_catalog.=) shard
               AND sc.relnamespace OPERATOR(pg_catalog.=) lc.relnamespace
               AND sc.relname OPERATOR(pg_catalog.=) (lc.relname OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) s1.shardid)
             LIMIT 1);
END
$$;
COMMENT ON FUNCTION @extschema@._colocated_shard(regclass, regclass) IS
    'Internal: on a Citus node, the shard of a table co-located with a given shard of another table (an invoice header''s shard for a shard of its lines).';
REVOKE ALL ON FUNCTION @extschema@._colocated_shard(regclass, regclass) FROM PUBLIC;

-- The condition that a line's header is of the line's customer: both
-- distribution columns equal (h the header, s the line), when lines and
-- header are Citus tables distributed together; '' otherwise.  Citus joins
-- them on it, shard by shard.
CREATE FUNCTION @extschema@._citus_same_customer(source regclass, header regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT pg_catalog.format(' AND h.%I OPERATOR(pg_catalog.=) s.%I',
                                              pg_catalog.column_to_column_name(h.logicalrelid, h.partkey),
                                              pg_catalog.column_to_column_name(l.logicalrelid, l.partkey))
                       FROM pg_catalog.pg_dist_partition l, pg_catalog.pg_dist_partition h
                      WHERE l.logicalrelid OPERATOR(pg_catalog.=) source AND h.logicalrelid OPERATOR(pg_catalog.=) header
                        AND l.partmethod OPERATOR(pg_catalog.=) 'h' AND h.partmethod OPERATOR(pg_catalog.=) 'h'
                        AND l.colocationid OPERATOR(pg_catalog.=) h.colocationid), '');
END
$$;
COMMENT ON FUNCTION @extschema@._citus_same_customer(regclass, regclass) IS
    'Internal: the join condition that a line''s header is of the line''s own customer, for lines and header distributed together on Citus.';
REVOKE ALL ON FUNCTION @extschema@._citus_same_customer(regclass, regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._facts_sql(a @extschema@.attachment, source regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text;
    from_clause text;
    hdr text;
    hdr_rel regclass := a.header;
    same_customer text := '';
    pl text;
BEGIN
    -- On Citus, lines and header are distributed by customer: a line's
    -- header is the row of its key in the line's own customer, in the
    -- co-located shard (as the trigger reads it: src/accrual.c)
    IF a.header IS NOT NULL AND EXISTS (SELECT FROM pg_extension e WHERE e.extname = 'citus') THEN
        same_customer := @extschema@._citus_same_customer(a.source, a.header);
        IF source IS DISTINCT FROM a.source THEN
            hdr_rel := coalesce(@extschema@._colocated_shard(a.header, source), a.header);
        END IF;
    END IF;
    key := CASE WHEN cardinality(a.key_columns) = 1 THEN format('(s.%I)::text', a.key_columns[1])
                ELSE format('(ROW(%s))::text', (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(a.key_columns) c)) END;
    -- a partitioned table is read with its partitions; a plain one alone
    from_clause := format('FROM %s %s s',
                          CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = source) = 'p' THEN '' ELSE 'ONLY' END,
                          source);
    IF a.header IS NULL THEN
        hdr := format('(%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency, (%s)::text AS doc_type,'
                      ' (%s)::date AS due_date, (%s)::date AS paid_date, true AS header_found',
                      a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
                      coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'));
    ELSE
        hdr := 'hh.account_key, hh.doc_date, hh.currency, hh.doc_type, hh.due_date, hh.paid_date, hh.found IS NOT NULL AS header_found';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency,'
            ' (%s)::text AS doc_type, (%s)::date AS due_date, (%s)::date AS paid_date, true AS found'
            ' FROM %s %s h WHERE h.%I %s s.%I%s) hh ON true',
            a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
            coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'),
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = hdr_rel) = 'p' THEN '' ELSE 'ONLY' END,
            hdr_rel, a.header_match_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.header_key_column)::regtype),
            a.header_key_column, same_customer);
    END IF;
    -- the product line from the product table: the row of the line's product
    -- (by the key type's own equality), or its earlier line in force on the
    -- document's date (loyalty.product_history, matched by the key's text
    -- form), as the trigger looks them up (src/product.c)
    IF a.product IS NOT NULL THEN
        pl := 'CASE WHEN ph.found THEN ph.product_line ELSE pp.product_line END';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS product_line, (p.%I)::text AS product_key'
            ' FROM %s %s p WHERE p.%I %s s.%I) pp ON true'
            ' LEFT JOIN LATERAL (SELECT x.product_line, true AS found FROM @extschema@.product_history x'
            ' WHERE x.attachment_id OPERATOR(pg_catalog.=) %s'
            ' AND x.product_key OPERATOR(pg_catalog.=) coalesce(pp.product_key, (s.%I)::text)'
            ' AND x.valid_until OPERATOR(pg_catalog.>) %s ORDER BY x.valid_until LIMIT 1) ph ON true',
            a.product_line_expr, a.product_id_column,
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.product) = 'p' THEN '' ELSE 'ONLY' END,
            a.product, a.product_id_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.line_product_column)::regtype),
            a.line_product_column, a.attachment_id, a.line_product_column,
            CASE WHEN a.header IS NULL THEN format('(%s)::date', a.date_expr) ELSE 'hh.doc_date' END);
    ELSE
        pl := format('(%s)::text', coalesce(a.product_line_expr, 'NULL'));
    END IF;
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, %s AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  pl, from_clause);
END
$$;

COMMENT ON FUNCTION @extschema@._explain_shard(integer, text, text, text[], text) IS
    'Internal: explain_points of the rows of one account (NULL: of every account) of a Citus distributed table, on the node of its shard.';

-- ---------------------------------------------------------------------------
-- Point expiry on Citus: settlement expires each shard group's accounts on
-- its node, over the co-located shards.  The expiry statements take their
-- tables as arguments (loyalty's own on one server); _expiry_threshold goes
-- (its one use is _expiry_settings now).
-- ---------------------------------------------------------------------------
-- What must expire at cutoff, per account with something to expire (account
-- NULL: every account of the program), from the given tables: loyalty's
-- own, or on a Citus worker their co-located shards (_settle_shard).  The
-- accrued months are loyalty.accrual_month's query over folded and delta.
-- Reads in the caller's snapshot.  $1 program, $2 account, $3 threshold,
-- $4 the program's time zone, $5 whether a rule caps points.
CREATE FUNCTION @extschema@._expiry_due_in(program_id integer, account text, threshold date, zone text, capped boolean,
                                           ledger regclass, folded regclass, delta regclass)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format($q$
    WITH other AS (
        -- the entries that are not accrual: credits by posting month, debits
        SELECT l.account_key,
               pg_catalog.date_trunc('month', l.posted_at AT TIME ZONE $4)::date AS month,
               l.kind OPERATOR(pg_catalog.=) ANY ('{redeem,expire}'::@extschema@.ledger_kind[])
                   OR l.points OPERATOR(pg_catalog.<) 0 AS debit,
               l.points
        FROM %1$s l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
          AND l.points OPERATOR(pg_catalog.<>) 0
          AND l.kind OPERATOR(pg_catalog.<>) ALL ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[])
          AND NOT (l.kind OPERATOR(pg_catalog.=) 'bonus' AND l.attachment_id IS NOT NULL)),
    accrued AS (
        -- loyalty.accrual_month: per account, table and document month
        SELECT a.account_key, a.month, pg_catalog.sum(a.points)::bigint AS points
        FROM (SELECT v.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows
              FROM %2$s v, ROWS FROM (pg_catalog.unnest(v.m_month), pg_catalog.unnest(v.m_attachment),
                                      pg_catalog.unnest(v.m_points), pg_catalog.unnest(v.m_qualifying),
                                      pg_catalog.unnest(v.m_source_rows)) AS x(month, attachment_id, points, qualifying, source_rows)
              WHERE v.program_id OPERATOR(pg_catalog.=) $1
                AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)
              UNION ALL
              SELECT v.account_key, x.month, x.attachment_id, x.points, x.qualifying, x.source_rows
              FROM %3$s v, ROWS FROM (pg_catalog.unnest(v.m_month), pg_catalog.unnest(v.m_attachment),
                                      pg_catalog.unnest(v.m_points), pg_catalog.unnest(v.m_qualifying),
                                      pg_catalog.unnest(v.m_source_rows)) AS x(month, attachment_id, points, qualifying, source_rows)
              WHERE v.program_id OPERATOR(pg_catalog.=) $1
                AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key)) a
        GROUP BY a.account_key, a.attachment_id, a.month
        HAVING pg_catalog.sum(a.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(a.qualifying) OPERATOR(pg_catalog.<>) 0
            OR pg_catalog.sum(a.source_rows) OPERATOR(pg_catalog.<>) 0),
    series AS (
        SELECT u.account_key, u.month, pg_catalog.sum(u.acc)::bigint AS acc, pg_catalog.sum(u.cred)::bigint AS cred
        FROM (SELECT m.account_key, m.month, m.points AS acc, 0::bigint AS cred FROM accrued m
              UNION ALL
              SELECT o.account_key, o.month, 0, o.points FROM other o WHERE NOT o.debit) u
        GROUP BY 1, 2),
    running AS (
        -- points earned up to each month, caps applied as the engine applies them
        SELECT s.account_key, s.month,
               CASE WHEN $5
                    THEN (SELECT coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(x.month), pg_catalog.array_agg(x.acc)), 0)
                          FROM series x
                          WHERE x.account_key OPERATOR(pg_catalog.=) s.account_key AND x.month OPERATOR(pg_catalog.<=) s.month)
                    ELSE pg_catalog.sum(s.acc) OVER w END
               OPERATOR(pg_catalog.+) pg_catalog.sum(s.cred) OVER w AS total
        FROM series s
        WINDOW w AS (PARTITION BY s.account_key ORDER BY s.month)),
    old AS (
        SELECT r.account_key,
               LEAST((pg_catalog.array_agg(r.total ORDER BY r.month DESC) FILTER (WHERE r.month OPERATOR(pg_catalog.<) $3))[1],
                                pg_catalog.min(r.total) FILTER (WHERE r.month OPERATOR(pg_catalog.>=) $3)) AS earned
        FROM running r
        GROUP BY 1
        HAVING pg_catalog.bool_or(r.month OPERATOR(pg_catalog.<) $3)),
    spent AS (
        SELECT o.account_key, OPERATOR(pg_catalog.-) pg_catalog.sum(o.points) AS consumed
        FROM other o WHERE o.debit GROUP BY 1)
    SELECT o.account_key::text, (o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0))::bigint
    FROM old o LEFT JOIN spent s ON s.account_key OPERATOR(pg_catalog.=) o.account_key
    WHERE o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0) OPERATOR(pg_catalog.>) 0$q$, ledger, folded, delta)
    USING program_id, account, threshold, zone, capped;
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_due_in(integer, text, date, text, boolean, regclass, regclass, regclass) IS
    'Internal: the points that must expire before the threshold month, per account of a program (or of one account), by the FIFO closed form, from the given ledger and balance tables (loyalty''s, or their co-located shards on a Citus worker).';

REVOKE ALL ON FUNCTION @extschema@._expiry_due_in(integer, text, date, text, boolean, regclass, regclass, regclass) FROM PUBLIC;

-- The program's expiry settings as of a cutoff: the threshold month (NULL:
-- points never expire), its time zone, whether a rule caps points; from
-- the given program and rule tables (on a Citus worker, their placements).
CREATE FUNCTION @extschema@._expiry_settings(program_id integer, cutoff date, program_table regclass, rule_table regclass,
                                             OUT threshold date, OUT zone text, OUT capped boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE pg_catalog.format('SELECT pg_catalog.date_trunc(''month'', ($2 OPERATOR(pg_catalog.-) p.point_lifetime))::date,'
                              ' p.time_zone, EXISTS (SELECT FROM %2$s r WHERE r.program_id OPERATOR(pg_catalog.=) $1'
                              '                      AND r.cap_points IS NOT NULL)'
                              ' FROM %1$s p WHERE p.program_id OPERATOR(pg_catalog.=) $1', program_table, rule_table)
        INTO threshold, zone, capped USING program_id, cutoff;
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_settings(integer, date, regclass, regclass) IS
    'Internal: a program''s expiry threshold at a cutoff (NULL: its points never expire), its time zone and whether a rule caps points, from the given program and rule tables.';

REVOKE ALL ON FUNCTION @extschema@._expiry_settings(integer, date, regclass, regclass) FROM PUBLIC;

-- What must expire at cutoff, per account with something to expire (account
-- NULL: every account of the program).  Reads loyalty's tables only, in the
-- caller's snapshot.
CREATE OR REPLACE FUNCTION @extschema@._expiry_due(program_id integer, cutoff date, account text)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    e record := @extschema@._expiry_settings($1, $2, '@extschema@.program', '@extschema@.rule');
BEGIN
    IF e.threshold IS NULL THEN
        RETURN;                 -- points of this program never expire
    END IF;
    RETURN QUERY SELECT * FROM @extschema@._expiry_due_in($1, $3, e.threshold, e.zone, e.capped,
                                                          '@extschema@.ledger', '@extschema@.balance_folded',
                                                          '@extschema@.balance_delta');
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_due(integer, date, text) IS
    'Internal: the points that must expire at cutoff (a period end, exclusive), per account of a program (or of one account), by the FIFO closed form; accounts with nothing to expire are left out.';

-- Settlement's expiry: one expire entry per account with points older than
-- the lifetime at cutoff, in the given tables (loyalty's, or on a Citus
-- worker one shard group: _settle_shard).  Idempotent by construction: the
-- entries it posts count as consumed, so a second call at the same cutoff
-- finds nothing due.  Each account is locked as a debit is (its next debit
-- number, in ascending key order, in one statement), and what is due is
-- computed in the next statement: a redemption committed meanwhile is seen,
-- one that comes later waits and then sees the expiry, so neither can spend
-- the points of the other.  The entries have the exact shape of _post's,
-- written in one statement per table.
CREATE FUNCTION @extschema@._settle_expiry_in(program_id integer, cutoff date, threshold date, zone text, capped boolean,
                                              account_table regclass, ledger regclass, folded regclass, delta regclass)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked text[];
    total bigint;
BEGIN
    EXECUTE pg_catalog.format($q$
    WITH due AS (SELECT d.account_key FROM @extschema@._expiry_due_in($1, NULL, $2, $3, $4, $5, $6, $7) d),
    lock AS (
        SELECT a.account_key FROM %1$s a
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key IN (SELECT due.account_key::@extschema@.account_key FROM due)
        ORDER BY a.account_key
        FOR NO KEY UPDATE OF a),
    numbered AS (
        UPDATE %1$s a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
        FROM lock k
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.account_key
        RETURNING a.account_key)
    SELECT pg_catalog.array_agg(n.account_key::text) FROM numbered n$q$, account_table)
    INTO locked USING program_id, threshold, zone, capped, ledger, folded, delta;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: every debit of these accounts that
    -- committed before the lock is counted
    EXECUTE pg_catalog.format($q$
    WITH due AS (
        SELECT d.account_key, d.points, @extschema@._ledger_number() AS n
        FROM @extschema@._expiry_due_in($1, NULL, $2, $3, $4, $5, $6, $7) d
        JOIN pg_catalog.unnest($8) k(account_key) ON k.account_key OPERATOR(pg_catalog.=) d.account_key),
    entries AS (
        INSERT INTO %1$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                               member_id, corrects, corrects_xid, reason)
        SELECT $1, d.account_key::@extschema@.account_key, d.n, 'expire', OPERATOR(pg_catalog.-) d.points, 0, 0, NULL, NULL, NULL,
               pg_catalog.format('expiry at %%s: points of months before %%s', $9, $2)
        FROM due d
        RETURNING l.points),
    deltas AS (
        INSERT INTO %2$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
        SELECT $1, d.account_key::@extschema@.account_key, d.n, OPERATOR(pg_catalog.-) d.points, 0, 0, 1
        FROM due d
        RETURNING b.points)
    SELECT coalesce(OPERATOR(pg_catalog.-) pg_catalog.sum(e.points), 0)::bigint FROM entries e$q$, ledger, delta)
    INTO total USING program_id, threshold, zone, capped, ledger, folded, delta, locked, cutoff;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_expiry_in(integer, date, date, text, boolean, regclass, regclass, regclass, regclass) IS
    'Internal: settlement''s expiry at cutoff over the given tables (loyalty''s, or one shard group on a Citus worker): posts one expire entry per account whose points are older than the threshold month, oldest points consumed first; returns the points expired.';

REVOKE ALL ON FUNCTION @extschema@._settle_expiry_in(integer, date, date, text, boolean, regclass, regclass, regclass, regclass) FROM PUBLIC;

-- On Citus: a settlement step that posts to accounts (expiry, rebates,
-- rebate_estimates, mdf) on every shard group, each on its node; period_end
-- as the step takes it (exclusive for expiry and rebates, the estimate's
-- day, inclusive for mdf), period_start for mdf (NULL for the others).
CREATE FUNCTION @extschema@._settle_shards(step text, program_id integer, period_start date, period_end date) RETURNS numeric
AS 'MODULE_PATHNAME', 'loyalty_settle_shards' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._settle_shards(text, integer, date, date) IS
    'Internal: a settlement step that posts to accounts (expiry, rebates, rebate_estimates, mdf) on a Citus cluster: one routed call of _settle_shard per shard of loyalty.account; returns what they posted, summed.';
CREATE FUNCTION @extschema@._settle_shard(step text, program_id integer, period_start date, period_end date, shard text) RETURNS numeric
AS 'MODULE_PATHNAME', 'loyalty_settle_shard' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._settle_shard(text, integer, date, date, text) IS
    'Internal: a settlement step for the accounts of one shard of loyalty.account, on its Citus node, over the co-located shards.';
REVOKE ALL ON FUNCTION @extschema@._settle_shards(text, integer, date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._settle_shard(text, integer, date, date, text) FROM PUBLIC;

-- Whether loyalty.distribute() made loyalty's tables Citus tables: the
-- settlement steps take their Citus form then (statements Citus pushes
-- down, or one routed call per shard group).  pg_dist_partition is read
-- through EXECUTE: it exists only where Citus is installed.
CREATE FUNCTION @extschema@._distributed() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    distributed boolean := false;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus')
       AND pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1)'
           INTO distributed USING '@extschema@.balance_delta'::pg_catalog.regclass;
    END IF;
    RETURN distributed;
END
$$;
COMMENT ON FUNCTION @extschema@._distributed() IS
'Internal: whether loyalty.distribute() has made loyalty''s account-scoped tables Citus distributed tables.';
REVOKE ALL ON FUNCTION @extschema@._distributed() FROM PUBLIC;

-- Settlement's expiry at period_end (exclusive).  On Citus each shard group
-- expires its own accounts on its node (_settle_shards): an account's
-- ledger, balance rows and account row are all in its shard group, and the
-- locks, the wait for redemptions and the entries' transaction ids are that
-- node's, as for a redemption there.
CREATE OR REPLACE FUNCTION @extschema@._settle_expiry(program_id integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record := @extschema@._expiry_settings($1, $3, '@extschema@.program', '@extschema@.rule');
BEGIN
    IF e.threshold IS NULL THEN
        RETURN 0;               -- no lifetime: points never expire
    END IF;
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards('expiry', $1, NULL, $3)::bigint;
    END IF;
    RETURN @extschema@._settle_expiry_in($1, $3, e.threshold, e.zone, e.capped, '@extschema@.account',
                                         '@extschema@.ledger', '@extschema@.balance_folded', '@extschema@.balance_delta');
END
$$;
COMMENT ON FUNCTION @extschema@._settle_expiry(integer, date, date) IS
    'Internal: settlement''s expiry at period_end (exclusive): posts one expire entry per account whose points are older than the program''s point_lifetime, oldest points consumed first; returns the points expired. Idempotent: a second call at the same cutoff posts nothing. On Citus, each shard group on its node.';

DROP FUNCTION @extschema@._expiry_threshold(integer, date);

-- ---------------------------------------------------------------------------
-- Rebates on Citus: the estimate and settlement's rebate pass run on each
-- shard group's node over the co-located shards (_rebates_in, one statement
-- over tables given as arguments; _settle_shards routes it), like expiry.
-- The settlement steps ask _distributed() whether the tables are Citus's.
-- ---------------------------------------------------------------------------
DROP FUNCTION @extschema@._write_settlement_lines(integer, date, text[], text[], date[], date[], numeric[], numeric[], numeric[], numeric[], integer[]);
DROP FUNCTION @extschema@._rebate_periods(integer, date, boolean);
DROP FUNCTION @extschema@._post_rebates(integer, text[], numeric[], text[]);

-- The rebate pass over the given tables: loyalty's own on one server, or
-- on a Citus worker one shard group (settle_shards.c), with this node's
-- placements of the reference tables.  Settling (estimate false): every
-- agreement period that ends by to_end gets its settlement line when it has
-- none yet (final on the volume now; the true-up final - accrued posted),
-- and an adjustment line when its final rebate on the volume now differs
-- from its last line's.  Estimating (estimate true): every open period
-- (started by to_end, not settled) gets the rebate on its volume so far
-- minus what is already posted for it.  A period with no volume and
-- nothing posted needs nothing.  One statement, in the caller's snapshot
-- (taken after the caller's lock): one grouped pass over the volumes
-- (loyalty.accrual_month's query over folded and delta, and the
-- product-line buckets), the postings and the lines, no join between them
-- (each row of every source is a fact of its period); then each posting
-- with the exact shape of _post's (one ledger entry and one balance delta,
-- numbered in the transaction in key order), its rebate_posting row and,
-- when settling, its settlement line.  A segment's accounts are its
-- members now; an account that left the segment keeps the periods it
-- already has postings or lines for.  Returns the money posted.
CREATE FUNCTION @extschema@._rebates_in(program_id integer, to_end date, estimate boolean,
                                        agreement_table regclass, program_table regclass, account_table regclass,
                                        posting_table regclass, line_table regclass, folded regclass, delta regclass,
                                        line_volume_table regclass, ledger regclass)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    EXECUTE pg_catalog.format($q$
WITH ag AS (
    SELECT g.agreement_id, g.account_key, g.cooperation_model, g.region, g.industry, g.schedule, g.period,
           g.product_lines, pg_catalog.date_trunc('month', g.valid_from)::date AS first_month, g.valid_until,
           CASE g.period WHEN 'month' THEN interval '1 month' WHEN 'quarter' THEN interval '3 months'
                         ELSE interval '1 year' END AS step
    FROM %1$s g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1),
known AS (
    SELECT r.agreement_id, r.account_key, r.period_start, r.amount AS accrued, NULL::numeric AS final, NULL::integer AS adj
    FROM %4$s r WHERE r.program_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT s.agreement_id, s.account_key, s.period_start, 0, s.final, s.adjustment_no
    FROM %5$s s WHERE s.program_id OPERATOR(pg_catalog.=) $1),
pairs AS (
    SELECT u.agreement_id, u.account_key, pg_catalog.bool_or(u.member) AS member
    FROM (SELECT ag.agreement_id, a.account_key, true AS member
          FROM ag JOIN %3$s a
            ON a.program_id OPERATOR(pg_catalog.=) $1
           AND (ag.account_key IS NULL OR a.account_key OPERATOR(pg_catalog.=) ag.account_key)
           AND (ag.cooperation_model IS NULL OR a.cooperation_model OPERATOR(pg_catalog.=) ag.cooperation_model)
           AND (ag.region IS NULL OR a.region OPERATOR(pg_catalog.=) ag.region)
           AND (ag.industry IS NULL OR a.industry OPERATOR(pg_catalog.=) ag.industry)
          UNION ALL
          SELECT k.agreement_id, k.account_key, false FROM known k) u
    GROUP BY 1, 2),
-- loyalty.accrual_month's rows (per attachment), over folded and delta
months AS (
    SELECT u.account_key, u.month, pg_catalog.sum(u.qualifying) AS qualifying
    FROM (SELECT b.account_key, x.attachment_id, x.month, x.points, x.qualifying, x.source_rows
          FROM %6$s b,
               ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                          pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
                   AS x(month, attachment_id, points, qualifying, source_rows)
          WHERE b.program_id OPERATOR(pg_catalog.=) $1
          UNION ALL
          SELECT d.account_key, x.attachment_id, x.month, x.points, x.qualifying, x.source_rows
          FROM %7$s d,
               ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points),
                          pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))
                   AS x(month, attachment_id, points, qualifying, source_rows)
          WHERE d.program_id OPERATOR(pg_catalog.=) $1) u
    GROUP BY u.account_key, u.attachment_id, u.month
    HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0
        OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0),
-- the spend of every product line for unscoped agreements, the scoped
-- lines' buckets (rebate_line_volume) for the others
volumes AS (
    SELECT m.account_key, m.month, m.qualifying, NULL::text AS product_line FROM months m
    UNION ALL
    SELECT v.account_key, v.month, v.qualifying, v.product_line
    FROM %8$s v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND v.product_line IS NOT NULL),
facts AS (
    SELECT ag.agreement_id, x.account_key, pg_catalog.date_trunc(ag.period, x.month)::date AS period_start,
           x.qualifying AS volume, 0 AS accrued, NULL::numeric AS final, NULL::integer AS adj, p.member, false AS known
    FROM volumes x
    JOIN pairs p ON p.account_key OPERATOR(pg_catalog.=) x.account_key
    JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) p.agreement_id
    WHERE x.month OPERATOR(pg_catalog.>=) ag.first_month
      AND CASE WHEN ag.product_lines IS NULL THEN x.product_line IS NULL
               ELSE x.product_line OPERATOR(pg_catalog.=) ANY (ag.product_lines) END
      AND (ag.valid_until IS NULL OR x.month OPERATOR(pg_catalog.<) ag.valid_until)
      -- an estimate counts the months up to to_end's (the volume so far)
      AND (NOT $3 OR x.month OPERATOR(pg_catalog.<=) $2)
    UNION ALL
    SELECT k.agreement_id, k.account_key, k.period_start, 0, k.accrued, k.final, k.adj, false, true FROM known k),
-- per agreement, account and period that has a volume, a posting or a
-- line (and starts by to_end when estimating, else ends by it)
periods AS (
    SELECT t.agreement_id, t.account_key, t.period_start, t.period_end, t.volume,
           pg_catalog.round(@extschema@.rebate(ag.schedule, GREATEST(t.volume, 0)), 2) AS final,
           t.accrued, t.last_final, t.adjustments
    FROM (SELECT f.agreement_id, f.account_key, f.period_start, (f.period_start OPERATOR(pg_catalog.+) ag.step)::date AS period_end,
                 pg_catalog.sum(f.volume) AS volume, pg_catalog.sum(f.accrued) AS accrued,
                 (pg_catalog.array_agg(f.final ORDER BY f.adj DESC) FILTER (WHERE f.adj IS NOT NULL))[1] AS last_final,
                 pg_catalog.max(f.adj) AS adjustments
          FROM facts f JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) f.agreement_id
          WHERE CASE WHEN $3 THEN f.period_start OPERATOR(pg_catalog.<=) $2
                     ELSE (f.period_start OPERATOR(pg_catalog.+) ag.step)::date OPERATOR(pg_catalog.<=) $2 END
          GROUP BY f.agreement_id, f.account_key, f.period_start, ag.step
          -- a member's periods with a volume, and every period already posted or settled
          HAVING pg_catalog.bool_or(f.member) OR pg_catalog.bool_or(f.known)) t
    JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) t.agreement_id),
-- what to post: the open periods' estimates; the settled periods' first
-- lines and the changed finals' adjustment lines
due AS (
    SELECT p.*, p.final OPERATOR(pg_catalog.-) p.accrued AS amount,
           coalesce(p.adjustments OPERATOR(pg_catalog.+) 1, 0) AS adjustment_no
    FROM periods p
    WHERE CASE WHEN $3 THEN p.adjustments IS NULL AND p.final OPERATOR(pg_catalog.<>) p.accrued
               WHEN p.adjustments IS NULL THEN p.final OPERATOR(pg_catalog.<>) 0 OR p.accrued OPERATOR(pg_catalog.<>) 0
               ELSE p.final OPERATOR(pg_catalog.<>) p.last_final END),
-- the document key is stable: the date in ISO form whatever the DateStyle
keyed AS (
    SELECT d.*, pg_catalog.format('LOY-%%s-%%s-%%s-%%s', $1, d.agreement_id, d.account_key, pg_catalog.to_char(d.period_end, 'YYYY-MM-DD'))
                OPERATOR(pg_catalog.||) CASE WHEN d.adjustment_no OPERATOR(pg_catalog.>) 0
                                             THEN '-ADJ-' OPERATOR(pg_catalog.||) d.adjustment_no ELSE '' END AS document_key
    FROM due d),
-- numbered in key order (a volatile target is computed after the sort)
numbered AS (
    SELECT k.*, CASE WHEN k.amount OPERATOR(pg_catalog.<>) 0 THEN @extschema@._ledger_number() END AS entry_no
    FROM keyed k
    ORDER BY k.account_key, k.agreement_id, k.period_end),
entries AS (
    INSERT INTO %9$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                           member_id, corrects, corrects_xid, reason)
    SELECT $1, n.account_key, n.entry_no, 'rebate', 0, n.amount, 0, NULL, NULL, NULL,
           CASE WHEN $3 THEN pg_catalog.format('rebate estimate %%s %%s %%s..%%s', n.agreement_id, n.account_key,
                                               pg_catalog.to_char(n.period_start, 'YYYY-MM-DD'), pg_catalog.to_char(n.period_end, 'YYYY-MM-DD'))
                WHEN n.adjustment_no OPERATOR(pg_catalog.>) 0 THEN 'rebate adjustment ' OPERATOR(pg_catalog.||) n.document_key
                ELSE 'rebate true-up ' OPERATOR(pg_catalog.||) n.document_key END
    FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO %7$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, n.account_key, n.entry_no, 0, n.amount, 0, 1 FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING b.delta_no),
postings AS (
    INSERT INTO %4$s AS r (program_id, account_key, agreement_id, period_end, entry_no, period_start, kind, volume, amount)
    SELECT $1, n.account_key, n.agreement_id, n.period_end, n.entry_no, n.period_start,
           CASE WHEN $3 THEN 'estimate' WHEN n.adjustment_no OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'trueup' END,
           n.volume, n.amount
    FROM numbered n WHERE n.entry_no IS NOT NULL
    RETURNING r.entry_no),
written AS (
    INSERT INTO %5$s AS x (program_id, account_key, agreement_id, period_end, adjustment_no, document_key, period_start,
                           volume, final, accrued, amount, credit_note, currency, settled_through, entry_no)
    SELECT $1, n.account_key, n.agreement_id, n.period_end, n.adjustment_no, n.document_key, n.period_start,
           n.volume, n.final, n.accrued, n.amount, n.final OPERATOR(pg_catalog.-) coalesce(n.last_final, 0),
           (SELECT p.currency FROM %2$s p WHERE p.program_id OPERATOR(pg_catalog.=) $1), $2, n.entry_no
    FROM numbered n WHERE NOT $3
    RETURNING x.entry_no)
SELECT coalesce(pg_catalog.sum(n.amount), 0) FROM numbered n$q$,
        agreement_table, program_table, account_table, posting_table, line_table, folded, delta, line_volume_table, ledger)
    INTO total USING program_id, to_end, estimate;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._rebates_in(integer, date, boolean, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass) IS
    'Internal: the rebate pass over the given tables (loyalty''s, or one shard group on a Citus worker): settling, the settlement line (and true-up) of every agreement period ending by to_end that has none and an adjustment line for every settled period whose final rebate changed; estimating, the estimate of every open period started by to_end. Returns the money posted.';
REVOKE ALL ON FUNCTION @extschema@._rebates_in(integer, date, boolean, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass) FROM PUBLIC;

-- The rebate pass of a program, on one server or on every shard group of
-- a Citus cluster (each on its node: _settle_shards).  The caller holds
-- the program's rebate lock.
CREATE FUNCTION @extschema@._rebates(program_id integer, to_end date, estimate boolean) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards(CASE WHEN estimate THEN 'rebate_estimates' ELSE 'rebates' END, $1, NULL, $2);
    END IF;
    RETURN @extschema@._rebates_in($1, $2, $3, '@extschema@.rebate_agreement', '@extschema@.program', '@extschema@.account',
                                   '@extschema@.rebate_posting', '@extschema@.settlement_line', '@extschema@.balance_folded',
                                   '@extschema@.balance_delta', '@extschema@.rebate_line_volume', '@extschema@.ledger');
END
$$;
COMMENT ON FUNCTION @extschema@._rebates(integer, date, boolean) IS
    'Internal: the rebate pass of a program (_rebates_in) over loyalty''s tables, or on Citus over every shard group on its node; returns the money posted.';
REVOKE ALL ON FUNCTION @extschema@._rebates(integer, date, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._settle_rebates(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), $1);
    -- no agreement, no rebate
    IF NOT EXISTS (SELECT FROM @extschema@.rebate_agreement g WHERE g.program_id OPERATOR(pg_catalog.=) $1) THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: after the lock
    RETURN @extschema@._rebates($1, $3, false);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.accrue_rebates(program text, as_of date DEFAULT NULL) RETURNS numeric
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    day date;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF as_of IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'as_of must be a finite date, not %', as_of
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'as_of is the day the estimate is made for: the periods open on it are estimated.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
                            FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
    IF NOT EXISTS (SELECT FROM @extschema@.rebate_agreement g WHERE g.program_id OPERATOR(pg_catalog.=) pid) THEN
        RETURN 0;
    END IF;
    RETURN @extschema@._rebates(pid, day, true);
END
$$;

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
    IF @extschema@._distributed() THEN
        -- On Citus (loyalty.distribute()), the same decision as below in a
        -- form Citus pushes down whole: every table it reads is distributed
        -- by account_key with settlement_account and joined on it, so the
        -- INSERT runs as one task per shard, on the node holding it.  The
        -- accounts are the union of the three sources (a FULL JOIN on a
        -- coalesce is not a join on the distribution column), each CTE
        -- read twice is inlined, and the margin grace counts the scaled
        -- thresholds with width_bucket instead of a correlated subquery.
        -- Action counts (tier_basis action, tier requirements) come from
        -- the co-located award shard, grouped by account; the requirements
        -- (a reference table) are passed as arrays and checked by
        -- _rank_meeting, a function of its arguments alone.
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
    -- approved actions in the window, per account: the actions and their counts
    acts AS NOT MATERIALIZED (
        SELECT c.account_key, array_agg(c.action) AS actions, array_agg(c.n) AS counts
        FROM (SELECT w.account_key, w.action, sum(w.quantity)::bigint AS n
              FROM @extschema@.award w
              WHERE w.program_id = $1 AND w.status = 'approved' AND w.action = ANY ($14)
                AND w.occurred_on >= $6 AND w.occurred_on <= $4
              GROUP BY w.account_key, w.action) c
        GROUP BY c.account_key),
    keys AS (
        SELECT x.account_key FROM @extschema@.account x WHERE x.program_id = $1
        UNION SELECT m.account_key FROM m
        UNION SELECT prev.account_key FROM prev),
    base AS (
        SELECT k.account_key, a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE $9 WHEN 'points' THEN coalesce(m.p_window, 0)
                       WHEN 'action' THEN coalesce(ac.counts[array_position(ac.actions, $15)], 0)
                       ELSE coalesce(m.q_window, 0) END AS measure,
               ac.actions, ac.counts,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted,
               x.account_key IS NOT NULL AS reached
        FROM keys k
             LEFT JOIN @extschema@.account a ON a.program_id = $1 AND a.account_key = k.account_key
             LEFT JOIN m ON m.account_key = k.account_key
             LEFT JOIN prev pv ON pv.account_key = k.account_key
             LEFT JOIN acts ac ON ac.account_key = k.account_key
             LEFT JOIN @extschema@.tier_grant g ON g.program_id = $1 AND g.account_key = a.account_key
             LEFT JOIN (SELECT h.account_key, h.new_tier FROM @extschema@.tier_history h
                         WHERE h.program_id = $1 AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= $5
                         GROUP BY h.account_key, h.new_tier) x
                    ON x.account_key = k.account_key AND x.new_tier = a.tier),
    ranked AS (
        SELECT b.*, array_position($7, b.tier) AS cur_rank,
               CASE WHEN $19 THEN @extschema@._rank_meeting($8, b.measure, $16, $17, $18, b.actions, b.counts)
                    ELSE coalesce(@extschema@.tier_rank($10, b.measure), 0) END AS q_rank,
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
                   FROM unnest(thresholds) WITH ORDINALITY AS l(t, i)),
                  ARRAY(SELECT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid
                        UNION SELECT prog.tier_action WHERE prog.tier_action IS NOT NULL),
                  prog.tier_action,
                  ARRAY(SELECT array_position(names, r.tier) FROM @extschema@.tier_requirement r
                        WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  ARRAY(SELECT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  ARRAY(SELECT r.min_count FROM @extschema@.tier_requirement r WHERE r.program_id = pid ORDER BY r.tier, r.action),
                  has_req;
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
                                                   WHERE c.account_key = coalesce(a.account_key, m.account_key, pv.account_key)::text
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
                                                                     WHERE c.account_key = b.account_key::text AND c.action = r.action), 0)
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
BEGIN
    IF @extschema@._distributed() THEN
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

-- Tiers on action counts at settlement on Citus: the pushed-down decision
-- counts the co-located awards and checks the requirements with _rank_meeting.
-- The highest tier (its rank, 0: none) whose threshold a measure reaches
-- and all of whose action requirements an account meets, from arguments
-- alone: the requirements (rank, action, minimum count) and the account's
-- approved actions with their counts.  Citus runs it inside the pushed-down
-- settlement, where a function may not read tables.
CREATE FUNCTION @extschema@._rank_meeting(thresholds numeric[], measure numeric, req_ranks integer[], req_actions text[],
                                          req_mins bigint[], actions text[], counts bigint[])
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce(max(l.rank), 0)::integer
FROM unnest(thresholds) WITH ORDINALITY AS l(threshold, rank)
WHERE l.threshold <= measure
  AND NOT EXISTS (SELECT FROM unnest(req_ranks, req_actions, req_mins) AS r(rank, action, min_count)
                  WHERE r.rank = l.rank AND coalesce(counts[array_position(actions, r.action)], 0) < r.min_count)
$$;
COMMENT ON FUNCTION @extschema@._rank_meeting(numeric[], numeric, integer[], text[], bigint[], text[], bigint[]) IS
    'Internal: the highest tier rank whose threshold the measure reaches and whose action requirements (given as arrays) the account''s action counts meet; 0 if none.';
REVOKE ALL ON FUNCTION @extschema@._rank_meeting(numeric[], numeric, integer[], text[], bigint[], text[], bigint[]) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- MDF credits at settlement run in one statement over tables given as
-- arguments (_mdf_in), on one server or on each Citus shard group's node
-- (_settle_shards).  The rate is that of the tier held on the period's last
-- day: an account that lost its tier no longer earns at its first tier's
-- rate (_mdf_rate, which did, goes).
-- ---------------------------------------------------------------------------
-- Settlement's MDF credit over the given tables: loyalty's own on one
-- server, or on a Citus worker one shard group (settle_shards.c), with this
-- node's placements of the reference tables.  Per account, the qualifying
-- spend of the document months from period_start's to period_end's (both
-- days included; loyalty.accrual_month's sums over folded and delta) times
-- the mdf_rate benefit of the tier it holds on period_end: the last tier
-- change in effect that day (none: no rate), or before its first change
-- its first recorded tier (a period settled before the tier it decided
-- takes effect).  Rounded to cents; accounts already credited for the
-- period are skipped.  One statement; each credit with the exact shape of
-- _post's (one ledger entry and one balance delta, numbered in key order)
-- and its mdf_accrual row.  Returns the total credited.
CREATE FUNCTION @extschema@._mdf_in(program_id integer, period_start date, period_end date,
                                    benefit_table regclass, history_table regclass, folded regclass, delta regclass,
                                    accrual_table regclass, ledger regclass)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    EXECUTE pg_catalog.format($q$
WITH spend AS (
    SELECT u.account_key, pg_catalog.sum(u.qualifying) AS spend
    FROM (SELECT b.account_key, x.month, x.qualifying
          FROM %3$s b, ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_qualifying)) AS x(month, qualifying)
          WHERE b.program_id OPERATOR(pg_catalog.=) $1
          UNION ALL
          SELECT d.account_key, x.month, x.qualifying
          FROM %4$s d, ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_qualifying)) AS x(month, qualifying)
          WHERE d.program_id OPERATOR(pg_catalog.=) $1) u
    WHERE u.month OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('month', $2)::date AND u.month OPERATOR(pg_catalog.<=) $3
    GROUP BY u.account_key),
-- the tier on period_end: the last change in effect, else the first one's
held AS (
    SELECT h.account_key,
           CASE WHEN pg_catalog.bool_or(h.effective_from OPERATOR(pg_catalog.<=) $3)
                THEN (pg_catalog.array_agg(h.new_tier ORDER BY h.effective_from DESC, h.change_no DESC)
                        FILTER (WHERE h.effective_from OPERATOR(pg_catalog.<=) $3))[1]
                ELSE (pg_catalog.array_agg(h.new_tier ORDER BY h.effective_from, h.change_no))[1] END AS tier
    FROM %2$s h
    WHERE h.program_id OPERATOR(pg_catalog.=) $1
    GROUP BY h.account_key),
due AS (
    SELECT s.account_key, s.spend, r.rate,
           pg_catalog.round(GREATEST(s.spend, 0) OPERATOR(pg_catalog.*) r.rate, 2) AS amount
    FROM spend s
    JOIN held t ON t.account_key OPERATOR(pg_catalog.=) s.account_key
    JOIN LATERAL (SELECT b.value::numeric AS rate FROM %1$s b
                  WHERE b.program_id OPERATOR(pg_catalog.=) $1 AND b.benefit OPERATOR(pg_catalog.=) 'mdf_rate'
                    AND b.tier OPERATOR(pg_catalog.=) t.tier) r ON true
    WHERE NOT EXISTS (SELECT FROM %5$s a
                      WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) s.account_key
                        AND a.period_end OPERATOR(pg_catalog.=) $3)),
-- numbered in key order (a volatile target is computed after the sort)
numbered AS (
    SELECT d.*, @extschema@._ledger_number() AS entry_no
    FROM due d WHERE d.amount OPERATOR(pg_catalog.>) 0
    ORDER BY d.account_key),
entries AS (
    INSERT INTO %6$s AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                           member_id, corrects, corrects_xid, reason)
    SELECT $1, n.account_key, n.entry_no, 'mdf', 0, 0, n.amount, NULL, NULL, NULL,
           pg_catalog.format('mdf accrual %%s..%%s', pg_catalog.to_char($2, 'YYYY-MM-DD'), pg_catalog.to_char($3, 'YYYY-MM-DD'))
    FROM numbered n
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO %4$s AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, n.account_key, n.entry_no, 0, 0, n.amount, 1 FROM numbered n
    RETURNING b.delta_no),
credited AS (
    INSERT INTO %5$s AS a (program_id, account_key, period_end, period_start, spend, rate, amount, entry_no)
    SELECT $1, n.account_key, $3, $2, n.spend, n.rate, n.amount, n.entry_no FROM numbered n
    RETURNING a.amount)
SELECT coalesce(pg_catalog.sum(c.amount), 0) FROM credited c$q$,
        benefit_table, history_table, folded, delta, accrual_table, ledger)
    INTO total USING program_id, period_start, period_end;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._mdf_in(integer, date, date, regclass, regclass, regclass, regclass, regclass, regclass) IS
'Internal: settlement''s MDF credit over the given tables (loyalty''s, or one shard group on a Citus worker): per account, the qualifying spend of the document months from period_start''s to period_end''s times the mdf_rate benefit of its tier on period_end, rounded to cents, posted once per period. Returns the total credited.';
REVOKE ALL ON FUNCTION @extschema@._mdf_in(integer, date, date, regclass, regclass, regclass, regclass, regclass, regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF period_start IS NULL OR period_end IS NULL OR period_end < period_start THEN
        RAISE EXCEPTION 'MDF period [%, %] is empty', period_start, period_end
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period_start and period_end are the period''s first and last days, both included (as loyalty.settle passes them).',
                  HINT = 'Give period_start <= period_end.';
    END IF;
    -- no tier of the program has an MDF rate: nothing to credit, without
    -- summing every account's spend and looking up its tier to find that out
    IF NOT EXISTS (SELECT FROM @extschema@.tier_benefit b
                   WHERE b.program_id = $1 AND b.benefit = 'mdf_rate') THEN
        RETURN 0;
    END IF;
    IF @extschema@._distributed() THEN
        RETURN @extschema@._settle_shards('mdf', $1, $2, $3);
    END IF;
    RETURN @extschema@._mdf_in($1, $2, $3, '@extschema@.tier_benefit', '@extschema@.tier_history', '@extschema@.balance_folded',
                               '@extschema@.balance_delta', '@extschema@.mdf_accrual', '@extschema@.ledger');
END
$$;
COMMENT ON FUNCTION @extschema@._settle_mdf(integer, date, date) IS
'Internal: credits the MDF wallets for a settlement period (called by loyalty.settle): per account, the qualifying spend of the document months from period_start''s to period_end''s (both days included) times the MDF rate of its tier at period_end, rounded to cents; accounts already credited for the period are skipped (loyalty._mdf_in; on Citus on each shard group''s node). Returns the total credited.';

DROP FUNCTION @extschema@._mdf_rate(integer, text, date);
-- ---------------------------------------------------------------------------
-- The writes of one account that an operator or a portal calls (MDF claims
-- and their decisions, cancel_redemption, award and its decisions) run
-- their account part, loyalty._<step>_in(program, account, args), through
-- loyalty._on_account_node (src/account_calls.c): on one server right
-- there, on Citus routed to the node holding the account's shard group,
-- where it posts with that node's transaction ids (src/sql/45_postings.sql,
-- 60_rewards.sql, 61_actions.sql, 63_mdf.sql).  _post and _lock_for_debit
-- become C (src/postings.c: a plan per backend and shard), _post_member
-- addresses member_points through loyalty._table.  A call Citus sent into
-- a query on a shard is refused (_refuse_shard_query).
-- _decide_award and _decide_mdf_claim now return the status.
-- ---------------------------------------------------------------------------
DROP FUNCTION @extschema@._decide_award(uuid, boolean, text);
DROP FUNCTION @extschema@._decide_mdf_claim(uuid, boolean, text);
CREATE OR REPLACE FUNCTION @extschema@._table(name text) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_table_name' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._table(text) IS
'Internal: loyalty''s table of that name as the account steps address it (loyalty.<name>; inside _account_shard on a Citus worker, its shard co-located with the account''s, or this node''s placement of a reference table), quoted for a statement.';

CREATE OR REPLACE FUNCTION @extschema@._on_account_node(step text, program_id integer, account_key text, args text[]) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_on_account_node' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._on_account_node(text, integer, text, text[]) IS
'Internal: runs loyalty._<step>_in(program_id, account_key, args) (steps claim_mdf, decide_mdf_claim, cancel_redemption, award, decide_award) on the node holding the account''s rows: here on one server, on Citus in one query routed to the account''s shard of loyalty.account (_account_shard); returns its result as text.';

CREATE OR REPLACE FUNCTION @extschema@._account_shard(step text, program_id integer, account_key text, args text[], shard text) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_account_shard_call' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._account_shard(text, integer, text, text[], text) IS
'Internal: on a Citus worker, inside the query _on_account_node routed there, loyalty._<step>_in over the shards co-located with the given shard of loyalty.account; returns its result as text.';

CREATE OR REPLACE FUNCTION @extschema@._refuse_shard_query(fn text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('application_name') LIKE 'citus\_internal gpid=%' THEN
        RAISE EXCEPTION '% cannot run inside a query on a Citus shard', fn
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Citus sent the call to a worker with a query over one of loyalty''s distributed tables; the call finds its account and sends the account''s part to its node itself.',
                  HINT = 'Read the ids first (a temporary table, \gset, the application), then call it in a statement of its own, e.g. SELECT loyalty.approve_award(award_id) FROM my_ids.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_shard_query(text) IS
'Internal: refuses (0A000) a call of fn that Citus sent to a worker inside a query on a shard, where the account steps cannot run.';

CREATE OR REPLACE FUNCTION @extschema@._post(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    rebate       numeric DEFAULT 0,
    mdf          numeric DEFAULT 0,
    member_id    text DEFAULT NULL,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_post' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION @extschema@._lock_for_debit(program_id integer, account_key text) RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_lock_for_debit' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION @extschema@._post_member(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    member_id    text,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._post($1, $2, $3, $4, $5, member_id => $6, corrects_xid => $7, corrects => $8);
BEGIN
    IF n IS NOT NULL AND $6 IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'INSERT INTO %s AS m (program_id, account_key, member_id, points, earned, spent, entry_count)'
            ' VALUES ($1, $2::@extschema@.account_key, $3, $4,'
            '         CASE WHEN $5 OPERATOR(pg_catalog.<>) ''redeem'' THEN $4 ELSE 0 END,'
            '         CASE WHEN $5 OPERATOR(pg_catalog.=) ''redeem'' THEN OPERATOR(pg_catalog.-) $4 ELSE 0 END, 1)'
            ' ON CONFLICT (program_id, account_key, member_id) DO UPDATE'
            ' SET points = m.points OPERATOR(pg_catalog.+) excluded.points,'
            '     earned = m.earned OPERATOR(pg_catalog.+) excluded.earned,'
            '     spent = m.spent OPERATOR(pg_catalog.+) excluded.spent,'
            '     entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = excluded.updated_at',
            @extschema@._table('member_points'))
        USING $1, $2, $6, $4, $3;
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._mdf_wallet(program_id integer, account_key text) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wallet numeric;
BEGIN
    EXECUTE pg_catalog.format(
        'SELECT coalesce(pg_catalog.sum(u.mdf), 0) FROM'
        ' (SELECT f.mdf FROM %s f WHERE f.program_id OPERATOR(pg_catalog.=) $1 AND f.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
        '  UNION ALL'
        '  SELECT d.mdf FROM %s d WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND d.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key) u',
        @extschema@._table('balance_folded'), @extschema@._table('balance_delta'))
    INTO wallet USING $1, $2;
    RETURN wallet;
END
$$;
COMMENT ON FUNCTION @extschema@._mdf_wallet(integer, text) IS
'Internal: the MDF money of an account (folded balance plus the deltas not folded yet), over loyalty''s tables or, on a Citus worker, the account''s shards.';

CREATE OR REPLACE FUNCTION @extschema@._claim_mdf_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    amount numeric := args[1]::numeric;
    purpose text := args[2];
    reference text := args[3];
    claims text := @extschema@._table('mdf_claim');
    no bigint;
    prior_id uuid;
    prior_amount numeric;
    prior_purpose text;
    wallet numeric;
    reserved numeric;
    id uuid;
BEGIN
    no := @extschema@._lock_for_debit(program_id, account_key);
    PERFORM @extschema@._await_postings(program_id, account_key);
    IF reference IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT c.claim_id, c.amount, c.purpose FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                                  ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.reference OPERATOR(pg_catalog.=) $3',
                                  claims)
        INTO prior_id, prior_amount, prior_purpose USING program_id, account_key, reference;
        IF prior_id IS NOT NULL THEN
            IF prior_amount <> amount OR prior_purpose <> purpose THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already claimed for another amount or purpose', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It claimed %s for %s.', prior_amount, pg_catalog.quote_literal(prior_purpose)),
                          HINT = 'A reference names one claim; give a new claim its own reference.';
            END IF;
            RETURN prior_id;      -- the same claim again
        END IF;
    END IF;
    wallet := @extschema@._mdf_wallet(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT coalesce(pg_catalog.sum(c.amount), 0) FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.status OPERATOR(pg_catalog.=) ''pending''',
                              claims)
    INTO reserved USING program_id, account_key;
    IF wallet - reserved < amount THEN
        RAISE EXCEPTION 'account "%" has % of MDF available, % claimed', account_key, wallet - reserved, amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('The wallet holds %s, of which pending claims reserve %s; it never goes below zero.',
                                             wallet, reserved),
                  HINT = 'Nothing was claimed. Claim less, or after the next settlement credits the wallet.';
    END IF;
    EXECUTE pg_catalog.format('INSERT INTO %s AS c (program_id, account_key, claim_no, amount, purpose, reference)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6) RETURNING c.claim_id', claims)
    INTO id USING program_id, account_key, no, amount, purpose, reference;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._claim_mdf_in(integer, text, text[]) IS
'Internal: loyalty.claim_mdf''s account part (args: amount, purpose, reference) on the node holding the account: under its lock, once the postings in flight are in, returns the claim of the same reference or files a new one if the wallet less the pending claims covers it (LY001 otherwise).';

CREATE OR REPLACE FUNCTION @extschema@._decide_mdf_claim_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claim_no bigint := args[1]::bigint;
    claim_id uuid := args[2]::uuid;
    approve boolean := args[3]::boolean;
    claims text := @extschema@._table('mdf_claim');
    st text;
    amount numeric;
    purpose text;
    reference text;
    wallet numeric;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    PERFORM @extschema@._await_postings(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT c.status, c.amount, c.purpose, c.reference FROM %s c WHERE c.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND c.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND c.claim_no OPERATOR(pg_catalog.=) $3',
                              claims)
    INTO st, amount, purpose, reference USING program_id, account_key, claim_no;
    IF approve AND st = 'rejected' THEN
        RAISE EXCEPTION 'the MDF claim was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was rejected; a decision on a claim is final.', claim_id),
                  HINT = 'File a new claim if it is genuine.';
    ELSIF NOT approve AND st = 'approved' THEN
        RAISE EXCEPTION 'the MDF claim was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was paid from the wallet; a decision on a claim is final.', claim_id),
                  HINT = 'Nothing to do.';
    ELSIF st IS DISTINCT FROM 'pending' THEN
        RETURN st;              -- the same decision again
    END IF;
    IF approve THEN
        wallet := @extschema@._mdf_wallet(program_id, account_key);
        IF wallet < amount THEN
            RAISE EXCEPTION 'account "%" has % of MDF, the claim asks %', account_key, wallet, amount
                USING ERRCODE = 'LY001',
                      DETAIL = pg_catalog.format('Claim %s stays pending: the MDF wallet never goes below zero.', claim_id),
                      HINT = 'The claim stays pending: approve it after the next settlement credits the wallet, or reject it.';
        END IF;
        entry := @extschema@._post(program_id, account_key, 'mdf', 0,
                                   pg_catalog.format('mdf claim: %s', purpose) || coalesce(' ref ' || reference, ''),
                                   mdf => -amount);
    END IF;
    st := CASE WHEN approve THEN 'approved' ELSE 'rejected' END;
    EXECUTE pg_catalog.format('UPDATE %s x SET status = $4, decided_at = pg_catalog.now(), decided_by = $5, note = $6,'
                              ' posted_xid = CASE WHEN $7 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = $7'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.claim_no OPERATOR(pg_catalog.=) $3', claims)
    USING program_id, account_key, claim_no, st, args[5], args[4], entry;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_mdf_claim_in(integer, text, text[]) IS
'Internal: approves (pays from the wallet, if it still holds the amount; LY001 otherwise) or rejects a pending MDF claim (args: claim_no, claim_id, approve, note, decided_by) on the node holding the account, under its lock; a decision is final (the other one is refused, the same one changes nothing). Returns the status.';

CREATE FUNCTION @extschema@._decide_mdf_claim(claim_id uuid, approve boolean, note text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c record;
BEGIN
    PERFORM @extschema@._refuse_shard_query(CASE WHEN approve THEN 'loyalty.approve_mdf_claim()' ELSE 'loyalty.reject_mdf_claim()' END);
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.claim_no INTO c
    FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    RETURN @extschema@._on_account_node('decide_mdf_claim', c.program_id, c.account_key,
                                        ARRAY[c.claim_no::text, claim_id::text, approve::text, note, SESSION_USER::text]);
END
$$;
COMMENT ON FUNCTION @extschema@._decide_mdf_claim(uuid, boolean, text) IS
'Internal: finds an MDF claim by its id and decides it on the node holding its account (loyalty._decide_mdf_claim_in); returns the status.';

CREATE OR REPLACE FUNCTION @extschema@.claim_mdf(
    program     text,
    account_key text,
    amount      numeric,
    purpose     text,
    reference   text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.claim_mdf()');
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have an MDF wallet.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF amount IS NULL OR amount <= 0 OR amount = 'Infinity' OR amount = 'NaN' OR amount <> pg_catalog.round(amount, 2) THEN
        RAISE EXCEPTION 'amount must be a positive sum of money in cents'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('amount %s was given.', coalesce(amount::text, 'NULL')),
                  HINT = 'For example amount => 1500.00.';
    END IF;
    IF purpose IS NULL OR btrim(purpose) = '' THEN
        RAISE EXCEPTION 'purpose must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'purpose says what the funds pay for; the approver reads it.',
                  HINT = 'For example purpose => ''Trade show booth, spring fair''.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the partner portal''s identifier of the claim.',
                  HINT = 'Give the claim''s identifier, or NULL when there is none.';
    END IF;

    -- the reference, the wallet and the claim: on the account's node
    RETURN @extschema@._on_account_node('claim_mdf', pid, account_key, ARRAY[amount::text, purpose, reference])::uuid;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.approve_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_mdf_claim(claim_id, true, note);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.reject_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_mdf_claim(claim_id, false, note);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.cancel_redemption(redemption_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d record;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.cancel_redemption()');
    IF redemption_id IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'redemption_id is what loyalty.redeem() returned.',
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.redemption_no, x.reward_id, x.quantity INTO d
    FROM @extschema@.redemption x WHERE x.redemption_id = redemption_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'redemption_id names no redemption'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No redemption has id %s; redemption_id is what loyalty.redeem() returned.', redemption_id),
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    -- the same lock order as redeem: the account (on its node), then the
    -- reward (a reference table on Citus, written from here)
    PERFORM @extschema@._on_account_node('cancel_redemption', d.program_id, d.account_key,
                                         ARRAY[d.redemption_no::text, redemption_id::text]);
    UPDATE @extschema@.reward x SET stock = x.stock + d.quantity
    WHERE x.program_id = d.program_id AND x.reward_id = d.reward_id AND x.stock IS NOT NULL;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._cancel_redemption_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    redemption_no bigint := args[1]::bigint;
    redemptions text := @extschema@._table('redemption');
    d record;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT x.status, x.cancelled_at, x.quantity, x.reward_id, x.points, x.member_id, x.posted_xid, x.entry_no'
                              ' FROM %s x WHERE x.program_id OPERATOR(pg_catalog.=) $1'
                              ' AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key AND x.redemption_no OPERATOR(pg_catalog.=) $3',
                              redemptions)
    INTO d USING program_id, account_key, redemption_no;
    IF d.status = 'cancelled' THEN
        RAISE EXCEPTION 'the redemption is already cancelled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Redemption %s was cancelled at %s; its points were given back then.', args[2], d.cancelled_at),
                  HINT = 'Nothing to do.';
    END IF;
    entry := @extschema@._post_member(program_id, account_key, 'redeem', d.points,
                                      pg_catalog.format('cancel redemption of %s x %s', d.quantity, d.reward_id),
                                      d.member_id, corrects_xid => d.posted_xid, corrects => d.entry_no);
    EXECUTE pg_catalog.format('UPDATE %s x SET status = ''cancelled'', cancelled_at = pg_catalog.now(),'
                              ' cancel_xid = pg_catalog.pg_current_xact_id(), cancel_entry_no = $4'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.redemption_no OPERATOR(pg_catalog.=) $3', redemptions)
    USING program_id, account_key, redemption_no, entry;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._cancel_redemption_in(integer, text, text[]) IS
'Internal: loyalty.cancel_redemption''s account part (args: redemption_no, redemption_id) on the node holding the account, under its lock: posts the points back pointing at the entry that spent them and marks the redemption cancelled (refused if it already is).';

CREATE OR REPLACE FUNCTION @extschema@._award_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    action text := args[1];
    member text := args[2];
    day date := args[3]::date;
    quantity integer := args[4]::integer;
    reference text := args[5];
    rule_from date := args[6]::date;
    cap_points bigint := args[8]::bigint;
    cap_period text := args[9];
    awards text := @extschema@._table('award');
    prior record;
    no bigint;
    earned numeric := args[7]::numeric * quantity;
    granted bigint := LEAST(earned, 9223372036854775807);
    used bigint;
    period_start date;
    st text := CASE WHEN args[10]::boolean THEN 'pending' ELSE 'approved' END;
    entry bigint;
    id uuid;
BEGIN
    no := @extschema@._lock_for_debit(program_id, account_key);
    IF reference IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT w.award_id, w.action, w.member_id, w.occurred_on, w.quantity FROM %s w'
                                  ' WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                                  ' AND w.reference OPERATOR(pg_catalog.=) $3', awards)
        INTO prior USING program_id, account_key, reference;
        IF prior.award_id IS NOT NULL THEN
            IF (prior.action, prior.member_id, prior.occurred_on, prior.quantity)
               IS DISTINCT FROM (action, member, day, quantity) THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already awarded for another event', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It was awarded for %s x %s on %s%s.', prior.quantity, prior.action,
                                                     prior.occurred_on, coalesce(' by member ' || prior.member_id, '')),
                          HINT = 'A reference names one CRM event; give the new event its own reference.';
            END IF;
            RETURN prior.award_id;      -- the same event again: awarded once
        END IF;
    END IF;
    IF cap_points IS NOT NULL THEN
        period_start := pg_catalog.date_trunc(cap_period, day::timestamp)::date;
        EXECUTE pg_catalog.format('SELECT coalesce(pg_catalog.sum(w.points), 0) FROM %s w'
                                  ' WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                                  ' AND w.action OPERATOR(pg_catalog.=) $3 AND w.status OPERATOR(pg_catalog.<>) ''rejected'''
                                  ' AND w.occurred_on OPERATOR(pg_catalog.>=) $4 AND w.occurred_on OPERATOR(pg_catalog.<) $5', awards)
        INTO used USING program_id, account_key, action, period_start,
                        (period_start + CASE cap_period WHEN 'month' THEN interval '1 month'
                                                        WHEN 'quarter' THEN interval '3 months'
                                                        ELSE interval '1 year' END)::date;
        granted := GREATEST(0, LEAST(granted, cap_points - used));
    END IF;
    IF st = 'approved' THEN
        entry := @extschema@._post_member(program_id, account_key, 'award', granted,
                                          pg_catalog.format('%s x %s', quantity, action) || coalesce(' ref ' || reference, ''),
                                          member);
    END IF;
    EXECUTE pg_catalog.format('INSERT INTO %s AS w (program_id, account_key, award_no, action, member_id, occurred_on, quantity, rule_from,'
                              ' points, capped, reference, status, decided_at, posted_xid, entry_no)'
                              ' VALUES ($1, $2::@extschema@.account_key, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,'
                              ' CASE WHEN $12 OPERATOR(pg_catalog.=) ''approved'' THEN pg_catalog.now() END,'
                              ' CASE WHEN $13 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, $13)'
                              ' RETURNING w.award_id', awards)
    INTO id USING program_id, account_key, no, action, member, day, quantity, rule_from, granted,
                  LEAST(earned - granted, 9223372036854775807), reference, st, entry;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._award_in(integer, text, text[]) IS
'Internal: loyalty.award''s account part on the node holding the account, under its lock (args: action, member, occurred_on, quantity, reference, and the rule''s valid_from, points, cap_points, cap_period, needs_approval): the award of the same reference again, or a new one capped by what the period already granted, posted unless it waits for approval.';

CREATE OR REPLACE FUNCTION @extschema@._decide_award_in(program_id integer, account_key text, args text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    award_no bigint := args[1]::bigint;
    approve boolean := args[3]::boolean;
    awards text := @extschema@._table('award');
    w record;
    st text;
    entry bigint;
BEGIN
    PERFORM @extschema@._lock_for_debit(program_id, account_key);
    EXECUTE pg_catalog.format('SELECT x.status, x.points, x.quantity, x.action, x.reference, x.member_id FROM %s x'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.award_no OPERATOR(pg_catalog.=) $3', awards)
    INTO w USING program_id, account_key, award_no;
    IF approve AND w.status = 'rejected' THEN
        RAISE EXCEPTION 'the award was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was rejected; a decision on an award is final.', args[2]),
                  HINT = 'Record the event again with a new reference if it is genuine.';
    ELSIF NOT approve AND w.status = 'approved' THEN
        RAISE EXCEPTION 'the award was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was approved and its points posted; a decision on an award is final.', args[2]),
                  HINT = 'Take the points back with an adjustment if the approval was a mistake.';
    ELSIF w.status IS DISTINCT FROM 'pending' THEN
        RETURN w.status;        -- the same decision again
    END IF;
    IF approve THEN
        entry := @extschema@._post_member(program_id, account_key, 'award', w.points,
                                          pg_catalog.format('%s x %s', w.quantity, w.action) || coalesce(' ref ' || w.reference, ''),
                                          w.member_id);
    END IF;
    st := CASE WHEN approve THEN 'approved' ELSE 'rejected' END;
    EXECUTE pg_catalog.format('UPDATE %s x SET status = $4, decided_at = pg_catalog.now(), decided_by = $5, note = $6,'
                              ' posted_xid = CASE WHEN $7 IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = $7'
                              ' WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.account_key OPERATOR(pg_catalog.=) $2::@extschema@.account_key'
                              ' AND x.award_no OPERATOR(pg_catalog.=) $3', awards)
    USING program_id, account_key, award_no, st, args[5], args[4], entry;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award_in(integer, text, text[]) IS
'Internal: approves (posts the points) or rejects a pending award (args: award_no, award_id, approve, note, decided_by) on the node holding the account, under its lock; a decision is final (the other one is refused, the same one changes nothing). Returns the status.';

CREATE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w record;
BEGIN
    PERFORM @extschema@._refuse_shard_query(CASE WHEN approve THEN 'loyalty.approve_award()' ELSE 'loyalty.reject_award()' END);
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    SELECT x.program_id, x.account_key::text AS account_key, x.award_no INTO w
    FROM @extschema@.award x WHERE x.award_id = award_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    RETURN @extschema@._on_account_node('decide_award', w.program_id, w.account_key,
                                        ARRAY[w.award_no::text, award_id::text, approve::text, note, SESSION_USER::text]);
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award(uuid, boolean, text) IS
'Internal: finds an award by its id and decides it on the node holding its account (loyalty._decide_award_in); returns the status.';

CREATE OR REPLACE FUNCTION @extschema@.award(
    program     text,
    account_key text,
    action      text,
    occurred_on date DEFAULT NULL,
    member      text DEFAULT NULL,
    reference   text DEFAULT NULL,
    quantity    integer DEFAULT 1)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    today date;
    day date;
    rule @extschema@.action_rule;
BEGIN
    PERFORM @extschema@._refuse_shard_query('loyalty.award()');
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, (pg_catalog.now() AT TIME ZONE p.time_zone)::date INTO pid, today
    FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts earn points for actions.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key::@extschema@.account_key AND m.member_id = member) THEN
        RAISE EXCEPTION 'member "%" is not a member of account "%"', member, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'A member earns for the account they belong to.',
                  HINT = 'Add the person to loyalty.member first, or award the account (member => NULL).';
    END IF;
    day := coalesce(occurred_on, today);
    IF NOT pg_catalog.isfinite(day) OR day > today THEN
        RAISE EXCEPTION 'occurred_on % is not a day that has happened', day
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Today is %s in the program''s calendar.', today),
                  HINT = 'Give the day the action took place, or NULL for today.';
    END IF;
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'quantity must be a positive number of actions'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('quantity %s was given.', coalesce(quantity::text, 'NULL')),
                  HINT = 'Give 1 for one action.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the CRM''s identifier of the event.',
                  HINT = 'Give the event''s identifier, or NULL when there is none.';
    END IF;
    SELECT * INTO rule FROM @extschema@.action_rule r
    WHERE r.program_id = pid AND r.action = action AND r.valid_from <= day
    ORDER BY r.valid_from DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" has no rule in program "%" on %', action, program, day
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'action is an action of loyalty.action_rule in force on the day it occurred.',
                  HINT = 'Define it with loyalty.set_action_rule().';
    END IF;

    -- the reference, the cap and the posting: on the account's node
    RETURN @extschema@._on_account_node('award', pid, account_key,
               ARRAY[action, member, day::text, quantity::text, reference, rule.valid_from::text, rule.points::text,
                     rule.cap_points::text, rule.cap_period, rule.needs_approval::text])::uuid;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.approve_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_award(award_id, true, note);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.reject_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._decide_award(award_id, false, note);
END
$$;

REVOKE ALL ON FUNCTION @extschema@._table(text), @extschema@._on_account_node(text, integer, text, text[]),
                      @extschema@._account_shard(text, integer, text, text[], text), @extschema@._refuse_shard_query(text),
                      @extschema@._mdf_wallet(integer, text), @extschema@._claim_mdf_in(integer, text, text[]),
                      @extschema@._decide_mdf_claim_in(integer, text, text[]), @extschema@._decide_mdf_claim(uuid, boolean, text),
                      @extschema@._cancel_redemption_in(integer, text, text[]), @extschema@._award_in(integer, text, text[]),
                      @extschema@._decide_award_in(integer, text, text[]), @extschema@._decide_award(uuid, boolean, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- A worker added after distribute().  loyalty.add_node(host, port) lays it
-- out as distribute() laid out the others (src/sql/85_citus.sql); what
-- distribute() does on each node becomes loyalty._prepare_node(key_type).
-- Superuser only: nothing is granted.  loyalty.attachment gains
-- names_at_attach, of a row type, which makes Citus copy the table to the
-- new node as text: its regclass columns are resolved there by name.
-- ---------------------------------------------------------------------------
CREATE TYPE @extschema@.attached_names AS (source text, header text, product text);
COMMENT ON TYPE @extschema@.attached_names IS 'The qualified names of an attachment''s source, header and product tables when loyalty.attach ran (loyalty.attachment.names_at_attach).';
ALTER TABLE @extschema@.attachment ADD COLUMN names_at_attach @extschema@.attached_names;
UPDATE @extschema@.attachment
   SET names_at_attach = ROW(source_name, header::pg_catalog.text, product::pg_catalog.text)::@extschema@.attached_names;
ALTER TABLE @extschema@.attachment ALTER COLUMN names_at_attach SET NOT NULL;
COMMENT ON COLUMN @extschema@.attachment.names_at_attach IS 'The qualified names of source, header and product when attached, for the audit trail after a table is renamed or dropped. Its row type also makes Citus copy this table to a new node as text, so that source, header and product name that node''s own tables (see loyalty.add_node).';
CREATE OR REPLACE FUNCTION @extschema@._attach(
    source              regclass,
    program             text,
    account_column      text,
    amount_column       text,
    quantity_column     text,
    date_column         text,
    key_column          text,
    product_line_column text,
    currency_column     text,
    doc_type_column     text,
    credit_note_types   text[],
    due_date_column     text,
    paid_date_column    text,
    amount_expression   text,
    header              regclass,
    header_key_column   text,
    header_match_column text,
    product             regclass,
    line_product_column text,
    product_id_column   text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    prog @extschema@.program;
    keys text[];
    dside regclass := coalesce(header, source);
    dalias text := CASE WHEN header IS NULL THEN 's' ELSE 'h' END;
    ints regtype[] := ARRAY['smallint', 'integer', 'bigint']::regtype[];
    texts regtype[] := ARRAY['text', 'character varying', 'character']::regtype[];
    nums regtype[] := ARRAY['numeric', 'smallint', 'integer', 'bigint']::regtype[];
    dates regtype[] := ARRAY['date', 'timestamp without time zone', 'timestamp with time zone']::regtype[];
    acc text; amt text; qty text; dat text; pl text; cur text; dt text; due text; paid text;
    hk text; hm text; lp text; pk text;
    id integer;
    trg text;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = pid;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = source) = 'p' THEN
        RAISE NOTICE 'rows written straight into a partition of % will not accrue', source
            USING DETAIL = 'Statement triggers on a partitioned table see the rows written through it, not those written to a partition directly, and TRUNCATE of a partition is not refused.',
                  HINT = 'Make the ERP write through the partitioned table.';
    ELSIF (SELECT c.relkind FROM pg_class c WHERE c.oid = source) <> 'r' THEN
        RAISE EXCEPTION '% is not a table', source USING ERRCODE = 'wrong_object_type',
            DETAIL = 'source names the table whose rows earn points; attach creates triggers on it.',
            HINT = 'Attach the table the ERP writes invoices or invoice lines to.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.program_id = pid AND x.source = _attach.source AND x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'program "%" is already attached to %', program, source USING ERRCODE = 'duplicate_object',
            DETAIL = 'A program is attached to a table once.',
            HINT = 'Detach it first with loyalty.detach() to change the mapping.';
    END IF;
    IF account_column IS NULL OR date_column IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN account_column IS NULL THEN 'account_column' ELSE 'date_column' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'account_column and date_column name the customer key and document date columns.',
                  HINT = 'For example account_column => ''customer_id'', date_column => ''invoice_date''.';
    END IF;
    IF header IS NOT NULL THEN
        IF header_key_column IS NULL THEN
            RAISE EXCEPTION 'line_header_column must not be NULL when header is given' USING ERRCODE = 'null_value_not_allowed',
                DETAIL = 'line_header_column names the column of the lines table that references the header table.',
                HINT = 'Name it, e.g. line_header_column => ''invoice_id''.';
        END IF;
        hk := @extschema@._check_column(source, 'line_header_column', header_key_column, NULL, NULL);
        hm := coalesce(header_match_column,
                       (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = header AND i.indisprimary AND i.indnatts = 1));
        IF hm IS NULL THEN
            RAISE EXCEPTION 'header % has no single-column primary key', header USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'header_id_column names the header''s column that the lines reference; by default its primary key.',
                HINT = 'Name it with header_id_column, e.g. header_id_column => ''invoice_id''.';
        END IF;
        hm := @extschema@._check_column(header, 'header_id_column', hm, NULL, NULL);
    END IF;

    -- account, date and document columns live on the header when there is one
    acc := @extschema@._check_column(dside, 'account_column', account_column, ints || texts, 'int, bigint or text');
    dat := @extschema@._check_column(dside, 'date_column', date_column, dates, 'a date or timestamp');
    cur := @extschema@._check_column(dside, 'currency_column', currency_column, texts, 'text');
    dt := @extschema@._check_column(dside, 'doc_type_column', doc_type_column, texts || ints, 'text or integer');
    due := @extschema@._check_column(dside, 'due_date_column', due_date_column, dates, 'a date or timestamp');
    paid := @extschema@._check_column(dside, 'paid_date_column', paid_date_column, dates, 'a date or timestamp');
    amt := @extschema@._check_column(source, 'amount_column', amount_column, nums, 'numeric or integer (money is never float)');
    qty := @extschema@._check_column(source, 'quantity_column', quantity_column, nums || ARRAY['real', 'double precision']::regtype[], 'numeric');
    -- the product line is a column of the product table when there is one
    pl := @extschema@._check_column(coalesce(product, source), 'product_line_column', product_line_column, texts || ints, 'text or integer');
    IF product IS NOT NULL THEN
        IF line_product_column IS NULL OR product_line_column IS NULL THEN
            RAISE EXCEPTION '% must not be NULL when product is given',
                            CASE WHEN line_product_column IS NULL THEN 'line_product_column' ELSE 'product_line_column' END
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = 'line_product_column names the lines'' column that references the product table; product_line_column the product table''s column that holds the product line.',
                      HINT = 'For example product => ''erp.product'', line_product_column => ''product_id'', product_line_column => ''category_id''.';
        END IF;
        lp := @extschema@._check_column(source, 'line_product_column', line_product_column, NULL, NULL);
        pk := @extschema@._check_column(product, 'product_id_column', product_id_column, NULL, NULL);
    END IF;
    -- each column as alias.column, quoted from its catalog name: s for the
    -- source, h for the header; a timestamptz becomes a date in the time
    -- zone in force at attach time, fixed in the mapping, so that no
    -- session setting can move a document
    acc := format('%I.%I', dalias, acc);
    dat := @extschema@._as_local(dside, dat, format('%I.%I', dalias, dat), prog.time_zone);
    cur := CASE WHEN cur IS NOT NULL THEN format('%I.%I', dalias, cur) END;
    dt := CASE WHEN dt IS NOT NULL THEN format('%I.%I', dalias, dt) END;
    due := CASE WHEN due IS NOT NULL THEN @extschema@._as_local(dside, due, format('%I.%I', dalias, due), prog.time_zone) END;
    paid := CASE WHEN paid IS NOT NULL THEN @extschema@._as_local(dside, paid, format('%I.%I', dalias, paid), prog.time_zone) END;
    amt := CASE WHEN amt IS NOT NULL THEN format('s.%I', amt) END;
    qty := CASE WHEN qty IS NOT NULL THEN format('s.%I', qty) END;
    pl := CASE WHEN pl IS NOT NULL THEN format('%I.%I', CASE WHEN product IS NULL THEN 's' ELSE 'p' END, pl) END;
    IF (doc_type_column IS NULL) <> (credit_note_types IS NULL) THEN
        RAISE EXCEPTION 'doc_type_column and credit_note_types go together' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = CASE WHEN doc_type_column IS NULL THEN 'credit_note_types was given without doc_type_column.'
                          ELSE 'doc_type_column was given without credit_note_types.' END,
            HINT = 'For example doc_type_column => ''doc_type'', credit_note_types => ''{CRN}''.';
    END IF;
    IF amount_expression IS NOT NULL THEN
        IF amount_column IS NOT NULL THEN
            RAISE EXCEPTION 'give amount_column or amount_expression, not both' USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'Both say where the amount comes from.',
                HINT = 'Map a column with amount_column, or compute the amount with amount_expression.';
        END IF;
        amt := amount_expression;
    END IF;
    IF prog.basis = 'quantity' AND qty IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per quantity: quantity_column is required', program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The program was created with basis => ''quantity'': points are paid per unit of the quantity column.',
                  HINT = 'For example quantity_column => ''quantity''.';
    END IF;
    IF prog.basis = 'amount' AND amt IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per amount: amount_column or amount_expression is required', program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Points are paid per currency unit of the amount.',
                  HINT = 'For example amount_column => ''amount'', or amount_expression => ''quantity * unit_price''.';
    END IF;

    -- the row key: given, or the primary key; it must be unique
    IF key_column IS NOT NULL THEN
        keys := (SELECT array_agg(btrim(k) ORDER BY o) FROM unnest(string_to_array(key_column, ',')) WITH ORDINALITY AS u(k, o));
        PERFORM @extschema@._check_column(source, 'key_column', k, NULL, NULL) FROM unnest(keys) k;
        IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = source AND i.indisunique AND i.indpred IS NULL
                       AND i.indexprs IS NULL
                       AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                            WHERE a.attrelid = source AND a.attnum = ANY (i.indkey::int2[]))
                           = (SELECT array_agg(k ORDER BY k) FROM unnest(keys) k)) THEN
            RAISE EXCEPTION 'key columns (%) of % are not unique', key_column, source
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'key_column names the columns that identify a row: those of the primary key or of a unique index.',
                      HINT = 'Name the columns of the primary key or of a unique index, e.g. key_column => ''invoice_id, line_no''.';
        END IF;
    ELSE
        keys := (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                 WHERE i.indrelid = source AND i.indisprimary);
        IF keys IS NULL THEN
            RAISE EXCEPTION '% has no primary key', source USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'key_column, by default the primary key, names the columns that identify a row.',
                HINT = 'Name the columns of a unique index with key_column => ''col1, col2''.';
        END IF;
    END IF;

    INSERT INTO @extschema@.attachment AS x (program_id, source, source_name, key_columns, account_expr, amount_expr,
        quantity_expr, date_expr, product_line_expr, currency_expr, doc_type_expr, credit_note_types,
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column,
        product, line_product_column, product_id_column, names_at_attach)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm, product, lp, pk,
            ROW(source::text, header::text, product::text)::@extschema@.attached_names)
    RETURNING x.attachment_id INTO id;

    trg := 'loyalty_accrual_' || id;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_ins', source, id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_upd', source, id);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS loyalty_old'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_del', source, id);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                   trg || '_truncate', source);
    IF header IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue_header(%s)', trg || '_header', header, id);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue_header(%s)', trg || '_header_ins', header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE DELETE OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@.stash_header(%s)',
                       trg || '_header_delete', hm, header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_header_truncate', header);
    END IF;
    IF product IS NOT NULL THEN
        -- a product's line changed, a product deleted, or inserted after
        -- lines named it: its earlier line is kept for the documents dated
        -- before the change (loyalty.product_history)
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_upd', product, id);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS loyalty_old'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_del', product, id);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_ins', product, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_product_truncate', product);
    END IF;
    RETURN id;
END
$$;

CREATE FUNCTION @extschema@._prepare_node(key_type regtype) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    undo text := '';
    t    record;
BEGIN
    -- this node's own tables: nothing to send to other nodes
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    FOR t IN SELECT c.conrelid::regclass AS rel, c.conname
               FROM pg_catalog.pg_constraint c
               JOIN @extschema@._citus_layout() l ON l.table_name OPERATOR(pg_catalog.=) c.conrelid
               JOIN @extschema@._citus_layout() f ON f.table_name OPERATOR(pg_catalog.=) c.confrelid
              WHERE c.contype OPERATOR(pg_catalog.=) 'f'
              ORDER BY 1::text, 2
    LOOP
        undo := undo || pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I;', t.rel, t.conname);
    END LOOP;
    FOR t IN SELECT pg_catalog.format('%I.%I', p.schemaname, p.tablename) AS rel FROM pg_catalog.pg_policies p
              WHERE p.schemaname OPERATOR(pg_catalog.=) '@extschema@' AND p.policyname OPERATOR(pg_catalog.=) 'partner'
    LOOP
        undo := undo || pg_catalog.format('DROP POLICY IF EXISTS partner ON %s;', t.rel);
    END LOOP;
    IF undo OPERATOR(pg_catalog.<>) '' THEN
        EXECUTE undo;
    END IF;
    PERFORM @extschema@._set_key_type(key_type);
END
$$;
COMMENT ON FUNCTION @extschema@._prepare_node(regtype) IS
'Internal: on one node, from its own catalog, drops the foreign keys between loyalty''s tables and the partner policies, and gives the account keys key_type (loyalty._set_key_type): what distribute() does on every node, and add_node() on a new one.';

CREATE FUNCTION @extschema@._unlink_detached() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    x    record;
    rel  regclass;
    kept regclass[];
    n    integer := 0;
BEGIN
    -- read first, then written by id: once the attachments are a reference
    -- table, Citus cannot plan a write of them that reads pg_dist_partition
    FOR x IN EXECUTE 'SELECT a.attachment_id, a.source, a.header, a.product FROM @extschema@.attachment a'
                  || ' WHERE a.detached_at IS NOT NULL ORDER BY a.attachment_id' LOOP
        kept := '{}';
        FOREACH rel IN ARRAY ARRAY[x.source, x.header, x.product] LOOP
            IF rel IS NOT NULL AND rel OPERATOR(pg_catalog.<>) 0::pg_catalog.regclass THEN
                EXECUTE 'SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_dist_partition p'
                     || '   WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1'
                     || '     AND (p.partmethod OPERATOR(pg_catalog.<>) ''n'' OR p.repmodel OPERATOR(pg_catalog.=) ''t''))'
                     || ' THEN $1 ELSE 0::pg_catalog.regclass END'
                   INTO rel USING rel;
            END IF;
            kept := kept || rel;
        END LOOP;
        IF kept IS DISTINCT FROM ARRAY[x.source, x.header, x.product] THEN
            EXECUTE 'UPDATE @extschema@.attachment SET source = $2, header = $3, product = $4'
                 || ' WHERE attachment_id OPERATOR(pg_catalog.=) $1'
              USING x.attachment_id, kept[1], kept[2], kept[3];
            n := n OPERATOR(pg_catalog.+) 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._unlink_detached() IS
'Internal: on Citus, the source, header and product of detached attachments become ''-'' where the relation is not on every node (a table of the coordinator only, or dropped); their names stay in source_name and names_at_attach. distribute() and add_node() run it, since Citus copies loyalty.attachment to each node by the names of its relations.';

CREATE OR REPLACE FUNCTION @extschema@.distribute(invoice regclass)
RETURNS TABLE (table_name regclass, layout text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_column text;
    key_type   regtype;
    fks        text[] := '{}';
    role       text := pg_catalog.current_setting('session_replication_role');
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
    IF key_type NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                        'pg_catalog.int8'::pg_catalog.regtype) THEN
        RAISE EXCEPTION '% is distributed by %, a column of type %', invoice, pg_catalog.quote_ident(key_column), key_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty stores account keys as text, integer or bigint, and Citus co-locates only tables whose distribution columns have the same type.',
                  HINT = 'Distribute the invoice table by a text, integer or bigint customer key; see "Running on Citus" in loyalty''s README.';
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

    -- 1. the foreign keys to re-create once the tables are distributed (not
    -- those of the local tables), then on every node the foreign keys and
    -- partner policies dropped and the account keys in the type of the
    -- invoice table's key (_prepare_node).  This node first, in this
    -- transaction: a stored key that does not fit the type stops it here,
    -- before the workers, whose part commits on its own.
    FOR t IN SELECT pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
                                      pg_catalog.pg_get_constraintdef(c.oid)) AS def
               FROM pg_catalog.pg_constraint c
               JOIN @extschema@._citus_layout() l ON l.table_name OPERATOR(pg_catalog.=) c.conrelid
               JOIN @extschema@._citus_layout() f ON f.table_name OPERATOR(pg_catalog.=) c.confrelid
              WHERE c.contype OPERATOR(pg_catalog.=) 'f'
                AND l.layout OPERATOR(pg_catalog.<>) 'local' AND f.layout OPERATOR(pg_catalog.<>) 'local'
              ORDER BY c.conrelid::regclass::text, c.conname
    LOOP
        fks := fks || t.def;
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    PERFORM @extschema@._prepare_node(key_type);
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'on', true);
    FOR r IN EXECUTE 'SELECT w.nodename, w.nodeport, w.success, w.result'
                  || ' FROM pg_catalog.run_command_on_workers($1) w'
               USING pg_catalog.format('SET citus.enable_ddl_propagation = off; SELECT @extschema@._prepare_node(%L);', key_type)
    LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not prepare loyalty''s tables on worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = r.result,
                      HINT = 'Fix the worker (CREATE EXTENSION loyalty must have run there), then run loyalty.distribute() again; it picks up where it stopped.';
        END IF;
    END LOOP;

    -- 2. reference and distributed tables (the cache triggers on the
    -- configuration tables only invalidate this node's caches); detached
    -- attachments of tables that stay on this node keep their names only,
    -- since Citus copies the attachments to the workers by name
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- foreign keys to reference tables need one connection per node
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    PERFORM @extschema@._unlink_detached();
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

    -- 4. the rows Citus copied into the shards stay on disk in this node's
    -- tables, out of sight but read by anything that opens them directly:
    -- removed, with loyalty's own guards (append-only ledger, accounts
    -- kept) silenced for this, since nothing is lost
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT l.table_name FROM @extschema@._citus_layout() l
              WHERE l.layout OPERATOR(pg_catalog.<>) 'local' LOOP
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING t.table_name;
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role, true);

    -- 5. the functions Citus runs where the account is
    PERFORM @extschema@._citus_functions();
    RETURN QUERY SELECT * FROM @extschema@._citus_layout();
END
$$;

CREATE FUNCTION @extschema@.add_node(host text, port integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_type regtype;
    known    boolean;
    version  text;
    step     text;
    r        record;
    node     integer;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'loyalty.add_node() adds a worker to a Citus cluster.',
                  HINT = 'On a single server there is no node to add; on Citus, CREATE EXTENSION citus first.';
    END IF;
    IF NOT (SELECT u.rolsuper FROM pg_catalog.pg_roles u WHERE u.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'permission denied to add a node'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'loyalty.add_node() creates and alters the extension''s tables on the new node.',
                  HINT = 'Run it as a superuser.';
    END IF;
    IF host IS NULL OR port IS NULL THEN
        RAISE EXCEPTION 'host and port must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'They name the new worker as citus_add_node() takes it.',
                  HINT = 'For example SELECT loyalty.add_node(''10.0.0.7'', 5432).';
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_node n'
         || ' WHERE n.nodename OPERATOR(pg_catalog.=) $1 AND n.nodeport OPERATOR(pg_catalog.=) $2)'
       INTO known USING host, port;
    IF @extschema@._distributed() THEN
        key_type := (SELECT d.typbasetype::pg_catalog.regtype FROM pg_catalog.pg_type d
                      WHERE d.oid OPERATOR(pg_catalog.=) '@extschema@.account_key'::pg_catalog.regtype);
    END IF;
    IF key_type IS NOT NULL AND NOT known THEN
        version := (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty');
        FOREACH step IN ARRAY ARRAY['CREATE EXTENSION IF NOT EXISTS citus',
                                    pg_catalog.format('CREATE EXTENSION IF NOT EXISTS loyalty VERSION %L', version),
                                    pg_catalog.format('SELECT @extschema@._prepare_node(%L)', key_type)] LOOP
            EXECUTE 'SELECT w.success, w.result FROM pg_catalog.master_run_on_worker($1, $2, $3, false) w'
               INTO r USING ARRAY[host], ARRAY[port], ARRAY[step];
            IF NOT r.success THEN
                RAISE EXCEPTION 'could not prepare loyalty on %:%', host, port
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = pg_catalog.format('%s: %s', step, r.result),
                          HINT = pg_catalog.format('The node must run Citus (shared_preload_libraries), have a database %I and accept this node''s connections, as for citus_add_node(); then run loyalty.add_node() again.',
                                                   pg_catalog.current_database());
            END IF;
        END LOOP;
    END IF;
    IF key_type IS NOT NULL THEN
        PERFORM @extschema@._unlink_detached();  -- before Citus copies the attachments there
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_add_node($1, $2)' INTO node USING host, port;
    RETURN node;
END
$$;
COMMENT ON FUNCTION @extschema@.add_node(text, integer) IS
'Adds a worker to the Citus cluster after loyalty.distribute(): creates the extension there and lays out its tables as distribute() laid out the other nodes (account keys in the invoice key''s type, foreign keys and partner policies dropped), then citus_add_node(host, port); returns the node id. Before distribute() it is citus_add_node(). Superuser. Move shards to the node with Citus''s rebalancer.';

REVOKE ALL ON FUNCTION @extschema@._prepare_node(regtype), @extschema@._unlink_detached(), @extschema@.add_node(text, integer) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- On a Citus worker, ledger entry numbers start at the node's group times
-- 2^40 (src/ledger.c): a shard holds rows written on other nodes (copied
-- from the coordinator by distribute(), or moved by the rebalancer), whose
-- (posted_xid, entry_no) must never be repeated by this node's postings.
-- ---------------------------------------------------------------------------
COMMENT ON COLUMN @extschema@.ledger.entry_no IS 'Entry number within the posting transaction (posted_xid), from 1 (on a Citus worker from its node group times 2^40, plus 1: transaction ids are each node''s own, and a shard holds rows written on other nodes too); with the account and posted_xid it identifies the entry. No sequence and no per-account counter is involved, so postings never wait for each other.';
