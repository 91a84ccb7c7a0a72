-- Mutation fuzzer for every parser of loyalty's SQL surface, run inside the
-- server: the tier_ladder and rebate_schedule literals, the multiplier maps
-- of add_rule(), attach()'s mapping expressions, and the text parameters of
-- create_program(), add_rule(), enroll(), balance(), tier(), verify() and
-- explain_points().  From a few valid seeds per target, a deterministic
-- generator (hash-based: the same inputs on every machine) derives mutated
-- inputs: characters deleted, duplicated or replaced, grammar tokens and
-- hostile fragments inserted (';', sub-selects, volatile and set-returning
-- calls, casts to float, comments, quotes, deep nesting, NaN, huge digit
-- runs, non-ASCII), truncations and splices of two seeds.
--
-- Each input runs in a subtransaction of its own.  It passes when it is
-- accepted (a literal must then round-trip through its text form) or
-- rejected with a clean error: a SQLSTATE outside the classes XX (internal
-- error), 58 (system error) and P0 (a PL/pgSQL RAISE without a code), and a
-- message.  Anything else is listed in fuzz.unclean.  A crash ends the
-- session: the caller (test/t/015_fuzz.pl, scripts/test-valgrind.sh) sees it.
--
--   psql -v scale=1 -f test/fuzz/fuzz.sql     (scale 1: 1,010,000 inputs)
--
-- Prints one line per target and a last line "fuzz: N inputs, N unclean".
\set ON_ERROR_STOP on
\set QUIET on
\if :{?scale}
\else
\set scale 1
\endif
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS fuzz CASCADE;
CREATE SCHEMA fuzz;
CREATE TABLE fuzz.unclean (target text, input text, sqlstate text, message text);
CREATE TABLE fuzz.tally (target text PRIMARY KEY, inputs bigint, accepted bigint, rejected bigint, unclean bigint,
                         rejected_by jsonb);

