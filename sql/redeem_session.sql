--
-- redeem_session: loyalty.redeem() keeps its statements prepared for the
-- life of a backend.  In one session: every refusal of an argument (the
-- same SQLSTATE, message, detail and hint as ever), a reward changed
-- between two redemptions (price, activity, stock, tier, limits: each read
-- anew), a refusal followed by a redemption, a redemption rolled back with
-- its savepoint, a caller's own operators on its search_path (never used),
-- and the extension dropped and re-created under the same backend: no
-- stale plan, no crash.  Expected figures from the invoices and the ledger
-- in plain SQL.
--
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
CREATE DATABASE rs_session;
\c rs_session
SET client_min_messages = warning;
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
CREATE EXTENSION loyalty;
CREATE SCHEMA rs;
CREATE TABLE rs.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('rs_club', ladder => 'Member:0, Silver:1000') > 0 AS created;
SELECT loyalty.attach('rs.invoice', 'rs_club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO rs.invoice SELECT g, g, current_date, 100.00 * g FROM generate_series(1, 20) g;
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 10);
SELECT loyalty.enroll('rs_club', 'no-points');

-- the balance each account must have: invoices less redeem entries (a
-- function with a string body: it outlives the extension dropped below)
CREATE FUNCTION rs.check(OUT off bigint, OUT accounts bigint) LANGUAGE sql AS $$
SELECT count(*) FILTER (WHERE b.points IS DISTINCT FROM e.points) AS off, count(*) AS accounts
FROM (SELECT i.customer_id::text AS account_key, sum(trunc(i.amount))::bigint
             + coalesce((SELECT sum(l.points) FROM loyalty.ledger l
                         WHERE l.account_key = i.customer_id::text AND l.kind = 'redeem'), 0) AS points
      FROM rs.invoice i GROUP BY i.customer_id) e
LEFT JOIN loyalty.balance b USING (account_key);
$$;

-- Refusals of the arguments, each with its message, detail and hint, then
-- their SQLSTATEs.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT loyalty.redeem(NULL, '1', 'CAP');
SELECT loyalty.redeem('no_such_club', '1', 'CAP');
SELECT loyalty.redeem('rs_club', NULL, 'CAP');
SELECT loyalty.redeem('rs_club', '999', 'CAP');
SELECT loyalty.redeem('rs_club', '1', NULL);
SELECT loyalty.redeem('rs_club', '1', 'NO-SUCH-REWARD');
SELECT loyalty.redeem('rs_club', '1', 'CAP', 0);
SELECT loyalty.redeem('rs_club', '1', 'CAP', NULL);
SELECT loyalty.redeem('rs_club', '1', 'CAP', 1, member => 'nobody');
SELECT loyalty.redeem('rs_club', 'no-points', 'CAP');
SELECT loyalty.set_reward('rs_club', 'GOLD', 'Gold bar', 1000000000000);
SELECT loyalty.redeem('rs_club', '1', 'GOLD', 10000000);
CREATE FUNCTION rs.sqlstate(p text, a text, r text, q integer, m text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM loyalty.redeem(p, a, r, q, m);
    RETURN 'redeemed';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
SELECT p, a, r, q, m, rs.sqlstate(p, a, r, q, m)
FROM (VALUES (NULL, '1', 'CAP', 1, NULL), ('no_such_club', '1', 'CAP', 1, NULL), ('rs_club', NULL, 'CAP', 1, NULL),
             ('rs_club', '999', 'CAP', 1, NULL), ('rs_club', '1', NULL, 1, NULL), ('rs_club', '1', 'NO-SUCH-REWARD', 1, NULL),
             ('rs_club', '1', 'CAP', 0, NULL), ('rs_club', '1', 'CAP', NULL, NULL), ('rs_club', '1', 'CAP', 1, 'nobody'),
             ('rs_club', 'no-points', 'CAP', 1, NULL), ('rs_club', '1', 'GOLD', 10000000, NULL)) v(p, a, r, q, m);
SELECT count(*) AS redemptions FROM loyalty.redemption;
SELECT sum(debit_no) AS debits FROM loyalty.account;

-- The reward changed between redemptions of one session: each redemption
-- reads it as it is now.
SELECT loyalty.redeem('rs_club', '1', 'CAP') IS NOT NULL AS redeemed;
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 25);
SELECT loyalty.redeem('rs_club', '1', 'CAP', 2) IS NOT NULL AS redeemed;
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 25, active => false);
SELECT loyalty.redeem('rs_club', '1', 'CAP');
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 5, stock => 1);
SELECT loyalty.redeem('rs_club', '2', 'CAP', 2);
SELECT loyalty.redeem('rs_club', '2', 'CAP') IS NOT NULL AS redeemed;
SELECT loyalty.redeem('rs_club', '3', 'CAP');
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 5, min_tier => 'Silver');
SELECT loyalty.redeem('rs_club', '3', 'CAP');
SELECT loyalty.redeem('rs_club', '10', 'CAP') IS NOT NULL AS redeemed;
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 5, per_account_limit => 1);
SELECT loyalty.redeem('rs_club', '10', 'CAP');
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 5, period_limit => 1, limit_period => 'year');
SELECT loyalty.redeem('rs_club', '10', 'CAP');
SELECT loyalty.redeem('rs_club', '11', 'CAP') IS NOT NULL AS redeemed;
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 7);
-- a refusal for points, then a redemption, in one transaction's savepoints
BEGIN;
SAVEPOINT a;
SELECT loyalty.redeem('rs_club', '1', 'CAP', 100);
ROLLBACK TO a;
SELECT loyalty.redeem('rs_club', '1', 'CAP') IS NOT NULL AS redeemed;
SAVEPOINT b;
SELECT loyalty.redeem('rs_club', '4', 'CAP') IS NOT NULL AS redeemed;
ROLLBACK TO b;
COMMIT;
SELECT account_key, redemption_no, reward_id, quantity, points, status
FROM loyalty.redemption ORDER BY account_key, redemption_no;
SELECT account_key, points, reason FROM loyalty.ledger WHERE kind = 'redeem' ORDER BY account_key, posted_at, entry_no;
SELECT account_key, debit_no FROM loyalty.account WHERE debit_no > 0 ORDER BY account_key;
-- every redemption is linked to its entry and its entry to its delta
SELECT count(*) AS linked FROM loyalty.redemption d
JOIN loyalty.ledger l ON (l.program_id, l.account_key, l.posted_xid, l.entry_no) = (d.program_id, d.account_key, d.posted_xid, d.entry_no)
WHERE l.points = -d.points;
SELECT * FROM rs.check();
SELECT * FROM loyalty.verify('rs_club');

