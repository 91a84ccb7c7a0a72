--
-- awards: points for what is not a purchase (training completed,
-- certification, referral that signs, lead registered and won, survey,
-- product review, startup onboarded).  Versioned rules per action, caps per
-- period, approval for the actions that need verification, idempotent by the
-- CRM's reference; only approved awards post points and count for tier
-- qualification (loyalty._action_counts).  Expected figures come from the
-- rules and the award rows in plain SQL.
--
\set VERBOSITY terse
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

SELECT loyalty.create_program('aw_partners', ladder => 'Registered:0, Silver:10000, Gold:50000') > 0 AS created;
SELECT loyalty.enroll('aw_partners', k) FROM unnest(ARRAY['acme', 'bolt', 'core']) k;
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role)
SELECT program_id, 'acme', m, initcap(m), r FROM loyalty.program,
       (VALUES ('ana', 'champion'), ('ben', 'technical_buyer')) AS x(m, r) WHERE name = 'aw_partners';

-- The rules: first versions apply to every day.
SELECT loyalty.set_action_rule('aw_partners', 'training_completed', 200);
SELECT loyalty.set_action_rule('aw_partners', 'certification', 1000, needs_approval => true);
SELECT loyalty.set_action_rule('aw_partners', 'referral_signed', 2500, needs_approval => true);
SELECT loyalty.set_action_rule('aw_partners', 'lead_registered', 50, cap_points => 200, cap_period => 'month');
SELECT loyalty.set_action_rule('aw_partners', 'lead_won', 500);
SELECT loyalty.set_action_rule('aw_partners', 'survey_answered', 20, cap_points => 40, cap_period => 'quarter');
SELECT loyalty.set_action_rule('aw_partners', 'product_review', 30);
SELECT loyalty.set_action_rule('aw_partners', 'startup_onboarded', 300, needs_approval => true);
-- a second version of training: from a fixed day on, 250
SELECT loyalty.set_action_rule('aw_partners', 'training_completed', 250, valid_from => '2025-03-01');
SELECT action, valid_from, points, needs_approval, cap_points, cap_period
FROM loyalty.action_rule r JOIN loyalty.program p USING (program_id) WHERE p.name = 'aw_partners' ORDER BY 1, 2;

-- Awards that need no approval post at once; the rule version in force on
-- the day it occurred decides.
SELECT loyalty.award('aw_partners', 'acme', 'training_completed', '2025-02-10', reference => 'lms-1') IS NOT NULL AS awarded;
SELECT loyalty.award('aw_partners', 'acme', 'training_completed', '2025-03-10', member => 'ana', reference => 'lms-2', quantity => 2) IS NOT NULL AS awarded;
SELECT loyalty.award('aw_partners', 'bolt', 'product_review', '2025-03-11', reference => 'rv-1') IS NOT NULL AS awarded;
-- the same CRM event again awards once (the same id comes back)
SELECT loyalty.award('aw_partners', 'acme', 'training_completed', '2025-02-10', reference => 'lms-1')
     = (SELECT award_id FROM loyalty.award WHERE account_key = 'acme' AND reference = 'lms-1') AS same_award;
-- ... but a reference reused for another event is refused
SELECT loyalty.award('aw_partners', 'acme', 'lead_won', '2025-02-10', reference => 'lms-1');
-- a reference is per account: bolt may use the same one
SELECT loyalty.award('aw_partners', 'bolt', 'training_completed', '2025-02-10', reference => 'lms-1') IS NOT NULL AS awarded;
SELECT account_key, action, member_id, occurred_on, quantity, rule_from, points, capped, status
FROM loyalty.award w JOIN loyalty.program p USING (program_id) WHERE p.name = 'aw_partners' ORDER BY account_key, award_no;

-- Caps: 200 points of leads a month.  Five leads in March: 4 earn, the 5th
-- is capped; April starts again.  Surveys: 40 a quarter.
SELECT count(loyalty.award('aw_partners', 'core', 'lead_registered', '2025-03-01'::date + g, reference => 'lead-' || g))
FROM generate_series(1, 5) g;
SELECT loyalty.award('aw_partners', 'core', 'lead_registered', '2025-04-02', reference => 'lead-6') IS NOT NULL AS awarded;
SELECT loyalty.award('aw_partners', 'core', 'survey_answered', '2025-01-05', reference => 's-1', quantity => 3) IS NOT NULL AS awarded;
SELECT loyalty.award('aw_partners', 'core', 'survey_answered', '2025-02-05', reference => 's-2') IS NOT NULL AS awarded;
SELECT loyalty.award('aw_partners', 'core', 'survey_answered', '2025-04-05', reference => 's-3') IS NOT NULL AS awarded;
SELECT action, date_trunc('month', occurred_on)::date AS month, sum(quantity) AS actions, sum(points) AS points, sum(capped) AS capped
FROM loyalty.award w JOIN loyalty.program p USING (program_id)
WHERE p.name = 'aw_partners' AND account_key = 'core' GROUP BY 1, 2 ORDER BY 1, 2;

