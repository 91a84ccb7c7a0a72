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

