--
-- errors: every parameter of every public function, given NULL, zero,
-- negative, huge, NaN, Infinity, malformed and unknown values, answers
-- with a clear loyalty error: a specific SQLSTATE, a message that names
-- the parameter, a DETAIL and a HINT, and no CONTEXT naming an internal
-- helper.  Never a raw NOT NULL or CHECK violation of a loyalty table, and
-- never a value silently accepted that would make the program misbehave.
--
-- The cases are a table: each is one named argument given to an otherwise
-- valid call of its function (the base call, which must succeed).  The
-- list of parameters comes from the catalog, so a parameter added to a
-- public function without its cases shows up in the coverage check below.
-- Every case runs in a subtransaction that is rolled back, so each starts
-- from the same state; the result is one row per case.
--
\pset null ''
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;

CREATE SCHEMA err;
CREATE TABLE err.invoice (
    invoice_id   bigint PRIMARY KEY,
    customer_id  int,
    amount       numeric(12,2),
    quantity     numeric,
    unit_price   real,
    invoice_date date,
    product_line text,
    currency     text,
    doc_type     text,
    due_date     date,
    paid_date    date,
    lines        int[]
);
CREATE TABLE err.unkeyed (customer_id int, amount numeric, invoice_date date);
CREATE VIEW err.invoice_view AS SELECT * FROM err.invoice;
-- A header and its lines: the lines' column that references the header
-- (hdr_ref) and the header's own key (id) have different names.
CREATE TABLE err.hdr (id bigint PRIMARY KEY, customer_id int, invoice_date date, code text UNIQUE);
CREATE TABLE err.unkeyed_hdr (id bigint, customer_id int, invoice_date date);
CREATE TABLE err.line (hdr_ref bigint, line_no int, amount numeric(12,2), PRIMARY KEY (hdr_ref, line_no));
CREATE ROLE err_portal LOGIN;
SELECT loyalty.create_program('err_club', ladder => 'Member:0, Gold:1000', starts_on => '2024-01-01') > 0 AS created;
SELECT loyalty.create_program('err_free') > 0 AS created;
SELECT loyalty.create_program('err_qty', basis => 'quantity') > 0 AS created;
SELECT loyalty.attach('err.invoice', 'err_club', account_column => 'customer_id', amount_column => 'amount',
                      date_column => 'invoice_date') > 0 AS attached;
INSERT INTO err.invoice (invoice_id, customer_id, amount, invoice_date) VALUES (1, 42, 100.00, '2024-03-01');
-- an agreement to end
SELECT loyalty.create_rebate_agreement('err_club', 'ERR0', 'retro: 0:1%', valid_from => '2024-01-01');

-- The base call of each public function: every case replaces (or adds)
-- one named argument.
CREATE TEMP TABLE base (fn text, param text, value text, PRIMARY KEY (fn, param));
INSERT INTO base VALUES
('create_program', 'name', $$'err_new'$$),
('add_rule', 'program', $$'err_club'$$), ('add_rule', 'valid_from', $$'2030-01-01'$$),
('add_rule', 'points_per_unit', '1'),
('enroll', 'program', $$'err_club'$$), ('enroll', 'account_key', $$'42'$$),
('attach', 'source', $$'err.invoice'$$), ('attach', 'program', $$'err_free'$$),
('attach', 'account_column', $$'customer_id'$$), ('attach', 'amount_column', $$'amount'$$),
('attach', 'date_column', $$'invoice_date'$$),
('detach', 'source', $$'err.invoice'$$), ('detach', 'program', $$'err_club'$$),
('backfill', 'source', $$'err.invoice'$$), ('backfill', 'program', $$'err_club'$$),
('backfill', 'since', $$'2024-01-01'$$),
('balance', 'program', $$'err_club'$$), ('balance', 'account_key', $$'42'$$),
('tier', 'program', $$'err_club'$$), ('tier', 'account_key', $$'42'$$),
('explain_points', 'source', $$'err.invoice'$$), ('explain_points', 'key', $$VARIADIC ARRAY['1']$$),
('verify', 'program', $$'err_club'$$),
('settle', 'program', $$'err_club'$$), ('settle', 'period_end', $$'2024-03-31'$$),
('settle_due', 'program', $$'err_club'$$),
('schedule_settlement', 'program', $$'err_club'$$), ('schedule_settlement', 'cron', $$'0 2 * * *'$$),
('unschedule_settlement', 'program', $$'err_club'$$),
('set_tier_rules', 'program', $$'err_club'$$),
('set_tier_requirement', 'program', $$'err_club'$$), ('set_tier_requirement', 'tier', $$'Gold'$$),
('set_tier_requirement', 'action', $$'certification'$$), ('set_tier_requirement', 'min_count', '2'),
('set_benefit', 'program', $$'err_club'$$), ('set_benefit', 'tier', $$'Gold'$$),
('set_benefit', 'benefit', $$'payment_terms_days'$$), ('set_benefit', 'value', $$'30'$$),
('grant_tier', 'program', $$'err_club'$$), ('grant_tier', 'account_key', $$'42'$$), ('grant_tier', 'tier', $$'Gold'$$),
('revoke_tier', 'program', $$'err_club'$$), ('revoke_tier', 'account_key', $$'42'$$),
('benefits', 'program', $$'err_club'$$), ('benefits', 'account_key', $$'42'$$),
('statement', 'program', $$'err_club'$$), ('statement', 'account_key', $$'42'$$), ('statement', 'period_end', $$'2024-03-31'$$),
('fold', 'program', $$'err_club'$$),
('pending_caps', 'program_id', '1'), ('pending_caps', 'account_key', $$'42'$$),
('grant_partner', 'login', $$'err_portal'$$), ('grant_partner', 'program', $$'err_club'$$),
('grant_partner', 'account_key', $$'42'$$),
('revoke_partner', 'login', $$'err_portal'$$), ('revoke_partner', 'program', $$'err_club'$$),
('set_roi_economics', 'program', $$'err_club'$$),
('set_margin_rate', 'program', $$'err_club'$$), ('set_margin_rate', 'product_line', $$'TOOLS'$$),
('set_margin_rate', 'rate', '0.2'),
('assign_cohorts', 'program', $$'err_club'$$), ('assign_cohorts', 'pilot_fraction', '0.5'), ('assign_cohorts', 'seed', '1'),
('attachment_facts', 'program', $$'err_club'$$),
('sales', 'program', $$'err_club'$$),
('roi', 'program', $$'err_club'$$), ('roi', 'pre', $$'[2024-01-01,2024-07-01)'$$),
('roi', 'post', $$'[2024-07-01,2025-01-01)'$$),
('expiring_points', 'program', $$'err_club'$$),
('accrue_rebates', 'program', $$'err_club'$$),
('create_rebate_agreement', 'program', $$'err_club'$$), ('create_rebate_agreement', 'agreement_id', $$'ERR1'$$),
('create_rebate_agreement', 'schedule', $$'retro: 0:1%'$$),
('end_rebate_agreement', 'program', $$'err_club'$$), ('end_rebate_agreement', 'agreement_id', $$'ERR0'$$),
('set_reward', 'program', $$'err_club'$$), ('set_reward', 'reward_id', $$'ERR-SEAT'$$),
('set_reward', 'name', $$'Training seat'$$), ('set_reward', 'points_price', '100'),
('set_action_rule', 'program', $$'err_club'$$), ('set_action_rule', 'action', $$'certification'$$),
('set_action_rule', 'points', '50');

