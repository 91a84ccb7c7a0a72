--
-- cohorts: loyalty.assign_cohorts(program, pilot_fraction, seed, pre,
-- spend_bands, reassign) splits a program's accounts into pilot and control,
-- stratified by segment (cooperation model) and pre-period qualifying spend
-- band, deterministically from the seed.  The expected assignment is
-- recomputed below in plain SQL from the definition (strata, hash order,
-- round(n * fraction) per stratum), not read back from the function.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA coh;
CREATE TABLE coh.invoice (invoice_id int PRIMARY KEY, customer_id int NOT NULL,
                          invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('cohorts', enrollment => 'explicit') > 0 AS created;
SELECT loyalty.attach('coh.invoice', 'cohorts', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;

-- 3,000 accounts in four segments (and some without one), enrolled from the
-- start; 1 to 6 invoices each in 2024 with skewed amounts (hash-based).
SELECT count(loyalty.enroll('cohorts', i::text,
                            cooperation_model => (ARRAY['direct', 'distributor', 'integrator', 'reseller', NULL])[1 + i % 5],
                            enrolled_from => '2000-01-01'))
FROM generate_series(1, 3000) i;
INSERT INTO coh.invoice
SELECT row_number() OVER (ORDER BY i, k), i, date '2024-01-01' + (hashint4(i * 7 + k) & 255),
       round(10 + (hashint4(i) & 65535) / 65.536 * (1 + k), 2)
FROM generate_series(1, 3000) i, generate_series(1, 1 + (hashint4(i + 100000) & 7) % 6) k;

-- The expected assignment, from the definition.
CREATE TEMP TABLE expect AS
WITH spend AS (
    SELECT customer_id::text AS account_key, sum(amount) AS spend FROM coh.invoice
    WHERE invoice_date >= '2024-01-01' AND invoice_date < '2025-01-01' GROUP BY 1),
banded AS (
    SELECT a.account_key, coalesce(a.cooperation_model, 'none') AS segment,
           ntile(4) OVER (PARTITION BY coalesce(a.cooperation_model, 'none') ORDER BY coalesce(s.spend, 0), a.account_key COLLATE "C") AS band,
           coalesce(s.spend, 0) AS spend
    FROM loyalty.account a JOIN loyalty.program p USING (program_id) LEFT JOIN spend s USING (account_key)
    WHERE p.name = 'cohorts'),
ranked AS (
    SELECT b.*, row_number() OVER (PARTITION BY segment, band ORDER BY hashtextextended(account_key, 42), account_key COLLATE "C") AS rank,
           count(*) OVER (PARTITION BY segment, band) AS n
    FROM banded b)
SELECT account_key, segment, band, spend, CASE WHEN rank <= round(n * 0.3) THEN 'pilot' ELSE 'control' END AS cohort
FROM ranked;

-- 30% pilot, seed 42, 2024 as the pre-period, quartiles of spend.
SELECT * FROM loyalty.assign_cohorts('cohorts', 0.3, 42, pre => daterange('2024-01-01', '2025-01-01'));
-- every account as expected, and the per-stratum report against plain SQL
SELECT count(*) AS accounts, count(*) FILTER (WHERE a.cohort = e.cohort) AS as_expected
FROM loyalty.account a JOIN loyalty.program p USING (program_id) JOIN expect e USING (account_key)
WHERE p.name = 'cohorts';
SELECT segment, band, count(*) FILTER (WHERE cohort = 'pilot') AS pilot, count(*) AS accounts,
       round(avg(spend) FILTER (WHERE cohort = 'pilot'), 2) AS pilot_mean_spend,
       round(avg(spend) FILTER (WHERE cohort = 'control'), 2) AS control_mean_spend
FROM expect GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 4;
-- the audit trail: one row per account; and, as enroll() records a change,
-- the values before (no cohort) stay in account_history for the documents
-- already dated: they keep the points they earned outside the experiment
SELECT count(*) AS assignments, count(DISTINCT account_key) AS accounts, min(seed) AS seed,
       bool_and(previous IS NULL) AS all_new
FROM loyalty.cohort_assignment c JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts';
SELECT count(*) AS history_rows, bool_and(h.cohort IS NULL) AS before_no_cohort FROM loyalty.account_history h JOIN loyalty.program p USING (program_id)
WHERE p.name = 'cohorts';

-- Determinism: a second run, with the same or another seed, moves nothing:
-- accounts with a cohort keep it unless reassign => true.
CREATE TEMP TABLE first AS
SELECT a.account_key, a.cohort FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts';
SELECT sum(pilot) AS pilot, sum(kept) AS kept
FROM loyalty.assign_cohorts('cohorts', 0.3, 42, pre => daterange('2024-01-01', '2025-01-01'));
SELECT sum(pilot) AS pilot, sum(kept) AS kept
FROM loyalty.assign_cohorts('cohorts', 0.5, 7, pre => daterange('2024-01-01', '2025-01-01'));
SELECT count(*) AS moved FROM first f JOIN loyalty.account a USING (account_key)
JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts' AND a.cohort IS DISTINCT FROM f.cohort;

-- New accounts join the experiment; the fixed ones count toward their
-- stratum's target, so the stratum stays balanced without moving anyone.
SELECT count(loyalty.enroll('cohorts', i::text, cooperation_model => 'direct', enrolled_from => '2000-01-01'))
FROM generate_series(3001, 3100) i;
SELECT stratum, accounts, pilot, kept, pilot_share
FROM loyalty.assign_cohorts('cohorts', 0.3, 42, pre => daterange('2024-01-01', '2025-01-01'))
WHERE segment = 'direct';
SELECT count(*) AS moved FROM first f JOIN loyalty.account a USING (account_key)
JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts' AND a.cohort IS DISTINCT FROM f.cohort;

-- reassign => true draws everyone again.
-- A change is recorded as enroll() records one: the old cohort stays in
-- account_history for the documents already dated, from tomorrow (or after
-- the account's latest document) the new one applies.
SELECT sum(accounts) AS accounts, sum(pilot) AS pilot, sum(kept) AS kept
FROM loyalty.assign_cohorts('cohorts', 0.3, 1234, pre => daterange('2024-01-01', '2025-01-01'), reassign => true);
-- about 2 x 0.3 x 0.7 of the accounts change sides
SELECT count(*) FILTER (WHERE a.cohort IS DISTINCT FROM f.cohort) AS moved
FROM first f JOIN loyalty.account a USING (account_key) JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts';
SELECT count(*) AS assignments, count(*) FILTER (WHERE previous IS NOT NULL) AS changes
FROM loyalty.cohort_assignment c JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts';
-- (one row per account and day: the first change of a day keeps the values
-- that were in force, so the accounts drawn first today have one row)
SELECT count(*) AS history_rows, bool_and(h.valid_until = current_date + 1) AS from_tomorrow
FROM loyalty.account_history h JOIN loyalty.program p USING (program_id) WHERE p.name = 'cohorts';

-- Errors.
SELECT * FROM loyalty.assign_cohorts('cohorts', 0, 42);
SELECT * FROM loyalty.assign_cohorts('cohorts', 1, 42);
SELECT * FROM loyalty.assign_cohorts('cohorts', NULL, 42);
SELECT * FROM loyalty.assign_cohorts('cohorts', 0.5, NULL);
SELECT * FROM loyalty.assign_cohorts('cohorts', 0.5, 42, pre => daterange('2024-01-01', NULL));
SELECT * FROM loyalty.assign_cohorts('cohorts', 0.5, 42, spend_bands => 0);
SELECT * FROM loyalty.assign_cohorts('nope', 0.5, 42);

-- Only admins assign cohorts.
CREATE ROLE coh_reader IN ROLE loyalty_reader;
CREATE ROLE coh_admin IN ROLE loyalty_admin;
SET ROLE coh_reader;
SELECT * FROM loyalty.assign_cohorts('cohorts', 0.5, 42);
RESET ROLE;
SET ROLE coh_admin;
SELECT sum(accounts) AS accounts, sum(kept) AS kept FROM loyalty.assign_cohorts('cohorts', 0.5, 42);
RESET ROLE;

SELECT * FROM loyalty.verify('cohorts');
DROP ROLE coh_reader;
DROP ROLE coh_admin;
