--
-- rebates_scoped: rebate agreements scoped to product lines.  The accrual
-- trigger splits each account's qualifying spend of a month by the product
-- lines agreements scope (loyalty.rebate_line_volume), as it reads the ERP
-- rows; settlement and estimates read those volumes.  Scoped and unscoped
-- agreements on the same accounts, credit notes (by document type),
-- updates that move a row to another line, deletes, and late postings in a
-- settled quarter: every settlement line is checked against the rebate
-- computed here by hand from the ERP rows.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE SCHEMA rsc;
CREATE TABLE rsc.line (line_id int PRIMARY KEY, customer_id text NOT NULL, line_date date NOT NULL,
                       product_line text, doc_type text NOT NULL DEFAULT 'INV', amount numeric(12,2) NOT NULL);
SELECT loyalty.create_program('scoped club', currency => 'EUR', settlement_period => 'quarter') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'scoped club' \gset
SELECT loyalty.attach('rsc.line', 'scoped club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'line_date', product_line_column => 'product_line',
                      doc_type_column => 'doc_type', credit_note_types => '{CN}') > 0 AS attached;
SELECT count(loyalty.enroll('scoped club', 'k' || i, region => CASE WHEN i % 2 = 0 THEN 'NORTH' ELSE 'SOUTH' END))
FROM generate_series(1, 400) i;

-- hand-written brackets (never loyalty.rebate())
-- retro: 0:0%, 5000:2%, 20000:4%
CREATE FUNCTION rsc.retro(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v >= 20000 THEN v * 0.04 WHEN v >= 5000 THEN v * 0.02 ELSE 0 END, 2);
-- marginal: 0:1%, 3000:3%
CREATE FUNCTION rsc.marginal(v numeric) RETURNS numeric LANGUAGE sql
RETURN round(CASE WHEN v <= 0 THEN 0 ELSE least(v, 3000) * 0.01 + greatest(v - 3000, 0) * 0.03 END, 2);
-- the qualifying spend of an account in [f, t) on the given lines (NULL:
-- every line) from the ERP rows: credit notes count negative
CREATE FUNCTION rsc.volume(k text, f date, t date, lines text[]) RETURNS numeric LANGUAGE sql
RETURN (SELECT coalesce(sum(CASE WHEN doc_type = 'CN' THEN -abs(amount) ELSE amount END), 0) FROM rsc.line
        WHERE customer_id = k AND line_date >= f AND line_date < t
          AND (lines IS NULL OR product_line = ANY (lines)));

-- Documents of 2024, accrued before any agreement (and by this session,
-- which caches the program): nobody splits them.
CREATE FUNCTION rsc.load(first_id int, f date, days int, n int) RETURNS void LANGUAGE sql AS $$
INSERT INTO rsc.line
SELECT first_id + i, 'k' || (1 + (random() * 399)::int), f + (random() * (days - 1))::int,
       (ARRAY['networking', 'storage', 'software', 'services', NULL])[1 + (random() * 4)::int],
       CASE WHEN random() < 0.1 THEN 'CN' ELSE 'INV' END, round((random() * 3000)::numeric, 2)
FROM generate_series(1, n) i
$$;
SELECT setseed(0.42);
SELECT rsc.load(0, '2024-10-01', 92, 500);
SELECT count(*) AS split_rows FROM loyalty.rebate_line_volume WHERE program_id = :pid;

--
-- 1. Agreements, and their checks
--
-- networking for the NORTH accounts, quarterly, retro
SELECT loyalty.create_rebate_agreement('scoped club', 'NET', 'retro: 0:0%, 5000:2%, 20000:4%',
                                       region => 'NORTH', product_lines => '{networking}', valid_from => '2025-01-01');
-- networking and storage (given twice: the same set) for everyone, monthly, marginal
SELECT loyalty.create_rebate_agreement('scoped club', 'HW', 'marginal: 0:1%, 3000:3%',
                                       product_lines => '{storage,networking,storage}', period => 'month',
                                       valid_from => '2025-01-01');
