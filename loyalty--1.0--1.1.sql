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
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
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
AS 'MODULE_PATHNAME', 'loyalty_equality_operator' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
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


-- ---------------------------------------------------------------------------
-- Headers inserted after their lines settle the lines that waited for them:
-- a new AFTER INSERT trigger on every header table, also for attachments
-- made under 1.0.
COMMENT ON FUNCTION @extschema@.accrue_header() IS 'Statement-level triggers on a header table: re-accrue the lines of headers whose account, date, currency, document type or payment dates changed, and accrue the lines that were waiting for a header inserted after them.';
DO $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT x.attachment_id, x.header FROM @extschema@.attachment x
             WHERE x.detached_at IS NULL AND x.header IS NOT NULL
               AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = x.header) LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                                  ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue_header(%s)',
                                  'loyalty_accrual_' || a.attachment_id || '_header_ins', a.header::pg_catalog.regclass,
                                  a.attachment_id);
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment := @extschema@._attachment_of(source, program);
    trg text;
BEGIN
    trg := 'loyalty_accrual_' || a.attachment_id;
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
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;

-- ---------------------------------------------------------------------------
-- Mapping expressions are parsed, planned and run as the role that writes
-- the ERP rows, never as the extension owner.  attach() becomes C: it checks
-- the caller's TRIGGER and SELECT privileges and validates amount_expression
-- from its parse tree as the caller (one deterministic scalar expression,
-- never float), refuses loyalty's own tables, and hands the canonical text
-- to the owner-only _attach(), which maps columns from the catalog
-- (format('%I.%I', alias, column), no text replacement) and creates the
-- triggers.  An event trigger refuses an ALTER TABLE that breaks a mapping.
CREATE OR REPLACE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ regtype;
    name text;
BEGIN
    IF col IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.atttypid::regtype, a.attname INTO typ, name FROM pg_attribute a
    WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF typ IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', col, rel
            USING ERRCODE = 'undefined_column',
                  DETAIL = pg_catalog.format('%s names a column of %s.', param, rel),
                  HINT = pg_catalog.format('Columns of %s: %s.', rel,
                         (SELECT string_agg(quote_ident(x.attname), ', ' ORDER BY x.attnum) FROM pg_attribute x
                          WHERE x.attrelid = rel AND x.attnum > 0 AND NOT x.attisdropped));
    END IF;
    IF accepted IS NOT NULL AND NOT typ = ANY (accepted) THEN
        RAISE EXCEPTION 'column "%" of relation % has type %, but % must be %', col, rel, typ, param, expected
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Map a column of the expected type, or an expression (amount_expression) that casts it.';
    END IF;
    RETURN name;
END
$$;
COMMENT ON FUNCTION @extschema@._check_column(regclass, text, text, regtype[], text) IS 'Internal: attach-time validation of one mapped column; returns its name.';

CREATE FUNCTION @extschema@._attach(
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
    header_match_column text)
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
    hk text; hm text;
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
            HINT = 'Attach the table the ERP writes invoices or invoice lines to.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.program_id = pid AND x.source = _attach.source AND x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'program "%" is already attached to %', program, source USING ERRCODE = 'duplicate_object',
            HINT = 'Detach it first with loyalty.detach() to change the mapping.';
    END IF;
    IF account_column IS NULL OR date_column IS NULL THEN
        RAISE EXCEPTION 'account_column and date_column are required' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example account_column => ''customer_id'', date_column => ''invoice_date''.';
    END IF;
    IF header IS NOT NULL THEN
        IF header_key_column IS NULL THEN
            RAISE EXCEPTION 'header_key_column is required with header' USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the column of the lines table that references the header, e.g. header_key_column => ''invoice_id''.';
        END IF;
        hk := @extschema@._check_column(source, 'header_key_column', header_key_column, NULL, NULL);
        hm := coalesce(header_match_column,
                       (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = header AND i.indisprimary AND i.indnatts = 1));
        IF hm IS NULL THEN
            RAISE EXCEPTION 'header % has no single-column primary key', header USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the header column the lines reference with header_match_column.';
        END IF;
        hm := @extschema@._check_column(header, 'header_match_column', hm, NULL, NULL);
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
    pl := @extschema@._check_column(source, 'product_line_column', product_line_column, texts || ints, 'text or integer');
    -- each column as alias.column, quoted from its catalog name: s for the
    -- source, h for the header; a timestamptz becomes a date in the time
    -- zone in force at attach time, fixed in the mapping, so that no
    -- session setting can move a document
    acc := format('%I.%I', dalias, acc);
    dat := @extschema@._as_local(dside, dat, format('%I.%I', dalias, dat));
    cur := CASE WHEN cur IS NOT NULL THEN format('%I.%I', dalias, cur) END;
    dt := CASE WHEN dt IS NOT NULL THEN format('%I.%I', dalias, dt) END;
    due := CASE WHEN due IS NOT NULL THEN @extschema@._as_local(dside, due, format('%I.%I', dalias, due)) END;
    paid := CASE WHEN paid IS NOT NULL THEN @extschema@._as_local(dside, paid, format('%I.%I', dalias, paid)) END;
    amt := CASE WHEN amt IS NOT NULL THEN format('s.%I', amt) END;
    qty := CASE WHEN qty IS NOT NULL THEN format('s.%I', qty) END;
    pl := CASE WHEN pl IS NOT NULL THEN format('s.%I', pl) END;
    IF (doc_type_column IS NULL) <> (credit_note_types IS NULL) THEN
        RAISE EXCEPTION 'doc_type_column and credit_note_types go together' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example doc_type_column => ''doc_type'', credit_note_types => ''{CRN}''.';
    END IF;
    IF amount_expression IS NOT NULL THEN
        IF amount_column IS NOT NULL THEN
            RAISE EXCEPTION 'give amount_column or amount_expression, not both' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        amt := amount_expression;
    END IF;
    IF prog.basis = 'quantity' AND qty IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per quantity: quantity_column is required', program
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prog.basis = 'amount' AND amt IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per amount: amount_column or amount_expression is required', program
            USING ERRCODE = 'invalid_parameter_value';
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
                      HINT = 'Name the columns of the primary key or of a unique index, e.g. key_column => ''invoice_id, line_no''.';
        END IF;
    ELSE
        keys := (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                 WHERE i.indrelid = source AND i.indisprimary);
        IF keys IS NULL THEN
            RAISE EXCEPTION '% has no primary key', source USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the columns that identify a row with key_column => ''col1, col2''.';
        END IF;
    END IF;

    INSERT INTO @extschema@.attachment AS x (program_id, source, source_name, key_columns, account_expr, amount_expr,
        quantity_expr, date_expr, product_line_expr, currency_expr, doc_type_expr, credit_note_types,
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm)
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
    RETURN id;
END
$$;

COMMENT ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text) IS
    'Internal: the extension owner''s part of attach(): column checks, the attachment row and the triggers.';
REVOKE ALL ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.attach(
    source              regclass,
    program             text,
    account_column      text DEFAULT NULL,
    amount_column       text DEFAULT NULL,
    quantity_column     text DEFAULT NULL,
    date_column         text DEFAULT NULL,
    key_column          text DEFAULT NULL,
    product_line_column text DEFAULT NULL,
    currency_column     text DEFAULT NULL,
    doc_type_column     text DEFAULT NULL,
    credit_note_types   text[] DEFAULT NULL,
    due_date_column     text DEFAULT NULL,
    paid_date_column    text DEFAULT NULL,
    amount_expression   text DEFAULT NULL,
    header              regclass DEFAULT NULL,
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_attach' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. The caller needs TRIGGER and SELECT on the table (and on header). Columns are validated now; amount_expression must be one deterministic expression of the row''s columns, numeric or integer, never float, and is stored in canonical form. With header, the account, date, currency, document type and payment dates are read from the header table. Returns the attachment id. Rows that existed before: loyalty.backfill().';

-- A rename, drop or type change of a mapped column is checked when the
-- ALTER TABLE ends: each attachment of the table must still parse, as the
-- role that altered it, or the ALTER fails with what to do.
CREATE FUNCTION @extschema@._check_mapped_columns() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'loyalty_check_mapped_columns' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._check_mapped_columns() IS 'Internal: event trigger refusing an ALTER TABLE that breaks the mapping of an attached table.';
REVOKE ALL ON FUNCTION @extschema@._check_mapped_columns() FROM PUBLIC;
CREATE EVENT TRIGGER loyalty_check_mapped_columns ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION @extschema@._check_mapped_columns();

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

-- ---------------------------------------------------------------------------
-- The balance upsert passes a statement's per-month sums as typed arrays
-- (rows of loyalty.balance): nothing decodes raw bytes any more, and the
-- decoder, which crafted bytes could crash, is gone.
DROP FUNCTION @extschema@._month_delta(bytea, integer);

-- Row keys over 1024 bytes are stored shortened in the indexed row_key.
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form (a key over 1024 bytes: its first bytes and the MD5 of the whole, since the column is indexed).';

-- ---------------------------------------------------------------------------
-- The latest document date an account ever accrued: tier upgrades and
-- segment changes take effect after it, so that a document dated in the
-- future is reversed with what it earned.  Accounts of 1.0 get the last
-- day of their latest accrued month (an upper bound).
ALTER TABLE @extschema@.balance ADD COLUMN last_doc_date date;
COMMENT ON COLUMN @extschema@.balance.last_doc_date IS 'The latest document date the account ever accrued (never decreases): tier and segment changes take effect after it, so that no accrued document changes what it earned.';
UPDATE @extschema@.balance b
   SET last_doc_date = (SELECT (pg_catalog.max(m) + interval '1 month' - interval '1 day')::date
                          FROM pg_catalog.unnest(b.m_month) AS m)
 WHERE pg_catalog.cardinality(b.m_month) > 0;

-- _enroll: dates in the program's calendar; a segment change waits for the account's latest
-- document; a first enrolment of a customer with ignored documents restates them
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
            coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE @extschema@._today(pid) END))
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
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, _enroll.account_key,
                GREATEST(@extschema@._today(pid) + 1,
                         (SELECT b.last_doc_date + 1 FROM @extschema@.balance b
                          WHERE b.program_id = pid AND b.account_key = _enroll.account_key)),
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


-- Caps nest: every cap whose period started under a version that defines it applies
-- (month, then quarter, then year); verify computes them with the trigger's own code.
DROP FUNCTION @extschema@._cap_for_month(integer, date);
CREATE FUNCTION @extschema@._capped_points(program_id integer, months date[], points bigint[]) RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_capped_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._capped_points(integer, date[], bigint[]) IS 'Internal: an account''s per-month points after the program''s nested caps (month, quarter, year), summed; the trigger''s own computation, for verify().';
REVOKE ALL ON FUNCTION @extschema@._capped_points(integer, date[], bigint[]) FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@._verify_books(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- the per-month sums, capped, vs the ledger's accrual entries
WITH months AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.points) AS points, pg_catalog.sum(m.qualifying) AS qualifying
    FROM @extschema@.accrual_month m WHERE m.program_id OPERATOR(pg_catalog.=) $1 GROUP BY 1, 2),
expected AS (
    SELECT mo.account_key,
           @extschema@._capped_points($1, pg_catalog.array_agg(mo.month), pg_catalog.array_agg(mo.points::bigint)) AS points,
           pg_catalog.sum(mo.qualifying) AS qualifying
    FROM months mo GROUP BY 1),
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

-- ---------------------------------------------------------------------------
-- Clear answers for the DBA: every parameter of the public functions is
-- checked by the function itself, with an error that names it (SQLSTATE,
-- message, DETAIL, HINT) instead of a raw NOT NULL or CHECK violation or a
-- value silently accepted; errors of internal helpers no longer show them
-- in CONTEXT.  The rounding mode 'floor' (which truncates toward zero) is
-- called 'toward_zero' now; 'floor' stays accepted by create_program().
-- attach() names the header's columns for the table they belong to:
-- line_header_column and header_id_column (header_key_column and
-- header_match_column stay as deprecated aliases).  explain_points() takes
-- the key values in their own types too.
-- ---------------------------------------------------------------------------

ALTER TABLE @extschema@.program DROP CONSTRAINT program_rounding_check;
UPDATE @extschema@.program SET rounding = 'toward_zero' WHERE rounding = 'floor';
ALTER TABLE @extschema@.program ALTER COLUMN rounding SET DEFAULT 'toward_zero';
ALTER TABLE @extschema@.program ADD CONSTRAINT program_rounding_check CHECK (rounding IN ('toward_zero', 'half_up', 'half_even'));
COMMENT ON COLUMN @extschema@.program.rounding IS 'How a row''s points are made whole: toward_zero (drops the fraction: 247.83 and -247.83 give 247 and -247), half_up (half away from zero: 2.5 gives 3, -2.5 gives -3) or half_even (half to the even neighbour: 2.5 gives 2, 3.5 gives 4). Symmetric around zero, so a credit note reverses exactly what the same invoice earned.';
COMMENT ON COLUMN @extschema@.attachment.header_key_column IS 'The lines'' column (of source) that references the header: attach()''s line_header_column.';
COMMENT ON COLUMN @extschema@.attachment.header_match_column IS 'The header''s own column that line_header_column references (its primary key by default): attach()''s header_id_column.';

