-- Accrual: attaching ERP tables, the triggers, and the functions that read,
-- explain, verify and backfill what the triggers post.

CREATE FUNCTION @extschema@.accrue() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.accrue() IS 'Statement-level accrual trigger created by loyalty.attach(); its argument is the attachment id.';

CREATE FUNCTION @extschema@.accrue_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue_header' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.accrue_header() IS 'Statement-level trigger on a header table: re-accrues the lines of headers whose account, date, currency, document type or payment dates changed.';

CREATE FUNCTION @extschema@.stash_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_stash_header' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.stash_header() IS 'Row trigger on a header table: keeps the facts of a deleted or renumbered header until commit so that its lines are reversed exactly.';

CREATE FUNCTION @extschema@._refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% would bypass loyalty accrual', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'The table is attached to a loyalty program; TRUNCATE fires no row events, so the points its rows earned would stay.',
              HINT = 'DELETE the rows instead, or detach the program first with loyalty.detach().';
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_truncate() IS 'Internal: refuses TRUNCATE on attached ERP tables.';

CREATE TYPE @extschema@.row_points AS (
    status                  text,
    reason                  text,
    rule_valid_from         date,
    basis                   numeric,
    points_per_unit         numeric,
    product_line_multiplier numeric,
    tier_on_date            text,
    tier_multiplier         numeric,
    segment_multiplier      numeric,
    raw_points              numeric,
    rounding                text,
    points                  bigint,
    on_time_bonus           bigint,
    qualifying              numeric,
    month                   date);
COMMENT ON TYPE @extschema@.row_points IS 'Every step of one row''s points: status, rule version, basis, multipliers, rounding, bonus, qualifying spend.';

CREATE FUNCTION @extschema@._row_points(attachment integer, account_key text, amount numeric, quantity numeric,
                                        doc_date date, product_line text, currency text, doc_type text,
                                        due_date date, paid_date date, header_found boolean)
RETURNS @extschema@.row_points
AS 'MODULE_PATHNAME', 'loyalty_row_points' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._row_points(integer, text, numeric, numeric, date, text, text, text, date, date, boolean) IS
    'Internal: the accrual trigger''s points function, for explain_points, verify and backfill.';

CREATE FUNCTION @extschema@._cap_for_month(program_id integer, month date,
                                           OUT period_start date, OUT period_end date, OUT cap_points bigint)
AS 'MODULE_PATHNAME', 'loyalty_cap_for_month' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION @extschema@._cap_for_month(integer, date) IS 'Internal: the cap period a document month falls in, NULL when uncapped.';

CREATE FUNCTION @extschema@._post_backfill(attachment integer, accounts text[], months date[],
                                           points bigint[], qualifying numeric[], source_rows bigint[],
                                           kind text DEFAULT 'backfill')
RETURNS void
AS 'MODULE_PATHNAME', 'loyalty_post_backfill' LANGUAGE C STRICT;
COMMENT ON FUNCTION @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) IS
    'Internal: posts reconciled sums (backfill or restate) through the trigger''s own posting path.';

-- The facts of every row of an attachment's source, as SQL: the set-based
-- twin of the trigger's C mapping (mapping.c), over the same expressions.
CREATE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
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
            ' FROM ONLY %s h WHERE h.%I OPERATOR(pg_catalog.=) s.%I) hh ON true',
            a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
            coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'),
            a.header, a.header_match_column, a.header_key_column);
    END IF;
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, (%s)::text AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  coalesce(a.product_line_expr, 'NULL'), from_clause);
END
$$;
COMMENT ON FUNCTION @extschema@._facts_sql(integer) IS 'Internal: SQL that maps every row of an attachment''s source to the facts the points function takes.';

-- Checks a mapped column: it must exist and be of an accepted type.
CREATE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ regtype;
BEGIN
    IF col IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
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
    RETURN format('s.%I', col);
END
$$;
COMMENT ON FUNCTION @extschema@._check_column(regclass, text, text, regtype[], text) IS 'Internal: attach-time validation of one mapped column.';

