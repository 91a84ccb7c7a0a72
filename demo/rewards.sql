-- Rewards on the Distributor Club: what its partners do with their points.
--
--   1. a catalogue of business rewards (training seats, a service visit,
--      marketing support, trade-show places, extended warranty, sessions
--      with experts) beside a discount;
--   2. redemptions by the largest accounts: one refused for lack of points,
--      one cancelled;
--   3. points for what is not a purchase: certifications that need
--      approval, referrals (one rejected), registered leads under a cap,
--      training modules by the people at an account;
--   4. the MDF wallet: credited for a quarter, a claim approved;
--   5. the leaderboard, member balances, and verify() (with the member
--      checks).
--
-- Run by scripts/demo.sh after demo/accrual.sql (the program and its
-- balances exist).

\set QUIET on
\pset footer off
\pset numericlocale on
\set program 'Distributor Club'

\echo
\echo '================================================================================'
\echo ' R1. The rewards catalogue'
\echo '================================================================================'
SELECT loyalty.set_reward(:'program', r.id, r.name, r.price, kind => r.kind, stock => r.stock,
                          per_account_limit => r.per_account, period_limit => r.per_period,
                          limit_period => CASE WHEN r.per_period IS NOT NULL THEN 'quarter' END,
                          min_tier => r.min_tier, description => r.descr)
FROM (VALUES
  ('TRAIN-SEAT', 'Staff training seat, 2 days',        1500::bigint, 'training',          40,   6,    2,    NULL,       'Product and installation training at the academy'),
  ('SERVICE',    'Service visit',                      3000,         'service_visit',     NULL, NULL, 1,    'Silver',   'A technician on site for a day'),
  ('MKT-KIT',    'Marketing support kit',              2000,         'marketing_support', NULL, NULL, NULL, NULL,       'Co-branded brochures and a local campaign'),
  ('FAIR',       'Place on our stand, spring fair',    8000,         'trade_show',        5,    1,    NULL, 'Gold',     'Two metres of the stand and two passes'),
  ('WARRANTY',   'Extended warranty, +1 year',         2500,         'extended_warranty', NULL, NULL, NULL, NULL,       'On one installation'),
  ('EXPERT',     'Session with an expert',             4000,         'expert_session',    NULL, NULL, NULL, 'Platinum', 'Two hours with a solar design engineer'),
  ('DISC-2',     '2 % off the next order',             1000,         'discount',          NULL, NULL, NULL, NULL,       NULL)
) AS r(id, name, price, kind, stock, per_account, per_period, min_tier, descr) \g /dev/null
SELECT reward_id, r.name, points_price, kind, min_tier, stock, per_account_limit AS per_account, period_limit AS per_quarter
FROM loyalty.reward r JOIN loyalty.program p USING (program_id) WHERE p.name = :'program' ORDER BY points_price;

\echo
\echo '================================================================================'
\echo ' R2. Redemptions: the five largest balances, one refusal, one cancellation'
\echo '================================================================================'
CREATE TEMP TABLE demo_top AS
SELECT b.account_key, b.points, (SELECT t.tier FROM loyalty.balance(:'program', b.account_key) t) AS tier
FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' ORDER BY b.points DESC, b.account_key LIMIT 5;
SELECT account_key, points, tier FROM demo_top ORDER BY points DESC;
-- each redeems what its tier and points allow; a redemption never overdraws
-- and a refusal writes nothing
CREATE TEMP TABLE demo_redeemed (account_key text, reward text, outcome text);
DO $$
DECLARE
    a record;
    r text;
BEGIN
    FOR a IN SELECT * FROM demo_top ORDER BY points DESC LOOP
        FOREACH r IN ARRAY ARRAY['EXPERT', 'FAIR', 'SERVICE', 'TRAIN-SEAT', 'MKT-KIT'] LOOP
            BEGIN
                PERFORM loyalty.redeem('Distributor Club', a.account_key, r);
                INSERT INTO demo_redeemed VALUES (a.account_key, r, 'redeemed');
            EXCEPTION WHEN SQLSTATE 'LY001' OR SQLSTATE 'LY002' THEN
                INSERT INTO demo_redeemed VALUES (a.account_key, r, 'refused (' || SQLSTATE || '): ' || SQLERRM);
            END;
        END LOOP;
    END LOOP;
