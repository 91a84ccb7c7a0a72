
-- ---------------------------------------------------------------------------
-- Incremental ROI (ARCHITECTURE.md §1, SCENARIOS.md 15): the difference-in-
-- differences aggregate (src/did.c), cohorts, margin, program cost, roi().
-- ---------------------------------------------------------------------------

CREATE TYPE @extschema@.did_result AS (
    pilot_n             bigint,
    control_n           bigint,
    pilot_mean_change   double precision,
    control_mean_change double precision,
    uplift              double precision,
    std_error           double precision,
    ci_low              double precision,
    ci_high             double precision,
    welch_df            double precision
);
COMMENT ON TYPE @extschema@.did_result IS
'What loyalty.did() returns: group sizes, each group''s mean change (post - pre), the uplift (pilot minus control mean change), Welch''s standard error, the 95% confidence interval (Student''s t with Welch-Satterthwaite degrees of freedom) and those degrees of freedom.';
COMMENT ON COLUMN @extschema@.did_result.pilot_n IS 'Pilot rows counted (rows with a NULL argument are skipped).';
COMMENT ON COLUMN @extschema@.did_result.control_n IS 'Control rows counted.';
COMMENT ON COLUMN @extschema@.did_result.pilot_mean_change IS 'Mean of post - pre over the pilot rows; NULL without pilot rows.';
COMMENT ON COLUMN @extschema@.did_result.control_mean_change IS 'Mean of post - pre over the control rows; NULL without control rows.';
COMMENT ON COLUMN @extschema@.did_result.uplift IS 'pilot_mean_change - control_mean_change: the difference-in-differences estimate; NULL when a group is empty.';
COMMENT ON COLUMN @extschema@.did_result.std_error IS 'sqrt(var_pilot / n_pilot + var_control / n_control) with sample variances (Welch); NULL when a group has fewer than two rows.';
COMMENT ON COLUMN @extschema@.did_result.ci_low IS 'Lower end of the 95% confidence interval, uplift - t(0.975, welch_df) * std_error; the uplift itself when std_error is 0.';
COMMENT ON COLUMN @extschema@.did_result.ci_high IS 'Upper end of the 95% confidence interval.';
COMMENT ON COLUMN @extschema@.did_result.welch_df IS 'Welch-Satterthwaite degrees of freedom; NULL when std_error is 0 or undefined.';

CREATE FUNCTION @extschema@._did_trans(pg_catalog.internal, boolean, numeric, numeric)
RETURNS pg_catalog.internal
AS 'MODULE_PATHNAME', 'loyalty_did_trans' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._did_trans(pg_catalog.internal, boolean, numeric, numeric) IS
'Internal: transition function of loyalty.did() (Welford per group).';
CREATE FUNCTION @extschema@._did_combine(pg_catalog.internal, pg_catalog.internal)
RETURNS pg_catalog.internal
AS 'MODULE_PATHNAME', 'loyalty_did_combine' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._did_combine(pg_catalog.internal, pg_catalog.internal) IS
'Internal: combine function of loyalty.did() (Chan et al.''s merge of two partial states).';
CREATE FUNCTION @extschema@._did_serial(pg_catalog.internal)
RETURNS bytea
AS 'MODULE_PATHNAME', 'loyalty_did_serial' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._did_serial(pg_catalog.internal) IS
'Internal: serialises a partial state of loyalty.did() for a parallel plan.';
CREATE FUNCTION @extschema@._did_deserial(bytea, pg_catalog.internal)
RETURNS pg_catalog.internal
AS 'MODULE_PATHNAME', 'loyalty_did_deserial' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._did_deserial(bytea, pg_catalog.internal) IS
'Internal: reads back a partial state of loyalty.did().';
CREATE FUNCTION @extschema@._did_final(pg_catalog.internal, boolean, numeric, numeric)
RETURNS @extschema@.did_result
AS 'MODULE_PATHNAME', 'loyalty_did_final' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._did_final(pg_catalog.internal, boolean, numeric, numeric) IS
'Internal: final function of loyalty.did(): the estimate, its standard error and interval.';