CREATE FUNCTION @extschema@._as_local(rel regclass, col text, expr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, current_setting('TimeZone'))
            ELSE expr END;
COMMENT ON FUNCTION @extschema@._as_local(regclass, text, text) IS 'Internal: pins a timestamptz column to the time zone in force at attach time.';

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
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    prog @extschema@.program;
    keys text[];
    dside regclass := coalesce(header, source);
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
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.program_id = pid AND x.source = attach.source AND x.detached_at IS NULL) THEN
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
        PERFORM @extschema@._check_column(header, 'header_match_column', hm, NULL, NULL);
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
    -- a timestamptz becomes a date in the time zone in force at attach time,
    -- fixed in the mapping, so that no session setting can move a document
    dat := @extschema@._as_local(dside, date_column, dat);
    due := @extschema@._as_local(dside, due_date_column, due);
    paid := @extschema@._as_local(dside, paid_date_column, paid);
    IF header IS NOT NULL THEN
        acc := replace(acc, 's.', 'h.'); dat := replace(dat, 's.', 'h.');
        cur := replace(cur, 's.', 'h.'); dt := replace(dt, 's.', 'h.');
        due := replace(due, 's.', 'h.'); paid := replace(paid, 's.', 'h.');
    END IF;
    IF (doc_type_column IS NULL) <> (credit_note_types IS NULL) THEN
        RAISE EXCEPTION 'doc_type_column and credit_note_types go together' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example doc_type_column => ''doc_type'', credit_note_types => ''{CRN}''.';
    END IF;
    IF amount_expression IS NOT NULL THEN
        IF amount_column IS NOT NULL THEN
            RAISE EXCEPTION 'give amount_column or amount_expression, not both' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        BEGIN
            EXECUTE format('SELECT (%s)::numeric FROM ONLY %s s LIMIT 0', amount_expression, source);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid amount_expression for %: %', source, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('The expression was: %s', amount_expression),
                      HINT = 'Write an expression of the table''s columns, e.g. ''quantity * unit_price * (1 - discount)''; qualify functions with their schema.';
        END;
        amt := '(' || amount_expression || ')';
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
            due, paid, header, header_key_column, hm)
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
        EXECUTE format('CREATE TRIGGER %I BEFORE DELETE OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@.stash_header(%s)',
                       trg || '_header_delete', hm, header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_header_truncate', header);
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. Columns are validated now; with header, the account, date, currency, document type and payment dates are read from the header table. Returns the attachment id. Rows that existed before: loyalty.backfill().';

-- The active attachment of a program on a table, or a clear error.
CREATE FUNCTION @extschema@._attachment_of(source regclass, program text) RETURNS @extschema@.attachment
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = _attachment_of.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            HINT = 'Attach it with loyalty.attach(); SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    RETURN a;
END
$$;
COMMENT ON FUNCTION @extschema@._attachment_of(regclass, text) IS 'Internal: the active attachment of a program on a table.';

CREATE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
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
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_delete', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_truncate', a.header);
    END IF;
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;
COMMENT ON FUNCTION @extschema@.detach(regclass, text) IS 'Drops the accrual triggers of a program on a table. What was accrued stays in the ledger.';

CREATE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (date_trunc('month', current_date) - p.qualification_window + interval '1 month')::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id);
COMMENT ON FUNCTION @extschema@._rolling_start(integer) IS 'Internal: first month of the rolling qualification window.';

CREATE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
BEGIN
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  HINT = 'Accounts are enrolled by loyalty.enroll() or, under auto enrolment, by their first invoice.';
    END IF;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key;
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= current_date;
END
$$;
COMMENT ON FUNCTION @extschema@.balance(text, text) IS 'An account''s points, lifetime qualifying spend, rolling qualifying spend (the tier window) and tier.';

CREATE FUNCTION @extschema@.tier(program text, account_key text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT b.tier FROM @extschema@.balance(program, account_key) b);
COMMENT ON FUNCTION @extschema@.tier(text, text) IS 'An account''s current tier (NULL below the first threshold).';

CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key text[])
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    cond text;
    n integer := 0;
