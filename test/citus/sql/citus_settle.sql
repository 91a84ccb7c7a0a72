--
-- citus_settle: fold and settlement on loyalty's distributed layout (runs
-- after citus_distribute, in the same database).  A program with a tier
-- ladder accrues from its own ERP table, distributed by a text customer
-- key with loyalty's tables; fold leaves every balance as it was, and a
-- settlement decides each account's tier from what the ERP rows say, once
-- per period, on the workers.  Expected figures come from the ERP rows, in
-- plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE TABLE erp.settle_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                         order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.settle_orders', 'customer', colocate_with => 'loyalty.account');
-- the quarter settled decides the tier (a window of three months)
SELECT loyalty.create_program('Settle Club', ladder => 'Silver:2000, Gold:6000',
                              qualification_window => '3 months') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Settle Club' \gset
SELECT loyalty.attach('erp.settle_orders', 'Settle Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'order_date') > 0 AS attached;
-- 6,000 orders of 400 customers over the first half of 2025: a customer's
-- spend grows with its number, so the tiers spread over the ladder; one
-- customer in three spends a quarter as much in Q2 (downgrades)
INSERT INTO erp.settle_orders SELECT g, 'S-' || lpad((g % 400)::text, 3, '0'),
                              round((((g * 37) % 900) / 10.0 + (g % 400) * 2.0)
                                    * CASE WHEN (g * 7) % 181 >= 90 AND g % 400 % 3 = 0 THEN 0.25 ELSE 1 END, 2),
                              DATE '2025-01-01' + (g * 7) % 181
  FROM generate_series(1, 6000) g;

-- The ERP's view of each account (points = whole currency units).
CREATE TEMP TABLE want AS
SELECT customer AS account_key, sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying
  FROM erp.settle_orders GROUP BY 1;
SELECT count(*) AS accounts, sum(points) AS points FROM want;

-- fold: the deltas go into balance_folded on the workers; every balance is
-- the same before and after, and equals the ERP rows.
SELECT count(*) > 0 AS deltas_before FROM loyalty.balance_delta WHERE program_id = :pid;
CREATE TEMP TABLE before_fold AS
SELECT account_key, points, qualifying FROM loyalty.balance WHERE program_id = :pid;
SELECT loyalty.fold('Settle Club') > 0 AS folded;
SELECT count(*) AS deltas_left FROM loyalty.balance_delta WHERE program_id = :pid;
SELECT count(*) AS accounts_changed_by_fold
  FROM before_fold b FULL JOIN (SELECT account_key, points, qualifying FROM loyalty.balance WHERE program_id = :pid) a
 USING (account_key)
 WHERE a.points IS DISTINCT FROM b.points OR a.qualifying IS DISTINCT FROM b.qualifying;
SELECT count(*) AS accounts_differing_from_erp
  FROM want w FULL JOIN (SELECT account_key, points, qualifying FROM loyalty.balance WHERE program_id = :pid) b
 USING (account_key)
 WHERE w.points IS DISTINCT FROM b.points OR w.qualifying IS DISTINCT FROM b.qualifying;
-- a second fold finds nothing; the folded rows are on both workers
SELECT loyalty.fold('Settle Club') AS folded_again;
SELECT count(DISTINCT p.nodeport) AS workers_with_folded_rows
  FROM pg_catalog.run_command_on_shards('loyalty.balance_folded', $$SELECT count(*) FROM %s$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;

-- The tier the ERP rows of a quarter reach, in plain SQL (by customer);
-- compared below on this node, from copies (temp tables).
CREATE TEMP TABLE quarter_tier AS
SELECT customer AS account_key, q, CASE WHEN spend >= 6000 THEN 'Gold' WHEN spend >= 2000 THEN 'Silver' END AS tier
  FROM (SELECT customer, 1 AS q, sum(amount) AS spend FROM erp.settle_orders
         WHERE order_date <= '2025-03-31' AND order_id <= 100000 GROUP BY 1
        UNION ALL
        SELECT customer, 2, sum(amount) FROM erp.settle_orders
         WHERE order_date BETWEEN '2025-04-01' AND '2025-06-30' GROUP BY 1) x;
SELECT q, tier, count(*) FROM quarter_tier GROUP BY 1, 2 ORDER BY 1, 2;

-- Settle 2025 Q1: each account's amounts and tier as the rows say.
SELECT period_start, period_end, status, accounts,
       period_qualifying = (SELECT sum(amount) FROM erp.settle_orders WHERE order_date <= '2025-03-31') AS period_ok,
       carried_qualifying,
       tiers_up = (SELECT count(*) FROM (SELECT customer FROM erp.settle_orders WHERE order_date <= '2025-03-31'
                                         GROUP BY 1 HAVING sum(amount) >= 2000) x) AS tiers_up_ok,
       tiers_down, points_expired
  FROM loyalty.settle('Settle Club', '2025-03-31');
CREATE TEMP TABLE erp_q1 AS
SELECT customer AS account_key, sum(amount) FILTER (WHERE order_date <= '2025-03-31') AS q1,
       sum(trunc(amount)) FILTER (WHERE order_date <= '2025-03-31') AS p1
  FROM erp.settle_orders GROUP BY 1;
CREATE TEMP TABLE run_q1 AS
SELECT * FROM loyalty.settlement_account WHERE program_id = :pid AND period_end = '2025-03-31';
SELECT count(*) AS accounts_differing
  FROM erp_q1 e FULL JOIN run_q1 s USING (account_key)
  LEFT JOIN quarter_tier t ON t.q = 1 AND t.account_key = coalesce(e.account_key, s.account_key)
 WHERE s.period_qualifying IS DISTINCT FROM coalesce(e.q1, 0) OR s.qualifying_to_date IS DISTINCT FROM coalesce(e.q1, 0)
    OR s.period_points IS DISTINCT FROM coalesce(e.p1, 0) OR s.measure IS DISTINCT FROM coalesce(e.q1, 0)
    OR s.new_tier IS DISTINCT FROM t.tier OR s.carried_qualifying <> 0;
SELECT tier, count(*) FROM loyalty.account WHERE program_id = :pid GROUP BY 1 ORDER BY 1;
SELECT count(*) AS tiers_differing
  FROM loyalty.account a
  JOIN quarter_tier t ON t.account_key = a.account_key AND t.q = 1
 WHERE a.program_id = :pid AND a.tier IS DISTINCT FROM t.tier;
SELECT count(*) AS history_rows, count(*) FILTER (WHERE change_no = 1 AND reason = 'requalification'
                                                  AND effective_from = current_date + 1) AS first_changes
  FROM loyalty.tier_history WHERE program_id = :pid;

-- Settling the same period again changes nothing and returns the same run;
-- the run is a reference table row, the same on every node.
SELECT period_end, accounts, finished_at = (SELECT finished_at FROM loyalty.settlement_run
                                             WHERE program_id = :pid AND period_end = '2025-03-31') AS same_run
  FROM loyalty.settle('Settle Club', '2025-03-31');
SELECT count(*) AS runs, (SELECT count(*) FROM loyalty.settlement_account WHERE program_id = :pid) AS account_rows,
       (SELECT count(*) FROM loyalty.tier_history WHERE program_id = :pid) AS history_rows
  FROM loyalty.settlement_run WHERE program_id = :pid;
SELECT success, result FROM pg_catalog.run_command_on_all_nodes(
    $$SELECT count(*) FROM loyalty.settlement_run r JOIN loyalty.program p USING (program_id) WHERE p.name = 'Settle Club'$$);
-- a second run row for the period cannot exist, whoever writes it
INSERT INTO loyalty.settlement_run SELECT * FROM loyalty.settlement_run WHERE program_id = :pid;

-- Late for Q1: orders dated in March arrive after its settlement; Q2 counts
-- them as carried, and decides the tiers on Q2's own spend.
INSERT INTO erp.settle_orders SELECT 100000 + g, 'S-' || lpad((g * 3)::text, 3, '0'), 40 + g, DATE '2025-03-20'
  FROM generate_series(1, 50) g;
SELECT period_qualifying = (SELECT sum(amount) FROM erp.settle_orders WHERE order_date BETWEEN '2025-04-01' AND '2025-06-30') AS period_ok,
       carried_qualifying = (SELECT sum(amount) FROM erp.settle_orders WHERE order_id > 100000) AS carried_ok,
       tiers_up, tiers_down
  FROM loyalty.settle('Settle Club', '2025-06-30');
CREATE TEMP TABLE erp_q2 AS
SELECT customer AS account_key,
       sum(amount) FILTER (WHERE order_date BETWEEN '2025-04-01' AND '2025-06-30') AS q2,
       sum(amount) FILTER (WHERE order_id > 100000) AS late
  FROM erp.settle_orders GROUP BY 1;
CREATE TEMP TABLE run_q2 AS
SELECT * FROM loyalty.settlement_account WHERE program_id = :pid AND period_end = '2025-06-30';
SELECT count(*) AS accounts_differing
  FROM erp_q2 e FULL JOIN run_q2 s USING (account_key)
  LEFT JOIN quarter_tier t1 ON t1.q = 1 AND t1.account_key = coalesce(e.account_key, s.account_key)
  LEFT JOIN quarter_tier t2 ON t2.q = 2 AND t2.account_key = coalesce(e.account_key, s.account_key)
 WHERE s.period_qualifying IS DISTINCT FROM coalesce(e.q2, 0) OR s.carried_qualifying IS DISTINCT FROM coalesce(e.late, 0)
    OR s.old_tier IS DISTINCT FROM t1.tier OR s.new_tier IS DISTINCT FROM t2.tier;
-- every order counted once over the two runs
SELECT (SELECT sum(period_qualifying + carried_qualifying) FROM loyalty.settlement_run WHERE program_id = :pid)
       = (SELECT sum(amount) FROM erp.settle_orders WHERE order_date <= '2025-06-30') AS runs_add_up;
SELECT count(*) AS tiers_differing
  FROM loyalty.account a
  JOIN quarter_tier t ON t.account_key = a.account_key AND t.q = 2
 WHERE a.program_id = :pid AND a.tier IS DISTINCT FROM t.tier;
-- Two settlements of the same period at once (two sessions, through
-- dblink): the second waits for the first and finds its run.
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT format('host=127.0.0.1 port=%s dbname=%s', current_setting('port'), current_database()) AS conninfo \gset
SELECT dblink_connect('s1', :'conninfo'), dblink_connect('s2', :'conninfo');
SELECT dblink_exec('s1', 'BEGIN');
SELECT * FROM dblink('s1', $$SELECT period_end FROM loyalty.settle('Settle Club', '2025-09-30')$$) AS t(period_end date);
SELECT dblink_send_query('s2', $$SELECT period_end, accounts FROM loyalty.settle('Settle Club', '2025-09-30')$$);
SELECT pg_sleep(0.5);
SELECT dblink_is_busy('s2') AS second_waits;
SELECT dblink_exec('s1', 'COMMIT');
SELECT * FROM dblink_get_result('s2') AS t(period_end date, accounts bigint);
SELECT dblink_disconnect('s1'), dblink_disconnect('s2');
SELECT count(*) AS runs, sum(accounts) AS accounts FROM loyalty.settlement_run
 WHERE program_id = :pid AND period_end = '2025-09-30';
SELECT count(*) AS account_rows FROM loyalty.settlement_account WHERE program_id = :pid AND period_end = '2025-09-30';
-- settle_due settles the quarters after it, up to the last one that ended
SELECT count(*) = (SELECT count(*) FROM generate_series('2025-10-01'::date, date_trunc('quarter', current_date) - interval '1 day',
                                                          interval '3 months')) AS all_due,
       bool_and(status = 'done') AS done
  FROM loyalty.settle_due('Settle Club');
SELECT count(*) AS nothing_left FROM loyalty.settle_due('Settle Club');
-- balances are still the ERP's
SELECT count(*) AS accounts_differing_from_erp
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.settle_orders GROUP BY 1) w
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b USING (account_key)
 WHERE w.points IS DISTINCT FROM b.points;

-- Point expiry: settlement expires, on each shard group's node, the points
-- older than the lifetime, oldest first.  Orders of 2024, some credit notes;
-- with a 12-month lifetime the quarter ending 2025-03-31 (cutoff
-- 2025-04-01) expires the points of the months before April 2024, the next
-- quarter those before July 2024 less what the first expiry took.
-- Expected figures from the ERP rows, in plain SQL.
CREATE TABLE erp.expiring_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                                  order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.expiring_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Expiring Club', point_lifetime => '12 months') AS xid \gset
SELECT loyalty.attach('erp.expiring_orders', 'Expiring Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
INSERT INTO erp.expiring_orders SELECT g, 'X-' || lpad((g % 120)::text, 3, '0'), 5 + (g % 23) + (g % 10) / 10.0,
                                       DATE '2024-01-01' + (g * 7) % 366
  FROM generate_series(1, 2400) g;
INSERT INTO erp.expiring_orders SELECT 5000 + g, 'X-' || lpad((g * 3 % 120)::text, 3, '0'), -4.50, DATE '2024-02-15'
  FROM generate_series(1, 40) g;
CREATE VIEW erp.expiring_expected AS
SELECT customer AS account_key,
       greatest(sum(trunc(amount)) FILTER (WHERE order_date < '2024-04-01'), 0)::bigint AS q1_expires,
       sum(trunc(amount))::bigint AS earned
  FROM erp.expiring_orders GROUP BY 1;
SELECT count(*) AS accounts, sum(q1_expires) AS q1_expires FROM erp.expiring_expected;
-- a settlement rolled back leaves nothing behind on any node
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT r.status, r.points_expired = (SELECT sum(q1_expires) FROM erp.expiring_expected) AS q1_expired_exact
  FROM loyalty.settle('Expiring Club', '2025-03-31') r;
ROLLBACK;
SELECT count(*) AS expire_entries FROM loyalty.ledger WHERE program_id = :xid AND kind = 'expire';
SELECT count(*) AS settlement_runs FROM loyalty.settlement_run WHERE program_id = :xid;
SELECT r.status, r.points_expired = (SELECT sum(q1_expires) FROM erp.expiring_expected) AS q1_expired_exact
  FROM loyalty.settle('Expiring Club', '2025-03-31') r;
-- every account's expire entry is what its rows say; nothing twice
SELECT count(*) AS accounts_differing
  FROM erp.expiring_expected e
  FULL JOIN (SELECT account_key, -sum(points) AS expired, count(*) AS entries FROM loyalty.ledger
              WHERE program_id = :xid AND kind = 'expire' GROUP BY 1) l USING (account_key)
 WHERE coalesce(l.expired, 0) <> e.q1_expires OR l.entries > 1;
SELECT count(*) AS runs, sum(points_expired) = (SELECT sum(q1_expires) FROM erp.expiring_expected) AS once
  FROM loyalty.settle('Expiring Club', '2025-03-31');
SELECT count(*) AS settlement_runs FROM loyalty.settlement_run WHERE program_id = :xid;
-- the entries were written on the shards of both workers
SELECT count(DISTINCT p.nodeport) AS workers_with_expire_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger', $$SELECT count(*) FROM %s WHERE kind = 'expire'$$) r
  JOIN pg_catalog.pg_dist_shard_placement p USING (shardid)
 WHERE r.result::bigint > 0;
-- the next quarter: the months before July 2024, less what Q1 took
SELECT r.status FROM loyalty.settle('Expiring Club', '2025-06-30') r;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key,
               greatest(sum(trunc(amount)) FILTER (WHERE order_date < '2024-07-01'), 0)::bigint AS expires_by_q2
          FROM erp.expiring_orders GROUP BY 1) e
  FULL JOIN (SELECT account_key, -sum(points) AS expired FROM loyalty.ledger
              WHERE program_id = :xid AND kind = 'expire' GROUP BY 1) l USING (account_key)
 WHERE coalesce(l.expired, 0) <> e.expires_by_q2;
-- balances: what the rows earned, less what expired
SELECT count(*) AS balances_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint
                 - greatest(sum(trunc(amount)) FILTER (WHERE order_date < '2024-07-01'), 0)::bigint AS points
          FROM erp.expiring_orders GROUP BY 1) e
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :xid) b USING (account_key)
 WHERE e.points IS DISTINCT FROM b.points;

