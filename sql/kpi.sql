--
-- kpi: the views a BI tool reads (loyalty.kpi, loyalty.account_status,
-- loyalty.tier_movements, loyalty.churn_risk), each checked against a plain
-- SQL computation over the same ERP rows and ledger, written independently
-- of the views (other joins, other groupings).  Figures that depend on
-- today's date are compared, not printed.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA kpi_t;
CREATE TABLE kpi_t.invoice (invoice_id bigint PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                            product_line text NOT NULL, doc_type text NOT NULL DEFAULT 'INV',
                            amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('kpi', ladder => 'Member:0, Silver:5000, Gold:20000', enrollment => 'explicit') > 0 AS created;
SELECT loyalty.attach('kpi_t.invoice', 'kpi', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', product_line_column => 'product_line',
                      doc_type_column => 'doc_type', credit_note_types => '{CRN}') > 0 AS attached;
-- 400 accounts in three segments, a potential spend for most.  Customer 9999
-- buys without being enrolled (segment and cohort none).
SELECT count(loyalty.enroll('kpi', i::text, cooperation_model => (ARRAY['direct', 'distributor', 'reseller'])[1 + i % 3],
                            potential_spend => CASE WHEN i % 7 <> 0 THEN 20000 + 100 * (i % 50) END,
                            enrolled_from => '2000-01-01'))
FROM generate_series(1, 400) i;
SELECT sum(accounts) AS accounts FROM loyalty.assign_cohorts('kpi', 0.5, 11, pre => daterange('2024-01-01', '2025-01-01'));

-- Two years of invoices: each account buys in a month with a probability of
-- its own; some start late, some stop early; the product lines it buys
-- widen over time (cross-sell); a credit note now and then.  Hash-based.
CREATE FUNCTION kpi_t.u(k text) RETURNS numeric LANGUAGE sql IMMUTABLE
RETURN (hashtextextended(k, 18) & 4294967295)::numeric / 4294967296;
INSERT INTO kpi_t.invoice
SELECT row_number() OVER (ORDER BY i, m), i, (date '2024-01-01' + make_interval(months => m))::date + (i % 25),
       (ARRAY['TOOLS', 'CABLE', 'SERVICE', 'LIGHT'])[1 + floor(kpi_t.u('pl' || i || ':' || m) * least(4, 1 + m / 6))::int],
       CASE WHEN kpi_t.u('crn' || i || ':' || m) < 0.05 THEN 'CRN' ELSE 'INV' END,
       round(100 + 900 * kpi_t.u('amt' || i || ':' || m) * (1 + kpi_t.u('size' || i) * 3), 2)
FROM generate_series(1, 400) i, generate_series(0, 23) m
WHERE kpi_t.u('buy' || i || ':' || m) < 0.3 + 0.6 * kpi_t.u('freq' || i)
  AND m >= floor(kpi_t.u('start' || i) * 4)::int * 3
  AND m < 24 - floor(kpi_t.u('stop' || i) * 4)::int * 3;
INSERT INTO kpi_t.invoice VALUES (900000, 9999, '2025-05-05', 'TOOLS', 'INV', 1234.56);
-- redemptions and awards, posted today
SELECT count(loyalty._post(p.program_id, a.account_key, 'redeem', -100, 'voucher'))
FROM loyalty.account a JOIN loyalty.program p USING (program_id)
WHERE p.name = 'kpi' AND a.account_key::int % 9 = 0 AND (SELECT b.points FROM loyalty.balance b
                                                          WHERE b.program_id = a.program_id AND b.account_key = a.account_key) >= 100;
SELECT count(loyalty._post(p.program_id, a.account_key, 'award', 50, 'training'))
FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name = 'kpi' AND a.account_key::int % 11 = 0;
SELECT loyalty.fold('kpi') IS NOT NULL AS folded;

--
-- 1. loyalty.kpi, first the figures for one group, then every group of
-- every quarter against plain SQL.  (Read once: the view reads the ERP rows
-- of every program in the database.)
--
CREATE TEMP TABLE k AS SELECT * FROM loyalty.kpi WHERE program = 'kpi';
SELECT quarter, active_accounts, previously_active, retained_accounts, account_retention, revenue,
       gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet, clv_estimate
FROM k WHERE segment = 'distributor' AND cohort = 'pilot' AND quarter < '2026-01-01' ORDER BY quarter;
SELECT quarter, segment, cohort, active_accounts, revenue
FROM k WHERE segment = 'none';

-- The same, independently: per customer and quarter from the invoice table;
-- "active before" looked up with EXISTS on the previous quarter's rows.
CREATE TEMP TABLE cq AS
SELECT i.customer_id::text AS account_key, date_trunc('quarter', i.invoice_date)::date AS quarter,
       sum(CASE WHEN i.doc_type = 'CRN' THEN -i.amount ELSE i.amount END) AS revenue
FROM kpi_t.invoice i GROUP BY 1, 2;
CREATE TEMP TABLE expect AS
WITH quarters AS (SELECT DISTINCT quarter FROM cq),
acct AS (SELECT a.account_key, coalesce(a.cooperation_model, 'none') AS segment, coalesce(a.cohort, 'none') AS cohort,
                a.potential_spend
         FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name = 'kpi'
         UNION ALL SELECT '9999', 'none', 'none', NULL),
pairs AS (
    SELECT a.*, q.quarter,
           coalesce((SELECT c.revenue FROM cq c WHERE c.account_key = a.account_key AND c.quarter = q.quarter), 0) AS now,
           coalesce((SELECT c.revenue FROM cq c WHERE c.account_key = a.account_key
                     AND c.quarter = (q.quarter - interval '3 months')::date), 0) AS before,
           EXISTS (SELECT FROM kpi_t.invoice i WHERE i.customer_id::text = a.account_key
                   AND date_trunc('quarter', i.invoice_date) = q.quarter
                   AND i.doc_type = 'INV'
                   AND NOT EXISTS (SELECT FROM kpi_t.invoice j WHERE j.customer_id = i.customer_id
                                   AND j.product_line = i.product_line AND j.doc_type = 'INV'
                                   AND date_trunc('quarter', j.invoice_date) < q.quarter)
                   AND EXISTS (SELECT FROM kpi_t.invoice j WHERE j.customer_id = i.customer_id AND j.doc_type = 'INV'
                               AND date_trunc('quarter', j.invoice_date) < q.quarter)) AS new_line
    FROM acct a CROSS JOIN quarters q)
SELECT quarter, segment, cohort,
       count(*) FILTER (WHERE now > 0) AS active_accounts,
       count(*) FILTER (WHERE before > 0) AS previously_active,
       count(*) FILTER (WHERE now > 0 AND before > 0) AS retained_accounts,
       sum(now) AS revenue,
       round(sum(least(greatest(now, 0), before)) FILTER (WHERE before > 0) / nullif(sum(before) FILTER (WHERE before > 0), 0), 4) AS grr,
       round(sum(now) FILTER (WHERE before > 0) / nullif(sum(before) FILTER (WHERE before > 0), 0), 4) AS nrr,
       count(*) FILTER (WHERE before > 0 AND now > before) AS expansion_accounts,
       count(*) FILTER (WHERE now > 0 AND new_line) AS cross_sell_accounts,
       round(4 * sum(now) FILTER (WHERE now > 0 AND potential_spend > 0)
             / nullif(sum(potential_spend) FILTER (WHERE now > 0 AND potential_spend > 0), 0), 4) AS sow,
       round(sum(now) FILTER (WHERE now > 0) / nullif(count(*) FILTER (WHERE now > 0), 0)
             / nullif(1 - count(*) FILTER (WHERE now > 0 AND before > 0)::numeric / nullif(count(*) FILTER (WHERE before > 0), 0), 0), 2) AS clv
FROM pairs GROUP BY 1, 2, 3
HAVING count(*) FILTER (WHERE now <> 0 OR before <> 0) > 0;
-- every group and figure: rows of either side missing from the other
(SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet, clv_estimate
 FROM k WHERE (active_accounts > 0 OR previously_active > 0)
 EXCEPT
 SELECT * FROM expect)
UNION ALL
(SELECT * FROM expect
 EXCEPT
 SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet, clv_estimate
 FROM k);
SELECT count(*) AS groups FROM expect;

-- Margin: without rates, the revenue itself.
SELECT bool_and(margin = revenue) AS margin_is_revenue_without_rates FROM k;
-- Points earned and redeemed, utilisation: from the ledger.
SELECT sum(points_earned) = (SELECT sum(l.points) FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
                             WHERE p.name = 'kpi' AND (l.kind IN ('earn', 'reverse', 'bonus', 'backfill', 'restate')
                                                       OR (l.kind IN ('award', 'adjust') AND l.points > 0))) AS earned_ok,
       sum(points_redeemed) = (SELECT -sum(l.points) FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
                               WHERE p.name = 'kpi' AND l.kind = 'redeem') AS redeemed_ok,
       bool_and(programme_utilisation IS NOT DISTINCT FROM round(points_redeemed / nullif(points_earned, 0), 4)) AS utilisation_ok
FROM k;

--
-- 2. loyalty.account_status: one row per enrolled account.
--
SELECT count(*) AS accounts, count(DISTINCT account_key) AS distinct_accounts
FROM loyalty.account_status WHERE program = 'kpi';
SELECT bool_and(s.points = (SELECT coalesce(sum(l.points), 0) FROM loyalty.ledger l
                            WHERE l.program_id = p.program_id AND l.account_key = s.account_key)) AS points_ok,
       bool_and(s.qualifying = (SELECT coalesce(sum(CASE WHEN i.doc_type = 'CRN' THEN -i.amount ELSE i.amount END), 0)
                                FROM kpi_t.invoice i WHERE i.customer_id::text = s.account_key)) AS qualifying_ok,
       -- the window: the 12 calendar months ending with this one
       bool_and(s.rolling_qualifying = (SELECT coalesce(sum(CASE WHEN i.doc_type = 'CRN' THEN -i.amount ELSE i.amount END), 0)
                                        FROM kpi_t.invoice i WHERE i.customer_id::text = s.account_key
                                          AND i.invoice_date >= date_trunc('month', current_date) - interval '11 months'
                                          AND i.invoice_date <= current_date)) AS rolling_ok,
       bool_and(s.gap_to_next_tier IS NOT DISTINCT FROM
                CASE WHEN s.rolling_qualifying < 5000 THEN 5000 - greatest(s.rolling_qualifying, 0)
                     WHEN s.rolling_qualifying < 20000 THEN 20000 - s.rolling_qualifying END) AS gap_ok,
       bool_and(s.last_invoice_date IS NOT DISTINCT FROM (SELECT max(i.invoice_date) FROM kpi_t.invoice i
                                                         WHERE i.customer_id::text = s.account_key)) AS last_invoice_ok,
       bool_and(s.days_since_last_invoice IS NOT DISTINCT FROM current_date - s.last_invoice_date) AS days_ok,
       bool_and(s.tier IS NOT DISTINCT FROM a.tier AND s.cohort IS NOT DISTINCT FROM a.cohort) AS tier_cohort_ok
FROM loyalty.account_status s JOIN loyalty.program p ON p.name = s.program
JOIN loyalty.account a ON a.program_id = p.program_id AND a.account_key = s.account_key
WHERE s.program = 'kpi';
SELECT account_key, cooperation_model, cohort, tier, points, qualifying, next_tier, last_invoice_date
FROM loyalty.account_status WHERE program = 'kpi' AND account_key IN ('1', '2', '3') ORDER BY account_key;

--
-- 3. loyalty.tier_movements against loyalty.tier_history.
--
SELECT direction, reason, sum(movements) AS movements FROM loyalty.tier_movements WHERE program = 'kpi'
GROUP BY 1, 2 ORDER BY 1, 2;
(SELECT month, old_tier, new_tier, reason, movements FROM loyalty.tier_movements WHERE program = 'kpi'
 EXCEPT
 SELECT date_trunc('month', h.effective_from)::date, h.old_tier, h.new_tier, h.reason, count(*)
 FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id) WHERE p.name = 'kpi' GROUP BY 1, 2, 3, 4)
