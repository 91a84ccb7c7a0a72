--
-- citus_distribute: loyalty's tables distributed with an ERP invoice table
-- that Citus distributes by customer (runs after citus_attach, in the same
-- database).  Accrual runs on the shards, on the workers, and must be
-- exact under INSERT, multi-row INSERT ... SELECT, COPY, UPDATE, DELETE and
-- credit notes.  Expected figures come from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

CREATE TABLE erp.sales (invoice_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                        invoice_date date NOT NULL, PRIMARY KEY (customer, invoice_id));
CREATE TABLE erp.sales_by_number (invoice_id bigint NOT NULL, customer_id numeric NOT NULL, amount numeric(12,2) NOT NULL,
                                  invoice_date date NOT NULL, PRIMARY KEY (customer_id, invoice_id));
SELECT create_distributed_table('erp.sales', 'customer');
SELECT create_distributed_table('erp.sales_by_number', 'customer_id');

-- distribute() refuses what it cannot lay out, saying why.
SELECT * FROM loyalty.distribute('erp.invoice_local');     -- not distributed
SELECT * FROM loyalty.distribute('erp.sales_by_number');   -- a numeric key (text, integer and bigint are taken)
SELECT * FROM loyalty.distribute('erp.sales');             -- invoice_local is still attached
CREATE ROLE citus_dba;
SET ROLE citus_dba;
SELECT * FROM loyalty.distribute('erp.sales');
RESET ROLE;
DROP ROLE citus_dba;

SELECT loyalty.detach('erp.invoice_local', 'Citus Club');
-- what citus_attach accrued on one node must survive the move into shards
CREATE TEMP TABLE accrued_before AS
SELECT account_key, points FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Citus Club');
SET client_min_messages = warning;
SELECT layout, count(*) FROM loyalty.distribute('erp.sales') GROUP BY 1 ORDER BY 1;
RESET client_min_messages;
-- the layout Citus now has, and a second run changes nothing
SELECT CASE WHEN p.partmethod = 'h' THEN 'distributed' ELSE 'reference' END AS layout,
       count(*) AS tables, count(*) FILTER (WHERE p.colocationid = s.colocationid) AS with_sales
  FROM pg_catalog.pg_dist_partition p,
       (SELECT colocationid FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'erp.sales'::regclass) s
 WHERE p.logicalrelid::text LIKE 'loyalty.%' GROUP BY 1 ORDER BY 1;
SELECT layout, count(*) FROM loyalty.distribute('erp.sales') GROUP BY 1 ORDER BY 1;
-- the copies Citus left behind on the coordinator are gone
SELECT count(*) AS tables_with_local_rows FROM loyalty._citus_layout() l
 WHERE l.layout <> 'local' AND pg_catalog.pg_relation_size(l.table_name) > 0;
SELECT count(*) AS accounts, count(*) FILTER (WHERE b.points IS DISTINCT FROM a.points) AS differing
  FROM accrued_before a LEFT JOIN loyalty.balance b
    ON b.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Citus Club')
   AND b.account_key = a.account_key;
-- the partner policies are gone on every node (a partner login sees nothing)
SELECT success, result FROM pg_catalog.run_command_on_all_nodes(
    $$SELECT count(*) FROM pg_catalog.pg_policies WHERE schemaname = 'loyalty' AND policyname = 'partner'$$);

-- the detached attachment of erp.invoice_local, a table of the coordinator
-- only, keeps its names; its source is '-' on every node (Citus copied the
-- attachments to the workers by name, and they have no such table)
SELECT x.source, x.source_name, x.names_at_attach FROM loyalty.attachment x
 WHERE x.source_name = 'erp.invoice_local' ORDER BY x.attachment_id;
SELECT success, result FROM pg_catalog.run_command_on_workers(
    $$SELECT string_agg(x.source::text, ',') FROM loyalty.attachment x WHERE x.source_name = 'erp.invoice_local'$$);

-- a program created afterwards goes to every node (a reference table)
SELECT loyalty.create_program('Sales Club') > 0 AS created;
SELECT success, result FROM pg_catalog.run_command_on_workers(
    $$SELECT count(*) FROM loyalty.program WHERE name = 'Sales Club'$$);

