--
-- did: the difference-in-differences aggregate loyalty.did(is_pilot, pre,
-- post).  One row per unit (an account): its group and its value before and
-- after.  The uplift is the pilot's mean change minus the control's; its
-- standard error is Welch's, its 95% interval uses Student's t with the
-- Welch-Satterthwaite degrees of freedom.  Every expected figure below is
-- computed in plain SQL (avg, var_samp, regr_slope, numeric arithmetic), never
-- with did().
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'

-- A hand-computed example.  Pilot changes 10, 12, 14 (mean 12, variance 4);
-- control changes 1, 3 (mean 2, variance 2).  Uplift 10; se = sqrt(4/3 +
-- 2/2) = 1.527525; df = (4/3 + 1)^2 / ((4/3)^2/2 + 1^2/1) = 49/17 =
-- 2.882353; the interval 10 +- t(0.975, 49/17) * se.
CREATE TEMP TABLE hand (account text, pilot boolean, pre numeric, post numeric);
INSERT INTO hand VALUES
    ('a', true, 100, 110), ('b', true, 200, 212), ('c', true, 50.5, 64.5),
    ('d', false, 100, 101), ('e', false, 300, 303);
SELECT (d).pilot_n, (d).control_n, (d).pilot_mean_change, (d).control_mean_change, (d).uplift,
       round((d).std_error::numeric, 12) AS std_error,
       round((d).welch_df::numeric, 12) AS welch_df,
       round((d).ci_low::numeric, 9) AS ci_low, round((d).ci_high::numeric, 9) AS ci_high
FROM (SELECT loyalty.did(pilot, pre, post) AS d FROM hand) x;
-- the same by hand: se = sqrt(4/3 + 1), df = (7/3)^2 / ((4/3)^2/2 + 1)
SELECT round(sqrt(4.0/3 + 1), 12) AS std_error,
       round((7.0/3)^2 / ((4.0/3)^2 / 2 + 1), 12) AS welch_df,
       round((10 - loyalty.t_quantile(0.975, 49.0/17) * sqrt(4.0/3 + 1))::numeric, 9) AS ci_low;

-- Rows with a NULL group, pre or post are skipped, not counted.
INSERT INTO hand VALUES ('f', NULL, 1, 2), ('g', true, NULL, 5), ('h', false, 5, NULL);
SELECT (d).pilot_n, (d).control_n, (d).uplift FROM (SELECT loyalty.did(pilot, pre, post) AS d FROM hand) x;

-- Empty groups.  No rows at all: counts 0, everything else NULL.  One group
-- empty: its mean and the uplift are NULL.  One row in a group: the uplift is
-- known, its standard error and interval are not.  Every change equal in
-- both groups: standard error 0, the interval is the uplift itself, the
-- degrees of freedom are undefined.
SELECT (loyalty.did(pilot, pre, post)).* FROM hand WHERE false;
SELECT (loyalty.did(pilot, pre, post)).* FROM hand WHERE pilot;
SELECT (loyalty.did(pilot, pre, post)).* FROM hand WHERE account IN ('a', 'b', 'd');
SELECT (loyalty.did(p, 0, c)).*
FROM (VALUES (true, 5), (true, 5), (false, 2), (false, 2)) AS v(p, c);
-- grouped, as a report would use it
SELECT account IN ('a', 'd', 'e') AS half, (loyalty.did(pilot, pre, post)).uplift
FROM hand GROUP BY 1 ORDER BY 1;

-- NaN and infinity have no mean: refused, with the way out.
SELECT loyalty.did(true, 'NaN', 1);
SELECT loyalty.did(false, 1, '-Infinity');
-- numeric beyond the fast path (many digits, many decimals) still counts
SELECT (d).uplift = 1e30 - 1 AS big, (d).pilot_mean_change FROM
  (SELECT loyalty.did(p, pre, post) AS d
   FROM (VALUES (true, 0::numeric, 1e30), (false, 0, 1),
                (true, 0.000000000000000000000000001, 0.000000000000000000000000002)) AS v(p, pre, post)
   WHERE post > 0.5) x;

