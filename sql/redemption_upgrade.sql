--
-- redemption_upgrade: 1.0's loyalty.redemption had a key drawn from an
-- identity, and no function of 1.0 wrote it.  The update to 1.1 re-creates
-- the table keyed by the account and its debit number, and refuses, with a
-- clear error and nothing changed, when rows were written into it by hand.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE DATABASE rd_upgrade;
\c rd_upgrade
SET client_min_messages = warning;
CREATE EXTENSION loyalty VERSION '1.0';
SELECT loyalty.create_program('Club') > 0 AS created;
INSERT INTO loyalty.account (program_id, account_key) SELECT program_id, '1' FROM loyalty.program;
INSERT INTO loyalty.reward (program_id, reward_id, name, points_price) SELECT program_id, 'CAP', 'Cap', 10 FROM loyalty.program;
INSERT INTO loyalty.redemption (program_id, account_key, reward_id, quantity, points)
SELECT program_id, '1', 'CAP', 1, 10 FROM loyalty.program;
ALTER EXTENSION loyalty UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'loyalty';
-- emptied, the update goes through; the reward keeps its row
DELETE FROM loyalty.redemption;
ALTER EXTENSION loyalty UPDATE;
SELECT extversion <> '1.0' AS updated FROM pg_extension WHERE extname = 'loyalty';
SELECT reward_id, name, points_price, kind, stock FROM loyalty.reward;
SELECT attname FROM pg_attribute WHERE attrelid = 'loyalty.redemption'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
\c contrib_regression
DROP DATABASE rd_upgrade;