-- attach: only a table distributed with loyalty's tables, by its account column
SELECT loyalty.attach('erp.sales', 'Sales Club', account_column => 'invoice_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('erp.invoice_local', 'Sales Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('erp.sales', 'Sales Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
-- the three accrual triggers reached every shard (Citus keeps TRUNCATE
-- triggers on the distributed table, which refuses a TRUNCATE as before)
SELECT count(*) AS shards_without_triggers
  FROM pg_catalog.run_command_on_shards('erp.sales',
       $$SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = '%s'::pg_catalog.regclass
                                                      AND tgname LIKE 'loyalty_accrual_%%'$$)
 WHERE result::int <> 3;
TRUNCATE erp.sales;

-- The ERP's writes: single rows, a set, COPY, corrections, deletions, credit notes.
INSERT INTO erp.sales VALUES (1, 'C-0001', 100.50, '2025-01-05');
INSERT INTO erp.sales VALUES (2, 'C-0002', 7.99, '2025-01-06');
INSERT INTO erp.sales SELECT g, 'C-' || lpad((g % 300)::text, 4, '0'), 10 + (g % 7) + (g % 100) / 100.0,
                             DATE '2025-01-01' + g % 150
  FROM generate_series(3, 6000) g;
COPY (SELECT g, 'K-' || (g % 2000), (g % 97) + 0.99, DATE '2025-02-01' + g % 120
        FROM generate_series(10001, 40000) g) TO '/tmp/loyalty_citus_sales.csv' (FORMAT csv);
COPY erp.sales FROM '/tmp/loyalty_citus_sales.csv' (FORMAT csv);
UPDATE erp.sales SET amount = amount + 3 WHERE invoice_id % 10 = 0;
UPDATE erp.sales SET invoice_date = invoice_date + 1 WHERE invoice_id % 13 = 0;
DELETE FROM erp.sales WHERE invoice_id % 17 = 0;
INSERT INTO erp.sales VALUES (50001, 'C-0003', -50.00, '2025-03-01'), (50002, 'K-7', -12.49, '2025-03-02');
BEGIN;
INSERT INTO erp.sales VALUES (50003, 'C-0004', 999.00, '2025-03-03');
ROLLBACK;

-- Every account's points equal the sum of its rows' whole currency units.
SELECT count(*) AS accounts, sum(points) AS points
  FROM (SELECT customer, sum(trunc(amount))::bigint AS points FROM erp.sales GROUP BY 1) e;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.sales GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Sales Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
-- the ledger agrees with the ERP rows
SELECT (SELECT sum(points) FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
         WHERE p.name = 'Sales Club')
     = (SELECT sum(trunc(amount))::bigint FROM erp.sales) AS ledger_exact;
-- the rows were written in the shards, on both workers
SELECT count(DISTINCT p.nodeport) AS workers_with_ledger_rows
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;

-- detach drops the triggers on every shard; rows written meanwhile earn
-- nothing; attached again, the table accrues again
SELECT loyalty.detach('erp.sales', 'Sales Club');
SELECT count(*) AS shards_with_triggers
  FROM pg_catalog.run_command_on_shards('erp.sales',
       $$SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = '%s'::pg_catalog.regclass
                                                      AND tgname LIKE 'loyalty_%%'$$)
 WHERE result::int <> 0;
INSERT INTO erp.sales VALUES (60001, 'C-0005', 500.00, '2025-04-01');
-- attached again by a loyalty admin who is no superuser
CREATE ROLE citus_admin IN ROLE loyalty_admin;
GRANT USAGE ON SCHEMA erp TO citus_admin;
GRANT SELECT, TRIGGER ON erp.sales TO citus_admin;
SET ROLE citus_admin;
SELECT loyalty.attach('erp.sales', 'Sales Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
RESET ROLE;
INSERT INTO erp.sales VALUES (60002, 'C-0005', 250.00, '2025-04-02');
SELECT (SELECT points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
         WHERE p.name = 'Sales Club' AND b.account_key = 'C-0005')
     = (SELECT sum(trunc(amount))::bigint FROM erp.sales WHERE customer = 'C-0005' AND invoice_id <> 60001)
       AS detached_row_not_counted;
-- backfill posts what the row written while detached earns
SELECT b.accounts, b.source_rows, b.points FROM loyalty.backfill('erp.sales', 'Sales Club', since => '-infinity') b;
SELECT (SELECT points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
         WHERE p.name = 'Sales Club' AND b.account_key = 'C-0005')
     = (SELECT sum(trunc(amount))::bigint FROM erp.sales WHERE customer = 'C-0005') AS backfilled;
SELECT * FROM loyalty.verify('Sales Club');

-- After distribute(), a table of one node cannot be attached: it has no
-- shards for its accounts.
CREATE TABLE erp.late (invoice_id int, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                       invoice_date date NOT NULL, PRIMARY KEY (customer, invoice_id));
SELECT loyalty.attach('erp.late', 'Sales Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date');