-- n-th pseudo-random integer in [0, m) of stream s: hashint8extended is
-- defined on the value, not on its bytes in memory, so it is the same
-- everywhere.
CREATE FUNCTION fuzz.rnd(s bigint, n bigint, m integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT (abs(hashint8extended(n, s) % m))::integer $$;

CREATE FUNCTION fuzz.mutate(seeds text[], tokens text[], i bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := seeds[1 + fuzz.rnd(1, i, array_length(seeds, 1))];
    ops integer := fuzz.rnd(2, i, 4);   -- 0: the seed itself (accepted path)
    k integer;
    p integer;
    q integer;
    h bigint;
BEGIN
    FOR k IN 1 .. ops LOOP
        h := hashint8extended(i, k);
        p := fuzz.rnd(3, h, length(s) + 1);
        CASE fuzz.rnd(4, h, 8)
        WHEN 0 THEN s := overlay(s placing '' from p + 1 for 1 + fuzz.rnd(5, h, 3));
        WHEN 1, 2 THEN s := overlay(s placing tokens[1 + fuzz.rnd(6, h, array_length(tokens, 1))] from p + 1 for 0);
        WHEN 3 THEN q := 1 + fuzz.rnd(7, h, 8);
                    s := overlay(s placing substr(s, p + 1, q) || substr(s, p + 1, q) from p + 1 for q);
        WHEN 4 THEN s := overlay(s placing chr(32 + fuzz.rnd(8, h, 95)) from p + 1 for 1);
        WHEN 5 THEN s := left(s, p);
        WHEN 6 THEN s := left(s, p) || substr(seeds[1 + fuzz.rnd(9, h, array_length(seeds, 1))],
                                              1 + fuzz.rnd(10, h, 40));
        ELSE s := overlay(s placing repeat(tokens[1 + fuzz.rnd(11, h, array_length(tokens, 1))], 1 + fuzz.rnd(12, h, 200))
                          from p + 1 for 0);
        END CASE;
    END LOOP;
    RETURN s;
END
$$;

-- Runs `count` mutated inputs through `stmt` (a format() string whose %L is
-- the input).  A statement that succeeds may raise SQLSTATE FZ000 to roll
-- back what it wrote: that counts as accepted.  check (optional) is run on an
-- accepted input and must return true.
CREATE FUNCTION fuzz.run(target text, seeds text[], tokens text[], count bigint, stmt text, check_stmt text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i bigint;
    x text;
    ok boolean;
    st text;
    msg text;
    n_acc bigint := 0;
    n_rej bigint := 0;
    n_bad bigint := 0;
    codes jsonb := '{}';
BEGIN
    FOR i IN 1 .. count LOOP
        x := fuzz.mutate(seeds, tokens, hashtextextended(target, i));
        BEGIN
            EXECUTE format(stmt, x);
            ok := true;
            IF check_stmt IS NOT NULL THEN
                EXECUTE format(check_stmt, x) INTO ok;
            END IF;
            IF ok IS TRUE THEN
                n_acc := n_acc + 1;
            ELSE
                n_bad := n_bad + 1;
                INSERT INTO fuzz.unclean VALUES (target, x, 'check', 'accepted, but the check failed');
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            IF st = 'FZ000' THEN
                n_acc := n_acc + 1;
            ELSIF left(st, 2) IN ('XX', '58', 'P0') OR coalesce(msg, '') = '' THEN
                n_bad := n_bad + 1;
                INSERT INTO fuzz.unclean VALUES (target, x, st, msg);
            ELSE
                n_rej := n_rej + 1;
                codes := jsonb_set(codes, ARRAY[st], to_jsonb(coalesce((codes ->> st)::bigint, 0) + 1));
            END IF;
        END;
    END LOOP;
    INSERT INTO fuzz.tally VALUES (target, count, n_acc, n_rej, n_bad, codes);
END
$$;

-- What the statement targets work on: a program, a rule, an ERP-like table.
SELECT loyalty.create_program('fuzz', 'EUR', 'Member:0, Silver:1000, Gold:5000') IS NOT NULL AS program;
CREATE TABLE fuzz.sale (id bigint PRIMARY KEY, cust text NOT NULL, d date NOT NULL, amount numeric(12,2),
                        qty integer, price numeric(12,4), disc numeric(4,3), kind text, line text, "we.ird" numeric);
INSERT INTO fuzz.sale VALUES (1, 'C1', '2026-01-15', 100, 2, 50, 0, 'INV', 'SOLAR', 1);
-- the mapping expressions are tried on a table of its own, not attached yet
CREATE TABLE fuzz.sale_unattached (LIKE fuzz.sale INCLUDING ALL);
SELECT loyalty.attach('fuzz.sale', 'fuzz', account_column => 'cust', date_column => 'd', amount_column => 'amount') > 0 AS attached;

\set n_type '300000 * :scale'
\set n_map '200000 * :scale'
\set n_expr '60000 * :scale'
\set n_param '150000 * :scale'
\set n_key '100000 * :scale'

SELECT fuzz.run('tier_ladder',
    ARRAY['Member:0, Silver:50000, Gold:250000, Platinum:1000000', '"Gold, EU":0, "The ""Best""":99999999999999.99',
          'Élite:0.5, Золото:7, 日本:100', 'A:0', '  Member :0 ,Silver: 050000.00 ', 'Bronze & Co.:0, Tier-2/EU:1000.25'],
    ARRAY[':', ',', '"', '""', ' ', '.', '-', '+', 'e', 'E308', 'NaN', 'Infinity', '0', '9', '99999999999999999999',
          '.0000000001', 'é', 'Ж', E'\t', '%', '\\', '''', 'x'],
    (:n_type)::bigint,
    'SELECT %L::loyalty.tier_ladder',
    'SELECT %1$L::loyalty.tier_ladder::text::loyalty.tier_ladder OPERATOR(loyalty.=) %1$L::loyalty.tier_ladder');

SELECT fuzz.run('rebate_schedule',
    ARRAY['retro: 0:0%, 100000:2%, 500000:3.5%', 'marginal: 0:1%, 50000:2%, 200000:3%', 'RETRO:0:0%,100000:2.50%',
          ' Marginal : 0 : 0 % , 1 : 100 % ', 'retro: 0:0.000001%, 999999999999999.999999:100%'],
    ARRAY[':', ',', '%', ' ', '.', '-', '+', 'e5', 'NaN', 'Infinity', '0', '9', '99999999999999999999', '100', '101',
          'retro', 'marginal', 'tiered', 'é', '''', '"'],
    (:n_type)::bigint,
    'SELECT %L::loyalty.rebate_schedule',
    'SELECT %1$L::loyalty.rebate_schedule::text::loyalty.rebate_schedule OPERATOR(loyalty.=) %1$L::loyalty.rebate_schedule');

-- Multiplier maps: the validator directly (flat and nested), and every
-- twentieth through add_rule() itself.
SELECT fuzz.run('multipliers',
    ARRAY['{"SOLAR": 2, "CABLE": 1.5}', '{"Gold": 1.25, "Silver": 1.1}', '{"distributor": {"Gold": 1.1}, "direct": {}}',
          '{}', '{"": 1}', '{"A": 0}'],
    ARRAY['{', '}', '[', ']', ':', ',', '"', '1e308', '-1', '0', 'null', 'true', '"2"', 'NaN', '1.0000000000000000001',
          '99999999999999999999999999', '{"x": {"y": 1}}', '\u0000', '\\', 'é'],
    (:n_map)::bigint,
    'SELECT loyalty._valid_multipliers(%1$L::jsonb, false), loyalty._valid_multipliers(%1$L::jsonb, true)');
SELECT fuzz.run('add_rule',
    ARRAY['{"SOLAR": 2, "CABLE": 1.5}', '{"Gold": 1.25, "Silver": 1.1}', '{"distributor": {"Gold": 1.1}}', '{}'],
    ARRAY['{', '}', ':', ',', '"', '1e308', '-1', '0', 'null', 'true', '"2"', '{"x": {"y": 1}}', '[1]'],
    (:n_map / 20)::bigint,
    'DO $d$ BEGIN PERFORM loyalty.add_rule(''fuzz'', ''2030-01-01'', 1, product_line_multipliers => %1$L::jsonb, '
    'tier_multipliers => %1$L::jsonb, segment_multipliers => %1$L::jsonb); RAISE SQLSTATE ''FZ000''; END $d$');

-- Mapping expressions through attach() (a new attachment each time, rolled
-- back): one deterministic scalar expression over the row, never float.
SELECT fuzz.run('amount_expression',
    ARRAY['amount * 2', 'qty * price', 'round(price * qty * (1 - disc), 2)',
          'CASE WHEN kind = ''CRN'' THEN -amount ELSE amount END', 'coalesce(amount, 0)::numeric(12,2)',
          '"we.ird" + amount', 'amount'],
    ARRAY[';', '(SELECT 1)', '(SELECT amount)', 'now()', 'random()', '::float8', '::real', '$1', '--', '/*', '*/',
          '''', '"', '(', ')', ' OR ', ' AND ', 'pg_sleep(0)', 'sum(amount)', 'generate_series(1, 2)',
          'row_number() OVER ()', 'pg_temp.f()', '::text', 'NULL', ' + ', ' * ', '1e400', '.', 's.', 'h.', ',', 'ARRAY['],
    (:n_expr)::bigint,
    'DO $d$ BEGIN PERFORM loyalty.attach(''fuzz.sale_unattached'', ''fuzz'', account_column => ''cust'', '
    'date_column => ''d'', amount_expression => %L); RAISE SQLSTATE ''FZ000''; END $d$');

-- Text parameters of the configuration functions, one at a time.
SELECT fuzz.run('create_program',
    ARRAY['p1|EUR|amount|toward_zero|12 months|auto|quarter|2 years', 'Q|USD|quantity|half_up|90 days|explicit|month|',
          'Dealer Club|CHF|amount|half_even|1 year|auto|year|18 mons'],
    ARRAY['|', ' ', '''', '"', 'é', E'\n', '\\', '-', '0', '99999999', 'infinity', 'NaN', 'years', 'x', ';', '%', '$1'],
    (:n_param)::bigint,
    'DO $d$ DECLARE a text[] := string_to_array(%L, ''|''); BEGIN '
    'PERFORM loyalty.create_program(a[1], a[2], NULL, 1, a[3], a[4], a[5]::interval, a[6], false, NULL, a[7], '
    'nullif(a[8], '''')::interval); RAISE SQLSTATE ''FZ000''; END $d$');

-- Account keys and program names as the reading and enrolling functions take them.
SELECT fuzz.run('account_key',
    ARRAY['C1|fuzz|distributor|pilot', 'ACME GmbH|fuzz|direct|control', '12345|fuzz|reseller|'],
    ARRAY['|', ' ', '''', '"', 'é', E'\t', '\\', '%', '_', repeat('k', 300), 'NULL', ';', 'fuzz'],
    (:n_key)::bigint,
    'DO $d$ DECLARE a text[] := string_to_array(%L, ''|''); BEGIN '
    'PERFORM loyalty.balance(a[2], a[1]); PERFORM loyalty.tier(a[2], a[1]); '
    'PERFORM loyalty.explain_points(''fuzz.sale'', VARIADIC ARRAY[a[1]]); '
    'PERFORM loyalty.enroll(a[2], a[1], nullif(a[3], ''''), cohort => nullif(a[4], '''')); '
    'PERFORM * FROM loyalty.verify(a[2]); RAISE SQLSTATE ''FZ000''; END $d$');

\pset footer off
\set QUIET off
SELECT target, inputs, accepted, rejected, unclean,
       (SELECT string_agg(format('%s %s', key, value), ', ' ORDER BY value::bigint DESC, key)
        FROM jsonb_each_text(rejected_by)) AS rejected_with
FROM fuzz.tally ORDER BY target;
SELECT target, sqlstate, message, left(input, 200) AS input FROM fuzz.unclean ORDER BY 1, 2 LIMIT 50;
SELECT format('fuzz: %s inputs, %s unclean', sum(inputs), sum(unclean)) AS summary FROM fuzz.tally;
