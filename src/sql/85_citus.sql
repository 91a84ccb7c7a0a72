-- Scale-out on Citus.  loyalty.distribute(invoice) turns loyalty's tables
-- into Citus tables around an ERP invoice table distributed by customer:
-- the configuration (no account key) becomes reference tables, a copy on
-- every node; every account-scoped table (primary key (program_id,
-- account_key, ...)) is distributed by account_key, co-located with the
-- invoice table.  A trigger firing on an invoice shard then finds its
-- configuration on its own node and writes only co-located shards there
-- (src/citus.c).
--
-- What Citus cannot take is dropped first, on every node, because Citus
-- leaves extension-owned tables alone on the workers (each keeps what
-- CREATE EXTENSION made there): the foreign keys (they are re-created
-- afterwards where Citus allows them) and the partner row-security
-- policies (their EXISTS subquery is not allowed on a distributed table;
-- without them a partner login sees nothing, the safe side).

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
'Internal: how loyalty.distribute() lays out each of loyalty''s tables on Citus: distributed (primary key led by program_id, account_key), reference (configuration, no account key; and rebate_agreement, whose account key is optional) or local (no account key in the primary key: partner_login).';

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

-- The functions Citus runs on the node holding the account's shard when
-- called as a statement of their own (SELECT loyalty.redeem(...)): a debit
-- locks the account, waits for the postings in flight and posts there,
-- with that node's transaction ids (src/redeem.c refuses a call that
-- arrives elsewhere).
CREATE FUNCTION @extschema@._citus_functions() RETURNS void
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

-- What distribute() changes on each node before any table is distributed,
-- from that node's own catalog: the foreign keys between loyalty's tables
-- and the partner policies go (distribute() re-creates on the coordinator
-- the keys Citus can take), and the account keys take key_type.  Run on
-- every node by distribute(), and by add_node() on a node before Citus adds
-- it.  Harmless to run again.
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

-- Citus copies loyalty.attachment to every node as text (its row-typed
-- column names_at_attach sees to it), so that source, header and product
-- are resolved there by name: a node added later gets its own OIDs, not
-- another node's.  A name that a node does not have stops the copy, and a
-- detached attachment may name a table that stays on this node only (a
-- plain table, a Citus local table) or hold the OID of a dropped one, which
-- another node may give to a different table.  Such a detached attachment
-- keeps its names (source_name, names_at_attach) and its relations become
-- '-' (no relation).  Attached ones name distributed tables (attach()
-- refuses others once loyalty is distributed).  Returns how many changed.
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

CREATE FUNCTION @extschema@.distribute(invoice regclass)
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
COMMENT ON FUNCTION @extschema@.distribute(regclass) IS
'Lays out loyalty''s tables on a Citus cluster around invoice, an ERP table hash-distributed by a text, integer or bigint customer key: account keys take that type; configuration tables become reference tables, account-scoped tables (the dead letters of rejected_event included) are distributed by account_key co-located with invoice, partner_login stays local to each node. Drops the foreign keys and partner policies Citus cannot take on every node, re-creates the keys it can. Superuser, once, before attaching the distributed invoice table; running it again is harmless. Returns each table''s layout.';

-- A worker added after distribute().  Citus would run CREATE EXTENSION
-- loyalty there itself, which makes loyalty's tables as on a single server
-- (text keys, foreign keys, partner policies): on an integer or bigint
-- layout it then refuses the node (the distribution column types differ),
-- on a text layout the node's tables would differ from the others'.
-- add_node() makes the extension there first and lays it out as
-- distribute() laid out the other nodes (_prepare_node), then adds the node
-- with citus_add_node().  Shards move to it with Citus's rebalancer.
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

-- verify and backfill of a distributed table, one shard at a time, on the
-- node that holds it (src/reconcile.c): the shard's rows, priced there,
-- against what the co-located shards of loyalty's tables accrued; backfill
-- posts the difference there.  Called by verify and backfill only, as the
-- owner, through a query Citus routes to the shard; the facts query runs
-- as caller, the role that called verify or backfill.
CREATE FUNCTION @extschema@._reconcile_shard(attachment integer, shard text, caller text, backfill boolean,
                                             since date, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_reconcile_shard' LANGUAGE C VOLATILE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._reconcile_shard(integer, text, text, boolean, date, text) IS
    'Internal: verify''s comparison (or backfill''s posting) of one Citus shard of an attached table, on its node, with the co-located shards of loyalty''s tables.';
REVOKE ALL ON FUNCTION @extschema@._reconcile_shard(integer, text, text, boolean, date, text) FROM PUBLIC;

-- explain_points of a distributed table: the rows of one account, on the
-- node of its shard, where its account row is (src/explain.c).
CREATE FUNCTION @extschema@._explain_shard(attachment integer, shard text, caller text, key text[], account text)
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_shard' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._explain_shard(integer, text, text, text[], text) IS
    'Internal: explain_points of the rows of one account (NULL: of every account) of a Citus distributed table, on the node of its shard.';
REVOKE ALL ON FUNCTION @extschema@._explain_shard(integer, text, text, text[], text) FROM PUBLIC;

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
