
-- ---------------------------------------------------------------------------
-- KPI views for BI tools (SCENARIOS.md 18): one row per account to start
-- from, tier movements, churn risk, and the quarterly KPIs by segment and
-- cohort.  The views read as their reader (security_invoker), so that
-- row-level security on loyalty's tables applies to whoever reads them;
-- functions a view calls are checked against its reader too, so these call
-- no internal function; the ones over ERP rows (loyalty.sales()) read them
-- with the reader's rights.
-- ---------------------------------------------------------------------------

-- loyalty.account_status, the one row per account a BI tool starts from, is
-- in src/sql/80_partner.sql: it reads cohort and potential spend through
-- loyalty.account_private, which shows a partner's login nothing.

CREATE VIEW @extschema@.tier_movements WITH (security_invoker = true) AS
SELECT p.name AS program, pg_catalog.date_trunc('month', h.effective_from::timestamp)::date AS month,
       h.old_tier, h.new_tier,
       CASE WHEN h.old_tier IS NULL THEN 'entry'
            WHEN h.new_tier IS NULL THEN 'exit'
            WHEN o.rank OPERATOR(pg_catalog.<) n.rank THEN 'upgrade'
            ELSE 'downgrade' END AS direction,
       h.reason, pg_catalog.count(*) AS movements