CREATE AGGREGATE @extschema@.did(is_pilot boolean, pre numeric, post numeric) (
    SFUNC = @extschema@._did_trans,
    STYPE = pg_catalog.internal,
    SSPACE = 48,
    FINALFUNC = @extschema@._did_final,
    FINALFUNC_EXTRA,
    COMBINEFUNC = @extschema@._did_combine,
    SERIALFUNC = @extschema@._did_serial,
    DESERIALFUNC = @extschema@._did_deserial,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.did(boolean, numeric, numeric) IS
'Difference in differences: per row one unit (an account) with its group (true = pilot, false = control) and its pre- and post-period value; the uplift of the pilot''s mean change over the control''s, with Welch''s standard error and a 95% interval. Rows with a NULL argument are skipped; NaN or infinity is an error.';

CREATE FUNCTION @extschema@.t_quantile(p double precision, df double precision)
RETURNS double precision
AS 'MODULE_PATHNAME', 'loyalty_t_quantile' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.t_quantile(double precision, double precision) IS
'The quantile t of Student''s t distribution with df degrees of freedom (df may be fractional): P(T <= t) = p. Relative error about 1e-13 as long as t squared fits a double (|t| below 1e154: p down to 1e-15 at df = 1); what loyalty.did() uses for its interval.';

-- ---- Program economics: what a point costs, margin rates, benefits ----

CREATE TABLE @extschema@.roi_settings (
    program_id                     integer PRIMARY KEY REFERENCES @extschema@.program,
    cost_per_point                 numeric NOT NULL DEFAULT 0
                                   CHECK (cost_per_point OPERATOR(pg_catalog.>=) 0 AND cost_per_point OPERATOR(pg_catalog.<) 'Infinity'),
    benefit_cost_per_account_month numeric NOT NULL DEFAULT 0
                                   CHECK (benefit_cost_per_account_month OPERATOR(pg_catalog.>=) 0
                                          AND benefit_cost_per_account_month OPERATOR(pg_catalog.<) 'Infinity'),
    default_margin_rate            numeric CHECK (default_margin_rate BETWEEN -1 AND 1),
    updated_at                     timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.roi_settings IS 'Program economics for loyalty.roi(): what a point costs the company, what the benefits of the pilot cost, and the margin rate of product lines without one of their own (loyalty.set_roi_economics).';
COMMENT ON COLUMN @extschema@.roi_settings.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.roi_settings.cost_per_point IS 'What one issued point costs, in program currency: the points liability of the pilot is valued at it.';
COMMENT ON COLUMN @extschema@.roi_settings.benefit_cost_per_account_month IS 'Cost of the tier benefits (payment terms, SLA, priority shipping) per pilot account and month, in program currency.';
COMMENT ON COLUMN @extschema@.roi_settings.default_margin_rate IS 'Margin rate (margin / revenue, -1 to 1) of product lines without a rate in loyalty.margin_rate; NULL: such lines count at full revenue, and the ROI report says so.';
COMMENT ON COLUMN @extschema@.roi_settings.updated_at IS 'When the settings were last changed.';

CREATE TABLE @extschema@.margin_rate (
    program_id   integer NOT NULL REFERENCES @extschema@.program,
    product_line text NOT NULL,
    rate         numeric NOT NULL CHECK (rate BETWEEN -1 AND 1),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, product_line)
);
COMMENT ON TABLE @extschema@.margin_rate IS 'Gross margin rate per product line (margin / revenue): ROI and the KPIs are measured on margin, not turnover (loyalty.set_margin_rate).';
COMMENT ON COLUMN @extschema@.margin_rate.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.margin_rate.product_line IS 'The product line, as the attachment maps it.';
COMMENT ON COLUMN @extschema@.margin_rate.rate IS 'Margin / revenue of the line, from -1 to 1 (0.25: a quarter of the revenue is margin).';
COMMENT ON COLUMN @extschema@.margin_rate.updated_at IS 'When the rate was set.';

CREATE TABLE @extschema@.cohort_assignment (
    program_id     integer NOT NULL,
    account_key    text NOT NULL,
    assigned_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    cohort         text NOT NULL CHECK (cohort IN ('pilot', 'control')),
    previous       text CHECK (previous IN ('pilot', 'control')),
    stratum        text NOT NULL,
    seed           bigint NOT NULL,
    pilot_fraction numeric NOT NULL,
    PRIMARY KEY (program_id, account_key, assigned_at),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.cohort_assignment IS 'Every cohort loyalty.assign_cohorts() gave an account, with the stratum and seed that decided it: the experiment''s audit trail. (loyalty.account_history keeps the values documents earned by.)';
COMMENT ON COLUMN @extschema@.cohort_assignment.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.cohort_assignment.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.cohort_assignment.assigned_at IS 'When (transaction time).';
COMMENT ON COLUMN @extschema@.cohort_assignment.cohort IS 'pilot or control.';
COMMENT ON COLUMN @extschema@.cohort_assignment.previous IS 'The cohort before (NULL: none).';
COMMENT ON COLUMN @extschema@.cohort_assignment.stratum IS 'Segment and pre-period spend band, e.g. distributor/2 of 4.';
COMMENT ON COLUMN @extschema@.cohort_assignment.seed IS 'The seed of the assignment.';
COMMENT ON COLUMN @extschema@.cohort_assignment.pilot_fraction IS 'The pilot fraction asked for.';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.roi_settings', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.margin_rate', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.cohort_assignment', '');
GRANT SELECT ON @extschema@.roi_settings, @extschema@.margin_rate, @extschema@.cohort_assignment
    TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Typed arguments, no user code: writes as the owner.
CREATE FUNCTION @extschema@.set_roi_economics(
    program                        text,
    cost_per_point                 numeric DEFAULT NULL,
    benefit_cost_per_account_month numeric DEFAULT NULL,
    default_margin_rate            numeric DEFAULT NULL)
RETURNS @extschema@.roi_settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    r @extschema@.roi_settings;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF cost_per_point < 0 OR cost_per_point IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'cost_per_point must be 0 or more, not %', cost_per_point
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cost_per_point is what one issued point costs the company, in program currency.',
                  HINT = 'For example cost_per_point => 0.01 (a point worth one cent).';
    END IF;
    IF benefit_cost_per_account_month < 0 OR benefit_cost_per_account_month IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'benefit_cost_per_account_month must be 0 or more, not %', benefit_cost_per_account_month
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'benefit_cost_per_account_month is what the benefits of one pilot account cost per month.',
                  HINT = 'For example benefit_cost_per_account_month => 15.';
    END IF;
    IF NOT default_margin_rate BETWEEN -1 AND 1 THEN
        RAISE EXCEPTION 'default_margin_rate must be between -1 and 1, not %', default_margin_rate
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A margin rate is margin / revenue: 0.25 when a quarter of the revenue is margin.',
                  HINT = 'For example default_margin_rate => 0.2.';
    END IF;
    INSERT INTO @extschema@.roi_settings AS s (program_id, cost_per_point, benefit_cost_per_account_month, default_margin_rate)
    VALUES (pid, coalesce(cost_per_point, 0), coalesce(benefit_cost_per_account_month, 0), default_margin_rate)
    ON CONFLICT (program_id) DO UPDATE
    SET cost_per_point = coalesce(set_roi_economics.cost_per_point, s.cost_per_point),
        benefit_cost_per_account_month = coalesce(set_roi_economics.benefit_cost_per_account_month, s.benefit_cost_per_account_month),
        default_margin_rate = coalesce(set_roi_economics.default_margin_rate, s.default_margin_rate),
        -- the inserted row's default, now(): Citus refuses a volatile
        -- function in the SET of an upsert into one of its tables
        updated_at = excluded.updated_at
    RETURNING * INTO r;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.set_roi_economics(text, numeric, numeric, numeric) IS
    'Sets what loyalty.roi() values the program''s cost at: cost per point, benefit cost per pilot account and month, default margin rate. Arguments left NULL keep their value.';

CREATE FUNCTION @extschema@.set_margin_rate(program text, product_line text, rate numeric)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF product_line IS NULL THEN
        RAISE EXCEPTION 'product_line must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'product_line is a product line as the program''s attachments map it.',
                  HINT = 'For the lines without a rate of their own use loyalty.set_roi_economics(program, default_margin_rate => ...).';
    END IF;
    IF rate IS NULL THEN
        DELETE FROM @extschema@.margin_rate m WHERE m.program_id = pid AND m.product_line = set_margin_rate.product_line;
        RETURN;
    END IF;
    IF NOT rate BETWEEN -1 AND 1 THEN
        RAISE EXCEPTION 'rate must be between -1 and 1, not %', rate
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A margin rate is margin / revenue: 0.25 when a quarter of the revenue is margin.',
                  HINT = 'Give 0.25, not 25; rate => NULL removes the line''s rate.';
    END IF;
    INSERT INTO @extschema@.margin_rate AS m (program_id, product_line, rate)
    VALUES (pid, product_line, rate)
    -- updated_at: the inserted row's default, now() (Citus refuses now() here)
    ON CONFLICT ON CONSTRAINT margin_rate_pkey DO UPDATE SET rate = excluded.rate, updated_at = excluded.updated_at;
END
$$;
COMMENT ON FUNCTION @extschema@.set_margin_rate(text, text, numeric) IS
    'Sets the gross margin rate (margin / revenue) of a product line; rate NULL removes it.';

-- ---- Cohorts ----

-- Stratified, deterministic assignment.  Strata: the cooperation model
-- (the segment) and the band of pre-period qualifying spend within it
-- (bands of equal size, ties broken by account key).  Within a stratum the
-- accounts are ordered by hashtextextended(account_key, seed), the hash
-- PostgreSQL's hash partitioning uses (kept the same across platforms and
-- releases, since partitioned tables depend on it), and the first
-- round(n * pilot_fraction) are the pilot, counting the accounts whose cohort
-- is fixed already: the same seed gives the same assignment on any machine
-- (ties broken by the key's bytes, whatever the database's collation).
-- Reads loyalty's tables only and evaluates nothing a user defined: it runs
-- as the owner.  A cohort change is recorded as _enroll records it
-- (loyalty.account_history, from tomorrow or after the account's latest
-- document), set-based, in one statement for all accounts.
CREATE FUNCTION @extschema@.assign_cohorts(
    program        text,
    pilot_fraction numeric,
    seed           bigint,
    pre            daterange DEFAULT NULL,
    spend_bands    integer DEFAULT 4,
    reassign       boolean DEFAULT false)
RETURNS TABLE (stratum text, segment text, spend_band integer, accounts bigint, pilot bigint, control bigint,
               kept bigint, pilot_share numeric, pilot_mean_spend numeric, control_mean_spend numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    pid integer;
    today date;
    period daterange;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    today := @extschema@._today(pid);
    period := coalesce(pre, daterange((date_trunc('month', today) - interval '12 months')::date,
                                      date_trunc('month', today)::date));
    IF pilot_fraction IS NULL OR NOT (pilot_fraction > 0 AND pilot_fraction < 1) THEN
        RAISE EXCEPTION 'pilot_fraction must be between 0 and 1 (exclusive), not %', coalesce(pilot_fraction::text, 'NULL')
            USING ERRCODE = CASE WHEN pilot_fraction IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'pilot_fraction is the share of each stratum''s accounts that goes to the pilot.',
                  HINT = 'For example pilot_fraction => 0.5.';
    END IF;
    IF seed IS NULL THEN
        RAISE EXCEPTION 'seed must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'The same seed gives the same assignment on any machine; keep it with the experiment''s records.',
                  HINT = 'For example seed => 20250101.';
    END IF;
    IF isempty(period) OR lower_inf(period) OR upper_inf(period) THEN
        RAISE EXCEPTION 'pre must be a bounded, non-empty date range, not %', period
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'pre is the period whose qualifying spend bands the accounts.',
                  HINT = 'For example pre => daterange(''2024-01-01'', ''2025-01-01''); leave it out for the last 12 whole months.';
    END IF;
    IF spend_bands IS NULL OR spend_bands < 1 OR spend_bands > 100 THEN
        RAISE EXCEPTION 'spend_bands must be between 1 and 100, not %', coalesce(spend_bands::text, 'NULL')
            USING ERRCODE = CASE WHEN spend_bands IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'spend_bands is how many bands of equal size the pre-period spend of each segment is cut into.',
                  HINT = 'For example spend_bands => 4 (quartiles).';
    END IF;
    IF reassign IS NULL THEN
        RAISE EXCEPTION 'reassign must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'reassign => true draws every account again; false keeps the accounts that have a cohort.',
                  HINT = 'Leave it out for the default, false.';
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS loyalty_cohort_draw (
        account_key text PRIMARY KEY, segment text, spend numeric, band integer, before text, fixed boolean,
        cohort text, stratum text) ON COMMIT DROP;
    TRUNCATE pg_temp.loyalty_cohort_draw;
    INSERT INTO pg_temp.loyalty_cohort_draw (account_key, segment, spend, band, before, fixed)
    SELECT a.account_key, coalesce(a.cooperation_model, 'none'), coalesce(s.spend, 0),
           ntile(spend_bands) OVER (PARTITION BY coalesce(a.cooperation_model, 'none')
                                    ORDER BY coalesce(s.spend, 0), a.account_key COLLATE "C"),
           a.cohort, a.cohort IS NOT NULL AND NOT reassign
    FROM @extschema@.account a
    LEFT JOIN (SELECT m.account_key, sum(m.qualifying) AS spend
               FROM @extschema@.accrual_month m
               WHERE m.program_id = pid AND m.month >= lower(period) AND m.month < upper(period)
               GROUP BY 1) s ON s.account_key = a.account_key
    WHERE a.program_id = pid;

    -- in each stratum: pilots still needed = round(n * fraction) - fixed pilots,
    -- taken in hash order from the accounts not fixed
    UPDATE pg_temp.loyalty_cohort_draw d
    SET cohort = CASE WHEN d.fixed THEN d.before
                      WHEN r.rank <= r.needed THEN 'pilot' ELSE 'control' END,
        stratum = d.segment || '/' || d.band || ' of ' || spend_bands
    FROM (SELECT x.account_key,
                 row_number() OVER (PARTITION BY x.segment, x.band, x.fixed
                                    ORDER BY hashtextextended(x.account_key, seed), x.account_key COLLATE "C") AS rank,
                 round(count(*) OVER (PARTITION BY x.segment, x.band) * pilot_fraction)
                 - count(*) FILTER (WHERE x.fixed AND x.before = 'pilot') OVER (PARTITION BY x.segment, x.band) AS needed
          FROM pg_temp.loyalty_cohort_draw x) r
    WHERE r.account_key = d.account_key;

    -- what documents dated up to tomorrow (or the account's latest document)
    -- earned by stays (a control account earns no points): the old values
    -- go to account_history, as _enroll() writes them
    INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model, industry, region, cohort)
    SELECT a.program_id, a.account_key,
           GREATEST(today + 1, (SELECT b.last_doc_date + 1 FROM @extschema@.balance b
                                WHERE b.program_id = pid AND b.account_key = a.account_key)),
           a.cooperation_model, a.industry, a.region, a.cohort
    FROM @extschema@.account a JOIN pg_temp.loyalty_cohort_draw d ON d.account_key = a.account_key
    WHERE a.program_id = pid AND a.cohort IS DISTINCT FROM d.cohort
    ON CONFLICT DO NOTHING;
    INSERT INTO @extschema@.cohort_assignment AS c (program_id, account_key, cohort, previous, stratum, seed, pilot_fraction)
    SELECT pid, d.account_key, d.cohort, d.before, d.stratum, seed, pilot_fraction
    FROM pg_temp.loyalty_cohort_draw d WHERE d.cohort IS DISTINCT FROM d.before
    ON CONFLICT ON CONSTRAINT cohort_assignment_pkey DO UPDATE
    SET cohort = excluded.cohort, stratum = excluded.stratum, seed = excluded.seed, pilot_fraction = excluded.pilot_fraction;
    UPDATE @extschema@.account a SET cohort = d.cohort
    FROM pg_temp.loyalty_cohort_draw d
    WHERE a.program_id = pid AND a.account_key = d.account_key AND a.cohort IS DISTINCT FROM d.cohort;

    RETURN QUERY
    SELECT d.stratum, d.segment, d.band, count(*), count(*) FILTER (WHERE d.cohort = 'pilot'),
           count(*) FILTER (WHERE d.cohort = 'control'), count(*) FILTER (WHERE d.fixed),
           round(count(*) FILTER (WHERE d.cohort = 'pilot')::numeric / count(*), 4),
           round(avg(d.spend) FILTER (WHERE d.cohort = 'pilot'), 2),
           round(avg(d.spend) FILTER (WHERE d.cohort = 'control'), 2)
    FROM pg_temp.loyalty_cohort_draw d
    GROUP BY d.stratum, d.segment, d.band
    ORDER BY d.segment, d.band;
    DROP TABLE pg_temp.loyalty_cohort_draw;
END
$$;
COMMENT ON FUNCTION @extschema@.assign_cohorts(text, numeric, bigint, daterange, integer, boolean) IS
    'Assigns the program''s accounts to pilot and control: stratified by segment (cooperation model) and pre-period qualifying spend band, pilot_fraction of each stratum to the pilot, drawn by a hash of seed and account key (the same seed gives the same assignment on any machine). Accounts that have a cohort keep it unless reassign => true. Returns the balance per stratum.';

-- ---- Sales and margin from the ERP rows ----

-- The facts queries of a program's attachments, built as the owner from
-- loyalty.attachment and the catalog (which every loyalty role reads
-- anyway): text only, nothing is evaluated here.  loyalty.sales() runs them
-- as its caller; a BI query may too.
CREATE FUNCTION @extschema@.attachment_facts(program text)
RETURNS TABLE (attachment_id integer, source regclass, facts_sql text, credit_note_types text[])
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    pid integer;
BEGIN
    -- the program, checked here so that the error comes from this function
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN QUERY
    SELECT x.attachment_id, x.source, @extschema@._facts_sql(x.attachment_id), coalesce(x.credit_note_types, '{}')
    FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.detached_at IS NULL
      AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = x.source::oid)
    ORDER BY x.attachment_id;
END
$$;
COMMENT ON FUNCTION @extschema@.attachment_facts(text) IS
    'The SQL that maps every row of each active attachment of a program to its facts (row_key, account_key, doc_date, currency, doc_type, due_date, paid_date, header_found, amount, quantity, product_line), with the attachment''s credit note types: what loyalty.sales() runs, with its caller''s rights.';

-- Runs as its caller: the facts queries evaluate the attaching user's
-- mapping expressions over the ERP's tables, which never run with the
-- owner's rights (and the caller must be allowed to read those tables).
CREATE FUNCTION @extschema@.sales(program text, during daterange DEFAULT '(,)')
RETURNS TABLE (account_key text, doc_date date, product_line text, revenue numeric, margin numeric,
               unrated_revenue numeric, source_rows bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    src record;
    q text := '';
BEGIN
    -- the program by name, read as the caller (internal functions are not theirs)
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program x WHERE x.name = program;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF during IS NULL THEN
        RAISE EXCEPTION 'during must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'during is the range of document dates to read.',
                  HINT = 'Leave it out for every date.';
    END IF;
    FOR src IN SELECT * FROM @extschema@.attachment_facts(program) LOOP
        q := q || CASE WHEN q = '' THEN '' ELSE ' UNION ALL ' END || format(
            'SELECT f.account_key, f.doc_date, f.product_line,'
            ' CASE WHEN f.doc_type = ANY (%L::text[]) THEN -abs(f.amount) ELSE f.amount END AS amount'
            ' FROM (%s) f'
            ' WHERE f.header_found AND f.account_key IS NOT NULL AND f.amount IS NOT NULL'
            ' AND f.doc_date <@ $1 AND (f.currency IS NULL OR f.currency = $2)',
            src.credit_note_types, src.facts_sql);
    END LOOP;
    IF q = '' THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT s.account_key, s.doc_date, s.product_line, sum(s.amount),'
        ' sum(s.amount * coalesce(r.rate, e.default_margin_rate, 1)),'
        ' coalesce(sum(s.amount) FILTER (WHERE r.rate IS NULL AND e.default_margin_rate IS NULL), 0),'
        ' count(*)'
        ' FROM (%s) s'
        ' LEFT JOIN @extschema@.margin_rate r ON r.program_id = $3 AND r.product_line = s.product_line'
        ' LEFT JOIN @extschema@.roi_settings e ON e.program_id = $3'
        ' GROUP BY 1, 2, 3', q)
    USING during, prog.currency, prog.program_id;
END
$$;
COMMENT ON FUNCTION @extschema@.sales(text, daterange) IS
    'The program''s ERP sales per account, document date and product line, read from its attached tables as the caller: revenue in program currency (credit notes negative; rows in another currency left out), margin at the product line''s rate (loyalty.margin_rate, else the default rate, else the revenue itself), and the revenue that had no rate.';

-- ---- ROI ----


-- Runs as its caller (it reads the ERP rows through loyalty.sales()).
--
-- Per account of the experiment (account.cohort pilot or control): its
-- margin in pre and in post (0 without sales: an account that stopped
-- buying counts), pre scaled to post's length.  did() gives the uplift per
-- pilot account over post; incremental margin = uplift x pilot accounts.
-- Cost over post, of the pilot accounts: points issued (accrual by document
-- month, awards and positive adjustments by posting date) x cost per point,
-- rebates and MDF posted (by posting date: from post's start up to
-- costs_until, by default post's end; a period's rebate is settled after
-- it, so give a later costs_until to include it), benefits (benefit_cost, or the per-account-month
-- rate of loyalty.roi_settings).  ROI = (incremental margin - cost) / cost;
-- its interval is the uplift's carried through (the cost is a known sum).
-- Payback: months of post's average incremental margin to earn the cost
-- back.  Placebo: the same estimate with pre's first half as "pre" and its
-- second half as "post", before the program: its interval should hold 0.
CREATE FUNCTION @extschema@.roi(program text, pre daterange, post daterange, benefit_cost numeric DEFAULT NULL,
                               costs_until date DEFAULT NULL)
RETURNS TABLE (
    measured_on text, pilot_accounts bigint, control_accounts bigint,
    pilot_mean_change numeric, control_mean_change numeric,
    uplift_per_account numeric, uplift_ci_low numeric, uplift_ci_high numeric, std_error numeric, welch_df numeric,
    incremental_margin numeric, incremental_margin_ci_low numeric, incremental_margin_ci_high numeric,
    points_issued bigint, points_cost numeric, rebate_cost numeric, mdf_cost numeric, benefits_cost numeric,
    program_cost numeric, roi numeric, roi_ci_low numeric, roi_ci_high numeric, payback_months numeric,
    placebo_uplift numeric, placebo_ci_low numeric, placebo_ci_high numeric, parallel_trends text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    prog @extschema@.program;
    pid integer;
    c record;
    d @extschema@.did_result;
    pd @extschema@.did_result;
    est record;
    econ @extschema@.roi_settings;
    scale numeric;
    months numeric;
    mid date;
    rev numeric;
    unrated numeric;
    pts bigint;
    reb numeric;
    md numeric;
    ben numeric;
    cost numeric;
    inc numeric;
BEGIN
    -- the program by name, read as the caller (internal functions are not theirs)
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program x WHERE x.name = program;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    FOR c IN SELECT * FROM (VALUES (1, 'pre', pre), (2, 'post', post)) AS x(n, param, r) ORDER BY n LOOP
        IF c.r IS NULL THEN
            RAISE EXCEPTION '% must not be NULL', c.param
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = format('%s is a range of document dates.', c.param),
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
        IF isempty(c.r) OR lower_inf(c.r) OR upper_inf(c.r) THEN
            RAISE EXCEPTION '% must be a bounded, non-empty date range, not %', c.param, c.r
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Means per account need a period of known length.',
                      HINT = format('For example %s => daterange(''2025-01-01'', ''2025-07-01'').', c.param);
        END IF;
    END LOOP;
    IF upper(pre) > lower(post) THEN
        RAISE EXCEPTION 'pre must end before post begins: % and % overlap', pre, post
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'pre is the period before the program started, post the period it ran.',
                  HINT = 'For example pre => daterange(''2024-01-01'', ''2025-01-01''), post => daterange(''2025-01-01'', ''2026-01-01'').';
    END IF;
    IF costs_until <= lower(post) OR costs_until = 'infinity' THEN
        RAISE EXCEPTION 'costs_until must be a date after post begins, not %', costs_until
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Rebates, MDF and awards posted from the start of post up to the day before costs_until count as the pilot''s cost.',
                  HINT = 'Leave it out for the end of post; give a later date to include the rebates settled after post.';
    END IF;
    IF benefit_cost < 0 OR benefit_cost IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION 'benefit_cost must be 0 or more, not %', benefit_cost
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'benefit_cost is what the pilot''s benefits cost over post, in program currency.',
                  HINT = 'Leave it out to use loyalty.roi_settings.benefit_cost_per_account_month.';
    END IF;
    SELECT * INTO econ FROM @extschema@.roi_settings s WHERE s.program_id = pid;
    scale := (upper(post) - lower(post))::numeric / (upper(pre) - lower(pre));
    months := (upper(post) - lower(post))::numeric / (365.25 / 12);
    mid := lower(pre) + (upper(pre) - lower(pre)) / 2;

    WITH x AS (
        SELECT s.account_key, s.doc_date, sum(s.margin) AS margin, sum(s.revenue) AS revenue,
               sum(s.unrated_revenue) AS unrated
        FROM @extschema@.sales(program, daterange(lower(pre), upper(post))) s
        GROUP BY 1, 2),
    m AS (
        SELECT x.account_key,
               sum(x.margin) FILTER (WHERE x.doc_date <@ pre) AS pre,
               sum(x.margin) FILTER (WHERE x.doc_date <@ post) AS post,
               sum(x.margin) FILTER (WHERE x.doc_date >= lower(pre) AND x.doc_date < mid) AS first_half,
               sum(x.margin) FILTER (WHERE x.doc_date >= mid AND x.doc_date < mid + (mid - lower(pre))) AS second_half
        FROM x GROUP BY 1),
    -- the experiment's accounts as a result of their own: on Citus the
    -- account table is distributed, and the sub-selects over x below can
    -- run only where the rest of the query is a result on the coordinator
    a AS MATERIALIZED (
        SELECT a.account_key, a.cohort FROM @extschema@.account a
        WHERE a.program_id = pid AND a.cohort IS NOT NULL)
    SELECT @extschema@.did(a.cohort = 'pilot', coalesce(m.pre, 0) * scale, coalesce(m.post, 0)) AS d,
           @extschema@.did(a.cohort = 'pilot', coalesce(m.first_half, 0), coalesce(m.second_half, 0)) AS pd,
           (SELECT sum(x.revenue) FROM x) AS rev, (SELECT sum(x.unrated) FROM x) AS unrated
    INTO est
    FROM a
    LEFT JOIN m ON m.account_key = a.account_key::text;
    d := est.d;
    pd := est.pd;
    rev := est.rev;
    unrated := est.unrated;

    -- the pilot's cost over post
    SELECT coalesce(sum(m.points), 0) INTO pts
    FROM @extschema@.accrual_month m JOIN @extschema@.account a USING (program_id, account_key)
    WHERE m.program_id = pid AND a.cohort = 'pilot'
      AND m.month >= date_trunc('month', lower(post)) AND m.month < upper(post);
    SELECT pts + coalesce(sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points > 0), 0),
           coalesce(sum(l.rebate), 0), coalesce(sum(l.mdf), 0)
    INTO pts, reb, md
    FROM @extschema@.ledger l JOIN @extschema@.account a USING (program_id, account_key)
    WHERE l.program_id = pid AND a.cohort = 'pilot'
      AND (l.posted_at AT TIME ZONE prog.time_zone)::date
          <@ daterange(lower(post), coalesce(costs_until, upper(post)));
    ben := coalesce(benefit_cost, coalesce(econ.benefit_cost_per_account_month, 0) * d.pilot_n * months);
    cost := pts * coalesce(econ.cost_per_point, 0) + reb + md + ben;
    inc := d.uplift::numeric * d.pilot_n;

    measured_on := CASE WHEN coalesce(rev, 0) = 0 THEN 'no sales'
                        WHEN unrated = 0 THEN 'margin'
                        WHEN unrated = rev THEN 'revenue (no margin rates set)'
                        ELSE format('margin; %s%% of revenue had no margin rate and counts as revenue',
                                    round(100 * unrated / rev, 1)) END;
    pilot_accounts := d.pilot_n;
    control_accounts := d.control_n;
    pilot_mean_change := round(d.pilot_mean_change::numeric, 2);
    control_mean_change := round(d.control_mean_change::numeric, 2);
    uplift_per_account := round(d.uplift::numeric, 2);
    uplift_ci_low := round(d.ci_low::numeric, 2);
    uplift_ci_high := round(d.ci_high::numeric, 2);
    std_error := round(d.std_error::numeric, 2);
    welch_df := round(d.welch_df::numeric, 1);
    incremental_margin := round(inc, 2);
    incremental_margin_ci_low := round(d.ci_low::numeric * d.pilot_n, 2);
    incremental_margin_ci_high := round(d.ci_high::numeric * d.pilot_n, 2);
    points_issued := pts;
    points_cost := round(pts * coalesce(econ.cost_per_point, 0), 2);
    rebate_cost := reb;
    mdf_cost := md;
    benefits_cost := round(ben, 2);
    program_cost := round(cost, 2);
    IF cost > 0 THEN
        roi := round((inc - cost) / cost, 4);
        roi_ci_low := round((d.ci_low::numeric * d.pilot_n - cost) / cost, 4);
        roi_ci_high := round((d.ci_high::numeric * d.pilot_n - cost) / cost, 4);
        IF inc > 0 THEN
            payback_months := round(cost / (inc / months), 1);
        END IF;
    END IF;
    placebo_uplift := round(pd.uplift::numeric, 2);
    placebo_ci_low := round(pd.ci_low::numeric, 2);
    placebo_ci_high := round(pd.ci_high::numeric, 2);
    parallel_trends := CASE WHEN pd.ci_low IS NULL THEN 'not checked: too few accounts'
                            WHEN pd.ci_low <= 0 AND pd.ci_high >= 0 THEN 'plausible: the placebo interval holds 0'
                            ELSE 'doubtful: the placebo interval excludes 0' END;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.roi(text, daterange, daterange, numeric, date) IS
    'Incremental ROI of the program: difference in differences of margin per account (pilot vs control, pre vs post, from the ERP rows as the caller), incremental margin, the pilot''s program cost over post (points issued x cost per point, rebates, MDF, benefits), ROI = (incremental margin - cost) / cost with its 95% interval, payback in months, and a placebo check on the two halves of pre.';

-- did()'s support functions run with the aggregate owner's EXECUTE right:
-- nobody else needs them (loyalty--1.0--1.1.sql has no blanket REVOKE).
REVOKE ALL ON FUNCTION @extschema@._did_trans(pg_catalog.internal, boolean, numeric, numeric),
                      @extschema@._did_combine(pg_catalog.internal, pg_catalog.internal),
                      @extschema@._did_serial(pg_catalog.internal),
                      @extschema@._did_deserial(bytea, pg_catalog.internal),
                      @extschema@._did_final(pg_catalog.internal, boolean, numeric, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.set_roi_economics(text, numeric, numeric, numeric),
                      @extschema@.set_margin_rate(text, text, numeric),
                      @extschema@.assign_cohorts(text, numeric, bigint, daterange, integer, boolean),
                      @extschema@.attachment_facts(text),
                      @extschema@.sales(text, daterange),
                      @extschema@.roi(text, daterange, daterange, numeric, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_roi_economics(text, numeric, numeric, numeric),
                          @extschema@.set_margin_rate(text, text, numeric),
                          @extschema@.assign_cohorts(text, numeric, bigint, daterange, integer, boolean) TO loyalty_admin;
-- sales() and roi() run as their caller, who must be able to read the ERP
-- tables; attachment_facts() hands them the facts SQL (text only).
GRANT EXECUTE ON FUNCTION @extschema@.attachment_facts(text),
                          @extschema@.sales(text, daterange),
                          @extschema@.roi(text, daterange, daterange, numeric, date)
    TO loyalty_reader, loyalty_operator, loyalty_admin;