-- Approval: a certification waits as pending and posts nothing; approving
-- posts it, once; rejecting a referral posts nothing, ever.
SELECT loyalty.award('aw_partners', 'acme', 'certification', '2025-03-15', member => 'ben', reference => 'cert-1') AS cert \gset
SELECT loyalty.award('aw_partners', 'acme', 'referral_signed', '2025-03-16', reference => 'ref-1') AS referral \gset
SELECT loyalty.award('aw_partners', 'bolt', 'startup_onboarded', '2025-03-17', reference => 'st-1') AS startup \gset
SELECT status, points, decided_at IS NULL AS undecided, entry_no IS NULL AS unposted FROM loyalty.award WHERE award_id = :'cert';
SELECT points FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'aw_partners' AND account_key = 'acme';
SELECT loyalty.approve_award(:'cert', 'certificate checked');
SELECT loyalty.approve_award(:'cert');
SELECT loyalty.reject_award(:'referral', 'the referred customer did not sign');
SELECT loyalty.reject_award(:'referral');
SELECT loyalty.approve_award(:'referral');
SELECT loyalty.reject_award(:'cert');
SELECT loyalty.approve_award(:'startup');
SELECT action, status, points, note, decided_by IS NOT NULL AS decided_by_set, entry_no IS NOT NULL AS posted
FROM loyalty.award WHERE award_id IN (:'cert', :'referral', :'startup') ORDER BY action;
-- a pending award counts towards the cap, a rejected one frees it
SELECT loyalty.set_action_rule('aw_partners', 'webinar', 100, needs_approval => true, cap_points => 100, cap_period => 'year');
SELECT loyalty.award('aw_partners', 'bolt', 'webinar', '2025-05-01', reference => 'w-1') AS w1 \gset
SELECT loyalty.award('aw_partners', 'bolt', 'webinar', '2025-05-02', reference => 'w-2') AS w2 \gset
SELECT points, capped FROM loyalty.award WHERE award_id = :'w2';
SELECT loyalty.reject_award(:'w1');
SELECT loyalty.award('aw_partners', 'bolt', 'webinar', '2025-05-03', reference => 'w-3') AS w3 \gset
SELECT points, capped FROM loyalty.award WHERE award_id = :'w3';

-- Every account's balance = its approved awards, from the award rows
SELECT a.account_key,
       (SELECT coalesce(sum(w.points), 0) FROM loyalty.award w
        WHERE w.program_id = a.program_id AND w.account_key = a.account_key AND w.status = 'approved') AS expected,
       coalesce(b.points, 0) AS actual
FROM loyalty.account a JOIN loyalty.program p USING (program_id)
LEFT JOIN loyalty.balance b ON (b.program_id, b.account_key) = (a.program_id, a.account_key)
WHERE p.name = 'aw_partners' ORDER BY 1;

-- Counts for tier qualification: approved actions only, by the day they
-- occurred, in [from, to).
SELECT * FROM loyalty._action_counts((SELECT program_id FROM loyalty.program WHERE name = 'aw_partners'),
                                     'lead_registered', '2025-03-01', '2025-04-01');
SELECT * FROM loyalty._action_counts((SELECT program_id FROM loyalty.program WHERE name = 'aw_partners'),
                                     'certification', '2025-01-01', '2026-01-01');
SELECT * FROM loyalty._action_counts((SELECT program_id FROM loyalty.program WHERE name = 'aw_partners'),
                                     'referral_signed', '2025-01-01', '2026-01-01');
SELECT * FROM loyalty._action_counts((SELECT program_id FROM loyalty.program WHERE name = 'aw_partners'),
                                     'startup_onboarded', '2025-03-17', '2025-03-18') ORDER BY 1;

-- What an award earned never changes: a new version must start after the
-- last action already awarded.
SELECT loyalty.set_action_rule('aw_partners', 'lead_registered', 60, valid_from => '2025-04-01');
SELECT loyalty.set_action_rule('aw_partners', 'lead_registered', 60, valid_from => '2025-04-03');

SELECT * FROM loyalty.verify('aw_partners');

-- Thousands of CRM events, each sent twice (a retried webhook): 2,000
-- accounts, one training each, awarded once.
SELECT count(loyalty.enroll('aw_partners', 'p' || g)) FROM generate_series(1, 2000) g;
SELECT count(loyalty.award('aw_partners', 'p' || g, 'training_completed', '2025-04-01', reference => 'evt-' || g))
FROM generate_series(1, 2000) g, generate_series(1, 2) twice;
SELECT count(*) AS awards, sum(points) AS points FROM loyalty.award w JOIN loyalty.program p USING (program_id)
WHERE p.name = 'aw_partners' AND account_key LIKE 'p%';
SELECT sum(points) AS balance_points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'aw_partners' AND account_key LIKE 'p%';
SELECT * FROM loyalty.verify('aw_partners');

-- Who may: operators award and decide; admins write the rules; readers
-- and strangers neither.
CREATE ROLE aw_operator IN ROLE loyalty_operator;
CREATE ROLE aw_reader IN ROLE loyalty_reader;
CREATE ROLE aw_admin IN ROLE loyalty_admin;
SET ROLE aw_operator;
SELECT loyalty.award('aw_partners', 'core', 'product_review', '2025-04-10', reference => 'rv-9') IS NOT NULL AS operator_awards;
SELECT loyalty.set_action_rule('aw_partners', 'product_review', 1000000);
INSERT INTO loyalty.award (program_id, account_key, award_no, action, occurred_on, quantity, rule_from, points, status)
SELECT program_id, 'core', 999, 'lead_won', current_date, 1, '-infinity', 1000000, 'approved' FROM loyalty.program WHERE name = 'aw_partners';
SET ROLE aw_reader;
SELECT loyalty.award('aw_partners', 'core', 'lead_won');
SELECT loyalty.approve_award(:'startup');
SET ROLE aw_admin;
SELECT loyalty.award('aw_partners', 'core', 'lead_won');
SELECT loyalty._action_counts(1, 'lead_won', '2025-01-01', '2026-01-01');
RESET ROLE;
DROP ROLE aw_operator, aw_reader, aw_admin;
SELECT * FROM loyalty.verify('aw_partners');
