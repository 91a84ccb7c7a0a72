-- Postings that no invoice row made (redeem, expire, award, rebate, mdf,
-- adjust) go through loyalty._post: a ledger entry and a balance delta in one
-- transaction, read by loyalty.balance before and after a fold, and checked by
-- verify() on every wallet (points, rebate, MDF).
\set VERBOSITY terse
SELECT loyalty.create_program('posting club', 'EUR') IS NOT NULL AS created;
SELECT loyalty.enroll('posting club', k) FROM unnest(ARRAY['A', 'B']) k;

-- several postings in one transaction, to one and two accounts
BEGIN;
SELECT loyalty._post(p.program_id, 'A', 'award', 500, 'training') AS first,
       loyalty._post(p.program_id, 'A', 'redeem', -200, 'voucher') AS second,
       loyalty._post(p.program_id, 'B', 'rebate', 0, 'rebate estimate', rebate => 123.45) AS third,
       loyalty._post(p.program_id, 'B', 'mdf', 0, 'mdf', mdf => 10.5) AS fourth
FROM loyalty.program p WHERE p.name = 'posting club';
COMMIT;
-- nothing to post: no entry
SELECT loyalty._post(p.program_id, 'A', 'adjust', 0, 'nothing') IS NULL AS nothing_posted
FROM loyalty.program p WHERE p.name = 'posting club';

-- expected from the ledger in plain SQL; the balance view must agree
SELECT l.account_key, sum(l.points) AS points, sum(l.rebate) AS rebate, sum(l.mdf) AS mdf, count(*) AS entries
FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
WHERE p.name = 'posting club' GROUP BY 1 ORDER BY 1;
SELECT b.account_key, b.points, b.rebate, b.mdf, b.entry_count
FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'posting club' ORDER BY 1;
SELECT * FROM loyalty.verify('posting club');

-- after a fold: the same, from balance_folded alone
SELECT loyalty.fold('posting club') >= 0 AS folded;
SELECT count(*) AS deltas_left FROM loyalty.balance_delta d JOIN loyalty.program p USING (program_id)
WHERE p.name = 'posting club';
SELECT b.account_key, b.points, b.rebate, b.mdf, b.entry_count
FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'posting club' ORDER BY 1;
SELECT * FROM loyalty.verify('posting club');

-- a wallet that drifts from its ledger is reported (balance_folded edited behind the engine's back)
UPDATE loyalty.balance_folded f SET mdf = mdf + 1 FROM loyalty.program p
WHERE p.program_id = f.program_id AND p.name = 'posting club' AND f.account_key = 'B';
SELECT account_key, item, expected, actual FROM loyalty.verify('posting club');
UPDATE loyalty.balance_folded f SET mdf = mdf - 1 FROM loyalty.program p
WHERE p.program_id = f.program_id AND p.name = 'posting club' AND f.account_key = 'B';

-- accrual kinds are the trigger's and backfill's alone
SELECT loyalty._post(p.program_id, 'A', 'earn', 1, 'forged') FROM loyalty.program p WHERE p.name = 'posting club';
SELECT loyalty._post(p.program_id, 'A', 'cap', -1, 'forged') FROM loyalty.program p WHERE p.name = 'posting club';
-- bonus too: verify() checks it against the invoice rows' on-time bonus
SELECT loyalty._post(p.program_id, 'A', 'bonus', 5, 'forged') FROM loyalty.program p WHERE p.name = 'posting club';

-- debits lock the account and number its debits; an unknown account is refused
SELECT loyalty._lock_for_debit(p.program_id, 'A') AS first_debit, loyalty._lock_for_debit(p.program_id, 'A') AS second_debit
FROM loyalty.program p WHERE p.name = 'posting club';
SELECT loyalty._lock_for_debit(p.program_id, 'nobody') FROM loyalty.program p WHERE p.name = 'posting club';

-- internal: no one but the owner may call it
CREATE ROLE posting_stranger;
GRANT USAGE ON SCHEMA loyalty TO posting_stranger;
SET ROLE posting_stranger;
SELECT loyalty._post(1, 'A', 'award', 1000000, 'gift');
SELECT loyalty._ledger_number();
SELECT loyalty._lock_for_debit(1, 'A');
RESET ROLE;
REVOKE USAGE ON SCHEMA loyalty FROM posting_stranger;
DROP ROLE posting_stranger;