UNION ALL
(SELECT date_trunc('month', h.effective_from)::date, h.old_tier, h.new_tier, h.reason, count(*)
 FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id) WHERE p.name = 'kpi' GROUP BY 1, 2, 3, 4
 EXCEPT
 SELECT month, old_tier, new_tier, reason, movements FROM loyalty.tier_movements WHERE program = 'kpi');

--
-- 4. loyalty.churn_risk against plain SQL.
--
SELECT count(*) AS customers,
       bool_and(c.usual_interval_days IS NOT DISTINCT FROM x.interval) AS interval_ok,
       bool_and(c.days_since_last_invoice = current_date - x.last) AS days_ok,
       bool_and(c.risk = CASE WHEN x.interval IS NULL THEN 'unknown'
                              WHEN current_date - x.last > 3 * x.interval THEN 'high'
                              WHEN current_date - x.last > 1.5 * x.interval THEN 'medium' ELSE 'low' END) AS risk_ok
FROM loyalty.churn_risk c
JOIN (SELECT customer_id::text AS account_key, max(invoice_date) AS last,
             round(nullif(max(invoice_date) - min(invoice_date), 0)::numeric / nullif(count(DISTINCT invoice_date) - 1, 0), 1) AS interval
      FROM kpi_t.invoice WHERE doc_type = 'INV' GROUP BY 1) x USING (account_key)
