--
-- citus_attach: loyalty in a Citus cluster (a coordinator and two workers)
-- before loyalty.distribute().  The ERP tables that stay local to the
-- coordinator accrue exactly, next to distributed ones; attach refuses a
-- distributed table (until loyalty's tables are distributed with it), a
-- reference or Citus local table, and a distributed header, with an error
-- that says why, and the ERP keeps writing to them.  citus_distribute goes
-- on from here.  Expected figures come from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;
CREATE EXTENSION loyalty;
RESET client_min_messages;

-- CREATE EXTENSION reached the workers.
SELECT success, result FROM pg_catalog.run_command_on_workers(
    $$SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'loyalty'$$);

CREATE SCHEMA erp;
CREATE TABLE erp.invoice_local (invoice_id int, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                                invoice_date date NOT NULL, PRIMARY KEY (customer_id, invoice_id));
CREATE TABLE erp.invoice_dist (invoice_id int, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                               invoice_date date NOT NULL, PRIMARY KEY (customer_id, invoice_id));
CREATE TABLE erp.hdr_dist (id int, customer_id int NOT NULL, invoice_date date NOT NULL,
                           PRIMARY KEY (customer_id, id));
CREATE TABLE erp.line_local (hdr_id int NOT NULL, line_no int NOT NULL, amount numeric(12,2) NOT NULL,
                             PRIMARY KEY (hdr_id, line_no));
CREATE TABLE erp.invoice_ref (LIKE erp.invoice_local INCLUDING ALL);
CREATE TABLE erp.invoice_citus_local (LIKE erp.invoice_local INCLUDING ALL);
SELECT create_distributed_table('erp.invoice_dist', 'customer_id');
SELECT create_distributed_table('erp.hdr_dist', 'customer_id');
SELECT create_reference_table('erp.invoice_ref');
SELECT citus_add_local_table_to_metadata('erp.invoice_citus_local');

SELECT loyalty.create_program('Citus Club') > 0 AS created;

-- attach refuses each kind of Citus table, naming the parameter.
SELECT loyalty.attach('erp.invoice_dist', 'Citus Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('erp.invoice_ref', 'Citus Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('erp.invoice_citus_local', 'Citus Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date');
SELECT loyalty.attach('erp.line_local', 'Citus Club', key_column => 'hdr_id, line_no',
                      header => 'erp.hdr_dist', line_header_column => 'hdr_id', header_id_column => 'id',
                      account_column => 'customer_id', date_column => 'invoice_date',
                      amount_column => 'amount');
-- nothing was attached, and no trigger was left behind on any node
SELECT count(*) AS attachments FROM loyalty.attachment;
SELECT tgrelid::regclass, tgname FROM pg_catalog.pg_trigger
 WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'erp.%' ORDER BY 1, 2;
SELECT success, result FROM pg_catalog.run_command_on_workers(
    $$SELECT count(*) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'erp'
        AND NOT t.tgisinternal$$);

-- The ERP keeps writing to the tables attach refused.
INSERT INTO erp.invoice_dist SELECT g, g % 50, 10 + g % 7, DATE '2025-01-01' + g % 90
  FROM generate_series(1, 1000) g;
INSERT INTO erp.invoice_ref VALUES (1, 1, 10, '2025-01-01');
INSERT INTO erp.invoice_citus_local VALUES (1, 1, 10, '2025-01-01');
SELECT count(*), sum(amount) FROM erp.invoice_dist;

-- A local table accrues exactly on the coordinator, beside distributed ones,
-- and is checked against its rows in plain SQL.
SELECT loyalty.attach('erp.invoice_local', 'Citus Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
INSERT INTO erp.invoice_local SELECT g, g % 200, (g % 97) + 0.99, DATE '2025-01-01' + g % 120
  FROM generate_series(1, 5000) g;
UPDATE erp.invoice_local SET amount = amount + 5 WHERE invoice_id % 10 = 0;
DELETE FROM erp.invoice_local WHERE invoice_id % 17 = 0;
INSERT INTO erp.invoice_local VALUES (100001, 3, -50.00, '2025-02-01');  -- a credit note
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id::text AS account_key, sum(trunc(amount))::bigint AS points
          FROM erp.invoice_local GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Citus Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
SELECT loyalty.fold('Citus Club') >= 0 AS folded;
SELECT * FROM loyalty.verify('Citus Club');

-- A table attached while local cannot be distributed with its triggers
-- (Citus's own refusal): it stays local and keeps accruing.
SELECT create_distributed_table('erp.invoice_local', 'customer_id');
INSERT INTO erp.invoice_local VALUES (100002, 7, 20.00, '2025-03-01');
SELECT b.points = e.points AS exact
  FROM loyalty.balance b JOIN loyalty.program p USING (program_id),
       (SELECT sum(trunc(amount))::bigint AS points FROM erp.invoice_local WHERE customer_id = 7) e
 WHERE p.name = 'Citus Club' AND b.account_key = '7';
SELECT * FROM loyalty.verify('Citus Club');

-- Even with Citus's unsafe triggers allowed, distributing an attached table
-- fails as a whole (the shards' copies of the triggers find no attachment on
-- the workers), and nothing is counted twice.
SET citus.enable_unsafe_triggers = on;
SELECT create_distributed_table('erp.invoice_local', 'customer_id');
RESET citus.enable_unsafe_triggers;
SELECT count(*) FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'erp.invoice_local'::regclass;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id::text AS account_key, sum(trunc(amount))::bigint AS points
          FROM erp.invoice_local GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Citus Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
SELECT * FROM loyalty.verify('Citus Club');