FROM @extschema@.tier_history h
JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) h.program_id
LEFT JOIN LATERAL @extschema@.tiers(p.ladder) o ON o.name OPERATOR(pg_catalog.=) h.old_tier
LEFT JOIN LATERAL @extschema@.tiers(p.ladder) n ON n.name OPERATOR(pg_catalog.=) h.new_tier
GROUP BY 1, 2, 3, 4, 5, 6;
COMMENT ON VIEW @extschema@.tier_movements IS 'Tier changes per program, month (of the date they took effect), from and to tier, and reason: the movement matrix of a QBR.';
COMMENT ON COLUMN @extschema@.tier_movements.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.tier_movements.month IS 'First day of the month the changes took effect.';
COMMENT ON COLUMN @extschema@.tier_movements.old_tier IS 'Tier before (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_movements.new_tier IS 'Tier after (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_movements.direction IS 'entry (from no tier), exit (to no tier), upgrade or downgrade (by the ladder''s order).';
COMMENT ON COLUMN @extschema@.tier_movements.reason IS 'upgrade_on_accrual, requalification or manual.';
COMMENT ON COLUMN @extschema@.tier_movements.movements IS 'How many changes.';

-- Per account, today: the days since its last document against its own
-- usual interval between documents (the mean gap between its document
-- dates).  As the reader: it reads the ERP rows through loyalty.sales().
CREATE VIEW @extschema@.churn_risk WITH (security_invoker = true) AS
SELECT x.program, x.account_key, x.first_invoice_date, x.last_invoice_date, x.invoice_days,
       x.usual_interval_days, x.days_since_last_invoice,
       pg_catalog.round(x.days_since_last_invoice::numeric OPERATOR(pg_catalog./) x.usual_interval_days, 2) AS overdue_ratio,
       CASE WHEN x.usual_interval_days IS NULL THEN 'unknown'
            WHEN x.days_since_last_invoice OPERATOR(pg_catalog.>) (3 OPERATOR(pg_catalog.*) x.usual_interval_days) THEN 'high'
            WHEN x.days_since_last_invoice OPERATOR(pg_catalog.>) (1.5 OPERATOR(pg_catalog.*) x.usual_interval_days) THEN 'medium'
            ELSE 'low' END AS risk
FROM (SELECT p.name AS program, s.account_key, pg_catalog.min(s.doc_date) AS first_invoice_date,
             pg_catalog.max(s.doc_date) AS last_invoice_date, pg_catalog.count(DISTINCT s.doc_date) AS invoice_days,
             CASE WHEN pg_catalog.count(DISTINCT s.doc_date) OPERATOR(pg_catalog.>) 1
                  THEN pg_catalog.round((pg_catalog.max(s.doc_date) OPERATOR(pg_catalog.-) pg_catalog.min(s.doc_date))::numeric
                                        OPERATOR(pg_catalog./) (pg_catalog.count(DISTINCT s.doc_date) OPERATOR(pg_catalog.-) 1), 1) END
                 AS usual_interval_days,
             (pg_catalog.now() AT TIME ZONE p.time_zone)::date OPERATOR(pg_catalog.-) pg_catalog.max(s.doc_date) AS days_since_last_invoice
      FROM @extschema@.program p CROSS JOIN LATERAL @extschema@.sales(p.name) s
      WHERE s.revenue OPERATOR(pg_catalog.>) 0
        -- the programs whose ERP tables the reader may read
        AND NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')))
      GROUP BY p.name, p.time_zone, s.account_key) x;
COMMENT ON VIEW @extschema@.churn_risk IS 'Churn risk per customer today: days since the last invoice against the customer''s own usual interval between invoices. Reads the ERP rows with the reader''s rights (loyalty.sales()): it shows the programs whose attached tables the reader may read.';
COMMENT ON COLUMN @extschema@.churn_risk.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.churn_risk.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.churn_risk.first_invoice_date IS 'First document date with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.last_invoice_date IS 'Latest document date with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.invoice_days IS 'Distinct document dates with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.usual_interval_days IS 'Mean days between those dates: (last - first) / (invoice_days - 1); NULL with one date.';
COMMENT ON COLUMN @extschema@.churn_risk.days_since_last_invoice IS 'Days from the latest document to today (the program''s calendar).';
COMMENT ON COLUMN @extschema@.churn_risk.overdue_ratio IS 'days_since_last_invoice / usual_interval_days.';
COMMENT ON COLUMN @extschema@.churn_risk.risk IS 'high (more than 3 usual intervals since the last invoice), medium (more than 1.5), low, or unknown (one invoice date only).';

-- Quarterly KPIs by program, segment (cooperation model) and cohort, the
-- accounts grouped by their current segment and cohort.  An account is
-- active in a quarter with revenue above 0; retention compares a quarter
-- with the one before.  Revenue and margin come from the ERP rows
-- (loyalty.sales(), as the reader), points from the ledger.
CREATE VIEW @extschema@.kpi WITH (security_invoker = true) AS
WITH s AS (
    SELECT p.program_id, x.account_key, pg_catalog.date_trunc('quarter', x.doc_date::timestamp)::date AS quarter,
           x.product_line, x.revenue, x.margin
    FROM @extschema@.program p CROSS JOIN LATERAL @extschema@.sales(p.name) x
    -- the programs whose ERP tables the reader may read
    WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')))),
aq AS (
    SELECT s.program_id, s.account_key, s.quarter, pg_catalog.sum(s.revenue) AS revenue, pg_catalog.sum(s.margin) AS margin
    FROM s GROUP BY 1, 2, 3),
last_q AS (SELECT aq.program_id, pg_catalog.max(aq.quarter) AS quarter FROM aq GROUP BY 1),
-- an account buys a product line for the first time, after earlier purchases
first_buy AS (SELECT s.program_id, s.account_key, pg_catalog.min(s.quarter) AS quarter FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 GROUP BY 1, 2),
cross_sold AS (
    SELECT DISTINCT l.program_id, l.account_key, l.quarter
    FROM (SELECT s.program_id, s.account_key, s.product_line, pg_catalog.min(s.quarter) AS quarter
          FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 AND s.product_line IS NOT NULL GROUP BY 1, 2, 3) l
    JOIN first_buy f ON f.program_id OPERATOR(pg_catalog.=) l.program_id AND f.account_key OPERATOR(pg_catalog.=) l.account_key
    WHERE l.quarter OPERATOR(pg_catalog.>) f.quarter),
pts AS (
    SELECT m.program_id, m.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', m.month::timestamp)::date AS quarter,
           pg_catalog.sum(m.points) AS earned, 0::numeric AS redeemed
    FROM @extschema@.accrual_month m GROUP BY 1, 2, 3
    UNION ALL
    SELECT l.program_id, l.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', l.posted_at AT TIME ZONE p.time_zone)::date,
           pg_catalog.sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points OPERATOR(pg_catalog.>) 0),
           OPERATOR(pg_catalog.-) pg_catalog.sum(l.points) FILTER (WHERE l.kind OPERATOR(pg_catalog.=) 'redeem')
    FROM @extschema@.ledger l JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('award', 'adjust', 'redeem') GROUP BY 1, 2, 3),
pq AS (SELECT pts.program_id, pts.account_key, pts.quarter, pg_catalog.sum(pts.earned) AS earned,
              pg_catalog.sum(pts.redeemed) AS redeemed FROM pts GROUP BY 1, 2, 3),
-- approved actions by the quarter they occurred in (as tier qualification
-- and the caps count them), the members' with their account's
act AS (
    SELECT w.program_id, w.account_key::pg_catalog.varchar::text, pg_catalog.date_trunc('quarter', w.occurred_on::timestamp)::date AS quarter,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('training', 'certification')) AS trainings,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('referral', 'review', 'survey', 'lead')) AS advocacy
    FROM @extschema@.award w
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) w.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) w.action AND ar.valid_from OPERATOR(pg_catalog.=) w.rule_from
    WHERE w.status OPERATOR(pg_catalog.=) 'approved'
      AND ar.category IN ('training', 'certification', 'referral', 'review', 'survey', 'lead')
    GROUP BY 1, 2, 3),
