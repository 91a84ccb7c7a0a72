--
-- redemption: loyalty.redeem spends an account's points on a reward of the
-- catalogue and never overdraws a balance, a stock or a limit; a refused
-- redemption writes nothing (SQLSTATE LY001 for points, LY002 for the
-- reward).  loyalty.cancel_redemption gives the points and the units back
-- with a ledger entry that points at the original.  The expected figures
-- come from the invoices and the ledger in plain SQL.
--
\set VERBOSITY terse
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA rd;
CREATE TABLE rd.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                         amount numeric(12,2) NOT NULL, doc_type text NOT NULL DEFAULT 'INV');
SELECT loyalty.create_program('rd_club', ladder => 'Member:0, Silver:1000, Gold:5000') > 0 AS created;
SELECT loyalty.attach('rd.invoice', 'rd_club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date', doc_type_column => 'doc_type', credit_note_types => '{CRN}') > 0 AS attached;
-- customer 1: 6,000 points (Gold), 2: 1,200 (Silver), 3: 300 (Member)
INSERT INTO rd.invoice VALUES (1, 1, current_date, 6000.00), (2, 2, current_date, 1200.00), (3, 3, current_date, 300.00);
SELECT loyalty.set_reward('rd_club', 'SEAT', 'Training seat', 500, kind => 'training', stock => 3, per_account_limit => 2);
SELECT loyalty.set_reward('rd_club', 'VISIT', 'Service visit', 1000, kind => 'service_visit', min_tier => 'Silver');
SELECT loyalty.set_reward('rd_club', 'HOUR', 'Consultancy hour', 100, kind => 'consultancy', period_limit => 3, limit_period => 'month');
SELECT loyalty.set_reward('rd_club', 'FAIR', 'Trade-show place', 200, kind => 'trade_show',
                          valid_from => current_date + 1, valid_until => current_date + 60);
SELECT loyalty.set_reward('rd_club', 'OLD', 'Old offer', 10, kind => 'goods', active => false);
SELECT loyalty.set_reward('rd_club', 'PEN', 'Pen', 100, kind => 'goods');

-- Expected balances, from the invoices and the ledger's non-invoice entries.
CREATE VIEW rd.expected AS
SELECT i.customer_id::text AS account_key,
       sum(CASE WHEN i.doc_type = 'CRN' THEN -trunc(i.amount) ELSE trunc(i.amount) END)::bigint
       + coalesce((SELECT sum(l.points) FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
                   WHERE p.name = 'rd_club' AND l.account_key = i.customer_id::text AND l.kind = 'redeem'), 0) AS points
FROM rd.invoice i GROUP BY i.customer_id;
CREATE VIEW rd.check AS
SELECT e.account_key, e.points AS expected, b.points AS actual
FROM rd.expected e JOIN loyalty.balance b ON b.account_key = e.account_key
JOIN loyalty.program p ON p.program_id = b.program_id AND p.name = 'rd_club'
ORDER BY 1;

-- A redemption: the ledger entry (kind redeem, negative), the redemption
-- row with the account's debit number, the stock taken.
SELECT loyalty.redeem('rd_club', '1', 'SEAT', 2) IS NOT NULL AS redeemed;
SELECT account_key, redemption_no, reward_id, quantity, points, status, redeemed_on = current_date AS today
FROM loyalty.redemption d JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' ORDER BY 1, 2;
SELECT l.account_key, l.kind, l.points, l.reason, l.member_id
FROM loyalty.ledger l JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' AND l.kind = 'redeem';
-- the redemption row points at its ledger entry
SELECT count(*) AS linked FROM loyalty.redemption d JOIN loyalty.ledger l
  ON (l.program_id, l.account_key, l.posted_xid, l.entry_no) = (d.program_id, d.account_key, d.posted_xid, d.entry_no)
JOIN loyalty.program p ON p.program_id = d.program_id AND p.name = 'rd_club'
WHERE l.points = -d.points;
SELECT stock FROM loyalty.reward WHERE reward_id = 'SEAT';
SELECT * FROM rd.check;

