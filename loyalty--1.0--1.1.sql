-- loyalty 1.0 -> 1.1.  Everything that changed in the SQL surface since the
-- 1.0 release, in the order it was made.  A fresh 1.1 install
-- (loyalty--1.1.sql, built from src/sql/) and 1.0 + this script must end
-- with the same catalog: test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.1'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Trust: only the documented API is granted, each to the role that needs it;
-- internal and trigger functions are the owner's alone; every function pins
-- search_path; no role writes the configuration or accrual tables directly
-- (the functions that check a change are the only way in, as the owner);
-- explain_points, verify, backfill and enroll's restatement evaluate the
-- mapping as the caller (C, src/reconcile.c) and write as the owner; verify
-- reports missing or disabled triggers and refuses a partial view.
-- ---------------------------------------------------------------------------

ALTER FUNCTION @extschema@._valid_multipliers(pg_catalog.jsonb, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@._ledger_append_only() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@._invalidate() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.accrue() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.accrue_header() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.stash_header() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@._refuse_truncate() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@._cap_for_month(integer, date) SET search_path = pg_catalog, pg_temp;

-- A dead letter marked handled stays handled: resolved_at is the one column
-- operators may write on loyalty.rejected_event, once.
CREATE FUNCTION @extschema@._rejected_resolved_once() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the dead letter of row % is already settled', coalesce(OLD.row_key, '(no key)')
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('It was settled at %s; resolved_at is set once and never changed.', OLD.resolved_at),
              HINT = 'Leave it as it is; open dead letters are those WHERE resolved_at IS NULL.';
END
$$;
COMMENT ON FUNCTION @extschema@._rejected_resolved_once() IS 'Internal: refuses changes to resolved_at of a settled dead letter.';
CREATE TRIGGER rejected_event_resolved_once BEFORE UPDATE OF resolved_at ON @extschema@.rejected_event
    FOR EACH ROW WHEN (OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at)
    EXECUTE FUNCTION @extschema@._rejected_resolved_once();

REVOKE INSERT, UPDATE ON @extschema@.program, @extschema@.rule, @extschema@.attachment FROM loyalty_admin;
REVOKE UPDATE (cooperation_model, industry, region, potential_spend, cohort, enrolled_from) ON @extschema@.account FROM loyalty_operator, loyalty_admin;
REVOKE INSERT ON @extschema@.account, @extschema@.account_history FROM loyalty_operator, loyalty_admin;

-- No user code runs in these: they write (or read) loyalty's tables as the owner.
ALTER FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule) SECURITY DEFINER;
ALTER FUNCTION @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text) SECURITY DEFINER;
ALTER FUNCTION @extschema@.detach(regclass, text) SECURITY DEFINER;
ALTER FUNCTION @extschema@.balance(text, text) SECURITY DEFINER;

-- The writes of enroll(), as the extension owner: they evaluate nothing a
-- user defined.  Returns whether the account's documents must be restated
-- (enroll() then recomputes them as its caller).
CREATE FUNCTION @extschema@._enroll(
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
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit',
            coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE current_date END))
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(_enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow; the
    -- old values stay for the documents before (the first change of a day
    -- keeps them: values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, _enroll.account_key, current_date + 1, before.cooperation_model, before.industry,
                before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all.
    enrolled_program := pid;
    restate := before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
               AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = _enroll.account_key);
END
$$;
COMMENT ON FUNCTION @extschema@._enroll(text, text, text, text, text, numeric, text, date) IS
    'Internal: the writes of loyalty.enroll(); returns whether the account''s documents must be restated.';

-- Runs as its caller: a restatement evaluates the attachments' mapping
-- expressions, which must never run with the owner's rights.
CREATE OR REPLACE FUNCTION @extschema@.enroll(
    program           text,
    account_key       text,
    cooperation_model text DEFAULT NULL,
    industry          text DEFAULT NULL,
    region            text DEFAULT NULL,
    potential_spend   numeric DEFAULT NULL,
    cohort            text DEFAULT NULL,
    enrolled_from     date DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'loyalty_enroll' LANGUAGE C SET search_path = pg_catalog, pg_temp;

DROP FUNCTION @extschema@._reconcile(integer, date, text, text);
DROP FUNCTION @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text);
DROP FUNCTION @extschema@._row_points(integer, text, numeric, numeric, date, text, text, text, date, date, boolean);
DROP TYPE @extschema@.row_points;

-- explain_points, verify, backfill (and enroll's restatement) recompute what
-- the rows of an attached table earn: the facts query (_facts_sql, the
-- attaching user's mapping expressions) runs as the caller, the points
-- function is the trigger's own (src/reconcile.c), and loyalty's tables are
-- read and written as the owner.
CREATE OR REPLACE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key text[])
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;

-- What verify checks besides the source rows, as the owner (it reads
-- loyalty's tables and the catalog only).  An attached table that was
-- dropped cannot be checked; one whose triggers are missing, disabled or
-- doubled does not accrue what it should.
CREATE FUNCTION @extschema@._verify_attachments(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH att AS (
    SELECT x.attachment_id, x.source::oid AS source, x.header::oid AS header,
           pg_catalog.decode(x.attachment_id::text OPERATOR(pg_catalog.||) E'\\000', 'escape') AS arg
    FROM @extschema@.attachment x
    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL
      AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::oid)),
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
    FROM att a WHERE a.header IS NOT NULL)
SELECT NULL::text, NULL::date, x.attachment_id, 'source_dropped: ' OPERATOR(pg_catalog.||) x.source_name, NULL::numeric, NULL::numeric
FROM @extschema@.attachment x
WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::oid)
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
WHERE t.enabled OPERATOR(pg_catalog.=) 0 OR (n.once AND t.enabled OPERATOR(pg_catalog.>) 1)
$$;
COMMENT ON FUNCTION @extschema@._verify_attachments(integer) IS
    'Internal: verify''s checks of a program''s attached tables: dropped tables, and accrual triggers missing, disabled or doubled.';

-- The checks of verify that read loyalty's tables only, as the owner.
CREATE FUNCTION @extschema@._verify_books(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- the per-month sums, capped, vs the ledger's accrual entries
WITH months AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.points) AS points, pg_catalog.sum(m.qualifying) AS qualifying
    FROM @extschema@.accrual_month m WHERE m.program_id OPERATOR(pg_catalog.=) $1 GROUP BY 1, 2),
