--
-- citus_bigint: loyalty on a Citus cluster whose invoice table is
-- distributed by a bigint customer key (a database of its own: distribute()
-- sets the type of loyalty's account keys once per database).  loyalty's
-- account-scoped tables take the ERP key's type and are co-located with the
-- invoice table; the API keeps taking and returning account keys as text.
-- Accrual on the shards is exact for 3,000 customers whose keys are beyond
-- 2^31 under INSERT, INSERT ... SELECT, COPY, UPDATE, customer moves,
-- DELETE and credit notes; verify, explain_points, backfill, balance,
-- statement, tier, fold, settlement and redeem work as on a text key; a key
-- that is no number is refused with its SQLSTATE.  Expected figures come
-- from the ERP rows, in plain SQL.
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
CREATE TABLE erp.orders (order_id bigint NOT NULL, customer_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                         order_date date NOT NULL, doc_type text NOT NULL DEFAULT 'INV',
                         PRIMARY KEY (customer_id, order_id));
SELECT create_distributed_table('erp.orders', 'customer_id');

-- distribute(): account keys in the ERP key's type, co-located with erp.orders
SET client_min_messages = warning;
SELECT layout, count(*) FROM loyalty.distribute('erp.orders') GROUP BY 1 ORDER BY 1;
RESET client_min_messages;
SELECT CASE WHEN p.partmethod = 'h' THEN 'distributed' ELSE 'reference' END AS layout,
       count(*) AS tables, count(*) FILTER (WHERE p.colocationid = o.colocationid) AS with_orders
  FROM pg_catalog.pg_dist_partition p,
       (SELECT colocationid FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'erp.orders'::regclass) o
 WHERE p.logicalrelid::text LIKE 'loyalty.%' GROUP BY 1 ORDER BY 1;
-- every distributed table's account_key is a bigint, its distribution column
SELECT a.atttypid::regtype AS account_key_type, count(*) AS distributed_tables,
       count(*) FILTER (WHERE pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) = 'account_key') AS by_account_key
  FROM pg_catalog.pg_dist_partition p
  JOIN pg_catalog.pg_attribute a ON a.attrelid = p.logicalrelid AND a.attname = 'account_key'
 WHERE p.logicalrelid::text LIKE 'loyalty.%' AND p.partmethod = 'h'
 GROUP BY 1;
-- the same on the workers' copies
SELECT success, result FROM pg_catalog.run_command_on_workers(
    $$SELECT string_agg(DISTINCT a.atttypid::regtype::text, ',') FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'loyalty' AND c.relname IN ('account', 'ledger', 'balance_delta', 'balance_folded')
        AND a.attname = 'account_key'$$);
-- the views and the ledger show the key in its type
SELECT table_name, data_type FROM information_schema.columns
 WHERE table_schema = 'loyalty' AND column_name = 'account_key'
   AND table_name IN ('balance', 'accrual_month', 'ledger', 'account') ORDER BY 1;
-- a second run changes nothing
SELECT layout, count(*) FROM loyalty.distribute('erp.orders') GROUP BY 1 ORDER BY 1;

-- A program: 1 point per unit until March 2025, then 2 per unit with a
-- minimum of 5; credit notes by document type.
SELECT loyalty.create_program('Big Club') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Big Club' \gset
SELECT loyalty.add_rule('Big Club', valid_from => '2025-04-01', points_per_unit => 2, min_amount => 5) IS NOT NULL AS rule_added;
SELECT loyalty.attach('erp.orders', 'Big Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'order_date', doc_type_column => 'doc_type',
                      credit_note_types => '{CRN}') > 0 AS attached;

-- What a row earns and qualifies, from the row alone.
CREATE VIEW erp.orders_earned AS
SELECT o.*,
       CASE WHEN o.doc_type = 'CRN' THEN -abs(o.amount) ELSE o.amount END AS qualifies,
       (CASE WHEN o.order_date < DATE '2025-04-01'
             THEN trunc(CASE WHEN o.doc_type = 'CRN' THEN -abs(o.amount) ELSE o.amount END)
             WHEN abs(o.amount) < 5 THEN 0
             ELSE trunc(2 * CASE WHEN o.doc_type = 'CRN' THEN -abs(o.amount) ELSE o.amount END) END)::bigint AS earns
  FROM erp.orders o;
-- Every account's points and qualifying spend against its rows: the
-- number of accounts, the totals, and the accounts that differ.
CREATE VIEW erp.check_points AS
SELECT count(*) AS accounts, sum(e.points) AS erp_points, sum(b.points) AS loyalty_points,
       count(*) FILTER (WHERE e.points IS DISTINCT FROM b.points
                           OR e.qualifying IS DISTINCT FROM b.qualifying) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(earns) AS points, sum(qualifies) AS qualifying
          FROM erp.orders_earned GROUP BY 1) e
  FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
               JOIN loyalty.program p USING (program_id) WHERE p.name = 'Big Club') b
 USING (account_key);

