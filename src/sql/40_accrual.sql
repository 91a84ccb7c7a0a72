-- Accrual: attaching ERP tables, the triggers, and the functions that read,
-- explain, verify and backfill what the triggers post.

CREATE FUNCTION @extschema@.accrue() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.accrue() IS 'Statement-level accrual trigger created by loyalty.attach(); its argument is the attachment id.';

CREATE FUNCTION @extschema@.accrue_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue_header' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.accrue_header() IS 'Statement-level triggers on a header table: re-accrue the lines of headers whose account, date, currency, document type or payment dates changed, and accrue the lines that were waiting for a header inserted after them.';

CREATE FUNCTION @extschema@.stash_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_stash_header' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.stash_header() IS 'Row trigger on a header table: keeps the facts of a deleted or renumbered header until commit so that its lines are reversed exactly.';

CREATE FUNCTION @extschema@.track_product() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_track_product' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.track_product() IS 'Statement-level triggers on a product table: when a product''s mapped product line changes, the product is deleted, or a product is inserted after lines that name it, keeps the line it had for the documents dated before the change (loyalty.product_history).';

CREATE FUNCTION @extschema@._refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% would bypass loyalty accrual', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'The table is attached to a loyalty program; TRUNCATE fires no row events, so the points its rows earned would stay.',
              HINT = 'DELETE the rows instead, or detach the program first with loyalty.detach().';
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_truncate() IS 'Internal: refuses TRUNCATE on attached ERP tables.';

CREATE FUNCTION @extschema@._capped_points(program_id integer, months date[], points bigint[]) RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_capped_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._capped_points(integer, date[], bigint[]) IS 'Internal: an account''s per-month points after the program''s nested caps (month, quarter, year), summed; the trigger''s own computation, for verify().';

CREATE FUNCTION @extschema@._equality_operator(type regtype) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_equality_operator' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._equality_operator(regtype) IS 'Internal: a type''s own equality operator as SQL text, for joins on ERP keys.';
REVOKE ALL ON FUNCTION @extschema@._equality_operator(regtype) FROM PUBLIC;

-- The facts of every row of an attachment's source, as SQL: the set-based
-- twin of the trigger's C mapping (mapping.c), over the same expressions.
-- The attachment row is given, and the table read (its source, or on Citus
-- one of its shards): on a worker, inside a shard query, loyalty.attachment
-- cannot be read by its name (src/reconcile.c reads its placement).
CREATE FUNCTION @extschema@._facts_sql(a @extschema@.attachment, source regclass) RETURNS text
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
COMMENT ON FUNCTION @extschema@._facts_sql(@extschema@.attachment, regclass) IS 'Internal: SQL that maps every row of a table (an attachment''s source, or a Citus shard of it) to the facts the points function takes.';

CREATE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
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
COMMENT ON FUNCTION @extschema@._facts_sql(integer) IS 'Internal: SQL that maps every row of an attachment''s source to the facts the points function takes.';

-- Checks a mapped column: it must exist and be of an accepted type.  Returns
-- the column's name as the catalog spells it; callers quote it with
-- format('%I.%I', alias, name), they never edit SQL text.
CREATE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
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
COMMENT ON FUNCTION @extschema@._check_column(regclass, text, text, regtype[], text) IS 'Internal: attach-time validation of one mapped column; returns its name.';

CREATE FUNCTION @extschema@._as_local(rel regclass, col text, expr text, zone text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, zone)
            ELSE expr END
$$;
COMMENT ON FUNCTION @extschema@._as_local(regclass, text, text, text) IS 'Internal: pins a timestamptz column to the program''s time zone, so that a document''s date is the same in every session.';

-- The owner's part of attach() (src/attach.c runs the caller's part first:
-- privileges, and amount_expression parsed and validated as the caller and
-- handed over in canonical form).  Nothing here runs code of the caller's:
-- columns are checked against the catalog, the triggers are the owner's.
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
COMMENT ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) IS
    'Internal: the extension owner''s part of attach(): column checks, the attachment row and the triggers.';
REVOKE ALL ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) FROM PUBLIC;

