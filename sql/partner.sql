--
-- Partner self-service: a partner's login role, mapped to one account with
-- loyalty.grant_partner(), reads that account and nothing else: not through
-- the tables, the views, the reading functions, their error messages, or a
-- predicate of its own that would run before the row filter.  It writes
-- nothing and cannot become anyone else.
--
\set VERBOSITY default
SET datestyle = 'ISO, YMD';

CREATE ROLE partner_erp NOLOGIN;
CREATE SCHEMA ptn AUTHORIZATION partner_erp;
SET ROLE partner_erp;
CREATE TABLE ptn.invoice_line (id int PRIMARY KEY, customer text NOT NULL, invoice_date date NOT NULL, amount numeric(12,2));
RESET ROLE;
SELECT loyalty.create_program('partner_club', ladder => 'Member:0, Silver:500') > 0 AS created;
SELECT loyalty.attach('ptn.invoice_line', 'partner_club', account_column => 'customer',
                      date_column => 'invoice_date', amount_column => 'amount') > 0 AS attached;
-- 300 customers, three invoices each (enrolled automatically by the fold)
SET ROLE partner_erp;
INSERT INTO ptn.invoice_line
SELECT i, 'C' || (i % 300), date '2026-01-01' + (i % 200), 10 + (i % 97) FROM generate_series(1, 900) i;
RESET ROLE;
SELECT loyalty.fold('partner_club') >= 0 AS folded;
INSERT INTO loyalty.member (program_id, account_key, member_id, role)
SELECT program_id, 'C7', 'anna', 'champion' FROM loyalty.program WHERE name = 'partner_club';
-- a posting not folded yet, so that the view's delta side is exercised too
SET ROLE partner_erp;
INSERT INTO ptn.invoice_line VALUES (901, 'C7', '2026-08-01', 55), (902, 'C8', '2026-08-01', 66);
RESET ROLE;

CREATE ROLE acme_portal LOGIN;
CREATE ROLE other_portal LOGIN;
SELECT loyalty.grant_partner('acme_portal', 'partner_club', 'C7', member_id => 'anna');
SELECT loyalty.grant_partner('other_portal', 'partner_club', 'C8');
-- refused: roles that read everything anyway, unknown accounts and members
SELECT loyalty.grant_partner('loyalty_reader', 'partner_club', 'C7');
SELECT loyalty.grant_partner('acme_portal', 'partner_club', 'nobody');
SELECT loyalty.grant_partner('acme_portal', 'partner_club', 'C7', member_id => 'bob');
SELECT loyalty.grant_partner(NULL, 'partner_club', 'C7');
SELECT pg_has_role('acme_portal', 'loyalty_partner', 'MEMBER') AS acme_is_partner;

-- What C7 holds, computed as the superuser from the ERP rows.
CREATE TEMP TABLE c7 AS
SELECT count(*) AS lines, sum(trunc(amount)) AS points FROM ptn.invoice_line WHERE customer = 'C7';
GRANT SELECT ON c7 TO acme_portal;
SELECT * FROM c7;