END
$$;
SELECT account_key, reward, outcome FROM demo_redeemed ORDER BY account_key, reward;

-- a small balance asks for two marketing kits it cannot pay for
SELECT b.account_key AS poor FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND b.points BETWEEN 0 AND 2999 ORDER BY b.points, b.account_key LIMIT 1 \gset
SELECT set_config('demo.poor', :'poor', false) \g /dev/null
DO $$
BEGIN
    PERFORM loyalty.redeem('Distributor Club', current_setting('demo.poor'), 'MKT-KIT', 2);
EXCEPTION WHEN SQLSTATE 'LY001' THEN
    RAISE NOTICE 'refused (%): %', SQLSTATE, SQLERRM;
END
$$;
-- the largest account cancels its marketing kit: points and unit back, and
-- a ledger entry that points at the original
SELECT loyalty.cancel_redemption(d.redemption_id)
FROM loyalty.redemption d JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND d.reward_id = 'MKT-KIT'
  AND d.account_key = (SELECT account_key FROM demo_top ORDER BY points DESC LIMIT 1) \g /dev/null
SELECT l.account_key, l.kind, l.points, l.reason, l.corrects IS NOT NULL AS corrects_an_entry
FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND l.kind = 'redeem' AND l.reason LIKE '%MKT-KIT'
ORDER BY l.posted_at, l.points;
SELECT d.account_key, d.reward_id, d.quantity, d.points, d.status
FROM loyalty.redemption d JOIN loyalty.program p USING (program_id) WHERE p.name = :'program'
ORDER BY d.account_key, d.redemption_no;

\echo
\echo '================================================================================'
\echo ' R3. Actions: certifications (approved), referrals (one rejected), leads (capped)'
\echo '================================================================================'
SELECT loyalty.set_action_rule(:'program', 'certification', 1000, needs_approval => true) \g /dev/null
SELECT loyalty.set_action_rule(:'program', 'referral_signed', 2500, needs_approval => true) \g /dev/null
SELECT loyalty.set_action_rule(:'program', 'lead_registered', 50, cap_points => 200, cap_period => 'month') \g /dev/null
SELECT loyalty.set_action_rule(:'program', 'training_completed', 150) \g /dev/null
-- the people at the largest account
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT p.program_id, t.account_key, m.id, m.name, m.role
FROM loyalty.program p, (SELECT account_key FROM demo_top ORDER BY points DESC LIMIT 1) t,
     (VALUES ('m-anna', 'Anna Keller', 'economic_buyer'), ('m-ben', 'Ben Ortiz', 'technical_buyer'),
             ('m-chen', 'Chen Wei', 'end_user'), ('m-dana', 'Dana Novak', 'champion')) AS m(id, name, role)
WHERE p.name = :'program';
-- the CRM sends its events (each twice: a retried webhook awards once)
SELECT count(*) AS events_sent FROM (
    SELECT loyalty.award(:'program', t.account_key, e.action, ('2026-10-' || lpad(e.day::text, 2, '0'))::date,
                         member => e.member, reference => 'crm-' || e.ref)
    FROM (SELECT account_key FROM demo_top ORDER BY points DESC LIMIT 1) t,
         (VALUES ('certification', 3, 'm-ben', 1), ('certification', 7, 'm-chen', 2),
                 ('referral_signed', 9, NULL, 3), ('referral_signed', 12, 'm-dana', 4),
                 ('training_completed', 14, 'm-chen', 5), ('training_completed', 15, 'm-anna', 6),
                 ('lead_registered', 16, 'm-dana', 7), ('lead_registered', 17, 'm-dana', 8),
                 ('lead_registered', 18, 'm-dana', 9), ('lead_registered', 19, 'm-dana', 10),
                 ('lead_registered', 20, 'm-dana', 11)) AS e(action, day, member, ref),
         generate_series(1, 2) twice) s;
