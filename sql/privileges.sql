--
-- The ERP's own role needs no privilege on loyalty's tables: the triggers
-- read and write them as the extension owner.  And loyalty's roles get
-- what their name says, no more.
--
\set VERBOSITY default
SET datestyle = 'ISO, YMD';

CREATE ROLE loyalty_test_erp NOLOGIN;
CREATE SCHEMA prv AUTHORIZATION loyalty_test_erp;
SET ROLE loyalty_test_erp;
CREATE TABLE prv.invoice (id int PRIMARY KEY, customer_id int NOT NULL, invoice_date date NOT NULL,
                          due_date date, paid_date date);
CREATE TABLE prv.invoice_line (invoice_id int REFERENCES prv.invoice ON DELETE CASCADE, line_no int,
                               amount numeric(12,2), PRIMARY KEY (invoice_id, line_no));
RESET ROLE;

SELECT loyalty.create_program('privileges_club', ladder => 'Member:0, Silver:100') > 0 AS created;
SELECT loyalty.add_rule('privileges_club', '2020-01-01', 1, on_time_bonus_pct => 10);
SELECT loyalty.attach('prv.invoice_line', 'privileges_club', header => 'prv.invoice',
                      line_header_column => 'invoice_id', account_column => 'customer_id',
                      date_column => 'invoice_date', amount_column => 'amount',
                      due_date_column => 'due_date', paid_date_column => 'paid_date') > 0 AS attached;

-- The ERP's role cannot see schema loyalty at all ...
SET ROLE loyalty_test_erp;
SELECT count(*) FROM loyalty.balance;
-- ... yet its inserts, updates and deletes accrue, enrol and park
-- rejected rows: 100 + 20 earn, the on-time payment adds 10 % = 12.
INSERT INTO prv.invoice VALUES (1, 7, '2024-02-01', '2024-03-01', NULL), (2, 8, '2024-02-02', NULL, NULL);
INSERT INTO prv.invoice_line VALUES (1, 1, 100), (1, 2, 20), (2, 1, NULL);
UPDATE prv.invoice SET paid_date = '2024-02-20' WHERE id = 1;
DELETE FROM prv.invoice WHERE id = 2;
RESET ROLE;
SELECT account_key, points, qualifying FROM loyalty.balance
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'privileges_club') ORDER BY 1;
SELECT account_key, tier FROM loyalty.account
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'privileges_club') ORDER BY 1;
SELECT reason FROM loyalty.rejected_event
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'privileges_club');
SELECT count(*) AS drift FROM loyalty.verify('privileges_club');

-- loyalty_reader reads, cannot write or configure.
SET ROLE loyalty_reader;
SELECT count(*) > 0 AS sees_balances FROM loyalty.balance;
INSERT INTO loyalty.program (name, currency) VALUES ('x', 'EUR');
SELECT loyalty.create_program('privileges_nope');
RESET ROLE;

-- loyalty_operator enrols; configuring programs is for loyalty_admin.
SET ROLE loyalty_operator;
SELECT loyalty.enroll('privileges_club', '9', region => 'North');
SELECT loyalty.add_rule('privileges_club', '2030-01-01', 2);
RESET ROLE;

-- Cleanup.
SELECT loyalty.detach('prv.invoice_line', 'privileges_club');
DROP SCHEMA prv CASCADE;
DROP ROLE loyalty_test_erp;