-- the whole spend of the NORTH accounts, quarterly, retro: unscoped
SELECT loyalty.create_rebate_agreement('scoped club', 'ALL', 'retro: 0:0%, 5000:2%, 20000:4%',
                                       region => 'NORTH', valid_from => '2025-01-01');
-- software of one account, from February, monthly brackets over its quarter
SELECT loyalty.create_rebate_agreement('scoped club', 'SW7', 'marginal: 0:1%, 3000:3%', account_key => 'k7',
                                       product_lines => '{software}', valid_from => '2025-02-01');
SELECT agreement_id, account_key, region, product_lines, period, valid_from
FROM loyalty.rebate_agreement WHERE program_id = :pid ORDER BY 1;
\set VERBOSITY terse
SELECT loyalty.create_rebate_agreement('scoped club', 'X', 'retro: 0:1%', product_lines => '{}');
SELECT loyalty.create_rebate_agreement('scoped club', 'X', 'retro: 0:1%', product_lines => '{networking,NULL}');
SELECT loyalty.create_rebate_agreement('scoped club', 'X', 'retro: 0:1%', product_lines => '{""}');
-- the documents of 2024 are accrued already: they cannot be split any more
SELECT loyalty.create_rebate_agreement('scoped club', 'X', 'retro: 0:1%', product_lines => '{services}',
                                       valid_from => '2024-12-15');
