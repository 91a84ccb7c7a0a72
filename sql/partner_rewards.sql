--
-- Partner self-service for settlement and rewards: two partner logins, on
-- two accounts among 2,000, read their own statement, benefits, expiring
-- points, tier, status, member points, leaderboard ranks, settlement and
-- wallet rows and the rewards they may redeem, and redeem for themselves.
-- Every figure is recomputed here as the superuser from the tables.  Every
-- attempt at another account (tables, views, functions, a key that does not
-- exist, another member) returns nothing or one and the same error.
--
\set VERBOSITY default
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;

CREATE ROLE pr_erp NOLOGIN;
CREATE SCHEMA pr AUTHORIZATION pr_erp;
SET ROLE pr_erp;
CREATE TABLE pr.invoice (id int PRIMARY KEY, customer text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
RESET ROLE;
SELECT loyalty.create_program('pr_club', ladder => 'Member:0, Silver:3000, Gold:20000', starts_on => '2026-01-01',
                              point_lifetime => '3 months', settlement_period => 'quarter') > 0 AS created;
SELECT loyalty.attach('pr.invoice', 'pr_club', account_column => 'customer', date_column => 'invoice_date',
                      amount_column => 'amount') > 0 AS attached;
-- 2,000 customers, 2026-01-01 .. 2026-09-30; K7 buys enough for Gold, K8
-- stays a Member
SET ROLE pr_erp;
INSERT INTO pr.invoice
SELECT i, 'K' || (i % 2000), date '2026-01-01' + ((i * 7919) % 273), 20 + (i * 31) % 400
FROM generate_series(1, 8000) i;
INSERT INTO pr.invoice SELECT 100000 + i, 'K7', date '2026-02-01' + i * 20, 3000 FROM generate_series(0, 9) i;
RESET ROLE;
SELECT loyalty.fold('pr_club') >= 0 AS folded;
SELECT loyalty.set_benefit('pr_club', 'Member', 'payment_terms_days', '30');
SELECT loyalty.set_benefit('pr_club', 'Gold', 'payment_terms_days', '60');
SELECT loyalty.set_benefit('pr_club', 'Gold', 'mdf_rate', '0.02');
SELECT loyalty.set_benefit('pr_club', 'Member', 'mdf_rate', '0.01');
SELECT loyalty.create_rebate_agreement('pr_club', 'VOL', 'retro: 0:0%, 1000:2%, 5000:3%', period => 'quarter',
                                       valid_from => '2026-01-01');
SELECT r.period_end, r.status FROM unnest(ARRAY[date '2026-03-31', '2026-06-30', '2026-09-30']) q,
     LATERAL loyalty.settle('pr_club', q) r ORDER BY 1;
-- members, awards, a wallet claim
INSERT INTO loyalty.member (program_id, account_key, member_id, role)
SELECT program_id, k, m, 'champion' FROM loyalty.program, (VALUES ('K7', 'anna'), ('K7', 'ben'), ('K8', 'carl')) v(k, m)
WHERE name = 'pr_club';
SELECT loyalty.set_action_rule('pr_club', 'webinar', 400);
SELECT count(loyalty.award('pr_club', k, 'webinar', '2026-10-05', member => m, reference => k || m || n)) AS awards
FROM (VALUES ('K7', 'anna'), ('K7', 'ben'), ('K8', 'carl'), ('K9', NULL)) v(k, m), generate_series(1, 3) n;
SELECT loyalty.claim_mdf('pr_club', 'K7', 10, 'booth') IS NOT NULL AS claimed;
SELECT loyalty.claim_mdf('pr_club', 'K8', 10, 'booth') IS NOT NULL AS claimed;
-- the catalogue: on offer to any tier, to Gold, ended, not yet, inactive
SELECT loyalty.set_reward('pr_club', 'R-ANY', 'Mug', 100);
SELECT loyalty.set_reward('pr_club', 'R-GOLD', 'Training seat', 500, min_tier => 'Gold');
SELECT loyalty.set_reward('pr_club', 'R-SILVER', 'Warranty', 200, min_tier => 'Silver', stock => 0);
SELECT loyalty.set_reward('pr_club', 'R-ENDED', 'Old mug', 100, valid_until => '2026-01-01');
SELECT loyalty.set_reward('pr_club', 'R-LATER', 'New mug', 100, valid_from => '2099-01-01');
SELECT loyalty.set_reward('pr_club', 'R-OFF', 'Withdrawn', 100, active => false);
-- what a partner may not know of its own account
UPDATE loyalty.account SET cohort = 'pilot', potential_spend = 100000 WHERE account_key IN ('K7', 'K8');

CREATE ROLE pr_k7 LOGIN;
CREATE ROLE pr_k8 LOGIN;
SELECT loyalty.grant_partner('pr_k7', 'pr_club', 'K7', member_id => 'anna');
SELECT loyalty.grant_partner('pr_k8', 'pr_club', 'K8');

-- The expected figures, computed as the superuser from the tables.
CREATE TEMP TABLE want AS
SELECT a.account_key,
       (SELECT sum(l.points) FROM loyalty.ledger l WHERE l.program_id = a.program_id AND l.account_key = a.account_key) AS points,
       (SELECT sum(l.rebate) FROM loyalty.ledger l WHERE l.program_id = a.program_id AND l.account_key = a.account_key) AS rebate,
       (SELECT sum(l.mdf) FROM loyalty.ledger l WHERE l.program_id = a.program_id AND l.account_key = a.account_key) AS mdf,
       a.tier,
       (SELECT h.new_tier FROM loyalty.tier_history h WHERE h.program_id = a.program_id AND h.account_key = a.account_key
          AND h.effective_from <= (now() AT TIME ZONE p.time_zone)::date + 1
        ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1) AS tier_tomorrow,
       (SELECT jsonb_object_agg(b.benefit, b.value) FROM loyalty.tier_benefit b
        WHERE b.program_id = a.program_id AND b.tier = a.tier) AS benefits,
       (SELECT count(*) FROM loyalty.settlement_account s WHERE s.program_id = a.program_id AND s.account_key = a.account_key) AS settlements,
       (SELECT sum(s.amount) FROM loyalty.settlement_line s WHERE s.program_id = a.program_id AND s.account_key = a.account_key) AS lines,
       (SELECT count(*) FROM loyalty.award w WHERE w.program_id = a.program_id AND w.account_key = a.account_key) AS awards,
       (SELECT jsonb_object_agg(m.member_id, m.p) FROM (SELECT l.member_id, sum(l.points) AS p FROM loyalty.ledger l
         WHERE l.program_id = a.program_id AND l.account_key = a.account_key AND l.member_id IS NOT NULL GROUP BY 1) m) AS members,
       -- rank this year among all accounts by points earned (accrual and awards)
       (SELECT 1 + count(*) FROM (SELECT l.account_key, sum(l.points) AS e FROM loyalty.ledger l
         WHERE l.program_id = a.program_id AND l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
           AND date_trunc('year', l.posted_at AT TIME ZONE p.time_zone) = date_trunc('year', now() AT TIME ZONE p.time_zone)
         GROUP BY 1) x
        WHERE x.e > (SELECT sum(l.points) FROM loyalty.ledger l
                     WHERE l.program_id = a.program_id AND l.account_key = a.account_key
                       AND l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
                       AND date_trunc('year', l.posted_at AT TIME ZONE p.time_zone) = date_trunc('year', now() AT TIME ZONE p.time_zone))) AS year_rank,
       -- the rewards on offer today whose minimum tier the account's tier reaches
       (SELECT string_agg(r.reward_id, ',' ORDER BY r.reward_id) FROM loyalty.reward r
        WHERE r.program_id = a.program_id AND r.active
          AND coalesce(r.valid_from, '-infinity') <= (now() AT TIME ZONE p.time_zone)::date
          AND (now() AT TIME ZONE p.time_zone)::date < coalesce(r.valid_until, 'infinity')
          AND (r.min_tier IS NULL OR array_position(ARRAY['Member', 'Silver', 'Gold'], r.min_tier)
                                     <= array_position(ARRAY['Member', 'Silver', 'Gold'], a.tier))) AS rewards
FROM loyalty.account a JOIN loyalty.program p USING (program_id)
WHERE p.name = 'pr_club' AND a.account_key IN ('K7', 'K8');
SELECT account_key, tier, tier_tomorrow, benefits, settlements, awards, members, rewards FROM want ORDER BY 1;
SELECT count(*) AS accounts FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name = 'pr_club';
-- the staff's answers of the functions whose own correctness other tests
-- check: a partner must get exactly these
CREATE TEMP TABLE staff_statement AS SELECT * FROM loyalty.statement('pr_club', 'K7', '2026-12-31');
CREATE TEMP TABLE staff_expiring AS SELECT * FROM loyalty.expiring_points('pr_club', 'K7', '2026-11-29');
SELECT count(*) > 0 AS k7_has_points_expiring FROM staff_expiring;
GRANT SELECT ON want, staff_statement, staff_expiring TO pr_k7, pr_k8;

-- Every refusal of a partner's call is recorded here: the calls on another
-- account, or on one that does not exist, must all fail with one error.
CREATE TEMP TABLE refusal (call text, state text, message text, detail text, hint text);
GRANT ALL ON refusal TO pr_k7, pr_k8;
CREATE FUNCTION pg_temp.try(calls text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c text;
    s text; m text; d text; h text;
BEGIN
    FOREACH c IN ARRAY calls LOOP
        BEGIN
            EXECUTE c;
            INSERT INTO pg_temp.refusal VALUES (c, 'succeeded', NULL, NULL, NULL);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
            INSERT INTO pg_temp.refusal VALUES (c, s, m, d, h);
        END;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION pg_temp.try(text[]) TO pr_k7, pr_k8;

-- As K7's login.
SET SESSION AUTHORIZATION pr_k7;
-- every account-scoped relation it may read: its own rows only
SELECT 'settlement_account' AS relation, count(*) > 0 AS has_rows, count(DISTINCT account_key) AS accounts, min(account_key) AS account FROM loyalty.settlement_account
UNION ALL SELECT 'settlement_line', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.settlement_line
UNION ALL SELECT 'rebate_posting', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.rebate_posting
UNION ALL SELECT 'mdf_accrual', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.mdf_accrual
UNION ALL SELECT 'mdf_claim', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.mdf_claim
UNION ALL SELECT 'award', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.award
UNION ALL SELECT 'member_points', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.member_points
UNION ALL SELECT 'member_balance', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.member_balance
UNION ALL SELECT 'account_benefits', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.account_benefits
UNION ALL SELECT 'account_status', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.account_status
UNION ALL SELECT 'leaderboard', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.leaderboard
UNION ALL SELECT 'account_private', count(*) > 0, count(DISTINCT account_key), min(account_key) FROM loyalty.account_private;
SELECT 'settlement_account' AS relation, count(*) = 3 AS "rows" FROM loyalty.settlement_account
UNION ALL SELECT 'settlement_line', sum(amount) = (SELECT lines FROM want WHERE account_key = 'K7') FROM loyalty.settlement_line
UNION ALL SELECT 'award', count(*) = (SELECT awards FROM want WHERE account_key = 'K7') FROM loyalty.award;
-- its figures, as the tables give them
SELECT s.points = w.points AS points_right, s.rebate = w.rebate AS rebate_right, s.mdf = w.mdf AS mdf_right,
       s.tier = w.tier AS tier_right, s.cohort IS NULL AS no_cohort, s.potential_spend IS NULL AS no_potential_spend
FROM loyalty.account_status s, want w WHERE w.account_key = 'K7';
SELECT b.payment_terms_days, b.mdf_rate, b.benefits = w.benefits AS benefits_right
FROM loyalty.account_benefits b, want w WHERE w.account_key = 'K7';
SELECT (SELECT jsonb_object_agg(benefit, value) FROM loyalty.benefits('pr_club', 'K7')) = w.benefits AS benefits_function_right
FROM want w WHERE w.account_key = 'K7';
SELECT jsonb_object_agg(m.member_id, m.points) = w.members AS member_points_right
FROM loyalty.member_balance m, want w WHERE w.account_key = 'K7' AND m.points <> 0 GROUP BY w.members;
SELECT l.rank = w.year_rank AS rank_right, l.rank AS k7_rank, l.points
FROM loyalty.leaderboard l, want w
WHERE w.account_key = 'K7' AND l.scope = 'account' AND l.period = 'year' AND l.period_start = date_trunc('year', now())::date;
SELECT string_agg(reward_id, ',' ORDER BY reward_id) AS catalogue,
       string_agg(reward_id, ',' ORDER BY reward_id) = (SELECT rewards FROM want WHERE account_key = 'K7') AS catalogue_right
FROM loyalty.reward;
SELECT t, t = w.tier_tomorrow AS tier_as_of_right FROM loyalty.tier('pr_club', 'K7', (now() + interval '1 day')::date) t, want w
WHERE w.account_key = 'K7';
SELECT b.points = w.points AS balance_as_of_right FROM loyalty.balance('pr_club', 'K7', (now() + interval '1 day')::date) b, want w
WHERE w.account_key = 'K7';
SELECT (SELECT count(*) FROM (SELECT * FROM loyalty.statement('pr_club', 'K7', '2026-12-31')
                              EXCEPT ALL SELECT * FROM staff_statement) x) = 0
   AND (SELECT count(*) FROM (SELECT * FROM staff_statement
                              EXCEPT ALL SELECT * FROM loyalty.statement('pr_club', 'K7', '2026-12-31')) x) = 0 AS statement_as_staff,
       (SELECT value::bigint FROM loyalty.statement('pr_club', 'K7', '2026-12-31') WHERE item = 'balance at period end' AND section = 'points')
       = (SELECT points FROM want WHERE account_key = 'K7') AS statement_balance_right;
SELECT (SELECT count(*) FROM (SELECT * FROM loyalty.expiring_points('pr_club', 'K7', '2026-11-29') EXCEPT ALL SELECT * FROM staff_expiring) x) = 0
   AND (SELECT count(*) FROM (SELECT * FROM staff_expiring EXCEPT ALL SELECT * FROM loyalty.expiring_points('pr_club', 'K7', '2026-11-29')) x) = 0
       AS expiring_as_staff;
-- a predicate of its own runs after the views' filters: no division by
-- zero from another account's row
SELECT count(*) > 0 AS own_rows FROM loyalty.leaderboard WHERE 1 / (CASE WHEN account_key <> 'K7' THEN 0 ELSE 1 END) = 1;
SELECT count(*) AS own_rows FROM loyalty.account_status WHERE 1 / (CASE WHEN account_key <> 'K7' THEN 0 ELSE 1 END) = 1;
SELECT count(*) AS private_rows FROM loyalty.account_private WHERE 1 / (CASE WHEN cohort = 'pilot' THEN 0 ELSE 1 END) = 1;

-- Redeeming for itself: as the account, and as its own member.
SELECT loyalty.redeem('pr_club', 'K7', 'R-ANY', 2) IS NOT NULL AS redeemed;
SELECT loyalty.redeem('pr_club', 'K7', 'R-GOLD', member => 'anna') IS NOT NULL AS redeemed_as_anna;
SELECT reward_id, member_id, quantity, points, status FROM loyalty.redemption ORDER BY reward_id;
-- its own account's refusals stay its own
SELECT loyalty.redeem('pr_club', 'K7', 'R-SILVER');
-- another account, one that does not exist, another member of its own
-- account, another program: one and the same error
SELECT pg_temp.try(ARRAY[
    $$SELECT loyalty.redeem('pr_club', 'K8', 'R-ANY')$$,
    $$SELECT loyalty.redeem('pr_club', 'K-none', 'R-ANY')$$,
    $$SELECT loyalty.redeem('pr_club', 'K7', 'R-ANY', member => 'ben')$$,
    $$SELECT loyalty.redeem('pr_club', 'K7', 'R-ANY', member => 'nobody')$$,
    $$SELECT loyalty.redeem('pr_club', 'K8', 'R-ANY', member => 'carl')$$,
    $$SELECT loyalty.redeem('pr_club', NULL, 'R-ANY')$$,
    $$SELECT loyalty.redeem('no club', 'K7', 'R-ANY')$$,
    $$SELECT * FROM loyalty.statement('pr_club', 'K8', '2026-12-31')$$,
    $$SELECT * FROM loyalty.statement('pr_club', 'K-none', '2026-12-31')$$,
    $$SELECT * FROM loyalty.statement('no club', 'K7', '2026-12-31')$$,
    $$SELECT * FROM loyalty.benefits('pr_club', 'K8')$$,
    $$SELECT * FROM loyalty.benefits('pr_club', 'K-none')$$,
    $$SELECT * FROM loyalty.expiring_points('pr_club', 'K8')$$,
    $$SELECT * FROM loyalty.expiring_points('pr_club', 'K-none')$$,
    $$SELECT * FROM loyalty.expiring_points('pr_club')$$,
    $$SELECT loyalty.tier('pr_club', 'K8', '2026-08-15')$$,
    $$SELECT loyalty.tier('pr_club', 'K-none', '2026-08-15')$$,
    $$SELECT * FROM loyalty.balance('pr_club', 'K8', '2026-08-15')$$,
    $$SELECT * FROM loyalty.balance('pr_club', 'K-none', '2026-08-15')$$,
    $$SELECT * FROM loyalty.balance('pr_club', 'K8')$$,
    $$SELECT loyalty.tier('pr_club', 'K8')$$]);
SELECT CASE WHEN call LIKE '%redeem%' THEN 'redeem' ELSE 'read' END AS kind, count(*) AS calls,
       count(DISTINCT (state, message, detail, hint)) AS distinct_errors, min(state) AS state, min(message) AS message, min(detail) AS detail
FROM refusal GROUP BY 1 ORDER BY 1;
SELECT call FROM refusal WHERE state <> '42501' OR message <> 'permission denied for this account';
-- the tables of another account: nothing, however asked
SELECT count(*) AS other_rows FROM (
    SELECT account_key FROM loyalty.settlement_account WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.settlement_line WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.mdf_claim WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.award WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.member_points WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.member_balance WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.leaderboard WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.account_status WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.account_benefits WHERE account_key = 'K8'
    UNION ALL SELECT account_key FROM loyalty.redemption WHERE account_key = 'K8') x;
SELECT count(*) FROM loyalty.tier_grant;
SELECT count(*) FROM loyalty.rebate_agreement;
SELECT count(*) FROM loyalty.cohort_assignment;
-- it writes nothing: no table, no operator or admin function
INSERT INTO loyalty.settlement_account (program_id, account_key, period_end, outcome) VALUES (1, 'K7', '2026-12-31', 'up');
UPDATE loyalty.reward SET stock = 1000;
DELETE FROM loyalty.member_points;
INSERT INTO loyalty.mdf_claim (program_id, account_key, claim_no, amount, purpose) VALUES (1, 'K7', 99, 1000, 'x');
SELECT loyalty.cancel_redemption(redemption_id) FROM loyalty.redemption LIMIT 1;
SELECT loyalty.claim_mdf('pr_club', 'K7', 1, 'x');
SELECT loyalty.award('pr_club', 'K7', 'webinar');
SELECT loyalty.settle('pr_club', '2026-12-31');
SELECT loyalty.set_reward('pr_club', 'R-ANY', 'Mug', 1);
SELECT loyalty.grant_tier('pr_club', 'K7', 'Gold');
RESET SESSION AUTHORIZATION;

-- K8's login: K8 alone, and not the Gold reward.
SET SESSION AUTHORIZATION pr_k8;
SELECT count(DISTINCT account_key) AS accounts, min(account_key) AS account FROM loyalty.account_status;
SELECT string_agg(reward_id, ',' ORDER BY reward_id) AS catalogue,
       string_agg(reward_id, ',' ORDER BY reward_id) = (SELECT rewards FROM want WHERE account_key = 'K8') AS catalogue_right
FROM loyalty.reward;
SELECT l.rank = w.year_rank AS rank_right, l.rank > 1 AS others_ahead FROM loyalty.leaderboard l, want w
WHERE w.account_key = 'K8' AND l.scope = 'account' AND l.period = 'year' AND l.period_start = date_trunc('year', now())::date;
-- its login has no member: it redeems as the account only
SELECT loyalty.redeem('pr_club', 'K8', 'R-GOLD');
SELECT loyalty.redeem('pr_club', 'K8', 'R-ANY', member => 'carl');
SELECT count(*) AS k7_redemptions_seen FROM loyalty.redemption WHERE account_key = 'K7';
RESET SESSION AUTHORIZATION;

-- A staff session that takes a partner's role (SET ROLE) is that partner
-- for the functions that run as the owner too.
SET ROLE pr_k7;
SELECT * FROM loyalty.statement('pr_club', 'K8', '2026-12-31');
RESET ROLE;

-- What the redemptions posted, from the ledger: K7 spent 2 x 100 as the
-- account and 500 as anna (verify() below checks anna's running total).
SELECT l.member_id, -sum(l.points) AS spent FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
WHERE p.name = 'pr_club' AND l.account_key = 'K7' AND l.kind = 'redeem' GROUP BY 1 ORDER BY 1;
SELECT sum(l.points) = (SELECT points FROM want WHERE account_key = 'K7') - 700 AS k7_points_right
FROM loyalty.ledger l JOIN loyalty.program p USING (program_id) WHERE p.name = 'pr_club' AND l.account_key = 'K7';
-- staff read everything as before
SET ROLE loyalty_reader;
SELECT count(DISTINCT account_key) = 2000 AS reader_sees_all FROM loyalty.account_status WHERE program = 'pr_club';
SELECT count(*) AS rewards FROM loyalty.reward r JOIN loyalty.program p USING (program_id) WHERE p.name = 'pr_club';
SELECT count(DISTINCT l.account_key) > 1000 AS reader_sees_the_board FROM loyalty.leaderboard l WHERE l.program = 'pr_club';
SELECT count(*) FILTER (WHERE cohort = 'pilot') AS pilot_seen FROM loyalty.account_status WHERE program = 'pr_club';
RESET ROLE;

SELECT * FROM loyalty.verify('pr_club');
SELECT loyalty.revoke_partner('pr_k7', 'pr_club');
SELECT loyalty.revoke_partner('pr_k8', 'pr_club');
DROP TABLE want, staff_statement, staff_expiring, refusal;
DROP FUNCTION pg_temp.try(text[]);
DROP ROLE pr_k7;
DROP ROLE pr_k8;