-- attach() itself is C (src/attach.c), SECURITY INVOKER: it checks its
-- arguments, the caller's TRIGGER and SELECT privileges and parses
-- amount_expression as the caller, then runs _attach() as the extension
-- owner.  A lines table names the header's key twice: line_header_column
-- (the lines' column that references the header) and header_id_column (the
-- header's own column, its primary key by default).  header_key_column and
-- header_match_column are their deprecated names, in the same positions.
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

-- A rename, drop or type change of a mapped column is checked when the
-- ALTER TABLE ends: each attachment of the table must still parse, as the
-- role that altered it, or the ALTER fails with what to do.
CREATE FUNCTION @extschema@._check_mapped_columns() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'loyalty_check_mapped_columns' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._check_mapped_columns() IS 'Internal: event trigger refusing an ALTER TABLE that breaks the mapping of an attached table.';
REVOKE ALL ON FUNCTION @extschema@._check_mapped_columns() FROM PUBLIC;
CREATE EVENT TRIGGER loyalty_check_mapped_columns ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION @extschema@._check_mapped_columns();

-- The active attachment of a program on a table, or a clear error.
CREATE FUNCTION @extschema@._attachment_of(source regclass, program text) RETURNS @extschema@.attachment
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
COMMENT ON FUNCTION @extschema@._attachment_of(regclass, text) IS 'Internal: the active attachment of a program on a table.';

-- As the owner: the triggers are the owner's (attach creates them so), and
-- nothing a user defined runs here.
CREATE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
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
COMMENT ON FUNCTION @extschema@.detach(regclass, text) IS 'Drops the accrual triggers of a program on a table. What was accrued stays in the ledger.';

CREATE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT (pg_catalog.date_trunc('month', @extschema@._today(p.program_id)::timestamp)
                - pg_catalog.make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id)
$$;
COMMENT ON FUNCTION @extschema@._rolling_start(integer) IS 'Internal: first month of the rolling qualification window.';

-- As the caller, so that row-level security applies to a partner's login
-- (src/sql/80_partner.sql); loyalty._may_read refuses another account first.
CREATE FUNCTION @extschema@.balance(program text, account_key text,
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
COMMENT ON FUNCTION @extschema@.balance(text, text) IS 'An account''s points, lifetime qualifying spend, rolling qualifying spend (the tier window) and tier; zeros (and the first tier when its threshold is 0) for a customer with no account yet.';

-- Checks its own arguments, so that its errors are its own, not balance()'s.
CREATE FUNCTION @extschema@.tier(program text, account_key text) RETURNS text
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
COMMENT ON FUNCTION @extschema@.tier(text, text) IS 'An account''s current tier (NULL below the first threshold).';

-- explain_points, verify, backfill (and enroll's restatement) recompute what
-- the rows of an attached table earn: the facts query (_facts_sql, the
-- attaching user's mapping expressions) runs as the caller, the points
-- function is the trigger's own (src/reconcile.c), and loyalty's tables are
-- read and written as the owner.
CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key text[])
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, text[]) IS
    'How a row''s points were computed, per attached program: rule version, basis, multipliers, rounding, bonus, cap. Give the key columns'' values in order.';
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

-- What verify checks besides the source rows, as the owner (it reads
-- loyalty's tables and the catalog only).  An attached table that was
-- dropped cannot be checked; one whose triggers are missing, disabled or
-- doubled does not accrue what it should.  The attachments are read first,
-- in a statement of their own: on Citus, attachment is a reference table,
-- and a statement joining it to the catalog is planned by Citus (it plans
-- the CTEs apart and loses their column names); the catalog statement
-- over the values read is plain PostgreSQL.
CREATE FUNCTION @extschema@._verify_attachments(program_id integer)
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
COMMENT ON FUNCTION @extschema@._verify_attachments(integer) IS
    'Internal: verify''s checks of a program''s attached tables: dropped tables, and accrual triggers missing, disabled or doubled.';

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
COMMENT ON FUNCTION @extschema@._verify_ledger(integer, text) IS
    'Internal: verify''s check of the per-month sums, capped, against the ledger''s accrual entries, of every account of a program or of one.';

-- The ledger's sums against loyalty.balance: the one place that says what
-- a balance must be, given the ledger.
CREATE FUNCTION @extschema@._verify_balance(program_id integer, account text)
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
COMMENT ON FUNCTION @extschema@._verify_balance(integer, text) IS
    'Internal: verify''s check of the balances against the sums of the ledger, of every account of a program or of one.';

CREATE FUNCTION @extschema@.verify(program text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text) IS
    'Recomputes every attached source row, the per-month sums, the ledger and the balances of a program, and returns each difference (expected vs actual); also attached tables dropped, and accrual triggers missing, disabled or doubled. Empty means every point reconciles with the invoices. Refused unless the caller can read every row of the attached tables.';

CREATE FUNCTION @extschema@.fold(program text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_fold' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.fold(text) IS
    'Folds the committed balance changes of a program (NULL: of every program) into loyalty.balance_folded, books the cap entries they call for and records the tier upgrades they earn; returns how many changes it folded. Schedule it with pg_cron (e.g. every minute). Balances read the same before and after; a fold already running for a program is not waited for (that program is skipped).';
REVOKE ALL ON FUNCTION @extschema@.fold(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.fold(text) TO loyalty_operator, loyalty_admin;

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
GRANT EXECUTE ON FUNCTION @extschema@.verify(text, text), @extschema@.verify(text, date)
TO loyalty_reader, loyalty_operator, loyalty_admin;

CREATE FUNCTION @extschema@.backfill(source regclass, program text, since date,
                                     OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                     OUT points bigint, OUT qualifying numeric)
AS 'MODULE_PATHNAME', 'loyalty_backfill' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.backfill(regclass, text, date) IS
    'Accrues the rows of an attached table dated from since (rounded down to its month) that the triggers have not accrued, set-based. Idempotent: what is already accrued is not posted again, so a second or interrupted run is safe.';

REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text),
                      @extschema@.detach(regclass, text),
                      @extschema@.backfill(regclass, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text),
                          @extschema@.detach(regclass, text),
                          @extschema@.backfill(regclass, text, date) TO loyalty_admin;

-- Two sets of per-month sums added up, as typed arrays, never as bytes to
-- decode: the fold does the same in C (ledger_months_merge); this SQL
-- entry point stays for inspection and its tests.
CREATE FUNCTION @extschema@._month_merge(a_month date[], a_attachment integer[], a_points bigint[], a_qualifying numeric[], a_source_rows bigint[],
                                         b_month date[], b_attachment integer[], b_points bigint[], b_qualifying numeric[], b_source_rows bigint[],
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS 'MODULE_PATHNAME', 'loyalty_month_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._month_merge(date[], integer[], bigint[], numeric[], bigint[], date[], integer[], bigint[], numeric[], bigint[]) IS
    'Internal: adds two sorted sets of per-month sums.';
