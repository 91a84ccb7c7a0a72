--
-- The API is the only way in.  Four roles try every path around it:
--   loyalty_test_admin     member of loyalty_admin
--   loyalty_test_operator  member of loyalty_operator
--   loyalty_test_reader    member of loyalty_reader, who also owns a table
--                          of their own that is attached
--   loyalty_test_erp       owns the ERP's tables, member of no loyalty role
-- Internal functions are the owner's alone, no role writes loyalty's
-- configuration or accrual tables directly, and verify() sees every row or
-- refuses.  What must still work, works.
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';

CREATE ROLE loyalty_test_admin IN ROLE loyalty_admin;
CREATE ROLE loyalty_test_operator IN ROLE loyalty_operator;
CREATE ROLE loyalty_test_reader IN ROLE loyalty_reader;
CREATE ROLE loyalty_test_erp;
CREATE SCHEMA sapi AUTHORIZATION loyalty_test_erp;
CREATE SCHEMA sapi_bi AUTHORIZATION loyalty_test_reader;
SET ROLE loyalty_test_erp;
CREATE TABLE sapi.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                           amount numeric(12,2));
GRANT USAGE ON SCHEMA sapi TO loyalty_test_admin, loyalty_test_reader, loyalty_test_operator;
GRANT SELECT ON sapi.invoice TO loyalty_test_admin, loyalty_test_reader;
SET ROLE loyalty_test_reader;
CREATE TABLE sapi_bi.sale (id int PRIMARY KEY, customer_id int NOT NULL, sale_date date NOT NULL,
                           amount numeric(12,2));
GRANT USAGE ON SCHEMA sapi_bi TO loyalty_test_admin;
GRANT SELECT ON sapi_bi.sale TO loyalty_test_admin;
RESET ROLE;