-- the partner manager checks them
SELECT loyalty.approve_award(w.award_id, note => 'certificate verified')
FROM loyalty.award w JOIN loyalty.program p USING (program_id)
WHERE p.name = :'program' AND w.action = 'certification' \g /dev/null
SELECT loyalty.approve_award(w.award_id, note => 'contract signed') FROM loyalty.award w
WHERE w.reference = 'crm-4' \g /dev/null
SELECT loyalty.reject_award(w.award_id, note => 'the referred company did not sign') FROM loyalty.award w
WHERE w.reference = 'crm-3' \g /dev/null
SELECT w.occurred_on, w.action, w.member_id, w.points, w.capped, w.status, w.note
FROM loyalty.award w JOIN loyalty.program p USING (program_id) WHERE p.name = :'program' ORDER BY w.occurred_on;

\echo
-- Dana, the champion, redeems a training seat from her own points
SELECT loyalty.redeem(:'program', m.account_key, 'TRAIN-SEAT', member => 'm-dana') IS NOT NULL AS dana_redeemed
FROM loyalty.member m JOIN loyalty.program p USING (program_id) WHERE p.name = :'program' AND m.member_id = 'm-dana';

\echo
\echo '================================================================================'
\echo ' R4. Market development funds: credited by the settlements, a claim approved'
\echo '================================================================================'
-- loyalty.settle() credited each settled quarter's MDF at the rate of the
-- account's tier (demo/settlement.sql set 1 % for Gold, 2 % for Platinum):
SELECT r.period_end, r.mdf_total AS mdf_credited FROM loyalty.settlement_run r
JOIN loyalty.program p ON p.program_id = r.program_id AND p.name = :'program' ORDER BY r.period_end;
SELECT t.account_key, b.mdf AS wallet FROM demo_top t JOIN loyalty.balance b USING (account_key)
JOIN loyalty.program p ON p.program_id = b.program_id AND p.name = :'program' ORDER BY t.points DESC;
SELECT loyalty.claim_mdf(:'program', t.account_key, round(b.mdf / 2, 2), 'Co-op advertising, regional radio',
                         reference => 'portal-1') AS claim
FROM (SELECT account_key FROM demo_top ORDER BY points DESC LIMIT 1) t
JOIN loyalty.balance b USING (account_key) JOIN loyalty.program p ON p.program_id = b.program_id AND p.name = :'program' \gset
SELECT loyalty.approve_mdf_claim(:'claim', note => 'media plan attached') AS decision;
SELECT c.account_key, c.amount, c.purpose, c.status, b.mdf AS wallet_after
FROM loyalty.mdf_claim c JOIN loyalty.balance b USING (program_id, account_key) WHERE c.claim_id = :'claim';

\echo
\echo '================================================================================'
\echo ' R5. Leaderboard (this month by account, this year by member), members, verify()'
\echo '================================================================================'
SELECT rank, account_key, points FROM loyalty.leaderboard
WHERE program = :'program' AND period = 'month' AND period_start = date_trunc('month', now())::date AND scope = 'account'
ORDER BY rank LIMIT 5;
SELECT rank, member_id, account_key, points FROM loyalty.leaderboard
WHERE program = :'program' AND period = 'year' AND period_start = date_trunc('year', now())::date AND scope = 'member'
ORDER BY rank;
SELECT account_key, member_id, m.name, role, points, earned, spent FROM loyalty.member_balance m
JOIN loyalty.program p USING (program_id) WHERE p.name = :'program' ORDER BY points DESC;
SELECT count(*) AS verify_rows FROM loyalty.verify(:'program');
SELECT count(*) AS member_check_rows FROM loyalty._verify_members((SELECT program_id FROM loyalty.program WHERE name = :'program'), NULL);