CREATE OR REPLACE FUNCTION @extschema@._ledger_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'loyalty.ledger is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on loyalty.ledger is refused: entries are never changed or removed.', TG_OP),
              HINT = 'Correct the ERP''s invoice rows instead (UPDATE, DELETE or a credit note): the accrual posts the correcting entries.';
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._program_id(program text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO id FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.create_program(
    name                 text,
    currency             text DEFAULT 'EUR',
    ladder               @extschema@.tier_ladder DEFAULT NULL,
    points_per_unit      numeric DEFAULT 1,
    basis                text DEFAULT 'amount',
    rounding             text DEFAULT 'toward_zero',
    qualification_window interval DEFAULT '12 months',
    enrollment           text DEFAULT 'auto',
    strict               boolean DEFAULT false,
    starts_on            date DEFAULT NULL,
    settlement_period    text DEFAULT 'quarter',
    point_lifetime       interval DEFAULT NULL,
    rebate               @extschema@.rebate_schedule DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
    c record;
    months integer;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'name is the program''s name, which every loyalty function takes.',
                  HINT = 'For example loyalty.create_program(''Distributor Club'').';
    END IF;
    IF name !~ '^[^[:cntrl:]]{1,63}$' OR name <> btrim(name) THEN
        RAISE EXCEPTION 'invalid program name: %', quote_literal(name)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A program name has 1 to 63 characters, no control characters and no leading or trailing spaces.',
                  HINT = CASE WHEN name <> btrim(name) AND btrim(name) ~ '^[^[:cntrl:]]{1,63}$'
                              THEN format('Leave out the spaces: name => %L.', btrim(name))
                              ELSE 'For example name => ''Distributor Club''.' END;
    END IF;
    IF EXISTS (SELECT FROM @extschema@.program p WHERE p.name = create_program.name) THEN
        RAISE EXCEPTION 'loyalty program "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Program names are unique.',
                  HINT = 'Choose another name, or change the existing program''s rules with loyalty.add_rule().';
    END IF;
    IF currency IS NULL THEN
        RAISE EXCEPTION 'currency must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'currency is the ISO 4217 code of the amounts that earn; rows in another currency are rejected.',
                  HINT = 'Leave it out for the default, ''EUR''.';
    END IF;
    IF currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'invalid currency: %', quote_literal(currency)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'currency is an ISO 4217 code: three capital letters.',
                  HINT = CASE WHEN upper(currency) ~ '^[A-Z]{3}$' THEN format('Write it in capitals: currency => %L.', upper(currency))
                              ELSE 'For example currency => ''EUR''.' END;
    END IF;
    IF points_per_unit IS NULL THEN
        RAISE EXCEPTION 'points_per_unit must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'points_per_unit is the base rate of the first rule version: points per currency unit (or per quantity unit).',
                  HINT = 'Give 0 for a program that counts qualifying spend but pays no points.';
    END IF;
    IF points_per_unit IN ('NaN', 'Infinity', '-Infinity') OR points_per_unit < 0 OR points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be at least 0 and below 1000000, not %', points_per_unit
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'points_per_unit is the base rate of the first rule version: points per currency unit (or per quantity unit).',
                  HINT = 'For example points_per_unit => 1, or 0.5.';
    END IF;
    -- the old name of toward_zero: it never was a floor (-247.83 gives -247)
    IF rounding = 'floor' THEN
        RAISE NOTICE 'rounding ''floor'' is deprecated: it is called ''toward_zero'' now'
            USING DETAIL = 'It drops the fraction toward zero, so that a credit note of -247.83 gives -247 points, not -248.',
                  HINT = 'Write rounding => ''toward_zero''.';
        rounding := 'toward_zero';
    END IF;
    FOR c IN SELECT * FROM (VALUES
            (1, 'basis', basis, ARRAY['amount', 'quantity']),
            (2, 'rounding', rounding, ARRAY['toward_zero', 'half_up', 'half_even']),
            (3, 'enrollment', enrollment, ARRAY['auto', 'explicit']),
            (4, 'settlement_period', settlement_period, ARRAY['month', 'quarter', 'year'])) AS x(n, param, value, allowed)
            ORDER BY n LOOP
        IF c.value IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = format('%s must be one of %s.', c.param, array_to_string(c.allowed, ', ')),
                      HINT = format('Leave it out for the default, %L.', c.allowed[1]);
        END IF;
        IF NOT c.value = ANY (c.allowed) THEN
            RAISE EXCEPTION 'invalid %: %', c.param, quote_literal(c.value)
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('%s must be one of %s.', c.param, array_to_string(c.allowed, ', ')),
                      HINT = format('For example %s => %L.', c.param, c.allowed[1]);
        END IF;
    END LOOP;
    IF qualification_window IS NULL THEN
        RAISE EXCEPTION 'qualification_window must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'qualification_window is the tier window: the qualifying spend of that many calendar months, the current one included, decides the tier.',
                  HINT = 'Leave it out for the default, ''12 months''.';
    END IF;
    -- whole months: '90 days' would be counted as 3 months, which is not what it says
    months := date_part('year', qualification_window) * 12 + date_part('month', qualification_window);
    IF date_part('day', qualification_window) <> 0 OR date_part('hour', qualification_window) <> 0
       OR date_part('minute', qualification_window) <> 0 OR date_part('second', qualification_window) <> 0 THEN
        months := greatest(1, least(120, @extschema@._window_months(qualification_window)));
        RAISE EXCEPTION 'qualification_window must be a whole number of months, not %', qualification_window
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The tier window counts whole calendar months, the current one included.',
                  HINT = format('For example qualification_window => %L.', months || CASE months WHEN 1 THEN ' month' ELSE ' months' END);
    END IF;
    IF months < 1 OR months > 120 THEN
        RAISE EXCEPTION 'qualification_window must be between 1 month and 10 years, not %', qualification_window
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The tier window counts whole calendar months, the current one included.',
                  HINT = 'For example qualification_window => ''12 months''.';
    END IF;
    IF strict IS NULL THEN
        RAISE EXCEPTION 'strict must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'strict => true fails an ERP statement with a row the program cannot accrue; false parks such rows in loyalty.rejected_event.',
                  HINT = 'Leave it out for the default, false.';
    END IF;
    IF starts_on = 'infinity' THEN
        RAISE EXCEPTION 'starts_on must be a date or -infinity, not infinity'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'starts_on is the first document date that earns points; from infinity on, no document would ever earn.',
                  HINT = 'Give a date, or leave it out for a program that earns from the beginning of time.';
    END IF;
    IF point_lifetime <= interval '0' THEN
        RAISE EXCEPTION 'point_lifetime must be positive, not %', point_lifetime
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'point_lifetime is how long earned points stay valid before settlement expires them.',
                  HINT = 'For example point_lifetime => ''2 years''; leave it out for points that never expire.';
    END IF;
    INSERT INTO @extschema@.program AS p (name, currency, ladder, basis, rounding, qualification_window,
                                          enrollment, strict, settlement_period, point_lifetime, rebate)
    VALUES (name, currency, ladder, basis, rounding, qualification_window,
            enrollment, strict, settlement_period, point_lifetime, rebate)
    RETURNING p.program_id INTO id;
    INSERT INTO @extschema@.rule (program_id, valid_from, points_per_unit)
    VALUES (id, coalesce(starts_on, '-infinity'), points_per_unit);
    RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.add_rule(
    program                  text,
    valid_from               date,
    points_per_unit          numeric,
    min_amount               numeric DEFAULT 0,
    product_line_multipliers jsonb DEFAULT '{}',
    tier_multipliers         jsonb DEFAULT '{}',
    segment_multipliers      jsonb DEFAULT '{}',
    on_time_bonus_pct        numeric DEFAULT 0,
    cap_points               bigint DEFAULT NULL,
    cap_period               text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    last_month date;
    c record;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'For example loyalty.add_rule(''Distributor Club'', valid_from => ''2025-01-01'', points_per_unit => 2).';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = add_rule.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF valid_from IS NULL THEN
        RAISE EXCEPTION 'valid_from must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'valid_from is the first document date the new version applies to.',
                  HINT = 'For example valid_from => ''2025-01-01''.';
    END IF;
    IF NOT isfinite(valid_from) THEN
        RAISE EXCEPTION 'valid_from must be a date, not %', valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first document date the new version applies to; the program''s first version, in force from its start, is made by loyalty.create_program(starts_on => ...).',
                  HINT = 'For example valid_from => ''2025-01-01''.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rule r WHERE r.program_id = pid AND r.valid_from = add_rule.valid_from) THEN
        RAISE EXCEPTION 'program "%" already has a rule version valid from %', program, valid_from
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'A program has one rule version per valid_from date.',
                  HINT = 'Versions are immutable once documents earned by them; add one with another valid_from.';
    END IF;
    IF points_per_unit IS NULL THEN
        RAISE EXCEPTION 'points_per_unit must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'points_per_unit is the version''s base rate: points per currency unit (or per quantity unit).',
                  HINT = 'Give 0 for a version that pays no points.';
    END IF;
    IF points_per_unit IN ('NaN', 'Infinity', '-Infinity') OR points_per_unit < 0 OR points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be at least 0 and below 1000000, not %', points_per_unit
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'points_per_unit is the version''s base rate: points per currency unit (or per quantity unit).',
                  HINT = 'For example points_per_unit => 1, or 0.5.';
    END IF;
    IF min_amount IS NULL THEN
        RAISE EXCEPTION 'min_amount must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Rows whose absolute amount (or quantity) is below min_amount earn no points.',
                  HINT = 'Leave it out for no minimum (0).';
    END IF;
    IF min_amount IN ('NaN', 'Infinity', '-Infinity') OR min_amount < 0 THEN
        RAISE EXCEPTION 'min_amount must be zero or a positive finite amount, not %', min_amount
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Rows whose absolute amount (or quantity) is below min_amount earn no points.',
                  HINT = 'For example min_amount => 50; leave it out for no minimum (0).';
    END IF;
    FOR c IN SELECT * FROM (VALUES
            (1, 'product_line_multipliers', product_line_multipliers, false,
             'product_line_multipliers maps product lines to positive numbers; lines not listed get 1.',
             'For example product_line_multipliers => ''{"SOLAR": 2}''.'),
            (2, 'tier_multipliers', tier_multipliers, false,
             'tier_multipliers maps tier names to positive numbers; tiers not listed get 1.',
             'For example tier_multipliers => ''{"Gold": 1.25}''.'),
            (3, 'segment_multipliers', segment_multipliers, true,
             'segment_multipliers maps cooperation_model, industry or region to objects of positive numbers; values not listed get 1.',
             'For example segment_multipliers => ''{"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.05}}''.'))
            AS x(n, param, value, nested, what, example) ORDER BY n LOOP
        IF c.value IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed', DETAIL = c.what,
                      HINT = 'Leave it out for none (''{}'').';
        END IF;
        IF NOT @extschema@._valid_multipliers(c.value, c.nested) THEN
            RAISE EXCEPTION 'invalid %: %', c.param, c.value
                USING ERRCODE = 'invalid_parameter_value', DETAIL = c.what, HINT = c.example;
        END IF;
    END LOOP;
    IF on_time_bonus_pct IS NULL THEN
        RAISE EXCEPTION 'on_time_bonus_pct must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'on_time_bonus_pct is the bonus, in percent of a row''s points, for a document paid on or before its due date.',
                  HINT = 'Leave it out for no bonus (0).';
    END IF;
    IF on_time_bonus_pct IN ('NaN', 'Infinity', '-Infinity') OR on_time_bonus_pct < 0 OR on_time_bonus_pct > 1000 THEN
        RAISE EXCEPTION 'on_time_bonus_pct must be between 0 and 1000, not %', on_time_bonus_pct
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'on_time_bonus_pct is the bonus, in percent of a row''s points, for a document paid on or before its due date.',
                  HINT = 'For example on_time_bonus_pct => 10 (ten percent more).';
    END IF;
    IF cap_points <= 0 THEN
        RAISE EXCEPTION 'cap_points must be positive, not %', cap_points
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cap_points is the most points an account can earn from invoices in one cap period.',
                  HINT = 'Leave out cap_points and cap_period for no cap.';
    END IF;
    IF cap_period NOT IN ('month', 'quarter', 'year') THEN
        RAISE EXCEPTION 'invalid cap_period: %', quote_literal(cap_period)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cap_period must be one of month, quarter, year.',
                  HINT = 'For example cap_points => 10000, cap_period => ''quarter''.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) THEN
        RAISE EXCEPTION 'cap_points and cap_period go together'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN cap_points IS NULL THEN 'cap_period was given without cap_points.'
                                ELSE 'cap_points was given without cap_period.' END,
                  HINT = 'For example cap_points => 10000, cap_period => ''quarter''.';
    END IF;
    -- A version must not change what documents already accrued have earned.
    SELECT max(m.month) INTO last_month FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.month >= date_trunc('month', valid_from)::date;
    IF last_month IS NOT NULL THEN
        RAISE EXCEPTION 'a rule version valid from % would change points already accrued', valid_from
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Program "%s" has accrued documents dated in %s, on or after valid_from.', program, to_char(last_month, 'YYYY-MM')),
                  HINT = pg_catalog.format('Start the version after the last accrued month, e.g. valid_from => %L.', (last_month + interval '1 month')::date);
    END IF;
    INSERT INTO @extschema@.rule (program_id, valid_from, points_per_unit, min_amount, product_line_multipliers,
                                  tier_multipliers, segment_multipliers, on_time_bonus_pct, cap_points, cap_period)
    VALUES (pid, valid_from, points_per_unit, min_amount, product_line_multipliers,
            tier_multipliers, segment_multipliers, on_time_bonus_pct, cap_points, cap_period);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ regtype;
    name text;
BEGIN
    IF col IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.atttypid::regtype, a.attname INTO typ, name FROM pg_attribute a
    WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF typ IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', col, rel
            USING ERRCODE = 'undefined_column',
                  DETAIL = pg_catalog.format('%s names a column of %s.', param, rel),
                  HINT = pg_catalog.format('Columns of %s: %s.', rel,
                         (SELECT string_agg(quote_ident(x.attname), ', ' ORDER BY x.attnum) FROM pg_attribute x
                          WHERE x.attrelid = rel AND x.attnum > 0 AND NOT x.attisdropped));
    END IF;
    IF accepted IS NOT NULL AND NOT typ = ANY (accepted) THEN
        RAISE EXCEPTION 'column "%" of relation % has type %, but % must be %', col, rel, typ, param, expected
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = pg_catalog.format('%s names a column of %s; it must be %s.', param, rel, expected),
                  HINT = CASE WHEN param = 'amount_column'
                              THEN 'Map a numeric or integer column, or cast it with amount_expression, e.g. amount_expression => ''unit_price::numeric * quantity''.'
                              ELSE 'Map a column of that type.' END;
    END IF;
    RETURN name;
END
$$;

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
    header_match_column text)
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
    hk text; hm text;
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
    pl := @extschema@._check_column(source, 'product_line_column', product_line_column, texts || ints, 'text or integer');
    -- each column as alias.column, quoted from its catalog name: s for the
    -- source, h for the header; a timestamptz becomes a date in the time
    -- zone in force at attach time, fixed in the mapping, so that no
    -- session setting can move a document
    acc := format('%I.%I', dalias, acc);
    dat := @extschema@._as_local(dside, dat, format('%I.%I', dalias, dat));
    cur := CASE WHEN cur IS NOT NULL THEN format('%I.%I', dalias, cur) END;
    dt := CASE WHEN dt IS NOT NULL THEN format('%I.%I', dalias, dt) END;
    due := CASE WHEN due IS NOT NULL THEN @extschema@._as_local(dside, due, format('%I.%I', dalias, due)) END;
    paid := CASE WHEN paid IS NOT NULL THEN @extschema@._as_local(dside, paid, format('%I.%I', dalias, paid)) END;
    amt := CASE WHEN amt IS NOT NULL THEN format('s.%I', amt) END;
    qty := CASE WHEN qty IS NOT NULL THEN format('s.%I', qty) END;
    pl := CASE WHEN pl IS NOT NULL THEN format('s.%I', pl) END;
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
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm)
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
    RETURN id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._attachment_of(source regclass, program text) RETURNS @extschema@.attachment
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'source is the ERP table the program is attached to.',
            HINT = 'SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = _attachment_of.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            DETAIL = pg_catalog.format('No active attachment of program "%s" has source %s.', program, source),
            HINT = 'Attach it with loyalty.attach(); SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    RETURN a;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    a @extschema@.attachment;
    trg text;
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
    trg := 'loyalty_accrual_' || a.attachment_id;
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
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'balance takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'').';
    END IF;
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
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= @extschema@._today(pid);
    -- below every upgrade, the first tier applies when its threshold is 0
    IF tier IS NULL THEN
        SELECT @extschema@.tier_of(p.ladder, 0) INTO tier FROM @extschema@.program p WHERE p.program_id = pid;
    END IF;
END
$$;

-- Checks its own arguments, so that its errors are its own, not balance()'s.
CREATE OR REPLACE FUNCTION @extschema@.tier(program text, account_key text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'tier takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.tier(''Distributor Club'', ''1042'').';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.program p WHERE p.name = tier.program) THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN (SELECT b.tier FROM @extschema@.balance(program, account_key) b);
END
$$;

-- The header's columns by their new names (the old ones stay, as aliases,
-- in the same positions at the end).
DROP FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text);
CREATE FUNCTION @extschema@.attach(
    source              regclass,
    program             text,
    account_column      text DEFAULT NULL,
    amount_column       text DEFAULT NULL,
    quantity_column     text DEFAULT NULL,
    date_column         text DEFAULT NULL,
    key_column          text DEFAULT NULL,
    product_line_column text DEFAULT NULL,
    currency_column     text DEFAULT NULL,
    doc_type_column     text DEFAULT NULL,
    credit_note_types   text[] DEFAULT NULL,
    due_date_column     text DEFAULT NULL,
    paid_date_column    text DEFAULT NULL,
    amount_expression   text DEFAULT NULL,
    header              regclass DEFAULT NULL,
    line_header_column  text DEFAULT NULL,
    header_id_column    text DEFAULT NULL,
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_attach' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. The caller needs TRIGGER and SELECT on the table (and on header). Columns are validated now; amount_expression must be one deterministic expression of the row''s columns, numeric or integer, never float, and is stored in canonical form. With header, the account, date, currency, document type and payment dates are read from the header table, whose row is the one whose header_id_column (default: its primary key) equals the line''s line_header_column; header_key_column and header_match_column are their deprecated names. Returns the attachment id. Rows that existed before: loyalty.backfill().';
REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text) TO loyalty_admin;

