--
-- backfill_tiers: backfill replays the tier history period by period, as
-- the program would have produced it had it run from `since`: upgrades on
-- accrual from the day after the document day that reached a tier,
-- re-qualification at each quarter's end (settled the day after it, in
-- force the day after that) with the one-level grace, and every row's
-- points at the tier in force on its date.  The expected history and
-- points come from an independent PL/pgSQL replay over the invoices
-- below, which calls no loyalty function.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET TimeZone = 'UTC';

CREATE SCHEMA bt;
-- Eight quarters of invoices of 300 customers (2024-2025), three a
-- quarter, whose quarterly spend rises and falls: the window of six
-- months moves them up and down the ladder.  A program attached after the
-- fact: nothing accrued.
CREATE TABLE bt.invoice (id int PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                         invoice_date date NOT NULL);
INSERT INTO bt.invoice
SELECT row_number() OVER (ORDER BY a, q, k), 'c' || lpad(a::text, 3, '0'),
       ((a * 37 + q * 53) % 10) * 1500 + (a % 13) * 10 + 0.25 * (k % 4),
       ('2024-01-01'::date + make_interval(months => 3 * q))::date + ((a * 3 + k * 29) % 89)
FROM generate_series(1, 300) a, generate_series(0, 7) q, generate_series(0, 2) k;

SELECT loyalty.create_program('bt_club', ladder => 'Silver:5000, Gold:20000, Platinum:60000',
                              qualification_window => '6 months', settlement_period => 'quarter') > 0 AS created;
SELECT loyalty.add_rule('bt_club', '2020-01-01', 1,
                        tier_multipliers => '{"Silver": 1.25, "Gold": 1.5, "Platinum": 2}');
SELECT loyalty.set_tier_rules('bt_club', grace => 'one_level');
SELECT loyalty.attach('bt.invoice', 'bt_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'bt_club' \gset

-- The independent replay: after each document day the window of six
-- months ending with the day's month (documents up to that day) decides
-- an upgrade, in force the next day; at each quarter that has ended the
-- window ending with its last month decides, the tier drops at most one
-- level, a tier reached during the quarter stands; the change is in force
-- from the second day after the quarter.  Then the periods after the data
-- until the quarter of today, with no documents.
CREATE TABLE bt.expect_history (account_key text, change_no int, effective_from date, old_tier text, new_tier text);
CREATE FUNCTION bt.replay() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    names text[] := '{Silver,Gold,Platinum}';
    th numeric[] := '{5000,20000,60000}';
    first_open date := date_trunc('quarter', current_date)::date;
    a text; cur int; nw int; n int; reached boolean; ps date; pe date; d date; q numeric;
BEGIN
    TRUNCATE bt.expect_history;
    FOR a IN SELECT DISTINCT customer FROM bt.invoice ORDER BY 1 LOOP
        cur := 0; n := 0; ps := '2024-01-01';
        LOOP
            reached := false;
            FOR d IN SELECT DISTINCT i.invoice_date FROM bt.invoice i
                     WHERE i.customer = a AND i.invoice_date >= ps
                       AND (ps >= first_open OR i.invoice_date < ps + interval '3 months') ORDER BY 1 LOOP
                SELECT sum(i.amount) INTO q FROM bt.invoice i
                WHERE i.customer = a AND i.invoice_date <= d
                  AND i.invoice_date >= date_trunc('month', d) - interval '5 months';
                nw := (SELECT count(*) FROM unnest(th) t WHERE t <= q);
                IF nw > cur THEN
                    n := n + 1;
                    INSERT INTO bt.expect_history VALUES (a, n, d + 1, names[cur], names[nw]);
                    cur := nw; reached := true;
                END IF;
            END LOOP;
            EXIT WHEN ps >= first_open;
            pe := (ps + interval '3 months')::date - 1;
            SELECT coalesce(sum(i.amount), 0) INTO q FROM bt.invoice i
            WHERE i.customer = a AND i.invoice_date <= pe
              AND i.invoice_date >= date_trunc('month', pe) - interval '5 months';
            nw := (SELECT count(*) FROM unnest(th) t WHERE t <= q);
            nw := CASE WHEN nw >= cur THEN nw WHEN reached THEN cur ELSE greatest(nw, cur - 1) END;
            IF nw <> cur THEN
                n := n + 1;
                INSERT INTO bt.expect_history VALUES (a, n, pe + 2, names[cur], names[nw]);
                cur := nw;
            END IF;
            ps := (ps + interval '3 months')::date;
        END LOOP;
    END LOOP;
END
$$;
-- Each invoice's points at the tier of its date, toward zero.
CREATE VIEW bt.expect_points AS
SELECT i.customer AS account_key,
       sum(trunc(i.amount * coalesce(CASE (SELECT h.new_tier FROM bt.expect_history h
                                           WHERE h.account_key = i.customer AND h.effective_from <= i.invoice_date
                                           ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1)
                                      WHEN 'Silver' THEN 1.25 WHEN 'Gold' THEN 1.5 WHEN 'Platinum' THEN 2 END, 1)))::bigint AS points
FROM bt.invoice i GROUP BY 1;
-- The history backfill wrote against the expected one, both ways.
CREATE VIEW bt.history_diff AS
(SELECT 'missing' AS side, e.* FROM bt.expect_history e
 EXCEPT ALL
 SELECT 'missing', h.account_key, h.change_no::int, h.effective_from, h.old_tier, h.new_tier
 FROM loyalty.tier_history h WHERE h.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'bt_club'))
