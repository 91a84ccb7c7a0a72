--
-- expiry: points older than the program's point_lifetime expire at
-- settlement, oldest points spent first.  Settlement calls
-- loyalty._settle_expiry(program_id, period_start, period_end) in its own
-- transaction; here the superuser calls it directly.  Expected values are
-- computed in plain SQL from the ERP rows and the ledger, never with
-- loyalty's own functions.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA exp;
CREATE TABLE exp.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                          invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('expiry club', point_lifetime => '12 months', settlement_period => 'quarter') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'expiry club' \gset
SELECT loyalty.attach('exp.invoice', 'expiry club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;

--
-- 1. By hand: the age of a point is its document's month
--
-- A: 100 points in January 2025, 50 in April 2025, 30 redeemed.
-- B: 100 points in January 2025, a credit note of 80 in May 2025 (it takes
--    the newest points before it: 80 of January's).
-- C: 100 points in March 2025 by an invoice backfilled today: as old as its
--    document.
INSERT INTO exp.invoice VALUES (1, 'A', '2025-01-15', 100), (2, 'A', '2025-04-30', 50),
                               (3, 'B', '2025-01-10', 100), (4, 'B', '2025-05-02', -80),
                               (5, 'C', '2025-03-31', 100);
SELECT loyalty.fold('expiry club') > 0 AS folded;
SELECT loyalty._lock_for_debit(:pid, 'A') > 0 AS locked \gset
SELECT loyalty._post(:pid, 'A', 'redeem', -30, 'voucher') > 0 AS redeemed;

-- Lifetime 12 months: at the cutoff 2026-01-01 (end of Q4 2025) nothing is
-- 12 months old yet (January 2025's points are 11 months and some days old).
SELECT loyalty._settle_expiry(:pid, '2025-10-01', '2026-01-01') AS expired_q4_2025;
-- At 2026-04-01 (end of Q1 2026) the months before April 2025 expire:
-- A: 100 - 30 spent = 70; B: 100 - 80 taken by the credit note = 20;
-- C: 100.  April's 50 of A stay (they are 12 months old, not older).
SELECT loyalty._settle_expiry(:pid, '2026-01-01', '2026-04-01') AS expired_q1_2026;
SELECT l.account_key, l.kind, l.points, l.reason FROM loyalty.ledger l
WHERE l.program_id = :pid AND l.kind = 'expire' ORDER BY 1;
-- idempotent: the same cutoff again posts nothing
SELECT loyalty._settle_expiry(:pid, '2026-01-01', '2026-04-01') AS expired_again;
-- at 2026-07-01 April's 50 points of A expire, nothing else is left to
SELECT loyalty._settle_expiry(:pid, '2026-04-01', '2026-07-01') AS expired_q2_2026;
SELECT b.account_key, b.points FROM loyalty.balance b WHERE b.program_id = :pid ORDER BY 1;
SELECT * FROM loyalty.verify('expiry club');

-- A credit note larger than the month it belongs to takes the newest
-- points before it; a later invoice does not bring the old points back.
-- D: 100 in June 2025, 40 in July, a credit note of 60 in August (it takes
-- July's 40 and 20 of June's), 500 in September.  At 2026-07-01 (months
-- before July 2025) 80 of June expire, not 100.
INSERT INTO exp.invoice VALUES (10, 'D', '2025-06-01', 100), (11, 'D', '2025-07-01', 40),
                               (12, 'D', '2025-08-01', -60), (13, 'D', '2025-09-01', 500);
SELECT loyalty.fold('expiry club') > 0 AS folded;
SELECT d.account_key, d.points FROM loyalty._expiry_due(:pid, '2026-07-01', 'D') d;
SELECT loyalty._expiring_soon(:pid, 'D', '2026-05-15') AS d_expiring_soon;
-- the one cutoff in the 90 days after 2026-01-01 is 2026-04-01: nothing of
-- D is due by it
SELECT loyalty._expiring_soon(:pid, 'D', '2026-01-01') AS d_nothing_due;

-- Other credits are as old as their posting month in the program's time
-- zone: an award posted today expires 13 months after this month at the
-- latest; it is not due at the cutoff a year from today's quarter.
SELECT loyalty._post(:pid, 'E', 'award', 10, 'training') > 0 AS awarded;
SELECT count(*) AS e_due_in_a_year FROM loyalty._expiry_due(:pid,
    (date_trunc('quarter', current_date) + interval '12 months')::date, 'E');
SELECT d.points AS e_due_later FROM loyalty._expiry_due(:pid,
    (date_trunc('month', current_date) + interval '13 months')::date, 'E') d;

-- expiring_points: per cutoff in the next 90 days, for a reader
CREATE ROLE expiry_reader IN ROLE loyalty_reader;
SET ROLE expiry_reader;
SELECT * FROM loyalty.expiring_points('expiry club', as_of => '2026-05-15');
SELECT * FROM loyalty.expiring_points('expiry club', 'D', '2026-05-15');
SELECT loyalty._settle_expiry(:pid, '2026-04-01', '2026-07-01');
RESET ROLE;
DROP ROLE expiry_reader;

-- A program without a lifetime expires nothing.
SELECT loyalty.create_program('forever club') > 0 AS created;
SELECT loyalty._settle_expiry(p.program_id, '2026-01-01', '2099-01-01') AS never
FROM loyalty.program p WHERE p.name = 'forever club';

--
-- 2. A stranger's load: 3,000 accounts, three years of invoices, credit
-- notes, deleted invoices, awards, redemptions and an earlier expiry.  The
-- expected expiry walks each account's lots oldest first in plain SQL.
--
SELECT setseed(0.8);
SELECT loyalty.create_program('expiry load', point_lifetime => '18 months', settlement_period => 'month') > 0 AS created;
SELECT program_id AS lid FROM loyalty.program WHERE name = 'expiry load' \gset
CREATE TABLE exp.sale (sale_id int PRIMARY KEY, customer_id text NOT NULL,
                       sale_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.attach('exp.sale', 'expiry load', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'sale_date') > 0 AS attached;
-- invoices in random order of dates (a late invoice is as old as its date)
INSERT INTO exp.sale
SELECT i, 'k' || (1 + (random() * 2999)::int), date '2023-01-01' + (random() * 1094)::int, round((random() * 900 + 1)::numeric, 2)
FROM generate_series(1, 40000) i;
-- credit notes in the month of an invoice, for at most its amount
INSERT INTO exp.sale
SELECT 100000 + s.sale_id, s.customer_id, date_trunc('month', s.sale_date)::date + (random() * 27)::int,
       -round((random() * s.amount)::numeric, 2)
FROM exp.sale s WHERE random() < 0.1;
-- invoices deleted (reversed)
DELETE FROM exp.sale WHERE (sale_id % 100000) % 17 = 0;  -- with their credit notes
SELECT loyalty.fold('expiry load') > 0 AS folded;
-- awards, posted today
SELECT count(loyalty._post(:lid, 'k' || i, 'award', (random() * 300)::bigint + 1, 'certification')) AS awards
FROM generate_series(1, 3000, 7) i;

-- redemptions: lock, then read the balance in the next statement, then spend
CREATE FUNCTION exp.redeem_some(pid integer, share float8) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    k text;
    bal bigint;
    n bigint;
    total bigint := 0;
BEGIN
    FOR k IN SELECT a.account_key FROM loyalty.account a WHERE a.program_id = pid ORDER BY 1 LOOP
        CONTINUE WHEN random() >= share;
        PERFORM loyalty._lock_for_debit(pid, k);
        SELECT b.points INTO bal FROM loyalty.balance b WHERE b.program_id = pid AND b.account_key = k;
        n := floor(random() * coalesce(bal, 0))::bigint;
        IF n > 0 THEN
            PERFORM loyalty._post(pid, k, 'redeem', -n, 'reward');
            total := total + n;
        END IF;
    END LOOP;
    RETURN total;
END
$$;
SELECT exp.redeem_some(:lid, 0.4) > 0 AS redeemed;

-- The lots of each account, oldest first: what its invoices earned per
-- month (points per row: the amount toward zero, at 1 point per unit), then
-- the awards by their posting month.  Spent: redemptions and expiries.
CREATE FUNCTION exp.expected(pid integer, threshold date) RETURNS TABLE (account_key text, expire bigint)
LANGUAGE sql AS $$
WITH RECURSIVE lots AS (
    SELECT x.account_key, row_number() OVER (PARTITION BY x.account_key ORDER BY x.month, x.src) AS rn, x.month, x.points
    FROM (SELECT s.customer_id AS account_key, date_trunc('month', s.sale_date)::date AS month, 0 AS src,
                 sum(trunc(s.amount))::bigint AS points
          FROM exp.sale s GROUP BY 1, 2
          UNION ALL
          SELECT l.account_key, date_trunc('month', l.posted_at AT TIME ZONE 'UTC')::date, 1, sum(l.points)::bigint
          FROM loyalty.ledger l WHERE l.program_id = pid AND l.kind = 'award' GROUP BY 1, 2) x
    WHERE x.points <> 0),
spent AS (
    SELECT a.account_key, coalesce(-sum(l.points) FILTER (WHERE l.kind IN ('redeem', 'expire')), 0)::bigint AS spent
    FROM (SELECT DISTINCT lots.account_key FROM lots) a
    LEFT JOIN loyalty.ledger l ON l.program_id = pid AND l.account_key = a.account_key
    GROUP BY 1),
walk (account_key, rn, to_spend, expire) AS (
    SELECT s.account_key, 0::bigint, s.spent, 0::bigint FROM spent s
    UNION ALL
    SELECT w.account_key, l.rn, w.to_spend - least(l.points, w.to_spend),
           w.expire + CASE WHEN l.month < threshold THEN l.points - least(l.points, w.to_spend) ELSE 0 END
    FROM walk w JOIN lots l ON l.account_key = w.account_key AND l.rn = w.rn + 1)
SELECT DISTINCT ON (w.account_key) w.account_key, w.expire FROM walk w ORDER BY w.account_key, w.rn DESC
$$;
-- every month's net is positive (credit notes take at most their invoice)
SELECT count(*) AS negative_months FROM (SELECT customer_id, date_trunc('month', sale_date) FROM exp.sale
                                         GROUP BY 1, 2 HAVING sum(trunc(amount)) < 0) x;

-- The first cutoff, 2025-01-01: lifetime 18 months, the months before July 2023.
CREATE TEMP TABLE expected_1 AS SELECT * FROM exp.expected(:lid, '2023-07-01') WHERE expire > 0;
SELECT loyalty._settle_expiry(:lid, '2024-12-01', '2025-01-01') = (SELECT sum(expire) FROM expected_1) AS total_as_expected,
       (SELECT count(*) FROM expected_1) > 1000 AS many_accounts;
SELECT coalesce(e.account_key, l.account_key) AS account_key, e.expire AS expected, -l.points AS expired
FROM expected_1 e FULL JOIN (SELECT * FROM loyalty.ledger WHERE program_id = :lid AND kind = 'expire') l USING (account_key)
WHERE e.expire IS DISTINCT FROM -l.points;

-- more redemptions, then the second cutoff, 2027-01-01: the months before
-- July 2025; the awards (posted today) and the later invoices stay
SELECT exp.redeem_some(:lid, 0.3) > 0 AS redeemed;
CREATE TEMP TABLE expected_2 AS SELECT * FROM exp.expected(:lid, '2025-07-01') WHERE expire > 0;
SELECT loyalty._settle_expiry(:lid, '2026-12-01', '2027-01-01') = (SELECT sum(expire) FROM expected_2) AS total_as_expected,
       (SELECT count(*) FROM expected_2) > 1000 AS many_accounts;
SELECT coalesce(e.account_key, l.account_key) AS account_key, e.expire AS expected, -l.points AS expired
FROM expected_2 e FULL JOIN (SELECT * FROM loyalty.ledger WHERE program_id = :lid AND kind = 'expire'
                             AND reason LIKE 'expiry at 2027-01-01%') l USING (account_key)
WHERE e.expire IS DISTINCT FROM -l.points;
-- nothing older than the lifetime is left: what would still be due is nothing
SELECT count(*) AS still_due FROM exp.expected(:lid, '2025-07-01') WHERE expire > 0;
SELECT loyalty._settle_expiry(:lid, '2026-12-01', '2027-01-01') AS expired_again;
-- and after a far cutoff every point but those posted since is gone
SELECT loyalty._settle_expiry(:lid, '2099-11-01', '2099-12-01') = (SELECT sum(points) FROM loyalty.balance WHERE program_id = :lid)
       AS all_expired;
SELECT count(*) AS negative_balances FROM loyalty.balance WHERE program_id = :lid AND points < 0;
SELECT count(*) AS nonzero_balances FROM loyalty.balance WHERE program_id = :lid AND points <> 0;
SELECT * FROM loyalty.verify('expiry load');

--
-- 3. Caps: only the points the caps let through can expire.
--
SELECT loyalty.create_program('expiry capped', point_lifetime => '1 month', settlement_period => 'month') > 0 AS created;
SELECT program_id AS cid FROM loyalty.program WHERE name = 'expiry capped' \gset
SELECT loyalty.add_rule('expiry capped', valid_from => '2024-01-01', points_per_unit => 1, cap_points => 150, cap_period => 'quarter');
CREATE TABLE exp.capped (id int PRIMARY KEY, customer_id text NOT NULL, d date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.attach('exp.capped', 'expiry capped', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'd') > 0 AS attached;
-- 100 in January, 100 in February (capped to 50), 100 in April
INSERT INTO exp.capped VALUES (1, 'Z', '2025-01-05', 100), (2, 'Z', '2025-02-05', 100), (3, 'Z', '2025-04-05', 100);
SELECT loyalty.fold('expiry capped') > 0 AS folded;
SELECT points AS balance FROM loyalty.balance WHERE program_id = :cid;
-- at 2025-04-01 (months before March): 150, not 200
SELECT loyalty._settle_expiry(:cid, '2025-03-01', '2025-04-01') AS expired;
SELECT points AS balance FROM loyalty.balance WHERE program_id = :cid;
SELECT * FROM loyalty.verify('expiry capped');
