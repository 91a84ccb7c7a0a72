-- Tiers and rebates on the demo ERP with loyalty's two types, tier_ladder
-- and rebate_schedule: no program, no triggers, plain SQL over the ERP's
-- own tables. The ERP's fiscal year runs November to October; the demo's
-- "today" is 2026-10-31, so its last 12 months are fiscal 2026
-- (2025-11-01 .. 2026-10-31). Amounts are net invoice amounts (invoices less
-- credit notes) in EUR; documents in other currencies are left out.

\set QUIET on
\pset footer off
\pset numericlocale on
\set as_of '2026-10-31'

-- The program's parameters, as values of loyalty's types.
CREATE TEMP TABLE demo_terms AS
SELECT 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'::loyalty.tier_ladder AS ladder,
       'retro: 0:0%, 100000:2%, 500000:3.5%'::loyalty.rebate_schedule               AS retro,
       'marginal: 0:0%, 100000:2%, 500000:3.5%'::loyalty.rebate_schedule            AS marginal;

-- Net EUR purchases per customer, fiscal year and fiscal quarter
-- (FY2026 Q1 = November 2025 .. January 2026).
CREATE TEMP TABLE purchases AS
SELECT i.customer_id,
       extract(year FROM i.invoice_date + interval '2 months')::int    AS year,
       extract(quarter FROM i.invoice_date + interval '2 months')::int AS quarter,
       sum(l.amount)                                                    AS net
FROM erp.invoice i
JOIN erp.invoice_line l USING (invoice_id)
WHERE i.currency = 'EUR'
GROUP BY 1, 2, 3;
CREATE INDEX ON purchases (customer_id);

-- Every customer with its fiscal 2025 and rolling-12-month (fiscal 2026)
-- spend and where the ladder puts it. A year whose credit notes outweigh its
-- invoices counts as zero spend.
CREATE TEMP TABLE standing AS
SELECT c.customer_id, c.name, c.cooperation_model, c.potential_spend,
       y.net_fy2025, y.net_12m,
       loyalty.tier_of(t.ladder, y.net_fy2025)   AS tier_fy2025,
       loyalty.tier_rank(t.ladder, y.net_fy2025) AS rank_fy2025,
       loyalty.tier_of(t.ladder, y.net_12m)      AS tier,
       loyalty.tier_rank(t.ladder, y.net_12m)    AS tier_rank
FROM erp.customer c
CROSS JOIN demo_terms t
CROSS JOIN LATERAL (
    SELECT greatest(0, coalesce(sum(p.net) FILTER (WHERE p.year = 2025), 0)) AS net_fy2025,
           greatest(0, coalesce(sum(p.net) FILTER (WHERE p.year = 2026), 0)) AS net_12m
    FROM purchases p
    WHERE p.customer_id = c.customer_id
) y;

\echo
\echo '================================================================================'
\echo ' 1. Tiers by rolling 12-month spend: tier_of(ladder, net EUR purchases in FY2026)'
\echo '================================================================================'
SELECT ladder AS "tier ladder" FROM demo_terms;

SELECT t.name                                                    AS tier,
       t.threshold                                               AS from_eur,
       count(s.customer_id)                                      AS accounts,
       round(100.0 * count(s.customer_id) / sum(count(s.customer_id)) OVER (), 1) AS accounts_pct,
       round(coalesce(sum(s.net_12m), 0), 2)                     AS spend_12m_eur,
       round(100 * coalesce(sum(s.net_12m), 0) / sum(sum(s.net_12m)) OVER (), 1)  AS spend_pct
FROM demo_terms d
CROSS JOIN LATERAL loyalty.tiers(d.ladder) t
LEFT JOIN standing s ON s.tier = t.name
GROUP BY t.rank, t.name, t.threshold
ORDER BY t.rank;

\echo 'Accounts per tier in each cooperation model:'
WITH models(cooperation_model, ord) AS (
    VALUES ('distributor', 1), ('integrator', 2), ('reseller', 3), ('direct', 4), ('all models', 5)
), counts AS (
    SELECT coalesce(cooperation_model, 'all models') AS cooperation_model, tier, count(*) AS accounts
    FROM standing
    GROUP BY GROUPING SETS ((cooperation_model, tier), (tier))
)
SELECT m.cooperation_model, t.name AS tier, coalesce(c.accounts, 0) AS accounts, t.rank
FROM models m
CROSS JOIN demo_terms d
CROSS JOIN LATERAL loyalty.tiers(d.ladder) t
LEFT JOIN counts c ON c.cooperation_model = m.cooperation_model AND c.tier = t.name
ORDER BY m.ord, t.rank
\crosstabview cooperation_model tier accounts rank

\echo 'Tier movement, FY2025 tier (rows) to FY2026 tier (columns); up or down by tier_rank:'
SELECT f.name AS "FY2025 tier", t.name AS tier,
       (SELECT count(*) FROM standing s WHERE s.tier_fy2025 = f.name AND s.tier = t.name) AS accounts,
       f.rank AS from_rank, t.rank AS to_rank
FROM demo_terms d
CROSS JOIN LATERAL loyalty.tiers(d.ladder) f
CROSS JOIN LATERAL loyalty.tiers(d.ladder) t
ORDER BY f.rank, t.rank
\crosstabview 1 2 3 5

SELECT count(*) FILTER (WHERE tier_rank > rank_fy2025) AS moved_up,
       count(*) FILTER (WHERE tier_rank = rank_fy2025) AS stayed,
       count(*) FILTER (WHERE tier_rank < rank_fy2025) AS moved_down
FROM standing;