BEGIN
    FOR a IN SELECT * FROM @extschema@.attachment x WHERE x.source = explain_points.source AND x.detached_at IS NULL
             ORDER BY x.attachment_id LOOP
        IF cardinality(key) <> cardinality(a.key_columns) THEN
            RAISE EXCEPTION '% is keyed by % column(s) (%), % value(s) given', source, cardinality(a.key_columns),
                array_to_string(a.key_columns, ', '), cardinality(key) USING ERRCODE = 'invalid_parameter_value';
        END IF;
        cond := (SELECT string_agg(format('s.%I = ($1)[%s]::%s', c, o,
                        (SELECT format_type(t.atttypid, t.atttypmod) FROM pg_attribute t WHERE t.attrelid = source AND t.attname = c)), ' AND ')
                 FROM unnest(a.key_columns) WITH ORDINALITY AS u(c, o));
        RETURN QUERY EXECUTE format(
            'SELECT p.name, f.account_key, f.doc_date, r.status, r.reason, r.rule_valid_from, r.basis, r.points_per_unit,'
            ' f.product_line, coalesce(r.product_line_multiplier, 1), r.tier_on_date, coalesce(r.tier_multiplier, 1),'
            ' coalesce(r.segment_multiplier, 1),'
            ' r.raw_points, r.rounding, r.points, r.on_time_bonus, r.qualifying,'
            ' (SELECT format(''%%s points per account from %%s to %%s'', c.cap_points, c.period_start, c.period_end - 1)'
            '  FROM @extschema@._cap_for_month(%s, r.month) c WHERE c.cap_points IS NOT NULL)'
            ' FROM (%s WHERE %s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,'
            ' f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r,'
            ' @extschema@.program p WHERE p.program_id = %s',
            a.program_id, @extschema@._facts_sql(a.attachment_id), cond, a.attachment_id, a.program_id) USING key;
        n := n + 1;
    END LOOP;
    IF n = 0 THEN
        RAISE EXCEPTION 'no loyalty program is attached to %', source USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, text[]) IS
    'How a row''s points were computed, per attached program: rule version, basis, multipliers, rounding, bonus, cap. Give the key columns'' values in order.';