-- Refusals: each writes nothing.
\set VERBOSITY default
\set SHOW_CONTEXT never
-- over the per-account limit (2 seats already)
SELECT loyalty.redeem('rd_club', '1', 'SEAT');
-- over the stock (1 left)
SELECT loyalty.redeem('rd_club', '2', 'SEAT', 2);
-- tier too low (3 is Member, the visit needs Silver)
SELECT loyalty.redeem('rd_club', '3', 'VISIT');
-- not yet offered (its window starts tomorrow: the detail, which names the
-- dates, is compared rather than printed), no longer active
DO $$
DECLARE
    m text;
    d text;
    h text;
BEGIN
    PERFORM loyalty.redeem('rd_club', '1', 'FAIR');
    RAISE NOTICE 'redeemed: not refused';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RAISE NOTICE '% (%); detail names the window and today: %; %', m, SQLSTATE,
        d = format('It is offered from %s until (not including) %s; today is %s.',
                   current_date + 1, current_date + 60, current_date), h;
END
$$;
SELECT loyalty.redeem('rd_club', '1', 'OLD');
-- over the per-period limit (3 a month)
SELECT loyalty.redeem('rd_club', '3', 'HOUR', 4);
-- not enough points: a seat of 500 for 300 points, two visits of 1,000 for
-- a Silver account of 1,200
SELECT loyalty.redeem('rd_club', '3', 'SEAT');
SELECT loyalty.redeem('rd_club', '2', 'VISIT', 2);
\set VERBOSITY terse
SELECT count(*) AS redemptions FROM loyalty.redemption d JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club';
SELECT debit_no FROM loyalty.account a JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' ORDER BY account_key;
SELECT stock FROM loyalty.reward WHERE reward_id = 'SEAT';
SELECT * FROM rd.check;

-- The per-period limit: 3 hours a month.  Two last month do not count.
SELECT loyalty.redeem('rd_club', '2', 'HOUR', 2) IS NOT NULL AS redeemed;
UPDATE loyalty.redemption SET redeemed_on = date_trunc('month', current_date)::date - 1
WHERE account_key = '2' AND reward_id = 'HOUR';
SELECT loyalty.redeem('rd_club', '2', 'HOUR', 3) IS NOT NULL AS redeemed;
SELECT loyalty.redeem('rd_club', '2', 'HOUR');

-- Cancelling: the points and the unit come back; the new entry corrects the
-- original; a second cancellation is refused.  A cancelled redemption no
-- longer counts for the limits.
SELECT redemption_id AS seat FROM loyalty.redemption WHERE account_key = '1' AND reward_id = 'SEAT' \gset
SELECT loyalty.cancel_redemption(:'seat');
SELECT d.status, d.cancelled_at IS NOT NULL AS cancelled_at_set, c.kind, c.points, c.corrects = d.entry_no AND c.corrects_xid = d.posted_xid AS corrects_original
FROM loyalty.redemption d JOIN loyalty.ledger c
  ON (c.program_id, c.account_key, c.posted_xid, c.entry_no) = (d.program_id, d.account_key, d.cancel_xid, d.cancel_entry_no)
WHERE d.redemption_id = :'seat';
SELECT stock FROM loyalty.reward WHERE reward_id = 'SEAT';
SELECT loyalty.cancel_redemption(:'seat');
SELECT loyalty.redeem('rd_club', '1', 'SEAT', 2) IS NOT NULL AS redeemed_again;
SELECT * FROM rd.check;

