-- loyalty 1.0 -> 1.1.  Everything that changed in the SQL surface since the
-- 1.0 release, in the order it was made.  A fresh 1.1 install
-- (loyalty--1.1.sql, built from src/sql/) and 1.0 + this script must end
-- with the same catalog: test/t/040_upgrade.pl compares them.
\echo Use "ALTER EXTENSION loyalty UPDATE TO '1.1'" to load this file. \quit

-- The balance upsert passes a statement's per-month sums as typed arrays
-- (rows of loyalty.balance): nothing decodes raw bytes any more, and the
-- decoder, which crafted bytes could crash, is gone.
DROP FUNCTION @extschema@._month_delta(bytea, integer);

-- Row keys over 1024 bytes are stored shortened in the indexed row_key.
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form (a key over 1024 bytes: its first bytes and the MD5 of the whole, since the column is indexed).';