-- Redemption: Citus runs loyalty.redeem, called as a statement of its own,
-- on the node holding the account's shard (a distributed function by
-- account_key): the lock, the wait for postings in flight and the posting
-- happen there, with that node's transaction ids.  A new session: in this
-- one, Citus 12.1 stopped delegating function calls after the errors above
-- ("not pushing down function calls in CTEs or Subqueries"); redeem then
-- refuses, as it does below inside a transaction block.
\c -
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT program_id AS pid FROM loyalty.program WHERE name = 'Settle Club' \gset
SELECT loyalty.set_reward('Settle Club', 'MUG', 'Mug', 100);
SELECT success, result FROM pg_catalog.run_command_on_coordinator(
    $$SELECT distribution_argument_index FROM pg_catalog.pg_dist_object
       WHERE objid = 'loyalty.redeem(text, text, text, integer, text)'::regprocedure$$);
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-001', 'MUG') r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-002', 'MUG', 2) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-150', 'MUG', 5) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-399', 'MUG', 10) r;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-001', 'MUG') r;
-- more than the balance: refused, nothing written
SELECT points FROM loyalty.balance WHERE program_id = :pid AND account_key = 'S-003';
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-003', 'MUG', 1000) r;
-- a call Citus does not send to the account's node (inside a transaction
-- block) is refused rather than checked on the coordinator's empty shell
BEGIN;
SELECT r IS NOT NULL AS redeemed FROM loyalty.redeem('Settle Club', 'S-004', 'MUG') r;
ROLLBACK;
-- balances: the ERP's points less the redemptions; the ledger agrees
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.settle_orders GROUP BY 1) w
  LEFT JOIN (SELECT account_key, sum(points)::bigint AS spent FROM loyalty.redemption
              WHERE program_id = :pid GROUP BY 1) r USING (account_key)
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b USING (account_key)
 WHERE w.points - coalesce(r.spent, 0) IS DISTINCT FROM b.points;
