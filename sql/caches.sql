--
-- caches: a backend reads only the accounts its statements touch, and
-- keeps its caches through what does not change them: an ANALYZE of the
-- ERP table (a relcache invalidation, as autovacuum sends) and a caught
-- exception elsewhere (a subtransaction abort).  What does change them is
-- still seen at once: a changed table definition rebuilds the mapping, an
-- enrolment rolled back with its savepoint is forgotten.
--
-- Whether a cache was kept is read from pg_stat_xact_user_tables: the
-- rows this transaction read from loyalty.account and loyalty.attachment.
-- A statement served from the caches reads neither.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET datestyle = 'ISO, YMD';
CREATE SCHEMA ca;
CREATE TABLE ca.inv (id int PRIMARY KEY, customer text NOT NULL, day date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('caches') > 0 AS created;
SELECT loyalty.attach('ca.inv', 'caches', key_column => 'id', account_column => 'customer',
                      date_column => 'day', amount_column => 'amount') > 0 AS attached;
-- 200 accounts
INSERT INTO ca.inv SELECT g, 'C' || g, '2024-03-01', 10 FROM generate_series(1, 200) g;
-- Rows of loyalty.account and loyalty.attachment read by this transaction.
CREATE FUNCTION ca.reads(rel regclass) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
      FROM pg_stat_xact_user_tables WHERE relid = rel
$$;

-- 1. A new backend reads the one account its first statement needs, not
--    all 200 accounts of the program.
\c
BEGIN;
INSERT INTO ca.inv VALUES (1001, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.account') AS account_rows_read;
COMMIT;

-- 2. ANALYZE of the ERP table: the mapping and the accounts stay cached.
BEGIN;
INSERT INTO ca.inv VALUES (1002, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.account') AS account_rows, ca.reads('loyalty.attachment') AS attachment_rows \gset
ANALYZE ca.inv;
INSERT INTO ca.inv VALUES (1003, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.account') - :account_rows AS account_rows_read,
       ca.reads('loyalty.attachment') - :attachment_rows AS attachment_rows_read;
COMMIT;

-- 3. A caught exception elsewhere: the caches stay.
BEGIN;
INSERT INTO ca.inv VALUES (1004, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.account') AS account_rows, ca.reads('loyalty.attachment') AS attachment_rows \gset
DO $$ BEGIN PERFORM 1 / 0; EXCEPTION WHEN division_by_zero THEN NULL; END $$;
INSERT INTO ca.inv VALUES (1005, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.account') - :account_rows AS account_rows_read,
       ca.reads('loyalty.attachment') - :attachment_rows AS attachment_rows_read;
COMMIT;

-- 4. A changed definition of the ERP table is seen by the next statement:
--    the mapping is built again (and still maps the table).
BEGIN;
INSERT INTO ca.inv VALUES (1006, 'C1', '2024-03-02', 10);
SELECT ca.reads('loyalty.attachment') AS attachment_rows \gset
ALTER TABLE ca.inv ADD COLUMN note text;
INSERT INTO ca.inv VALUES (1007, 'C1', '2024-03-02', 10, 'after the change');
SELECT ca.reads('loyalty.attachment') - :attachment_rows > 0 AS mapping_read_again;
COMMIT;

-- 5. An enrolment rolled back with its savepoint is forgotten: the next
--    statement enrols the customer again, and what it earns is kept.
BEGIN;
SAVEPOINT s;
INSERT INTO ca.inv VALUES (1008, 'NEW', '2024-03-02', 25);
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS enrolled FROM loyalty.account JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'caches' AND account_key = 'NEW';
INSERT INTO ca.inv VALUES (1009, 'NEW', '2024-03-02', 30);
COMMIT;
SELECT count(*) AS enrolled FROM loyalty.account JOIN loyalty.program p USING (program_id)
 WHERE p.name = 'caches' AND account_key = 'NEW';
SELECT points FROM loyalty.balance('caches', 'NEW');

-- ... and so is one rolled back with its transaction.
BEGIN;
INSERT INTO ca.inv VALUES (1010, 'GONE', '2024-03-02', 25);
ROLLBACK;
INSERT INTO ca.inv VALUES (1011, 'GONE', '2024-03-02', 40);
SELECT points FROM loyalty.balance('caches', 'GONE');

-- Everything reconciles.
SELECT points FROM loyalty.balance('caches', 'C1');
SELECT count(*) AS drift FROM loyalty.verify('caches');

DROP SCHEMA ca CASCADE;
