--
-- verify_scoped: the quick checks a DBA runs every night.
-- verify(program, account) checks one account: its source rows, its
-- per-month sums, its ledger and its balance.  verify(program, since)
-- checks the document months from since's month on: their source rows
-- against their per-month sums (the ledger and balance totals span every
-- month; verify(program) and verify(program, account) check those).  Both
-- return what verify(program) returns, in their scope only.
--
-- A drift is planted in loyalty's own tables as the superuser (as a bug or
-- a hand edit would); each scoped check must find it exactly when it is in
-- its scope.  The expected figures are computed here from the invoices, in
-- plain SQL.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';

CREATE SCHEMA vs;
-- Flat invoices, and invoice lines whose customer and date live on a header.
CREATE TABLE vs.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                         amount numeric(12,2) NOT NULL, invoice_date date NOT NULL);
CREATE TABLE vs.hdr (id int PRIMARY KEY, customer_id text NOT NULL, invoice_date date NOT NULL);
CREATE TABLE vs.line (hdr_id int NOT NULL, line_no int NOT NULL, amount numeric(12,2) NOT NULL,
                      PRIMARY KEY (hdr_id, line_no));

-- One point per euro, each row rounded toward zero.
SELECT loyalty.create_program('vs_club') > 0 AS created;
SELECT loyalty.attach('vs.invoice', 'vs_club', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date') > 0 AS attached;
SELECT loyalty.attach('vs.line', 'vs_club', key_column => 'hdr_id, line_no',
                      header => 'vs.hdr', line_header_column => 'hdr_id', header_id_column => 'id',
                      account_column => 'customer_id', date_column => 'invoice_date',
                      amount_column => 'amount') > 0 AS attached;

INSERT INTO vs.invoice VALUES
    (1, 'A', 100.50, '2024-01-10'), (2, 'A', 200.00, '2024-02-05'), (3, 'A', 30.75, '2024-02-28'),
    (4, 'A', 40.00, '2024-04-01'), (5, 'B', 500.00, '2024-02-14'), (6, 'B', 60.20, '2024-03-03'),
    (7, 'C', 70.00, '2024-04-20');
INSERT INTO vs.hdr VALUES (10, 'A', '2024-02-10'), (11, 'B', '2024-04-11'), (12, 'C', '2024-01-05');
INSERT INTO vs.line VALUES (10, 1, 10.90), (10, 2, 20.00), (11, 1, 33.30), (12, 1, 44.00), (12, 2, 1.99);

-- What the invoices earn per account, table and month, computed from the
-- rows themselves: the figures the checks below compare with.
CREATE VIEW vs.source AS
SELECT 'vs.invoice' AS tbl, customer_id AS account_key, date_trunc('month', invoice_date)::date AS month,
       sum(trunc(amount))::bigint AS points, sum(amount) AS qualifying, count(*) AS source_rows
  FROM vs.invoice GROUP BY 1, 2, 3
UNION ALL
SELECT 'vs.line', h.customer_id, date_trunc('month', h.invoice_date)::date,
       sum(trunc(l.amount))::bigint, sum(l.amount), count(*)
  FROM vs.line l JOIN vs.hdr h ON h.id = l.hdr_id GROUP BY 1, 2, 3;
SELECT * FROM vs.source ORDER BY 1, 2, 3;

-- The attachment of each table, for the output below.
CREATE VIEW vs.att AS
SELECT x.attachment_id, x.source::text AS tbl FROM loyalty.attachment x
  JOIN loyalty.program p USING (program_id) WHERE p.name = 'vs_club';

--
-- 1. Nothing drifted: every check is empty
--
SELECT count(*) AS drift FROM loyalty.verify('vs_club');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'A');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'C');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-03-01');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '-infinity');

--
-- 2. A per-month sum drifts: A's February of vs.invoice has 7 points too many
--
-- The per-month sums are on the account's folded balance row, one element
-- per (month, attachment): fold first, then plant the drift there.
SELECT loyalty.fold('vs_club') > 0 AS folded;
CREATE FUNCTION vs.bump(account text, tbl text, month date, delta bigint) RETURNS void
LANGUAGE sql AS $$
UPDATE loyalty.balance_folded b
   SET m_points = (SELECT array_agg(CASE WHEN x.m = bump.month AND x.a = (SELECT attachment_id FROM vs.att WHERE att.tbl = bump.tbl)
                                         THEN x.p + delta ELSE x.p END ORDER BY x.o)
                     FROM unnest(b.m_month, b.m_attachment, b.m_points) WITH ORDINALITY AS x(m, a, p, o))
 WHERE b.program_id = (SELECT program_id FROM loyalty.program WHERE name = 'vs_club')
   AND b.account_key = bump.account
$$;
SELECT vs.bump('A', 'vs.invoice', '2024-02-01', 7);

