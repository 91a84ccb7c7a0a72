--
-- citus_int4: loyalty on a Citus cluster whose invoice lines are
-- distributed by an integer customer key, with a composite primary key (a
-- database of its own: distribute() sets the type of loyalty's account keys
-- once per database).  Accounts accrued as text before distribute() keep
-- their points as integer keys; a key that is no integer stops it.
-- loyalty's account-scoped tables take the integer type and are co-located
-- with the lines; accrual is exact under INSERT,
-- INSERT ... SELECT, COPY, UPDATE, DELETE and credit notes, from the
-- smallest to the largest integer key; verify is empty; a key beyond the
-- integer range or no number at all is refused with its SQLSTATE.
-- Expected figures come from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
RESET client_min_messages;

CREATE SCHEMA erp;
CREATE TABLE erp.invoice_line (customer_id integer NOT NULL, invoice_no integer NOT NULL, line_no smallint NOT NULL,
                               amount numeric(12,2) NOT NULL, invoice_date date NOT NULL,
                               PRIMARY KEY (customer_id, invoice_no, line_no));
SELECT create_distributed_table('erp.invoice_line', 'customer_id');

-- Before distribute(): a program accrues on the coordinator from a local
-- table, its account keys stored as text ('-150' to '149'), folded and not.
CREATE TABLE erp.legacy (invoice_no integer NOT NULL, customer_id integer NOT NULL, amount numeric(12,2) NOT NULL,
                         invoice_date date NOT NULL, PRIMARY KEY (customer_id, invoice_no));