-- 1. INSERT: single rows (a small key, a negative one, the largest bigint),
-- then 24,000 orders of 3,000 customers whose keys are beyond 2^31.
INSERT INTO erp.orders VALUES (1, 5000000042, 100.50, '2025-01-05');
INSERT INTO erp.orders VALUES (2, 42, 7.99, '2025-01-06'), (3, -7, 12.00, '2025-02-01'),
                              (4, 9223372036854775807, 55.55, '2025-04-15');
INSERT INTO erp.orders (order_id, customer_id, amount, order_date)
SELECT g, 5000000000 + g % 3000, round(((g * 37) % 900) / 10.0 + (g % 3000 % 100) * 3.0, 2) + 1,
       DATE '2025-01-01' + (g * 7) % 181
  FROM generate_series(10, 24009) g;
SELECT * FROM erp.check_points;

-- 2. COPY: 12,000 orders of 3,100 customers (100 new ones) from a file,
-- and three rows from the client, a credit note among them.
SELECT '/tmp/loyalty_citus_bigint_' || current_setting('port') || '.csv' AS csv \gset
COPY (SELECT g, 5000000000 + (g * 13) % 3100, (g % 53) + 0.49, DATE '2025-02-01' + g % 120
        FROM generate_series(30001, 42000) g) TO :'csv' (FORMAT csv);
COPY erp.orders (order_id, customer_id, amount, order_date) FROM :'csv' (FORMAT csv);
COPY erp.orders FROM STDIN (FORMAT csv);
42001,5000000042,19.99,2025-05-02,INV
42002,5000000042,8.00,2025-05-03,CRN
42003,5000002999,4.99,2025-05-04,INV
\.
SELECT * FROM erp.check_points;

-- 3. UPDATE: amounts, dates (some across the rule change), invoices turned
-- into credit notes.
UPDATE erp.orders SET amount = amount + 2.5 WHERE order_id % 9 = 0;
UPDATE erp.orders SET order_date = order_date + 40 WHERE order_id % 31 = 0;
UPDATE erp.orders SET doc_type = 'CRN' WHERE order_id % 97 = 0;
SELECT * FROM erp.check_points;
-- A customer change: Citus does not update a distribution column; the ERP
-- moves the rows (delete and insert, one transaction over both workers).
UPDATE erp.orders SET customer_id = customer_id + 1 WHERE order_id % 29 = 0;
BEGIN;
CREATE TEMP TABLE moved AS SELECT * FROM erp.orders WHERE order_id % 29 = 0;
DELETE FROM erp.orders WHERE order_id % 29 = 0;
INSERT INTO erp.orders SELECT order_id, customer_id + 1, amount, order_date, doc_type FROM moved;
COMMIT;
SELECT count(*) AS moved_rows FROM erp.orders o JOIN moved m USING (order_id) WHERE o.customer_id = m.customer_id + 1;
SELECT * FROM erp.check_points;

-- 4. DELETE
DELETE FROM erp.orders WHERE order_id % 23 = 0;
SELECT * FROM erp.check_points;

-- 5. Credit notes: stored positive and negative, before and after the rule
-- change, an invoice with a negative amount; one rolled back.
INSERT INTO erp.orders (order_id, customer_id, amount, order_date, doc_type)
SELECT 50000 + g, 5000000000 + (g * 7) % 3000, CASE WHEN g % 2 = 0 THEN 3.75 + g ELSE -(3.75 + g) END,
       DATE '2025-03-15' + g % 40, 'CRN'
  FROM generate_series(1, 200) g;
INSERT INTO erp.orders VALUES (50501, 5000000007, -50.00, '2025-03-01', 'INV'), (50502, 5000000008, -12.49, '2025-05-02', 'INV');
BEGIN;
INSERT INTO erp.orders VALUES (50503, 5000000009, 999.00, '2025-03-03');
ROLLBACK;
SELECT * FROM erp.check_points;

-- The ledger agrees with the rows; the rows were accrued on both workers.
SELECT (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid)
     = (SELECT sum(earns) FROM erp.orders_earned) AS ledger_exact;