-- The cases.  kind says what is tried; call, when given, replaces the
-- generated call (positional arguments, or several changed at once).
CREATE TEMP TABLE cases (n serial, fn text, param text, kind text, value text, call text);
INSERT INTO cases (fn, param, kind, value, call) VALUES
-- create_program
('create_program', 'name', 'valid', $$'err_new'$$, NULL),
('create_program', 'name', 'null', 'NULL', NULL),
('create_program', 'name', 'empty', $$''$$, NULL),
('create_program', 'name', 'malformed', $$' err_spaced'$$, NULL),
('create_program', 'name', 'malformed', $$E'err\tnew'$$, NULL),
('create_program', 'name', 'huge', $$repeat('x', 64)$$, NULL),
('create_program', 'name', 'duplicate', $$'err_club'$$, NULL),
('create_program', 'currency', 'null', 'NULL', NULL),
('create_program', 'currency', 'empty', $$''$$, NULL),
('create_program', 'currency', 'malformed', $$'eur'$$, NULL),
('create_program', 'currency', 'huge', $$'EURO'$$, NULL),
('create_program', 'ladder', 'null', 'NULL', NULL),
('create_program', 'ladder', 'malformed', $$'Gold'$$, NULL),
('create_program', 'points_per_unit', 'null', 'NULL', NULL),
('create_program', 'points_per_unit', 'zero', '0', NULL),
('create_program', 'points_per_unit', 'negative', '-1', NULL),
('create_program', 'points_per_unit', 'huge', '1000000', NULL),
('create_program', 'points_per_unit', 'nan', $$'NaN'$$, NULL),
('create_program', 'points_per_unit', 'infinity', $$'Infinity'$$, NULL),
('create_program', 'points_per_unit', '-infinity', $$'-Infinity'$$, NULL),
('create_program', 'basis', 'null', 'NULL', NULL),
('create_program', 'basis', 'unknown', $$'volume'$$, NULL),
('create_program', 'rounding', 'null', 'NULL', NULL),
('create_program', 'rounding', 'unknown', $$'ceiling'$$, NULL),
('create_program', 'rounding', 'valid', $$'toward_zero'$$, NULL),
('create_program', 'rounding', 'deprecated', $$'floor'$$, NULL),
('create_program', 'qualification_window', 'null', 'NULL', NULL),
('create_program', 'qualification_window', 'zero', $$'0'$$, NULL),
('create_program', 'qualification_window', 'negative', $$'-1 month'$$, NULL),
('create_program', 'qualification_window', 'days', $$'90 days'$$, NULL),
('create_program', 'qualification_window', 'days', $$'2 weeks'$$, NULL),
('create_program', 'qualification_window', 'days', $$'1 month 3 hours'$$, NULL),
('create_program', 'qualification_window', 'huge', $$'11 years'$$, NULL),
('create_program', 'qualification_window', 'valid', $$'10 years'$$, NULL),
('create_program', 'enrollment', 'null', 'NULL', NULL),
('create_program', 'enrollment', 'unknown', $$'manual'$$, NULL),
('create_program', 'strict', 'null', 'NULL', NULL),
('create_program', 'starts_on', 'null', 'NULL', NULL),
('create_program', 'starts_on', 'infinity', $$'infinity'$$, NULL),
('create_program', 'starts_on', '-infinity', $$'-infinity'$$, NULL),
('create_program', 'settlement_period', 'null', 'NULL', NULL),
('create_program', 'settlement_period', 'unknown', $$'week'$$, NULL),
('create_program', 'point_lifetime', 'null', 'NULL', NULL),
('create_program', 'point_lifetime', 'zero', $$'0'$$, NULL),
('create_program', 'point_lifetime', 'negative', $$'-2 years'$$, NULL),
('create_program', 'rebate', 'null', 'NULL', NULL),
('create_program', 'rebate', 'malformed', $$'retro 5%'$$, NULL),
-- add_rule
('add_rule', 'program', 'valid', $$'err_club'$$, NULL),
('add_rule', 'program', 'null', 'NULL', NULL),
('add_rule', 'program', 'unknown', $$'err_nope'$$, NULL),
('add_rule', 'valid_from', 'null', 'NULL', NULL),
('add_rule', 'valid_from', 'infinity', $$'infinity'$$, NULL),
('add_rule', 'valid_from', '-infinity', $$'-infinity'$$, NULL),
('add_rule', 'valid_from', 'accrued', $$'2024-03-15'$$, NULL),
('add_rule', 'valid_from', 'duplicate', $$'2024-01-01'$$, NULL),
('add_rule', 'points_per_unit', 'null', 'NULL', NULL),
('add_rule', 'points_per_unit', 'negative', '-1', NULL),
('add_rule', 'points_per_unit', 'huge', '1000000', NULL),
('add_rule', 'points_per_unit', 'nan', $$'NaN'$$, NULL),
('add_rule', 'points_per_unit', 'infinity', $$'Infinity'$$, NULL),
('add_rule', 'min_amount', 'null', 'NULL', NULL),
('add_rule', 'min_amount', 'negative', '-1', NULL),
('add_rule', 'min_amount', 'nan', $$'NaN'$$, NULL),
('add_rule', 'min_amount', 'infinity', $$'Infinity'$$, NULL),
('add_rule', 'product_line_multipliers', 'null', 'NULL', NULL),
('add_rule', 'product_line_multipliers', 'malformed', $$'[2]'$$, NULL),
('add_rule', 'product_line_multipliers', 'zero', $$'{"SOLAR": 0}'$$, NULL),
('add_rule', 'product_line_multipliers', 'negative', $$'{"SOLAR": -2}'$$, NULL),
('add_rule', 'product_line_multipliers', 'malformed', $$'{"SOLAR": "2"}'$$, NULL),
('add_rule', 'tier_multipliers', 'null', 'NULL', NULL),
('add_rule', 'tier_multipliers', 'malformed', $$'{"Gold": {"x": 2}}'$$, NULL),
('add_rule', 'segment_multipliers', 'null', 'NULL', NULL),
('add_rule', 'segment_multipliers', 'malformed', $$'{"region": 2}'$$, NULL),
('add_rule', 'segment_multipliers', 'unknown', $$'{"colour": {"red": 2}}'$$, NULL),
('add_rule', 'on_time_bonus_pct', 'null', 'NULL', NULL),
('add_rule', 'on_time_bonus_pct', 'negative', '-1', NULL),
('add_rule', 'on_time_bonus_pct', 'huge', '1001', NULL),
('add_rule', 'on_time_bonus_pct', 'nan', $$'NaN'$$, NULL),
('add_rule', 'on_time_bonus_pct', 'infinity', $$'Infinity'$$, NULL),
('add_rule', 'cap_points', 'null', 'NULL', NULL),
('add_rule', 'cap_points', 'zero', '0', $$SELECT loyalty.add_rule('err_club', '2030-01-01', 1, cap_points => 0, cap_period => 'month')$$),
('add_rule', 'cap_points', 'negative', '-1', $$SELECT loyalty.add_rule('err_club', '2030-01-01', 1, cap_points => -1, cap_period => 'month')$$),
('add_rule', 'cap_points', 'huge', '9223372036854775807', $$SELECT loyalty.add_rule('err_club', '2030-01-01', 1, cap_points => 9223372036854775807, cap_period => 'year')$$),
('add_rule', 'cap_points', 'alone', '1000', NULL),
('add_rule', 'cap_period', 'null', 'NULL', NULL),
('add_rule', 'cap_period', 'unknown', $$'week'$$, $$SELECT loyalty.add_rule('err_club', '2030-01-01', 1, cap_points => 1000, cap_period => 'week')$$),
('add_rule', 'cap_period', 'alone', $$'month'$$, NULL),
-- enroll
('enroll', 'program', 'valid', $$'err_club'$$, NULL),
('enroll', 'program', 'null', 'NULL', NULL),
('enroll', 'program', 'unknown', $$'err_nope'$$, NULL),
('enroll', 'account_key', 'null', 'NULL', NULL),
('enroll', 'account_key', 'empty', $$''$$, NULL),
('enroll', 'account_key', 'huge', $$repeat('k', 1025)$$, NULL),
('enroll', 'cooperation_model', 'null', 'NULL', NULL),
('enroll', 'cooperation_model', 'unknown', $$'wholesaler'$$, NULL),
('enroll', 'industry', 'null', 'NULL', NULL),
('enroll', 'industry', 'empty', $$''$$, NULL),
('enroll', 'region', 'null', 'NULL', NULL),
('enroll', 'region', 'empty', $$''$$, NULL),
('enroll', 'potential_spend', 'null', 'NULL', NULL),
('enroll', 'potential_spend', 'zero', '0', NULL),
('enroll', 'potential_spend', 'negative', '-1', NULL),
('enroll', 'potential_spend', 'nan', $$'NaN'$$, NULL),
('enroll', 'potential_spend', 'infinity', $$'Infinity'$$, NULL),
('enroll', 'cohort', 'null', 'NULL', NULL),
('enroll', 'cohort', 'unknown', $$'treatment'$$, NULL),
('enroll', 'enrolled_from', 'null', 'NULL', NULL),
('enroll', 'enrolled_from', 'infinity', $$'infinity'$$, NULL),
('enroll', 'enrolled_from', '-infinity', $$'-infinity'$$, NULL),
-- attach
('attach', 'source', 'valid', $$'err.invoice'$$, NULL),
('attach', 'source', 'null', 'NULL', NULL),
('attach', 'source', 'unknown', $$'err.nope'$$, NULL),
('attach', 'source', 'view', $$'err.invoice_view'$$, NULL),
('attach', 'source', 'loyalty', $$'loyalty.ledger'$$, NULL),
('attach', 'program', 'null', 'NULL', NULL),
('attach', 'program', 'unknown', $$'err_nope'$$, NULL),
('attach', 'program', 'attached', $$'err_club'$$, NULL),
('attach', 'program', 'quantity', $$'err_qty'$$, NULL),
('attach', 'account_column', 'null', 'NULL', NULL),
('attach', 'account_column', 'empty', $$''$$, NULL),
('attach', 'account_column', 'unknown', $$'client_id'$$, NULL),
('attach', 'account_column', 'wrong_type', $$'lines'$$, NULL),
('attach', 'amount_column', 'null', 'NULL', NULL),
('attach', 'amount_column', 'unknown', $$'total'$$, NULL),
('attach', 'amount_column', 'wrong_type', $$'unit_price'$$, NULL),
('attach', 'quantity_column', 'null', 'NULL', NULL),
('attach', 'quantity_column', 'unknown', $$'qty'$$, NULL),
('attach', 'quantity_column', 'wrong_type', $$'product_line'$$, NULL),
('attach', 'date_column', 'null', 'NULL', NULL),
('attach', 'date_column', 'unknown', $$'doc_date'$$, NULL),
('attach', 'date_column', 'wrong_type', $$'customer_id'$$, NULL),
('attach', 'key_column', 'null', 'NULL', NULL),
('attach', 'key_column', 'empty', $$''$$, NULL),
('attach', 'key_column', 'unknown', $$'id'$$, NULL),
('attach', 'key_column', 'not_unique', $$'customer_id'$$, NULL),
('attach', 'key_column', 'malformed', $$'invoice_id,'$$, NULL),
('attach', 'key_column', 'no_primary_key', 'NULL', $$SELECT loyalty.attach('err.unkeyed', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date')$$),
('attach', 'product_line_column', 'null', 'NULL', NULL),
('attach', 'product_line_column', 'unknown', $$'line'$$, NULL),
('attach', 'product_line_column', 'wrong_type', $$'invoice_date'$$, NULL),
('attach', 'currency_column', 'null', 'NULL', NULL),
('attach', 'currency_column', 'unknown', $$'ccy'$$, NULL),
('attach', 'currency_column', 'wrong_type', $$'amount'$$, NULL),
('attach', 'doc_type_column', 'null', 'NULL', NULL),
('attach', 'doc_type_column', 'unknown', $$'type'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', doc_type_column => 'type', credit_note_types => '{CRN}')$$),
('attach', 'doc_type_column', 'wrong_type', $$'due_date'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', doc_type_column => 'due_date', credit_note_types => '{CRN}')$$),
('attach', 'doc_type_column', 'alone', $$'doc_type'$$, NULL),
('attach', 'credit_note_types', 'null', 'NULL', NULL),
('attach', 'credit_note_types', 'alone', $$'{CRN}'$$, NULL),
('attach', 'credit_note_types', 'empty', $$'{}'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', doc_type_column => 'doc_type', credit_note_types => '{}')$$),
('attach', 'credit_note_types', 'null_element', $$'{CRN,NULL}'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', doc_type_column => 'doc_type', credit_note_types => '{CRN,NULL}')$$),
('attach', 'due_date_column', 'null', 'NULL', NULL),
('attach', 'due_date_column', 'unknown', $$'due'$$, NULL),
('attach', 'due_date_column', 'wrong_type', $$'amount'$$, NULL),
('attach', 'paid_date_column', 'null', 'NULL', NULL),
('attach', 'paid_date_column', 'unknown', $$'paid'$$, NULL),
('attach', 'paid_date_column', 'wrong_type', $$'currency'$$, NULL),
('attach', 'amount_expression', 'null', 'NULL', NULL),
('attach', 'amount_expression', 'both', $$'amount * 2'$$, NULL),
('attach', 'amount_expression', 'empty', $$''$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_expression => '', date_column => 'invoice_date')$$),
('attach', 'amount_expression', 'malformed', $$'amount *'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_expression => 'amount *', date_column => 'invoice_date')$$),
('attach', 'amount_expression', 'unknown', $$'total * 2'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_expression => 'total * 2', date_column => 'invoice_date')$$),
('attach', 'amount_expression', 'float', $$'quantity * unit_price'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_expression => 'quantity * unit_price', date_column => 'invoice_date')$$),
('attach', 'amount_expression', 'aggregate', $$'sum(amount)'$$, $$SELECT loyalty.attach('err.invoice', 'err_free', account_column => 'customer_id', amount_expression => 'sum(amount)', date_column => 'invoice_date')$$),
('attach', 'header', 'null', 'NULL', NULL),
('attach', 'header', 'view', $$'err.invoice_view'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.invoice_view', line_header_column => 'hdr_ref', header_id_column => 'invoice_id')$$),
('attach', 'header', 'loyalty', $$'loyalty.program'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'loyalty.program', line_header_column => 'hdr_ref')$$),
('attach', 'header', 'itself', $$'err.line'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.line', line_header_column => 'hdr_ref')$$),
('attach', 'header', 'valid', $$'err.hdr'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', header_id_column => 'id')$$),
('attach', 'line_header_column', 'null', 'NULL', $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr')$$),
('attach', 'line_header_column', 'unknown', $$'id'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'id')$$),
('attach', 'line_header_column', 'wrong_type', $$'line_no'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'line_no')$$),
('attach', 'line_header_column', 'no_header', $$'hdr_ref'$$, NULL),
('attach', 'header_id_column', 'null', 'NULL', $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.unkeyed_hdr', line_header_column => 'hdr_ref')$$),
('attach', 'header_id_column', 'unknown', $$'hdr_ref'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', header_id_column => 'hdr_ref')$$),
('attach', 'header_id_column', 'wrong_type', $$'code'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', header_id_column => 'code')$$),
('attach', 'header_id_column', 'not_a_key', $$'customer_id'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', header_id_column => 'customer_id')$$),
('attach', 'header_id_column', 'no_header', $$'id'$$, NULL),
('attach', 'header_key_column', 'null', 'NULL', NULL),
('attach', 'header_key_column', 'deprecated', $$'hdr_ref'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', header_key_column => 'hdr_ref')$$),
('attach', 'header_key_column', 'conflict', $$'hdr_ref'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', header_key_column => 'hdr_ref', line_header_column => 'hdr_ref')$$),
('attach', 'header_match_column', 'null', 'NULL', NULL),
('attach', 'header_match_column', 'deprecated', $$'id'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', header_key_column => 'hdr_ref', header_match_column => 'id')$$),
('attach', 'header_match_column', 'conflict', $$'id'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', header_match_column => 'id', header_id_column => 'id')$$),
('attach', 'product', 'null', 'NULL', NULL),
('attach', 'product', 'own_table', $$'loyalty.ledger'$$, $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', header => 'err.hdr', line_header_column => 'hdr_ref', product => 'loyalty.ledger', line_product_column => 'line_no', product_line_column => 'kind')$$),
('attach', 'line_product_column', 'null', 'NULL', $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', product => 'err.unkeyed_hdr', product_line_column => 'customer_id')$$),
('attach', 'line_product_column', 'no_product', $$'customer_id'$$, NULL),
('attach', 'product_id_column', 'null', 'NULL', $$SELECT loyalty.attach('err.line', 'err_free', account_column => 'customer_id', amount_column => 'amount', date_column => 'invoice_date', product => 'err.unkeyed_hdr', line_product_column => 'hdr_ref', product_line_column => 'customer_id')$$),
('attach', 'product_id_column', 'no_product', $$'id'$$, NULL),
-- detach
('detach', 'source', 'valid', $$'err.invoice'$$, NULL),
('detach', 'source', 'null', 'NULL', NULL),
('detach', 'source', 'unknown', $$'err.nope'$$, NULL),
('detach', 'source', 'not_attached', $$'err.hdr'$$, NULL),
('detach', 'program', 'null', 'NULL', NULL),
('detach', 'program', 'unknown', $$'err_nope'$$, NULL),
('detach', 'program', 'not_attached', $$'err_free'$$, NULL),
-- backfill
('backfill', 'source', 'valid', $$'err.invoice'$$, NULL),
('backfill', 'source', 'null', 'NULL', NULL),
('backfill', 'source', 'not_attached', $$'err.hdr'$$, NULL),
('backfill', 'program', 'null', 'NULL', NULL),
('backfill', 'program', 'unknown', $$'err_nope'$$, NULL),
('backfill', 'program', 'not_attached', $$'err_free'$$, NULL),
('backfill', 'since', 'null', 'NULL', NULL),
('backfill', 'since', 'infinity', $$'infinity'$$, NULL),
('backfill', 'since', '-infinity', $$'-infinity'$$, NULL),
-- fold: NULL folds every program
('fold', 'program', 'valid', $$'err_club'$$, NULL),
('fold', 'program', 'null', 'NULL', NULL),
('fold', 'program', 'unknown', $$'err_nope'$$, NULL),
-- the caps of unfolded postings (the view loyalty.balance calls it): STRICT
('pending_caps', 'account_key', 'null', 'NULL', NULL),
('pending_caps', 'account_key', 'unknown', $$'no such customer'$$, NULL),
-- the rewards catalogue
('set_reward', 'program', 'valid', $$'err_club'$$, NULL),
('set_reward', 'program', 'null', 'NULL', NULL),
('set_reward', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_reward', 'reward_id', 'null', 'NULL', NULL),
('set_reward', 'reward_id', 'empty', $$''$$, NULL),
('set_reward', 'reward_id', 'malformed', $$' SEAT'$$, NULL),
('set_reward', 'reward_id', 'huge', $$repeat('r', 64)$$, NULL),
('set_reward', 'name', 'null', 'NULL', NULL),
('set_reward', 'name', 'empty', $$' '$$, NULL),
('set_reward', 'points_price', 'null', 'NULL', NULL),
('set_reward', 'points_price', 'zero', '0', NULL),
('set_reward', 'points_price', 'negative', '-1', NULL),
('set_reward', 'points_price', 'huge', '9223372036854775807', NULL),
('set_reward', 'kind', 'null', 'NULL', NULL),
('set_reward', 'kind', 'unknown', $$'holiday'$$, NULL),
('set_reward', 'kind', 'valid', $$'service_visit'$$, NULL),
('set_reward', 'min_tier', 'null', 'NULL', NULL),
('set_reward', 'min_tier', 'valid', $$'Gold'$$, NULL),
('set_reward', 'min_tier', 'unknown', $$'Diamond'$$, NULL),
('set_reward', 'min_tier', 'no_ladder', $$'Gold'$$, $$SELECT loyalty.set_reward('err_free', 'ERR-SEAT', 'Seat', 100, min_tier => 'Gold')$$),
('set_reward', 'stock', 'null', 'NULL', NULL),
('set_reward', 'stock', 'zero', '0', NULL),
('set_reward', 'stock', 'negative', '-1', NULL),
('set_reward', 'per_account_limit', 'null', 'NULL', NULL),
('set_reward', 'per_account_limit', 'zero', '0', NULL),
('set_reward', 'per_account_limit', 'negative', '-1', NULL),
('set_reward', 'period_limit', 'null', 'NULL', NULL),
('set_reward', 'period_limit', 'zero', '0', $$SELECT loyalty.set_reward('err_club', 'ERR-SEAT', 'Seat', 100, period_limit => 0, limit_period => 'month')$$),
('set_reward', 'period_limit', 'alone', '2', NULL),
('set_reward', 'limit_period', 'null', 'NULL', NULL),
('set_reward', 'limit_period', 'alone', $$'month'$$, NULL),
('set_reward', 'limit_period', 'unknown', $$'week'$$, $$SELECT loyalty.set_reward('err_club', 'ERR-SEAT', 'Seat', 100, period_limit => 2, limit_period => 'week')$$),
('set_reward', 'valid_from', 'null', 'NULL', NULL),
('set_reward', 'valid_from', 'infinity', $$'infinity'$$, NULL),
('set_reward', 'valid_from', '-infinity', $$'-infinity'$$, NULL),
('set_reward', 'valid_until', 'null', 'NULL', NULL),
('set_reward', 'valid_until', 'infinity', $$'infinity'$$, NULL),
('set_reward', 'valid_until', 'before_valid_from', $$'2024-01-01'$$, $$SELECT loyalty.set_reward('err_club', 'ERR-SEAT', 'Seat', 100, valid_from => '2024-02-01', valid_until => '2024-01-01')$$),
('set_reward', 'description', 'null', 'NULL', NULL),
('set_reward', 'active', 'null', 'NULL', NULL),
-- action rules
('set_action_rule', 'program', 'valid', $$'err_club'$$, NULL),
('set_action_rule', 'program', 'null', 'NULL', NULL),
('set_action_rule', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_action_rule', 'action', 'null', 'NULL', NULL),
('set_action_rule', 'action', 'empty', $$''$$, NULL),
('set_action_rule', 'action', 'malformed', $$'Lead Won'$$, NULL),
('set_action_rule', 'action', 'huge', $$repeat('a', 64)$$, NULL),
('set_action_rule', 'points', 'null', 'NULL', NULL),
('set_action_rule', 'points', 'zero', '0', NULL),
('set_action_rule', 'points', 'negative', '-1', NULL),
('set_action_rule', 'points', 'huge', '9223372036854775807', NULL),
('set_action_rule', 'needs_approval', 'null', 'NULL', NULL),
('set_action_rule', 'cap_points', 'null', 'NULL', NULL),
('set_action_rule', 'cap_points', 'zero', '0', $$SELECT loyalty.set_action_rule('err_club', 'certification', 50, cap_points => 0, cap_period => 'month')$$),
('set_action_rule', 'cap_points', 'negative', '-1', $$SELECT loyalty.set_action_rule('err_club', 'certification', 50, cap_points => -1, cap_period => 'month')$$),
('set_action_rule', 'cap_points', 'huge', '9223372036854775807', $$SELECT loyalty.set_action_rule('err_club', 'certification', 50, cap_points => 9223372036854775807, cap_period => 'year')$$),
('set_action_rule', 'cap_points', 'alone', '500', NULL),
('set_action_rule', 'cap_period', 'null', 'NULL', NULL),
('set_action_rule', 'cap_period', 'alone', $$'month'$$, NULL),
('set_action_rule', 'cap_period', 'unknown', $$'week'$$, $$SELECT loyalty.set_action_rule('err_club', 'certification', 50, cap_points => 500, cap_period => 'week')$$),
('set_action_rule', 'valid_from', 'null', 'NULL', NULL),
('set_action_rule', 'valid_from', 'infinity', $$'infinity'$$, NULL),
('set_action_rule', 'valid_from', '-infinity', $$'-infinity'$$, NULL),
('set_action_rule', 'category', 'null', 'NULL', NULL),
('set_action_rule', 'category', 'valid', $$'training'$$, NULL),
('set_action_rule', 'category', 'empty', $$''$$, NULL),
('set_action_rule', 'category', 'unknown', $$'party'$$, NULL),
-- balance and tier
('balance', 'program', 'valid', $$'err_club'$$, NULL),
('balance', 'program', 'null', 'NULL', NULL),
('balance', 'program', 'unknown', $$'err_nope'$$, NULL),
('balance', 'account_key', 'null', 'NULL', NULL),
('balance', 'account_key', 'empty', $$''$$, NULL),
('balance', 'account_key', 'unknown', $$'no such customer'$$, NULL),
('balance', 'account_key', 'huge', $$repeat('k', 1025)$$, NULL),
('tier', 'program', 'valid', $$'err_club'$$, NULL),
('tier', 'program', 'null', 'NULL', NULL),
('tier', 'program', 'unknown', $$'err_nope'$$, NULL),
('tier', 'account_key', 'null', 'NULL', NULL),
('tier', 'account_key', 'empty', $$''$$, NULL),
('tier', 'account_key', 'huge', $$repeat('k', 1025)$$, NULL),
-- explain_points
('explain_points', 'source', 'valid', $$'err.invoice'$$, NULL),
('explain_points', 'source', 'null', 'NULL', NULL),
('explain_points', 'source', 'not_attached', $$'err.hdr'$$, NULL),
('explain_points', 'key', 'null', 'NULL', $$SELECT * FROM loyalty.explain_points('err.invoice', VARIADIC NULL::text[])$$),
('explain_points', 'key', 'null_element', 'NULL', $$SELECT * FROM loyalty.explain_points('err.invoice', NULL::text)$$),
('explain_points', 'key', 'empty', $$'{}'$$, $$SELECT * FROM loyalty.explain_points('err.invoice', VARIADIC '{}'::text[])$$),
('explain_points', 'key', 'too_many', $$'1', '2'$$, $$SELECT * FROM loyalty.explain_points('err.invoice', '1', '2')$$),
('explain_points', 'key', 'malformed', $$'one'$$, $$SELECT * FROM loyalty.explain_points('err.invoice', 'one')$$),
('explain_points', 'key', 'unknown', $$'999'$$, $$SELECT * FROM loyalty.explain_points('err.invoice', '999')$$),
('explain_points', 'key', 'own_type', '1::bigint', $$SELECT * FROM loyalty.explain_points('err.invoice', 1::bigint)$$),
('explain_points', 'key', 'own_type', '1', $$SELECT * FROM loyalty.explain_points('err.invoice', 1)$$),
('explain_points', 'key', 'own_type_null', 'NULL::int', $$SELECT * FROM loyalty.explain_points('err.invoice', NULL::int)$$),
('explain_points', 'key', 'own_type_too_many', $$1, 2$$, $$SELECT * FROM loyalty.explain_points('err.invoice', 1, 2)$$),
('explain_points', 'key', 'own_type_malformed', $$'2024-01-01'::date$$, $$SELECT * FROM loyalty.explain_points('err.invoice', '2024-01-01'::date)$$),
-- verify
('verify', 'program', 'valid', $$'err_club'$$, NULL),
('verify', 'program', 'null', 'NULL', NULL),
('verify', 'program', 'unknown', $$'err_nope'$$, NULL),
('verify', 'account', 'valid', $$'42'$$, NULL),
('verify', 'account', 'null', 'NULL', NULL),
('verify', 'account', 'unknown', $$'no such customer'$$, NULL),
('verify', 'since', 'valid', $$'2024-03-15'$$, NULL),
('verify', 'since', 'null', 'NULL', NULL),
('verify', 'since', 'infinity', $$'infinity'$$, NULL),
('verify', 'since', '-infinity', $$'-infinity'$$, NULL),
-- partner logins
('grant_partner', 'login', 'valid', $$'err_portal'$$, NULL),
('grant_partner', 'login', 'null', 'NULL', NULL),
('grant_partner', 'login', 'unknown', $$'err_nobody'$$, NULL),
('grant_partner', 'login', 'loyalty_role', $$'loyalty_operator'$$, NULL),
('grant_partner', 'program', 'null', 'NULL', NULL),
('grant_partner', 'program', 'unknown', $$'err_nope'$$, NULL),
('grant_partner', 'account_key', 'null', 'NULL', NULL),
('grant_partner', 'account_key', 'unknown', $$'no such customer'$$, NULL),
('grant_partner', 'member_id', 'null', 'NULL', NULL),
('grant_partner', 'member_id', 'unknown', $$'nobody'$$, NULL),
('revoke_partner', 'login', 'valid', $$'err_portal'$$, NULL),
('revoke_partner', 'login', 'null', 'NULL', NULL),
('revoke_partner', 'program', 'null', 'NULL', NULL),
('revoke_partner', 'program', 'unknown', $$'err_nope'$$, NULL),
-- set_roi_economics: NULL keeps the value set before
('set_roi_economics', 'program', 'null', 'NULL', NULL),
('set_roi_economics', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_roi_economics', 'cost_per_point', 'null', 'NULL', NULL),
('set_roi_economics', 'cost_per_point', 'negative', '-0.01', NULL),
('set_roi_economics', 'cost_per_point', 'nan', $$'NaN'$$, NULL),
('set_roi_economics', 'cost_per_point', 'infinity', $$'Infinity'$$, NULL),
('set_roi_economics', 'benefit_cost_per_account_month', 'null', 'NULL', NULL),
('set_roi_economics', 'benefit_cost_per_account_month', 'negative', '-1', NULL),
('set_roi_economics', 'benefit_cost_per_account_month', 'nan', $$'NaN'$$, NULL),
('set_roi_economics', 'benefit_cost_per_account_month', 'infinity', $$'Infinity'$$, NULL),
('set_roi_economics', 'default_margin_rate', 'null', 'NULL', NULL),
('set_roi_economics', 'default_margin_rate', 'valid', '-0.1', NULL),
('set_roi_economics', 'default_margin_rate', 'negative', '-1.5', NULL),
('set_roi_economics', 'default_margin_rate', 'huge', '25', NULL),
('set_roi_economics', 'default_margin_rate', 'nan', $$'NaN'$$, NULL),
('set_roi_economics', 'default_margin_rate', 'infinity', $$'Infinity'$$, NULL),
-- set_margin_rate: rate NULL removes the line's rate
('set_margin_rate', 'program', 'null', 'NULL', NULL),
('set_margin_rate', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_margin_rate', 'product_line', 'null', 'NULL', NULL),
('set_margin_rate', 'rate', 'null', 'NULL', NULL),
('set_margin_rate', 'rate', 'negative', '-2', NULL),
('set_margin_rate', 'rate', 'huge', '25', NULL),
('set_margin_rate', 'rate', 'nan', $$'NaN'$$, NULL),
('set_margin_rate', 'rate', 'infinity', $$'Infinity'$$, NULL),
-- assign_cohorts: any seed is a seed
('assign_cohorts', 'program', 'null', 'NULL', NULL),
('assign_cohorts', 'program', 'unknown', $$'err_nope'$$, NULL),
('assign_cohorts', 'pilot_fraction', 'null', 'NULL', NULL),
('assign_cohorts', 'pilot_fraction', 'zero', '0', NULL),
('assign_cohorts', 'pilot_fraction', 'negative', '-0.5', NULL),
('assign_cohorts', 'pilot_fraction', 'huge', '1', NULL),
('assign_cohorts', 'pilot_fraction', 'nan', $$'NaN'$$, NULL),
('assign_cohorts', 'pilot_fraction', 'infinity', $$'Infinity'$$, NULL),
('assign_cohorts', 'seed', 'null', 'NULL', NULL),
('assign_cohorts', 'seed', 'zero', '0', NULL),
('assign_cohorts', 'seed', 'negative', '-1', NULL),
('assign_cohorts', 'seed', 'huge', '9223372036854775807', NULL),
('assign_cohorts', 'pre', 'null', 'NULL', NULL),
('assign_cohorts', 'pre', 'empty', $$'empty'$$, NULL),
('assign_cohorts', 'pre', 'infinity', $$'[2024-01-01,)'$$, NULL),
('assign_cohorts', 'spend_bands', 'null', 'NULL', NULL),
('assign_cohorts', 'spend_bands', 'zero', '0', NULL),
('assign_cohorts', 'spend_bands', 'huge', '101', NULL),
('assign_cohorts', 'reassign', 'null', 'NULL', NULL),
-- attachment_facts, sales
('attachment_facts', 'program', 'null', 'NULL', NULL),
('attachment_facts', 'program', 'unknown', $$'err_nope'$$, NULL),
('sales', 'program', 'null', 'NULL', NULL),
('sales', 'program', 'unknown', $$'err_nope'$$, NULL),
('sales', 'during', 'null', 'NULL', NULL),
('sales', 'during', 'empty', $$'empty'$$, NULL),
-- roi
('roi', 'program', 'null', 'NULL', NULL),
('roi', 'program', 'unknown', $$'err_nope'$$, NULL),
('roi', 'pre', 'null', 'NULL', NULL),
('roi', 'pre', 'empty', $$'empty'$$, NULL),
('roi', 'pre', 'infinity', $$'[2024-01-01,)'$$, NULL),
('roi', 'pre', 'overlapping', $$'[2024-01-01,2024-08-01)'$$, NULL),
('roi', 'post', 'null', 'NULL', NULL),
('roi', 'post', 'infinity', $$'(,2025-01-01)'$$, NULL),
('roi', 'benefit_cost', 'null', 'NULL', NULL),
('roi', 'benefit_cost', 'negative', '-1', NULL),
('roi', 'benefit_cost', 'nan', $$'NaN'$$, NULL),
('roi', 'benefit_cost', 'infinity', $$'Infinity'$$, NULL),
('roi', 'costs_until', 'null', 'NULL', NULL),
('roi', 'costs_until', 'early', $$'2024-01-01'$$, NULL),
('roi', 'costs_until', 'infinity', $$'infinity'$$, NULL),

-- balance and tier as of a date
('balance', 'as_of', 'valid', $$'2024-03-31'$$, NULL),
('balance', 'as_of', 'null', 'NULL::date', NULL),
('balance', 'as_of', 'infinity', $$'infinity'::date$$, NULL),
('tier', 'as_of', 'valid', $$'2024-03-31'$$, NULL),
('tier', 'as_of', 'null', 'NULL::date', NULL),
('tier', 'as_of', 'infinity', $$'infinity'::date$$, NULL),
-- settlement
('settle', 'program', 'valid', $$'err_club'$$, NULL),
('settle', 'program', 'null', 'NULL', NULL),
('settle', 'program', 'unknown', $$'err_nope'$$, NULL),
('settle', 'period_end', 'null', 'NULL', NULL),
('settle', 'period_end', 'infinity', $$'infinity'$$, NULL),
('settle', 'period_end', 'not_a_period_end', $$'2024-03-30'$$, NULL),
('settle', 'period_end', 'future', $$'2999-12-31'$$, NULL),
('settle_due', 'program', 'valid', $$'err_club'$$, NULL),
('settle_due', 'program', 'null', 'NULL', NULL),
('settle_due', 'program', 'unknown', $$'err_nope'$$, NULL),
('schedule_settlement', 'program', 'valid', $$'err_club'$$, NULL),
('schedule_settlement', 'program', 'null', 'NULL', NULL),
('schedule_settlement', 'program', 'unknown', $$'err_nope'$$, NULL),
('schedule_settlement', 'cron', 'null', 'NULL', NULL),
('unschedule_settlement', 'program', 'null', 'NULL', NULL),
('unschedule_settlement', 'program', 'unknown', $$'err_nope'$$, NULL),
-- tier rules
('set_tier_rules', 'program', 'valid', $$'err_club'$$, NULL),
('set_tier_rules', 'program', 'null', 'NULL', NULL),
('set_tier_rules', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_tier_rules', 'basis', 'null', 'NULL', NULL),
('set_tier_rules', 'basis', 'unknown', $$'revenue'$$, NULL),
('set_tier_rules', 'basis', 'action_alone', $$'action'$$, NULL),
('set_tier_rules', 'action', 'null', 'NULL', NULL),
('set_tier_rules', 'action', 'empty', $$''$$, $$SELECT loyalty.set_tier_rules('err_club', basis => 'action', action => '')$$),
('set_tier_rules', 'action', 'without_basis', $$'certification'$$, NULL),
('set_tier_rules', 'grace', 'null', 'NULL', NULL),
('set_tier_rules', 'grace', 'unknown', $$'lenient'$$, NULL),
('set_tier_rules', 'grace_value', 'null', 'NULL', $$SELECT loyalty.set_tier_rules('err_club', grace => 'margin', grace_value => NULL)$$),
('set_tier_rules', 'grace_value', 'negative', '-0.1', $$SELECT loyalty.set_tier_rules('err_club', grace => 'margin', grace_value => -0.1)$$),
('set_tier_rules', 'grace_value', 'nan', $$'NaN'$$, $$SELECT loyalty.set_tier_rules('err_club', grace => 'periods', grace_value => 'NaN')$$),
('set_tier_rules', 'grace_value', 'infinity', $$'Infinity'$$, $$SELECT loyalty.set_tier_rules('err_club', grace => 'periods', grace_value => 'Infinity')$$),
('set_tier_rules', 'grace_value', 'alone', '2', NULL),
('set_tier_requirement', 'program', 'null', 'NULL', NULL),
('set_tier_requirement', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_tier_requirement', 'tier', 'null', 'NULL', NULL),
('set_tier_requirement', 'tier', 'unknown', $$'Bronze'$$, NULL),
('set_tier_requirement', 'action', 'null', 'NULL', NULL),
('set_tier_requirement', 'action', 'empty', $$''$$, NULL),
('set_tier_requirement', 'min_count', 'null', 'NULL', NULL),
('set_tier_requirement', 'min_count', 'zero', '0', NULL),
('set_tier_requirement', 'min_count', 'negative', '-1', NULL),
('set_tier_requirement', 'min_count', 'huge', '9223372036854775807', NULL),
-- benefits
('set_benefit', 'program', 'valid', $$'err_club'$$, NULL),
('set_benefit', 'program', 'null', 'NULL', NULL),
('set_benefit', 'program', 'unknown', $$'err_nope'$$, NULL),
('set_benefit', 'tier', 'null', 'NULL', NULL),
('set_benefit', 'tier', 'empty', $$''$$, NULL),
('set_benefit', 'benefit', 'null', 'NULL', NULL),
('set_benefit', 'benefit', 'malformed', $$'Payment Terms'$$, NULL),
('set_benefit', 'value', 'null', 'NULL', NULL),
('set_benefit', 'value', 'malformed', $$'{"days": 30}'$$, NULL),
('set_benefit', 'value', 'wrong_type', $$'"thirty"'$$, NULL),
('set_benefit', 'value', 'fraction', $$'30.5'$$, NULL),
('grant_tier', 'program', 'valid', $$'err_club'$$, NULL),
('grant_tier', 'program', 'null', 'NULL', NULL),
('grant_tier', 'program', 'unknown', $$'err_nope'$$, NULL),
('grant_tier', 'account_key', 'null', 'NULL', NULL),
('grant_tier', 'account_key', 'unknown', $$'no such customer'$$, NULL),
('grant_tier', 'tier', 'null', 'NULL', NULL),
('grant_tier', 'tier', 'unknown', $$'Bronze'$$, NULL),
('grant_tier', 'reason', 'null', 'NULL', NULL),
('revoke_tier', 'program', 'null', 'NULL', NULL),
('revoke_tier', 'program', 'unknown', $$'err_nope'$$, NULL),
('revoke_tier', 'account_key', 'null', 'NULL', NULL),
('revoke_tier', 'account_key', 'not_granted', $$'42'$$, NULL),
('benefits', 'program', 'valid', $$'err_club'$$, NULL),
('benefits', 'program', 'null', 'NULL', NULL),
('benefits', 'program', 'unknown', $$'err_nope'$$, NULL),
('benefits', 'account_key', 'null', 'NULL', NULL),
('benefits', 'account_key', 'unknown', $$'no such customer'$$, NULL),
-- statement
('statement', 'program', 'valid', $$'err_club'$$, NULL),
('statement', 'program', 'null', 'NULL', NULL),
('statement', 'program', 'unknown', $$'err_nope'$$, NULL),
('statement', 'account_key', 'null', 'NULL', NULL),
('statement', 'account_key', 'unknown', $$'no such customer'$$, NULL),
('statement', 'period_end', 'null', 'NULL', NULL),
('statement', 'period_end', 'infinity', $$'infinity'$$, NULL),
('statement', 'period_end', 'not_a_period_end', $$'2024-03-30'$$, NULL),
-- expiring_points
('expiring_points', 'program', 'valid', $$'err_club'$$, NULL),
('expiring_points', 'program', 'null', 'NULL', NULL),
('expiring_points', 'program', 'unknown', $$'err_nope'$$, NULL),
('expiring_points', 'account', 'valid', $$'42'$$, NULL),
('expiring_points', 'account', 'null', 'NULL', NULL),
('expiring_points', 'account', 'unknown', $$'no such customer'$$, NULL),
('expiring_points', 'as_of', 'null', 'NULL', NULL),
('expiring_points', 'as_of', 'infinity', $$'infinity'$$, NULL),
('expiring_points', 'as_of', '-infinity', $$'-infinity'$$, NULL),
-- accrue_rebates
('accrue_rebates', 'program', 'valid', $$'err_club'$$, NULL),
('accrue_rebates', 'program', 'null', 'NULL', NULL),
('accrue_rebates', 'program', 'unknown', $$'err_nope'$$, NULL),
('accrue_rebates', 'as_of', 'null', 'NULL', NULL),
('accrue_rebates', 'as_of', 'infinity', $$'infinity'$$, NULL),
('accrue_rebates', 'as_of', '-infinity', $$'-infinity'$$, NULL),
-- create_rebate_agreement
('create_rebate_agreement', 'program', 'valid', $$'err_club'$$, NULL),
('create_rebate_agreement', 'program', 'null', 'NULL', NULL),
('create_rebate_agreement', 'program', 'unknown', $$'err_nope'$$, NULL),
('create_rebate_agreement', 'agreement_id', 'null', 'NULL', NULL),
('create_rebate_agreement', 'agreement_id', 'empty', $$''$$, NULL),
('create_rebate_agreement', 'agreement_id', 'malformed', $$'ERR-1'$$, NULL),
('create_rebate_agreement', 'agreement_id', 'huge', $$repeat('A', 41)$$, NULL),
('create_rebate_agreement', 'agreement_id', 'duplicate', $$'ERR0'$$, NULL),
('create_rebate_agreement', 'schedule', 'null', 'NULL', NULL),
('create_rebate_agreement', 'schedule', 'malformed', $$'retro 5%'$$, NULL),
('create_rebate_agreement', 'account_key', 'valid', $$'42'$$, NULL),
('create_rebate_agreement', 'account_key', 'null', 'NULL', NULL),
('create_rebate_agreement', 'account_key', 'unknown', $$'no such customer'$$, NULL),
('create_rebate_agreement', 'account_key', 'with_segment', $$'42'$$,
 $$SELECT loyalty.create_rebate_agreement('err_club', 'ERR1', 'retro: 0:1%', account_key => '42', region => 'EU')$$),
('create_rebate_agreement', 'cooperation_model', 'valid', $$'distributor'$$, NULL),
('create_rebate_agreement', 'cooperation_model', 'null', 'NULL', NULL),
('create_rebate_agreement', 'cooperation_model', 'unknown', $$'wholesaler'$$, NULL),
('create_rebate_agreement', 'region', 'null', 'NULL', NULL),
('create_rebate_agreement', 'region', 'empty', $$''$$, NULL),
('create_rebate_agreement', 'industry', 'null', 'NULL', NULL),
('create_rebate_agreement', 'industry', 'empty', $$''$$, NULL),
('create_rebate_agreement', 'product_lines', 'null', 'NULL', NULL),
('create_rebate_agreement', 'product_lines', 'unmapped', $$'{SOLAR}'$$, NULL),
('create_rebate_agreement', 'product_lines', 'empty', $$'{}'$$, NULL),
('create_rebate_agreement', 'product_lines', 'null element', $$'{SOLAR,NULL}'$$, NULL),
('create_rebate_agreement', 'period', 'null', 'NULL', NULL),
('create_rebate_agreement', 'period', 'unknown', $$'week'$$, NULL),
('create_rebate_agreement', 'valid_from', 'null', 'NULL', NULL),
('create_rebate_agreement', 'valid_from', 'infinity', $$'infinity'$$, NULL),
('create_rebate_agreement', 'valid_from', '-infinity', $$'-infinity'$$, NULL),
('create_rebate_agreement', 'valid_until', 'null', 'NULL', NULL),
('create_rebate_agreement', 'valid_until', 'infinity', $$'infinity'$$, NULL),
('create_rebate_agreement', 'valid_until', 'before', $$'2000-01-01'$$, NULL),
-- end_rebate_agreement
('end_rebate_agreement', 'program', 'valid', $$'err_club'$$, NULL),
('end_rebate_agreement', 'program', 'null', 'NULL', NULL),
('end_rebate_agreement', 'program', 'unknown', $$'err_nope'$$, NULL),
('end_rebate_agreement', 'agreement_id', 'null', 'NULL', NULL),
('end_rebate_agreement', 'agreement_id', 'unknown', $$'NOPE'$$, NULL),
('end_rebate_agreement', 'valid_until', 'null', 'NULL', NULL),
('end_rebate_agreement', 'valid_until', 'infinity', $$'infinity'$$, NULL),
('end_rebate_agreement', 'valid_until', '-infinity', $$'-infinity'$$, NULL),
('end_rebate_agreement', 'valid_until', 'before', $$'2000-01-01'$$, NULL);

-- Coverage: every parameter of every public function (the extension's
-- functions granted to a loyalty role, not to PUBLIC; not the internal
-- helpers that functions running as their caller need) has a NULL case, and
-- the cases its type calls for.  A new parameter without them shows here.
CREATE TEMP VIEW params AS
SELECT p.proname::text AS fn, a.name AS param, format_type(a.type, NULL) AS type
FROM pg_proc p
CROSS JOIN LATERAL unnest(p.proargnames, coalesce(p.proallargtypes, p.proargtypes::oid[]),
                          coalesce(p.proargmodes, array_fill('i'::"char", ARRAY[p.pronargs])))
                   AS a(name, type, mode)
WHERE p.pronamespace = 'loyalty'::regnamespace AND a.mode IN ('i', 'v')
  AND has_function_privilege('loyalty_admin', p.oid, 'EXECUTE')
  AND NOT has_function_privilege('public', p.oid, 'EXECUTE')
  AND p.proname !~ '^_';
CREATE TEMP TABLE needed (type text, kind text);
INSERT INTO needed VALUES ('numeric', 'negative'), ('numeric', 'nan'), ('numeric', 'infinity'),
                          ('bigint', 'zero'), ('bigint', 'negative'), ('bigint', 'huge'),
                          ('date', 'infinity'), ('interval', 'zero'), ('interval', 'negative'),
                          ('text', 'null'), ('numeric', 'null'), ('date', 'null'), ('interval', 'null'),
                          ('bigint', 'null'), ('jsonb', 'null'), ('jsonb', 'malformed'),
                          ('regclass', 'null'), ('boolean', 'null'), ('text[]', 'null'),
                          ('loyalty.tier_ladder', 'malformed'), ('loyalty.rebate_schedule', 'malformed');
SELECT DISTINCT p.fn, p.param, p.type, n.kind AS missing_case
FROM params p JOIN needed n ON n.type = p.type
WHERE NOT EXISTS (SELECT FROM cases c WHERE c.fn = p.fn AND c.param = p.param AND c.kind = n.kind)
ORDER BY 1, 2, 4;
-- ... and every case names a parameter that exists.
SELECT c.fn, c.param FROM cases c
WHERE NOT EXISTS (SELECT FROM params p WHERE p.fn = c.fn AND p.param = c.param);

-- Today in the program's calendar, and a message with it (and the day 30
-- days later) masked: the expected output must not depend on the day the
-- suite runs.
CREATE FUNCTION pg_temp.program_today() RETURNS date LANGUAGE sql
AS $$ SELECT (now() AT TIME ZONE p.time_zone)::date FROM loyalty.program p WHERE p.name = 'err_club' $$;
CREATE FUNCTION pg_temp.mask_today(t text) RETURNS text LANGUAGE sql
AS $$ SELECT replace(replace(t, (pg_temp.program_today() + 30)::text, '<today + 30>'), pg_temp.program_today()::text, '<today>') $$;

-- The run.
CREATE TEMP TABLE results (n int, fn text, param text, kind text, value text, sqlstate text,
                           message text, detail text, hint text, context text, constraint_name text);
DO $run$
DECLARE
    c record;
    call text;
    accepted boolean;
    st text; msg text; det text; hnt text; ctx text; con text;
BEGIN
    FOR c IN SELECT * FROM cases ORDER BY n LOOP
        call := coalesce(c.call, format('SELECT loyalty.%I(%s)', c.fn,
            (SELECT string_agg(CASE WHEN x.value LIKE 'VARIADIC %'
                                    THEN format('VARIADIC %I => %s', x.param, substr(x.value, 10))
                                    ELSE format('%I => %s', x.param, x.value) END, ', ' ORDER BY x.o)
             FROM (SELECT b.param, CASE WHEN b.param = c.param THEN c.value ELSE b.value END AS value, 0 AS o
                   FROM base b WHERE b.fn = c.fn
                   UNION ALL
                   SELECT c.param, c.value, 1
                   WHERE NOT EXISTS (SELECT FROM base b WHERE b.fn = c.fn AND b.param = c.param)) x)));
        accepted := false;
        BEGIN
            EXECUTE call;
            accepted := true;
            RAISE EXCEPTION 'roll back';
        EXCEPTION WHEN OTHERS THEN
            IF accepted THEN
                INSERT INTO results VALUES (c.n, c.fn, c.param, c.kind, c.value, '(accepted)');
            ELSE
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                                        hnt = PG_EXCEPTION_HINT, ctx = PG_EXCEPTION_CONTEXT, con = CONSTRAINT_NAME;
                -- the functions the error went through, without the run's own
                -- EXECUTE (the call itself and this block)
                ctx := (SELECT string_agg(DISTINCT coalesce(m[1], m[2]), ', ')
                        FROM regexp_split_to_table(ctx, E'\n') AS l(line),
                             regexp_matches(l.line, '(loyalty\.\w+)\(|SQL function "(\w+)"', 'g') AS m
                        WHERE l.line <> format('SQL statement "%s"', call)
                          AND l.line NOT LIKE 'PL/pgSQL function inline_code_block%');
                INSERT INTO results VALUES (c.n, c.fn, c.param, c.kind, c.value, st, pg_temp.mask_today(msg),
                                            pg_temp.mask_today(det), hnt, ctx, con);
            END IF;
        END;
    END LOOP;
END
$run$;

\pset format unaligned
\pset fieldsep ' | '
SELECT fn, param, kind, value, sqlstate, message, detail, hint, context FROM results ORDER BY n;
\pset format aligned

-- The checks: each query must return no row.
-- An error without a specific SQLSTATE: not a raw constraint violation
-- (class 23), not an internal error (XX), not the generic data exception.
SELECT fn, param, kind, sqlstate, message FROM results
WHERE sqlstate ~ '^(23|XX)' OR sqlstate IN ('22000', 'P0001') OR constraint_name <> '';
-- An error that does not say which parameter (or type) is wrong, or has no
-- DETAIL or no HINT.  (PostgreSQL reads a table or role name before the
-- call: an unknown one fails there, with its own error and no loyalty
-- function in the context.)
SELECT r.fn, r.param, r.kind, r.message FROM results r
WHERE r.sqlstate <> '(accepted)' AND NOT (r.sqlstate IN ('42P01', '42704') AND r.context IS NULL)
  AND (coalesce(r.detail, '') = '' OR coalesce(r.hint, '') = ''
       OR (position(r.param IN r.message || ' ' || r.detail) = 0
           AND NOT EXISTS (SELECT FROM params p WHERE p.fn = r.fn AND p.param = r.param
                             AND position(replace(p.type, 'loyalty.', '') IN r.message) > 0)));
-- A CONTEXT naming an internal helper, or another public function than the one called.
SELECT fn, param, kind, context FROM results
WHERE context ~ 'loyalty\._' OR context ~ '(^|, )_' OR replace(context, 'loyalty.', '') NOT IN (fn);

--
-- The operations, granted to loyalty_operator (so not in the coverage above,
-- which takes the functions an admin may call): redemption, awards, MDF
-- claims.  Their SQLSTATEs:
--   LY001  the balance does not cover a debit: the account's points, the
--          member's points, or the MDF wallet (less pending claims); nothing
--          is written
--   LY002  the reward cannot be redeemed: not active, outside its validity
--          window, tier too low, out of stock, over its per-account or
--          per-period limit; nothing is written
--   P0002  no_data_found: the account is not enrolled, the member is not the
--          account's, no redemption / award / claim has that id
--   42704  undefined_object: unknown program, reward or action
--   22023, 22004  a bad or NULL argument
--   55000  object_not_in_prerequisite_state: cancelled twice, or a decided
--          award / claim decided the other way
--   42710  duplicate_object: a reference reused for another event
--   42501  insufficient_privilege, "permission denied for this account": a
--          partner's login redeeming for another account, another member,
--          or a program, account or member that does not exist (the same
--          error for all, checked before anything is read); the same for
--          the reading functions (balance, tier, statement, benefits,
--          expiring_points) on any account but its own (sql/partner_rewards.sql)
--
SELECT loyalty.set_reward('err_club', 'ERR-SEAT', 'Seat', 10, stock => 1);
SELECT loyalty.set_reward('err_club', 'ERR-GOLD', 'Gold lounge', 10, min_tier => 'Gold');
SELECT loyalty.set_reward('err_club', 'ERR-BIG', 'Yacht', 1000000);
SELECT loyalty.set_reward('err_club', 'ERR-OLD', 'Old', 10, valid_until => '2020-01-01');
SELECT loyalty.set_action_rule('err_club', 'certification', 50);
SELECT loyalty.enroll('err_club', '43');
SELECT loyalty.award('err_club', '42', 'certification', reference => 'crm-1') IS NOT NULL AS awarded;
CREATE TEMP TABLE op_cases (n serial, what text, call text);
INSERT INTO op_cases (what, call) VALUES
('redeem: points', $$SELECT loyalty.redeem('err_club', '42', 'ERR-BIG')$$),
('redeem: no points at all', $$SELECT loyalty.redeem('err_club', '43', 'ERR-SEAT')$$),
('redeem: stock', $$SELECT loyalty.redeem('err_club', '42', 'ERR-SEAT', 2)$$),
('redeem: window', $$SELECT loyalty.redeem('err_club', '42', 'ERR-OLD')$$),
('redeem: tier', $$SELECT loyalty.redeem('err_club', '42', 'ERR-GOLD')$$),
('redeem: unknown reward', $$SELECT loyalty.redeem('err_club', '42', 'NOPE')$$),
('redeem: unknown account', $$SELECT loyalty.redeem('err_club', 'nobody', 'ERR-SEAT')$$),
('redeem: unknown member', $$SELECT loyalty.redeem('err_club', '42', 'ERR-SEAT', member => 'x')$$),
('redeem: quantity 0', $$SELECT loyalty.redeem('err_club', '42', 'ERR-SEAT', 0)$$),
('redeem: quantity NULL', $$SELECT loyalty.redeem('err_club', '42', 'ERR-SEAT', NULL)$$),
('redeem: huge quantity', $$SELECT loyalty.redeem('err_club', '42', 'ERR-SEAT', 2147483647)$$),
('redeem: program NULL', $$SELECT loyalty.redeem(NULL, '42', 'ERR-SEAT')$$),
('cancel_redemption: NULL', $$SELECT loyalty.cancel_redemption(NULL)$$),
('cancel_redemption: unknown', $$SELECT loyalty.cancel_redemption(gen_random_uuid())$$),
('award: unknown action', $$SELECT loyalty.award('err_club', '42', 'nope')$$),
('award: future', $$SELECT loyalty.award('err_club', '42', 'certification', occurred_on => pg_temp.program_today() + 30)$$),
('award: infinity', $$SELECT loyalty.award('err_club', '42', 'certification', occurred_on => '-infinity')$$),
('award: quantity 0', $$SELECT loyalty.award('err_club', '42', 'certification', quantity => 0)$$),
('award: empty reference', $$SELECT loyalty.award('err_club', '42', 'certification', reference => '')$$),
('award: reference reused', $$SELECT loyalty.award('err_club', '42', 'certification', reference => 'crm-1', quantity => 2)$$),
('award: unknown account', $$SELECT loyalty.award('err_club', 'nobody', 'certification')$$),
('approve_award: NULL', $$SELECT loyalty.approve_award(NULL)$$),
('approve_award: unknown', $$SELECT loyalty.approve_award(gen_random_uuid())$$),
('reject_award: approved', $$SELECT loyalty.reject_award(award_id) FROM loyalty.award WHERE reference = 'crm-1'$$),
('claim_mdf: empty wallet', $$SELECT loyalty.claim_mdf('err_club', '42', 10, 'booth')$$),
('claim_mdf: amount NaN', $$SELECT loyalty.claim_mdf('err_club', '42', 'NaN', 'booth')$$),
('claim_mdf: amount in tenths of cents', $$SELECT loyalty.claim_mdf('err_club', '42', 10.001, 'booth')$$),
('claim_mdf: amount negative', $$SELECT loyalty.claim_mdf('err_club', '42', -10, 'booth')$$),
('claim_mdf: no purpose', $$SELECT loyalty.claim_mdf('err_club', '42', 10, ' ')$$),
('approve_mdf_claim: unknown', $$SELECT loyalty.approve_mdf_claim(gen_random_uuid())$$),
('reject_mdf_claim: NULL', $$SELECT loyalty.reject_mdf_claim(NULL)$$);
CREATE TEMP TABLE op_results (n int, what text, sqlstate text, message text, has_detail boolean, has_hint boolean, context text);
DO $run$
DECLARE
    c record;
    st text; msg text; det text; hnt text; ctx text;
BEGIN
    FOR c IN SELECT * FROM op_cases ORDER BY n LOOP
        BEGIN
            EXECUTE c.call;
            INSERT INTO op_results VALUES (c.n, c.what, '(accepted)');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                                    hnt = PG_EXCEPTION_HINT, ctx = PG_EXCEPTION_CONTEXT;
            ctx := (SELECT string_agg(DISTINCT m[1], ', ')
                    FROM regexp_matches(ctx, '(loyalty\.\w+)\(', 'g') AS m);
            INSERT INTO op_results VALUES (c.n, c.what, st,
                regexp_replace(pg_temp.mask_today(msg), '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
                coalesce(det, '') <> '', coalesce(hnt, '') <> '', ctx);
        END;
    END LOOP;
END
$run$;
\pset format unaligned
SELECT what, sqlstate, message, has_detail, has_hint, context FROM op_results ORDER BY n;
\pset format aligned
-- nothing was posted by the refusals: the ledger holds the one award
SELECT kind, points FROM loyalty.ledger l JOIN loyalty.program p USING (program_id) WHERE p.name = 'err_club' AND kind <> 'earn';
SELECT count(*) AS redemptions FROM loyalty.redemption d JOIN loyalty.program p USING (program_id) WHERE p.name = 'err_club';
SELECT * FROM loyalty.verify('err_club');

--
-- Backfill's tier replay and settlement (sql/backfill_tiers.sql shows them
-- in full).  SQLSTATEs:
--   55000  object_not_in_prerequisite_state: backfill from a date that a
--          settlement run covers (its tier changes are settlement's);
--          settle() of a period whose tiers a backfill replayed
--
CREATE TABLE err.replay_sale (id int PRIMARY KEY, customer text, amount numeric, sale_date date);
INSERT INTO err.replay_sale VALUES (1, 'R', 7000, '2024-02-01'), (2, 'R', 100, '2024-05-01');
SELECT loyalty.create_program('err_replay', ladder => 'Silver:5000') > 0 AS created;
SELECT loyalty.attach('err.replay_sale', 'err_replay', account_column => 'customer', amount_column => 'amount',
                      date_column => 'sale_date') > 0 AS attached;
SELECT loyalty.enroll('err_replay', 'R');
SET client_min_messages = warning;
SELECT (loyalty.settle('err_replay', '2024-03-31')).accounts;
CREATE TEMP TABLE replay_cases (n serial, what text, call text);
INSERT INTO replay_cases (what, call) VALUES
('backfill: settled after since', $$SELECT loyalty.backfill('err.replay_sale', 'err_replay', '2024-01-01')$$),
('backfill: after the settled period', $$SELECT loyalty.backfill('err.replay_sale', 'err_replay', '2024-04-01')$$),
('settle: a replayed period', $$SELECT loyalty.settle('err_replay', '2024-06-30')$$);
CREATE TEMP TABLE replay_results (n int, what text, sqlstate text, message text, has_detail boolean, has_hint boolean);
DO $run$
DECLARE
    c record;
    st text; msg text; det text; hnt text;
BEGIN
    FOR c IN SELECT * FROM replay_cases ORDER BY n LOOP
        BEGIN
            EXECUTE c.call;
            INSERT INTO replay_results VALUES (c.n, c.what, '(accepted)');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                                    hnt = PG_EXCEPTION_HINT;
            INSERT INTO replay_results VALUES (c.n, c.what, st, msg, coalesce(det, '') <> '', coalesce(hnt, '') <> '');
        END;
    END LOOP;
END
$run$;
RESET client_min_messages;
\pset format unaligned
SELECT what, sqlstate, message, has_detail, has_hint FROM replay_results ORDER BY n;
\pset format aligned