WHERE c.program = 'kpi';

--
-- 5. Who may read: the loyalty roles.  The views over ERP rows read them
-- with the reader's rights, and show the programs whose attached tables the
-- reader may read: none here, until the reader may read kpi_t.invoice.
--
SELECT count(*) AS groups FROM expect \gset
CREATE ROLE kpi_reader IN ROLE loyalty_reader;
SET ROLE kpi_reader;
SELECT count(*) > 0 AS reads_status FROM loyalty.account_status WHERE program = 'kpi';
SELECT count(*) AS kpi_rows FROM loyalty.kpi WHERE program = 'kpi';
SELECT count(*) AS churn_rows FROM loyalty.churn_risk WHERE program = 'kpi';
-- sales() itself refuses
\set VERBOSITY terse
SELECT count(*) FROM loyalty.sales('kpi');
\set VERBOSITY default
RESET ROLE;
GRANT USAGE ON SCHEMA kpi_t TO kpi_reader;
GRANT SELECT ON kpi_t.invoice TO kpi_reader;
SET ROLE kpi_reader;
SELECT count(*) = :groups AS reads_kpi FROM loyalty.kpi WHERE program = 'kpi' AND (active_accounts > 0 OR previously_active > 0);
RESET ROLE;
REVOKE ALL ON kpi_t.invoice FROM kpi_reader;
REVOKE ALL ON SCHEMA kpi_t FROM kpi_reader;
DROP ROLE kpi_reader;