SELECT count(DISTINCT p.nodeport) AS workers_with_ledger_rows
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;
-- accrual_month per account and document month
SELECT count(*) AS account_months,
       count(*) FILTER (WHERE e.points IS DISTINCT FROM m.points OR e.qualifying IS DISTINCT FROM m.qualifying) AS differing
  FROM (SELECT customer_id AS account_key, date_trunc('month', order_date)::date AS month,
               sum(earns) AS points, sum(qualifies) AS qualifying
          FROM erp.orders_earned GROUP BY 1, 2) e
  FULL JOIN (SELECT account_key, month, sum(points) AS points, sum(qualifying) AS qualifying
               FROM loyalty.accrual_month WHERE program_id = :pid GROUP BY 1, 2
             HAVING sum(points) <> 0 OR sum(qualifying) <> 0 OR sum(source_rows) <> 0) m
 USING (account_key, month);

-- verify: every account, one account beyond 2^31, the small and negative
-- keys, the months from a date on
SELECT * FROM loyalty.verify('Big Club');
SELECT * FROM loyalty.verify('Big Club', account => '5000000042');
SELECT * FROM loyalty.verify('Big Club', account => '-7');
SELECT * FROM loyalty.verify('Big Club', account => '9223372036854775807');
SELECT * FROM loyalty.verify('Big Club', since => '2025-04-01');

-- explain_points of rows of one customer: before and after the rule
-- change, below the minimum, a credit note; the key as text and as bigints
CREATE TEMP TABLE some_rows AS
SELECT DISTINCT ON (c) c AS kind, order_id, customer_id, order_date, amount, doc_type, earns
  FROM (SELECT CASE WHEN order_date < '2025-04-01' THEN 'before April'
                    WHEN doc_type = 'CRN' AND amount < 0 THEN 'credit note, negative'
                    WHEN doc_type = 'CRN' THEN 'credit note'
                    WHEN amount < 5 THEN 'below the minimum'
                    ELSE 'from April' END AS c, *
          FROM erp.orders_earned WHERE customer_id > 5000000000) r
 ORDER BY c, order_id;
SELECT o.kind, e.account_key = o.customer_id::text AS same_account, pg_typeof(e.account_key) AS key_type,
       e.document_date = o.order_date AS same_date, e.status, e.rule_valid_from, e.points_per_unit,
       e.points = o.earns AS points_are_the_rows
  FROM some_rows o, LATERAL loyalty.explain_points('erp.orders', o.customer_id::text, o.order_id::text) e
 ORDER BY o.kind;
SELECT e.account_key, e.points = (SELECT earns FROM erp.orders_earned WHERE order_id = 42001) AS points_are_the_row
  FROM loyalty.explain_points('erp.orders', 5000000042::bigint, 42001::bigint) e;
SELECT count(*) AS no_such_row FROM loyalty.explain_points('erp.orders', '5000000042', '999999');

-- Backfill: rows written while the shards' triggers do not fire (replica
-- role, propagated to the workers for this transaction), for 300 known
-- customers and 50 new ones, are missing; verify reports them, backfill
-- posts exactly what they earn, a second run posts nothing.
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL session_replication_role = replica;
INSERT INTO erp.orders (order_id, customer_id, amount, order_date)
SELECT 60000 + g, CASE WHEN g % 7 = 0 THEN 5000005000 + g % 50 ELSE 5000000000 + g % 300 END,
       (g % 41) + 0.75, DATE '2025-05-01' + g % 30
  FROM generate_series(1, 1200) g;
COMMIT;
CREATE TEMP TABLE hidden AS
SELECT customer_id, earns, qualifies FROM erp.orders_earned WHERE order_id BETWEEN 60001 AND 61200;
SELECT count(*) AS rows, count(DISTINCT customer_id) AS customers, sum(earns) AS points FROM hidden;
SELECT accounts, erp_points - loyalty_points AS points_missing, accounts_differing FROM erp.check_points;
CREATE TEMP TABLE reported AS SELECT * FROM loyalty.verify('Big Club');
SELECT count(DISTINCT account_key) AS accounts_reported, min(pg_typeof(account_key)::text) AS key_type,
       count(*) FILTER (WHERE account_key::bigint NOT IN (SELECT customer_id FROM hidden)) AS others_reported
  FROM reported;
SELECT b.accounts = (SELECT count(DISTINCT customer_id) FROM hidden) AS accounts_are_the_hidden_rows,
       b.points = (SELECT sum(earns) FROM hidden) AS points_are_the_hidden_rows,
       b.qualifying = (SELECT sum(qualifies) FROM hidden) AS qualifying_is_the_hidden_rows
  FROM loyalty.backfill('erp.orders', 'Big Club', since => '-infinity') b;
