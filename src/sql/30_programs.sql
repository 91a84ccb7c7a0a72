-- Programs, rules and enrolment: the names DBAs and integrations type.

CREATE FUNCTION @extschema@._invalidate() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_invalidate' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._invalidate() IS 'Internal: tells every backend to rebuild its loyalty caches after a configuration or account change.';

CREATE TRIGGER program_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.program
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('config');
CREATE TRIGGER rule_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.rule
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('config');
CREATE TRIGGER attachment_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.attachment
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('config');
-- Account caches hold only enrolled accounts, so a new account (an INSERT)
-- cannot make them stale; nor can a tier upgrade (it takes effect from the
-- next day, and the cached current tier is only a lower bound).  What can:
CREATE TRIGGER account_cache
    AFTER UPDATE OF program_id, account_key, cooperation_model, industry, region, cohort, enrolled_from
       OR DELETE OR TRUNCATE ON @extschema@.account
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('accounts');
CREATE TRIGGER tier_history_cache AFTER UPDATE OR DELETE OR TRUNCATE ON @extschema@.tier_history
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('accounts');

CREATE FUNCTION @extschema@._program_id(program text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO id FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._program_id(text) IS 'Internal: a program''s id by name, with a clear error when there is none.';

-- The program's calendar, one definition for C and SQL alike: today in the
-- program's time zone, and the rolling window in whole calendar months.
CREATE FUNCTION @extschema@._today(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _today.program_id)
$$;
COMMENT ON FUNCTION @extschema@._today(integer) IS 'Internal: today in the program''s time zone.';

-- Windows of 1.0 programs may hold days: 30 days count as a month, as 1.0's
-- trigger counted them.  New programs give whole months.
CREATE FUNCTION @extschema@._window_months(w interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT GREATEST(1, (pg_catalog.date_part('year', w) OPERATOR(pg_catalog.*) 12
                               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', w)
                               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', w) OPERATOR(pg_catalog./) 30))::integer)
$$;
COMMENT ON FUNCTION @extschema@._window_months(interval) IS 'Internal: a qualification window in whole calendar months.';
REVOKE ALL ON FUNCTION @extschema@._today(integer), @extschema@._window_months(interval) FROM PUBLIC;

CREATE FUNCTION @extschema@._check_choice(param text, value text, allowed text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL OR NOT value OPERATOR(pg_catalog.=) ANY (allowed) THEN
        RAISE EXCEPTION 'invalid value for %: %', param, coalesce(pg_catalog.quote_literal(value), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('%s must be one of %s.', param, pg_catalog.array_to_string(allowed, ', ')),
                  HINT = pg_catalog.format('For example %s => %L.', param, allowed[1]);
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_choice(text, text, text[]) IS 'Internal: validates an enumerated parameter.';

-- Every parameter of the public functions is checked in the function
-- itself, in order, before anything is written: each error names its
-- parameter, says what it is and how to give it, and comes from the
-- function the user called (no CONTEXT line of an internal helper).
CREATE FUNCTION @extschema@.create_program(
    name                 text,
    currency             text DEFAULT 'EUR',
    ladder               @extschema@.tier_ladder DEFAULT NULL,
    points_per_unit      numeric DEFAULT 1,
    basis                text DEFAULT 'amount',
    rounding             text DEFAULT 'toward_zero',
    qualification_window interval DEFAULT '12 months',
    enrollment           text DEFAULT 'auto',
    strict               boolean DEFAULT false,
    starts_on            date DEFAULT NULL,
    settlement_period    text DEFAULT 'quarter',
    point_lifetime       interval DEFAULT NULL,
    rebate               @extschema@.rebate_schedule DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
    c record;
    months integer;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'name is the program''s name, which every loyalty function takes.',
                  HINT = 'For example loyalty.create_program(''Distributor Club'').';
    END IF;
    IF name !~ '^[^[:cntrl:]]{1,63}$' OR name <> btrim(name) THEN
        RAISE EXCEPTION 'invalid program name: %', quote_literal(name)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A program name has 1 to 63 characters, no control characters and no leading or trailing spaces.',
                  HINT = CASE WHEN name <> btrim(name) AND btrim(name) ~ '^[^[:cntrl:]]{1,63}$'
                              THEN format('Leave out the spaces: name => %L.', btrim(name))
                              ELSE 'For example name => ''Distributor Club''.' END;
    END IF;
    IF EXISTS (SELECT FROM @extschema@.program p WHERE p.name = create_program.name) THEN
        RAISE EXCEPTION 'loyalty program "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Program names are unique.',
                  HINT = 'Choose another name, or change the existing program''s rules with loyalty.add_rule().';
    END IF;
    IF currency IS NULL THEN
        RAISE EXCEPTION 'currency must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'currency is the ISO 4217 code of the amounts that earn; rows in another currency are rejected.',
                  HINT = 'Leave it out for the default, ''EUR''.';
    END IF;
    IF currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'invalid currency: %', quote_literal(currency)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'currency is an ISO 4217 code: three capital letters.',
                  HINT = CASE WHEN upper(currency) ~ '^[A-Z]{3}$' THEN format('Write it in capitals: currency => %L.', upper(currency))
                              ELSE 'For example currency => ''EUR''.' END;
    END IF;
    IF points_per_unit IS NULL THEN
        RAISE EXCEPTION 'points_per_unit must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'points_per_unit is the base rate of the first rule version: points per currency unit (or per quantity unit).',
                  HINT = 'Give 0 for a program that counts qualifying spend but pays no points.';
    END IF;
    IF points_per_unit IN ('NaN', 'Infinity', '-Infinity') OR points_per_unit < 0 OR points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be at least 0 and below 1000000, not %', points_per_unit
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'points_per_unit is the base rate of the first rule version: points per currency unit (or per quantity unit).',
                  HINT = 'For example points_per_unit => 1, or 0.5.';
    END IF;
    -- the old name of toward_zero: it never was a floor (-247.83 gives -247)
    IF rounding = 'floor' THEN
        RAISE NOTICE 'rounding ''floor'' is deprecated: it is called ''toward_zero'' now'
            USING DETAIL = 'It drops the fraction toward zero, so that a credit note of -247.83 gives -247 points, not -248.',
                  HINT = 'Write rounding => ''toward_zero''.';
        rounding := 'toward_zero';
    END IF;
    FOR c IN SELECT * FROM (VALUES
            (1, 'basis', basis, ARRAY['amount', 'quantity']),
            (2, 'rounding', rounding, ARRAY['toward_zero', 'half_up', 'half_even']),
            (3, 'enrollment', enrollment, ARRAY['auto', 'explicit']),
            (4, 'settlement_period', settlement_period, ARRAY['month', 'quarter', 'year'])) AS x(n, param, value, allowed)
            ORDER BY n LOOP
        IF c.value IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = format('%s must be one of %s.', c.param, array_to_string(c.allowed, ', ')),
                      HINT = format('Leave it out for the default, %L.', c.allowed[1]);
        END IF;
        IF NOT c.value = ANY (c.allowed) THEN
            RAISE EXCEPTION 'invalid %: %', c.param, quote_literal(c.value)
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('%s must be one of %s.', c.param, array_to_string(c.allowed, ', ')),
                      HINT = format('For example %s => %L.', c.param, c.allowed[1]);
        END IF;
    END LOOP;
    IF qualification_window IS NULL THEN
        RAISE EXCEPTION 'qualification_window must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'qualification_window is the tier window: the qualifying spend of that many calendar months, the current one included, decides the tier.',
                  HINT = 'Leave it out for the default, ''12 months''.';
    END IF;
    -- whole months: '90 days' would be counted as 3 months, which is not what it says
    months := date_part('year', qualification_window) * 12 + date_part('month', qualification_window);
    IF date_part('day', qualification_window) <> 0 OR date_part('hour', qualification_window) <> 0
       OR date_part('minute', qualification_window) <> 0 OR date_part('second', qualification_window) <> 0 THEN
        months := greatest(1, least(120, @extschema@._window_months(qualification_window)));
        RAISE EXCEPTION 'qualification_window must be a whole number of months, not %', qualification_window
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The tier window counts whole calendar months, the current one included.',
                  HINT = format('For example qualification_window => %L.', months || CASE months WHEN 1 THEN ' month' ELSE ' months' END);
    END IF;
    IF months < 1 OR months > 120 THEN
        RAISE EXCEPTION 'qualification_window must be between 1 month and 10 years, not %', qualification_window
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The tier window counts whole calendar months, the current one included.',
                  HINT = 'For example qualification_window => ''12 months''.';
    END IF;
    IF strict IS NULL THEN
        RAISE EXCEPTION 'strict must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'strict => true fails an ERP statement with a row the program cannot accrue; false parks such rows in loyalty.rejected_event.',
                  HINT = 'Leave it out for the default, false.';
    END IF;
    IF starts_on = 'infinity' THEN
        RAISE EXCEPTION 'starts_on must be a date or -infinity, not infinity'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'starts_on is the first document date that earns points; from infinity on, no document would ever earn.',
                  HINT = 'Give a date, or leave it out for a program that earns from the beginning of time.';
    END IF;
    IF point_lifetime <= interval '0' THEN
        RAISE EXCEPTION 'point_lifetime must be positive, not %', point_lifetime
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'point_lifetime is how long earned points stay valid before settlement expires them.',
                  HINT = 'For example point_lifetime => ''2 years''; leave it out for points that never expire.';
    END IF;
    INSERT INTO @extschema@.program AS p (name, currency, ladder, basis, rounding, qualification_window,
                                          enrollment, strict, settlement_period, point_lifetime, rebate)
    VALUES (name, currency, ladder, basis, rounding, qualification_window,
            enrollment, strict, settlement_period, point_lifetime, rebate)
    RETURNING p.program_id INTO id;
    INSERT INTO @extschema@.rule (program_id, valid_from, points_per_unit)
    VALUES (id, coalesce(starts_on, '-infinity'), points_per_unit);
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule) IS
    'Creates a program and its first rule version (points_per_unit from starts_on, or from the beginning of time). Returns the program id.';

CREATE FUNCTION @extschema@.add_rule(
    program                  text,
    valid_from               date,
    points_per_unit          numeric,
    min_amount               numeric DEFAULT 0,
    product_line_multipliers jsonb DEFAULT '{}',
    tier_multipliers         jsonb DEFAULT '{}',
    segment_multipliers      jsonb DEFAULT '{}',
    on_time_bonus_pct        numeric DEFAULT 0,
    cap_points               bigint DEFAULT NULL,
    cap_period               text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    last_month date;
    c record;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'For example loyalty.add_rule(''Distributor Club'', valid_from => ''2025-01-01'', points_per_unit => 2).';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = add_rule.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF valid_from IS NULL THEN
        RAISE EXCEPTION 'valid_from must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'valid_from is the first document date the new version applies to.',
                  HINT = 'For example valid_from => ''2025-01-01''.';
    END IF;
    IF NOT isfinite(valid_from) THEN
        RAISE EXCEPTION 'valid_from must be a date, not %', valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first document date the new version applies to; the program''s first version, in force from its start, is made by loyalty.create_program(starts_on => ...).',
                  HINT = 'For example valid_from => ''2025-01-01''.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rule r WHERE r.program_id = pid AND r.valid_from = add_rule.valid_from) THEN
        RAISE EXCEPTION 'program "%" already has a rule version valid from %', program, valid_from
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'A program has one rule version per valid_from date.',
                  HINT = 'Versions are immutable once documents earned by them; add one with another valid_from.';
    END IF;
    IF points_per_unit IS NULL THEN
        RAISE EXCEPTION 'points_per_unit must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'points_per_unit is the version''s base rate: points per currency unit (or per quantity unit).',
                  HINT = 'Give 0 for a version that pays no points.';
    END IF;
    IF points_per_unit IN ('NaN', 'Infinity', '-Infinity') OR points_per_unit < 0 OR points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be at least 0 and below 1000000, not %', points_per_unit
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'points_per_unit is the version''s base rate: points per currency unit (or per quantity unit).',
                  HINT = 'For example points_per_unit => 1, or 0.5.';
    END IF;
    IF min_amount IS NULL THEN
        RAISE EXCEPTION 'min_amount must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Rows whose absolute amount (or quantity) is below min_amount earn no points.',
                  HINT = 'Leave it out for no minimum (0).';
    END IF;
    IF min_amount IN ('NaN', 'Infinity', '-Infinity') OR min_amount < 0 THEN
        RAISE EXCEPTION 'min_amount must be zero or a positive finite amount, not %', min_amount
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Rows whose absolute amount (or quantity) is below min_amount earn no points.',
                  HINT = 'For example min_amount => 50; leave it out for no minimum (0).';
    END IF;
    FOR c IN SELECT * FROM (VALUES
            (1, 'product_line_multipliers', product_line_multipliers, false,
             'product_line_multipliers maps product lines to positive numbers; lines not listed get 1.',
             'For example product_line_multipliers => ''{"SOLAR": 2}''.'),
            (2, 'tier_multipliers', tier_multipliers, false,
             'tier_multipliers maps tier names to positive numbers; tiers not listed get 1.',
             'For example tier_multipliers => ''{"Gold": 1.25}''.'),
            (3, 'segment_multipliers', segment_multipliers, true,
             'segment_multipliers maps cooperation_model, industry or region to objects of positive numbers; values not listed get 1.',
             'For example segment_multipliers => ''{"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.05}}''.'))
            AS x(n, param, value, nested, what, example) ORDER BY n LOOP
        IF c.value IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed', DETAIL = c.what,
                      HINT = 'Leave it out for none (''{}'').';
        END IF;
        IF NOT @extschema@._valid_multipliers(c.value, c.nested) THEN
            RAISE EXCEPTION 'invalid %: %', c.param, c.value
                USING ERRCODE = 'invalid_parameter_value', DETAIL = c.what, HINT = c.example;
        END IF;
    END LOOP;
    IF on_time_bonus_pct IS NULL THEN
        RAISE EXCEPTION 'on_time_bonus_pct must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'on_time_bonus_pct is the bonus, in percent of a row''s points, for a document paid on or before its due date.',
                  HINT = 'Leave it out for no bonus (0).';
    END IF;
    IF on_time_bonus_pct IN ('NaN', 'Infinity', '-Infinity') OR on_time_bonus_pct < 0 OR on_time_bonus_pct > 1000 THEN
        RAISE EXCEPTION 'on_time_bonus_pct must be between 0 and 1000, not %', on_time_bonus_pct
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'on_time_bonus_pct is the bonus, in percent of a row''s points, for a document paid on or before its due date.',
                  HINT = 'For example on_time_bonus_pct => 10 (ten percent more).';
    END IF;
    IF cap_points <= 0 THEN
        RAISE EXCEPTION 'cap_points must be positive, not %', cap_points
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cap_points is the most points an account can earn from invoices in one cap period.',
                  HINT = 'Leave out cap_points and cap_period for no cap.';
    END IF;
    IF cap_period NOT IN ('month', 'quarter', 'year') THEN
        RAISE EXCEPTION 'invalid cap_period: %', quote_literal(cap_period)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cap_period must be one of month, quarter, year.',
                  HINT = 'For example cap_points => 10000, cap_period => ''quarter''.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) THEN
        RAISE EXCEPTION 'cap_points and cap_period go together'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN cap_points IS NULL THEN 'cap_period was given without cap_points.'
                                ELSE 'cap_points was given without cap_period.' END,
                  HINT = 'For example cap_points => 10000, cap_period => ''quarter''.';
    END IF;
    -- A version must not change what documents already accrued have earned.
    SELECT max(m.month) INTO last_month FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.month >= date_trunc('month', valid_from)::date;
    IF last_month IS NOT NULL THEN
        RAISE EXCEPTION 'a rule version valid from % would change points already accrued', valid_from
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Program "%s" has accrued documents dated in %s, on or after valid_from.', program, to_char(last_month, 'YYYY-MM')),
                  HINT = pg_catalog.format('Start the version after the last accrued month, e.g. valid_from => %L.', (last_month + interval '1 month')::date);
    END IF;
    INSERT INTO @extschema@.rule (program_id, valid_from, points_per_unit, min_amount, product_line_multipliers,
                                  tier_multipliers, segment_multipliers, on_time_bonus_pct, cap_points, cap_period)
    VALUES (pid, valid_from, points_per_unit, min_amount, product_line_multipliers,
            tier_multipliers, segment_multipliers, on_time_bonus_pct, cap_points, cap_period);
END
$$;
COMMENT ON FUNCTION @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text) IS
    'Adds a rule version: documents dated from valid_from earn by it. Refused when documents already accrued would change.';

-- The writes of enroll(), as the extension owner: they evaluate nothing a
-- user defined.  Returns whether the account's documents must be restated
-- (enroll() then recomputes them as its caller).
CREATE FUNCTION @extschema@._enroll(
    program           text,
    account_key       text,
    cooperation_model text,
    industry          text,
    region            text,
    potential_spend   numeric,
    cohort            text,
    enrolled_from     date,
    OUT enrolled_program integer,
    OUT restate       boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    policy text;
    before @extschema@.account;
    after @extschema@.account;
    since date;
    until date;
BEGIN
    IF account_key IS NULL OR account_key = '' THEN
        RAISE EXCEPTION 'account_key must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cohort IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cohort', cohort, ARRAY['pilot', 'control']);
    END IF;
    IF cooperation_model IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cooperation_model', cooperation_model,
                                          ARRAY['direct', 'distributor', 'integrator', 'reseller']);
    END IF;
    SELECT p.enrollment INTO policy FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT * INTO before FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key::@extschema@.account_key;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor a function of the
    -- configuration (the coordinator evaluates it, the shard runs the rest)
    since := coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE @extschema@._today(pid) END);
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit', since)
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(_enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key::@extschema@.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow (in
    -- the program's calendar), and never to a document already accrued: after
    -- the account's latest document date if that is later.  The old values
    -- stay for the documents before (the first change of a day keeps them:
    -- values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        SELECT b.last_doc_date + 1 INTO until FROM @extschema@.balance b
        WHERE b.program_id = pid AND b.account_key = _enroll.account_key::@extschema@.account_key;
        until := GREATEST(@extschema@._today(pid) + 1, until);
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, (_enroll.account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, until,
                before.cooperation_model, before.industry, before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all; so does a
    -- first enrolment of a customer whose documents were ignored so far.
    enrolled_program := pid;
    restate := (before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
                AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = _enroll.account_key::@extschema@.account_key))
               OR (before.account_key IS NULL
                   AND EXISTS (SELECT FROM @extschema@.unenrolled_activity u
                               WHERE u.program_id = pid AND u.account_key = _enroll.account_key::@extschema@.account_key AND u.source_rows <> 0));
END
$$;
COMMENT ON FUNCTION @extschema@._enroll(text, text, text, text, text, numeric, text, date) IS
    'Internal: the writes of loyalty.enroll(); returns whether the account''s documents must be restated.';

-- Runs as its caller: a restatement evaluates the attachments' mapping
-- expressions, which must never run with the owner's rights.
CREATE FUNCTION @extschema@.enroll(
    program           text,
    account_key       text,
    cooperation_model text DEFAULT NULL,
    industry          text DEFAULT NULL,
    region            text DEFAULT NULL,
    potential_spend   numeric DEFAULT NULL,
    cohort            text DEFAULT NULL,
    enrolled_from     date DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'loyalty_enroll' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.enroll(text, text, text, text, text, numeric, text, date) IS
    'Enrols an account (or updates the segment attributes of an enrolled one). Under explicit enrolment, documents dated before enrolled_from (default today) do not earn. A new segment or cohort applies to documents dated from tomorrow (the old values are kept in loyalty.account_history); a new enrolled_from restates the account''s documents (ledger kind restate).';

REVOKE ALL ON FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule),
                      @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text),
                      @extschema@.enroll(text, text, text, text, text, numeric, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule),
                          @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.enroll(text, text, text, text, text, numeric, text, date) TO loyalty_operator, loyalty_admin;
