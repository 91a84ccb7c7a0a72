--
-- citus_verify: verify, explain_points and backfill of an ERP table that
-- Citus distributes by customer (runs after citus_distribute, in the same
-- database: loyalty's tables are distributed).  Each shard is checked on
-- the node that holds it.  Expected figures come from the ERP rows, in
-- plain SQL: a row earns its whole currency units, toward zero; a credit
-- note (document type CRN) earns minus its whole units, whatever sign its
-- amount is stored with.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

SELECT loyalty.create_program('Verify Club') > 0 AS created;
CREATE TABLE erp.verify_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                         order_date date NOT NULL, doc_type text NOT NULL DEFAULT 'INV',
                         PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.verify_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.attach('erp.verify_orders', 'Verify Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date', doc_type_column => 'doc_type',
                      credit_note_types => '{CRN}') > 0 AS attached;

-- What a row earns, from the row alone.
CREATE VIEW erp.verify_orders_earned AS
SELECT o.*, (CASE WHEN o.doc_type = 'CRN' THEN -trunc(abs(o.amount)) ELSE trunc(o.amount) END)::bigint AS earns
  FROM erp.verify_orders o;

-- The ERP's writes over 300 customers: a set, COPY, corrections,
-- deletions, credit notes.
INSERT INTO erp.verify_orders SELECT g, 'V-' || lpad((g % 300)::text, 4, '0'), 5 + (g % 11) + (g % 100) / 100.0,
                              DATE '2025-01-01' + g % 200
  FROM generate_series(1, 4000) g;
COPY (SELECT g, 'V-' || lpad((g % 280)::text, 4, '0'), (g % 53) + 0.49, DATE '2025-02-01' + g % 150
        FROM generate_series(4001, 6000) g) TO '/tmp/loyalty_citus_orders.csv' (FORMAT csv);
COPY erp.verify_orders (order_id, customer, amount, order_date) FROM '/tmp/loyalty_citus_orders.csv' (FORMAT csv);
UPDATE erp.verify_orders SET amount = amount + 2.5 WHERE order_id % 9 = 0;
UPDATE erp.verify_orders SET order_date = order_date + 40 WHERE order_id % 31 = 0;
DELETE FROM erp.verify_orders WHERE order_id % 23 = 0;
INSERT INTO erp.verify_orders SELECT 7000 + g, 'V-' || lpad((g * 7 % 300)::text, 4, '0'), 3.75 + g, DATE '2025-05-01' + g, 'CRN'
  FROM generate_series(1, 40) g;
UPDATE erp.verify_orders SET amount = -amount WHERE doc_type = 'CRN' AND order_id % 2 = 0;

SELECT count(*) AS rows, count(DISTINCT customer) AS customers, sum(earns) AS points
  FROM erp.verify_orders_earned;
-- the balances are what the rows earn
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(earns) AS points FROM erp.verify_orders_earned GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Verify Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;

-- verify finds nothing: every account, one account, the months from a date on
SELECT * FROM loyalty.verify('Verify Club');
SELECT * FROM loyalty.verify('Verify Club', account => 'V-0007');
SELECT * FROM loyalty.verify('Verify Club', since => '2025-04-01');
SELECT * FROM loyalty.verify('Sales Club');
-- an account the program does not know is refused, as on one server
SELECT * FROM loyalty.verify('Verify Club', account => 'nobody');

-- On the workers the rows are read as the role that called verify: a
-- loyalty_reader that may not read the ERP table is refused, one that may
-- gets the same answer.
CREATE ROLE citus_verify_reader IN ROLE loyalty_reader;
SET ROLE citus_verify_reader;
SELECT * FROM loyalty.verify('Verify Club');
RESET ROLE;
GRANT USAGE ON SCHEMA erp TO citus_verify_reader;
GRANT SELECT ON erp.verify_orders TO citus_verify_reader;
SET ROLE citus_verify_reader;
SELECT * FROM loyalty.verify('Verify Club');
SELECT * FROM loyalty.verify('Verify Club', account => 'V-0007');
-- and cannot call the shard function itself
SELECT * FROM loyalty._reconcile_shard(1, 'erp.verify_orders_1', 'postgres', true, '-infinity', NULL);
RESET ROLE;

-- A tampered ledger entry (the append-only trigger bypassed, as a superuser
-- could) is reported, by verify(program) and by verify(program, account),
-- then put back.
CREATE TEMP TABLE tampered AS
SELECT l.program_id, l.account_key, l.posted_xid, l.entry_no
  FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'Verify Club' AND l.account_key = 'V-0042'
 ORDER BY l.posted_xid, l.entry_no LIMIT 1;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL session_replication_role = replica;  -- reaches the shard's node: no trigger fires
UPDATE loyalty.ledger l SET points = l.points + 1000
  FROM tampered t WHERE l.program_id = t.program_id AND l.account_key = t.account_key
   AND l.posted_xid = t.posted_xid AND l.entry_no = t.entry_no;
COMMIT;
-- the ledger's sum is off by 1000 against what V-0042's rows earn, and
-- the balance against the ledger
CREATE TEMP TABLE found AS SELECT * FROM loyalty.verify('Verify Club');
CREATE TEMP TABLE rows_earn AS SELECT sum(earns) AS points FROM erp.verify_orders_earned WHERE customer = 'V-0042';
SELECT f.account_key, f.item,
       CASE f.item WHEN 'ledger_accrual_points' THEN f.expected ELSE f.actual END = r.points AS the_rows_earn,
       f.actual - f.expected AS drift
  FROM found f, rows_earn r ORDER BY f.item;
SELECT v.account_key, v.item, v.actual - v.expected AS drift
  FROM loyalty.verify('Verify Club', account => 'V-0042') v ORDER BY v.item;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL session_replication_role = replica;
UPDATE loyalty.ledger l SET points = l.points - 1000
  FROM tampered t WHERE l.program_id = t.program_id AND l.account_key = t.account_key
   AND l.posted_xid = t.posted_xid AND l.entry_no = t.entry_no;
COMMIT;
SELECT * FROM loyalty.verify('Verify Club');

-- A tampered balance change is reported against the ledger, then put back.
CREATE TEMP TABLE tampered_delta AS
SELECT d.program_id, d.account_key, d.posted_xid, d.delta_no
  FROM loyalty.balance_delta d JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'Verify Club' AND d.account_key = 'V-0101'
 ORDER BY d.posted_xid, d.delta_no LIMIT 1;
UPDATE loyalty.balance_delta d SET points = d.points - 77
  FROM tampered_delta t WHERE d.program_id = t.program_id AND d.account_key = t.account_key
   AND d.posted_xid = t.posted_xid AND d.delta_no = t.delta_no;
SELECT v.account_key, v.item, v.actual - v.expected AS drift
  FROM loyalty.verify('Verify Club') v ORDER BY v.item;
SELECT v.account_key, v.item, v.actual - v.expected AS drift
  FROM loyalty.verify('Verify Club', account => 'V-0101') v ORDER BY v.item;
UPDATE loyalty.balance_delta d SET points = d.points + 77
  FROM tampered_delta t WHERE d.program_id = t.program_id AND d.account_key = t.account_key
   AND d.posted_xid = t.posted_xid AND d.delta_no = t.delta_no;
SELECT * FROM loyalty.verify('Verify Club');

-- explain_points of a few rows (an invoice, a corrected one, a credit note
-- stored positive and one stored negative) says what each row earned
-- (explain_points is called from the coordinator: in a query over the
-- distributed table itself, Citus would push it into the shard queries)
CREATE TEMP TABLE some_rows AS
SELECT order_id, customer, order_date, amount, doc_type, earns FROM erp.verify_orders_earned
 WHERE order_id IN (1, 18, 7001, 7002);
SELECT o.order_id, o.amount, o.doc_type, e.account_key, e.document_date = o.order_date AS same_date, e.status,
       e.points = o.earns AS points_are_the_rows, e.points
  FROM some_rows o, LATERAL loyalty.explain_points('erp.verify_orders', o.customer, o.order_id::text) e
 ORDER BY o.order_id;
-- in the key's own types too
SELECT e.account_key, e.points = (SELECT earns FROM erp.verify_orders_earned WHERE order_id = 4005) AS points_are_the_row
  FROM loyalty.explain_points('erp.verify_orders', 'V-0085'::text, 4005::bigint) e;
-- a key no row has gives no row
SELECT count(*) FROM loyalty.explain_points('erp.verify_orders', 'V-0001', '999999');

-- Backfill: a table whose rows existed before it was attached (to a
-- program of its own) accrues them on the shards, exactly; a second run
-- posts nothing.
SELECT loyalty.create_program('Backfill Club') > 0 AS created;
CREATE TABLE erp.old_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                             order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.old_orders', 'customer', colocate_with => 'loyalty.account');
INSERT INTO erp.old_orders SELECT g, 'B-' || lpad((g % 250)::text, 4, '0'), 1 + (g % 37) + (g % 10) / 10.0,
                                  DATE '2024-06-01' + g % 300
  FROM generate_series(1, 3000) g;
SELECT loyalty.attach('erp.old_orders', 'Backfill Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
-- rows written after attach accrue as usual
INSERT INTO erp.old_orders VALUES (5001, 'B-0001', 10.00, '2025-06-01'), (5002, 'B-9999', 4.00, '2025-06-02');
-- before the backfill, verify reports the months the old rows earned
SELECT count(DISTINCT account_key) AS accounts_reported FROM loyalty.verify('Backfill Club');
SELECT b.accounts,
       b.source_rows = (SELECT count(*) - 2 FROM erp.old_orders) AS source_rows_are_the_old_rows,
       b.points = (SELECT sum(trunc(amount)) - 10 - 4 FROM erp.old_orders) AS points_are_the_old_rows
  FROM loyalty.backfill('erp.old_orders', 'Backfill Club', since => '-infinity') b;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.old_orders GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance
              WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Backfill Club')) b
    USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;
SELECT * FROM loyalty.backfill('erp.old_orders', 'Backfill Club', since => '-infinity');
SELECT * FROM loyalty.verify('Backfill Club');
-- the backfill wrote on the shards, on both workers
SELECT count(DISTINCT p.nodeport) AS workers_with_backfill_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'backfill'$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;
-- A program with a tier ladder: backfill replays its tier history from the
-- rows before it posts them, on each shard's node (an account's rows and
-- history are all in its shard).  The same rows backfilled into the same
-- program on a single server (a database of its own on the coordinator's
-- node, through dblink) give the same tier history, change for change.
CREATE TABLE erp.laddered_orders (LIKE erp.old_orders INCLUDING ALL);
SELECT create_distributed_table('erp.laddered_orders', 'customer', colocate_with => 'loyalty.account');
-- 60 customers, 25 orders each, from a few to about 90 a piece: Silver
-- (100) and Gold (1,000, earning double) reached on different days
INSERT INTO erp.laddered_orders SELECT g, 'L-' || lpad((g % 60)::text, 2, '0'), 1 + (g % 60) * 1.5 + (g % 10) / 10.0,
                                       DATE '2024-06-01' + g % 300
  FROM generate_series(1, 1500) g;
SELECT loyalty.create_program('Ladder Club', ladder => 'Silver:100, Gold:1000') > 0 AS created;
SELECT loyalty.add_rule('Ladder Club', valid_from => '2024-01-01', points_per_unit => 1, tier_multipliers => '{"Gold": 2}');
SELECT loyalty.attach('erp.laddered_orders', 'Ladder Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT b.accounts, b.source_rows FROM loyalty.backfill('erp.laddered_orders', 'Ladder Club', since => '-infinity') b;
SELECT * FROM loyalty.verify('Ladder Club');
SELECT b.accounts, b.source_rows FROM loyalty.backfill('erp.laddered_orders', 'Ladder Club', since => '-infinity') b;
SELECT since, accounts, tier_changes > 0 AS changed FROM loyalty.tier_replay
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Ladder Club');
SELECT count(DISTINCT p.nodeport) AS workers_with_replayed_history
  FROM pg_catalog.run_command_on_shards('loyalty.tier_history',
       $$SELECT count(*) FROM %s WHERE reason = 'backfill'$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;
-- the single server
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE DATABASE loyalty_ladder_single;
RESET client_min_messages;
SELECT pg_catalog.format('dbname=loyalty_ladder_single port=%s host=%s user=%s', current_setting('port'),
                         split_part(current_setting('unix_socket_directories'), ',', 1), current_user) AS single \gset
SELECT dblink_exec(:'single', $$
    SET client_min_messages = warning;
    CREATE EXTENSION loyalty;
    CREATE TABLE laddered_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                                  order_date date NOT NULL, PRIMARY KEY (customer, order_id));
    INSERT INTO laddered_orders SELECT g, 'L-' || lpad((g % 60)::text, 2, '0'), 1 + (g % 60) * 1.5 + (g % 10) / 10.0,
                                       DATE '2024-06-01' + g % 300
      FROM generate_series(1, 1500) g;
    SELECT loyalty.create_program('Ladder Club', ladder => 'Silver:100, Gold:1000');
    SELECT loyalty.add_rule('Ladder Club', valid_from => '2024-01-01', points_per_unit => 1, tier_multipliers => '{"Gold": 2}');
    SELECT loyalty.attach('laddered_orders', 'Ladder Club', account_column => 'customer', amount_column => 'amount',
                          date_column => 'order_date');
    DO $d$ BEGIN PERFORM loyalty.backfill('laddered_orders', 'Ladder Club', since => '-infinity'); END $d$;
$$);
-- the same rows on both
SELECT (SELECT count(*) FROM erp.laddered_orders) AS rows,
       (SELECT n FROM dblink(:'single', 'SELECT count(*) FROM laddered_orders') AS r(n bigint)) AS single_rows,
       (SELECT sum(amount) FROM erp.laddered_orders)
     = (SELECT n FROM dblink(:'single', 'SELECT sum(amount) FROM laddered_orders') AS r(n numeric)) AS same_amounts;
CREATE TEMP TABLE single_history AS
SELECT * FROM dblink(:'single', $$SELECT account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying
                                  FROM loyalty.tier_history$$)
    AS h(account_key text, change_no bigint, effective_from date, old_tier text, new_tier text, reason text,
         rolling_qualifying numeric);
CREATE TEMP TABLE single_points AS
SELECT * FROM dblink(:'single', $$SELECT b.account_key, b.points, a.tier
                                  FROM loyalty.balance b JOIN loyalty.account a USING (program_id, account_key)$$)
    AS b(account_key text, points bigint, tier text);
SELECT new_tier, count(*) AS changes, count(DISTINCT account_key) AS accounts
  FROM single_history GROUP BY 1 ORDER BY 1;
SELECT count(*) AS history_differing FROM (
    (SELECT account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying
       FROM loyalty.tier_history WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Ladder Club')
     EXCEPT SELECT * FROM single_history)
    UNION ALL
    (SELECT * FROM single_history
     EXCEPT SELECT account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying
       FROM loyalty.tier_history WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Ladder Club'))) d;
-- and the points, priced with the replayed tiers (Gold earns double)
SELECT count(*) AS accounts_differing
  FROM single_points s
  FULL JOIN (SELECT b.account_key, b.points, a.tier FROM loyalty.balance b JOIN loyalty.account a USING (program_id, account_key)
              WHERE b.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Ladder Club')) b USING (account_key)
 WHERE s.points IS DISTINCT FROM b.points OR s.tier IS DISTINCT FROM b.tier;
SELECT count(*) FILTER (WHERE points > 0) AS accounts_with_points,
       sum(points) > (SELECT sum(trunc(amount)) FROM erp.laddered_orders) AS gold_earned_double
  FROM single_points;
DROP DATABASE loyalty_ladder_single;
DROP EXTENSION dblink;
-- and the other programs are untouched
SELECT * FROM loyalty.verify('Verify Club');
SELECT * FROM loyalty.verify('Sales Club');
REVOKE ALL ON erp.verify_orders FROM citus_verify_reader;
REVOKE ALL ON SCHEMA erp FROM citus_verify_reader;
DROP ROLE citus_verify_reader;