SELECT * FROM erp.check_points;
SELECT accounts, points FROM loyalty.backfill('erp.orders', 'Big Club', since => '-infinity');
SELECT * FROM loyalty.verify('Big Club');
SELECT count(DISTINCT p.nodeport) AS workers_with_backfill_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'backfill'$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;

-- balance() of keys beyond 2^31, the small and negative ones, the largest
-- bigint, and a customer without orders
CREATE TEMP TABLE want AS
SELECT customer_id AS account_key, sum(earns) AS points, sum(qualifies) AS qualifying
  FROM erp.orders_earned GROUP BY 1;
SELECT count(*) AS balances_differing
  FROM want w, LATERAL loyalty.balance('Big Club', w.account_key::text) b
 WHERE w.account_key IN (5000000042, 5000002999, 5000005001, 42, -7, 9223372036854775807)
   AND (b.points, b.qualifying) IS DISTINCT FROM (w.points, w.qualifying);
SELECT * FROM loyalty.balance('Big Club', '5000000042') b, want w
 WHERE w.account_key = 5000000042 AND (b.points, b.qualifying) IS DISTINCT FROM (w.points, w.qualifying);
SELECT * FROM loyalty.balance('Big Club', '7000000000');

-- fold leaves every balance as it was; a second fold finds nothing
SELECT count(*) > 0 AS deltas_before FROM loyalty.balance_delta WHERE program_id = :pid;
SELECT loyalty.fold('Big Club') > 0 AS folded;
SELECT count(*) AS deltas_left FROM loyalty.balance_delta WHERE program_id = :pid;
SELECT * FROM erp.check_points;
SELECT loyalty.fold('Big Club') AS folded_again;
SELECT count(DISTINCT p.nodeport) AS workers_with_folded_rows
  FROM pg_catalog.run_command_on_shards('loyalty.balance_folded', $$SELECT count(*) FROM %s$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;

-- Tiers and settlement, on a program of their own (backfill above replays
-- the tiers of a program with a ladder, and settle() then refuses the
-- periods it replayed): a ladder on a quarter's spend, its own ERP table
-- distributed by a bigint customer key with loyalty's tables; 12,000 orders
-- of 1,500 customers in the first half of 2025, one customer in three
-- spending a quarter as much in Q2 (downgrades).
CREATE TABLE erp.tier_orders (order_id bigint NOT NULL, customer_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                              order_date date NOT NULL, PRIMARY KEY (customer_id, order_id));
SELECT create_distributed_table('erp.tier_orders', 'customer_id', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Tier Club', ladder => 'Silver:500, Gold:1000',
                              qualification_window => '3 months') > 0 AS created;
SELECT program_id AS tid FROM loyalty.program WHERE name = 'Tier Club' \gset
SELECT loyalty.attach('erp.tier_orders', 'Tier Club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'order_date') > 0 AS attached;
INSERT INTO erp.tier_orders SELECT g, 7000000000 + g % 1500,
                            round((((g * 37) % 900) / 10.0 + (g % 1500 % 100) * 3.0)
                                  * CASE WHEN (g * 7) % 181 >= 90 AND g % 1500 % 3 = 0 THEN 0.25 ELSE 1 END, 2),
                            DATE '2025-01-01' + (g * 7) % 181
  FROM generate_series(1, 12000) g;
-- the tier each quarter's rows reach, in plain SQL
CREATE TEMP TABLE quarter_tier AS
SELECT customer_id AS account_key, q, spend, points,
       CASE WHEN spend >= 1000 THEN 'Gold' WHEN spend >= 500 THEN 'Silver' END AS tier
  FROM (SELECT customer_id, 1 AS q, sum(amount) AS spend, sum(trunc(amount))::bigint AS points FROM erp.tier_orders
         WHERE order_date <= '2025-03-31' GROUP BY 1
        UNION ALL
        SELECT customer_id, 2, sum(amount), sum(trunc(amount))::bigint FROM erp.tier_orders
         WHERE order_date BETWEEN '2025-04-01' AND '2025-06-30' GROUP BY 1) x;
SELECT q, tier, count(*) FROM quarter_tier GROUP BY 1, 2 ORDER BY 1, 2;
CREATE VIEW erp.check_tier_points AS
SELECT count(*) AS accounts, sum(e.points) AS erp_points, sum(b.points) AS loyalty_points,
       count(*) FILTER (WHERE e.points IS DISTINCT FROM b.points
                           OR e.qualifying IS DISTINCT FROM b.qualifying) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying
          FROM erp.tier_orders GROUP BY 1) e
  FULL JOIN (SELECT b.account_key, b.points, b.qualifying FROM loyalty.balance b
               JOIN loyalty.program p USING (program_id) WHERE p.name = 'Tier Club') b
 USING (account_key);
SELECT * FROM erp.check_tier_points;
SELECT loyalty.fold('Tier Club') > 0 AS folded;
SELECT * FROM erp.check_tier_points;

-- Settle Q1: each account's amounts and tier as its rows say (compared on
-- this node, from copies: temporary tables)
SELECT period_start, period_end, status,
       period_qualifying = (SELECT sum(amount) FROM erp.tier_orders WHERE order_date <= '2025-03-31') AS period_ok,
       tiers_up = (SELECT count(*) FROM quarter_tier WHERE q = 1 AND tier IS NOT NULL) AS tiers_up_ok, tiers_down
  FROM loyalty.settle('Tier Club', '2025-03-31');
