--
-- members: people at an account (economic buyer, technical buyer, end
-- user, champion) earn points of their own by actions and redeem from them;
-- the account's balance counts them too.  Both are exact: the member's
-- running total (loyalty.member_points, read through loyalty.member_balance)
-- equals the sum of the ledger entries that carry the member, and
-- loyalty._verify_members says so (verify() calls it).  The
-- leaderboard ranks accounts and members by the points they earned per
-- period.
--
\set VERBOSITY terse
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA mb;
CREATE TABLE mb.invoice (id int PRIMARY KEY, customer_id text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('mb_vip') > 0 AS created;
SELECT loyalty.attach('mb.invoice', 'mb_vip', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'mb_vip' \gset
INSERT INTO mb.invoice VALUES (1, 'acme', current_date, 1000.00), (2, 'bolt', current_date, 400.00);
INSERT INTO loyalty.member (program_id, account_key, member_id, name, role) VALUES
  (:pid, 'acme', 'eva', 'Eva', 'economic_buyer'), (:pid, 'acme', 'tom', 'Tom', 'technical_buyer'),
  (:pid, 'acme', 'uma', 'Uma', 'end_user'), (:pid, 'bolt', 'cal', 'Cal', 'champion');
SELECT loyalty.set_action_rule('mb_vip', 'product_review', 40);
SELECT loyalty.set_action_rule('mb_vip', 'learning_module', 25);
SELECT loyalty.set_reward('mb_vip', 'EXPERT', 'Session with an expert', 100, kind => 'expert_session');
SELECT loyalty.set_reward('mb_vip', 'MUG', 'Mug', 30, kind => 'goods');

-- Members earn by their actions; the account earns by its invoices.
SELECT count(loyalty.award('mb_vip', 'acme', 'product_review', member => 'tom', reference => 'r' || g)) FROM generate_series(1, 3) g;
SELECT count(loyalty.award('mb_vip', 'acme', 'learning_module', member => 'uma', reference => 'l' || g)) FROM generate_series(1, 2) g;
SELECT loyalty.award('mb_vip', 'bolt', 'learning_module', member => 'cal', reference => 'l1', quantity => 4) IS NOT NULL AS awarded;
SELECT loyalty.award('mb_vip', 'bolt', 'product_review', reference => 'r1') IS NOT NULL AS account_awarded;
-- a member of another account cannot earn here
SELECT loyalty.award('mb_vip', 'bolt', 'product_review', member => 'tom');

-- A member redeems from their own points (tom: 120): the expert session
-- once, not twice; the account's points go down as well.
SELECT loyalty.redeem('mb_vip', 'acme', 'EXPERT', member => 'tom') IS NOT NULL AS redeemed;
SELECT loyalty.redeem('mb_vip', 'acme', 'EXPERT', member => 'tom');
-- eva earned nothing: she cannot redeem even though the account could
SELECT loyalty.redeem('mb_vip', 'acme', 'MUG', member => 'eva');
-- the account redeems for itself from its whole balance
SELECT loyalty.redeem('mb_vip', 'acme', 'MUG') IS NOT NULL AS redeemed;
-- uma's mug, then cancelled: her points come back
SELECT loyalty.redeem('mb_vip', 'acme', 'MUG', member => 'uma') AS uma_mug \gset
SELECT loyalty.cancel_redemption(:'uma_mug');

-- Member balances, and expected from the ledger in plain SQL
SELECT account_key, member_id, role, points, earned, spent, entry_count
FROM loyalty.member_balance WHERE program_id = :pid ORDER BY 1, 2;
SELECT l.account_key, l.member_id, sum(l.points) AS points, count(*) AS entries
FROM loyalty.ledger l WHERE l.program_id = :pid AND l.member_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2;
-- account balances: invoices + all awards - all redemptions
SELECT b.account_key, b.points,
       (SELECT sum(trunc(i.amount)) FROM mb.invoice i WHERE i.customer_id = b.account_key)
       + (SELECT coalesce(sum(w.points), 0) FROM loyalty.award w WHERE (w.program_id, w.account_key) = (b.program_id, b.account_key))
       - (SELECT coalesce(sum(d.points), 0) FROM loyalty.redemption d
          WHERE (d.program_id, d.account_key) = (b.program_id, b.account_key) AND d.status = 'redeemed') AS expected
FROM loyalty.balance b WHERE b.program_id = :pid ORDER BY 1;
SELECT * FROM loyalty.verify('mb_vip');
SELECT * FROM loyalty._verify_members(:pid, NULL);

-- _verify_members finds what drifts: a running total edited behind the
-- engine's back, an entry of a person who is not a member, a redemption
-- whose entry differs (in a transaction rolled back after).
BEGIN;
UPDATE loyalty.member_points SET points = points + 5, earned = earned + 5 WHERE program_id = :pid AND member_id = 'uma';
SELECT loyalty._post(:pid, 'bolt', 'award', 7, 'forged', member_id => 'ghost') > 0 AS forged;
UPDATE loyalty.redemption SET points = points + 1 WHERE program_id = :pid AND account_key = 'acme' AND reward_id = 'EXPERT';
SELECT account_key, regexp_replace(item, '[0-9a-f-]{36}', '<id>') AS item, expected, actual
FROM loyalty._verify_members(:pid, NULL) ORDER BY 1, 2;
SELECT account_key, regexp_replace(item, '[0-9a-f-]{36}', '<id>') AS item FROM loyalty._verify_members(:pid, 'bolt') ORDER BY 2;
-- verify() reports the same rows
SELECT account_key, regexp_replace(item, '[0-9a-f-]{36}', '<id>') AS item FROM loyalty.verify('mb_vip')
WHERE item !~ '^balance_' ORDER BY 1, 2;
ROLLBACK;
SELECT count(*) AS drift FROM loyalty._verify_members(:pid, NULL);

-- The leaderboard, this month: accounts by all they earned (invoices and
-- awards), members by what they earned themselves.
SELECT scope, rank, account_key, member_id, points
FROM loyalty.leaderboard
WHERE program = 'mb_vip' AND period = 'month' AND period_start = date_trunc('month', current_date)::date
ORDER BY scope, rank, account_key, member_id;
-- expected, in plain SQL from the ledger (earning kinds only)
SELECT l.account_key, sum(l.points) AS earned FROM loyalty.ledger l
WHERE l.program_id = :pid AND l.kind IN ('earn', 'award') GROUP BY 1 ORDER BY 2 DESC;
SELECT count(DISTINCT period) AS periods FROM loyalty.leaderboard WHERE program = 'mb_vip';