-- The same with the key values in their own types: explain_points('erp.invoice',
-- 90017::bigint).  Each is turned into text by its type's output function and
-- read back by the key column's type, then compared by that type's equality.
CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key "any")
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_points_any' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, "any") IS
    'How a row''s points were computed, per attached program, with the key columns'' values given in their own types, in order.';
REVOKE ALL ON FUNCTION @extschema@.explain_points(regclass, "any") FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.explain_points(regclass, "any") TO loyalty_reader, loyalty_operator, loyalty_admin;

-- ---------------------------------------------------------------------------
-- timestamptz document dates are pinned to the program's time zone (the
-- calendar of its upgrades and windows), not to the attaching session's.
DROP FUNCTION @extschema@._as_local(regclass, text, text);
CREATE FUNCTION @extschema@._as_local(rel regclass, col text, expr text, zone text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, zone)
            ELSE expr END;
COMMENT ON FUNCTION @extschema@._as_local(regclass, text, text, text) IS 'Internal: pins a timestamptz column to the program''s time zone, so that a document''s date is the same in every session.';
REVOKE ALL ON FUNCTION @extschema@._as_local(regclass, text, text, text) FROM PUBLIC;
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
    header_match_column text)
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
    hk text; hm text;
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
    pl := @extschema@._check_column(source, 'product_line_column', product_line_column, texts || ints, 'text or integer');
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
    pl := CASE WHEN pl IS NOT NULL THEN format('s.%I', pl) END;
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
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm)
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
    RETURN id;
END
$$;


-- ---------------------------------------------------------------------------
-- A product line from the product master: attach() maps the product line
-- through a product table (product, line_product_column, product_id_column),
-- looked up once per statement; loyalty.product_history keeps a product's
-- earlier lines so that a product moved to another line later changes
-- nothing already earned; _facts_sql (explain_points, verify, backfill)
-- follows the same mapping.
-- ---------------------------------------------------------------------------
ALTER TABLE @extschema@.attachment
    ADD COLUMN product regclass,
    ADD COLUMN line_product_column text,
    ADD COLUMN product_id_column text,
    ADD CONSTRAINT attachment_product_check
        CHECK ((product IS NULL) = (line_product_column IS NULL) AND (product IS NULL) = (product_id_column IS NULL)
               AND (product IS NULL OR product_line_expr IS NOT NULL));
COMMENT ON COLUMN @extschema@.attachment.product IS 'Product table (the product master) holding the product line of each line''s product; product_line_expr is then over it (alias p). NULL: the product line is a column of the source.';
COMMENT ON COLUMN @extschema@.attachment.line_product_column IS 'The lines'' column (of source) that references the product table.';
COMMENT ON COLUMN @extschema@.attachment.product_id_column IS 'The product table''s own column that line_product_column references (its primary key by default).';

-- A product's earlier product lines, per attachment: written by the trigger
-- on the product table (loyalty.track_product) when a product's mapped
-- product line changes or the product is deleted, so that what a document
-- earned never changes after the fact.
CREATE TABLE @extschema@.product_history (
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    product_key   text NOT NULL,
    valid_until   date NOT NULL,
    product_line  text,
    changed_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (attachment_id, product_key, valid_until)
);
COMMENT ON TABLE @extschema@.product_history IS 'Earlier product lines of the products of an attachment''s product table. A document dated before valid_until earns by the product line of the first row of its product that ends after the document''s date; later documents by the product''s current row. A change takes effect from the day after it is made (in the program''s calendar), or after the latest document of the product already written, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.product_history.attachment_id IS 'The attachment whose product table it is.';
COMMENT ON COLUMN @extschema@.product_history.product_key IS 'The product''s key (product_id_column) in its text form.';
COMMENT ON COLUMN @extschema@.product_history.valid_until IS 'First document date this product line no longer applies to.';
COMMENT ON COLUMN @extschema@.product_history.product_line IS 'The product line as it was (NULL: none, or the product did not exist).';
COMMENT ON COLUMN @extschema@.product_history.changed_at IS 'When the change was made.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.product_history', '');
GRANT SELECT ON @extschema@.product_history TO loyalty_reader, loyalty_operator, loyalty_admin;

CREATE FUNCTION @extschema@.track_product() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_track_product' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.track_product() IS 'Statement-level triggers on a product table: when a product''s mapped product line changes, the product is deleted, or a product is inserted after lines that name it, keeps the line it had for the documents dated before the change (loyalty.product_history).';
REVOKE ALL ON FUNCTION @extschema@.track_product() FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    key text;
    from_clause text;
    hdr text;
    pl text;
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

DROP FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text);
CREATE FUNCTION @extschema@._attach(
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
        product, line_product_column, product_id_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm, product, lp, pk)
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
COMMENT ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) IS
    'Internal: the extension owner''s part of attach(): column checks, the attachment row and the triggers.';
REVOKE ALL ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) FROM PUBLIC;

DROP FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text);
CREATE FUNCTION @extschema@.attach(
    source              regclass,
    program             text,
    account_column      text DEFAULT NULL,
    amount_column       text DEFAULT NULL,
    quantity_column     text DEFAULT NULL,
    date_column         text DEFAULT NULL,
    key_column          text DEFAULT NULL,
    product_line_column text DEFAULT NULL,
    currency_column     text DEFAULT NULL,
    doc_type_column     text DEFAULT NULL,
    credit_note_types   text[] DEFAULT NULL,
    due_date_column     text DEFAULT NULL,
    paid_date_column    text DEFAULT NULL,
    amount_expression   text DEFAULT NULL,
    header              regclass DEFAULT NULL,
    line_header_column  text DEFAULT NULL,
    header_id_column    text DEFAULT NULL,
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL,
    product             regclass DEFAULT NULL,
    line_product_column text DEFAULT NULL,
    product_id_column   text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_attach' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. The caller needs TRIGGER and SELECT on the table (and on header). Columns are validated now; amount_expression must be one deterministic expression of the row''s columns, numeric or integer, never float, and is stored in canonical form. With header, the account, date, currency, document type and payment dates are read from the header table, whose row is the one whose header_id_column (default: its primary key) equals the line''s line_header_column; header_key_column and header_match_column are their deprecated names. With product, product_line_column names a column of the product table (the product master), whose row is the one whose product_id_column (default: its primary key) equals the line''s line_product_column; a product moved to another line later changes nothing already earned (loyalty.product_history). Returns the attachment id. Rows that existed before: loyalty.backfill().';
REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text) TO loyalty_admin;

CREATE OR REPLACE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    a @extschema@.attachment;
    trg text;
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
    trg := 'loyalty_accrual_' || a.attachment_id;
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
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@._verify_attachments(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH att AS (
    SELECT x.attachment_id, x.source::oid AS source, x.header::oid AS header, x.product::oid AS product,
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

-- ---- The append-only write path (issue 7): postings append balance
-- deltas, loyalty.fold() folds them; loyalty.balance becomes a view over
-- the folded balances and the deltas; ledger entries are numbered per
-- transaction. ----
DROP VIEW @extschema@.accrual_month;
ALTER TABLE @extschema@.balance RENAME TO balance_folded;
ALTER INDEX @extschema@.balance_pkey RENAME TO balance_folded_pkey;
ALTER TABLE @extschema@.balance_folded RENAME CONSTRAINT balance_entry_count_check TO balance_folded_entry_count_check;
COMMENT ON TABLE @extschema@.balance_folded IS 'Running totals per account as of the last loyalty.fold(): the ERP''s transactions never write it (they append to loyalty.balance_delta), so they never wait on each other here. Read balances through the view loyalty.balance, which adds what is not folded yet.';
COMMENT ON COLUMN @extschema@.balance_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_folded.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_folded.points IS 'Points available (sum of the folded ledger entries, caps included).';
COMMENT ON COLUMN @extschema@.balance_folded.qualifying IS 'Lifetime qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_folded.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance_folded.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance_folded.entry_count IS 'Number of ledger entries folded.';
COMMENT ON COLUMN @extschema@.balance_folded.m_month IS 'Per-month sums, one element per (document month, attachment), sorted: the months. Read them through the view loyalty.accrual_month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_attachment IS 'Per-month sums: the attachment (ERP table mapping) of each element.';
COMMENT ON COLUMN @extschema@.balance_folded.m_points IS 'Per-month sums: points earned by the documents of the month (bonus included, caps not applied).';
COMMENT ON COLUMN @extschema@.balance_folded.m_qualifying IS 'Per-month sums: qualifying spend of the documents of the month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_source_rows IS 'Per-month sums: net number of ERP rows accrued.';
COMMENT ON COLUMN @extschema@.balance_folded.updated_at IS 'Last fold that changed the row.';
COMMENT ON COLUMN @extschema@.balance_folded.last_doc_date IS 'The latest document date the account ever accrued (never decreases): tier and segment changes take effect after it, so that no accrued document changes what it earned.';

-- What one statement (or backfill, or restatement) changed for one
-- account: appended, never updated, so that two transactions posting to the
-- same customer never wait on each other, deadlock or fail to serialize.
-- loyalty.fold() moves committed rows into loyalty.balance_folded.
CREATE TABLE @extschema@.balance_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    points        bigint NOT NULL DEFAULT 0,
    qualifying    numeric NOT NULL DEFAULT 0,
    rebate        numeric NOT NULL DEFAULT 0,
    mdf           numeric NOT NULL DEFAULT 0,
    entry_count   bigint NOT NULL DEFAULT 0,
    m_month       date[] NOT NULL DEFAULT '{}',
    m_attachment  integer[] NOT NULL DEFAULT '{}',
    m_points      bigint[] NOT NULL DEFAULT '{}',
    m_qualifying  numeric[] NOT NULL DEFAULT '{}',
    m_source_rows bigint[] NOT NULL DEFAULT '{}',
    last_doc_date date,
    posted_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.balance_delta IS 'Balance changes not folded yet, one row per account and posting statement. Appended by the accrual triggers, backfill and restatements; loyalty.fold() (pg_cron) adds committed rows to loyalty.balance_folded and deletes them. loyalty.balance and loyalty.accrual_month add them in, so reads are exact whether or not a fold ran.';
COMMENT ON COLUMN @extschema@.balance_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_delta.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_xid IS 'Transaction that posted the change.';
COMMENT ON COLUMN @extschema@.balance_delta.delta_no IS 'Number within the transaction (shared with the ledger entries it posted).';
COMMENT ON COLUMN @extschema@.balance_delta.points IS 'Points posted, before caps (loyalty.balance applies them; the fold books them as ledger entries of kind cap).';
COMMENT ON COLUMN @extschema@.balance_delta.qualifying IS 'Qualifying spend posted.';
COMMENT ON COLUMN @extschema@.balance_delta.rebate IS 'Rebate money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.mdf IS 'MDF money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.entry_count IS 'Ledger entries posted with it.';
COMMENT ON COLUMN @extschema@.balance_delta.m_month IS 'Per-month sums posted: the months (sorted, with m_attachment).';
COMMENT ON COLUMN @extschema@.balance_delta.m_attachment IS 'Per-month sums posted: the attachments.';
COMMENT ON COLUMN @extschema@.balance_delta.m_points IS 'Per-month sums posted: points (caps not applied).';
COMMENT ON COLUMN @extschema@.balance_delta.m_qualifying IS 'Per-month sums posted: qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_delta.m_source_rows IS 'Per-month sums posted: net ERP rows.';
COMMENT ON COLUMN @extschema@.balance_delta.last_doc_date IS 'The latest document date the posting added.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_at IS 'When.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance_delta', '');

CREATE FUNCTION @extschema@.pending_caps(program_id integer, account_key text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_pending_caps' LANGUAGE C STABLE STRICT SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.pending_caps(integer, text) IS
    'What the caps withhold (negative) or give back from an account''s postings not folded yet: the cap entry the next loyalty.fold() books. loyalty.balance adds it, so that balances are capped before the fold. Reads with the caller''s rights and snapshot.';

CREATE VIEW @extschema@.balance AS
SELECT s.program_id, s.account_key,
       (s.points OPERATOR(pg_catalog.+) CASE WHEN s.pending THEN @extschema@.pending_caps(s.program_id, s.account_key) ELSE 0 END)::bigint AS points,
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
COMMENT ON VIEW @extschema@.balance IS 'Running totals per account: the folded balance plus every posting not folded yet that the reader can see (its own uncommitted ones included), caps applied. Equal to the sums of loyalty.ledger at all times, with the caps the next fold books.';
COMMENT ON COLUMN @extschema@.balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance.points IS 'Points available, caps applied.';
COMMENT ON COLUMN @extschema@.balance.qualifying IS 'Lifetime qualifying spend; the rolling figure that decides tiers is loyalty.balance(program, account).rolling_qualifying.';
COMMENT ON COLUMN @extschema@.balance.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance.entry_count IS 'Number of ledger entries of the account (cap entries the next fold books not included).';
COMMENT ON COLUMN @extschema@.balance.updated_at IS 'Last change.';
COMMENT ON COLUMN @extschema@.balance.last_doc_date IS 'The latest document date the account ever accrued.';

CREATE VIEW @extschema@.accrual_month AS
SELECT u.program_id, u.attachment_id, u.account_key, u.month,
       pg_catalog.sum(u.points)::bigint AS points, pg_catalog.sum(u.qualifying) AS qualifying,
       pg_catalog.sum(u.source_rows)::bigint AS source_rows
FROM (SELECT b.program_id, x.attachment_id, b.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_folded b,
           ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                      pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)
      UNION ALL
      SELECT d.program_id, x.attachment_id, d.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_delta d,
           ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points),
                      pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)) u