SELECT loyalty.create_program('sapi_club', ladder => 'Member:0, Gold:1000') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'sapi_club' \gset
-- attach() is the caller's business (it creates the triggers as the owner).
SELECT loyalty.attach('sapi.invoice', 'sapi_club', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount') AS att \gset
SELECT loyalty.attach('sapi_bi.sale', 'sapi_club', account_column => 'customer_id',
                      date_column => 'sale_date', amount_column => 'amount') AS bi_att \gset
SET ROLE loyalty_test_erp;
INSERT INTO sapi.invoice VALUES (1, 7, '2024-03-01', 100.00), (2, 8, '2024-03-02', 50.00);
RESET ROLE;

--
-- 1. Internal functions: the owner's alone
--

-- Every internal and trigger function of the extension, called by each role
-- with NULL arguments: each call is refused for lack of privilege (42501),
-- before the function runs.
CREATE TEMP TABLE call_outcome (fn text, role text, outcome text);
DO $$
DECLARE
    f record;
    r text;
    outcome text;
BEGIN
    FOR f IN SELECT p.oid::regprocedure::text AS sig,
                    format('SELECT %s(%s)', p.oid::regproc,
                           (SELECT string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY o)
                            FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS u(t, o))) AS call
             FROM pg_depend d JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
             WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
               AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'loyalty')
               AND (p.proname LIKE '\_%' OR p.prorettype = 'trigger'::regtype)
               -- the helpers that functions running as their caller call
               -- (balance(): the program's calendar, the partner check);
               -- they read the program's settings only
               -- and the caller, which the partner's views call
               AND p.oid::regprocedure::text NOT IN ('loyalty._is_staff()', 'loyalty._may_read(text,text)', 'loyalty._caller()',
                                                     'loyalty._today(integer)', 'loyalty._rolling_start(integer)',
                                                     'loyalty._window_months(interval)')
               -- no SQL value has type internal: those (did()'s support
               -- functions) cannot be called at all, see below
               AND NOT 'internal'::regtype = ANY (p.proargtypes::regtype[]) LOOP
        FOREACH r IN ARRAY ARRAY['loyalty_test_admin', 'loyalty_test_operator', 'loyalty_test_reader', 'loyalty_test_erp'] LOOP
            EXECUTE format('SET ROLE %I', r);
            BEGIN
                EXECUTE f.call;
                outcome := 'ran';
            EXCEPTION WHEN OTHERS THEN
                outcome := CASE WHEN SQLSTATE = '42501' THEN 'refused' ELSE 'ran, then ' || SQLSTATE END;
            END;
            RESET ROLE;
            INSERT INTO call_outcome VALUES (f.sig, r, outcome);
        END LOOP;
    END LOOP;
END
$$;
SELECT count(DISTINCT fn) > 20 AS many_functions, count(*) FILTER (WHERE outcome = 'refused') AS refused,
       count(*) AS calls FROM call_outcome;
SELECT fn, role, outcome FROM call_outcome WHERE outcome <> 'refused' ORDER BY 1, 2;
-- The functions that take internal: no role may execute them either.
SELECT p.oid::regprocedure AS fn, r AS role
FROM pg_proc p, unnest(ARRAY['loyalty_test_admin', 'loyalty_test_operator', 'loyalty_test_reader', 'loyalty_test_erp']) r
WHERE p.pronamespace = 'loyalty'::regnamespace AND p.proname LIKE '\_%' AND 'internal'::regtype = ANY (p.proargtypes::regtype[])
  AND has_function_privilege(r, p.oid, 'EXECUTE');

-- What the refusal says, for two of them.
SET ROLE loyalty_test_admin;
SELECT loyalty._enroll('sapi_club', '7', NULL, NULL, NULL, NULL, 'control', NULL);
SELECT loyalty._capped_points(:pid, '{2024-03-01}', '{1}');
RESET ROLE;

-- An accrual trigger of one's own: the reader owns sapi_bi.sale, which is
-- attached, and tries to make it accrue twice.
SET ROLE loyalty_test_reader;
CREATE TRIGGER twice AFTER INSERT ON sapi_bi.sale REFERENCING NEW TABLE AS loyalty_new
    FOR EACH STATEMENT EXECUTE FUNCTION loyalty.accrue(:bi_att);
INSERT INTO sapi_bi.sale VALUES (1, 9, '2024-03-05', 40.00);
RESET ROLE;
-- 40 points for 40.00, once.
SELECT points FROM loyalty.balance('sapi_club', '9');

--
-- 2. No direct writes to configuration or accrual tables
--

SET ROLE loyalty_test_operator;
-- an enrolment date without restatement, a cohort without history, an
-- account with any tier: refused
UPDATE loyalty.account SET enrolled_from = '2025-01-01' WHERE program_id = :pid AND account_key = '7';
UPDATE loyalty.account SET cohort = 'control' WHERE program_id = :pid AND account_key = '7';
INSERT INTO loyalty.account (program_id, account_key, tier, tier_since) VALUES (:pid, '99', 'Gold', now());
INSERT INTO loyalty.account_history (program_id, account_key, valid_until) VALUES (:pid, '7', '2030-01-01');
UPDATE loyalty.balance_folded SET points = 1000000 WHERE program_id = :pid;
INSERT INTO loyalty.balance_delta (program_id, account_key, delta_no, points) VALUES (:pid, '7', 1, 1000000);
RESET ROLE;

SET ROLE loyalty_test_admin;
-- a back-dated rule version that add_rule() refuses, points forged into the
-- ledger and hidden from verify() by a detached_at, a new program or
-- mapping behind the functions' backs: refused
SELECT loyalty.add_rule('sapi_club', '2024-01-01', 10);
INSERT INTO loyalty.rule (program_id, valid_from, points_per_unit) VALUES (:pid, '2024-01-01', 10);
INSERT INTO loyalty.ledger (program_id, account_key, entry_no, kind, points) VALUES (:pid, '7', 99, 'adjust', 1000000);
UPDATE loyalty.attachment SET detached_at = now() WHERE attachment_id = :att;
UPDATE loyalty.attachment SET amount_expr = '(s.amount * 100)' WHERE attachment_id = :att;
INSERT INTO loyalty.program (name, currency) VALUES ('sapi_forged', 'EUR');
DELETE FROM loyalty.program WHERE program_id = :pid;
INSERT INTO loyalty.tier_history (program_id, account_key, effective_from, new_tier, reason)
VALUES (:pid, '7', '2020-01-01', 'Gold', 'manual');
INSERT INTO loyalty.unenrolled_folded (program_id, attachment_id, account_key) VALUES (:pid, :att, 'x');
INSERT INTO loyalty.unenrolled_delta (program_id, attachment_id, account_key, delta_no) VALUES (:pid, :att, 'x', 1);
DELETE FROM loyalty.rejected_event WHERE program_id = :pid;
RESET ROLE;

SET ROLE loyalty_test_reader;
UPDATE loyalty.account SET region = 'North' WHERE program_id = :pid;
RESET ROLE;

-- Nothing of it happened: 7 earns 100, 8 earns 50, with the program's rule.
SELECT account_key, points, tier FROM loyalty.account a JOIN loyalty.balance b USING (program_id, account_key)
 WHERE program_id = :pid ORDER BY 1;
SELECT count(*) AS rule_versions FROM loyalty.rule WHERE program_id = :pid;
SELECT count(*) AS detached FROM loyalty.attachment WHERE program_id = :pid AND detached_at IS NOT NULL;

--
-- 3. What the roles may do, through the functions
--

-- The operator enrols and changes segments and cohort; the change applies
-- from tomorrow and the old values are kept.
SET ROLE loyalty_test_operator;
SELECT loyalty.enroll('sapi_club', '7', region => 'North', potential_spend => 5000);
SELECT loyalty.enroll('sapi_club', '7', cohort => 'pilot');
SELECT loyalty.enroll('sapi_club', '11', enrolled_from => '2024-01-01');
SELECT loyalty.enroll('sapi_club', '11', enrolled_from => '2024-02-01');   -- no postings yet: no restatement
-- a new enrolled_from for an account with postings restates its documents:
-- loyalty_admin's business
SELECT loyalty.enroll('sapi_club', '8', enrolled_from => '2024-04-01');
RESET ROLE;
SELECT account_key, region, potential_spend, cohort, enrolled_from FROM loyalty.account
 WHERE program_id = :pid AND account_key IN ('7', '11') ORDER BY 1;
SELECT account_key, valid_until = current_date + 1 AS from_tomorrow, region, cohort FROM loyalty.account_history
 WHERE program_id = :pid ORDER BY 1, 2;

-- The admin restates: 8's invoice of 2 March is now before its enrolment
-- and earns nothing; the restatement takes back its 50 points.
SET ROLE loyalty_test_admin;
SELECT loyalty.enroll('sapi_club', '8', enrolled_from => '2024-04-01');
RESET ROLE;
SELECT account_key, kind, points, qualifying, source_rows FROM loyalty.ledger
 WHERE program_id = :pid AND account_key = '8' ORDER BY posted_xid, entry_no;
-- 8 earns what its invoices dated from 1 April earn, one point a euro.
SELECT (SELECT points FROM loyalty.balance('sapi_club', '8'))
     = (SELECT coalesce(sum(floor(amount)), 0) FROM sapi.invoice WHERE customer_id = 8 AND invoice_date >= '2024-04-01')
       AS restated_exactly;

-- The admin configures and backfills; the reader explains and verifies.
SET ROLE loyalty_test_admin;
SELECT loyalty.create_program('sapi_other') > 0 AS created;
SELECT loyalty.add_rule('sapi_other', '2030-01-01', 2);
SELECT * FROM loyalty.backfill('sapi.invoice', 'sapi_club', '-infinity');
RESET ROLE;
SET ROLE loyalty_test_reader;
SELECT program, account_key, status, points FROM loyalty.explain_points('sapi.invoice', '1');
SELECT * FROM loyalty.verify('sapi_club');
SELECT points, tier FROM loyalty.balance('sapi_club', '7');
RESET ROLE;

-- A dead letter is marked handled once; it stays handled.
SET ROLE loyalty_test_erp;
INSERT INTO sapi.invoice VALUES (3, 7, '2024-03-03', NULL);
RESET ROLE;
SELECT account_key AS dead_account, rejected_xid AS dead_xid, event_no AS dead_no
  FROM loyalty.rejected_event WHERE program_id = :pid AND row_key = '3' \gset
SET ROLE loyalty_test_operator;
UPDATE loyalty.rejected_event SET resolved_at = '2024-04-01 00:00+00'
 WHERE (program_id, account_key, rejected_xid, event_no) = (:pid, :'dead_account', :'dead_xid', :dead_no);
UPDATE loyalty.rejected_event SET resolved_at = NULL
 WHERE (program_id, account_key, rejected_xid, event_no) = (:pid, :'dead_account', :'dead_xid', :dead_no);
UPDATE loyalty.rejected_event SET resolved_at = now()
 WHERE (program_id, account_key, rejected_xid, event_no) = (:pid, :'dead_account', :'dead_xid', :dead_no);
UPDATE loyalty.rejected_event SET reason = 'handled'
 WHERE (program_id, account_key, rejected_xid, event_no) = (:pid, :'dead_account', :'dead_xid', :dead_no);
RESET ROLE;
SELECT account_key, reason, resolved_at FROM loyalty.rejected_event
 WHERE (program_id, account_key, rejected_xid, event_no) = (:pid, :'dead_account', :'dead_xid', :dead_no);

--
-- 4. verify() sees every row, or refuses
--

-- The ERP table's owner disables the triggers: verify says so at once.
SET ROLE loyalty_test_erp;
ALTER TABLE sapi.invoice DISABLE TRIGGER ALL;
RESET ROLE;
SELECT item, expected, actual FROM loyalty.verify('sapi_club') ORDER BY item;
-- Rows written meanwhile did not accrue: once the triggers are back, verify
-- shows them (customer 7: 300.00 on 10 March).
SET ROLE loyalty_test_erp;
INSERT INTO sapi.invoice VALUES (4, 7, '2024-03-10', 300.00);
ALTER TABLE sapi.invoice ENABLE TRIGGER ALL;
RESET ROLE;
SELECT account_key, month, item, expected, actual FROM loyalty.verify('sapi_club') ORDER BY item;

-- The owner drops the DELETE trigger (whatever its name): verify says so.
SELECT format('DROP TRIGGER %I ON sapi.invoice', t.tgname) AS drop_delete_trigger FROM pg_trigger t
 WHERE t.tgrelid = 'sapi.invoice'::regclass AND t.tgfoid = 'loyalty.accrue()'::regprocedure
   AND t.tgtype & 8 = 8 \gset
SET ROLE loyalty_test_erp;
:drop_delete_trigger;
RESET ROLE;
SELECT item, expected, actual FROM loyalty.verify('sapi_club') WHERE item LIKE 'trigger%';

-- The same for the triggers on a header table.
SET ROLE loyalty_test_erp;
CREATE TABLE sapi.doc (doc_id int PRIMARY KEY, customer_id int NOT NULL, doc_date date NOT NULL);
CREATE TABLE sapi.doc_line (doc_id int NOT NULL, line_no int NOT NULL, amount numeric(12,2),
                            PRIMARY KEY (doc_id, line_no));
RESET ROLE;
SELECT loyalty.create_program('sapi_lines') > 0 AS created;
SELECT loyalty.attach('sapi.doc_line', 'sapi_lines', header => 'sapi.doc', line_header_column => 'doc_id',
                      account_column => 'customer_id', date_column => 'doc_date', amount_column => 'amount') > 0 AS attached;
SELECT count(*) AS drift FROM loyalty.verify('sapi_lines');
SET ROLE loyalty_test_erp;
ALTER TABLE sapi.doc DISABLE TRIGGER USER;
RESET ROLE;
SELECT item, expected, actual FROM loyalty.verify('sapi_lines') ORDER BY item;

-- A role without SELECT on the table cannot verify it.
SET ROLE loyalty_test_operator;
SELECT count(*) FROM loyalty.verify('sapi_club');
RESET ROLE;

-- The owner hides the row that never accrued from the reader with a
-- policy: verify as the reader refuses instead of reconciling what is left.
SET ROLE loyalty_test_erp;
ALTER TABLE sapi.invoice ENABLE ROW LEVEL SECURITY;
CREATE POLICY hide_4 ON sapi.invoice USING (id <> 4);
RESET ROLE;
SET ROLE loyalty_test_reader;
SELECT count(*) AS visible_rows FROM sapi.invoice;
SELECT count(*) FROM loyalty.verify('sapi_club');
RESET ROLE;
-- nor can a backfill that would not see every row
SET ROLE loyalty_test_erp;
GRANT USAGE ON SCHEMA sapi TO loyalty_admin;
GRANT SELECT ON sapi.invoice TO loyalty_admin;
RESET ROLE;
CREATE ROLE loyalty_test_admin2 IN ROLE loyalty_admin;
SET ROLE loyalty_test_admin2;
SELECT * FROM loyalty.backfill('sapi.invoice', 'sapi_club', '-infinity');
RESET ROLE;

-- Cleanup.
SET client_min_messages = warning;
SELECT loyalty.detach('sapi.invoice', 'sapi_club');
SELECT loyalty.detach('sapi_bi.sale', 'sapi_club');
SELECT loyalty.detach('sapi.doc_line', 'sapi_lines');
DROP SCHEMA sapi CASCADE;
DROP SCHEMA sapi_bi CASCADE;
DROP TABLE call_outcome;
DROP ROLE loyalty_test_admin, loyalty_test_admin2, loyalty_test_operator, loyalty_test_reader, loyalty_test_erp;