periods AS (
    SELECT mo.account_key, coalesce(c.period_start, mo.month) AS ps, c.cap_points,
           pg_catalog.sum(mo.points) AS points, pg_catalog.sum(mo.qualifying) AS qualifying
    FROM months mo LEFT JOIN LATERAL @extschema@._cap_for_month($1, mo.month) c ON true
    GROUP BY 1, 2, 3),
expected AS (
    SELECT p.account_key, pg_catalog.sum(CASE WHEN p.cap_points IS NULL THEN p.points ELSE LEAST(p.points, p.cap_points) END) AS points,
           pg_catalog.sum(p.qualifying) AS qualifying
    FROM periods p GROUP BY 1),
posted AS (
    SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id OPERATOR(pg_catalog.=) $1
      AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
    GROUP BY 1)
SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
FROM expected e FULL JOIN posted p ON p.account_key OPERATOR(pg_catalog.=) e.account_key,
     LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                     ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- the ledger vs the balances
SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying, pg_catalog.count(*) AS n
      FROM @extschema@.ledger x WHERE x.program_id OPERATOR(pg_catalog.=) $1 GROUP BY 1) l
     FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
                FROM @extschema@.balance x WHERE x.program_id OPERATOR(pg_catalog.=) $1) b
       ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
     LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                     ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                     ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
$$;
COMMENT ON FUNCTION @extschema@._verify_books(integer) IS
    'Internal: verify''s checks of the per-month sums against the ledger and of the ledger against the balances.';

CREATE OR REPLACE FUNCTION @extschema@.verify(program text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text) IS
    'Recomputes every attached source row, the per-month sums, the ledger and the balances of a program, and returns each difference (expected vs actual); also attached tables dropped, and accrual triggers missing, disabled or doubled. Empty means every point reconciles with the invoices. Refused unless the caller can read every row of the attached tables.';

CREATE OR REPLACE FUNCTION @extschema@.backfill(source regclass, program text, since date,
                                     OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                     OUT points bigint, OUT qualifying numeric)
AS 'MODULE_PATHNAME', 'loyalty_backfill' LANGUAGE C SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;

-- The types: input, output, operators and the pure functions over a value
-- (no SQL, no table, nothing but their arguments), for anyone who holds one.
GRANT EXECUTE ON FUNCTION
    @extschema@.tier_ladder_in(pg_catalog.cstring), @extschema@.tier_ladder_out(@extschema@.tier_ladder),
    @extschema@.tier_ladder_recv(pg_catalog.internal), @extschema@.tier_ladder_send(@extschema@.tier_ladder),
    @extschema@.tier_ladder_eq(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_ne(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_hash(@extschema@.tier_ladder),
    @extschema@.tier_of(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tier_rank(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.next_tier(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tiers(@extschema@.tier_ladder),
    @extschema@.rebate_schedule_in(pg_catalog.cstring), @extschema@.rebate_schedule_out(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_recv(pg_catalog.internal), @extschema@.rebate_schedule_send(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_eq(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_ne(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule),
    @extschema@.rebate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_rate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_mode(@extschema@.rebate_schedule),
    @extschema@.brackets(@extschema@.rebate_schedule)
TO PUBLIC;

-- Reading and checking: every loyalty role (they read the tables anyway).
GRANT EXECUTE ON FUNCTION
    @extschema@.balance(text, text), @extschema@.tier(text, text),
    @extschema@.explain_points(regclass, text[]), @extschema@.verify(text)
TO loyalty_reader, loyalty_operator, loyalty_admin;