GROUP BY u.program_id, u.attachment_id, u.account_key, u.month
HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0
    OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0;
COMMENT ON VIEW @extschema@.accrual_month IS 'What each account''s documents earned per document month and ERP table, before caps: the rolling qualification window, caps and loyalty.verify read it.';
COMMENT ON COLUMN @extschema@.accrual_month.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.accrual_month.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.accrual_month.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.accrual_month.month IS 'First day of the documents'' month.';
COMMENT ON COLUMN @extschema@.accrual_month.points IS 'Points earned by the rows of that month (bonus included, cap not applied).';
COMMENT ON COLUMN @extschema@.accrual_month.qualifying IS 'Qualifying spend of the rows of that month.';
COMMENT ON COLUMN @extschema@.accrual_month.source_rows IS 'Net number of rows accrued (inserts minus deletes).';


REVOKE ALL ON FUNCTION @extschema@.pending_caps(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.pending_caps(integer, text) TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON @extschema@.balance_delta, @extschema@.balance, @extschema@.accrual_month
    TO loyalty_reader, loyalty_operator, loyalty_admin;

ALTER TABLE @extschema@.ledger ADD COLUMN corrects_xid xid8;
UPDATE @extschema@.ledger l SET corrects_xid = c.posted_xid
FROM @extschema@.ledger c
WHERE l.corrects IS NOT NULL AND c.program_id = l.program_id AND c.account_key = l.account_key AND c.entry_no = l.corrects;
ALTER TABLE @extschema@.ledger DROP CONSTRAINT ledger_check;
ALTER TABLE @extschema@.ledger ADD CHECK ((corrects IS NULL) = (corrects_xid IS NULL));
ALTER TABLE @extschema@.ledger DROP CONSTRAINT ledger_pkey;
ALTER TABLE @extschema@.ledger ADD PRIMARY KEY (program_id, account_key, posted_xid, entry_no);
COMMENT ON COLUMN @extschema@.ledger.entry_no IS 'Entry number within the posting transaction (posted_xid), from 1; with the account and posted_xid it identifies the entry. No sequence and no per-account counter is involved, so postings never wait for each other.';
COMMENT ON COLUMN @extschema@.ledger.corrects IS 'Entry number of the entry (same account, transaction corrects_xid) this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.corrects_xid IS 'Transaction of the entry this entry corrects, if any.';

CREATE OR REPLACE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'balance takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'').';
    END IF;
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
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= @extschema@._today(pid);
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

CREATE OR REPLACE FUNCTION @extschema@._verify_books(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- the per-month sums, capped, vs the ledger's accrual entries
WITH months AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.points) AS points, pg_catalog.sum(m.qualifying) AS qualifying
    FROM @extschema@.accrual_month m WHERE m.program_id OPERATOR(pg_catalog.=) $1 GROUP BY 1, 2),
expected AS (
    SELECT mo.account_key,
           @extschema@._capped_points($1, pg_catalog.array_agg(mo.month), pg_catalog.array_agg(mo.points::bigint)) AS points,
           pg_catalog.sum(mo.qualifying) AS qualifying
    FROM months mo GROUP BY 1),
posted AS (
    SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id OPERATOR(pg_catalog.=) $1
      AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
    GROUP BY 1),
-- the cap entries the next fold books, for the accounts with unfolded postings
pending AS (
    SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
    FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
          WHERE x.program_id OPERATOR(pg_catalog.=) $1) d),
ledger_sums AS (
    SELECT coalesce(x.account_key, pe.account_key) AS account_key,
           coalesce(x.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, x.qualifying, x.n
    FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                 pg_catalog.count(*) AS n
          FROM @extschema@.ledger x WHERE x.program_id OPERATOR(pg_catalog.=) $1 GROUP BY 1) x
         FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) x.account_key)
SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
FROM expected e
     FULL JOIN (SELECT coalesce(po.account_key, pe.account_key) AS account_key,
                       coalesce(po.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, po.qualifying
                FROM posted po FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) po.account_key) p
       ON p.account_key OPERATOR(pg_catalog.=) e.account_key,
     LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                     ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- the ledger vs the balances
SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
FROM ledger_sums l
     FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
                FROM @extschema@.balance x WHERE x.program_id OPERATOR(pg_catalog.=) $1) b
       ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
     LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                     ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                     ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
$$;


CREATE FUNCTION @extschema@.fold(program text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_fold' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.fold(text) IS
    'Folds the committed balance changes of a program (NULL: of every program) into loyalty.balance_folded, books the cap entries they call for and records the tier upgrades they earn; returns how many changes it folded. Schedule it with pg_cron (e.g. every minute). Balances read the same before and after; a fold already running for a program is not waited for (that program is skipped).';
REVOKE ALL ON FUNCTION @extschema@.fold(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.fold(text) TO loyalty_operator, loyalty_admin;


-- ---- Unenrolled activity appended, folded by loyalty.fold() ----
ALTER TABLE @extschema@.unenrolled_activity RENAME TO unenrolled_folded;
ALTER INDEX @extschema@.unenrolled_activity_pkey RENAME TO unenrolled_folded_pkey;
ALTER TABLE @extschema@.unenrolled_folded RENAME CONSTRAINT unenrolled_activity_program_id_fkey TO unenrolled_folded_program_id_fkey;
ALTER TABLE @extschema@.unenrolled_folded RENAME CONSTRAINT unenrolled_activity_attachment_id_fkey TO unenrolled_folded_attachment_id_fkey;
COMMENT ON TABLE @extschema@.unenrolled_folded IS 'Activity of customers not enrolled in an explicit-enrolment program, as of the last loyalty.fold(). Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_folded.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.last_seen IS 'Last time seen.';

-- Appended by the accrual triggers, one row per customer and statement, so
-- that two transactions invoicing the same unenrolled customer never wait
-- for each other; loyalty.fold() sums committed rows into unenrolled_folded.
CREATE TABLE @extschema@.unenrolled_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    attachment_id integer NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.unenrolled_delta IS 'Activity of unenrolled customers not folded yet, one row per customer, ERP table and statement. Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.posted_xid IS 'Transaction that saw the rows.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.delta_no IS 'Number within the transaction.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.source_rows IS 'Net rows seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.seen_at IS 'When.';

CREATE VIEW @extschema@.unenrolled_activity AS
SELECT u.program_id, u.attachment_id, u.account_key, pg_catalog.sum(u.source_rows)::bigint AS source_rows,
       pg_catalog.sum(u.amount) AS amount, pg_catalog.min(u.first_seen) AS first_seen, pg_catalog.max(u.last_seen) AS last_seen
FROM (SELECT f.program_id, f.attachment_id, f.account_key, f.source_rows, f.amount, f.first_seen, f.last_seen
      FROM @extschema@.unenrolled_folded f
      UNION ALL
      SELECT d.program_id, d.attachment_id, d.account_key, d.source_rows, d.amount, d.seen_at, d.seen_at
      FROM @extschema@.unenrolled_delta d) u
GROUP BY u.program_id, u.attachment_id, u.account_key;
COMMENT ON VIEW @extschema@.unenrolled_activity IS 'Customers that invoiced under an explicit-enrolment program without being enrolled: ignored by accrual, counted here (candidates to enrol).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.last_seen IS 'Last time seen.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_delta', '');
GRANT SELECT ON @extschema@.unenrolled_delta, @extschema@.unenrolled_activity TO loyalty_reader, loyalty_operator, loyalty_admin;
-- ---------------------------------------------------------------------------
-- verify() that scales, and its quick checks: verify(program, account) and
-- verify(program, since).  The ledger and balance checks take an account
-- (NULL: every one) and are split, so that "ledger sums vs balance" is one
-- function of its own (_verify_balance).
-- ---------------------------------------------------------------------------
DROP FUNCTION @extschema@._verify_books(integer);

-- The checks of verify that read loyalty's tables only, as the owner, for
-- every account of a program or for one (account NULL: every one).  PL/pgSQL
-- so that the one-account check is planned for its key (an index look-up),
-- not for every account.

-- The per-month sums, capped, against the ledger's accrual entries.
CREATE FUNCTION @extschema@._verify_ledger(program_id integer, account text)
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
        WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2)
        GROUP BY 1),
    posted AS (
        SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2)
          AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
        GROUP BY 1)
    SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e FULL JOIN posted p ON p.account_key OPERATOR(pg_catalog.=) e.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@._verify_ledger(integer, text) IS
    'Internal: verify''s check of the per-month sums, capped, against the ledger''s accrual entries, of every account of a program or of one.';

-- The ledger's sums against loyalty.balance: the one place that says what
-- a balance must be, given the ledger.
CREATE FUNCTION @extschema@._verify_balance(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                 pg_catalog.count(*) AS n
          FROM @extschema@.ledger x
          WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
          GROUP BY 1) l
         FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
                    FROM @extschema@.balance x
                    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) b
           ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@._verify_balance(integer, text) IS
    'Internal: verify''s check of the balances against the sums of the ledger, of every account of a program or of one.';

-- The quick checks a DBA can run every night, with verify's output: one
-- account, or the document months from a date on.
CREATE FUNCTION @extschema@.verify(program text, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify_account' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text, text) IS
    'verify() for one enrolled account: its source rows, per-month sums, ledger and balance; also the attached tables'' triggers. Call it with account => ''...''.';

CREATE FUNCTION @extschema@.verify(program text, since date)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify_since' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text, date) IS
    'verify() for the document months from since (rounded down to its month) on: the source rows of those months against their per-month sums; also the attached tables'' triggers. The ledger and balance totals span every month: verify(program) and verify(program, account) check them. Call it with since => ''...''.';
REVOKE ALL ON FUNCTION @extschema@._verify_ledger(integer, text), @extschema@._verify_balance(integer, text),
                      @extschema@.verify(text, text), @extschema@.verify(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.verify(text, text), @extschema@.verify(text, date)
TO loyalty_reader, loyalty_operator, loyalty_admin;

-- ---- verify's ledger and balance checks count the cap entries the next fold books ----
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
        WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2)
        GROUP BY 1),
    posted AS (
        SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2)
          AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
        GROUP BY 1),
    -- the cap entries the next fold books, for the accounts with unfolded postings
    pending AS (
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) d
        WHERE capped)
    SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e
         FULL JOIN (SELECT coalesce(po.account_key, pe.account_key) AS account_key,
                           coalesce(po.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, po.qualifying
                    FROM posted po FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) po.account_key) p
           ON p.account_key OPERATOR(pg_catalog.=) e.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
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
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) d
        WHERE capped)
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM (SELECT coalesce(x.account_key, pe.account_key) AS account_key,
                 coalesce(x.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, x.qualifying, x.n
          FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                       pg_catalog.count(*) AS n
                FROM @extschema@.ledger x
                WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
                GROUP BY 1) x
               FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) x.account_key) l
         FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
                    FROM @extschema@.balance x
                    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) b
           ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;