-- every account and quarter with revenue or points, and the quarter after
-- one with revenue (up to the last quarter with data)
grid AS (
    SELECT aq.program_id, aq.account_key, aq.quarter FROM aq
    UNION
    SELECT aq.program_id, aq.account_key, (aq.quarter OPERATOR(pg_catalog.+) '3 months'::interval)::date
    FROM aq JOIN last_q USING (program_id) WHERE aq.quarter OPERATOR(pg_catalog.<) last_q.quarter
    UNION
    SELECT pq.program_id, pq.account_key, pq.quarter FROM pq
    UNION
    SELECT act.program_id, act.account_key, act.quarter FROM act),
r AS (
    SELECT g.program_id, g.quarter, coalesce(a.cooperation_model, 'none') AS segment, coalesce(a.cohort, 'none') AS cohort,
           a.potential_spend, coalesce(c.revenue, 0) AS revenue, coalesce(c.margin, 0) AS margin,
           coalesce(pr.revenue, 0) AS prev_revenue,
           coalesce(c.revenue OPERATOR(pg_catalog.>) 0, false) AS active,
           coalesce(pr.revenue OPERATOR(pg_catalog.>) 0, false) AS prev_active,
           x.account_key IS NOT NULL AS cross_sold,
           coalesce(q.earned, 0) AS earned, coalesce(q.redeemed, 0) AS redeemed,
           coalesce(t.trainings, 0) AS trainings, coalesce(t.advocacy, 0) AS advocacy
    FROM grid g
    LEFT JOIN @extschema@.account a ON a.program_id OPERATOR(pg_catalog.=) g.program_id
                                   AND a.account_key::pg_catalog.varchar::text OPERATOR(pg_catalog.=) g.account_key
    LEFT JOIN aq c ON c.program_id OPERATOR(pg_catalog.=) g.program_id AND c.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND c.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN aq pr ON pr.program_id OPERATOR(pg_catalog.=) g.program_id AND pr.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND pr.quarter OPERATOR(pg_catalog.=) (g.quarter OPERATOR(pg_catalog.-) '3 months'::interval)::date
    LEFT JOIN cross_sold x ON x.program_id OPERATOR(pg_catalog.=) g.program_id AND x.account_key OPERATOR(pg_catalog.=) g.account_key
                          AND x.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN pq q ON q.program_id OPERATOR(pg_catalog.=) g.program_id AND q.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND q.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN act t ON t.program_id OPERATOR(pg_catalog.=) g.program_id AND t.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND t.quarter OPERATOR(pg_catalog.=) g.quarter),