CREATE TEMP TABLE accounts AS SELECT account_key, tier FROM loyalty.account WHERE program_id = :tid;
CREATE TEMP TABLE run_q1 AS SELECT * FROM loyalty.settlement_account WHERE program_id = :tid AND period_end = '2025-03-31';
SELECT count(*) AS accounts, count(*) FILTER (WHERE account_key > 2147483647) AS beyond_int,
       (SELECT count(*) FROM run_q1) AS settled_rows
  FROM accounts;
SELECT count(*) AS accounts_differing
  FROM accounts k
  LEFT JOIN quarter_tier t ON t.q = 1 AND t.account_key = k.account_key
  LEFT JOIN run_q1 s ON s.account_key = k.account_key
 WHERE s.account_key IS NULL
    OR s.period_qualifying IS DISTINCT FROM coalesce(t.spend, 0)
    OR s.measure IS DISTINCT FROM coalesce(t.spend, 0)
    OR s.period_points IS DISTINCT FROM coalesce(t.points, 0)
    OR s.new_tier IS DISTINCT FROM t.tier;
SELECT count(*) AS tiers_differing
  FROM accounts a LEFT JOIN quarter_tier t ON t.account_key = a.account_key AND t.q = 1
 WHERE a.tier IS DISTINCT FROM t.tier;
-- tier() and balance() of an account Gold in both quarters and of a
-- Silver one
SELECT min(t1.account_key) AS gold FROM quarter_tier t1 JOIN quarter_tier t2 USING (account_key)
 WHERE t1.q = 1 AND t2.q = 2 AND t1.tier = 'Gold' AND t2.tier = 'Gold' \gset
SELECT min(account_key) AS silver FROM quarter_tier WHERE q = 1 AND tier = 'Silver' \gset
SELECT loyalty.tier('Tier Club', :'gold') AS gold_tier, loyalty.tier('Tier Club', :'silver') AS silver_tier,
       (loyalty.balance('Tier Club', :'gold')).tier AS gold_balance_tier,
       loyalty.tier('Tier Club', :'gold', '2025-03-31') AS gold_before_settling,
       loyalty.tier('Tier Club', :'gold', current_date + 1) AS gold_tomorrow;
-- settling again returns the same run
SELECT period_end, accounts, finished_at = (SELECT finished_at FROM loyalty.settlement_run
                                             WHERE program_id = :tid AND period_end = '2025-03-31') AS same_run
  FROM loyalty.settle('Tier Club', '2025-03-31');
SELECT success, result FROM pg_catalog.run_command_on_all_nodes(
    $$SELECT count(*) FROM loyalty.settlement_run r JOIN loyalty.program p USING (program_id) WHERE p.name = 'Tier Club'$$);
-- Q2: the old tier is Q1's, the new one Q2's
SELECT period_qualifying = (SELECT sum(amount) FROM erp.tier_orders
                             WHERE order_date BETWEEN '2025-04-01' AND '2025-06-30') AS period_ok,
       tiers_down > 0 AS some_down
  FROM loyalty.settle('Tier Club', '2025-06-30');
CREATE TEMP TABLE run_q2 AS SELECT * FROM loyalty.settlement_account WHERE program_id = :tid AND period_end = '2025-06-30';
SELECT count(*) AS accounts_differing
  FROM accounts k
  LEFT JOIN quarter_tier t1 ON t1.q = 1 AND t1.account_key = k.account_key
  LEFT JOIN quarter_tier t2 ON t2.q = 2 AND t2.account_key = k.account_key
  LEFT JOIN run_q2 s ON s.account_key = k.account_key
 WHERE s.account_key IS NULL
    OR s.period_qualifying IS DISTINCT FROM coalesce(t2.spend, 0)
    OR s.period_points IS DISTINCT FROM coalesce(t2.points, 0)
    OR s.old_tier IS DISTINCT FROM t1.tier OR s.new_tier IS DISTINCT FROM t2.tier;
