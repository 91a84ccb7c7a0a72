--
-- A document earns by the rules, tier and segment in force on its own date,
-- and a reversal takes back exactly that, also for documents dated in the
-- future: a tier upgrade or a segment change never takes effect before the
-- latest document the account has already accrued.  Expected points are
-- computed in plain SQL from the documents and the multipliers.
--
\set VERBOSITY terse
CREATE SCHEMA dd;
CREATE TABLE dd.inv (id int PRIMARY KEY, customer text, inv_date date, amount numeric(12,2));
SET TimeZone = 'UTC';
SELECT loyalty.create_program('dd_club', ladder => 'Member:0, Silver:1000') > 0 AS created;
SELECT loyalty.add_rule('dd_club', '2020-01-01', 1, tier_multipliers => '{"Silver": 2}',
                        segment_multipliers => '{"cooperation_model": {"distributor": 1.5}}');
SELECT loyalty.attach('dd.inv', 'dd_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;
\set today '(now() AT TIME ZONE ''UTC'')::date'

--
-- 1. A document dated 40 days ahead, then an upgrade to Silver today: the
--    upgrade counts from the day after the future document, which keeps the
--    100 points it earned as a Member, and its deletion takes back 100.
--
INSERT INTO dd.inv VALUES (1, 'X', :today + 40, 100);
INSERT INTO dd.inv VALUES (2, 'X', :today, 1500);
SELECT loyalty.fold('dd_club') AS folded;  -- records the upgrade (pg_cron does, every minute)
SELECT new_tier, effective_from = :today + 41 AS after_the_future_document
  FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'dd_club' AND h.account_key = 'X' AND new_tier = 'Silver';
SELECT points FROM loyalty.balance('dd_club', 'X');
DELETE FROM dd.inv WHERE id = 1;
SELECT points FROM loyalty.balance('dd_club', 'X');
-- a document dated after the upgrade's day earns as Silver
INSERT INTO dd.inv VALUES (3, 'X', :today + 60, 10);
SELECT points, points = 1500 + 2 * 10 AS as_expected FROM loyalty.balance('dd_club', 'X');

--
-- 2. A segment change with a document 20 days ahead: the new segment
--    (distributor, 1.5x) applies after that document, which was accrued
--    without it and is reversed without it.
--
INSERT INTO dd.inv VALUES (10, 'Y', :today + 20, 100), (11, 'Y', :today, 10);
SELECT loyalty.enroll('dd_club', 'Y', cooperation_model => 'distributor');
SELECT valid_until = :today + 21 AS after_the_future_document FROM loyalty.account_history h
  JOIN loyalty.program p USING (program_id) WHERE p.name = 'dd_club' AND h.account_key = 'Y';
UPDATE dd.inv SET amount = 200 WHERE id = 10;
SELECT points, points = 200 + 10 AS as_expected FROM loyalty.balance('dd_club', 'Y');
INSERT INTO dd.inv VALUES (12, 'Y', :today + 30, 100);
SELECT points, points = 200 + 10 + 150 AS as_expected FROM loyalty.balance('dd_club', 'Y');
SELECT count(*) AS drift FROM loyalty.verify('dd_club');

--
-- 3. A customer enrolled after their first invoices, from a date before
--    them: those documents are restated (they earn from enrolled_from on).
--    Enrolled from today, the documents of today earn too, and no
--    loyalty_admin is needed for that.
--
SELECT loyalty.create_program('dd_explicit', enrollment => 'explicit') > 0 AS created;
CREATE TABLE dd.inv2 (id int PRIMARY KEY, customer text, inv_date date, amount numeric(12,2));
SELECT loyalty.attach('dd.inv2', 'dd_explicit', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;
INSERT INTO dd.inv2 VALUES (1, 'Z', '2026-02-01', 100), (2, 'Z', '2026-03-01', 50), (3, 'Z', '2025-12-01', 7),
                           (4, 'T', :today, 30), (5, 'T', '2026-01-01', 40);
SELECT account_key, source_rows FROM loyalty.unenrolled_activity u JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'dd_explicit' ORDER BY 1;
SELECT loyalty.enroll('dd_explicit', 'Z', enrolled_from => '2026-01-01');
SELECT points, points = (SELECT sum(trunc(amount)) FROM dd.inv2 WHERE customer = 'Z' AND inv_date >= '2026-01-01')
       AS as_expected FROM loyalty.balance('dd_explicit', 'Z');
CREATE ROLE dd_operator IN ROLE loyalty_operator;
GRANT USAGE ON SCHEMA dd TO dd_operator;
GRANT SELECT ON dd.inv2 TO dd_operator;
SET ROLE dd_operator;
SELECT loyalty.enroll('dd_explicit', 'T');
SELECT loyalty.enroll('dd_explicit', 'U', enrolled_from => '2020-01-01');
RESET ROLE;
INSERT INTO dd.inv2 VALUES (6, 'U', '2026-01-01', 5);
SET ROLE dd_operator;
SELECT loyalty.enroll('dd_explicit', 'V');
RESET ROLE;
INSERT INTO dd.inv2 VALUES (7, 'W', '2026-01-01', 5);
SET ROLE dd_operator;
SELECT loyalty.enroll('dd_explicit', 'W', enrolled_from => '2020-01-01');
RESET ROLE;
SELECT points FROM loyalty.balance('dd_explicit', 'T');
SELECT count(*) AS drift FROM loyalty.verify('dd_explicit');
DROP OWNED BY dd_operator;
DROP ROLE dd_operator;
