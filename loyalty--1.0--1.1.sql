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

-- header keys: joined by the key type's own equality; partitioned headers read whole
CREATE FUNCTION @extschema@._equality_operator(type regtype) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_equality_operator' LANGUAGE C STABLE STRICT SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._equality_operator(regtype) IS 'Internal: a type''s own equality operator as SQL text, for joins on ERP keys.';
REVOKE ALL ON FUNCTION @extschema@._equality_operator(regtype) FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    key text;
    from_clause text;
    hdr text;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x WHERE x.attachment_id = attachment;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty attachment % does not exist', attachment USING ERRCODE = 'undefined_object';
    END IF;
    key := CASE WHEN cardinality(a.key_columns) = 1 THEN format('(s.%I)::text', a.key_columns[1])
                ELSE format('(ROW(%s))::text', (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(a.key_columns) c)) END;
    -- a partitioned table is read with its partitions; a plain one alone
    from_clause := format('FROM %s %s s',
                          CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.source) = 'p' THEN '' ELSE 'ONLY' END,
                          a.source);
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
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, (%s)::text AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  coalesce(a.product_line_expr, 'NULL'), from_clause);
END
$$;