-- statement of the Gold account: the points its rows earned in each quarter
SELECT (SELECT value::bigint FROM loyalty.statement('Tier Club', :'gold', '2025-03-31')
         WHERE section = 'points earned' AND item = 'erp.tier_orders')
       = (SELECT points FROM quarter_tier WHERE q = 1 AND account_key = :gold) AS q1_earned_exact,
       (SELECT value::bigint FROM loyalty.statement('Tier Club', :'gold', '2025-06-30')
         WHERE section = 'points earned' AND item = 'erp.tier_orders')
       = (SELECT points FROM quarter_tier WHERE q = 2 AND account_key = :gold) AS q2_earned_exact;
SELECT item, value FROM loyalty.statement('Tier Club', :'gold', '2025-06-30') WHERE section = 'tier' AND item IN ('tier', 'settlement')
 ORDER BY 1;
-- settle_due settles the quarters after Q2 up to the last one that ended
-- (how many depends on today: their notices are not shown)
SET client_min_messages = warning;
SELECT count(*) > 0 AS settled, bool_and(status = 'done') AS done FROM loyalty.settle_due('Tier Club');
RESET client_min_messages;
SELECT count(*) AS nothing_left FROM loyalty.settle_due('Tier Club');
SELECT count(*) AS runs_differing
  FROM loyalty.settlement_run
 WHERE program_id = :tid AND period_end > '2025-06-30' AND (status <> 'done' OR accounts <> 1500);
SELECT * FROM erp.check_tier_points;
SELECT * FROM loyalty.verify('Tier Club');