-- as the login itself (SET SESSION AUTHORIZATION: SET ROLE then checks its own memberships)
SET SESSION AUTHORIZATION acme_portal;
-- every account-scoped table and view: its own rows only
SELECT 'ledger' AS relation, count(DISTINCT account_key) AS accounts, min(account_key) AS account FROM loyalty.ledger
UNION ALL SELECT 'balance', count(DISTINCT account_key), min(account_key) FROM loyalty.balance
UNION ALL SELECT 'balance_folded', count(DISTINCT account_key), min(account_key) FROM loyalty.balance_folded
UNION ALL SELECT 'balance_delta', count(DISTINCT account_key), min(account_key) FROM loyalty.balance_delta
UNION ALL SELECT 'accrual_month', count(DISTINCT account_key), min(account_key) FROM loyalty.accrual_month
UNION ALL SELECT 'account', count(DISTINCT account_key), min(account_key) FROM loyalty.account
UNION ALL SELECT 'member', count(DISTINCT account_key), min(account_key) FROM loyalty.member
UNION ALL SELECT 'tier_history', count(DISTINCT account_key), min(account_key) FROM loyalty.tier_history
UNION ALL SELECT 'partner_login', count(DISTINCT account_key), min(account_key) FROM loyalty.partner_login;
-- and the figures are right
SELECT b.points = c7.points AS points_right FROM loyalty.balance b, c7;
SELECT (loyalty.balance('partner_club', 'C7')).points = (SELECT points FROM c7) AS function_right;
SELECT loyalty.tier('partner_club', 'C7');
-- another account, an unknown one: the same refusal, nothing inferred
SELECT * FROM loyalty.balance('partner_club', 'C8');
SELECT * FROM loyalty.balance('partner_club', 'no such customer');
SELECT loyalty.tier('partner_club', 'C8');
-- a predicate of its own runs after the row filter: no division by zero from C8's row
SELECT count(*) FROM loyalty.ledger WHERE 1 / (CASE WHEN account_key = 'C8' THEN 0 ELSE 1 END) = 1;
-- the columns of its account row it may not read
SELECT cohort FROM loyalty.account;
SELECT potential_spend FROM loyalty.account;
-- nothing else of loyalty's: the ERP table, the configuration, the other programs' roles
SELECT count(*) FROM loyalty.attachment;
SELECT count(*) FROM loyalty.rejected_event;
SELECT count(*) FROM ptn.invoice_line;
SELECT * FROM loyalty.verify('partner_club');
SELECT * FROM loyalty.explain_points('ptn.invoice_line', 1);
-- it writes nothing, directly or through the functions
INSERT INTO loyalty.ledger (program_id, account_key, entry_no, kind, points) VALUES (1, 'C7', 1, 'adjust', 1000);
UPDATE loyalty.account SET tier = 'Silver';
DELETE FROM loyalty.balance_delta;
SELECT loyalty._post(1, 'C7', 'adjust', 1000, 'gift');
SELECT loyalty.fold('partner_club');
SELECT loyalty.enroll('partner_club', 'C7');
SELECT loyalty.grant_partner('acme_portal', 'partner_club', 'C8');
-- and cannot become anyone else
SET ROLE loyalty_reader;
SET ROLE other_portal;
SET ROLE loyalty_partner;
SELECT count(*) AS rows_as_the_group FROM loyalty.ledger;
RESET ROLE;
RESET SESSION AUTHORIZATION;

-- The other partner sees C8 alone.
SET SESSION AUTHORIZATION other_portal;
SELECT count(DISTINCT account_key) AS accounts, min(account_key) AS account FROM loyalty.ledger;
RESET SESSION AUTHORIZATION;

-- Staff read everything as before.
SET ROLE loyalty_reader;
SELECT count(DISTINCT account_key) = 300 AS reader_sees_all FROM loyalty.ledger l JOIN loyalty.program p USING (program_id)
WHERE p.name = 'partner_club';
SELECT count(*) = 300 AS reader_sees_all_balances FROM loyalty.balance b JOIN loyalty.program p USING (program_id)
WHERE p.name = 'partner_club';
RESET ROLE;

-- Revoked, the login reads nothing more.
SELECT loyalty.revoke_partner('acme_portal', 'partner_club');
SELECT pg_has_role('acme_portal', 'loyalty_partner', 'MEMBER') AS acme_is_partner;
SET SESSION AUTHORIZATION acme_portal;
SELECT count(*) FROM loyalty.ledger;
RESET SESSION AUTHORIZATION;

SELECT * FROM loyalty.verify('partner_club');
SELECT loyalty.revoke_partner('other_portal', 'partner_club');
DROP TABLE c7;
DROP ROLE acme_portal;
DROP ROLE other_portal;
