--
-- The program's calendar and the backend's caches across transactions:
-- what "today" is (the program's time zone, not the session's), one
-- definition of the rolling window, balance() for customers without an
-- account, prepared transactions, and a posting plan that failed to prepare.
--
-- Dates near today are only compared, never printed.
\set VERBOSITY terse
CREATE SCHEMA cal;
CREATE TABLE cal.inv (id int PRIMARY KEY, customer text, inv_date date, amount numeric(12,2));

SET TimeZone = 'UTC';
SELECT loyalty.create_program('cal_club', ladder => 'Member:0, Silver:1000') > 0 AS created;
SELECT time_zone FROM loyalty.program WHERE name = 'cal_club';
SELECT loyalty.attach('cal.inv', 'cal_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;

--
-- 1. Tier upgrades take effect tomorrow in the program's time zone.  Two
--    sessions post from Kiritimati (UTC+14) and from UTC-12, whose local
--    dates are at least one day apart, documents dated today in UTC (a
--    document dated after the program's today would move the upgrade past
--    itself, see document_dates); both upgrades count from the same day: the
--    day after today in UTC, whatever the time of day the test runs.
--
BEGIN;
SET LOCAL TimeZone = 'Pacific/Kiritimati';
INSERT INTO cal.inv VALUES (1, 'EAST', (now() AT TIME ZONE 'UTC')::date, 1500);
SET LOCAL TimeZone = 'Etc/GMT+12';
INSERT INTO cal.inv VALUES (2, 'WEST', (now() AT TIME ZONE 'UTC')::date, 1500);
COMMIT;
-- The fold that records the upgrades runs in a third time zone: the
-- program's own calendar decides, not the session's.
SET TimeZone = 'Pacific/Kiritimati';
SELECT loyalty.fold('cal_club') AS folded;
RESET TimeZone;
SELECT account_key, new_tier,
       effective_from = (now() AT TIME ZONE 'UTC')::date + 1 AS from_tomorrow_in_utc
  FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'cal_club' AND new_tier = 'Silver' ORDER BY account_key;

--
-- 2. The rolling window: balance() and the trigger's upgrade use the same
--    months.  A program whose window was stored in days by 1.0 ('90 days')
--    counts 3 calendar months in both places.
--
INSERT INTO loyalty.program (name, currency, ladder, qualification_window, time_zone)
VALUES ('cal_days', 'EUR', 'Member:0, Silver:1000', '90 days', 'UTC');
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit)
SELECT program_id, '-infinity', 1 FROM loyalty.program WHERE name = 'cal_days';
CREATE TABLE cal.inv90 (id int PRIMARY KEY, customer text, inv_date date, amount numeric(12,2));
SELECT loyalty.attach('cal.inv90', 'cal_days', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;
-- 600 two months ago, 600 now: 1200 within 3 calendar months -> Silver
INSERT INTO cal.inv90 VALUES (1, 'D', (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '2 months')::date, 600);
INSERT INTO cal.inv90 VALUES (2, 'D', (now() AT TIME ZONE 'UTC')::date, 600);
SELECT loyalty.fold('cal_days') AS folded;
SELECT b.rolling_qualifying, b.tier,
       b.rolling_qualifying = h.rolling_qualifying AS same_window_as_the_upgrade
  FROM loyalty.balance('cal_days', 'D') b,
       loyalty.tier_history h JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'cal_days' AND h.account_key = 'D' AND h.new_tier = 'Silver';

--
-- 3. balance() of a customer without an account: zeros, and the first tier
--    when its threshold is 0 (an account below every upgrade is a Member).
--    An unknown program is still an error.
--
SELECT * FROM loyalty.balance('cal_club', 'NOBODY');
SELECT loyalty.tier('cal_club', 'NOBODY');
SELECT * FROM loyalty.balance('no such program', 'X');
-- one row per customer in a set-based query, enrolled or not
SELECT c.k, b.points FROM (VALUES ('EAST'), ('NOBODY'), ('WEST')) c(k),
       LATERAL loyalty.balance('cal_club', c.k) b ORDER BY c.k;

--
-- 4. A prepared transaction's enrolment is forgotten when it is rolled
--    back: the backend enrols the customer again with its next invoice
--    (1.0 kept it cached and posted to an account that did not exist).
--
BEGIN;
INSERT INTO cal.inv VALUES (10, 'PREP', '2026-01-05', 50);
PREPARE TRANSACTION 'cal_prep';
ROLLBACK PREPARED 'cal_prep';
INSERT INTO cal.inv VALUES (11, 'PREP', '2026-01-06', 70);
SELECT account_key FROM loyalty.account a JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'cal_club' AND account_key = 'PREP';
SELECT points FROM loyalty.balance('cal_club', 'PREP');

--
-- 5. A posting plan that fails to prepare (here: loyalty.ledger is briefly
--    renamed) fails that statement only; the backend posts again after it
--    (1.0: "could not write loyalty.ledger" on every later insert).
--
\c
SET client_min_messages = error;
BEGIN;
ALTER TABLE loyalty.ledger RENAME TO ledger_away;
INSERT INTO cal.inv VALUES (20, 'PLAN', '2026-01-07', 30);
ROLLBACK;
INSERT INTO cal.inv VALUES (21, 'PLAN', '2026-01-08', 40);
SELECT points FROM loyalty.balance('cal_club', 'PLAN');

--
-- 6. A timestamptz document date becomes a date in the program's time zone,
--    whichever zone the attaching or the posting session uses: 31 March
--    12:00 UTC is 1 April in Kiritimati (UTC+14), the program's zone.
--
SET TimeZone = 'Pacific/Kiritimati';
SELECT loyalty.create_program('cal_east') > 0 AS created;
RESET TimeZone;
SET TimeZone = 'UTC';
CREATE TABLE cal.stamped (id int PRIMARY KEY, customer text, stamped_at timestamptz, amount numeric(12,2));
SELECT loyalty.attach('cal.stamped', 'cal_east', account_column => 'customer', amount_column => 'amount',
                      date_column => 'stamped_at') > 0 AS attached;
SET TimeZone = 'Etc/GMT+12';
INSERT INTO cal.stamped VALUES (1, 'K', '2026-03-31 12:00+00', 10);
SELECT document_date, month FROM loyalty.explain_points('cal.stamped', '1') e,
       LATERAL (SELECT m.month FROM loyalty.accrual_month m JOIN loyalty.program p USING (program_id)
                WHERE p.name = 'cal_east') m;
SET TimeZone = 'UTC';

SELECT count(*) AS drift FROM loyalty.verify('cal_club');
SELECT count(*) AS drift FROM loyalty.verify('cal_days');
SELECT count(*) AS drift FROM loyalty.verify('cal_east');