-- verify(program) finds it twice: the source rows earn less than the
-- month's sum says, and the sums (capped) no longer match the ledger.
-- expected is what the rows earn (vs.source), actual what loyalty holds.
SELECT v.account_key, v.month, a.tbl, v.item, v.expected, v.actual,
       v.expected = CASE v.item WHEN 'points' THEN s.points WHEN 'qualifying' THEN s.qualifying END AS expected_is_source
  FROM loyalty.verify('vs_club') v
  LEFT JOIN vs.att a USING (attachment_id)
  LEFT JOIN vs.source s ON s.tbl = a.tbl AND s.account_key = v.account_key AND s.month = v.month
 ORDER BY 1, 2, 3, 4;
-- A's own check finds both; B's and C's find nothing.
SELECT v.account_key, v.month, a.tbl, v.item, v.expected, v.actual
  FROM loyalty.verify('vs_club', account => 'A') v LEFT JOIN vs.att a USING (attachment_id) ORDER BY 1, 2, 3, 4;
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'B');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'C');
-- From March on, nothing drifted ...
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-03-01');
-- ... from any day of February on (rounded down to its month), A's February did.
SELECT v.account_key, v.month, a.tbl, v.item, v.expected, v.actual
  FROM loyalty.verify('vs_club', since => '2024-02-20') v LEFT JOIN vs.att a USING (attachment_id) ORDER BY 1, 2, 3, 4;
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-01-01');
SELECT vs.bump('A', 'vs.invoice', '2024-02-01', -7);
SELECT count(*) AS drift FROM loyalty.verify('vs_club');

--
-- 3. A recent month of the header-shaped table drifts: B's April of vs.line
--
-- The month comes from the header's date, the account from the header's
-- customer: the quick checks filter on both.
SELECT vs.bump('B', 'vs.line', '2024-04-01', -33);
SELECT v.account_key, v.month, a.tbl, v.item, v.expected, v.actual, v.expected = s.points AS expected_is_source
  FROM loyalty.verify('vs_club', since => '2024-04-30') v
  LEFT JOIN vs.att a USING (attachment_id)
  LEFT JOIN vs.source s ON s.tbl = a.tbl AND s.account_key = v.account_key AND s.month = v.month
 ORDER BY 1, 2, 3, 4;
SELECT v.account_key, v.month, a.tbl, v.item, v.expected, v.actual
  FROM loyalty.verify('vs_club', account => 'B') v LEFT JOIN vs.att a USING (attachment_id) ORDER BY 1, 2, 3, 4;
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'A');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-05-01');
SELECT vs.bump('B', 'vs.line', '2024-04-01', 33);

--
-- 4. A balance drifts from its ledger: C's points
--
-- The balance is a total over every month: verify(program) and C's own
-- check find it (expected is the sum of C's ledger entries); A's check and
-- the month checks do not look at it.
UPDATE loyalty.balance_folded SET points = points + 5
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'vs_club') AND account_key = 'C';
SELECT (SELECT sum(s.points) FROM vs.source s WHERE s.account_key = 'C') AS c_points_from_invoices;
SELECT account_key, month, attachment_id, item, expected, actual FROM loyalty.verify('vs_club') ORDER BY 1, 4;
SELECT account_key, month, attachment_id, item, expected, actual FROM loyalty.verify('vs_club', account => 'C') ORDER BY 1, 4;
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'A');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-01-01');
UPDATE loyalty.balance_folded SET points = points - 5
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'vs_club') AND account_key = 'C';
SELECT count(*) AS drift FROM loyalty.verify('vs_club');

--
-- 5. Rows that are not accrued: an invoice the trigger never saw
--
-- With the triggers disabled for one statement (as a session_replication_role
-- restore would), D's invoice of May is not accrued; D is not even enrolled
-- yet, so only the month checks can see it.
SET session_replication_role = replica;
INSERT INTO vs.invoice VALUES (8, 'D', 80.80, '2024-05-02');
RESET session_replication_role;
SELECT account_key, month, item, expected, actual FROM loyalty.verify('vs_club', since => '2024-05-01') ORDER BY 1, 2, 3;
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'A');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'D');
SELECT * FROM loyalty.backfill('vs.invoice', 'vs_club', '2024-05-01');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', since => '2024-05-01');
SELECT count(*) AS drift FROM loyalty.verify('vs_club', account => 'D');
SELECT count(*) AS drift FROM loyalty.verify('vs_club');

--
-- 6. Clear errors
--
SELECT * FROM loyalty.verify('vs_club', account => 'nobody');
SELECT * FROM loyalty.verify('vs_club', account => NULL);
SELECT * FROM loyalty.verify('vs_nope', account => 'A');
SELECT * FROM loyalty.verify('vs_club', since => NULL);
SELECT * FROM loyalty.verify('vs_club', since => 'infinity');
SELECT * FROM loyalty.verify(NULL, since => '2024-01-01');

SELECT loyalty.detach('vs.invoice', 'vs_club');
SELECT loyalty.detach('vs.line', 'vs_club');
DROP SCHEMA vs CASCADE;
