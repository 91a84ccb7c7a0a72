--
-- programs: creating a loyalty program, versioning its earning rules and
-- enrolling accounts -- the configuration a DBA types before any invoice
-- earns a point.
--
-- Errors show their DETAIL and HINT; CONTEXT lines (PL/pgSQL line numbers)
-- are left out so that the output does not change with the function bodies.
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset null '(null)'
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE SCHEMA prg;
-- A program's settings and its rule versions, by program name.
CREATE VIEW prg.settings AS
SELECT p.name, p.currency, p.ladder, p.basis, p.rounding, p.qualification_window, p.enrollment,
       p.strict, p.settlement_period, p.point_lifetime, p.rebate
  FROM loyalty.program p;
CREATE VIEW prg.rules AS
SELECT p.name, r.valid_from, r.points_per_unit, r.min_amount, r.product_line_multipliers,
       r.tier_multipliers, r.segment_multipliers, r.on_time_bonus_pct, r.cap_points, r.cap_period
  FROM loyalty.rule r JOIN loyalty.program p USING (program_id);
CREATE VIEW prg.accounts AS
SELECT p.name, a.account_key, a.cooperation_model, a.industry, a.region, a.potential_spend,
       a.cohort, a.tier, a.enrolled_by, a.enrolled_from
  FROM loyalty.account a JOIN loyalty.program p USING (program_id);

--
-- 1. create_program
--

-- Only a name is required.  The defaults: euros, one point per currency
-- unit, accrual on the amount, rounding toward zero, a 12-month
-- qualification window, automatic enrolment of every invoicing customer,
-- rejected rows parked (not strict), quarterly settlement, points that never
-- expire, no tiers and no rebate.  The function returns the program's id.
SELECT loyalty.create_program('programs_defaults') > 0 AS created;
SELECT * FROM prg.settings WHERE name = 'programs_defaults';

-- The program's first rule version is in force from the beginning of time,
-- with no minimum, no multipliers, no bonus and no cap.
SELECT * FROM prg.rules WHERE name = 'programs_defaults';

-- Every parameter, by name: a building-materials dealer paying half a point
-- per cubic metre in US dollars, with a ladder, a 6-month window, explicit
-- enrolment, strict accrual, monthly settlement, points valid two years and
-- a retrospective rebate.  starts_on dates the first rule version.
SELECT loyalty.create_program('programs_full',
                              currency => 'USD',
                              ladder => 'Member:0, Silver:50000, Gold:250000',
                              points_per_unit => 0.5,
                              basis => 'quantity',
                              rounding => 'half_even',
                              qualification_window => '6 months',
                              enrollment => 'explicit',
                              strict => true,
                              starts_on => '2024-01-01',
                              settlement_period => 'month',
                              point_lifetime => '2 years',
                              rebate => 'retro: 0:0%, 100000:2%') > 0 AS created;
SELECT * FROM prg.settings WHERE name = 'programs_full';
SELECT * FROM prg.rules WHERE name = 'programs_full';

-- A zero rate is allowed: a tiers-only program that counts qualifying spend
-- but pays no points.
SELECT loyalty.create_program('programs_tiers_only', points_per_unit => 0,
                              ladder => 'Silver:10000, Gold:50000') > 0 AS created;
SELECT name, points_per_unit FROM prg.rules WHERE name = 'programs_tiers_only';

--
-- 2. create_program errors
--

-- Names are unique.
SELECT loyalty.create_program('programs_defaults');

-- Enumerated settings list the accepted values.
SELECT loyalty.create_program('programs_bad', basis => 'volume');
SELECT loyalty.create_program('programs_bad', rounding => 'ceiling');
SELECT loyalty.create_program('programs_bad', enrollment => 'manual');
SELECT loyalty.create_program('programs_bad', settlement_period => 'week');
SELECT loyalty.create_program('programs_bad', basis => NULL);