-- ---- Postings outside accrual (redeem, expire, award, rebate, mdf, adjust) through loyalty._post; verify() checks the rebate and MDF wallets ----
CREATE FUNCTION @extschema@._ledger_number() RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_ledger_number' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@._ledger_number() IS
'Internal: the next ledger entry number of the current transaction.';

CREATE FUNCTION @extschema@._post(
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
    IF kind = ANY ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[]) THEN
        RAISE EXCEPTION 'ledger kind % is posted by accrual only', kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Accrual kinds are derived from invoice rows and checked against them by verify().';
    END IF;
    IF coalesce(points, 0) = 0 AND coalesce(rebate, 0) = 0 AND coalesce(mdf, 0) = 0 THEN
        RETURN NULL;            -- nothing to post
    END IF;
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    VALUES ($1, $2, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5);
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    VALUES ($1, $2, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), 1);
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post(integer, text, @extschema@.ledger_kind, bigint, text, numeric, numeric, text, xid8, bigint) IS
'Internal: posts one ledger entry that does not come from an invoice row (redeem, expire, award, rebate, mdf, adjust, bonus) with its balance delta; returns its entry number within the transaction (NULL when there is nothing to post).';
REVOKE ALL ON FUNCTION @extschema@._ledger_number(), @extschema@._post(integer, text, @extschema@.ledger_kind, bigint, text, numeric, numeric, text, xid8, bigint) FROM PUBLIC;

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
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) d
        WHERE capped)
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM (SELECT coalesce(x.account_key, pe.account_key) AS account_key,
                 coalesce(x.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, x.qualifying,
                 x.rebate, x.mdf, x.n
          FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                       pg_catalog.sum(x.rebate) AS rebate, pg_catalog.sum(x.mdf) AS mdf, pg_catalog.count(*) AS n
                FROM @extschema@.ledger x
                WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
                GROUP BY 1) x
               FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) x.account_key) l
         FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.rebate, x.mdf, x.entry_count AS n
                    FROM @extschema@.balance x
                    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) b
           ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_rebate', coalesce(l.rebate, 0), coalesce(b.rebate, 0)),
                         ('balance_mdf', coalesce(l.mdf, 0), coalesce(b.mdf, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;


-- ---- Debits of one account take its next debit number (row lock until commit) ----
ALTER TABLE @extschema@.account ADD COLUMN debit_no bigint NOT NULL DEFAULT 0 CHECK (debit_no OPERATOR(pg_catalog.>=) 0);
COMMENT ON COLUMN @extschema@.account.debit_no IS 'How many debits (redemptions, claims, expiry) the account has had; taking the next number serialises them.';

CREATE FUNCTION @extschema@._lock_for_debit(program_id integer, account_key text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
    WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2
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
COMMENT ON FUNCTION @extschema@._lock_for_debit(integer, text) IS
'Internal: locks an account for a debit until commit and returns its next debit number.';
REVOKE ALL ON FUNCTION @extschema@._lock_for_debit(integer, text) FROM PUBLIC;


-- ---- Rewards catalogue: kinds, validity window, per-period limits; redemption keyed by account and debit number, redeem and cancel_redemption ----
ALTER TABLE @extschema@.reward
    ADD COLUMN kind text NOT NULL DEFAULT 'goods'
        CHECK (kind IN ('discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                        'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other')),
    ADD COLUMN description text,
    ADD COLUMN valid_from date,
    ADD COLUMN valid_until date,
    ADD COLUMN period_limit integer CHECK (period_limit OPERATOR(pg_catalog.>) 0),
    ADD COLUMN limit_period text CHECK (limit_period IN ('month', 'quarter', 'year')),
    ADD CONSTRAINT reward_limit_pair_check CHECK ((period_limit IS NULL) = (limit_period IS NULL)),
    ADD CONSTRAINT reward_window_check CHECK (valid_until OPERATOR(pg_catalog.>) valid_from);
COMMENT ON TABLE @extschema@.reward IS 'Catalogue of rewards (discounts, goods and business services: training seats, consultancy hours, extended warranty, marketing support, trade-show places, service visits, sessions with experts) with their points price and limits. Written with loyalty.set_reward(); redeemed with loyalty.redeem().';
COMMENT ON COLUMN @extschema@.reward.stock IS 'Units left; NULL = unlimited. Each redemption takes its units, each cancellation gives them back.';
COMMENT ON COLUMN @extschema@.reward.per_account_limit IS 'Most units one account may redeem in all (cancelled redemptions not counted); NULL = unlimited.';
COMMENT ON COLUMN @extschema@.reward.kind IS 'What it is: discount, goods, training, consultancy, extended_warranty, marketing_support, trade_show, service_visit, expert_session or other.';
COMMENT ON COLUMN @extschema@.reward.description IS 'Longer description for the catalogue.';
COMMENT ON COLUMN @extschema@.reward.valid_from IS 'First day (program calendar) it can be redeemed; NULL = since always.';
COMMENT ON COLUMN @extschema@.reward.valid_until IS 'First day (program calendar) it can no longer be redeemed; NULL = no end.';
COMMENT ON COLUMN @extschema@.reward.period_limit IS 'Most units one account may redeem per calendar period (limit_period), cancelled redemptions not counted; NULL = no such limit.';
COMMENT ON COLUMN @extschema@.reward.limit_period IS 'The calendar period of period_limit: month, quarter or year (program calendar).';

-- 1.0 had no function that wrote loyalty.redemption: it is re-created with
-- a key of the account and its debit number, and a uuid to cancel by.
DO $refuse$
BEGIN
    IF EXISTS (SELECT FROM @extschema@.redemption) THEN
        RAISE EXCEPTION 'loyalty.redemption has rows written outside loyalty''s functions'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = '1.0 had no function that redeems; 1.1 re-creates the table with a new key.',
                  HINT = 'Copy the rows elsewhere, empty loyalty.redemption, update, and redeem them again with loyalty.redeem().';
    END IF;
END
$refuse$;
-- out of the extension first, which also drops the table and its identity
-- sequence from the tables pg_dump keeps
ALTER EXTENSION loyalty DROP SEQUENCE @extschema@.redemption_redemption_id_seq;
ALTER EXTENSION loyalty DROP TABLE @extschema@.redemption;
DROP TABLE @extschema@.redemption;
-- Keyed by the account and its debit number (loyalty._lock_for_debit): no
-- sequence, co-located with the account.  No foreign key to loyalty.reward:
-- its check would share-lock the reward's row in every redemption, one row
-- that all redemptions of a popular reward would then queue on; a reward is
-- never deleted (no loyalty role may, and set_reward deactivates instead).
-- None to loyalty.account or loyalty.member either, as for the ledger:
-- each check is a trigger and a query per redemption; redeem() checks the
-- account and the member itself, an account with postings cannot be deleted
-- (account_keep), no loyalty role may delete a member, and verify's member
-- check (_verify_members) reports entries of unknown members.
CREATE TABLE @extschema@.redemption (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    redemption_no bigint NOT NULL,
    redemption_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    reward_id     text NOT NULL,
    member_id     text,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>) 0),
    status        text NOT NULL DEFAULT 'redeemed' CHECK (status IN ('redeemed', 'cancelled')),
    redeemed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    redeemed_on   date NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no      bigint NOT NULL,
    cancelled_at  timestamptz,
    cancel_xid    xid8,
    cancel_entry_no bigint,
    PRIMARY KEY (program_id, account_key, redemption_no),
    CONSTRAINT redemption_cancel_check
        CHECK ((status OPERATOR(pg_catalog.=) 'cancelled') = (cancelled_at IS NOT NULL)
               AND (cancelled_at IS NULL) = (cancel_xid IS NULL) AND (cancel_xid IS NULL) = (cancel_entry_no IS NULL))
);
CREATE INDEX redemption_id_idx ON @extschema@.redemption (redemption_id);
COMMENT ON TABLE @extschema@.redemption IS 'Rewards redeemed (loyalty.redeem): each spent its points with a ledger entry of kind redeem; a cancellation (loyalty.cancel_redemption) posts the opposite entry, pointing at the original.';
COMMENT ON COLUMN @extschema@.redemption.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.redemption.account_key IS 'The redeeming account.';
COMMENT ON COLUMN @extschema@.redemption.redemption_no IS 'The account''s debit number (loyalty.account.debit_no) the redemption took.';
COMMENT ON COLUMN @extschema@.redemption.redemption_id IS 'The redemption''s identifier, returned by loyalty.redeem() and taken by loyalty.cancel_redemption().';
COMMENT ON COLUMN @extschema@.redemption.reward_id IS 'The reward.';
COMMENT ON COLUMN @extschema@.redemption.member_id IS 'The member who redeemed from their own points; NULL = the account.';
COMMENT ON COLUMN @extschema@.redemption.quantity IS 'Units.';
COMMENT ON COLUMN @extschema@.redemption.points IS 'Points spent (quantity x price at the time).';
COMMENT ON COLUMN @extschema@.redemption.status IS 'redeemed or cancelled.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_at IS 'When it was redeemed.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_on IS 'The day it was redeemed in the program''s calendar (the per-period limit counts by it).';
COMMENT ON COLUMN @extschema@.redemption.posted_xid IS 'Transaction of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.entry_no IS 'Entry number (within posted_xid) of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.cancelled_at IS 'When it was cancelled.';
COMMENT ON COLUMN @extschema@.redemption.cancel_xid IS 'Transaction of the ledger entry that gave the points back.';
COMMENT ON COLUMN @extschema@.redemption.cancel_entry_no IS 'Entry number (within cancel_xid) of the ledger entry that gave the points back.';
GRANT SELECT ON @extschema@.redemption TO loyalty_reader, loyalty_operator, loyalty_admin;
-- the catalogue is written through loyalty.set_reward, which checks what it writes
REVOKE INSERT, UPDATE ON @extschema@.reward FROM loyalty_operator, loyalty_admin;

-- Rewards: the catalogue, redemption and its cancellation.
--
-- A redemption is a debit and follows the debit protocol (45_postings.sql):
-- it locks the account (loyalty._lock_for_debit), waits for transactions
-- still posting to the account (a credit note of the ERP in flight), then,
-- in later statements, reads the balance, the stock and the limits, and
-- posts.  Locks are always taken in one order: the account, then the
-- reward.  A credit note that starts after the check may still take the
-- balance below zero: that is the invoice's reversal, not an overdraft of
-- the redemption; a negative balance refuses every redemption until
-- earnings cover it.

-- Registered here rather than with the other tables (20_schema.sql), so that
-- a fresh install lists it where the upgrade from 1.0, which re-creates the
-- table, registers it again.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.redemption', '');

CREATE FUNCTION @extschema@._await_postings(program_id integer, account_key text) RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_await_postings' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._await_postings(integer, text) IS
'Internal: waits for the other transactions in progress that appended balance deltas of the account (an ERP credit note in flight), so that a debit reads a balance nobody is still changing; returns how many it waited for.';

-- Writes one reward of the catalogue (insert or replace).
CREATE FUNCTION @extschema@.set_reward(
    program           text,
    reward_id         text,
    name              text,
    points_price      bigint,
    kind              text DEFAULT 'goods',
    min_tier          text DEFAULT NULL,
    stock             integer DEFAULT NULL,
    per_account_limit integer DEFAULT NULL,
    period_limit      integer DEFAULT NULL,
    limit_period      text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL,
    description       text DEFAULT NULL,
    active            boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    lad @extschema@.tier_ladder;
    kinds text[] := ARRAY['discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                          'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other'];
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, p.ladder INTO pid, lad FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF reward_id IS NULL OR reward_id = '' OR reward_id <> btrim(reward_id) OR length(reward_id) > 63 THEN
        RAISE EXCEPTION 'reward_id must be a code of 1 to 63 characters without surrounding spaces'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('reward_id %s was given.', coalesce(pg_catalog.quote_literal(reward_id), 'NULL')),
                  HINT = 'For example reward_id => ''TRAINING-SEAT''.';
    END IF;
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'name of reward "%" must not be NULL or empty', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'name is what the partner sees in the catalogue.',
                  HINT = 'For example name => ''Training seat, 2 days''.';
    END IF;
    IF points_price IS NULL OR points_price <= 0 OR points_price > 1000000000000 THEN
        RAISE EXCEPTION 'points_price of reward "%" must be between 1 and 1000000000000', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points_price %s was given.', coalesce(points_price::text, 'NULL')),
                  HINT = 'Give the points one unit costs.';
    END IF;
    IF kind IS NULL OR kind <> ALL (kinds) THEN
        RAISE EXCEPTION 'kind of reward "%" must be one of %', reward_id, pg_catalog.array_to_string(kinds, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('kind %s was given.', coalesce(pg_catalog.quote_literal(kind), 'NULL')),
                  HINT = 'Use other for a reward that fits none of them.';
    END IF;
    IF min_tier IS NOT NULL AND (lad IS NULL OR NOT EXISTS (SELECT FROM @extschema@.tiers(lad) t WHERE t.name = min_tier)) THEN
        RAISE EXCEPTION 'min_tier "%" is not a tier of program "%"', min_tier, program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN lad IS NULL THEN 'The program has no tier ladder.'
                                ELSE pg_catalog.format('Its tiers are %s.', lad) END,
                  HINT = 'Give a tier name of the program''s ladder (exact case), or NULL for every tier.';
    END IF;
    IF stock < 0 OR per_account_limit <= 0 OR period_limit <= 0 THEN
        RAISE EXCEPTION 'stock of reward "%" must not be negative, per_account_limit and period_limit must be positive', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('stock %s, per_account_limit %s, period_limit %s were given.',
                                             coalesce(stock::text, 'NULL'), coalesce(per_account_limit::text, 'NULL'),
                                             coalesce(period_limit::text, 'NULL')),
                  HINT = 'NULL means unlimited.';
    END IF;
    IF (period_limit IS NULL) <> (limit_period IS NULL) OR limit_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'period_limit and limit_period of reward "%" go together; limit_period is month, quarter or year', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('period_limit %s, limit_period %s were given.', coalesce(period_limit::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(limit_period), 'NULL')),
                  HINT = 'For example period_limit => 2, limit_period => ''quarter''.';
    END IF;
    IF NOT pg_catalog.isfinite(valid_from) OR NOT pg_catalog.isfinite(valid_until) OR valid_until <= valid_from THEN
        RAISE EXCEPTION 'valid_from and valid_until of reward "%" must be finite dates, valid_from before valid_until', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('valid_from %s, valid_until %s were given.', coalesce(valid_from::text, 'NULL'),
                                             coalesce(valid_until::text, 'NULL')),
                  HINT = 'NULL means no start (valid_from) or no end (valid_until); valid_until is the first day it is no longer offered.';
    END IF;
    IF active IS NULL THEN
        RAISE EXCEPTION 'active of reward "%" must not be NULL', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'active says whether the reward can be redeemed.',
                  HINT = 'Give true or false.';
    END IF;
    INSERT INTO @extschema@.reward AS r (program_id, reward_id, name, points_price, min_tier, stock, per_account_limit,
                                         active, kind, description, valid_from, valid_until, period_limit, limit_period)
    VALUES (pid, reward_id, name, points_price, min_tier, stock, per_account_limit,
            active, kind, description, valid_from, valid_until, period_limit, limit_period)
    ON CONFLICT ON CONSTRAINT reward_pkey DO UPDATE
    SET name = excluded.name, points_price = excluded.points_price, min_tier = excluded.min_tier,
        stock = excluded.stock, per_account_limit = excluded.per_account_limit, active = excluded.active,
        kind = excluded.kind, description = excluded.description, valid_from = excluded.valid_from,
        valid_until = excluded.valid_until, period_limit = excluded.period_limit, limit_period = excluded.limit_period;
END
$$;
COMMENT ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean) IS
'Adds a reward to a program''s catalogue, or replaces it: points price, kind, minimum tier, stock, per-account and per-period limits, validity window. Redemptions already made keep their price; deactivate (active => false) instead of deleting.';

-- A redemption: one short transaction.
CREATE FUNCTION @extschema@.redeem(
    program     text,
    account_key text,
    reward      text,
    quantity    integer DEFAULT 1,
    member      text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    lad @extschema@.tier_ladder;
    today date;
    acct_tier text;
    enrolled boolean;
    r @extschema@.reward;
    no bigint;
    cost bigint;
    have bigint;
    used bigint;
    entry bigint;
    id uuid;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    -- the program, the account and the reward in one look-up
    SELECT p.program_id, p.ladder, (pg_catalog.now() AT TIME ZONE p.time_zone)::date, a.account_key IS NOT NULL,
           x.reward_id, x.points_price, x.stock, x.active, x.valid_from, x.valid_until, x.min_tier,
           x.per_account_limit, x.period_limit, x.limit_period
    INTO pid, lad, today, enrolled,
         r.reward_id, r.points_price, r.stock, r.active, r.valid_from, r.valid_until, r.min_tier,
         r.per_account_limit, r.period_limit, r.limit_period
    FROM @extschema@.program p
    LEFT JOIN @extschema@.account a ON a.program_id = p.program_id AND a.account_key = account_key
    LEFT JOIN @extschema@.reward x ON x.program_id = p.program_id AND x.reward_id = reward
    WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT enrolled THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have points to redeem.',
                  HINT = 'Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key AND m.member_id = member) THEN
        RAISE EXCEPTION 'member "%" is not a member of account "%"', member, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'A member redeems from the points they earned at their own account.',
                  HINT = 'Add the person to loyalty.member first, or redeem for the account (member => NULL).';
    END IF;
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'quantity must be a positive number of units'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('quantity %s was given.', coalesce(quantity::text, 'NULL')),
                  HINT = 'Give the number of units to redeem, 1 or more.';
    END IF;
    IF r.reward_id IS NULL THEN
        RAISE EXCEPTION 'reward "%" is not in the catalogue of program "%"', reward, program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'reward is a reward_id of loyalty.reward.',
                  HINT = 'List the catalogue with SELECT reward_id, name FROM loyalty.reward.';
    END IF;
    IF r.points_price::numeric * quantity > 9223372036854775807 THEN
        RAISE EXCEPTION 'quantity % of reward "%" costs more points than any balance can hold', quantity, reward
            USING ERRCODE = 'numeric_value_out_of_range',
                  DETAIL = pg_catalog.format('%s units at %s points each.', quantity, r.points_price),
                  HINT = 'Redeem fewer units.';
    END IF;

    -- The debit protocol: the account first, then (only when it has a
    -- stock to take from) the reward; everything read from here on is read
    -- in statements after the lock.
    no := @extschema@._lock_for_debit(pid, account_key);
    PERFORM @extschema@._await_postings(pid, account_key);
    IF r.stock IS NOT NULL THEN
        SELECT * INTO r FROM @extschema@.reward x WHERE x.program_id = pid AND x.reward_id = reward FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'reward "%" left the catalogue of program "%"', reward, program
                USING ERRCODE = 'undefined_object',
                      DETAIL = 'It was deleted while the redemption waited for the account.',
                      HINT = 'Nothing was redeemed. Deactivate rewards (active => false) instead of deleting them.';
        END IF;
    END IF;

    IF NOT r.active OR today < r.valid_from OR today >= r.valid_until THEN
        RAISE EXCEPTION 'reward "%" cannot be redeemed today', reward
            USING ERRCODE = 'LY002',
                  DETAIL = CASE WHEN NOT r.active THEN 'It is not active.'
                                ELSE pg_catalog.format('It is offered from %s until (not including) %s; today is %s.',
                                                       coalesce(r.valid_from::text, 'always'), coalesce(r.valid_until::text, 'no end'), today) END,
                  HINT = 'Nothing was redeemed. Choose a reward on offer.';
    END IF;
    -- the tier as loyalty.tier() tells it (upgrades count at once)
    IF r.min_tier IS NOT NULL THEN
        SELECT b.tier INTO acct_tier FROM @extschema@.balance(program, account_key) b;
    END IF;
    IF r.min_tier IS NOT NULL
       AND coalesce((SELECT t.rank FROM @extschema@.tiers(lad) t WHERE t.name = acct_tier), 0)
           < coalesce((SELECT t.rank FROM @extschema@.tiers(lad) t WHERE t.name = r.min_tier), 0) THEN
        RAISE EXCEPTION 'reward "%" needs tier % or higher; account "%" is %', reward, r.min_tier, account_key,
                        coalesce('in tier ' || acct_tier, 'in no tier')
            USING ERRCODE = 'LY002',
                  DETAIL = pg_catalog.format('The program''s tiers are %s.', lad),
                  HINT = 'Nothing was redeemed. Choose a reward of the account''s tier.';
    END IF;
    IF r.stock < quantity THEN
        RAISE EXCEPTION 'reward "%" has % units left, % asked', reward, r.stock, quantity
            USING ERRCODE = 'LY002',
                  DETAIL = 'The stock never goes below zero.',
                  HINT = 'Nothing was redeemed. Redeem fewer units, or restock with loyalty.set_reward().';
    END IF;
    IF r.per_account_limit IS NOT NULL OR r.period_limit IS NOT NULL THEN
        SELECT coalesce(pg_catalog.sum(d.quantity), 0) INTO used FROM @extschema@.redemption d
        WHERE d.program_id = pid AND d.account_key = account_key AND d.reward_id = reward AND d.status = 'redeemed';
        IF used + quantity > r.per_account_limit THEN
            RAISE EXCEPTION 'account "%" may redeem % units of reward "%" in all and has redeemed %', account_key,
                            r.per_account_limit, reward, used
                USING ERRCODE = 'LY002',
                      DETAIL = pg_catalog.format('quantity %s would exceed the per-account limit.', quantity),
                      HINT = 'Nothing was redeemed. Cancelled redemptions do not count.';
        END IF;
        SELECT coalesce(pg_catalog.sum(d.quantity), 0) INTO used FROM @extschema@.redemption d
        WHERE d.program_id = pid AND d.account_key = account_key AND d.reward_id = reward AND d.status = 'redeemed'
          AND d.redeemed_on >= pg_catalog.date_trunc(r.limit_period, today::timestamp)::date;
        IF used + quantity > r.period_limit THEN
            RAISE EXCEPTION 'account "%" may redeem % units of reward "%" per %, and has redeemed % this %', account_key,
                            r.period_limit, reward, r.limit_period, used, r.limit_period
                USING ERRCODE = 'LY002',
                      DETAIL = pg_catalog.format('quantity %s would exceed the per-%s limit.', quantity, r.limit_period),
                      HINT = 'Nothing was redeemed. Redeem again next period; cancelled redemptions do not count.';
        END IF;
    END IF;

    cost := r.points_price * quantity;
    SELECT b.points INTO have FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = account_key;
    IF coalesce(have, 0) < cost THEN
        RAISE EXCEPTION 'account "%" has % points, % x reward "%" costs %', account_key, coalesce(have, 0), quantity, reward, cost
            USING ERRCODE = 'LY001',
                  DETAIL = 'A redemption never takes a balance below zero.',
                  HINT = 'Nothing was redeemed. Redeem when earnings cover it.';
    END IF;
    IF member IS NOT NULL THEN
        SELECT coalesce(pg_catalog.sum(t.points), 0) INTO have FROM @extschema@.member_points t
        WHERE t.program_id = pid AND t.account_key = account_key AND t.member_id = member;
        IF have < cost THEN
            RAISE EXCEPTION 'member "%" of account "%" has % points, % x reward "%" costs %', member, account_key, have,
                            quantity, reward, cost
                USING ERRCODE = 'LY001',
                      DETAIL = 'A member redeems from the points they earned, never below zero.',
                      HINT = 'Nothing was redeemed. Redeem for the account instead (member => NULL).';
        END IF;
    END IF;

    IF r.stock IS NOT NULL THEN
        UPDATE @extschema@.reward x SET stock = x.stock - quantity WHERE x.program_id = pid AND x.reward_id = reward;
    END IF;
    IF member IS NULL THEN
        entry := @extschema@._post(pid, account_key, 'redeem', -cost, 'redeem ' || quantity || ' x ' || reward);
    ELSE
        entry := @extschema@._post_member(pid, account_key, 'redeem', -cost, 'redeem ' || quantity || ' x ' || reward, member);
    END IF;
    INSERT INTO @extschema@.redemption AS d (program_id, account_key, redemption_no, reward_id, member_id, quantity, points,
                                             redeemed_on, entry_no)
    VALUES (pid, account_key, no, reward, member, quantity, cost, today, entry)
    RETURNING d.redemption_id INTO id;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.redeem(text, text, text, integer, text) IS
'Redeems quantity units of a reward for an account (or for one of its members, from the points they earned): checks the catalogue (active, validity window, minimum tier, stock, per-account and per-period limits) and the balance after locking the account, posts a ledger entry of kind redeem and returns the redemption''s id. Never overdraws: an insufficient balance fails with SQLSTATE LY001, a reward out of stock, out of its window or over a limit with LY002, and nothing is written.';

CREATE FUNCTION @extschema@.cancel_redemption(redemption_id uuid)
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
    PERFORM @extschema@._lock_for_debit(d.program_id, d.account_key);
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
    entry := @extschema@._post_member(d.program_id, d.account_key, 'redeem', d.points,
                                      pg_catalog.format('cancel redemption of %s x %s', d.quantity, d.reward_id),
                                      d.member_id, corrects_xid => d.posted_xid, corrects => d.entry_no);
    UPDATE @extschema@.redemption x
    SET status = 'cancelled', cancelled_at = pg_catalog.now(), cancel_xid = pg_catalog.pg_current_xact_id(), cancel_entry_no = entry
    WHERE x.program_id = d.program_id AND x.account_key = d.account_key AND x.redemption_no = d.redemption_no;
END
$$;
COMMENT ON FUNCTION @extschema@.cancel_redemption(uuid) IS
'Cancels a redemption: gives its points back with a ledger entry of kind redeem pointing at the original (corrects_xid, corrects), and its units back to the stock. A redemption is cancelled once.';

REVOKE ALL ON FUNCTION @extschema@._await_postings(integer, text),
                      @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean),
                      @extschema@.redeem(text, text, text, integer, text),
                      @extschema@.cancel_redemption(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean)
TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.redeem(text, text, text, integer, text),
                          @extschema@.cancel_redemption(uuid) TO loyalty_operator;


-- ---- Non-purchase actions: versioned action rules, awards with approval, caps and references; _action_counts for tier qualification ----
-- Non-purchase actions: training completed, certification, referral that
-- signs, lead registered or won, survey answered, product review, startup
-- onboarded.  Versioned rules per program and action (points per action,
-- cap per period, approval needed or not), awards keyed by the account and
-- its own counter, idempotent by the CRM's reference.  Only approved awards
-- post points and count for tier qualification (_action_counts).

CREATE TABLE @extschema@.action_rule (
    program_id     integer NOT NULL REFERENCES @extschema@.program,
    action         text NOT NULL CHECK (action OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'),
    valid_from     date NOT NULL CHECK (valid_from OPERATOR(pg_catalog.<>) 'infinity'::date),
    points         bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0 AND points OPERATOR(pg_catalog.<=) 1000000000),
    needs_approval boolean NOT NULL DEFAULT false,
    cap_points     bigint CHECK (cap_points OPERATOR(pg_catalog.>) 0),
    cap_period     text CHECK (cap_period IN ('month', 'quarter', 'year')),
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, action, valid_from),
    CONSTRAINT action_rule_cap_pair_check CHECK ((cap_points IS NULL) = (cap_period IS NULL))
);
COMMENT ON TABLE @extschema@.action_rule IS 'Versioned rules for non-purchase actions (loyalty.set_action_rule): an action earns by the version in force on the day it occurred.';
COMMENT ON COLUMN @extschema@.action_rule.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.action_rule.action IS 'The action''s code, e.g. training_completed, certification, referral_signed, lead_registered, lead_won, survey_answered, product_review, startup_onboarded.';
COMMENT ON COLUMN @extschema@.action_rule.valid_from IS 'First day of occurrence this version applies to (-infinity for the first version).';
COMMENT ON COLUMN @extschema@.action_rule.points IS 'Points per action (per unit of quantity).';
COMMENT ON COLUMN @extschema@.action_rule.needs_approval IS 'When true, an award waits as pending until an operator approves it (loyalty.approve_award) and posts nothing before.';
COMMENT ON COLUMN @extschema@.action_rule.cap_points IS 'Most points one account earns from this action per cap period (pending awards count, rejected ones do not); NULL = no cap.';
COMMENT ON COLUMN @extschema@.action_rule.cap_period IS 'Calendar period of the cap, by the day the action occurred: month, quarter or year.';
COMMENT ON COLUMN @extschema@.action_rule.created_at IS 'When the version was written.';

CREATE TABLE @extschema@.award (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    award_no      bigint NOT NULL,
    award_id      uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    action        text NOT NULL,
    member_id     text,
    occurred_on   date NOT NULL,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    rule_from     date NOT NULL,
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0),
    capped        bigint NOT NULL DEFAULT 0 CHECK (capped OPERATOR(pg_catalog.>=) 0),
    reference     text,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    awarded_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at    timestamptz,
    decided_by    text,
    note          text,
    posted_xid    xid8,
    entry_no      bigint,
    PRIMARY KEY (program_id, account_key, award_no),
    CONSTRAINT award_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT award_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT award_entry_check CHECK ((posted_xid IS NULL) = (entry_no IS NULL)
                                        AND (entry_no IS NULL OR status OPERATOR(pg_catalog.=) 'approved'))
);
CREATE INDEX award_id_idx ON @extschema@.award (award_id);
CREATE INDEX award_action_idx ON @extschema@.award (program_id, action, occurred_on) WHERE status = 'approved';
COMMENT ON TABLE @extschema@.award IS 'Points for non-purchase actions (loyalty.award), one row per CRM event: pending, approved or rejected. An approved award with points has its ledger entry of kind award (posted_xid, entry_no).';
COMMENT ON COLUMN @extschema@.award.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.award.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.award.award_no IS 'The account''s debit number (loyalty.account.debit_no) the award took: a per-account counter.';
COMMENT ON COLUMN @extschema@.award.award_id IS 'The award''s identifier, returned by loyalty.award() and taken by approve_award() and reject_award().';
COMMENT ON COLUMN @extschema@.award.action IS 'The action (loyalty.action_rule).';
COMMENT ON COLUMN @extschema@.award.member_id IS 'The member who did it (their own points); NULL = the account.';
COMMENT ON COLUMN @extschema@.award.occurred_on IS 'When the action took place: decides the rule version and the cap period.';
COMMENT ON COLUMN @extschema@.award.quantity IS 'How many actions the event counts (e.g. seats of a training).';
COMMENT ON COLUMN @extschema@.award.rule_from IS 'valid_from of the rule version it earned by.';
COMMENT ON COLUMN @extschema@.award.points IS 'Points it earns (posted once approved), after the cap.';
COMMENT ON COLUMN @extschema@.award.capped IS 'Points the cap withheld.';
COMMENT ON COLUMN @extschema@.award.reference IS 'The CRM''s identifier of the event: the same reference for the same account awards once.';
COMMENT ON COLUMN @extschema@.award.status IS 'pending (waits for approval), approved (counts) or rejected (never counts).';
COMMENT ON COLUMN @extschema@.award.awarded_at IS 'When it was recorded.';
COMMENT ON COLUMN @extschema@.award.decided_at IS 'When it was approved or rejected (at once for actions that need no approval).';
COMMENT ON COLUMN @extschema@.award.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.award.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.award.posted_xid IS 'Transaction of its ledger entry (NULL: nothing posted).';
COMMENT ON COLUMN @extschema@.award.entry_no IS 'Entry number (within posted_xid) of its ledger entry.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.action_rule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.award', '');

CREATE FUNCTION @extschema@.set_action_rule(
    program        text,
    action         text,
    points         bigint,
    needs_approval boolean DEFAULT false,
    cap_points     bigint DEFAULT NULL,
    cap_period     text DEFAULT NULL,
    valid_from     date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    since date := valid_from;
    last_award date;
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
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF action IS NULL OR action !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'action must be a code of lower-case letters, digits and _ (1 to 63, starting with a letter)'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('action %s was given.', coalesce(pg_catalog.quote_literal(action), 'NULL')),
                  HINT = 'For example action => ''certification''.';
    END IF;
    IF points IS NULL OR points < 0 OR points > 1000000000 THEN
        RAISE EXCEPTION 'points of action "%" must be between 0 and 1000000000', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points %s was given.', coalesce(points::text, 'NULL')),
                  HINT = 'Give the points one action earns.';
    END IF;
    IF needs_approval IS NULL THEN
        RAISE EXCEPTION 'needs_approval of action "%" must not be NULL', action
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'needs_approval says whether an operator must approve each award.',
                  HINT = 'Give true or false.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) OR cap_points <= 0
       OR cap_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'cap_points and cap_period of action "%" go together: a positive cap per month, quarter or year', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('cap_points %s, cap_period %s were given.', coalesce(cap_points::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(cap_period), 'NULL')),
                  HINT = 'For example cap_points => 500, cap_period => ''quarter''; both NULL for no cap.';
    END IF;
    IF since = 'infinity' THEN
        RAISE EXCEPTION 'valid_from of action "%" must not be infinity', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day of occurrence the version applies to.',
                  HINT = 'Give a date, or NULL: the first version then applies to every day, a later one from today.';
    END IF;
    IF since IS NULL THEN
        since := CASE WHEN EXISTS (SELECT FROM @extschema@.action_rule r WHERE r.program_id = pid AND r.action = action)
                      THEN @extschema@._today(pid) ELSE '-infinity' END;
    END IF;
    -- What an award earned never changes: a version may start only after
    -- the last action already awarded.
    SELECT pg_catalog.max(w.occurred_on) INTO last_award FROM @extschema@.award w
    WHERE w.program_id = pid AND w.action = action;
    IF last_award >= since THEN
        RAISE EXCEPTION 'valid_from % of action "%" is not after the last action awarded (%)', since, action, last_award
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Awards already made keep the version they earned by.',
                  HINT = pg_catalog.format('Give valid_from => ''%s'' or later.', last_award + 1);
    END IF;
    INSERT INTO @extschema@.action_rule AS r (program_id, action, valid_from, points, needs_approval, cap_points, cap_period)
    VALUES (pid, action, since, points, needs_approval, cap_points, cap_period)
    ON CONFLICT ON CONSTRAINT action_rule_pkey DO UPDATE
    SET points = excluded.points, needs_approval = excluded.needs_approval, cap_points = excluded.cap_points,
        cap_period = excluded.cap_period, created_at = excluded.created_at;
END
$$;
COMMENT ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date) IS
'Writes a version of a non-purchase action''s rule: points per action, approval needed or not, cap per period. valid_from NULL: the first version applies to every day, a later one from today. A version can start only after the last action already awarded.';

CREATE FUNCTION @extschema@.award(
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
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts earn points for actions.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key AND m.member_id = member) THEN
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
        WHERE w.program_id = pid AND w.account_key = account_key AND w.reference = reference;
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
        WHERE w.program_id = pid AND w.account_key = account_key AND w.action = action
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
    VALUES (pid, account_key, no, action, member, day, quantity, rule.valid_from, granted,
            LEAST(earned - granted, 9223372036854775807), reference, st,
            CASE WHEN st = 'approved' THEN pg_catalog.now() END,
            CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry)
    RETURNING w.award_id INTO id;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer) IS
'Awards points for a non-purchase action to an account (or one of its members) by the rule version in force on occurred_on (default today), capped per period; returns the award''s id. Idempotent by reference: the same CRM event again returns the first award and posts nothing. An action that needs approval waits as pending and posts nothing until loyalty.approve_award().';

-- Approval and rejection: one decision per award.
CREATE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w @extschema@.award;
    entry bigint;
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
    UPDATE @extschema@.award x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_award.note,
        posted_xid = CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = entry
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award(uuid, boolean, text) IS
'Internal: approves (posts the points) or rejects a pending award, under the account''s lock; does nothing to an award that is not pending.';

CREATE FUNCTION @extschema@.approve_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_award(award_id, true, note);
    SELECT w.status INTO st FROM @extschema@.award w WHERE w.award_id = award_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    ELSIF st = 'rejected' THEN
        RAISE EXCEPTION 'the award was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was rejected; a decision on an award is final.', award_id),
                  HINT = 'Record the event again with a new reference if it is genuine.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.approve_award(uuid, text) IS
