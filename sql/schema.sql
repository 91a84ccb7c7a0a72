--
-- schema: the objects CREATE EXTENSION loyalty installs, and the guarantees
-- the tables themselves enforce whatever client writes to them: roles,
-- the append-only ledger, immutable rule versions, comments for BI tools,
-- pg_dump registration and CHECK constraints.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA sch;
-- Shows an error with its SQLSTATE, message, detail and hint, masking the
-- program's surrogate id (it depends on how many programs earlier test
-- files created).
CREATE FUNCTION sch.show_error(stmt text, program_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hin text;
    pid text := (SELECT p.program_id::text FROM loyalty.program p WHERE p.name = program_name);
BEGIN
    EXECUTE stmt;
    RAISE NOTICE 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
    RAISE NOTICE E'% %\nDETAIL: %\nHINT: %', st,
        regexp_replace(msg, 'program ' || pid || '\M', 'program <' || program_name || '>'), det, hin;
END
$$;

--
-- 1. Roles
--

-- Three cluster-wide roles, none of which can log in: readers see, operators
-- run the day-to-day functions, admins configure programs.  Grant them to
-- the ERP's login roles.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole
  FROM pg_roles WHERE rolname IN ('loyalty_admin', 'loyalty_operator', 'loyalty_reader')
 ORDER BY rolname;

-- Every table of the schema is readable by all three roles.
SELECT c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'loyalty' AND c.relkind IN ('r', 'p', 'v')
   AND NOT (has_table_privilege('loyalty_reader', c.oid, 'SELECT')
            AND has_table_privilege('loyalty_operator', c.oid, 'SELECT')
            AND has_table_privilege('loyalty_admin', c.oid, 'SELECT'));

-- Writing to the ledger is nobody's privilege: entries are posted by the
-- extension's own triggers and functions, running as its owner.
SELECT r AS role, has_table_privilege(r, 'loyalty.ledger', 'INSERT') AS can_insert_ledger,
       has_table_privilege(r, 'loyalty.balance', 'UPDATE') AS can_update_balance
  FROM unnest(ARRAY['loyalty_reader', 'loyalty_operator', 'loyalty_admin']) r;

-- Configuring programs is for admins only.
SELECT r AS role,
       has_function_privilege(r, 'loyalty.create_program(text, text, loyalty.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, loyalty.rebate_schedule)', 'EXECUTE') AS create_program,
       has_function_privilege(r, 'loyalty.enroll(text, text, text, text, text, numeric, text, date)', 'EXECUTE') AS enroll
  FROM unnest(ARRAY['loyalty_reader', 'loyalty_operator', 'loyalty_admin']) r;

--
-- 2. Comments: every table, view and column a BI user sees has one
--

-- Tables and views of schema loyalty without a comment: none.
SELECT c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'loyalty' AND c.relkind IN ('r', 'p', 'v', 'm')
   AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1;

-- Columns without a comment: none.
SELECT c.relname, a.attname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = 'loyalty' AND c.relkind IN ('r', 'p', 'v', 'm')
   AND col_description(c.oid, a.attnum) IS NULL
 ORDER BY 1, 2;

-- And the comments are sentences, not placeholders.
SELECT count(*) AS short_comments
  FROM pg_description d JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'loyalty' AND length(d.description) < 3;

--
-- 3. pg_dump keeps the configuration and the journal
--

-- Every table of the extension (and every sequence behind an identity
-- column) is registered with pg_extension_config_dump, so that a dump of
-- the ERP database carries programs, rules, accounts and the ledger.
SELECT c.relname AS not_registered
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
       pg_extension e
 WHERE n.nspname = 'loyalty' AND c.relkind IN ('r', 'p', 'S') AND e.extname = 'loyalty'
   AND NOT c.oid = ANY (e.extconfig)
 ORDER BY 1;

-- Nothing else is registered, and each entry dumps the whole table (an
-- empty condition).
SELECT cardinality(extconfig) = (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = 'loyalty' AND c.relkind IN ('r', 'p', 'S')) AS all_and_only_tables,
       cardinality(extconfig) = cardinality(extcondition) AS one_condition_each,
       array_remove(extcondition, '') = '{}' AS whole_tables
  FROM pg_extension WHERE extname = 'loyalty';

--
-- 4. The ledger is append-only
--

-- A program, an ERP table and one invoice give the ledger an entry.
CREATE TABLE sch.invoice (invoice_id int PRIMARY KEY, customer_id int NOT NULL,
                          amount numeric(12,2) NOT NULL, invoice_date date NOT NULL);
SELECT loyalty.create_program('schema_points') AS pid \gset
SELECT loyalty.attach('sch.invoice', 'schema_points', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
INSERT INTO sch.invoice VALUES (1, 42, 250.00, '2024-03-10');
SELECT account_key, entry_no, kind, points, qualifying, source_rows
  FROM loyalty.ledger WHERE program_id = :pid;

-- UPDATE, DELETE and TRUNCATE of the ledger are refused, even for a
-- superuser: a correction is a new entry.
UPDATE loyalty.ledger SET points = 1000 WHERE program_id = :pid;
DELETE FROM loyalty.ledger WHERE program_id = :pid;
TRUNCATE loyalty.ledger;

-- The entry is still there, unchanged.
SELECT account_key, entry_no, kind, points FROM loyalty.ledger WHERE program_id = :pid;
SELECT count(*) AS drift FROM loyalty.verify('schema_points');

--
-- 5. Rule versions in force are immutable
--

-- The program's first version is in force (from -infinity): changing or
-- deleting it is refused, because documents may already have earned by it.
SELECT sch.show_error($$UPDATE loyalty.rule SET points_per_unit = 2
                         WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'schema_points')$$,
                      'schema_points');
SELECT sch.show_error($$DELETE FROM loyalty.rule
                         WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'schema_points')$$,
                      'schema_points');

