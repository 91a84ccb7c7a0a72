--
-- citus_settle_mdf: MDF credits at settlement on loyalty's distributed
-- layout (runs after citus_distribute, in the same database).  Each shard
-- group's accounts are credited on its node, over the co-located shards:
-- the period's qualifying spend times the MDF rate of the tier held on the
-- period's last day.  Expected amounts come from the ERP rows, with the
-- tiers and rates written out in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE TABLE erp.mdf_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                             order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.mdf_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('MDF Club', ladder => 'Silver:1000, Gold:3000', qualification_window => '3 months') AS mid \gset
SELECT loyalty.attach('erp.mdf_orders', 'MDF Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT loyalty.set_benefit('MDF Club', 'Silver', 'mdf_rate', '0.01');
SELECT loyalty.set_benefit('MDF Club', 'Gold', 'mdf_rate', '0.03');
-- 200 customers over the first half of 2025; one in three spends a fifth
-- as much in Q2
INSERT INTO erp.mdf_orders SELECT g, 'M-' || lpad((g % 200)::text, 3, '0'),
                                  round((20 + (g % 200) * 0.9 + (g * 31) % 40)
                                        * CASE WHEN (g * 7) % 181 >= 90 AND g % 200 % 3 = 0 THEN 0.2 ELSE 1 END, 2),
                                  DATE '2025-01-01' + (g * 7) % 181
  FROM generate_series(1, 6000) g;

-- The tier a quarter's spend reaches, and the rate of a tier, by hand
CREATE FUNCTION erp.mdf_tier(spend numeric) RETURNS text LANGUAGE sql
RETURN CASE WHEN spend >= 3000 THEN 'Gold' WHEN spend >= 1000 THEN 'Silver' END;
CREATE FUNCTION erp.mdf_rate(tier text) RETURNS numeric LANGUAGE sql
RETURN CASE tier WHEN 'Gold' THEN 0.03 WHEN 'Silver' THEN 0.01 END;
CREATE TEMP TABLE mdf_spend AS
SELECT customer AS account_key,
       coalesce(sum(amount) FILTER (WHERE order_date < '2025-04-01'), 0) AS q1,
       coalesce(sum(amount) FILTER (WHERE order_date >= '2025-04-01'), 0) AS q2
  FROM erp.mdf_orders GROUP BY 1;

-- Q1: the tiers its settlement decides take effect tomorrow, after the
-- period; before its first change an account counts at its first tier, the
-- one Q1 decided.
SELECT r.status, r.mdf_total = (SELECT sum(round(q1 * erp.mdf_rate(erp.mdf_tier(q1)), 2)) FROM mdf_spend) AS q1_total_exact
  FROM loyalty.settle('MDF Club', '2025-03-31') r;
SELECT count(*) AS accounts_differing
  FROM (SELECT account_key, round(q1 * erp.mdf_rate(erp.mdf_tier(q1)), 2) AS amount FROM mdf_spend) e
  FULL JOIN (SELECT account_key, amount FROM loyalty.mdf_accrual WHERE program_id = :mid AND period_end = '2025-03-31') a
       USING (account_key)
 WHERE coalesce(e.amount, 0) <> coalesce(a.amount, 0);
SELECT count(DISTINCT rate) AS rates, count(DISTINCT p.nodeport) AS workers_with_credits
  FROM loyalty.mdf_accrual a,
       LATERAL (SELECT nodeport FROM pg_catalog.pg_dist_shard_placement
                 WHERE shardid = pg_catalog.get_shard_id_for_distribution_column('loyalty.mdf_accrual', a.account_key)) p
 WHERE a.program_id = :mid;
-- Q2: still before every account's first change: the first tier (Q1's, or
-- Q2's for an account without one before)
SELECT r.status FROM loyalty.settle('MDF Club', '2025-06-30') r;
SELECT count(*) AS accounts_differing
  FROM (SELECT account_key, round(q2 * erp.mdf_rate(coalesce(erp.mdf_tier(q1), erp.mdf_tier(q2))), 2) AS amount
          FROM mdf_spend) e
  FULL JOIN (SELECT account_key, amount FROM loyalty.mdf_accrual WHERE program_id = :mid AND period_end = '2025-06-30') a
       USING (account_key)
 WHERE coalesce(e.amount, 0) <> coalesce(a.amount, 0);
-- every credit is a ledger entry of the same amount; wallets add up
SELECT count(*) AS entries_unmatched
  FROM (SELECT account_key, posted_xid, entry_no, mdf FROM loyalty.ledger WHERE program_id = :mid AND kind = 'mdf') l
  FULL JOIN (SELECT account_key, posted_xid, entry_no, amount FROM loyalty.mdf_accrual WHERE program_id = :mid) a
       USING (account_key, posted_xid, entry_no)
 WHERE l.mdf IS DISTINCT FROM a.amount;
SELECT count(*) AS wallets_differing
  FROM (SELECT account_key, sum(amount) AS mdf FROM loyalty.mdf_accrual WHERE program_id = :mid GROUP BY 1) e
  FULL JOIN (SELECT account_key, mdf FROM loyalty.balance WHERE program_id = :mid AND mdf <> 0) b USING (account_key)
 WHERE coalesce(e.mdf, 0) <> coalesce(b.mdf, 0);
SELECT count(*) AS findings FROM loyalty.verify('MDF Club');