'Approves a pending award: posts its points (ledger kind award) and makes it count for tier qualification. Approving an approved award again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_award(award_id, false, note);
    SELECT w.status INTO st FROM @extschema@.award w WHERE w.award_id = award_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    ELSIF st = 'approved' THEN
        RAISE EXCEPTION 'the award was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was approved and its points posted; a decision on an award is final.', award_id),
                  HINT = 'Take the points back with an adjustment if the approval was a mistake.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.reject_award(uuid, text) IS
'Rejects a pending award: it posts nothing, never counts, and frees its share of the cap. Rejecting a rejected award again changes nothing; returns the status.';

-- Read by settlement for tier qualification on counted actions.
CREATE OR REPLACE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT w.account_key, pg_catalog.sum(w.quantity)::bigint
FROM @extschema@.award w
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.action OPERATOR(pg_catalog.=) $2
  AND w.status OPERATOR(pg_catalog.=) 'approved'
  AND w.occurred_on OPERATOR(pg_catalog.>=) $3 AND w.occurred_on OPERATOR(pg_catalog.<) $4
GROUP BY w.account_key
$$;
COMMENT ON FUNCTION @extschema@._action_counts(integer, text, date, date) IS
'Internal: approved actions per account that occurred in [from_date, to_date) (their quantities summed), for tier qualification at settlement.';