-- A version that starts tomorrow is not in force yet and no document has
-- earned by it: it may still be corrected or withdrawn.
SELECT loyalty.add_rule('schema_points', current_date + 1, 3);
UPDATE loyalty.rule SET points_per_unit = 4 WHERE program_id = :pid AND valid_from = current_date + 1;
SELECT valid_from = current_date + 1 AS tomorrow, points_per_unit
  FROM loyalty.rule WHERE program_id = :pid AND valid_from > '-infinity';
DELETE FROM loyalty.rule WHERE program_id = :pid AND valid_from = current_date + 1;
SELECT count(*) AS versions FROM loyalty.rule WHERE program_id = :pid;

-- But once a document dated after its start has accrued by a future
-- version (an invoice dated ahead, e.g. a scheduled delivery), that version
-- is part of the audit trail too: changing it would make the invoice's
-- recorded points disagree with its rules.  The change is refused and
-- verify stays empty.
SELECT loyalty.add_rule('schema_points', current_date + 10, 2);
INSERT INTO sch.invoice VALUES (2, 42, 100.00, current_date + 40);
SELECT points FROM loyalty.ledger WHERE program_id = :pid ORDER BY posted_xid DESC, entry_no DESC LIMIT 1;
DO $$
BEGIN
    UPDATE loyalty.rule SET points_per_unit = 5
     WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'schema_points')
       AND valid_from = current_date + 10;
    RAISE NOTICE 'changed';
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RAISE NOTICE 'refused';
END
$$;
SELECT count(*) AS drift FROM loyalty.verify('schema_points');

--
-- 6. CHECK constraints reject bad rows from any writer
--

-- The failing row in a constraint's DETAIL carries ids and timestamps, so
-- only the message is shown here.
\set VERBOSITY terse