--
-- 6. Training completion and advocacy: approved awards by the quarter the
-- action occurred in, classified by the action's category.  Awards over two
-- years and today, pending, approved and rejected, the accounts' and their
-- members'; compared with plain SQL over loyalty.award and this test's own
-- table of categories.
--
SELECT program_id AS pid FROM loyalty.program WHERE name = 'kpi' \gset
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT :pid, i::text, 'm' || i, 'Member ' || i, 'end_user' FROM generate_series(10, 400, 10) i;
-- categories: from the code when not given, or given
SELECT loyalty.set_action_rule('kpi', 'training_completed', 100);
SELECT loyalty.set_action_rule('kpi', 'certification', 500, needs_approval => true);
SELECT loyalty.set_action_rule('kpi', 'referral_signed', 1000, needs_approval => true);
SELECT loyalty.set_action_rule('kpi', 'product_review', 30);
SELECT loyalty.set_action_rule('kpi', 'lead_won', 200, needs_approval => true);
SELECT loyalty.set_action_rule('kpi', 'survey_answered', 10, cap_points => 20, cap_period => 'quarter');
SELECT loyalty.set_action_rule('kpi', 'startup_onboarded', 300);
SELECT loyalty.set_action_rule('kpi', 'webinar', 50);
SELECT loyalty.set_action_rule('kpi', 'partner_day', 40, category => 'other');
SELECT loyalty.set_action_rule('kpi', 'case_study', 80, category => 'review');
SELECT action, category FROM loyalty.action_rule WHERE program_id = :pid ORDER BY action;
-- an unknown category is refused
\set VERBOSITY terse
SELECT loyalty.set_action_rule('kpi', 'webinar', 50, category => 'party');
\set VERBOSITY default
CREATE TEMP TABLE cat (action text PRIMARY KEY, category text);
INSERT INTO cat VALUES ('training_completed', 'training'), ('certification', 'certification'),
  ('referral_signed', 'referral'), ('product_review', 'review'), ('lead_won', 'lead'), ('survey_answered', 'survey'),
  ('startup_onboarded', 'onboarding'), ('webinar', 'training'), ('partner_day', 'other'), ('case_study', 'review');