REVOKE ALL ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date),
                      @extschema@.award(text, text, text, date, text, text, integer),
                      @extschema@._decide_award(uuid, boolean, text),
                      @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text),
                      @extschema@._action_counts(integer, text, date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer),
                          @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text) TO loyalty_operator;
GRANT SELECT ON @extschema@.action_rule, @extschema@.award TO loyalty_reader, loyalty_operator, loyalty_admin;


-- ---- Member-level points (member_balance over the ledger), verify's member checks, the leaderboard ----
-- Member-level points and the leaderboard.
--
-- A member's points are the ledger entries that carry their member_id: what
-- they earned by actions (loyalty.award(..., member => ...)) less what they
-- redeemed (loyalty.redeem(..., member => ...)).  They are part of the
-- account's points as well: the account's balance (loyalty.balance) counts
-- every entry of the account, its members' included, and a member's
-- redemption needs both the member's and the account's points to cover it.
-- Accrual, expiry, rebates and adjustments are the account's (no member).
--
-- loyalty.member_points keeps each member's running total, written in the
-- same transaction as the entry, by loyalty._post_member only.  Every member
-- posting (award, approval, redemption, cancellation) holds the account's
-- debit lock, so the row is never contended beyond what the account lock
-- already serialises.  verify() compares it with the ledger
-- (loyalty._verify_members).  (An index on the ledger's member entries would
-- have spared the table, but the accrual path appends ledger index entries
-- itself and takes no partial or expression index.)
CREATE TABLE @extschema@.member_points (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    member_id   text NOT NULL,
    points      bigint NOT NULL DEFAULT 0,
    earned      bigint NOT NULL DEFAULT 0,
    spent       bigint NOT NULL DEFAULT 0,
    entry_count bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, member_id),
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT member_points_sum_check CHECK (points OPERATOR(pg_catalog.=) (earned OPERATOR(pg_catalog.-) spent))
);
COMMENT ON TABLE @extschema@.member_points IS 'Running totals of the ledger entries that carry a member, one row per member with any; written with the entry, checked against the ledger by verify(). Read it through loyalty.member_balance.';
COMMENT ON COLUMN @extschema@.member_points.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_points.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_points.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_points.points IS 'Points the member may redeem: earned less spent.';
COMMENT ON COLUMN @extschema@.member_points.earned IS 'Points of the member''s entries of kinds other than redeem (awards).';
COMMENT ON COLUMN @extschema@.member_points.spent IS 'Points of the member''s redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_points.entry_count IS 'Ledger entries that carry the member.';
COMMENT ON COLUMN @extschema@.member_points.updated_at IS 'Last change.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.member_points', '');

-- _post for an entry of a member (or of the account, member NULL): the
-- ledger entry, the account's balance delta and the member's running total.
-- The caller holds the account's debit lock.
CREATE FUNCTION @extschema@._post_member(
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
            entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now();
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) IS
'Internal: posts one ledger entry (loyalty._post) and, when it carries a member, adds it to the member''s running total in loyalty.member_points; the caller holds the account''s debit lock.';

CREATE VIEW @extschema@.member_balance AS
SELECT m.program_id, m.account_key, m.member_id, m.name, m.role,
       coalesce(t.points, 0) AS points, coalesce(t.earned, 0) AS earned, coalesce(t.spent, 0) AS spent,
       coalesce(t.entry_count, 0) AS entry_count
FROM @extschema@.member m
LEFT JOIN @extschema@.member_points t
  ON t.program_id OPERATOR(pg_catalog.=) m.program_id AND t.account_key OPERATOR(pg_catalog.=) m.account_key
     AND t.member_id OPERATOR(pg_catalog.=) m.member_id;