-- A credit note takes the balance below what was spent: it goes negative
-- (the invoice's reversal, not an overdraft), and every redemption is
-- refused until earnings cover it.
INSERT INTO rd.invoice VALUES (4, 3, current_date, 290.00, 'CRN');
SELECT loyalty.redeem('rd_club', '3', 'HOUR') IS NOT NULL AS redeemed;
INSERT INTO rd.invoice VALUES (5, 3, current_date, 100.00, 'CRN');
SELECT points FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' AND account_key = '3';
SELECT loyalty.redeem('rd_club', '3', 'HOUR');
INSERT INTO rd.invoice VALUES (6, 3, current_date, 200.00);
SELECT loyalty.redeem('rd_club', '3', 'HOUR') IS NOT NULL AS redeemed;
SELECT * FROM rd.check;

-- Reads are exact before and after a fold; verify() is empty.
SELECT loyalty.fold('rd_club') >= 0 AS folded;
SELECT * FROM rd.check;
SELECT * FROM loyalty.verify('rd_club');
SELECT * FROM loyalty._verify_members((SELECT program_id FROM loyalty.program WHERE name = 'rd_club'), NULL);

--
-- As a stranger: 3,000 accounts, one redemption each in one statement, then
-- a fresh session redeems again.  Every balance = its invoices - its
-- redemptions.
--
INSERT INTO rd.invoice SELECT 100 + g, 100 + g, current_date, 1000 + g % 7 FROM generate_series(1, 3000) g;
SELECT count(*) FILTER (WHERE loyalty.redeem('rd_club', (100 + g)::text, 'PEN', 1 + g % 3) IS NOT NULL) AS redeemed
FROM generate_series(1, 3000) g;
\c
SET timezone = 'UTC';
SELECT count(*) FILTER (WHERE loyalty.redeem('rd_club', (100 + g)::text, 'PEN') IS NOT NULL) AS redeemed_in_a_new_session
FROM generate_series(1, 3000, 2) g;
SELECT count(*) AS accounts, count(*) FILTER (WHERE expected = actual) AS exact, min(actual) >= 0 AS none_negative
FROM rd.check WHERE CASE WHEN account_key ~ '^[0-9]{1,9}$' THEN account_key::int > 100 ELSE false END;
-- in all: the invoices less 100 points per pen (6,000 + 1,500 pens)
SELECT sum(1000 + g % 7) - 100 * (sum(1 + g % 3) + 1500) AS expected_points FROM generate_series(1, 3000) g;
SELECT sum(b.points) AS balance_points, (SELECT sum(d.quantity) FROM loyalty.redemption d WHERE d.reward_id = 'PEN') AS pens
FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' AND CASE WHEN b.account_key ~ '^[0-9]{1,9}$' THEN b.account_key::int > 100 ELSE false END;
SELECT * FROM loyalty.verify('rd_club');

--
-- As an attacker: only operators redeem and cancel; a reader, an admin and
-- a stranger are refused, and cannot write the redemption table or the
-- ledger directly.
--
CREATE ROLE rd_operator IN ROLE loyalty_operator;
CREATE ROLE rd_reader IN ROLE loyalty_reader;
CREATE ROLE rd_admin IN ROLE loyalty_admin;
SET ROLE rd_operator;
SELECT loyalty.redeem('rd_club', '1', 'HOUR') IS NOT NULL AS operator_redeems;
INSERT INTO loyalty.redemption (program_id, account_key, redemption_no, reward_id, quantity, points, redeemed_on, entry_no)
VALUES (1, '1', 999, 'HOUR', 1, 1, current_date, 1);
-- the key as a number (the form Citus routes on integer keys): the same
-- redemption of the same account
SELECT (SELECT points FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
         WHERE p.name = 'rd_club' AND b.account_key = '2') AS before_numeric \gset
SELECT loyalty.redeem('rd_club', 2, 'PEN') IS NOT NULL AS operator_redeems_by_number;
SELECT :before_numeric - points AS spent_by_number, (SELECT d.account_key FROM loyalty.redemption d
         ORDER BY d.redeemed_at DESC LIMIT 1) AS redeemed_account
FROM loyalty.balance b JOIN loyalty.program p USING (program_id) WHERE p.name = 'rd_club' AND b.account_key = '2';
SET ROLE rd_reader;
SELECT loyalty.redeem('rd_club', 2, 'PEN');
SELECT loyalty.redeem('rd_club', '1', 'HOUR');
SELECT loyalty.cancel_redemption(:'seat');
UPDATE loyalty.redemption SET status = 'cancelled';
SET ROLE rd_admin;
SELECT loyalty.redeem('rd_club', '1', 'HOUR');
RESET ROLE;
DROP ROLE rd_operator, rd_reader, rd_admin;
SELECT * FROM loyalty.verify('rd_club');