-- Point expiry on bigint keys: a 12-month lifetime, orders of 2024; the
-- quarter ending 2025-03-31 expires the points of the months before April
-- 2024 on each shard group's node.  Expected from the rows, in plain SQL.
CREATE TABLE erp.expiring_orders (order_id bigint NOT NULL, customer_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                                  order_date date NOT NULL, PRIMARY KEY (customer_id, order_id));
SELECT create_distributed_table('erp.expiring_orders', 'customer_id', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Expiring Club', point_lifetime => '12 months') AS xid \gset
SELECT loyalty.attach('erp.expiring_orders', 'Expiring Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
INSERT INTO erp.expiring_orders SELECT g, 9000000000 + g % 90, 3 + (g % 29) + (g % 10) / 10.0, DATE '2024-01-01' + (g * 11) % 366
  FROM generate_series(1, 1800) g;
SET client_min_messages = warning;
SELECT r.status, r.points_expired FROM loyalty.settle('Expiring Club', '2025-03-31') r;
RESET client_min_messages;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id AS account_key, greatest(sum(trunc(amount)) FILTER (WHERE order_date < '2024-04-01'), 0)::bigint AS due
          FROM erp.expiring_orders GROUP BY 1) e
  FULL JOIN (SELECT account_key, -sum(points) AS expired FROM loyalty.ledger
              WHERE program_id = :xid AND kind = 'expire' GROUP BY 1) l USING (account_key)
 WHERE coalesce(l.expired, 0) <> e.due;
SELECT (SELECT sum(points_expired) FROM loyalty.settlement_run WHERE program_id = :xid)
     = (SELECT sum(d) FROM (SELECT greatest(sum(trunc(amount)) FILTER (WHERE order_date < '2024-04-01'), 0) AS d
                              FROM erp.expiring_orders GROUP BY customer_id) x) AS run_total_exact;

-- Rebates on bigint keys: an agreement for one key beyond 2^31 (retro,
-- quarterly) and one for every account (marginal, monthly) over the same
-- orders; the estimate of February and the settlement lines of Q1, each
-- shard group on its node.  The brackets by hand, in plain SQL.
SELECT loyalty.create_program('Rebate Club', currency => 'EUR', settlement_period => 'quarter') AS rid \gset
SELECT loyalty.attach('erp.expiring_orders', 'Rebate Club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT b.accounts AS backfilled_accounts FROM loyalty.backfill('erp.expiring_orders', 'Rebate Club', since => '-infinity') b;
SELECT loyalty.create_rebate_agreement('Rebate Club', 'ONE', 'retro: 0:1%, 500:2%', account_key => '9000000007',
                                       valid_from => '2024-01-01');
SELECT loyalty.create_rebate_agreement('Rebate Club', 'ALL', 'marginal: 0:1%, 100:3%', period => 'month',
                                       valid_from => '2024-01-01');
CREATE VIEW erp.rebate_expected AS
SELECT agreement_id, account_key, period_start, month, amount
  FROM (SELECT 'ONE' AS agreement_id, customer_id AS account_key, date_trunc('quarter', order_date)::date AS period_start,
               date_trunc('month', order_date)::date AS month, amount
          FROM erp.expiring_orders WHERE customer_id = 9000000007
        UNION ALL
        SELECT 'ALL', customer_id, date_trunc('month', order_date)::date, date_trunc('month', order_date)::date, amount
          FROM erp.expiring_orders) x;
CREATE FUNCTION erp.rebate_of(agreement text, v numeric) RETURNS numeric LANGUAGE sql
RETURN CASE WHEN v <= 0 THEN 0
            WHEN agreement = 'ONE' THEN round(v * CASE WHEN v >= 500 THEN 0.02 ELSE 0.01 END, 2)
            ELSE round(least(v, 100) * 0.01 + greatest(v - 100, 0) * 0.03, 2) END;
SELECT loyalty.accrue_rebates('Rebate Club', '2024-02-15')
     = (SELECT sum(erp.rebate_of(agreement_id, v))
          FROM (SELECT agreement_id, account_key, period_start, sum(amount) AS v FROM erp.rebate_expected
                 WHERE month <= '2024-02-01' GROUP BY 1, 2, 3) x) AS estimated_exact;
SET client_min_messages = warning;
SELECT r.status FROM loyalty.settle('Rebate Club', '2024-03-31') r;
RESET client_min_messages;
SELECT count(*) AS lines_differing
  FROM (SELECT agreement_id, account_key, period_start, erp.rebate_of(agreement_id, sum(amount)) AS final
          FROM erp.rebate_expected WHERE period_start < '2024-04-01' GROUP BY 1, 2, 3) e
  FULL JOIN (SELECT agreement_id, account_key, period_start, final, credit_note
               FROM loyalty.settlement_line WHERE program_id = :rid) l USING (agreement_id, account_key, period_start)
 WHERE coalesce(l.final, 0) <> coalesce(e.final, 0) OR coalesce(l.credit_note, 0) <> coalesce(e.final, 0);
SELECT account_key, pg_typeof(account_key) AS key_type, final,
       replace(document_key, 'LOY-' || :rid || '-', 'LOY-<program>-') AS document_key
  FROM loyalty.settlement_line WHERE program_id = :rid AND agreement_id = 'ONE';

-- enroll, grant_tier and revoke_tier with a key beyond 2^31 given as text
SELECT loyalty.enroll('Tier Club', '7000009999', region => 'north', enrolled_from => '-infinity');
SELECT account_key, pg_typeof(account_key) AS key_type, region FROM loyalty.account
 WHERE program_id = :tid AND account_key = 7000009999;
INSERT INTO erp.tier_orders VALUES (20001, 7000009999, 321.75, '2025-08-01');
SELECT points = 321 AS accrued FROM loyalty.balance('Tier Club', '7000009999');
SELECT loyalty.grant_tier('Tier Club', '7000009999', 'Gold', 'key account');
SELECT loyalty.tier('Tier Club', '7000009999') AS granted;
SELECT loyalty.revoke_tier('Tier Club', '7000009999') AS back_to_ladder;
SELECT account_key, new_tier, reason FROM loyalty.tier_history WHERE program_id = :tid AND account_key = 7000009999
 ORDER BY change_no;
-- the same functions once per row of a query (keys that are no constants)
CREATE TEMP TABLE some_keys AS SELECT account_key FROM quarter_tier WHERE q = 2 AND tier IS NULL ORDER BY 1 LIMIT 3;
SELECT loyalty.grant_tier('Tier Club', account_key::text, 'Silver', 'by query') FROM some_keys;
SELECT count(*) FILTER (WHERE loyalty.tier('Tier Club', account_key::text) = 'Silver') AS silver FROM some_keys;
SELECT count(*) FILTER (WHERE loyalty.revoke_tier('Tier Club', account_key::text) IS NULL) AS back_to_no_tier FROM some_keys;
SELECT loyalty.enroll('Tier Club', account_key::text, region => 'south') FROM some_keys;
SELECT count(*) AS in_the_south FROM loyalty.account
 WHERE program_id = :tid AND region = 'south' AND account_key IN (SELECT account_key FROM some_keys);
SELECT * FROM loyalty.verify('Tier Club');

-- Redemption, in a new session (as in citus_settle): Citus runs redeem on
-- the node holding the account's shard when the key is given as a number
-- (it cannot turn a text argument into a bigint distribution column).
\c -
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Big Club' \gset
SELECT loyalty.set_reward('Big Club', 'MUG', 'Mug', 100);
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', 5000000042, 'MUG') r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', 5000002999, 'MUG', 2) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', 9223372036854775807, 'MUG') r;
-- more than the balance: refused, nothing written
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', -7, 'MUG') r;
-- the key as text is not routed: refused, nothing written
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', '5000000042', 'MUG') r;
SELECT account_key, pg_typeof(account_key) AS key_type, quantity, points FROM loyalty.redemption
 WHERE program_id = :pid ORDER BY 1, redemption_no;
-- balances: the rows' points less the redemptions
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(earns) AS points FROM erp.orders_earned GROUP BY 1) w
  LEFT JOIN (SELECT account_key, sum(points)::bigint AS spent FROM loyalty.redemption
              WHERE program_id = :pid GROUP BY 1) r USING (account_key)
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b USING (account_key)
 WHERE w.points - coalesce(r.spent, 0) IS DISTINCT FROM b.points;