-- Each account does something in a month with a probability of its own;
-- a tenth of the events are its member's; a few events happen twice in a
-- month (quantity 2).
SELECT count(loyalty.award('kpi', i::text,
                           (ARRAY['training_completed', 'certification', 'referral_signed', 'product_review', 'lead_won',
                                  'survey_answered', 'startup_onboarded', 'webinar', 'partner_day', 'case_study'])
                               [1 + floor(kpi_t.u('act' || i || ':' || m) * 10)::int],
                           occurred_on => (date '2024-01-01' + make_interval(months => m))::date + (i * 7 + m) % 28,
                           member => CASE WHEN i % 10 = 0 AND kpi_t.u('mem' || i || ':' || m) < 0.5 THEN 'm' || i END,
                           reference => 'k' || i || ':' || m,
                           quantity => CASE WHEN kpi_t.u('qty' || i || ':' || m) < 0.1 THEN 2 ELSE 1 END)) AS awards
FROM generate_series(1, 400) i, generate_series(0, 23) m
WHERE kpi_t.u('does' || i || ':' || m) < 0.25 * kpi_t.u('keen' || i);
-- and some today
SELECT count(loyalty.award('kpi', i::text, 'training_completed', reference => 'today' || i)) AS awards_today
FROM generate_series(3, 400, 17) i;
-- decisions: most approved, some rejected, some left pending
SELECT count(loyalty.approve_award(w.award_id)) AS approved
FROM loyalty.award w WHERE w.program_id = :pid AND w.status = 'pending' AND kpi_t.u('ok' || w.reference) < 0.6;
SELECT count(loyalty.reject_award(w.award_id)) AS rejected
FROM loyalty.award w WHERE w.program_id = :pid AND w.status = 'pending' AND kpi_t.u('no' || w.reference) < 0.6;
-- webinars were counted as other until now: setting the category applies
-- to every version of the action, the past awards included
SELECT loyalty.set_action_rule('kpi', 'webinar', 50, category => 'training');
SELECT loyalty.set_action_rule('kpi', 'webinar', 60);
SELECT action, valid_from = '-infinity' AS first_version, category FROM loyalty.action_rule
WHERE program_id = :pid AND action = 'webinar' ORDER BY valid_from;
SELECT w.status, w.member_id IS NOT NULL AS by_member, c.category IN ('training', 'certification') AS training,
       c.category IN ('referral', 'review', 'survey', 'lead') AS advocacy, count(*) > 0 AS present