-- A currency is an ISO 4217 code in capitals.
SELECT loyalty.create_program('programs_bad', currency => 'eur');
SELECT loyalty.create_program('programs_bad', currency => 'EURO');
SELECT loyalty.create_program('programs_bad', currency => NULL);

-- A rate is zero or positive.
SELECT loyalty.create_program('programs_bad', points_per_unit => -1);
SELECT loyalty.create_program('programs_bad', points_per_unit => NULL);

-- Limits: a name without surrounding spaces, a window of whole months
-- between one month and ten years (the tier window counts calendar months:
-- '90 days' is refused with the months it means), a rate below one million
-- points per unit.  sql/errors.sql tries every parameter.
SELECT loyalty.create_program(' programs_spaced');
SELECT loyalty.create_program('programs_bad', qualification_window => '2 weeks');
SELECT loyalty.create_program('programs_bad', qualification_window => '90 days');
SELECT loyalty.create_program('programs_bad', qualification_window => '11 years');
SELECT loyalty.create_program('programs_bad', points_per_unit => 1000000);

-- Rounding toward zero was called 'floor' (a credit note of -247.83 gave
-- -247 points, which is not a floor): the old name is still accepted, with
-- a notice, and stored as 'toward_zero'.
SELECT loyalty.create_program('programs_floor', rounding => 'floor') > 0 AS created;
SELECT name, rounding FROM prg.settings WHERE name = 'programs_floor';

-- None of the failed calls left a program behind.
SELECT count(*) AS programs FROM loyalty.program WHERE name LIKE '%programs_bad' OR name LIKE '%programs_spaced';

--
-- 3. add_rule: versioned earning rules
--

-- A distributor program starting on 1 January 2024, one point per euro,
-- fed by an invoice table.
CREATE TABLE prg.invoice (invoice_id int PRIMARY KEY, customer_id text NOT NULL,
                          amount numeric(12,2) NOT NULL, invoice_date date NOT NULL,
                          product_line text);
SELECT loyalty.create_program('programs_rules', starts_on => '2024-01-01') > 0 AS created;
SELECT loyalty.attach('prg.invoice', 'programs_rules', account_column => 'customer_id',
                      amount_column => 'amount', date_column => 'invoice_date',
                      product_line_column => 'product_line') > 0 AS attached;

-- A version dated before any accrued document can be added freely; this one
-- starts in February with every option set: a minimum invoice, product-line,
-- tier and segment multipliers, an on-time payment bonus and a quarterly cap.
SELECT loyalty.add_rule('programs_rules', '2024-02-01', 1,
                        min_amount => 50,
                        product_line_multipliers => '{"SOLAR": 2, "CABLE": 0.5}',
                        tier_multipliers => '{"Gold": 1.25}',
                        segment_multipliers => '{"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.05}}',
                        on_time_bonus_pct => 5,
                        cap_points => 100000,
                        cap_period => 'quarter');
SELECT * FROM prg.rules WHERE name = 'programs_rules' ORDER BY valid_from;

-- An invoice of 15 March 2024 earns by the February version: 100 EUR of
-- SOLAR at 1 point x 2 = 200 points.
INSERT INTO prg.invoice VALUES (1, 'C1', 100.00, '2024-03-15', 'SOLAR');
SELECT account_key, kind, points, qualifying FROM loyalty.ledger
 WHERE program_id = (SELECT program_id FROM loyalty.program WHERE name = 'programs_rules');