SELECT account_key, quantity, points FROM loyalty.redemption WHERE program_id = :pid ORDER BY 1, redemption_no;
SELECT account_key, sum(points) AS redeemed FROM loyalty.ledger WHERE program_id = :pid AND kind = 'redeem'
 GROUP BY 1 ORDER BY 1;
-- the entries carry the transaction id of the node that wrote them: on
-- the node holding each, posted_xid is the transaction that inserted the row
SELECT sum(result::int) AS redeem_entries
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'redeem'$$);
SELECT sum(result::int) AS redeem_entries_with_their_nodes_xid
  FROM pg_catalog.run_command_on_shards('loyalty.ledger',
       $$SELECT count(*) FROM %s WHERE kind = 'redeem'
            AND (posted_xid::text::bigint %% 4294967296)::text = xmin::text$$);
-- A credit note in flight on the account's node: the redemption waits for
-- it there (the shard's balance deltas, the node's transaction ids), then
-- finds the balance it leaves and refuses.
SELECT points AS s5 FROM loyalty.balance WHERE program_id = :pid AND account_key = 'S-005' \gset
SELECT :s5 >= 100 AS covers_one_mug;
SELECT dblink_connect('erp', :'conninfo'), dblink_connect('shop', :'conninfo');
SELECT dblink_exec('erp', 'BEGIN');
SELECT dblink_exec('erp', format('INSERT INTO erp.settle_orders VALUES (200001, %L, %s, %L)', 'S-005', - :s5, '2025-06-15'));
SELECT dblink_send_query('shop', $$SELECT r IS NOT NULL FROM loyalty.redeem('Settle Club', 'S-005', 'MUG') r$$);
SELECT pg_sleep(0.5);
SELECT dblink_is_busy('shop') AS redemption_waits;
SELECT dblink_exec('erp', 'COMMIT');
SELECT * FROM dblink_get_result('shop', false) AS t(redeemed boolean);
SELECT dblink_disconnect('erp'), dblink_disconnect('shop');
SELECT points FROM loyalty.balance WHERE program_id = :pid AND account_key = 'S-005';
SELECT count(*) AS redemptions_of_s005 FROM loyalty.redemption WHERE program_id = :pid AND account_key = 'S-005';
-- a fold afterwards changes no balance
SELECT loyalty.fold('Settle Club') > 0 AS folded;
SELECT count(*) AS accounts_differing
  FROM (SELECT customer AS account_key, sum(trunc(amount))::bigint AS points FROM erp.settle_orders GROUP BY 1) w
  LEFT JOIN (SELECT account_key, sum(points)::bigint AS spent FROM loyalty.redemption
              WHERE program_id = :pid GROUP BY 1) r USING (account_key)
  FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b USING (account_key)
 WHERE w.points - coalesce(r.spent, 0) IS DISTINCT FROM b.points;