-- a program that maps no product line
CREATE TABLE rsc.plain (id int PRIMARY KEY, customer_id text NOT NULL, d date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.create_program('plain club') > 0 AS created;
SELECT loyalty.attach('rsc.plain', 'plain club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'd') > 0 AS attached;
SELECT loyalty.create_rebate_agreement('plain club', 'X', 'retro: 0:1%', product_lines => '{networking}');
\set VERBOSITY default
-- a program without scoped agreements splits nothing
SELECT loyalty.enroll('plain club', 'p1');
SELECT loyalty.create_rebate_agreement('plain club', 'P', 'retro: 0:1%', valid_from => '2025-01-01');
INSERT INTO rsc.plain VALUES (1, 'p1', '2025-01-05', 100), (2, 'p1', '2025-02-05', 200);
SELECT count(*) AS plain_split_rows FROM loyalty.rebate_line_volume v JOIN loyalty.program p USING (program_id)
WHERE p.name = 'plain club';

--
-- 2. The first quarter of 2025, in this same session (its cached program
-- learnt of the agreements), an estimate, the settlement
--
SELECT rsc.load(1000, '2025-01-01', 90, 3000);
-- the split, from the ERP rows: scoped lines each, the rest together, per
-- account and month (the rows that differ)
CREATE VIEW rsc.buckets_off AS
SELECT coalesce(e.account_key, a.account_key) AS account_key, coalesce(e.month, a.month) AS month,
       coalesce(e.product_line, a.product_line) AS product_line, e.qualifying, e.n,
       a.qualifying AS split_qualifying, a.n AS split_n FROM (
    SELECT customer_id AS account_key, date_trunc('month', line_date)::date AS month,
           CASE WHEN product_line IN ('networking', 'storage', 'software') THEN product_line END AS product_line,
           sum(CASE WHEN doc_type = 'CN' THEN -abs(amount) ELSE amount END) AS qualifying, count(*) AS n
    FROM rsc.line WHERE line_date >= '2025-01-01' GROUP BY 1, 2, 3) e
FULL JOIN (SELECT account_key, month, product_line, sum(qualifying) AS qualifying, sum(source_rows) AS n
           FROM loyalty.rebate_line_volume WHERE program_id = :'pid'::integer GROUP BY 1, 2, 3) a
  ON a.account_key = e.account_key AND a.month = e.month AND a.product_line IS NOT DISTINCT FROM e.product_line
-- (a bucket whose rows are all deleted nets to zero)
WHERE coalesce(a.qualifying, 0) <> coalesce(e.qualifying, 0) OR coalesce(a.n, 0) <> coalesce(e.n, 0);
SELECT count(*) AS buckets_off FROM rsc.buckets_off;
SELECT DISTINCT product_line FROM loyalty.rebate_line_volume WHERE program_id = :pid ORDER BY 1;

-- estimates as of 2025-02-14: NET, ALL: January and February so far; HW:
-- January, February; SW7: February
SELECT loyalty.accrue_rebates('scoped club', '2025-02-14') AS estimated,
       (SELECT sum(rsc.retro(rsc.volume('k' || i, '2025-01-01', '2025-03-01', '{networking}'))
                   + rsc.retro(rsc.volume('k' || i, '2025-01-01', '2025-03-01', NULL)))
        FROM generate_series(2, 400, 2) i)
       + (SELECT sum(rsc.marginal(rsc.volume('k' || i, m, (m + interval '1 month')::date, '{networking,storage}')))
          FROM generate_series(1, 400) i, unnest(ARRAY[date '2025-01-01', date '2025-02-01']) m)
       + rsc.marginal(rsc.volume('k7', '2025-02-01', '2025-03-01', '{software}')) AS expected;
SELECT loyalty._settle_rebates(:pid, '2025-01-01', '2025-04-01') IS NOT NULL AS settled_q1;

--
-- 3. The second quarter, and late changes to the first: invoices and
-- credit notes dated in it, rows moved to another product line, rows
-- deleted.  The second settlement adjusts the first quarter's periods.
--
-- a fresh session reads the scoped lines with the program
\c
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SELECT setseed(0.43);
SELECT rsc.load(10000, '2025-04-01', 91, 3000);
SELECT rsc.load(20000, '2025-01-01', 90, 200);
UPDATE rsc.line SET product_line = CASE product_line WHEN 'networking' THEN 'services' ELSE 'networking' END
WHERE line_id BETWEEN 1001 AND 1150;
DELETE FROM rsc.line WHERE line_id BETWEEN 1151 AND 1250;
UPDATE rsc.line SET doc_type = 'CN' WHERE line_id BETWEEN 1251 AND 1300 AND doc_type = 'INV';
SELECT loyalty.accrue_rebates('scoped club', '2025-05-20') IS NOT NULL AS estimated;
SELECT loyalty._settle_rebates(:pid, '2025-04-01', '2025-07-01') IS NOT NULL AS settled_q2;
SELECT * FROM rsc.buckets_off LIMIT 5;
SELECT count(*) FILTER (WHERE adjustment_no = 0) > 0 AS lines, count(*) FILTER (WHERE adjustment_no > 0) > 50 AS many_adjustments,
       count(DISTINCT agreement_id) AS agreements
FROM loyalty.settlement_line WHERE program_id = :pid;

-- Every agreement, covered account and period of the two quarters: the
-- credit notes of its lines add up to the rebate computed from the ERP
-- rows now, and the last line's final is that rebate.
CREATE TABLE rsc.expected AS
SELECT g.agreement_id, k.account_key, p.f, p.t,
       CASE WHEN g.agreement_id IN ('HW', 'SW7') THEN rsc.marginal(rsc.volume(k.account_key, greatest(p.f, g.valid_from), p.t, g.product_lines))
            ELSE rsc.retro(rsc.volume(k.account_key, greatest(p.f, g.valid_from), p.t, g.product_lines)) END AS final
FROM loyalty.rebate_agreement g
JOIN (SELECT 'k' || i AS account_key, CASE WHEN i % 2 = 0 THEN 'NORTH' ELSE 'SOUTH' END AS region
      FROM generate_series(1, 400) i) k
  ON (g.region IS NULL OR g.region = k.region) AND (g.account_key IS NULL OR g.account_key = k.account_key)
CROSS JOIN LATERAL (SELECT m::date AS f, (m + CASE g.period WHEN 'month' THEN interval '1 month' ELSE interval '3 months' END)::date AS t
                    FROM generate_series(date '2025-01-01', date '2025-06-01',
                                         CASE g.period WHEN 'month' THEN interval '1 month' ELSE interval '3 months' END) m) p
WHERE g.program_id = :pid AND p.t > g.valid_from;
SELECT agreement_id, count(*) AS periods, sum(final) > 0 AS earns FROM rsc.expected GROUP BY 1 ORDER BY 1;
SELECT e.agreement_id, e.account_key, e.f, e.t, e.final, s.credit_notes, s.last_final
FROM rsc.expected e
LEFT JOIN LATERAL (SELECT sum(x.credit_note) AS credit_notes,
                          (array_agg(x.final ORDER BY x.adjustment_no DESC))[1] AS last_final
                   FROM loyalty.settlement_line x
                   WHERE x.program_id = :pid AND x.agreement_id = e.agreement_id AND x.account_key = e.account_key
                     AND x.period_end = e.t) s ON true
WHERE e.final IS DISTINCT FROM coalesce(s.credit_notes, 0) OR (s.last_final IS NOT NULL AND s.last_final <> e.final);
-- no line for a period or account no agreement covers
SELECT count(*) AS stray_lines FROM loyalty.settlement_line s
WHERE s.program_id = :pid
  AND NOT EXISTS (SELECT FROM rsc.expected e WHERE e.agreement_id = s.agreement_id AND e.account_key = s.account_key
                                              AND e.t = s.period_end);
-- the wallets hold the credit notes; nothing to adjust a second time
SELECT count(*) AS wallets_off FROM loyalty.balance b
WHERE b.program_id = :pid
  AND b.rebate <> (SELECT coalesce(sum(s.credit_note), 0) FROM loyalty.settlement_line s
                   WHERE s.program_id = :pid AND s.account_key = b.account_key);
SELECT loyalty._settle_rebates(:pid, '2025-04-01', '2025-07-01') AS again;
-- the document keys: the account key with the rest of the primary key, ISO
-- dates whatever the session's DateStyle
SET datestyle = 'SQL, DMY';
INSERT INTO rsc.line VALUES (90001, 'k2', '2025-02-10', 'networking', 'INV', 777);
SELECT loyalty._settle_rebates(:pid, '2025-04-01', '2025-07-01') <> 0 AS adjusted;
SELECT agreement_id, account_key, regexp_replace(document_key, '^LOY-[0-9]+-', 'LOY-<pid>-') AS document_key
FROM loyalty.settlement_line WHERE program_id = :pid AND account_key = 'k2' AND period_end = '2025-04-01'
ORDER BY 1, adjustment_no DESC LIMIT 3;
SET datestyle = 'ISO, YMD';
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'loyalty.settlement_line'::regclass AND contype IN ('u', 'p') ORDER BY 1;

--
-- 4. verify() checks the split: empty now, and it finds a bucket edited
-- behind the trigger's back.
--
SELECT * FROM loyalty.verify('scoped club');
SELECT * FROM loyalty.verify('plain club');
BEGIN;
WITH one AS (SELECT program_id, account_key, posted_xid, entry_no FROM loyalty.rebate_line_volume
             WHERE program_id = :pid AND account_key = 'k2' AND product_line = 'networking'
             ORDER BY month, entry_no LIMIT 1)
UPDATE loyalty.rebate_line_volume v SET qualifying = qualifying + 1 FROM one
WHERE (v.program_id, v.account_key, v.posted_xid, v.entry_no) = (one.program_id, one.account_key, one.posted_xid, one.entry_no)
RETURNING v.account_key, v.month;
SELECT account_key, month, item, expected - actual AS drift FROM loyalty.verify('scoped club');
ROLLBACK;

--
-- 5. Roles: readers read the volumes, nobody but the trigger writes them.
--
CREATE ROLE rsc_reader IN ROLE loyalty_reader;
CREATE ROLE rsc_operator IN ROLE loyalty_operator;
SET ROLE rsc_reader;
SELECT count(*) > 0 AS reader_reads FROM loyalty.rebate_line_volume;
\set VERBOSITY terse
INSERT INTO loyalty.rebate_line_volume SELECT * FROM loyalty.rebate_line_volume LIMIT 1;
SET ROLE rsc_operator;
UPDATE loyalty.rebate_line_volume SET qualifying = 0;
SELECT loyalty.create_rebate_agreement('scoped club', 'OP', 'retro: 0:50%', product_lines => '{services}',
                                       valid_from => '2030-01-01');
SELECT * FROM loyalty._verify_rebate_lines(:pid, NULL);
\set VERBOSITY default
RESET ROLE;
DROP ROLE rsc_reader;
DROP ROLE rsc_operator;