-- March has accrued documents now, so a version starting in March (even
-- after the invoice's day) or earlier is refused: it could change what
-- accrued documents earned.  The hint names the first month that is safe.
SELECT loyalty.add_rule('programs_rules', '2024-03-20', 2);
SELECT loyalty.add_rule('programs_rules', '2024-01-01', 2);

-- From April on, two points per euro (and no product-line multipliers).
-- One version per day: a second one for 1 April is refused.
SELECT loyalty.add_rule('programs_rules', '2024-04-01', 2);
\set VERBOSITY terse
SELECT loyalty.add_rule('programs_rules', '2024-04-01', 3);
\set VERBOSITY default
SELECT name, valid_from, points_per_unit, product_line_multipliers
  FROM prg.rules WHERE name = 'programs_rules' ORDER BY valid_from;

-- Each invoice earns by the version in force on its own date: 31 March
-- still by February's (1 point x SOLAR 2 x 100 EUR = 200), 1 April by
-- April's (2 points x 100 EUR = 200, SOLAR no longer doubled).
INSERT INTO prg.invoice VALUES (2, 'C1', 100.00, '2024-03-31', 'SOLAR'),
                               (3, 'C1', 100.00, '2024-04-01', 'SOLAR');
SELECT invoice_id, e.rule_valid_from, e.points_per_unit, e.product_line_multiplier, e.points
  FROM prg.invoice i, loyalty.explain_points('prg.invoice', i.invoice_id::text) e
 ORDER BY invoice_id;
SELECT count(*) AS drift FROM loyalty.verify('programs_rules');

-- add_rule errors: an unknown program, a missing date, a cap without its
-- period (or the other way round), an unknown cap period.
SELECT loyalty.add_rule('programs_nope', '2025-01-01', 1);
SELECT loyalty.add_rule('programs_rules', NULL, 1);
SELECT loyalty.add_rule('programs_rules', '2025-01-01', 1, cap_points => 1000);
SELECT loyalty.add_rule('programs_rules', '2025-01-01', 1, cap_period => 'month');
SELECT loyalty.add_rule('programs_rules', '2025-01-01', 1, cap_points => 1000, cap_period => 'week');

-- Malformed multiplier maps are refused, each by its parameter's name.
SELECT loyalty.add_rule('programs_rules', '2025-01-01', 1, product_line_multipliers => '{"SOLAR": -2}');
SELECT loyalty.add_rule('programs_rules', '2025-01-01', 1, segment_multipliers => '{"colour": {"red": 2}}');
SELECT count(*) AS versions FROM prg.rules WHERE name = 'programs_rules';

--
-- 4. enroll
--

-- Under explicit enrolment an account must be enrolled to earn; by default
-- it earns from documents dated today on.
SELECT loyalty.enroll('programs_full', 'ACME');
SELECT name, account_key, cooperation_model, industry, region, potential_spend, cohort, tier,
       enrolled_by, enrolled_from = current_date AS from_today
  FROM prg.accounts WHERE name = 'programs_full';

-- Enrolling again updates the segment attributes given and keeps the
-- others; enrolled_from can be set explicitly.
SELECT loyalty.enroll('programs_full', 'ACME', cooperation_model => 'distributor',
                      industry => 'construction', region => 'North');
SELECT loyalty.enroll('programs_full', 'ACME', potential_spend => 250000, cohort => 'pilot',
                      enrolled_from => '2024-02-01');
SELECT * FROM prg.accounts WHERE name = 'programs_full';

-- Under automatic enrolment an explicitly enrolled account earns from all
-- of its documents (enrolled_from is -infinity).
SELECT loyalty.enroll('programs_defaults', '1001', cooperation_model => 'reseller', cohort => 'control');
SELECT * FROM prg.accounts WHERE name = 'programs_defaults';

-- enroll errors: an unknown program, a bad cohort or cooperation model, an
-- empty or NULL key.
SELECT loyalty.enroll('programs_nope', 'ACME');
SELECT loyalty.enroll('programs_full', 'ACME', cohort => 'treatment');
SELECT loyalty.enroll('programs_full', 'ACME', cooperation_model => 'wholesaler');
SELECT loyalty.enroll('programs_full', '');
SELECT loyalty.enroll('programs_full', NULL);

-- The failed calls changed nothing.
SELECT * FROM prg.accounts WHERE name = 'programs_full';