SELECT loyalty.create_program('Legacy Club') > 0 AS created;
SELECT loyalty.attach('erp.legacy', 'Legacy Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO erp.legacy SELECT g, g % 300 - 150, 3 + (g % 71) + (g % 10) / 10.0, DATE '2024-06-01' + g % 300
  FROM generate_series(1, 3000) g;
UPDATE erp.legacy SET amount = amount + 1 WHERE invoice_no % 5 = 0;
SELECT loyalty.fold('Legacy Club') > 0 AS folded;
DELETE FROM erp.legacy WHERE invoice_no % 7 = 0;
INSERT INTO erp.legacy VALUES (5001, 149, -20.00, '2025-01-10');
CREATE TEMP TABLE legacy_rows AS
SELECT customer_id, sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying FROM erp.legacy GROUP BY 1;
CREATE TEMP TABLE legacy_before AS
SELECT b.account_key::text AS account_key, b.points, b.qualifying
  FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'Legacy Club';
SELECT count(*) AS accounts, count(*) FILTER (WHERE (b.points, b.qualifying) IS DISTINCT FROM (e.points, e.qualifying)) AS differing
  FROM legacy_before b FULL JOIN legacy_rows e ON e.customer_id::text = b.account_key;
SELECT loyalty.detach('erp.legacy', 'Legacy Club');

-- A key that is no integer stops distribute() before anything is
-- distributed; the transaction rolls back.
BEGIN;
SELECT loyalty.enroll('Legacy Club', 'abc');
SELECT layout, count(*) FROM loyalty.distribute('erp.invoice_line') GROUP BY 1 ORDER BY 1;
ROLLBACK;
SELECT count(*) AS distributed_loyalty_tables FROM pg_catalog.pg_dist_partition WHERE logicalrelid::text LIKE 'loyalty.%';
SELECT pg_typeof(account_key) AS key_type_here FROM loyalty.account LIMIT 1;
-- and nothing changed on the workers either (checked before any node is
-- touched): text keys, foreign keys and partner policies still there
SELECT success, result FROM pg_catalog.run_command_on_workers($$
    SELECT (SELECT a.atttypid::regtype FROM pg_attribute a
             WHERE a.attrelid = 'loyalty.account'::regclass AND a.attname = 'account_key')::text
           || ', ' || ((SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'loyalty'::regnamespace) > 0)::text
           || ', ' || ((SELECT count(*) FROM pg_policies WHERE schemaname = 'loyalty' AND policyname = 'partner') > 0)::text$$);

SET client_min_messages = warning;
SELECT layout, count(*) FROM loyalty.distribute('erp.invoice_line') GROUP BY 1 ORDER BY 1;
RESET client_min_messages;
-- the accounts of before kept their points, their keys now integers
CREATE TEMP TABLE legacy_after AS
SELECT b.account_key, b.points, b.qualifying
  FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'Legacy Club';
SELECT count(*) AS accounts, count(*) FILTER (WHERE (a.points, a.qualifying) IS DISTINCT FROM (e.points, e.qualifying)) AS differing,
       min(pg_typeof(a.account_key)::text) AS key_type
  FROM legacy_after a FULL JOIN legacy_rows e ON e.customer_id = a.account_key;
SELECT (SELECT sum(points) FROM loyalty.ledger l JOIN loyalty.program p USING (program_id) WHERE p.name = 'Legacy Club')
     = (SELECT sum(points) FROM legacy_rows) AS ledger_exact;
SELECT * FROM loyalty.verify('Legacy Club');
SELECT b.points = e.points AND b.qualifying = e.qualifying AS exact
  FROM loyalty.balance('Legacy Club', '-150') b, legacy_rows e WHERE e.customer_id = -150;
-- every distributed table's account_key is an integer, co-located with the lines
SELECT a.atttypid::regtype AS account_key_type, count(*) AS distributed_tables,
       count(*) FILTER (WHERE p.colocationid = (SELECT colocationid FROM pg_catalog.pg_dist_partition
                                                 WHERE logicalrelid = 'erp.invoice_line'::regclass)) AS with_lines
  FROM pg_catalog.pg_dist_partition p
  JOIN pg_catalog.pg_attribute a ON a.attrelid = p.logicalrelid AND a.attname = 'account_key'
 WHERE p.logicalrelid::text LIKE 'loyalty.%' AND p.partmethod = 'h'
 GROUP BY 1;
SELECT table_name, data_type FROM information_schema.columns
 WHERE table_schema = 'loyalty' AND column_name = 'account_key'
   AND table_name IN ('balance', 'accrual_month', 'ledger') ORDER BY 1;

SELECT loyalty.create_program('Int Club') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Int Club' \gset
SELECT loyalty.attach('erp.invoice_line', 'Int Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;

-- every account's points and qualifying spend against its rows
CREATE VIEW erp.check_points AS
SELECT count(*) AS accounts, sum(e.points) AS erp_points, sum(b.points) AS loyalty_points,
       count(*) FILTER (WHERE e.points IS DISTINCT FROM b.points
                           OR e.qualifying IS DISTINCT FROM b.qualifying) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying
          FROM erp.invoice_line GROUP BY 1) e
  FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
               JOIN loyalty.program p USING (program_id) WHERE p.name = 'Int Club') b
 USING (account_key);

-- INSERT: the extremes of the type and zero, then 15,000 lines of 1,500
-- customers
INSERT INTO erp.invoice_line VALUES (2147483647, 1, 1, 10.50, '2025-01-02'), (-2147483648, 2, 1, 20.25, '2025-01-03'),
                                    (0, 3, 1, 30.99, '2025-01-04');
INSERT INTO erp.invoice_line SELECT 1 + g % 1500, g / 3, (g % 3)::smallint, 5 + (g % 61) + (g % 100) / 100.0,
                                    DATE '2025-01-01' + g % 200
  FROM generate_series(100, 15099) g;
SELECT * FROM erp.check_points;
-- COPY: 6,000 lines from a file, four from the client
SELECT '/tmp/loyalty_citus_int4_' || current_setting('port') || '.csv' AS csv \gset
COPY (SELECT 1 + (g * 13) % 1600, 50000 + g / 2, (g % 2)::smallint, (g % 47) + 0.49, DATE '2025-02-01' + g % 120
        FROM generate_series(1, 6000) g) TO :'csv' (FORMAT csv);