FROM loyalty.award w JOIN cat c USING (action) WHERE w.program_id = :pid
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;

CREATE TEMP TABLE k2 AS SELECT * FROM loyalty.kpi WHERE program = 'kpi';
-- the same, independently: approved events per account and quarter, with
-- their account's segment and cohort; active = revenue above 0 in cq
CREATE TEMP TABLE expect_act AS
WITH ev AS (
    SELECT w.account_key, date_trunc('quarter', w.occurred_on)::date AS quarter,
           sum(CASE WHEN c.category IN ('training', 'certification') THEN w.quantity ELSE 0 END) AS trainings,
           sum(CASE WHEN c.category IN ('referral', 'review', 'survey', 'lead') THEN w.quantity ELSE 0 END) AS advocacy
    FROM loyalty.award w JOIN cat c ON c.action = w.action
    WHERE w.program_id = :pid AND w.status = 'approved'
    GROUP BY 1, 2),
acct AS (SELECT a.account_key, coalesce(a.cooperation_model, 'none') AS segment, coalesce(a.cohort, 'none') AS cohort
         FROM loyalty.account a WHERE a.program_id = :pid),
active AS (SELECT c.account_key, c.quarter FROM cq c WHERE c.revenue > 0),
group_active AS (SELECT x.quarter, a.segment, a.cohort, count(*) AS n FROM active x JOIN acct a USING (account_key) GROUP BY 1, 2, 3)
SELECT e.quarter, a.segment, a.cohort,
       sum(e.trainings) AS trainings_completed,
       count(*) FILTER (WHERE e.trainings > 0) AS accounts_trained,
       round(count(*) FILTER (WHERE e.trainings > 0 AND x.account_key IS NOT NULL)::numeric / max(g.n), 4) AS trained_share,
       sum(e.advocacy) AS advocacy_actions,
       count(*) FILTER (WHERE e.advocacy > 0) AS advocating_accounts,
       round(count(*) FILTER (WHERE e.advocacy > 0 AND x.account_key IS NOT NULL)::numeric / max(g.n), 4) AS advocacy_share
FROM ev e JOIN acct a USING (account_key)
LEFT JOIN active x ON x.account_key = e.account_key AND x.quarter = e.quarter
LEFT JOIN group_active g ON g.quarter = e.quarter AND g.segment = a.segment AND g.cohort = a.cohort
GROUP BY 1, 2, 3
HAVING sum(e.trainings) > 0 OR sum(e.advocacy) > 0;
-- every group with trainings or advocacy: rows of either side missing from the other
(SELECT quarter, segment, cohort, trainings_completed, accounts_trained, trained_share,
        advocacy_actions, advocating_accounts, advocacy_share
 FROM k2 WHERE trainings_completed > 0 OR advocacy_actions > 0
 EXCEPT SELECT * FROM expect_act)
UNION ALL
(SELECT * FROM expect_act
 EXCEPT
 SELECT quarter, segment, cohort, trainings_completed, accounts_trained, trained_share,
        advocacy_actions, advocating_accounts, advocacy_share FROM k2);
SELECT count(*) AS groups, count(DISTINCT quarter) AS quarters, sum(trainings_completed) AS trainings,
       sum(advocacy_actions) AS advocacy, count(*) FILTER (WHERE trained_share IS NULL) AS groups_without_active
FROM expect_act;
-- the other groups: nothing, and a share of 0 (NULL without active accounts)
SELECT count(*) AS other_groups,
       bool_and(accounts_trained = 0 AND advocating_accounts = 0 AND advocacy_actions = 0
                AND trained_share IS NOT DISTINCT FROM CASE WHEN active_accounts > 0 THEN 0 END
                AND advocacy_share IS NOT DISTINCT FROM CASE WHEN active_accounts > 0 THEN 0 END) AS zero