UNION ALL
(SELECT 'extra', h.account_key, h.change_no::int, h.effective_from, h.old_tier, h.new_tier
 FROM loyalty.tier_history h WHERE h.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'bt_club')
 EXCEPT ALL
 SELECT 'extra', e.* FROM bt.expect_history e);
CREATE VIEW bt.points_diff AS
SELECT e.account_key, e.points AS expected, b.points AS actual
FROM bt.expect_points e FULL JOIN (SELECT account_key, points FROM loyalty.balance WHERE program_id = :pid) b
     USING (account_key)
WHERE e.points IS DISTINCT FROM b.points;
SELECT bt.replay();

--
-- 1. Backfill from the start: the tier history and every account's points
--    are the independent replay's.
--
SELECT accounts, months, source_rows FROM loyalty.backfill('bt.invoice', 'bt_club', '2024-01-01');
SELECT count(*) AS history_rows, count(DISTINCT account_key) AS accounts_moved,
       count(*) FILTER (WHERE effective_from < '2026-01-01' AND old_tier IS NOT NULL
                          AND (array_position('{Silver,Gold,Platinum}'::text[], new_tier) IS NULL
                               OR array_position('{Silver,Gold,Platinum}'::text[], new_tier)
                                  < array_position('{Silver,Gold,Platinum}'::text[], old_tier))) > 0 AS has_downgrades,
       count(*) FILTER (WHERE old_tier IS NOT NULL AND new_tier IS NOT NULL
                          AND array_position('{Silver,Gold,Platinum}'::text[], new_tier)
                              > array_position('{Silver,Gold,Platinum}'::text[], old_tier)) > 0 AS has_upgrades
FROM bt.expect_history;
SELECT * FROM bt.history_diff ORDER BY 2, 3 LIMIT 10;
SELECT count(*) AS backfill_rows FROM loyalty.tier_history WHERE program_id = :pid AND reason = 'backfill';
SELECT * FROM bt.points_diff ORDER BY 1 LIMIT 10;
-- every account's tier is the last of its history
SELECT count(*) AS tier_mismatches FROM loyalty.account a
WHERE a.program_id = :pid AND a.tier IS DISTINCT FROM
      (SELECT e.new_tier FROM bt.expect_history e WHERE e.account_key = a.account_key ORDER BY e.change_no DESC LIMIT 1);
SELECT since, through = (date_trunc('quarter', current_date) - interval '1 day')::date AS through_last_quarter,
       accounts, tier_changes = (SELECT count(*) FROM bt.expect_history) AS all_changes
FROM loyalty.tier_replay WHERE program_id = :pid;
\set VERBOSITY default
SELECT * FROM loyalty.verify('bt_club') LIMIT 5;

--
-- 2. A second backfill posts nothing and writes no history.
--
SELECT count(*) AS history_before, max(xmin::text::bigint) AS xmin_before
FROM loyalty.tier_history WHERE program_id = :pid \gset
\set VERBOSITY terse
SELECT * FROM loyalty.backfill('bt.invoice', 'bt_club', '2024-01-01');
\set VERBOSITY default
SELECT count(*) = :history_before AS same_rows, max(xmin::text::bigint) = :xmin_before AS not_rewritten
FROM loyalty.tier_history WHERE program_id = :pid;
SELECT tier_changes FROM loyalty.tier_replay WHERE program_id = :pid;

--
-- 3. Settlement after the replay: settle_due() settles no replayed
--    quarter again (no second re-qualification, no new history), and
--    settle() refuses one.
--
SELECT count(*) AS runs FROM loyalty.settle_due('bt_club');
SELECT count(*) = :history_before AS history_unchanged FROM loyalty.tier_history WHERE program_id = :pid;
\set VERBOSITY terse
SELECT loyalty.settle('bt_club', '2025-12-31');
\set VERBOSITY default
SELECT count(*) AS runs FROM loyalty.settlement_run WHERE program_id = :pid;