COMMENT ON VIEW @extschema@.member_balance IS 'Points of each member of an account: the sums of the ledger entries that carry the member (awards for their actions, their redemptions and cancellations). Part of the account''s points in loyalty.balance.';
COMMENT ON COLUMN @extschema@.member_balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_balance.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_balance.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_balance.name IS 'Display name.';
COMMENT ON COLUMN @extschema@.member_balance.role IS 'economic_buyer, technical_buyer, end_user or champion.';
COMMENT ON COLUMN @extschema@.member_balance.points IS 'Points the member may redeem (earned less spent).';
COMMENT ON COLUMN @extschema@.member_balance.earned IS 'Points earned (awards).';
COMMENT ON COLUMN @extschema@.member_balance.spent IS 'Points spent on redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_balance.entry_count IS 'Ledger entries that carry the member.';

-- verify()'s checks of the member wallets and of the rows that posted
-- (redemptions, awards): same columns as loyalty._verify_balance, one row
-- per drift.
CREATE FUNCTION @extschema@._verify_members(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
  AND CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END IS DISTINCT FROM coalesce(l.points, 0)
$$;
COMMENT ON FUNCTION @extschema@._verify_members(integer, text) IS
'Internal: verify''s checks of member wallets (entries of unknown members, running totals that differ from the ledger or are below zero) and of the rows that posted (each redemption''s spending and giving-back entries, each approved award''s entry), for a program or one account; one row per drift.';

-- The leaderboard of gamified programs: points earned per calendar period
-- (month, quarter, year of the posting, in the program's calendar), ranked
-- among the program's accounts, and among its members.  Earned: accrual and
-- awards; redemptions, expiry and adjustments do not move a rank.
CREATE VIEW @extschema@.leaderboard AS
WITH earned AS (
    SELECT l.program_id, p.name AS program, l.account_key, l.member_id,
           (l.posted_at AT TIME ZONE p.time_zone)::date AS day, l.points
    FROM @extschema@.ledger l
    JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
), per AS (
    SELECT e.program_id, e.program, g.period, pg_catalog.date_trunc(g.period, e.day::timestamp)::date AS period_start,
           s.scope, e.account_key, CASE WHEN s.scope OPERATOR(pg_catalog.=) 'member' THEN e.member_id END AS member_id,
           pg_catalog.sum(e.points)::bigint AS points
    FROM earned e
    CROSS JOIN (VALUES ('month'), ('quarter'), ('year')) AS g(period)
    CROSS JOIN (VALUES ('account'), ('member')) AS s(scope)
    WHERE s.scope OPERATOR(pg_catalog.=) 'account' OR e.member_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7
)
SELECT r.program_id, r.program, r.period, r.period_start, r.scope,
       pg_catalog.rank() OVER (PARTITION BY r.program_id, r.period, r.period_start, r.scope ORDER BY r.points DESC) AS rank,
       r.account_key, r.member_id, r.points
FROM per r;
COMMENT ON VIEW @extschema@.leaderboard IS 'Points earned (accrual and awards) per program and calendar period of posting, ranked among accounts (scope account) and among members (scope member): the visible leaderboard of gamified programs. Filter by program, period and period_start.';
COMMENT ON COLUMN @extschema@.leaderboard.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.leaderboard.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.leaderboard.period IS 'month, quarter or year.';
COMMENT ON COLUMN @extschema@.leaderboard.period_start IS 'First day of the period (program calendar).';
COMMENT ON COLUMN @extschema@.leaderboard.scope IS 'account: accounts ranked by all points they earned; member: members ranked by the points they earned themselves.';
COMMENT ON COLUMN @extschema@.leaderboard.rank IS 'Rank within program, period and scope (1 = most points; ties share a rank).';
COMMENT ON COLUMN @extschema@.leaderboard.account_key IS 'The account (of the member, for scope member).';
COMMENT ON COLUMN @extschema@.leaderboard.member_id IS 'The member (scope member); NULL for scope account.';
COMMENT ON COLUMN @extschema@.leaderboard.points IS 'Points earned in the period.';

GRANT SELECT ON @extschema@.member_points, @extschema@.member_balance, @extschema@.leaderboard
TO loyalty_reader, loyalty_operator, loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._verify_members(integer, text),
                      @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) FROM PUBLIC;


-- ---- MDF wallet: accrual at settlement (_settle_mdf), claims with approval ----
-- Market development funds: a wallet of money (ledger column mdf) that
-- accrues at settlement as a tier-dependent share of the period's qualifying
-- purchases (loyalty._settle_mdf, called by loyalty.settle), and that the
-- partner spends through claims an operator approves.  A claim is a debit:
-- the debit protocol of redemptions (account lock, wait for postings in
-- flight, balance read after the lock) makes sure the wallet never goes
-- below zero, at the claim (pending claims reserve their amount) and again
-- at the approval, which posts the negative mdf entry.

CREATE TABLE @extschema@.mdf_accrual (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    period_end   date NOT NULL,
    period_start date NOT NULL,
    spend        numeric NOT NULL,
    rate         numeric NOT NULL,
    amount       numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>=) 0),
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint,
    PRIMARY KEY (program_id, account_key, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start)
);
COMMENT ON TABLE @extschema@.mdf_accrual IS 'MDF accrued per account and settlement period (loyalty._settle_mdf): the period''s qualifying spend times the MDF rate of the account''s tier. One row per account and period: settling a period again credits no account twice.';
COMMENT ON COLUMN @extschema@.mdf_accrual.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_accrual.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_end IS 'Day after the period''s last day (exclusive end), as in loyalty.settlement_run.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.mdf_accrual.spend IS 'Qualifying spend of the documents dated in the period (loyalty.accrual_month).';
COMMENT ON COLUMN @extschema@.mdf_accrual.rate IS 'MDF rate of the account''s tier at the period''s end (fraction of spend).';
COMMENT ON COLUMN @extschema@.mdf_accrual.amount IS 'MDF credited: spend (0 if negative) times rate, rounded to cents.';
COMMENT ON COLUMN @extschema@.mdf_accrual.posted_xid IS 'Transaction of the settlement that credited it.';
COMMENT ON COLUMN @extschema@.mdf_accrual.entry_no IS 'Entry number (within posted_xid) of its ledger entry of kind mdf; NULL when the amount was 0.';

CREATE TABLE @extschema@.mdf_claim (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    claim_no    bigint NOT NULL,
    claim_id    uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    amount      numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>) 0),
    purpose     text NOT NULL,
    reference   text,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    claimed_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at  timestamptz,
    decided_by  text,
    note        text,
    posted_xid  xid8,
    entry_no    bigint,
    PRIMARY KEY (program_id, account_key, claim_no),
    CONSTRAINT mdf_claim_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CONSTRAINT mdf_claim_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT mdf_claim_entry_check CHECK ((status OPERATOR(pg_catalog.=) 'approved') = (entry_no IS NOT NULL)
                                           AND (posted_xid IS NULL) = (entry_no IS NULL))
);
CREATE INDEX mdf_claim_id_idx ON @extschema@.mdf_claim (claim_id);
COMMENT ON TABLE @extschema@.mdf_claim IS 'Claims against the MDF wallet (loyalty.claim_mdf): pending until an operator approves (the ledger entry of kind mdf takes the amount from the wallet) or rejects (nothing posted).';
COMMENT ON COLUMN @extschema@.mdf_claim.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_claim.account_key IS 'The claiming account.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_no IS 'The account''s debit number (loyalty.account.debit_no) the claim took.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_id IS 'The claim''s identifier, returned by loyalty.claim_mdf() and taken by approve_mdf_claim() and reject_mdf_claim().';
COMMENT ON COLUMN @extschema@.mdf_claim.amount IS 'Money claimed, in the program''s currency (cents at most).';
COMMENT ON COLUMN @extschema@.mdf_claim.purpose IS 'What the funds pay for (campaign, event, co-op advertising).';
COMMENT ON COLUMN @extschema@.mdf_claim.reference IS 'The partner portal''s identifier of the claim: the same reference for the same account claims once.';
COMMENT ON COLUMN @extschema@.mdf_claim.status IS 'pending, approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.claimed_at IS 'When it was claimed.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_at IS 'When it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.mdf_claim.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.posted_xid IS 'Transaction of the ledger entry that paid it (approved claims).';
COMMENT ON COLUMN @extschema@.mdf_claim.entry_no IS 'Entry number (within posted_xid) of the ledger entry that paid it.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_accrual', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_claim', '');
GRANT SELECT ON @extschema@.mdf_accrual, @extschema@.mdf_claim TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Called by loyalty.settle() inside its settlement transaction.
CREATE OR REPLACE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    IF period_start IS NULL OR period_end IS NULL OR period_end <= period_start THEN
        RAISE EXCEPTION 'MDF period [%, %) is empty', period_start, period_end
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period_end is the day after the period''s last day.',
                  HINT = 'Give period_start < period_end.';
    END IF;
    WITH spend AS (
        SELECT m.account_key, pg_catalog.sum(m.qualifying) AS spend
        FROM @extschema@.accrual_month m
        WHERE m.program_id = $1 AND m.month >= $2 AND m.month < $3
        GROUP BY m.account_key
    ), due AS (
        SELECT s.account_key, s.spend, @extschema@._mdf_rate($1, s.account_key, $3) AS rate
        FROM spend s
        WHERE NOT EXISTS (SELECT FROM @extschema@.mdf_accrual a
                          WHERE a.program_id = $1 AND a.account_key = s.account_key AND a.period_end = $3)
    ), credited AS (
        INSERT INTO @extschema@.mdf_accrual AS a (program_id, account_key, period_end, period_start, spend, rate, amount, entry_no)
        SELECT $1, d.account_key, $3, $2, d.spend, d.rate, x.amount,
               @extschema@._post($1, d.account_key, 'mdf', 0, pg_catalog.format('mdf accrual %s..%s', $2, $3 - 1), mdf => x.amount)
        FROM due d, LATERAL (SELECT pg_catalog.round(GREATEST(d.spend, 0) * coalesce(d.rate, 0), 2) AS amount) x
        WHERE x.amount > 0
        ORDER BY d.account_key
        RETURNING a.amount
    )
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO total FROM credited c;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_mdf(integer, date, date) IS
'Internal: credits the MDF wallets for a settlement period (called by loyalty.settle): per account, the qualifying spend of the documents dated in [period_start, period_end) times the MDF rate of its tier at period_end (loyalty._mdf_rate), rounded to cents; accounts already credited for the period are skipped. Returns the total credited.';

CREATE FUNCTION @extschema@.claim_mdf(
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
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key) THEN
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
        WHERE c.program_id = pid AND c.account_key = account_key AND c.reference = reference;
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
    SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = account_key;
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO reserved FROM @extschema@.mdf_claim c
    WHERE c.program_id = pid AND c.account_key = account_key AND c.status = 'pending';
    IF coalesce(wallet, 0) - reserved < amount THEN
        RAISE EXCEPTION 'account "%" has % of MDF available, % claimed', account_key, coalesce(wallet, 0) - reserved, amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('The wallet holds %s, of which pending claims reserve %s; it never goes below zero.',
                                             coalesce(wallet, 0), reserved),
                  HINT = 'Nothing was claimed. Claim less, or after the next settlement credits the wallet.';
    END IF;
    INSERT INTO @extschema@.mdf_claim AS c (program_id, account_key, claim_no, amount, purpose, reference)
    VALUES (pid, account_key, no, amount, purpose, reference)
    RETURNING c.claim_id INTO id;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text) IS
'Claims an amount from an account''s MDF wallet, pending an operator''s approval; returns the claim''s id. The amount must be available: the wallet less the pending claims (SQLSTATE LY001 otherwise, nothing written). Idempotent by reference.';

CREATE FUNCTION @extschema@._decide_mdf_claim(claim_id uuid, approve boolean, note text)
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
    PERFORM @extschema@._lock_for_debit(c.program_id, c.account_key);
    PERFORM @extschema@._await_postings(c.program_id, c.account_key);
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
        entry := @extschema@._post(c.program_id, c.account_key, 'mdf', 0,
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
COMMENT ON FUNCTION @extschema@._decide_mdf_claim(uuid, boolean, text) IS
'Internal: approves (pays from the wallet, if it still holds the amount) or rejects a pending MDF claim, under the account''s lock; does nothing to a claim that is not pending.';

CREATE FUNCTION @extschema@.approve_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c @extschema@.mdf_claim;
    wallet numeric;
BEGIN
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_mdf_claim(claim_id, true, note);
    SELECT * INTO c FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    ELSIF c.status = 'rejected' THEN
        RAISE EXCEPTION 'the MDF claim was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was rejected; a decision on a claim is final.', claim_id),
                  HINT = 'File a new claim if it is genuine.';
    ELSIF c.status = 'pending' THEN
        SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = c.program_id AND b.account_key = c.account_key;
        RAISE EXCEPTION 'account "%" has % of MDF, the claim asks %', c.account_key, coalesce(wallet, 0), c.amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('Claim %s stays pending: the MDF wallet never goes below zero.', claim_id),
                  HINT = 'The claim stays pending: approve it after the next settlement credits the wallet, or reject it.';
    END IF;
    RETURN c.status;
END
$$;
COMMENT ON FUNCTION @extschema@.approve_mdf_claim(uuid, text) IS
'Approves a pending MDF claim: posts a ledger entry of kind mdf that takes the amount from the wallet, which must still hold it (SQLSTATE LY001 otherwise; the claim stays pending). Approving an approved claim again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_mdf_claim(claim_id, false, note);
    SELECT x.status INTO st FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    ELSIF st = 'approved' THEN
        RAISE EXCEPTION 'the MDF claim was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was paid from the wallet; a decision on a claim is final.', claim_id),
                  HINT = 'Nothing to do.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.reject_mdf_claim(uuid, text) IS
'Rejects a pending MDF claim: nothing is posted and its reserve is released. Rejecting a rejected claim again changes nothing; returns the status.';

REVOKE ALL ON FUNCTION @extschema@._settle_mdf(integer, date, date),
                      @extschema@.claim_mdf(text, text, numeric, text, text),
                      @extschema@._decide_mdf_claim(uuid, boolean, text),
                      @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text),
                          @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) TO loyalty_operator;