\echo
\echo '================================================================================'
\echo ' 2. Progress toward the next tier: next_tier(ladder, spend) -> (name, threshold, gap)'
\echo '================================================================================'
\echo 'How far each account has come from its tier''s threshold toward the next one'
\echo '(accounts per band of progress; the top tier has nowhere further to go):'
WITH progress AS (
    SELECT s.tier, s.tier_rank,
           (s.net_12m - cur.threshold) / (n.threshold - cur.threshold) AS done
    FROM standing s
    CROSS JOIN demo_terms d
    JOIN LATERAL loyalty.tiers(d.ladder) cur ON cur.name = s.tier
    JOIN LATERAL loyalty.next_tier(d.ladder, s.net_12m) n ON true
), bands(ord, band, lo, hi) AS (
    VALUES (1, '0-25%', 0.00, 0.25), (2, '25-50%', 0.25, 0.50), (3, '50-75%', 0.50, 0.75),
           (4, '75-90%', 0.75, 0.90), (5, '90-100%', 0.90, 1.00)
)
SELECT t.name || ' -> ' || n.name AS "tier -> next", b.band,
       (SELECT count(*) FROM progress p
        WHERE p.tier = t.name AND p.done >= b.lo AND p.done < b.hi) AS accounts,
       t.rank, b.ord
FROM demo_terms d
CROSS JOIN LATERAL loyalty.tiers(d.ladder) t
JOIN LATERAL loyalty.tiers(d.ladder) n ON n.rank = t.rank + 1
CROSS JOIN bands b
ORDER BY t.rank, b.ord
\crosstabview 1 2 3 5

\echo 'Accounts closest to the next tier (gap within 15% of its threshold), with their wallet:'
SELECT s.customer_id::text                                  AS customer,
       s.name,
       s.cooperation_model                                  AS model,
       s.tier,
       n.name                                               AS next_tier,
       round(s.net_12m, 2)                                  AS spend_12m_eur,
       round(n.gap, 2)                                      AS gap_eur,
       round(s.potential_spend, 2)                          AS wallet_eur,
       round(100 * s.net_12m / nullif(s.potential_spend, 0), 1) AS wallet_share_pct
FROM standing s
CROSS JOIN demo_terms d
CROSS JOIN LATERAL loyalty.next_tier(d.ladder, s.net_12m) n
WHERE n.gap <= 0.15 * n.threshold
  AND s.tier_rank > 1
ORDER BY n.gap / n.threshold, s.customer_id
LIMIT 10;

\echo
\echo '================================================================================'
\echo ' 3. Quarterly volume rebates: rebate(schedule, volume), retro vs marginal'
\echo '================================================================================'
SELECT retro AS "retro schedule", marginal AS "marginal schedule" FROM demo_terms;

\echo 'The same brackets, two modes: retro pays the reached rate on the whole volume,'
\echo 'marginal pays each bracket at its own rate.'
SELECT v.volume                                     AS quarterly_volume_eur,
       loyalty.rebate_rate(d.retro, v.volume)       AS rate_pct,
       round(loyalty.rebate(d.retro, v.volume), 2)    AS retro_rebate_eur,
       round(loyalty.rebate(d.marginal, v.volume), 2) AS marginal_rebate_eur
FROM demo_terms d
CROSS JOIN (VALUES (50000.00), (99999.99), (100000.00), (250000.00),
                   (499999.99), (500000.00), (1000000.00)) v(volume)
ORDER BY v.volume;

\echo 'A cross-section of accounts (ranked 1, 10, 25, 50 and 100 by FY2026 spend), quarter by quarter:'
WITH picked AS (
    SELECT *
    FROM (SELECT customer_id, name, net_12m,
                 row_number() OVER (ORDER BY net_12m DESC, customer_id) AS size_rank
          FROM standing) s
    WHERE size_rank IN (1, 10, 25, 50, 100)
)
SELECT t.size_rank::text                                     AS "rank",
       t.customer_id::text                                   AS customer,
       t.name,
       'FY2026 Q' || p.quarter                               AS quarter,
       round(p.net, 2)                                       AS volume_eur,
       loyalty.rebate_rate(d.retro, p.net)                   AS rate_pct,
       round(loyalty.rebate(d.retro, p.net), 2)              AS retro_eur,
       round(loyalty.rebate(d.marginal, p.net), 2)           AS marginal_eur,
       round(loyalty.rebate(d.retro, p.net) - loyalty.rebate(d.marginal, p.net), 2) AS retro_extra_eur
FROM picked t
JOIN purchases p ON p.customer_id = t.customer_id AND p.year = 2026
CROSS JOIN demo_terms d
ORDER BY t.size_rank, p.quarter;

\echo 'What each mode would cost over all accounts in FY2026 (sum of the quarterly rebates):'
WITH q AS (
    SELECT p.customer_id, p.quarter, p.net,
           loyalty.rebate(d.retro, p.net)    AS retro,
           loyalty.rebate(d.marginal, p.net) AS marginal
    FROM purchases p CROSS JOIN demo_terms d
    WHERE p.year = 2026
)
SELECT count(DISTINCT customer_id) FILTER (WHERE retro > 0) AS accounts_earning,
       count(*) FILTER (WHERE retro > 0)                    AS quarters_earning,
       round(sum(net), 2)                                   AS volume_eur,
       round(sum(retro), 2)                                 AS retro_eur,
       round(100 * sum(retro) / sum(net), 2)                AS retro_pct_of_volume,
       round(sum(marginal), 2)                              AS marginal_eur,
       round(100 * sum(marginal) / sum(net), 2)             AS marginal_pct_of_volume
FROM q;
