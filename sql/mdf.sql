--
-- mdf: the market development funds wallet.  Settlement credits it with the
-- period's qualifying spend times the MDF rate of the account's tier
-- (loyalty._settle_mdf, called by loyalty.settle; the rate is the tier's
-- mdf_rate benefit, loyalty.set_benefit); partners claim
-- against it, operators approve (the ledger takes the amount) or reject
-- (nothing posted).  The wallet never goes below zero.  Expected figures
-- come from the invoices in plain SQL.
--
\set VERBOSITY terse
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA mdf;
CREATE TABLE mdf.invoice (id int PRIMARY KEY, customer_id text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('mdf_partners', ladder => 'Registered:0, Gold:100000') > 0 AS created;
SELECT loyalty.attach('mdf.invoice', 'mdf_partners', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'mdf_partners' \gset
-- Q1 2025: north buys 40,000.50 in two months, south 12,345.67, west has a
-- credit note bigger than its purchases; Q2: north 10,000
INSERT INTO mdf.invoice VALUES
  (1, 'north', '2025-01-10', 30000.00), (2, 'north', '2025-03-31', 10000.50),
  (3, 'south', '2025-02-01', 12345.67),
  (4, 'west', '2025-01-05', 100.00), (5, 'west', '2025-02-05', -300.00),
  (6, 'north', '2025-04-01', 10000.00);

-- Settling Q1 at a rate of 2 %: north 800.01, south 246.91, west nothing.
-- (The fold gives every account its first tier; periods before it count
-- at that tier.)
SELECT loyalty.fold('mdf_partners') >= 0 AS folded;
SELECT loyalty.set_benefit('mdf_partners', t, 'mdf_rate', '0.02') FROM unnest(ARRAY['Registered', 'Gold']) t;
SELECT loyalty._settle_mdf(:pid, '2025-01-01', '2025-03-31') AS credited;
SELECT i.customer_id, sum(i.amount) AS spend, round(greatest(sum(i.amount), 0) * 0.02, 2) AS expected
FROM mdf.invoice i WHERE i.invoice_date >= '2025-01-01' AND i.invoice_date < '2025-04-01' GROUP BY 1 ORDER BY 1;
SELECT account_key, period_start, period_end, spend, rate, amount, entry_no IS NOT NULL AS posted
FROM loyalty.mdf_accrual WHERE program_id = :pid ORDER BY 1;
-- settling the period again credits nobody twice
SELECT loyalty._settle_mdf(:pid, '2025-01-01', '2025-03-31') AS credited_again;
SELECT account_key, mdf FROM loyalty.balance WHERE program_id = :pid ORDER BY 1;
-- an empty period is refused
SELECT loyalty._settle_mdf(:pid, '2025-04-02', '2025-04-01');

-- Claims: pending claims reserve their amount; the wallet (800.01) covers
-- 500 + 300 but not 500 + 300 + 0.02.
SELECT loyalty.claim_mdf('mdf_partners', 'north', 500, 'Spring fair booth', reference => 'portal-1') AS c1 \gset
SELECT loyalty.claim_mdf('mdf_partners', 'north', 300, 'Co-op advertising') AS c2 \gset
SELECT loyalty.claim_mdf('mdf_partners', 'north', 0.02, 'Flyers');
-- the same portal claim again is the same claim
SELECT loyalty.claim_mdf('mdf_partners', 'north', 500, 'Spring fair booth', reference => 'portal-1') = :'c1' AS same_claim;
SELECT loyalty.claim_mdf('mdf_partners', 'north', 501, 'Spring fair booth', reference => 'portal-1');
SELECT amount, purpose, status, entry_no IS NULL AS unposted FROM loyalty.mdf_claim WHERE program_id = :pid ORDER BY claim_no;
SELECT mdf FROM loyalty.balance WHERE program_id = :pid AND account_key = 'north';
-- approving posts the negative mdf entry; rejecting posts nothing and frees
-- the reserve
SELECT loyalty.approve_mdf_claim(:'c1', 'invoice of the fair attached');
SELECT loyalty.approve_mdf_claim(:'c1');
SELECT loyalty.reject_mdf_claim(:'c2', 'not in the plan');
SELECT loyalty.approve_mdf_claim(:'c2');
SELECT loyalty.reject_mdf_claim(:'c1');
SELECT status, amount, note, decided_by IS NOT NULL AS decided_by_set FROM loyalty.mdf_claim WHERE program_id = :pid ORDER BY claim_no;
SELECT l.kind, l.mdf, l.points, l.reason FROM loyalty.ledger l WHERE l.program_id = :pid AND l.kind = 'mdf' ORDER BY l.mdf;
SELECT mdf FROM loyalty.balance WHERE program_id = :pid AND account_key = 'north';

-- The wallet never goes below zero: a claim is checked against the wallet
-- less the pending claims (300.01 covers 300 + 0.01, not a cent more), and
-- an approval checks the wallet again.
SELECT loyalty.claim_mdf('mdf_partners', 'north', 300, 'Trade-show travel') AS c3 \gset
SELECT loyalty.claim_mdf('mdf_partners', 'north', 0.01, 'Stamps') AS c4 \gset
SELECT loyalty.claim_mdf('mdf_partners', 'north', 0.01, 'More stamps');
-- (were the wallet to shrink, an approval would fail and leave the claim
-- pending: here a hand-made claim of more than the wallet shows it)
INSERT INTO loyalty.mdf_claim (program_id, account_key, claim_no, amount, purpose)
VALUES (:pid, 'north', 1000, 10000, 'Forged');
SELECT claim_id AS c5 FROM loyalty.mdf_claim WHERE claim_no = 1000 AND program_id = :pid \gset
SELECT loyalty.approve_mdf_claim(:'c5');
SELECT status FROM loyalty.mdf_claim WHERE claim_id = :'c5';
SELECT loyalty.reject_mdf_claim(:'c5', 'forged');
SELECT loyalty.approve_mdf_claim(:'c3'), loyalty.approve_mdf_claim(:'c4');
SELECT mdf FROM loyalty.balance WHERE program_id = :pid AND account_key = 'north';
SELECT loyalty.claim_mdf('mdf_partners', 'north', 0.01, 'Nothing left');

-- Q2 at 3 %: north 300.00 more; ledger and balance agree.
SELECT loyalty.set_benefit('mdf_partners', t, 'mdf_rate', '0.03') FROM unnest(ARRAY['Registered', 'Gold']) t;
SELECT loyalty._settle_mdf(:pid, '2025-04-01', '2025-06-30') AS credited_q2;
SELECT b.account_key, b.mdf,
       (SELECT coalesce(sum(a.amount), 0) FROM loyalty.mdf_accrual a WHERE (a.program_id, a.account_key) = (b.program_id, b.account_key))
     - (SELECT coalesce(sum(c.amount), 0) FROM loyalty.mdf_claim c
        WHERE (c.program_id, c.account_key) = (b.program_id, b.account_key) AND c.status = 'approved') AS expected
FROM loyalty.balance b WHERE b.program_id = :pid ORDER BY 1;
SELECT * FROM loyalty.verify('mdf_partners');

-- Who may: operators claim and decide; readers and admins may not;
-- _settle_mdf is settlement's alone.
CREATE ROLE mdf_operator IN ROLE loyalty_operator;
CREATE ROLE mdf_reader IN ROLE loyalty_reader;
SET ROLE mdf_operator;
SELECT loyalty.claim_mdf('mdf_partners', 'north', 1, 'Cards') IS NOT NULL AS operator_claims;
SELECT loyalty._settle_mdf(:pid, '2025-07-01', '2025-09-30');
UPDATE loyalty.mdf_claim SET status = 'approved';
SET ROLE mdf_reader;
SELECT loyalty.claim_mdf('mdf_partners', 'north', 1, 'Cards');
SELECT loyalty.approve_mdf_claim(:'c3');
RESET ROLE;
DROP ROLE mdf_operator, mdf_reader;
SELECT * FROM loyalty.verify('mdf_partners');

-- The rate is that of the tier the account holds on the period's last day:
-- the last tier change in effect then, even one that took its tier away;
-- only before its first change does it count at its first recorded tier.
-- (An account that lost its tier earned MDF at its first tier's rate.)
SELECT loyalty.create_program('mdf_tiers', ladder => 'Silver:1000, Gold:5000') AS tid \gset
CREATE TABLE mdf.invoice2 (id int PRIMARY KEY, customer_id text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.attach('mdf.invoice2', 'mdf_tiers', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO mdf.invoice2 VALUES (1, 'lost', '2025-02-10', 1000), (2, 'lost', '2025-05-10', 2000), (3, 'lost', '2025-08-10', 4000);
SELECT loyalty.set_benefit('mdf_tiers', 'Silver', 'mdf_rate', '0.05');
INSERT INTO loyalty.tier_history (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason)
VALUES (:tid, 'lost', 1, '2025-04-02', NULL, 'Silver', 'requalification'),
       (:tid, 'lost', 2, '2025-07-02', 'Silver', NULL, 'downgrade');
-- Q1 (before the first change: Silver) 50.00, Q2 (Silver) 100.00, Q3 (no tier) nothing
SELECT loyalty._settle_mdf(:tid, '2025-01-01', '2025-03-31') AS q1, loyalty._settle_mdf(:tid, '2025-04-01', '2025-06-30') AS q2,
       loyalty._settle_mdf(:tid, '2025-07-01', '2025-09-30') AS q3;
SELECT period_end, spend, rate, amount FROM loyalty.mdf_accrual WHERE program_id = :tid ORDER BY 1;