k AS (
    SELECT r.program_id, r.quarter, r.segment, r.cohort,
           pg_catalog.count(*) FILTER (WHERE r.active) AS active_accounts,
           pg_catalog.count(*) FILTER (WHERE r.prev_active) AS previously_active,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.prev_active) AS retained_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND NOT r.prev_active) AS new_or_returning,
           pg_catalog.sum(r.revenue) AS revenue, pg_catalog.sum(r.margin) AS margin,
           pg_catalog.sum(r.prev_revenue) FILTER (WHERE r.prev_active) AS prev_revenue,
           pg_catalog.sum(LEAST(GREATEST(r.revenue, 0), r.prev_revenue)) FILTER (WHERE r.prev_active) AS kept_revenue,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.prev_active) AS cohort_revenue,
           pg_catalog.count(*) FILTER (WHERE r.prev_active AND r.revenue OPERATOR(pg_catalog.>) r.prev_revenue) AS expansion_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.cross_sold) AS cross_sell_accounts,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet_revenue,
           pg_catalog.sum(r.potential_spend) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet,
           pg_catalog.sum(r.earned) AS points_earned, pg_catalog.sum(r.redeemed) AS points_redeemed,
           pg_catalog.sum(r.margin) FILTER (WHERE r.active) AS active_margin,
           pg_catalog.sum(r.trainings) AS trainings,
           pg_catalog.count(*) FILTER (WHERE r.trainings OPERATOR(pg_catalog.>) 0) AS accounts_trained,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.trainings OPERATOR(pg_catalog.>) 0) AS active_trained,
           pg_catalog.sum(r.advocacy) AS advocacy,
           pg_catalog.count(*) FILTER (WHERE r.advocacy OPERATOR(pg_catalog.>) 0) AS advocating_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.advocacy OPERATOR(pg_catalog.>) 0) AS active_advocating
    FROM r GROUP BY 1, 2, 3, 4)