-- A potential spend (share of wallet's denominator) is never negative.
INSERT INTO loyalty.account (program_id, account_key, potential_spend) VALUES (:pid, 'X1', -1);
-- The cohort is pilot, control or nothing.
INSERT INTO loyalty.account (program_id, account_key, cohort) VALUES (:pid, 'X1', 'treatment');
-- The cooperation model is one of four.
INSERT INTO loyalty.account (program_id, account_key, cooperation_model) VALUES (:pid, 'X1', 'wholesaler');
-- An account key is never empty.
INSERT INTO loyalty.account (program_id, account_key) VALUES (:pid, '');
-- A tier and the moment it was reached go together.
INSERT INTO loyalty.account (program_id, account_key, tier) VALUES (:pid, 'X1', 'Gold');
-- A cap needs its period, and a period its cap.
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, cap_points) VALUES (:pid, '2030-01-01', 1, 1000);
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, cap_period) VALUES (:pid, '2030-01-01', 1, 'month');
-- A rate is never negative; multipliers are objects of positive numbers, and
-- segment multipliers name a known attribute.
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit) VALUES (:pid, '2030-01-01', -1);
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, product_line_multipliers)
VALUES (:pid, '2030-01-01', 1, '{"SOLAR": 0}');
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, product_line_multipliers)
VALUES (:pid, '2030-01-01', 1, '[2]');
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, segment_multipliers)
VALUES (:pid, '2030-01-01', 1, '{"colour": {"red": 2}}');
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit, segment_multipliers)
VALUES (:pid, '2030-01-01', 1, '{"region": {"North": "high"}}');
-- Program settings are one of the documented values.
INSERT INTO loyalty.program (name, currency, rounding) VALUES ('schema_bad', 'EUR', 'ceiling');
INSERT INTO loyalty.program (name, currency) VALUES ('schema_bad', 'euro');
INSERT INTO loyalty.program (name, currency, qualification_window) VALUES ('schema_bad', 'EUR', '1 week');
-- A ledger entry has a known kind.
INSERT INTO loyalty.ledger (kind, program_id, account_key, entry_no) VALUES ('gift', :pid, '42', 99);
\set VERBOSITY default

-- None of this left a trace.
SELECT count(*) AS accounts FROM loyalty.account WHERE program_id = :pid AND account_key <> '42';
SELECT count(*) AS programs FROM loyalty.program WHERE name = 'schema_bad';
SELECT count(*) AS drift FROM loyalty.verify('schema_points');

--
-- 7. Function bodies Citus can run
--

-- No function of the extension has a SQL-standard body (RETURN expr or
-- BEGIN ATOMIC): Citus cannot run one once loyalty's tables are Citus
-- tables (syntax error at or near "RETURN").  SQL functions have string
-- bodies (AS $$ SELECT ... $$).
SELECT p.oid::regprocedure AS sql_standard_body
  FROM pg_proc p
 WHERE p.pronamespace = 'loyalty'::regnamespace AND p.prosqlbody IS NOT NULL
 ORDER BY 1;

--
-- 8. Tables Citus copies to a new node by name, not by OID
--
-- Citus copies a table's rows to a node it adds (and moves shards) in
-- binary when every column's type has a binary form: a regclass or other
-- OID column would then arrive as another node's OID.  Every table of the
-- schema with such a column also has a column of a row type, which has no
-- binary form in Citus's eyes, so that the copy is text and the names are
-- resolved on the new node.  (partner_login stays a plain table of each
-- node: Citus never copies it.)
SELECT c.relname, l.layout, string_agg(a.attname, ', ' ORDER BY a.attnum) AS oid_columns,
       EXISTS (SELECT FROM pg_attribute r JOIN pg_type t ON t.oid = r.atttypid
                WHERE r.attrelid = c.oid AND r.attnum > 0 AND NOT r.attisdropped AND t.typtype = 'c') AS copied_as_text
  FROM pg_class c
  JOIN loyalty._citus_layout() l ON l.table_name = c.oid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'loyalty'::regnamespace AND c.relkind IN ('r', 'p')
   AND a.atttypid IN ('oid'::regtype, 'regclass'::regtype, 'regtype'::regtype, 'regproc'::regtype,
                      'regprocedure'::regtype, 'regoper'::regtype, 'regoperator'::regtype,
                      'regnamespace'::regtype, 'regrole'::regtype, 'regcollation'::regtype, 'regconfig'::regtype)
 GROUP BY c.oid, c.relname, l.layout
 ORDER BY 1;
-- and an attachment keeps the names it was made with
SELECT (x.names_at_attach).source IS NOT DISTINCT FROM x.source_name AS source_named, count(*) > 0 AS attachments
  FROM loyalty.attachment x GROUP BY 1;
-- without Citus there is nothing to distribute and no node to add
SELECT loyalty.distribute('sch.invoice');
SELECT loyalty.add_node('10.0.0.7', 5432);
