--
-- citus_read: the reading and per-account API on a distributed layout (runs
-- after citus_distribute, in the same database: loyalty is distributed).
-- Every function called here routes queries to an account's shard; none may
-- call, inside such a query, a function that reads a loyalty table by name
-- (a distributed query nested in a shard query, which Citus refuses).
-- Expected figures come from the ERP rows, in plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';

CREATE TABLE erp.rsales (invoice_id bigint NOT NULL, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                         invoice_date date NOT NULL, PRIMARY KEY (customer, invoice_id));
SELECT create_distributed_table('erp.rsales', 'customer', colocate_with => 'loyalty.account');

-- a ladder on a rolling window of six months, benefits on its tiers
SELECT loyalty.create_program('Read Club', ladder => 'Member:0, Silver:3000, Gold:8000',
                              qualification_window => '6 months', point_lifetime => '24 months') > 0 AS created;
SELECT loyalty.set_benefit('Read Club', 'Silver', 'payment_terms_days', '45');
SELECT loyalty.set_benefit('Read Club', 'Gold', 'payment_terms_days', '60');
SELECT loyalty.set_benefit('Read Club', 'Gold', 'priority_shipping', 'true');
SELECT loyalty.attach('erp.rsales', 'Read Club', account_column => 'customer',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;

-- 4,000 invoices of 300 customers over the last two years, dated from
-- today in the program's calendar
SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today,
       pg_catalog.date_trunc('month', (pg_catalog.now() AT TIME ZONE p.time_zone)::date) - interval '5 months' AS win_start
  FROM loyalty.program p WHERE p.name = 'Read Club' \gset
INSERT INTO erp.rsales
SELECT g, 'R-' || lpad((g % 300)::text, 3, '0'), 20 + (g * 37 % 4000) + (g % 100) / 100.0, DATE :'today' - (g * 7919 % 700)
  FROM generate_series(1, 4000) g;

-- What the ERP rows say, per customer: points (whole currency units),
-- lifetime and rolling qualifying spend, the ladder's tier of the latter.
CREATE TEMP TABLE expected AS
SELECT customer AS account_key, sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying,
       coalesce(sum(amount) FILTER (WHERE invoice_date >= DATE :'win_start'), 0) AS rolling
  FROM erp.rsales GROUP BY 1;
ALTER TABLE expected ADD COLUMN tier text;
UPDATE expected SET tier = CASE WHEN rolling >= 8000 THEN 'Gold' WHEN rolling >= 3000 THEN 'Silver' ELSE 'Member' END;
SELECT count(*) AS customers, count(DISTINCT tier) > 1 AS tiers_vary FROM expected;

-- balance() and tier() of every customer (the rolling window was refused:
-- "cannot execute a distributed query from a query on a shard")
SELECT count(*) AS balances_differing
  FROM expected e, LATERAL loyalty.balance('Read Club', e.account_key) b
 WHERE (b.points, b.qualifying, b.rolling_qualifying, b.tier) IS DISTINCT FROM (e.points, e.qualifying, e.rolling, e.tier);
SELECT count(*) AS tiers_differing
  FROM expected e WHERE loyalty.tier('Read Club', e.account_key) IS DISTINCT FROM e.tier;
-- a customer without invoices: zeros and the first tier
SELECT * FROM loyalty.balance('Read Club', 'R-none');

-- grant_tier and revoke_tier (the account's row and its history, written
-- with values: "non-IMMUTABLE functions are not allowed in CASE")
SELECT loyalty.grant_tier('Read Club', account_key, 'Gold', 'key account')
  FROM expected WHERE account_key IN ('R-001', 'R-002', 'R-003');
SELECT loyalty.revoke_tier('Read Club', 'R-003') = (SELECT tier FROM expected WHERE account_key = 'R-003') AS back_to_ladder;
SELECT a.account_key, a.tier = CASE WHEN a.account_key = 'R-003' THEN e.tier ELSE 'Gold' END AS tier_as_granted
  FROM loyalty.account a JOIN expected e USING (account_key)
 WHERE a.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club')
   AND a.account_key IN ('R-001', 'R-002', 'R-003') ORDER BY 1;
SELECT count(DISTINCT account_key) AS accounts_with_history, min(change_no) AS first_change,
       bool_and(effective_from = DATE :'today' + 1) AS from_tomorrow
  FROM loyalty.tier_history
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club');

-- tier and balance as of a date (tier_history read by _tier_at, which Citus
-- could not plan as a SQL function: "could not create distributed plan")
SELECT loyalty.tier('Read Club', 'R-001', DATE :'today') AS today, loyalty.tier('Read Club', 'R-001', DATE :'today' + 1) AS tomorrow;
SELECT count(*) AS balances_as_of_differing
  FROM expected e, LATERAL loyalty.balance('Read Club', e.account_key, DATE :'today') b
 WHERE (b.points, b.qualifying, b.rolling_qualifying) IS DISTINCT FROM (e.points, e.qualifying, e.rolling)
    OR b.tier IS NOT NULL;
-- the granted tier counts in balance() from now on, above the ladder's
SELECT e.account_key, b.tier FROM expected e, LATERAL loyalty.balance('Read Club', e.account_key) b
 WHERE e.account_key IN ('R-001', 'R-002') ORDER BY 1;

-- benefits: the granted accounts' Gold benefits, nobody else's
SELECT * FROM loyalty.benefits('Read Club', 'R-001');
SELECT count(*) AS benefit_rows, count(*) FILTER (WHERE b.tier = 'Gold') AS gold_rows
  FROM expected e, LATERAL loyalty.benefits('Read Club', e.account_key) b WHERE e.account_key <> 'R-003';

-- account_status: one row per account, its balances and window as the ERP
-- rows say ("cannot push down this subquery")
-- (the view's rows copied first: a temporary table joins no distributed one)
CREATE TEMP TABLE status AS SELECT * FROM loyalty.account_status WHERE program = 'Read Club';
CREATE TEMP TABLE last_invoice AS SELECT customer AS account_key, max(invoice_date) AS last FROM erp.rsales GROUP BY 1;
SELECT count(*) AS accounts, count(*) FILTER (WHERE (s.points, s.qualifying, s.rolling_qualifying)
                                              IS DISTINCT FROM (e.points, e.qualifying, e.rolling)) AS differing,
       count(*) FILTER (WHERE s.days_since_last_invoice IS DISTINCT FROM
                              DATE :'today' - (SELECT r.last FROM last_invoice r WHERE r.account_key = e.account_key)) AS days_differing,
       count(*) FILTER (WHERE s.next_tier IS DISTINCT FROM
                              CASE WHEN e.rolling >= 8000 THEN NULL WHEN e.rolling >= 3000 THEN 'Gold' ELSE 'Silver' END) AS next_differing
  FROM status s JOIN expected e USING (account_key);
SELECT count(*) AS status_rows FROM loyalty.account_status WHERE program = 'Read Club';

-- enroll: a new account with a segment, a segment change of an invoiced one
-- ("operator does not exist: text = boolean" from a CASE Citus evaluated)
SELECT loyalty.enroll('Read Club', 'R-new', cooperation_model => 'reseller');
SELECT loyalty.enroll('Read Club', 'R-010', region => 'north');
SELECT loyalty.enroll('Read Club', 'R-010', region => 'south');
SELECT account_key, cooperation_model, region FROM loyalty.account
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club')
   AND account_key IN ('R-new', 'R-010') ORDER BY 1;
SELECT account_key, region, valid_until = DATE :'today' + 1 AS until_tomorrow FROM loyalty.account_history
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club');

-- awards, approved and rejected ("non-IMMUTABLE functions are not allowed
-- in CASE or COALESCE statements")
SELECT loyalty.set_action_rule('Read Club', 'webinar', 50);
SELECT loyalty.set_action_rule('Read Club', 'training', 100, needs_approval => true, category => 'training');
SELECT loyalty.award('Read Club', 'R-020', 'webinar') IS NOT NULL AS awarded;
SELECT loyalty.award('Read Club', 'R-021', 'training') AS approve_me \gset
SELECT loyalty.award('Read Club', 'R-022', 'training') AS reject_me \gset
SELECT loyalty.approve_award(:'approve_me');
SELECT loyalty.reject_award(:'reject_me');
SELECT account_key, status, points, posted_xid IS NOT NULL AS posted FROM loyalty.award
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club') ORDER BY 1;
SELECT l.account_key, sum(l.points) AS award_points FROM loyalty.ledger l
 WHERE l.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club') AND l.kind = 'award'
 GROUP BY 1 ORDER BY 1;
-- a member's award also counts in the member's points (an upsert into
-- member_points: "functions used in the DO UPDATE SET clause of INSERTs on
-- distributed tables must be marked IMMUTABLE")
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT program_id, 'R-030', 'ann', 'Ann', 'champion' FROM loyalty.program WHERE name = 'Read Club';
SELECT loyalty.award('Read Club', 'R-030', 'webinar', member => 'ann', reference => 'w1') IS NOT NULL AS awarded;
SELECT loyalty.award('Read Club', 'R-030', 'webinar', member => 'ann', reference => 'w2') IS NOT NULL AS awarded;
SELECT member_id, points, earned, entry_count FROM loyalty.member_balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club') AND account_key = 'R-030';
SELECT b.points - e.points AS points_beyond_invoices, s.trainings_completed
  FROM loyalty.balance('Read Club', 'R-021') b, expected e, loyalty.account_status s
 WHERE e.account_key = 'R-021' AND s.program = 'Read Club' AND s.account_key = 'R-021';

-- the statement of the last closed quarter: points earned from the ERP
-- table by document date, and what the tier window measured
SELECT (date_trunc('quarter', DATE :'today') - interval '1 day')::date AS quarter_end,
       date_trunc('quarter', date_trunc('quarter', DATE :'today') - interval '1 day')::date AS quarter_start \gset
SELECT (SELECT value::bigint FROM loyalty.statement('Read Club', 'R-005', DATE :'quarter_end')
         WHERE section = 'points earned' AND item = 'erp.rsales') AS earned,
       (SELECT value::numeric FROM loyalty.statement('Read Club', 'R-005', DATE :'quarter_end')
         WHERE section = 'tier' AND item LIKE 'measure%') AS measure \gset
SELECT :earned = (SELECT sum(trunc(amount))::bigint FROM erp.rsales
                   WHERE customer = 'R-005' AND invoice_date BETWEEN DATE :'quarter_start' AND DATE :'quarter_end') AS earned_exact,
       :measure = (SELECT coalesce(sum(amount), 0) FROM erp.rsales
                    WHERE customer = 'R-005' AND invoice_date <= DATE :'quarter_end'
                      AND invoice_date >= date_trunc('month', DATE :'quarter_end') - interval '5 months') AS measure_exact;
SELECT count(*) > 0 AS statement_rows FROM loyalty.statement('Read Club', 'R-001', DATE :'quarter_end');

-- the other readers run on the distributed layout
-- expiring_points: nothing redeemed, so what the last cutoff of the next 90
-- days expires is every point of the months older than the lifetime then
-- (24 months before the cutoff's month; quarterly cutoffs)
CREATE TEMP TABLE expiring_expected AS
WITH c AS (SELECT max(c)::date AS cutoff
             FROM generate_series(date_trunc('quarter', DATE :'today') + interval '3 months',
                                  DATE :'today' + 90, interval '3 months') c)
SELECT r.customer AS account_key, sum(trunc(r.amount))::bigint AS points
  FROM erp.rsales r, c
 WHERE r.invoice_date < date_trunc('month', c.cutoff - interval '24 months')
 GROUP BY 1;
SELECT count(*) AS expiring_differing
  FROM (SELECT account_key, sum(points) AS points FROM loyalty.expiring_points('Read Club') GROUP BY 1) x
  FULL JOIN expiring_expected e USING (account_key)
 WHERE x.points IS DISTINCT FROM e.points;
SELECT (SELECT coalesce(sum(points), 0) FROM loyalty.expiring_points('Read Club', 'R-001'))
     = (SELECT coalesce(sum(points), 0) FROM expiring_expected WHERE account_key = 'R-001') AS expiring_for_one;
SELECT loyalty.pending_caps((SELECT program_id FROM loyalty.program WHERE name = 'Read Club'), 'R-001') AS pending_caps;
SELECT count(*) AS sales_rows_differing
  FROM (SELECT account_key, sum(revenue) AS revenue FROM loyalty.sales('Read Club') GROUP BY 1) s
  FULL JOIN (SELECT customer AS account_key, sum(amount) AS revenue FROM erp.rsales GROUP BY 1) e USING (account_key)
 WHERE s.revenue IS DISTINCT FROM e.revenue;
SELECT count(*) AS attachment_facts FROM loyalty.attachment_facts('Read Club');
-- an MDF claim runs on the account's node (citus_wallets): this program
-- credits no MDF, so the wallet is empty
SELECT loyalty.claim_mdf('Read Club', 'R-006', 10, 'ads');
SELECT count(*) AS benefit_rows FROM loyalty.account_benefits b JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'Read Club' AND b.tier IS NOT NULL;
SELECT count(*) AS month_rows_differing
  FROM (SELECT account_key, month, sum(qualifying) AS q FROM loyalty.accrual_month
         WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club') GROUP BY 1, 2) m
  FULL JOIN (SELECT customer AS account_key, date_trunc('month', invoice_date)::date AS month, sum(amount) AS q
               FROM erp.rsales GROUP BY 1, 2) e USING (account_key, month)
 WHERE m.q IS DISTINCT FROM e.q;
SELECT count(*) >= 0 AS churn_risk FROM loyalty.churn_risk;
SELECT count(*) >= 0 AS tier_movements FROM loyalty.tier_movements;
SELECT count(*) >= 0 AS leaderboard FROM loyalty.leaderboard;
SELECT count(*) >= 0 AS member_balance FROM loyalty.member_balance;
SELECT count(*) AS unenrolled FROM loyalty.unenrolled_activity u JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'Read Club';
SELECT count(*) > 0 AS kpi_rows FROM loyalty.kpi WHERE program = 'Read Club';

-- ROI on a pilot: its economics (upserts, as member_points above), cohorts
-- assigned by spend band, the estimate over every cohort account ("cannot
-- push down subquery on the target list")
SELECT (loyalty.set_roi_economics('Read Club', cost_per_point => 0.01)).cost_per_point;
SELECT (loyalty.set_roi_economics('Read Club', default_margin_rate => 0.25)).cost_per_point;
SELECT loyalty.set_margin_rate('Read Club', 'solar', 0.3);
SELECT loyalty.set_margin_rate('Read Club', 'solar', 0.35);
SELECT product_line, rate FROM loyalty.margin_rate WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'Read Club');
SELECT count(*) > 0 AS bands FROM loyalty.assign_cohorts('Read Club', 0.5, seed => 7,
                                                     pre => daterange(DATE :'today' - 600, DATE :'today' - 300));
SELECT r.pilot_accounts + r.control_accounts
     = (SELECT count(*) FROM loyalty.account a JOIN loyalty.program p USING (program_id)
         WHERE p.name = 'Read Club' AND a.cohort IS NOT NULL) AS every_cohort_account,
       r.measured_on, r.points_cost > 0 AS points_cost
  FROM loyalty.roi('Read Club', daterange(DATE :'today' - 600, DATE :'today' - 300),
                   daterange(DATE :'today' - 300, DATE :'today')) r;

-- a ladder of action counts: revoke_tier and statement measure the
-- window's approved actions (_action_counts, planned by Citus as PL/pgSQL)
SELECT loyalty.create_program('Action Club', ladder => 'Basic:0, Pro:2') > 0 AS created;
SELECT loyalty.set_action_rule('Action Club', 'cert', 10, category => 'certification');
SELECT loyalty.set_tier_rules('Action Club', basis => 'action', action => 'cert');
SELECT loyalty.enroll('Action Club', account_key) FROM (VALUES ('A-1'), ('A-2')) k(account_key);
SELECT loyalty.award('Action Club', 'A-1', 'cert', quantity => 2) IS NOT NULL AS awarded;
SELECT loyalty.award('Action Club', 'A-2', 'cert') IS NOT NULL AS awarded;
SELECT loyalty.grant_tier('Action Club', account_key, 'Pro') FROM (VALUES ('A-1'), ('A-2')) k(account_key);
SELECT loyalty.revoke_tier('Action Club', 'A-1') AS a1, loyalty.revoke_tier('Action Club', 'A-2') AS a2;
SELECT item, value FROM loyalty.statement('Action Club', 'A-2', (date_trunc('quarter', DATE :'today') + interval '3 months - 1 day')::date)
 WHERE section = 'tier' AND item LIKE 'measure%';

-- a reader reads one account
CREATE ROLE citus_reader LOGIN IN ROLE loyalty_reader;     -- Citus connects to the workers as it
SET ROLE citus_reader;
SELECT points AS reader_points, tier AS reader_tier FROM loyalty.balance('Read Club', 'R-007') \gset
RESET ROLE;
DROP ROLE citus_reader;
SELECT :reader_points - points AS beyond_invoices, :'reader_tier' = tier AS same_tier FROM expected WHERE account_key = 'R-007';
