--
-- citus_settle_actions: settlement of tiers qualified on action counts on
-- loyalty's distributed layout (runs after citus_distribute, in the same
-- database).  A ladder of approved certifications, and a ladder of spend
-- whose top tier also requires two approved trainings: settlement counts
-- the actions of the window in the statement Citus pushes down, per shard.
-- Expected tiers come from the awards and the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

-- 1. A ladder of action counts: Silver from 2 certifications, Gold from 5
SELECT loyalty.create_program('Cert Club', ladder => 'Silver:2, Gold:5', qualification_window => '3 months') AS cid \gset
SELECT loyalty.set_action_rule('Cert Club', 'cert', 10, valid_from => '2024-01-01');
SELECT loyalty.set_tier_rules('Cert Club', basis => 'action', action => 'cert');
SELECT count(loyalty.enroll('Cert Club', 'K-' || lpad(g::text, 3, '0'))) AS enrolled FROM generate_series(0, 299) g;
-- 0 to 7 certifications each in Q1 2025, some of them counted twice
-- (quantity 2), and some in December 2024 (outside the window)
SELECT count(loyalty.award('Cert Club', 'K-' || lpad((g % 300)::text, 3, '0'), 'cert',
                           occurred_on => DATE '2024-12-01' + (g * 7) % 120, quantity => 1 + (g % 5 = 0)::int)) AS awards
  FROM generate_series(1, 2400) g WHERE (g * 13) % 17 < 9;
CREATE TEMP TABLE cert_expected AS
SELECT 'K-' || lpad(g::text, 3, '0') AS account_key, coalesce(c.n, 0) AS n,
       CASE WHEN c.n >= 5 THEN 'Gold' WHEN c.n >= 2 THEN 'Silver' END AS tier
  FROM generate_series(0, 299) g
  LEFT JOIN (SELECT 'K-' || lpad((g % 300)::text, 3, '0') AS account_key, sum(1 + (g % 5 = 0)::int) AS n
               FROM generate_series(1, 2400) g
              WHERE (g * 13) % 17 < 9 AND DATE '2024-12-01' + (g * 7) % 120 BETWEEN '2025-01-01' AND '2025-03-31'
              GROUP BY 1) c ON c.account_key = 'K-' || lpad(g::text, 3, '0');
SELECT count(*) FILTER (WHERE tier = 'Gold') > 0 AS some_gold, count(*) FILTER (WHERE tier = 'Silver') > 0 AS some_silver,
       count(*) FILTER (WHERE tier IS NULL) > 0 AS some_none
  FROM cert_expected;
SELECT r.status, r.tiers_up = (SELECT count(*) FROM cert_expected WHERE tier IS NOT NULL) AS ups_exact
  FROM loyalty.settle('Cert Club', '2025-03-31') r;
SELECT count(*) AS accounts_differing
  FROM cert_expected e
  FULL JOIN (SELECT account_key, measure, new_tier FROM loyalty.settlement_account
              WHERE program_id = :cid AND period_end = '2025-03-31') s USING (account_key)
 WHERE s.measure IS DISTINCT FROM e.n OR s.new_tier IS DISTINCT FROM e.tier;
SELECT count(*) AS tiers_differing
  FROM cert_expected e JOIN loyalty.account a ON a.program_id = :cid AND a.account_key = e.account_key
 WHERE a.tier IS DISTINCT FROM e.tier;

-- 2. A ladder of spend whose Gold also requires 2 approved trainings (a
-- training needs approval: some are approved, some rejected, some left
-- pending; only the approved count)
CREATE TABLE erp.req_orders (order_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                             order_date date NOT NULL, PRIMARY KEY (customer, order_id));
SELECT create_distributed_table('erp.req_orders', 'customer', colocate_with => 'loyalty.account');
SELECT loyalty.create_program('Req Club', ladder => 'Silver:1000, Gold:3000', qualification_window => '3 months') AS qid \gset
SELECT loyalty.attach('erp.req_orders', 'Req Club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'order_date') > 0 AS attached;
SELECT loyalty.set_action_rule('Req Club', 'training', 0, needs_approval => true, valid_from => '2024-01-01');
SELECT loyalty.set_tier_requirement('Req Club', 'Gold', 'training', 2);
INSERT INTO erp.req_orders SELECT g, 'Q-' || lpad((g % 200)::text, 3, '0'), 10 + (g % 200) * 0.4 + (g * 17) % 50,
                                  DATE '2025-01-01' + (g * 5) % 90
  FROM generate_series(1, 6000) g;
CREATE TEMP TABLE trainings AS
SELECT g, 'Q-' || lpad((g * 7 % 200)::text, 3, '0') AS account_key, DATE '2025-01-01' + (g * 11) % 90 AS occurred_on,
       CASE WHEN g % 4 = 0 THEN 'rejected' WHEN g % 4 = 1 THEN 'pending' ELSE 'approved' END AS decision
  FROM generate_series(1, 400) g;
ALTER TABLE trainings ADD COLUMN award_id uuid;
UPDATE trainings SET award_id = loyalty.award('Req Club', account_key, 'training', occurred_on => occurred_on);
SELECT count(loyalty.approve_award(award_id)) AS approved FROM trainings WHERE decision = 'approved';
SELECT count(loyalty.reject_award(award_id)) AS rejected FROM trainings WHERE decision = 'rejected';
CREATE TEMP TABLE req_expected AS
SELECT o.customer AS account_key, o.spend,
       CASE WHEN o.spend >= 3000 AND coalesce(t.n, 0) >= 2 THEN 'Gold' WHEN o.spend >= 1000 THEN 'Silver' END AS tier
  FROM (SELECT customer, sum(amount) AS spend FROM erp.req_orders GROUP BY 1) o
  LEFT JOIN (SELECT account_key, count(*) AS n FROM trainings WHERE decision = 'approved' GROUP BY 1) t
         ON t.account_key = o.customer;
SELECT count(*) FILTER (WHERE tier = 'Gold') > 0 AS some_gold,
       count(*) FILTER (WHERE tier = 'Silver' AND spend >= 3000) > 0 AS some_held_back_by_training
  FROM req_expected;
SELECT r.status FROM loyalty.settle('Req Club', '2025-03-31') r;
SELECT count(*) AS accounts_differing
  FROM req_expected e
  FULL JOIN (SELECT account_key, measure, new_tier FROM loyalty.settlement_account
              WHERE program_id = :qid AND period_end = '2025-03-31') s USING (account_key)
 WHERE s.measure IS DISTINCT FROM e.spend OR s.new_tier IS DISTINCT FROM e.tier;