-- Student's t quantile against a table (values computed to 20 digits with
-- mpmath's regularised incomplete beta; the integer rows agree with the
-- printed tables).  Fractional degrees of freedom are what Welch gives.
SELECT p, df, loyalty.t_quantile(p, df) AS t, abs(loyalty.t_quantile(p, df) - expected) < 1e-9 AS within_1e9
FROM (VALUES (0.975, 1, 12.706204736174693314), (0.975, 2, 4.3026527297494617894),
             (0.975, 3.5, 2.9400886379827288125), (0.975, 5, 2.5705818356363147828),
             (0.975, 10, 2.2281388519862742245), (0.975, 29.7, 2.0431378562472573987),
             (0.975, 100, 1.9839715185235518946), (0.975, 999, 1.9623414611334495975),
             (0.975, 1001, 1.9623367052808795374), (0.975, 123456.5, 1.9599832001673619258),
             (0.995, 7, 3.4994832973504932609), (0.9, 4, 1.5332062740589440989),
             (0.025, 10, -2.2281388519862742245)) AS v(p, df, expected);
-- the normal quantile as df grows (z = 1.959963984540054; the first term of
-- the expansion in 1/df is 2.4e-12 at df = 1e12)
SELECT abs(loyalty.t_quantile(0.975, 1e12) - 1.959963984540054) < 1e-11 AS normal_limit;
SELECT loyalty.t_quantile(1, 10);
SELECT loyalty.t_quantile(0.975, 0);

-- 20,000 accounts, generated from hashes (no random()): a pre-period value,
-- a seasonal change common to both groups, noise, and an injected uplift of
-- 250 for the pilot (about half the accounts).
CREATE TABLE sim AS
SELECT i, pilot,
       round(1000 + 9000 * u1, 2) AS pre,
       round(1000 + 9000 * u1 + 300 + 2000 * (u2 + u3 + u4 - 1.5) + CASE WHEN pilot THEN 250 ELSE 0 END, 2) AS post
FROM (SELECT i, (hashtextextended('pilot' || i, 1) & 1) = 1 AS pilot,
             (hashtextextended('u1:' || i, 1) & 4294967295)::numeric / 4294967296 AS u1,
             (hashtextextended('u2:' || i, 1) & 4294967295)::numeric / 4294967296 AS u2,
             (hashtextextended('u3:' || i, 1) & 4294967295)::numeric / 4294967296 AS u3,
             (hashtextextended('u4:' || i, 1) & 4294967295)::numeric / 4294967296 AS u4
      FROM generate_series(1, 20000) i) g;
ANALYZE sim;

-- The OLS interaction estimate, two ways, neither with did():
-- (1) the long form y = a + b*pilot + c*post + d*pilot*post is saturated,
--     so d is the contrast of the four cell means, computed in numeric;
-- (2) regressing the change on the pilot indicator (regr_slope), the same
--     model differenced.
CREATE TEMP TABLE ols AS
WITH long AS (
    SELECT pilot, false AS after, pre AS y FROM sim UNION ALL SELECT pilot, true, post FROM sim),
cells AS (SELECT pilot, after, avg(y) AS m FROM long GROUP BY 1, 2)
SELECT (SELECT sum(CASE WHEN pilot = after THEN m ELSE -m END) FROM cells) AS d_cells,
       (SELECT regr_slope(post - pre, CASE WHEN pilot THEN 1 ELSE 0 END) FROM sim) AS d_regr,
       (SELECT sqrt(sum(v / n)) FROM (SELECT var_samp(post - pre) AS v, count(*) AS n FROM sim GROUP BY pilot) s) AS se,
       (SELECT sum(v / n)^2 / sum((v / n)^2 / (n - 1)) FROM (SELECT var_samp(post - pre) AS v, count(*) AS n FROM sim GROUP BY pilot) s) AS df;