-- A caller's operators and functions on its search_path are never used:
-- an = on text and a date_trunc that would fail, in public first.
CREATE FUNCTION public.text_eq_trap(text, text) RETURNS boolean LANGUAGE plpgsql AS
$$BEGIN RAISE EXCEPTION 'the caller''s = ran'; END$$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq_trap);
CREATE FUNCTION public.date_trunc(text, timestamp) RETURNS timestamp LANGUAGE plpgsql AS
$$BEGIN RAISE EXCEPTION 'the caller''s date_trunc ran'; END$$;
SET search_path = public, pg_catalog;
SELECT loyalty.redeem('rs_club', '12', 'CAP') IS NOT NULL AS redeemed;
RESET search_path;
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.text_eq_trap(text, text), public.date_trunc(text, timestamp);

-- A column added to and dropped from tables the kept statements read and
-- write: they are planned again, and the redemption row is whole.
ALTER TABLE loyalty.reward ADD COLUMN note text;
ALTER TABLE loyalty.redemption ADD COLUMN note text;
SELECT loyalty.redeem('rs_club', '13', 'CAP') IS NOT NULL AS redeemed;
ALTER TABLE loyalty.reward DROP COLUMN note;
ALTER TABLE loyalty.redemption DROP COLUMN note;
SELECT loyalty.redeem('rs_club', '13', 'CAP', 2) IS NOT NULL AS redeemed;
SELECT account_key, redemption_no, quantity, points, redeemed_on = current_date AS today, entry_no IS NOT NULL AS linked
FROM loyalty.redemption WHERE account_key IN ('12', '13') ORDER BY 1, 2;
SELECT * FROM rs.check();
SELECT * FROM loyalty.verify('rs_club');

-- The extension dropped and created again in this backend: the kept plans
-- name tables that no longer exist; they are parsed again against the new
-- ones (the program now has another id).
DROP EXTENSION loyalty CASCADE;
CREATE EXTENSION loyalty;
SELECT loyalty.create_program('other') > 0 AS created;
SELECT loyalty.create_program('rs_club', ladder => 'Member:0, Silver:1000') > 1 AS created;
SELECT loyalty.attach('rs.invoice', 'rs_club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
SELECT accounts, points FROM loyalty.backfill('rs.invoice', 'rs_club', '-infinity');
SELECT loyalty.set_reward('rs_club', 'CAP', 'Cap', 3, stock => 5, per_account_limit => 2, min_tier => 'Member');
SELECT loyalty.redeem('rs_club', '1', 'CAP', 2) IS NOT NULL AS redeemed;
SELECT loyalty.redeem('rs_club', '1', 'CAP');
SELECT loyalty.redeem('rs_club', '2', 'CAP') IS NOT NULL AS redeemed;
SELECT p.name, d.account_key, d.redemption_no, d.quantity, d.points
FROM loyalty.redemption d JOIN loyalty.program p USING (program_id) ORDER BY 2, 3;
SELECT stock FROM loyalty.reward;
SELECT * FROM rs.check();
SELECT * FROM loyalty.verify('rs_club');
\c contrib_regression
DROP DATABASE rs_session;