SELECT * FROM loyalty.verify('Big Club');

-- A cancelled redemption, awards and an MDF claim on bigint keys: their
-- account part is routed to the account's node by the key in its own type
-- (citus_wallets checks them on text keys)
SELECT redemption_id AS big_r FROM loyalty.redemption WHERE program_id = :pid AND account_key = 5000002999 \gset
SELECT loyalty.cancel_redemption(:'big_r');
SELECT loyalty.set_action_rule('Big Club', 'webinar', 25, valid_from => '2025-01-01');
SELECT loyalty.award('Big Club', '5000000042', 'webinar', '2025-03-01') IS NOT NULL AS awarded;
SELECT loyalty.award('Big Club', '9223372036854775807', 'webinar', '2025-03-01', reference => 'crm-1') IS NOT NULL AS awarded;
SELECT loyalty.award('Big Club', '9223372036854775807', 'webinar', '2025-03-01', reference => 'crm-1') IS NOT NULL AS same_event;
SELECT loyalty.claim_mdf('Big Club', '5000000042', 1.00, 'ads');     -- no MDF credited: the wallet is empty
SELECT account_key, pg_typeof(account_key) AS key_type, points, status FROM loyalty.award WHERE program_id = :pid ORDER BY 1;
SELECT account_key, status FROM loyalty.redemption WHERE program_id = :pid ORDER BY 1, redemption_no;
-- balances: the rows' points, less what stays redeemed, plus the awards
SELECT count(*) AS accounts_differing
  FROM (SELECT customer_id AS account_key, sum(earns) AS points FROM erp.orders_earned GROUP BY 1) w
  LEFT JOIN (SELECT account_key, sum(points)::bigint AS spent FROM loyalty.redemption
              WHERE program_id = :pid AND status <> 'cancelled' GROUP BY 1) r USING (account_key)
  LEFT JOIN (VALUES (5000000042::bigint, 25), (9223372036854775807, 25)) a(account_key, awarded) USING (account_key)
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b USING (account_key)
 WHERE w.points - coalesce(r.spent, 0) + coalesce(a.awarded, 0) IS DISTINCT FROM b.points;
SELECT sum(result::int) AS award_and_cancel_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s WHERE kind IN ('award', 'redeem') AND points > 0$$);
SELECT sum(result::int) AS with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind IN ('award', 'redeem') AND points > 0
            AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);
SELECT * FROM loyalty.verify('Big Club');

-- A key that is no bigint: refused with its SQLSTATE, nothing written.
\set VERBOSITY sqlstate
SELECT * FROM loyalty.balance('Big Club', 'abc');
SELECT * FROM loyalty.balance('Big Club', '');
SELECT * FROM loyalty.balance('Big Club', '99999999999999999999');
SELECT loyalty.tier('Tier Club', 'abc');
SELECT * FROM loyalty.verify('Big Club', account => 'abc');
SELECT loyalty.enroll('Big Club', 'abc');
SELECT loyalty.grant_tier('Tier Club', 'abc', 'Gold');
SELECT * FROM loyalty.statement('Tier Club', 'abc', '2025-03-31');
SELECT loyalty.tier('Tier Club', '5000000042x', '2025-03-31');
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Big Club', 'abc', 'MUG') r;
\set VERBOSITY default
-- the same, caught in PL/pgSQL
DO $$
DECLARE
    k text;
    state text;
BEGIN
    FOREACH k IN ARRAY ARRAY['abc', '5e9', '5000000042x', '1.5'] LOOP
        BEGIN
            PERFORM * FROM loyalty.balance('Big Club', k);
            state := 'no error';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
        END;
        RAISE NOTICE 'balance(%): %', k, state;
    END LOOP;
END
$$;
SELECT count(*) AS accounts FROM loyalty.account WHERE program_id = :pid;
SELECT * FROM loyalty.verify('Big Club');