SELECT p.name AS program, k.quarter, k.segment, k.cohort, k.active_accounts, k.previously_active, k.retained_accounts,
       k.new_or_returning,
       pg_catalog.round(k.retained_accounts::numeric OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0), 4) AS account_retention,
       k.revenue, k.margin,
       pg_catalog.round(k.kept_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS gross_revenue_retention,
       pg_catalog.round(k.cohort_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS net_revenue_retention,
       k.expansion_accounts, k.cross_sell_accounts,
       pg_catalog.round(4 OPERATOR(pg_catalog.*) k.wallet_revenue OPERATOR(pg_catalog./) NULLIF(k.wallet, 0), 4) AS share_of_wallet,
       k.points_earned, k.points_redeemed,
       pg_catalog.round(k.points_redeemed OPERATOR(pg_catalog./) NULLIF(k.points_earned, 0), 4) AS programme_utilisation,
       pg_catalog.round(k.active_margin OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0)
                        OPERATOR(pg_catalog./) NULLIF(1 OPERATOR(pg_catalog.-) (k.retained_accounts::numeric
                                                      OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0)), 0), 2) AS clv_estimate,
       k.trainings::bigint AS trainings_completed, k.accounts_trained,
       pg_catalog.round(k.active_trained::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS trained_share,
       k.advocacy::bigint AS advocacy_actions, k.advocating_accounts,
       pg_catalog.round(k.active_advocating::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS advocacy_share
FROM k JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) k.program_id
WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')));
COMMENT ON VIEW @extschema@.kpi IS 'Quarterly B2B KPIs per program, segment (cooperation model) and cohort: activity, account and revenue retention, expansion, cross-sell, share of wallet, programme utilisation, a CLV estimate, training completion and advocacy. Revenue and margin from the ERP rows with the reader''s rights (loyalty.sales()); accounts grouped by their current segment and cohort (none: not set, or not enrolled). Trainings and advocacy from the approved awards (loyalty.award), classified by their action''s category (loyalty.action_rule.category) and dated by the day the action occurred, as tier qualification and the caps date them: a training counts in the quarter it was done, even when approved later (approving it restates that quarter). It shows the programs whose attached tables the reader may read.';
COMMENT ON COLUMN @extschema@.kpi.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.kpi.quarter IS 'First day of the calendar quarter (of the document dates).';
COMMENT ON COLUMN @extschema@.kpi.segment IS 'Cooperation model of the accounts (none: not set or not enrolled).';
COMMENT ON COLUMN @extschema@.kpi.cohort IS 'pilot, control or none.';
COMMENT ON COLUMN @extschema@.kpi.active_accounts IS 'Accounts with revenue above 0 in the quarter.';
COMMENT ON COLUMN @extschema@.kpi.previously_active IS 'Accounts with revenue above 0 in the quarter before.';
COMMENT ON COLUMN @extschema@.kpi.retained_accounts IS 'Accounts active in both quarters.';
COMMENT ON COLUMN @extschema@.kpi.new_or_returning IS 'Accounts active in the quarter but not in the one before.';
COMMENT ON COLUMN @extschema@.kpi.account_retention IS 'retained_accounts / previously_active.';
COMMENT ON COLUMN @extschema@.kpi.revenue IS 'Revenue in program currency (credit notes negative).';
COMMENT ON COLUMN @extschema@.kpi.margin IS 'Margin at the product lines'' rates (loyalty.margin_rate; revenue where none applies).';
COMMENT ON COLUMN @extschema@.kpi.gross_revenue_retention IS 'Of the accounts active the quarter before: the sum of min(revenue now, revenue before) / revenue before (no expansion counted, 1 at most).';
COMMENT ON COLUMN @extschema@.kpi.net_revenue_retention IS 'Of the accounts active the quarter before: revenue now / revenue before (expansion counted).';
COMMENT ON COLUMN @extschema@.kpi.expansion_accounts IS 'Accounts active the quarter before whose revenue grew.';
COMMENT ON COLUMN @extschema@.kpi.cross_sell_accounts IS 'Active accounts that bought a product line for the first time, having bought others in earlier quarters.';
COMMENT ON COLUMN @extschema@.kpi.share_of_wallet IS 'Annualised revenue (x 4) / potential spend, of the active accounts with a potential spend.';
COMMENT ON COLUMN @extschema@.kpi.points_earned IS 'Points earned: accrual by document quarter, awards and positive adjustments by posting quarter.';
COMMENT ON COLUMN @extschema@.kpi.points_redeemed IS 'Points redeemed, by posting quarter.';
COMMENT ON COLUMN @extschema@.kpi.programme_utilisation IS 'points_redeemed / points_earned.';
COMMENT ON COLUMN @extschema@.kpi.clv_estimate IS 'Margin per active account in the quarter / (1 - account_retention): the expected margin over an account''s remaining life at this quarter''s margin and retention, undiscounted; NULL when retention is 1 or unknown.';
COMMENT ON COLUMN @extschema@.kpi.trainings_completed IS 'Approved actions of category training or certification that occurred in the quarter, the accounts'' and their members'' (quantities summed: seats of a training count each).';
COMMENT ON COLUMN @extschema@.kpi.accounts_trained IS 'Accounts with at least one approved training or certification (theirs or a member''s) that occurred in the quarter, active or not.';
COMMENT ON COLUMN @extschema@.kpi.trained_share IS 'Of the active accounts, the share with a training or certification in the quarter.';
COMMENT ON COLUMN @extschema@.kpi.advocacy_actions IS 'Approved actions of category referral, review, survey or lead that occurred in the quarter, the accounts'' and their members'' (quantities summed).';
COMMENT ON COLUMN @extschema@.kpi.advocating_accounts IS 'Accounts with at least one approved advocacy action (theirs or a member''s) that occurred in the quarter, active or not.';
COMMENT ON COLUMN @extschema@.kpi.advocacy_share IS 'Of the active accounts, the share with an advocacy action in the quarter.';

GRANT SELECT ON @extschema@.tier_movements, @extschema@.churn_risk, @extschema@.kpi
    TO loyalty_reader, loyalty_operator, loyalty_admin;