CREATE FUNCTION @extschema@.verify(program text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    -- 0. an attached table that was dropped cannot be checked
    RETURN QUERY
    SELECT NULL::text, NULL::date, x.attachment_id, 'source_dropped: ' || x.source_name, NULL::numeric, NULL::numeric
    FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.detached_at IS NULL AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = x.source);

    -- 1. every source row recomputed vs the per-month sums
    FOR a IN SELECT * FROM @extschema@.attachment x WHERE x.program_id = pid AND x.detached_at IS NULL
             AND EXISTS (SELECT FROM pg_class c WHERE c.oid = x.source) LOOP
        RETURN QUERY EXECUTE format($q$
            WITH src AS (
                SELECT f.account_key, r.month, sum(r.points + r.on_time_bonus) AS points,
                       sum(r.qualifying) AS qualifying, count(*) AS source_rows
                FROM (%s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,
                     f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r
                WHERE r.status IN ('earns', 'below_minimum', 'control_cohort')
                GROUP BY 1, 2),
            acc AS (SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying,
                           sum(m.source_rows) AS source_rows
                    FROM @extschema@.accrual_month m
                    WHERE m.program_id = %s AND m.attachment_id IN
                          (SELECT x.attachment_id FROM @extschema@.attachment x
                           WHERE x.program_id = %s AND x.source = %s::oid)
                    GROUP BY 1, 2),
            j AS (SELECT coalesce(s.account_key, c.account_key) AS k, coalesce(s.month, c.month) AS m,
                         coalesce(s.points, 0) AS sp, coalesce(c.points, 0) AS cp,
                         coalesce(s.qualifying, 0) AS sq, coalesce(c.qualifying, 0) AS cq,
                         coalesce(s.source_rows, 0) AS sr, coalesce(c.source_rows, 0) AS cr
                  FROM src s FULL JOIN acc c ON c.account_key = s.account_key AND c.month = s.month)
            SELECT j.k, j.m, %s, v.item, v.e, v.a FROM j,
                LATERAL (VALUES ('points', j.sp::numeric, j.cp::numeric), ('qualifying', j.sq, j.cq),
                                ('source_rows', j.sr::numeric, j.cr::numeric)) AS v(item, e, a)
            WHERE v.e IS DISTINCT FROM v.a$q$,
            @extschema@._facts_sql(a.attachment_id), a.attachment_id, pid, pid, a.source::oid, a.attachment_id);
    END LOOP;

    -- 2. the per-month sums, capped, vs the ledger's accrual entries
    RETURN QUERY
    WITH months AS (
        SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying
        FROM @extschema@.accrual_month m WHERE m.program_id = pid GROUP BY 1, 2),
    periods AS (
        SELECT mo.account_key, coalesce(c.period_start, mo.month) AS ps, c.cap_points,
               sum(mo.points) AS points, sum(mo.qualifying) AS qualifying
        FROM months mo LEFT JOIN LATERAL @extschema@._cap_for_month(pid, mo.month) c ON true
        GROUP BY 1, 2, 3),
    expected AS (
        SELECT p.account_key, sum(CASE WHEN p.cap_points IS NULL THEN p.points ELSE least(p.points, p.cap_points) END) AS points,
               sum(p.qualifying) AS qualifying
        FROM periods p GROUP BY 1),
    posted AS (
        SELECT l.account_key, sum(l.points) AS points, sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id = pid AND l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate')
        GROUP BY 1)
    SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e FULL JOIN posted p ON p.account_key = e.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;

    -- 3. the ledger vs the balances
    RETURN QUERY
    WITH l AS (SELECT x.account_key, sum(x.points) AS points, sum(x.qualifying) AS qualifying, count(*) AS n
               FROM @extschema@.ledger x WHERE x.program_id = pid GROUP BY 1),
         b AS (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
               FROM @extschema@.balance x WHERE x.program_id = pid)
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM l FULL JOIN b ON b.account_key = l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@.verify(text) IS
    'Recomputes every attached source row, the per-month sums, the ledger and the balances of a program, and returns each difference (expected vs actual). Empty means every point reconciles with the invoices.';

-- What the ERP rows of an attachment's source should have accrued since a
-- month, minus what was accrued (under any attachment of the same source),
-- posted as one batch: backfill for history, restate for one account whose
-- segment, cohort or enrolment date changed.
CREATE FUNCTION @extschema@._reconcile(attachment integer, since_month date, account text, kind text,
                                       OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                       OUT points bigint, OUT qualifying numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    d record;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x WHERE x.attachment_id = attachment;
    EXECUTE format($q$
        WITH src AS (
            SELECT f.account_key, r.month, sum(r.points + r.on_time_bonus) AS points,
                   sum(r.qualifying) AS qualifying, count(*) AS source_rows
            FROM (%s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,
                 f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r
            WHERE r.status IN ('earns', 'below_minimum', 'control_cohort') AND r.month >= %L
              AND (%L::text IS NULL OR f.account_key = %L::text)
            GROUP BY 1, 2),
        acc AS (SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying,
                       sum(m.source_rows) AS source_rows
                FROM @extschema@.accrual_month m
                WHERE m.program_id = %s AND m.month >= %L
                  AND (%L::text IS NULL OR m.account_key = %L::text)
                  AND m.attachment_id IN (SELECT x.attachment_id FROM @extschema@.attachment x
                                          WHERE x.program_id = %s AND x.source = %s::oid)
                GROUP BY 1, 2),
        diff AS (SELECT coalesce(s.account_key, c.account_key) AS k, coalesce(s.month, c.month) AS m,
                        (coalesce(s.points, 0) - coalesce(c.points, 0))::bigint AS p,
                        coalesce(s.qualifying, 0) - coalesce(c.qualifying, 0) AS q,
                        (coalesce(s.source_rows, 0) - coalesce(c.source_rows, 0))::bigint AS r
                 FROM src s FULL JOIN acc c ON c.account_key = s.account_key AND c.month = s.month)
        SELECT array_agg(k ORDER BY k COLLATE "C", m) AS k, array_agg(m ORDER BY k COLLATE "C", m) AS m,
               array_agg(p ORDER BY k COLLATE "C", m) AS p, array_agg(q ORDER BY k COLLATE "C", m) AS q,
               array_agg(r ORDER BY k COLLATE "C", m) AS r,
               count(DISTINCT k)::int AS accounts, count(*)::int AS months,
               coalesce(sum(r), 0)::bigint AS source_rows, coalesce(sum(p), 0)::bigint AS points,
               coalesce(sum(q), 0) AS qualifying
        FROM diff WHERE p <> 0 OR q <> 0 OR r <> 0$q$,
        @extschema@._facts_sql(a.attachment_id), a.attachment_id, since_month, account, account,
        a.program_id, since_month, account, account, a.program_id, a.source::oid)
    INTO d;
    accounts := d.accounts; months := d.months; source_rows := d.source_rows;
    points := d.points; qualifying := d.qualifying;
    IF d.months > 0 THEN
        PERFORM @extschema@._post_backfill(a.attachment_id, d.k, d.m, d.p, d.q, d.r, kind);
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile(integer, date, text, text) IS
    'Internal: posts what the source rows of an attachment should have accrued and did not (backfill, restate).';

CREATE FUNCTION @extschema@.backfill(source regclass, program text, since date,
                                     OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                     OUT points bigint, OUT qualifying numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment := @extschema@._attachment_of(source, program);
    pid integer := a.program_id;
    since_month date := date_trunc('month', since)::date;
BEGIN
    IF since IS NULL THEN
        RAISE EXCEPTION 'since must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Use ''-infinity'' to backfill the whole history.';
    END IF;
    -- one backfill of a program at a time; concurrent ERP writes go on
    PERFORM pg_advisory_xact_lock(hashtext('loyalty.backfill'), a.attachment_id);

    -- auto enrolment: the customers of the history are members from day one
    IF (SELECT p.enrollment FROM @extschema@.program p WHERE p.program_id = pid) = 'auto' THEN
        EXECUTE format('INSERT INTO @extschema@.account (program_id, account_key, enrolled_by, enrolled_from)'
                       ' SELECT DISTINCT %s, f.account_key, ''auto'', ''-infinity''::date FROM (%s) f'
                       ' WHERE f.account_key IS NOT NULL AND f.doc_date >= %L ORDER BY 2 ON CONFLICT DO NOTHING',
                       pid, @extschema@._facts_sql(a.attachment_id), since_month);
    END IF;

    SELECT * INTO accounts, months, source_rows, points, qualifying
    FROM @extschema@._reconcile(a.attachment_id, since_month, NULL, 'backfill');
END
$$;
COMMENT ON FUNCTION @extschema@.backfill(regclass, text, date) IS
    'Accrues the rows of an attached table dated from since (rounded down to its month) that the triggers have not accrued, set-based. Idempotent: what is already accrued is not posted again, so a second or interrupted run is safe.';

REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text),
                      @extschema@.detach(regclass, text),
                      @extschema@.backfill(regclass, text, date),
                      @extschema@._reconcile(integer, date, text, text),
                      @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text),
                          @extschema@.detach(regclass, text),
                          @extschema@.backfill(regclass, text, date),
                          @extschema@._reconcile(integer, date, text, text),
                          @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) TO loyalty_admin;

-- The per-month sums on loyalty.balance: merged in C inside the balance
-- upsert, so that a statement writes one row per account.  The statement's
-- sums come as typed arrays (one loyalty.balance row per account), never as
-- bytes to decode.
CREATE FUNCTION @extschema@._month_merge(a_month date[], a_attachment integer[], a_points bigint[], a_qualifying numeric[], a_source_rows bigint[],
                                         b_month date[], b_attachment integer[], b_points bigint[], b_qualifying numeric[], b_source_rows bigint[],
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS 'MODULE_PATHNAME', 'loyalty_month_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._month_merge(date[], integer[], bigint[], numeric[], bigint[], date[], integer[], bigint[], numeric[], bigint[]) IS
    'Internal: adds two sorted sets of per-month sums.';