SELECT round(d_cells, 6) AS ols_interaction, round(se, 6) AS welch_se FROM ols;
SELECT abs((d).uplift - o.d_cells) < 1e-9 AS uplift_eq_ols,
       abs((d).uplift - o.d_regr) < 1e-9 AS uplift_eq_regr_slope,
       abs((d).std_error - o.se) < 1e-9 AS se_eq_welch,
       abs((d).welch_df - o.df) < 1e-6 AS df_eq_welch,
       (d).ci_low < 250 AND 250 < (d).ci_high AS injected_uplift_inside
FROM (SELECT loyalty.did(pilot, pre, post) AS d FROM sim) x, ols o;

-- The null simulation: the same accounts, no effect; the interval covers 0.
SELECT (d).ci_low < 0 AND 0 < (d).ci_high AS null_covers_zero
FROM (SELECT loyalty.did(pilot, pre, post - CASE WHEN pilot THEN 250 ELSE 0 END) AS d FROM sim) x;

-- A parallel plan: partial states in the workers, serialised, combined in
-- the leader; the same result as the serial plan (to rounding: the sums are
-- added in another order).
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT loyalty.did(pilot, pre, post) FROM sim;
CREATE TEMP TABLE par AS SELECT loyalty.did(pilot, pre, post) AS d FROM sim;
RESET max_parallel_workers_per_gather;
SET max_parallel_workers_per_gather = 0;
EXPLAIN (COSTS OFF) SELECT loyalty.did(pilot, pre, post) FROM sim;
CREATE TEMP TABLE ser AS SELECT loyalty.did(pilot, pre, post) AS d FROM sim;
SELECT (p.d).pilot_n = (s.d).pilot_n AND (p.d).control_n = (s.d).control_n AS counts_equal,
       abs((p.d).uplift - (s.d).uplift) < 1e-9 AND abs((p.d).std_error - (s.d).std_error) < 1e-9
       AND abs((p.d).ci_low - (s.d).ci_low) < 1e-9 AND abs((p.d).ci_high - (s.d).ci_high) < 1e-9
       AND abs((p.d).welch_df - (s.d).welch_df) < 1e-6 AS parallel_equals_serial
FROM par p, ser s;
RESET ALL;

-- Coverage: 200 more simulations (seeds 1 to 200) of 1,000 accounts each,
-- the same uplift of 250.  A 95% interval misses about 1 time in 20, so
-- about 190 of them should hold 250 (binomial: 183 to 197 nearly always);
-- the count checks that the interval is neither too narrow nor too wide.
-- hold_0 counts the intervals that reach down to 0: with 1,000 accounts the
-- uplift is about 4 standard errors, so only a few should.
SELECT count(*) FILTER (WHERE (d).ci_low < 250 AND 250 < (d).ci_high) AS hold_250,
       count(*) FILTER (WHERE (d).ci_low < 0) AS hold_0, count(*) AS simulations
FROM (SELECT seed, loyalty.did(pilot, pre, post) AS d
      FROM (SELECT seed, (hashtextextended('pilot' || i, seed) & 1) = 1 AS pilot, 0::numeric AS pre,
                   round(300 + 2000 * ((hashtextextended('u2:' || i, seed) & 4294967295)::numeric / 4294967296
                                       + (hashtextextended('u3:' || i, seed) & 4294967295)::numeric / 4294967296
                                       + (hashtextextended('u4:' || i, seed) & 4294967295)::numeric / 4294967296 - 1.5), 2)
                   + CASE WHEN (hashtextextended('pilot' || i, seed) & 1) = 1 THEN 250 ELSE 0 END AS post
            FROM generate_series(1, 200) seed, generate_series(1, 1000) i) g
      GROUP BY seed) x;
DROP TABLE sim;

-- Who may run it: a pure function of its arguments, like the types' own.
SELECT has_function_privilege('public', 'loyalty.did(boolean, numeric, numeric)', 'EXECUTE') AS did_public,
       has_function_privilege('public', 'loyalty._did_trans(internal, boolean, numeric, numeric)', 'EXECUTE') AS trans_public;