COPY erp.invoice_line FROM :'csv' (FORMAT csv);
COPY erp.invoice_line FROM STDIN (FORMAT csv);
7,90001,1,19.99,2025-03-01
7,90001,2,0.99,2025-03-01
2147483647,90002,1,100.00,2025-03-02
-2147483648,90003,1,-5.50,2025-03-03
\.
SELECT * FROM erp.check_points;
-- UPDATE of amounts and dates, DELETE, credit notes (negative amounts)
UPDATE erp.invoice_line SET amount = amount * 2 WHERE invoice_no % 7 = 0;
UPDATE erp.invoice_line SET invoice_date = invoice_date + 45 WHERE invoice_no % 11 = 0;
DELETE FROM erp.invoice_line WHERE invoice_no % 13 = 0 AND line_no = 2;
INSERT INTO erp.invoice_line SELECT 1 + g * 7 % 1500, 100000 + g, 1, -(2.5 + g), DATE '2025-04-01' + g % 30
  FROM generate_series(1, 100) g;
SELECT * FROM erp.check_points;
SELECT (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid)
     = (SELECT sum(trunc(amount))::bigint FROM erp.invoice_line) AS ledger_exact;

SELECT * FROM loyalty.verify('Int Club');
SELECT * FROM loyalty.verify('Int Club', account => '2147483647');
SELECT * FROM loyalty.verify('Int Club', account => '-2147483648');
-- balance() of the extremes (read first: in one query with the ERP table,
-- Citus would push the call into the shard query)
SELECT points AS top FROM loyalty.balance('Int Club', '2147483647') \gset
SELECT points AS bottom FROM loyalty.balance('Int Club', '-2147483648') \gset
SELECT :top = (SELECT sum(trunc(amount)) FROM erp.invoice_line WHERE customer_id = 2147483647) AS top_exact,
       :bottom = (SELECT sum(trunc(amount)) FROM erp.invoice_line WHERE customer_id = -2147483648) AS bottom_exact;
-- explain_points by the composite key, in its columns' order (from a copy
-- of the rows, on the coordinator)
CREATE TEMP TABLE lines AS SELECT * FROM erp.invoice_line WHERE customer_id = 7 AND invoice_no = 90001;
SELECT l.line_no, e.account_key, e.status, e.points, e.points = trunc(l.amount) AS points_are_the_rows
  FROM lines l, LATERAL loyalty.explain_points('erp.invoice_line', l.customer_id::text, l.invoice_no::text, l.line_no::text) e
 ORDER BY 1;
SELECT loyalty.fold('Int Club') > 0 AS folded;
SELECT * FROM erp.check_points;
SELECT * FROM loyalty.verify('Int Club');

-- a redemption of the largest key, in a new session (as in citus_settle):
-- Citus runs redeem on the node holding the account's shard when the key
-- is given as a number
\c -
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Int Club' \gset
SELECT loyalty.set_reward('Int Club', 'CAP', 'Cap', 50);
SELECT points AS before FROM loyalty.balance('Int Club', '2147483647') \gset
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Int Club', 2147483647, 'CAP') r;
-- the key as text is not routed: refused, nothing written
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Int Club', '2147483647', 'CAP') r;
SELECT :before - points AS spent FROM loyalty.balance('Int Club', '2147483647');
SELECT account_key, pg_typeof(account_key) AS key_type, points FROM loyalty.redemption WHERE program_id = :pid;
SELECT * FROM loyalty.verify('Int Club');

-- keys the integer column cannot hold: refused with their SQLSTATE
\set VERBOSITY sqlstate
SELECT * FROM loyalty.balance('Int Club', '3000000000');
SELECT * FROM loyalty.balance('Int Club', 'abc');
SELECT * FROM loyalty.verify('Int Club', account => '2147483648');
SELECT loyalty.enroll('Int Club', '-2147483649');
\set VERBOSITY default
SELECT count(*) AS accounts FROM loyalty.account WHERE program_id = :pid;