-- Upgrades on accrual: fold moves an account whose rolling spend reaches a
-- tier (orders dated today), records the change, and leaves the others.
INSERT INTO erp.settle_orders VALUES (300001, 'U-1', 2500, current_date), (300002, 'U-2', 7000, current_date),
                              (300003, 'U-3', 100, current_date);
SELECT loyalty.fold('Settle Club') > 0 AS folded;
SELECT account_key, tier FROM loyalty.account WHERE program_id = :pid AND account_key LIKE 'U-%' ORDER BY 1;
SELECT account_key, change_no, old_tier, new_tier, reason, rolling_qualifying
  FROM loyalty.tier_history WHERE program_id = :pid AND account_key LIKE 'U-%' ORDER BY 1, 2;
-- a second fold changes nothing
SELECT loyalty.fold('Settle Club') AS folded_again;
SELECT count(*) AS history_rows FROM loyalty.tier_history WHERE program_id = :pid AND account_key LIKE 'U-%';
-- an account with earlier tier changes: the upgrade takes the next number
SELECT a.account_key AS again, (SELECT max(h.change_no) FROM loyalty.tier_history h
                                 WHERE h.program_id = :pid AND h.account_key = a.account_key) AS last_no
  FROM loyalty.account a
 WHERE a.program_id = :pid AND a.tier IS NULL AND a.account_key LIKE 'S-%'
   AND a.account_key IN (SELECT h.account_key FROM loyalty.tier_history h WHERE h.program_id = :pid)
 ORDER BY 1 LIMIT 1 \gset
INSERT INTO erp.settle_orders VALUES (300004, :'again', 7000, current_date);
SELECT loyalty.fold('Settle Club') > 0 AS folded;
SELECT tier, change_no = :last_no + 1 AS next_number, reason
  FROM loyalty.account a JOIN loyalty.tier_history h USING (program_id, account_key)
 WHERE a.program_id = :pid AND a.account_key = :'again' AND h.change_no = (SELECT max(change_no) FROM loyalty.tier_history
                                                                          WHERE program_id = :pid AND account_key = :'again');