--
-- 4. A credit note in a past quarter, after the backfill: the trigger
--    takes back its amount at the tier of its date (c007 was Gold in
--    Q2 2024 by the replay).  verify() stays empty.  The tier history
--    still is the replay without the credit note, which would have made
--    c007 drop to Silver at the end of Q2 2024; a new backfill replays it
--    with the credit note, rewrites c007's history only, and reprices its
--    later invoices.
--
SELECT new_tier AS tier_on_2024_05_20 FROM bt.expect_history
WHERE account_key = 'c007' AND effective_from <= '2024-05-20' ORDER BY change_no DESC LIMIT 1;
SELECT points AS points_before FROM loyalty.balance WHERE program_id = :pid AND account_key = 'c007' \gset
INSERT INTO bt.invoice VALUES (100000, 'c007', -31000.00, '2024-05-20');
SELECT points - :points_before AS credit_points, trunc(-31000.00 * 1.5) AS at_gold
FROM loyalty.balance WHERE program_id = :pid AND account_key = 'c007';
SELECT * FROM loyalty.verify('bt_club') LIMIT 5;
SELECT bt.replay();
SELECT count(*) > 0 AS history_differs FROM bt.history_diff;
SELECT side, count(*) AS changes, min(account_key) AS first_account, max(account_key) AS last_account
FROM bt.history_diff GROUP BY 1 ORDER BY 1;
\set VERBOSITY terse
SELECT accounts, months > 0 AS months_reposted FROM loyalty.backfill('bt.invoice', 'bt_club', '2024-01-01');
\set VERBOSITY default
SELECT * FROM bt.history_diff ORDER BY 2, 3 LIMIT 10;
SELECT * FROM bt.points_diff ORDER BY 1 LIMIT 10;
SELECT * FROM loyalty.verify('bt_club') LIMIT 5;

--
-- 5. Refused: a backfill from a date a settlement run covers (its tier
--    changes are settlement's).
--
CREATE TABLE bt.sale (id int PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL, sale_date date NOT NULL);
INSERT INTO bt.sale VALUES (1, 'S', 7000, '2024-02-01');
SELECT loyalty.create_program('bt_settled', ladder => 'Silver:5000') > 0 AS created;
SELECT loyalty.attach('bt.sale', 'bt_settled', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
SELECT loyalty.enroll('bt_settled', 'S');
SELECT (loyalty.settle('bt_settled', '2024-03-31')).accounts;
SELECT * FROM loyalty.backfill('bt.sale', 'bt_settled', '2024-01-01');
-- from the quarter after it: allowed
\set VERBOSITY terse
SELECT accounts FROM loyalty.backfill('bt.sale', 'bt_settled', '2024-04-01');

--
-- 6. Months before since count in the windows as the ledger holds them.
--    M's invoice of November 2024 accrued when it was written (after
--    attach); the one of January 2025 predates attach.  Backfill from
--    January 2025: the window of six months on 15 January holds 4000 +
--    2000, Silver from the 16th; at the end of Q1 2025 the window
--    (October-March) still holds 6100; at the end of Q2 (January-June) only
--    2100: no grace, no tier from 2 July 2025.  The January invoice earns
--    as a member without tier (the upgrade counts from the next day).
--
CREATE TABLE bt.mid (id int PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL, sale_date date NOT NULL);
INSERT INTO bt.mid VALUES (1, 'M', 2000, '2025-01-15');
SELECT loyalty.create_program('bt_mid', ladder => 'Silver:5000', qualification_window => '6 months') > 0 AS created;
SELECT loyalty.add_rule('bt_mid', '2020-01-01', 1, tier_multipliers => '{"Silver": 2}');
SELECT loyalty.attach('bt.mid', 'bt_mid', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
INSERT INTO bt.mid VALUES (2, 'M', 4000, '2024-11-10'), (3, 'M', 100, '2025-02-01');
SELECT accounts, months, points FROM loyalty.backfill('bt.mid', 'bt_mid', '2025-01-01');
SELECT h.change_no, h.effective_from, h.old_tier, h.new_tier, h.reason, h.rolling_qualifying
FROM loyalty.tier_history h JOIN loyalty.program p USING (program_id)
WHERE p.name = 'bt_mid' ORDER BY h.change_no;
-- 4000 + 2000 at no tier; invoice 3 (1 February) was accrued at no tier
-- before the replay made M Silver from 16 January: backfill reprices it, 200
SELECT b.points, 4000 + 2000 + 2 * 100 AS expected FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'bt_mid';
SELECT * FROM loyalty.verify('bt_mid');
