--
-- tiers_as_of: loyalty.tier(program, account, as_of) and
-- loyalty.balance(program, account, as_of) read the tier history and the
-- ledger as they stood on a date; the tier of a date is the one documents
-- of that date earn by (tier multipliers).
--
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET timezone = 'UTC';
SET client_min_messages = warning;

CREATE SCHEMA tao;
CREATE TABLE tao.invoice (id int PRIMARY KEY, customer text NOT NULL, inv_date date NOT NULL, amount numeric NOT NULL);
SELECT loyalty.create_program('tao_club', ladder => 'Silver:1000, Gold:5000', qualification_window => '3 months') > 0 AS created;
SELECT program_id AS pid FROM loyalty.program WHERE name = 'tao_club' \gset
-- Gold earns double: the tier a document's date falls in decides
SELECT loyalty.add_rule('tao_club', valid_from => '2025-01-01', points_per_unit => 1, tier_multipliers => '{"Gold": 2}');
SELECT loyalty.attach('tao.invoice', 'tao_club', account_column => 'customer', amount_column => 'amount',
                      date_column => 'inv_date') > 0 AS attached;
INSERT INTO tao.invoice VALUES (1, 'A', '2025-02-01', 6000), (2, 'B', '2025-02-01', 1200);
SELECT (loyalty.settle('tao_club', '2025-03-31')).tiers_up;

-- Before the change, no tier; from its effective date (tomorrow: the
-- settlement ran today), the new one.
SELECT account_key, effective_from = current_date + 1 AS from_tomorrow, new_tier
FROM loyalty.tier_history WHERE program_id = :pid ORDER BY 1;
SELECT loyalty.tier('tao_club', 'A', '2025-03-31') AS a_in_march,
       loyalty.tier('tao_club', 'A', current_date) AS a_today,
       loyalty.tier('tao_club', 'A', current_date + 1) AS a_tomorrow,
       loyalty.tier('tao_club', 'B', current_date + 400) AS b_next_year,
       loyalty.tier('tao_club', 'nobody', current_date + 1) AS nobody;
-- The current tier, without a date, as before.
SELECT loyalty.tier('tao_club', 'A') AS a_now;
-- A document dated tomorrow earns by Gold (double), today's by no tier:
-- what tier() as of its date says is what it earned.
INSERT INTO tao.invoice VALUES (3, 'A', current_date, 100), (4, 'A', current_date + 1, 100);
SELECT i.id, loyalty.tier('tao_club', 'A', i.inv_date) AS tier_then,
       (SELECT sum(l.points) FROM loyalty.ledger l WHERE l.program_id = :pid AND l.account_key = 'A'
          AND l.posted_xid = (SELECT max(x.posted_xid) FROM loyalty.ledger x WHERE x.program_id = :pid)) AS points_of_both
FROM tao.invoice i WHERE i.id IN (3, 4) ORDER BY 1;

-- Balance as of a date: the ledger entries posted up to the end of that
-- day, the rolling window ending with its month (by document date: the
-- documents of today and tomorrow count as of yesterday when they fall in
-- its month, so the expected figure is computed, not written down).
SELECT b.points, b.qualifying,
       b.rolling_qualifying = (SELECT coalesce(sum(amount), 0) FROM tao.invoice WHERE customer = 'A'
                               AND inv_date >= date_trunc('month', current_date - 1) - interval '2 months'
                               AND inv_date < date_trunc('month', current_date - 1) + interval '1 month') AS rolling_ok,
       b.tier
FROM loyalty.balance('tao_club', 'A', current_date - 1) b;
SELECT b.points = (SELECT sum(points) FROM loyalty.ledger WHERE program_id = :pid AND account_key = 'A') AS points_ok,
       b.qualifying = (SELECT sum(amount) FROM tao.invoice WHERE customer = 'A') AS qualifying_ok,
       b.rolling_qualifying = (SELECT coalesce(sum(amount), 0) FROM tao.invoice WHERE customer = 'A'
                               AND inv_date >= date_trunc('month', current_date + 1) - interval '2 months'
                               AND inv_date <= current_date + 1) AS rolling_ok,
       b.tier
FROM loyalty.balance('tao_club', 'A', current_date + 1) b;
SELECT * FROM loyalty.balance('tao_club', 'A', '2025-03-31');
SELECT * FROM loyalty.balance('tao_club', 'nobody', current_date);

-- Errors.
SELECT loyalty.tier('tao_club', 'A', NULL);
SELECT loyalty.balance('tao_club', 'A', NULL);
SELECT loyalty.tier('no such program', 'A', current_date);

-- Readers may ask.
CREATE ROLE tao_reader IN ROLE loyalty_reader;
SET ROLE tao_reader;
SELECT loyalty.tier('tao_club', 'A', current_date + 1) AS reader_sees;
RESET ROLE;
DROP ROLE tao_reader;

SELECT * FROM loyalty.verify('tao_club');