FROM k2 WHERE NOT (trainings_completed > 0 OR advocacy_actions > 0);
-- the figures of the first sections do not move with the awards (the
-- points they post are today's)
(SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue, margin,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet,
        points_earned, points_redeemed, clv_estimate
 FROM k WHERE quarter < '2026-01-01' EXCEPT
 SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue, margin,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet,
        points_earned, points_redeemed, clv_estimate
 FROM k2 WHERE quarter < '2026-01-01' AND (active_accounts > 0 OR previously_active > 0 OR points_earned > 0))
UNION ALL
(SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue, margin,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet,
        points_earned, points_redeemed, clv_estimate
 FROM k2 WHERE quarter < '2026-01-01' AND (active_accounts > 0 OR previously_active > 0 OR points_earned > 0) EXCEPT
 SELECT quarter, segment, cohort, active_accounts, previously_active, retained_accounts, revenue, margin,
        gross_revenue_retention, net_revenue_retention, expansion_accounts, cross_sell_accounts, share_of_wallet,
        points_earned, points_redeemed, clv_estimate
 FROM k WHERE quarter < '2026-01-01');
-- a pending award approved now counts in the quarter the action occurred
SELECT w.award_id AS late, date_trunc('quarter', w.occurred_on)::date AS late_q, a.cooperation_model AS late_seg,
       coalesce(a.cohort, 'none') AS late_cohort, w.quantity AS late_qty
FROM loyalty.award w JOIN loyalty.account a USING (program_id, account_key)
WHERE w.program_id = :pid AND w.status = 'pending' AND w.action = 'certification'
ORDER BY w.account_key, w.award_no LIMIT 1 \gset
SELECT trainings_completed AS before_qty FROM k2
WHERE quarter = :'late_q' AND segment = :'late_seg' AND cohort = :'late_cohort' \gset
SELECT loyalty.approve_award(:'late');
SELECT trainings_completed - :before_qty = :late_qty AS counted_in_its_quarter FROM loyalty.kpi
WHERE program = 'kpi' AND quarter = :'late_q' AND segment = :'late_seg' AND cohort = :'late_cohort';

-- account_status: trainings and certifications of all time
SELECT count(*) AS accounts,
       bool_and(s.trainings_completed = coalesce(x.trainings, 0)) AS trainings_ok,
       bool_and(s.certifications = coalesce(x.certifications, 0)) AS certifications_ok,
       sum(s.trainings_completed) > 0 AND sum(s.certifications) > 0 AS some
FROM loyalty.account_status s
LEFT JOIN (SELECT w.account_key,
                  sum(w.quantity) FILTER (WHERE c.category IN ('training', 'certification')) AS trainings,
                  sum(w.quantity) FILTER (WHERE c.category = 'certification') AS certifications
           FROM loyalty.award w JOIN cat c USING (action)
           WHERE w.program_id = :pid AND w.status = 'approved' GROUP BY 1) x USING (account_key)
WHERE s.program = 'kpi';

-- a reader who may read the invoices reads the same figures
CREATE ROLE kpi_reader2 IN ROLE loyalty_reader;
GRANT USAGE ON SCHEMA kpi_t TO kpi_reader2;
GRANT SELECT ON kpi_t.invoice TO kpi_reader2;
SET ROLE kpi_reader2;
SELECT sum(trainings_completed) AS reader_trainings, sum(advocacy_actions) AS reader_advocacy
FROM loyalty.kpi WHERE program = 'kpi';
RESET ROLE;
SELECT sum(w.quantity) FILTER (WHERE c.category IN ('training', 'certification')) AS trainings,
       sum(w.quantity) FILTER (WHERE c.category IN ('referral', 'review', 'survey', 'lead')) AS advocacy
FROM loyalty.award w JOIN cat c USING (action) WHERE w.program_id = :pid AND w.status = 'approved';
REVOKE ALL ON kpi_t.invoice FROM kpi_reader2;
REVOKE ALL ON SCHEMA kpi_t FROM kpi_reader2;
DROP ROLE kpi_reader2;

SELECT * FROM loyalty.verify('kpi');
