--
-- internal_functions: loyalty's internal C functions, fed crafted input by
-- the superuser.  No other role may execute them, but even for their owner
-- no input may crash the server or be turned into datums without being
-- checked: every bad value gets a clean error, and nothing is posted.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA inf;
CREATE TABLE inf.invoice (invoice_id int PRIMARY KEY, customer_id int NOT NULL,
                          invoice_date date NOT NULL, amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('internal_fn', ladder => 'Member:0, Gold:1000') > 0 AS created;
SELECT loyalty.attach('inf.invoice', 'internal_fn', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') AS att \gset

--
-- 1. The month-delta decoder of 1.0 turned raw bytes into numerics.  These
-- bytes hold one element whose numeric claims to be 256 MB long: 1.0
-- crashed on them.  The decoder is gone: statements pass typed arrays.
--
SELECT * FROM loyalty._month_delta('\xe20200000100000000000000010000000000000008000000fcffff3f00000000'::bytea, 1);
-- Its C symbol stays for 1.0's install script, and decodes nothing.
CREATE FUNCTION pg_temp.month_delta(bytea, integer,
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS '$libdir/loyalty', 'loyalty_month_delta' LANGUAGE C STRICT;
SELECT * FROM pg_temp.month_delta('\xe20200000100000000000000010000000000000008000000fcffff3f00000000'::bytea, 1);
SELECT * FROM pg_temp.month_delta('\x'::bytea, 1);
SELECT * FROM pg_temp.month_delta('\xffffffffffffffffffffffffffffffffffffffffffff'::bytea, 1);

--
-- 2. _month_merge(a: month, attachment, points, qualifying, source_rows;
-- b: the same): adds two sorted sets of per-month sums.
--
-- Valid input: the months of both sides in order, equal months added,
-- elements that net to nothing dropped.
SELECT * FROM loyalty._month_merge('{2024-01-01,2024-03-01}', '{1,1}', '{10,5}', '{100.50,50}', '{1,1}',
                                   '{2024-02-01,2024-03-01}', '{1,1}', '{7,-5}', '{70,-50}', '{1,-1}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
-- NULL elements, in each array.
SELECT * FROM loyalty._month_merge('{2024-01-01,NULL}', '{1,1}', '{1,1}', '{1,1}', '{1,1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{NULL}', '{1}', '{1}', '{1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{NULL}', '{1}', '{1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{2024-01-01}', '{1}', '{1}', '{NULL}', '{1}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{2024-01-01}', '{1}', '{1}', '{1}', '{NULL}');
-- Lengths that differ, by one or by a million.
SELECT * FROM loyalty._month_merge('{2024-01-01,2024-02-01}', '{1}', '{1,1}', '{1,1}', '{1,1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{1}', '{1}', '{}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', array_fill(1::bigint, ARRAY[1000000]), '{1}', '{1}',
                                   '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}',
                                   array_fill('2024-01-01'::date, ARRAY[1000000]), '{1}', '{1}', '{1}', '{1}');
-- More than one dimension.
SELECT * FROM loyalty._month_merge('{{2024-01-01},{2024-02-01}}', '{1,1}', '{1,1}', '{1,1}', '{1,1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{2024-01-01}', '{1}', '{{1}}', '{1}', '{1}');
-- Not in ascending (month, attachment) order, or twice the same element.
SELECT * FROM loyalty._month_merge('{2024-02-01,2024-01-01}', '{1,1}', '{1,1}', '{1,1}', '{1,1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01,2024-01-01}', '{2,1}', '{1,1}', '{1,1}', '{1,1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{2024-01-01,2024-01-01}', '{1,1}', '{1,1}', '{1,1}', '{1,1}');
-- Months and sums that are not finite.
SELECT * FROM loyalty._month_merge('{infinity}', '{1}', '{1}', '{1}', '{1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{1}', '{NaN}', '{1}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM loyalty._month_merge('{}', '{}', '{}', '{}', '{}', '{2024-01-01}', '{1}', '{1}', '{-Infinity}', '{1}');
-- Sums beyond bigint are refused, never wrapped.
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{9223372036854775807}', '{1}', '{1}',
                                   '{2024-01-01}', '{1}', '{1}', '{1}', '{1}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{-9223372036854775808}', '{1}', '{1}',
                                   '{2024-01-01}', '{1}', '{-1}', '{1}', '{1}');
SELECT * FROM loyalty._month_merge('{2024-01-01}', '{1}', '{1}', '{1}', '{9223372036854775807}',
                                   '{2024-01-01}', '{1}', '{1}', '{1}', '{1}');

--
-- 3. _post_backfill() and _row_points() of 1.0 are gone (backfill, verify
-- and explain_points price rows in C); their C symbols, kept for 1.0's
-- install script, do nothing but say so.
--
-- None of it posted anything.
SELECT (SELECT count(*) FROM loyalty.ledger l WHERE l.program_id = p.program_id) AS ledger_entries,
       (SELECT count(*) FROM loyalty.balance b WHERE b.program_id = p.program_id) AS balances,
       (SELECT count(*) FROM loyalty.account a WHERE a.program_id = p.program_id) AS accounts
FROM loyalty.program p WHERE p.name = 'internal_fn';

--
-- 4. The other internal C functions take no arrays or bytes; unknown ids
-- and dates outside the calendar get clean answers too.
--
SELECT loyalty._capped_points(-1, '{2024-01-01}', '{1}');
SELECT loyalty._capped_points((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '{infinity}', '{1}');
SELECT loyalty._capped_points((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '{2024-01-01,NULL}', '{1,2}');
SELECT loyalty._capped_points((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '{2024-01-01}', '{1,2}');
SELECT loyalty._capped_points((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '{{2024-01-01}}', '{{1}}');
SELECT loyalty._capped_points((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '{2024-01-01,2024-02-01}', '{9223372036854775807,1}');
SELECT loyalty.accrue();
-- _await_postings (a debit waits for postings in flight): NULLs, unknown
-- programs and accounts, a key longer than any account's wait for nothing
SELECT loyalty._await_postings(NULL, NULL), loyalty._await_postings(-1, ''),
       loyalty._await_postings((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), repeat('k', 100000)),
       loyalty._await_postings((SELECT program_id FROM loyalty.program WHERE name = 'internal_fn'), '7');

-- A real posting still works, and verify agrees.
INSERT INTO inf.invoice VALUES (1, 7, '2024-01-10', 10.50), (2, 8, '2024-02-10', 20.25);
SELECT loyalty.fold('internal_fn') AS folded;
SELECT account_key, points, qualifying, m_month, m_points FROM loyalty.balance_folded b
  JOIN loyalty.program p USING (program_id) WHERE p.name = 'internal_fn' ORDER BY account_key;
SELECT count(*) AS drift FROM loyalty.verify('internal_fn');
