-- Tiers: the rules settlement re-qualifies by, tiers granted by hand,
-- tiers and balances as of a date, the benefits each tier unlocks, and the
-- partner statement.

-- Extra requirements of a tier on top of its ladder threshold, e.g. Gold
-- needs 250000 of spend AND 2 certifications in the window.
CREATE TABLE @extschema@.tier_requirement (
    program_id integer NOT NULL REFERENCES @extschema@.program,
    tier       text NOT NULL,
    action     text NOT NULL CHECK (action OPERATOR(pg_catalog.<>) ''),
    min_count  bigint NOT NULL CHECK (min_count OPERATOR(pg_catalog.>) 0),
    PRIMARY KEY (program_id, tier, action)
);
COMMENT ON TABLE @extschema@.tier_requirement IS 'Requirements of a tier besides its ladder threshold: at least min_count approved actions of a kind in the rolling window (e.g. revenue AND certifications). Set with loyalty.set_tier_requirement().';
COMMENT ON COLUMN @extschema@.tier_requirement.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_requirement.tier IS 'The ladder tier the requirement gates.';
COMMENT ON COLUMN @extschema@.tier_requirement.action IS 'The action counted (as recorded by the actions of the program, e.g. certification).';
COMMENT ON COLUMN @extschema@.tier_requirement.min_count IS 'Fewest actions in the window that qualify.';

-- Benefit-only tiers (a paid VIP membership) and tiers set by hand: held
-- until revoked, never re-qualified.
CREATE TABLE @extschema@.tier_grant (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    tier        text NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    granted_by  text NOT NULL DEFAULT session_user,
    reason      text,
    PRIMARY KEY (program_id, account_key),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.tier_grant IS 'Tiers granted by an admin (loyalty.grant_tier): the account holds the tier until loyalty.revoke_tier; settlement does not re-qualify it and accrual does not upgrade it.';
COMMENT ON COLUMN @extschema@.tier_grant.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_grant.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.tier_grant.tier IS 'The tier granted: a ladder tier, or a benefit-only tier (one with benefits in loyalty.tier_benefit and no threshold).';
COMMENT ON COLUMN @extschema@.tier_grant.granted_at IS 'When it was granted.';
COMMENT ON COLUMN @extschema@.tier_grant.granted_by IS 'The role that granted it.';
COMMENT ON COLUMN @extschema@.tier_grant.reason IS 'Why (e.g. paid VIP membership).';

-- Backfill's replay of the tier history (src/replay.c): the periods whose
-- tier changes the replay wrote as settlement would have.  settle() refuses
-- them and settle_due() starts after them, so that no period is
-- re-qualified twice.
CREATE TABLE @extschema@.tier_replay (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    attachment_id integer NOT NULL,
    since         date NOT NULL,
    through       date NOT NULL,
    replayed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    accounts      integer NOT NULL CHECK (accounts OPERATOR(pg_catalog.>=) 0),
    tier_changes  bigint NOT NULL CHECK (tier_changes OPERATOR(pg_catalog.>=) 0),
    PRIMARY KEY (program_id, attachment_id)
);
COMMENT ON TABLE @extschema@.tier_replay IS 'The tier history loyalty.backfill() replayed, per program and attached table: upgrades on accrual and re-qualifications at each period end from since to through, written to loyalty.tier_history with reason backfill. Periods ending up to through are not settled again (settle() refuses them, settle_due() starts after them).';
COMMENT ON COLUMN @extschema@.tier_replay.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_replay.attachment_id IS 'The attachment (loyalty.attachment) whose rows were backfilled.';
COMMENT ON COLUMN @extschema@.tier_replay.since IS 'First document month replayed (-infinity: the whole history).';
COMMENT ON COLUMN @extschema@.tier_replay.through IS 'Last day of the last settlement period the replay re-qualified: the day before the period that had not ended when it ran.';
COMMENT ON COLUMN @extschema@.tier_replay.replayed_at IS 'When the last backfill replayed it.';
COMMENT ON COLUMN @extschema@.tier_replay.accounts IS 'Accounts replayed (those with rows from since on).';
COMMENT ON COLUMN @extschema@.tier_replay.tier_changes IS 'Tier history rows the last backfill wrote (0: the history already was the replay''s).';

-- Benefits: named entitlements per tier, typed by their name.
CREATE FUNCTION @extschema@._valid_benefit(benefit text, value pg_catalog.jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE benefit
    WHEN 'payment_terms_days' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>=) 0 AND (value)::text::numeric OPERATOR(pg_catalog.<=) 3650
         AND (value)::text::numeric OPERATOR(pg_catalog.=) pg_catalog.trunc((value)::text::numeric)
    WHEN 'support_sla_hours' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>) 0
    WHEN 'mdf_rate' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'number'
         AND (value)::text::numeric OPERATOR(pg_catalog.>=) 0 AND (value)::text::numeric OPERATOR(pg_catalog.<=) 1
    WHEN 'priority_shipping' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    WHEN 'early_access' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    WHEN 'dedicated_account_manager' THEN pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) 'boolean'
    ELSE pg_catalog.jsonb_typeof(value) OPERATOR(pg_catalog.=) ANY (ARRAY['number', 'string', 'boolean'])
END
$$;
COMMENT ON FUNCTION @extschema@._valid_benefit(text, pg_catalog.jsonb) IS 'Internal: CHECK of loyalty.tier_benefit: the well-known benefits have their types (payment_terms_days whole days, support_sla_hours positive, mdf_rate a fraction 0..1, the others true/false); other names any number, string or boolean.';

CREATE TABLE @extschema@.tier_benefit (
    program_id integer NOT NULL REFERENCES @extschema@.program,
    tier       text NOT NULL,
    benefit    text NOT NULL CHECK (benefit OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'),
    value      jsonb NOT NULL,
    PRIMARY KEY (program_id, tier, benefit),
    CHECK (@extschema@._valid_benefit(benefit, value))
);
COMMENT ON TABLE @extschema@.tier_benefit IS 'What each tier unlocks: named entitlements with typed values (payment_terms_days, support_sla_hours, priority_shipping, mdf_rate, early_access, dedicated_account_manager, or any name the admin defines). Set with loyalty.set_benefit(); read per account through loyalty.account_benefits or loyalty.benefits().';
COMMENT ON COLUMN @extschema@.tier_benefit.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_benefit.tier IS 'A ladder tier or a benefit-only tier (granted with loyalty.grant_tier).';
COMMENT ON COLUMN @extschema@.tier_benefit.benefit IS 'The entitlement''s name (lower case, digits and _).';
COMMENT ON COLUMN @extschema@.tier_benefit.value IS 'Its value as a JSON scalar: a number (payment_terms_days: whole days; support_sla_hours; mdf_rate: fraction, 0.02 = 2 %), true/false (priority_shipping, early_access, dedicated_account_manager) or a string.';

-- One row per enrolled account: its tier's benefits as columns, so that
-- the ERP's order entry reads payment terms with one join.
CREATE VIEW @extschema@.account_benefits AS
SELECT a.program_id, p.name AS program, a.account_key, a.tier,
       (b.v ->> 'payment_terms_days')::integer AS payment_terms_days,
       (b.v ->> 'support_sla_hours')::numeric AS support_sla_hours,
       coalesce((b.v ->> 'priority_shipping')::boolean, false) AS priority_shipping,
       coalesce((b.v ->> 'mdf_rate')::numeric, 0) AS mdf_rate,
       coalesce((b.v ->> 'early_access')::boolean, false) AS early_access,
       coalesce((b.v ->> 'dedicated_account_manager')::boolean, false) AS dedicated_account_manager,
       coalesce(b.v, '{}') AS benefits
FROM @extschema@.account a
JOIN @extschema@.program p ON p.program_id = a.program_id
LEFT JOIN LATERAL (SELECT pg_catalog.jsonb_object_agg(t.benefit, t.value) AS v FROM @extschema@.tier_benefit t
                   WHERE t.program_id = a.program_id AND t.tier = a.tier) b ON true;
COMMENT ON VIEW @extschema@.account_benefits IS 'Every enrolled account with the benefits of its current tier, one row each: join it to the ERP''s orders on (program, account_key) for payment terms, SLA, shipping priority. Accounts without a tier (or whose tier has no benefits) get NULL terms and false / 0 for the rest.';
COMMENT ON COLUMN @extschema@.account_benefits.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.account_benefits.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.account_benefits.account_key IS 'The ERP''s customer key in text form.';
COMMENT ON COLUMN @extschema@.account_benefits.tier IS 'The account''s current tier.';
COMMENT ON COLUMN @extschema@.account_benefits.payment_terms_days IS 'Payment terms in days (NULL: the ERP''s default).';
COMMENT ON COLUMN @extschema@.account_benefits.support_sla_hours IS 'Support response time in hours (NULL: the standard SLA).';
COMMENT ON COLUMN @extschema@.account_benefits.priority_shipping IS 'Orders ship with priority.';
COMMENT ON COLUMN @extschema@.account_benefits.mdf_rate IS 'Market development funds accrued per unit of qualifying spend (0.02 = 2 %).';
COMMENT ON COLUMN @extschema@.account_benefits.early_access IS 'Early access to new products.';
COMMENT ON COLUMN @extschema@.account_benefits.dedicated_account_manager IS 'A dedicated account manager.';
COMMENT ON COLUMN @extschema@.account_benefits.benefits IS 'Every benefit of the tier as a JSON object, those the admin defined included.';

-- The tier of an account on a date: the tier documents dated that day earn
-- by (the tier history, as the accrual reads it).  PL/pgSQL, not SQL: on
-- Citus, tier_history is distributed, and Citus plans a query with
-- parameters on it only as PL/pgSQL's custom plan, never in a SQL function.
CREATE FUNCTION @extschema@._tier_at(program_id integer, account_key text, as_of date) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT h.new_tier FROM @extschema@.tier_history h
            WHERE h.program_id OPERATOR(pg_catalog.=) _tier_at.program_id
              AND h.account_key OPERATOR(pg_catalog.=) _tier_at.account_key::@extschema@.account_key
              AND h.effective_from OPERATOR(pg_catalog.<=) _tier_at.as_of
            ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1);
END
$$;
COMMENT ON FUNCTION @extschema@._tier_at(integer, text, date) IS 'Internal: an account''s tier on a date, from loyalty.tier_history (NULL: none).';

-- A benefit of an account on a date, e.g. the MDF rate a claim earns.
CREATE FUNCTION @extschema@._benefit(program_id integer, account_key text, benefit text, as_of date) RETURNS pg_catalog.jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _benefit.program_id
          AND b.tier OPERATOR(pg_catalog.=) @extschema@._tier_at(_benefit.program_id, _benefit.account_key::text, _benefit.as_of)
          AND b.benefit OPERATOR(pg_catalog.=) _benefit.benefit)
$$;
COMMENT ON FUNCTION @extschema@._benefit(integer, text, text, date) IS 'Internal: the value of one benefit of an account on a date (by its tier that day), NULL when its tier has none; e.g. _benefit(program_id, account_key, ''mdf_rate'', d)::numeric.';

-- What the tier basis measures for one account over the window ending with
-- as_of's month.
CREATE FUNCTION @extschema@._measure(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    win_start date;
    r numeric;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = _measure.program_id;
    win_start := (date_trunc('month', as_of::timestamp)
                  - make_interval(months => @extschema@._window_months(prog.qualification_window) - 1))::date;
    IF prog.tier_basis = 'action' THEN
        SELECT coalesce(sum(c.actions), 0) INTO r
        FROM @extschema@._action_counts(prog.program_id, prog.tier_action, win_start, as_of + 1) c
        WHERE c.account_key = _measure.account_key;
    ELSE
        SELECT coalesce(sum(CASE prog.tier_basis WHEN 'points' THEN m.points ELSE m.qualifying END), 0) INTO r
        FROM @extschema@.accrual_month m
        WHERE m.program_id = prog.program_id AND m.account_key = _measure.account_key::@extschema@.account_key
          AND m.month >= win_start AND m.month <= as_of;
    END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@._measure(integer, text, date) IS 'Internal: what the program''s tier basis measures for an account over the rolling window ending with the month of as_of.';

CREATE FUNCTION @extschema@.set_tier_rules(program text, basis text DEFAULT NULL, action text DEFAULT NULL,
                                           grace text DEFAULT NULL, grace_value numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    cur @extschema@.program;
    v_basis text;
    v_grace text;
    v_value numeric;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT * INTO cur FROM @extschema@.program p WHERE p.name = set_tier_rules.program;
    IF basis IS NOT NULL AND basis <> ALL (ARRAY['qualifying', 'points', 'action']) THEN
        RAISE EXCEPTION 'invalid value for basis: %', quote_literal(basis)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'basis must be one of qualifying, points, action (NULL keeps the current one).',
                  HINT = 'For example basis => ''qualifying''.';
    END IF;
    IF grace IS NOT NULL AND grace <> ALL (ARRAY['none', 'one_level', 'margin', 'periods']) THEN
        RAISE EXCEPTION 'invalid value for grace: %', quote_literal(grace)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'grace must be one of none, one_level, margin, periods (NULL keeps the current one).',
                  HINT = 'For example grace => ''one_level''.';
    END IF;
    IF action = '' OR (action IS NOT NULL AND coalesce(basis, cur.tier_basis) <> 'action') THEN
        RAISE EXCEPTION 'action % is counted only with basis action', quote_literal(action)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'action names the action whose count the ladder''s thresholds measure when basis is action; extra requirements of a tier go to loyalty.set_tier_requirement().',
                  HINT = 'For example basis => ''action'', action => ''certification''.';
    END IF;
    v_basis := coalesce(basis, cur.tier_basis);
    v_grace := coalesce(grace, cur.tier_grace);
    v_value := coalesce(grace_value, CASE WHEN v_grace = cur.tier_grace THEN cur.tier_grace_value END);
    IF v_basis = 'action' AND coalesce(action, cur.tier_action) IS NULL THEN
        RAISE EXCEPTION 'basis action needs the action to count (action is NULL)'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'With basis => ''action'' the ladder''s thresholds are counts of one action in the window.',
                  HINT = 'For example loyalty.set_tier_rules(''Partner Network'', basis => ''action'', action => ''certification'').';
    END IF;
    IF v_grace = 'margin' AND (v_value IS NULL OR v_value <= 0 OR v_value >= 1) THEN
        RAISE EXCEPTION 'grace margin must be a fraction between 0 and 1, not %', coalesce(v_value::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'With grace => ''margin'' an account keeps a tier while its measure is at least threshold * (1 - grace_value).',
                  HINT = 'For example grace => ''margin'', grace_value => 0.1 (10 % below the threshold).';
    END IF;
    IF v_grace = 'periods' AND (v_value IS NULL OR v_value < 1 OR v_value > 100 OR v_value <> trunc(v_value)) THEN
        RAISE EXCEPTION 'grace periods must be a whole number from 1 to 100, not %', coalesce(v_value::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'With grace => ''periods'' an account drops only in the grace_value-th settled period in a row below its tier.',
                  HINT = 'For example grace => ''periods'', grace_value => 2.';
    END IF;
    IF v_grace IN ('none', 'one_level') AND grace_value IS NOT NULL THEN
        RAISE EXCEPTION 'grace % takes no grace_value', v_grace
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'grace_value is the margin of grace => ''margin'' or the count of grace => ''periods''.',
                  HINT = 'Leave grace_value out.';
    END IF;
    UPDATE @extschema@.program p
    SET tier_basis = v_basis,
        tier_action = CASE WHEN v_basis = 'action' THEN coalesce(set_tier_rules.action, cur.tier_action) END,
        tier_grace = v_grace,
        tier_grace_value = CASE WHEN v_grace IN ('margin', 'periods') THEN v_value END
    WHERE p.program_id = cur.program_id;
END
$$;
COMMENT ON FUNCTION @extschema@.set_tier_rules(text, text, text, text, numeric) IS
    'Sets how settlement re-qualifies tiers: basis (qualifying spend, points, or the count of an action), and the grace rule for downgrades (none, one_level, margin with a fraction, periods with a count). Arguments left NULL keep their value.';

CREATE FUNCTION @extschema@.set_tier_requirement(program text, tier text, action text, min_count bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = set_tier_requirement.program;
    IF tier IS NULL THEN
        RAISE EXCEPTION 'tier must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'tier names the ladder tier the requirement gates.',
            HINT = 'For example loyalty.set_tier_requirement(''Partner Network'', ''Gold'', ''certification'', 2).';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.program p, @extschema@.tiers(p.ladder) t
                   WHERE p.program_id = pid AND t.name = set_tier_requirement.tier) THEN
        RAISE EXCEPTION 'tier "%" is not on the ladder of program "%"', tier, program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Requirements gate ladder tiers at settlement.',
                  HINT = pg_catalog.format('Tiers: %s.', (SELECT p.ladder FROM @extschema@.program p WHERE p.program_id = pid));
    END IF;
    IF action IS NULL OR action = '' THEN
        RAISE EXCEPTION 'action must not be NULL or empty' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'action names the action counted (as the program records actions).',
            HINT = 'For example action => ''certification''.';
    END IF;
    IF min_count < 0 THEN
        RAISE EXCEPTION 'min_count must be positive, not %', min_count USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'min_count is the fewest actions in the window that qualify; 0 or NULL removes the requirement.',
            HINT = 'For example min_count => 2.';
    END IF;
    IF coalesce(min_count, 0) = 0 THEN
        DELETE FROM @extschema@.tier_requirement r
        WHERE r.program_id = pid AND r.tier = set_tier_requirement.tier AND r.action = set_tier_requirement.action;
    ELSE
        INSERT INTO @extschema@.tier_requirement AS r (program_id, tier, action, min_count)
        VALUES (pid, tier, action, min_count)
        ON CONFLICT ON CONSTRAINT tier_requirement_pkey DO UPDATE SET min_count = excluded.min_count;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.set_tier_requirement(text, text, text, bigint) IS
    'Requires at least min_count approved actions (e.g. certifications) in the rolling window for a ladder tier, on top of its threshold; min_count 0 or NULL removes the requirement.';

CREATE FUNCTION @extschema@.set_benefit(program text, tier text, benefit text, value pg_catalog.jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = set_benefit.program;
    IF tier IS NULL OR tier = '' OR benefit IS NULL THEN
        RAISE EXCEPTION '% must not be NULL or empty', CASE WHEN benefit IS NULL THEN 'benefit' ELSE 'tier' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'tier names a ladder tier or a benefit-only tier; benefit names the entitlement.',
                  HINT = 'For example loyalty.set_benefit(''Distributor Club'', ''Gold'', ''payment_terms_days'', ''45'').';
    END IF;
    IF value IS NULL THEN
        DELETE FROM @extschema@.tier_benefit b
        WHERE b.program_id = pid AND b.tier = set_benefit.tier AND b.benefit = set_benefit.benefit;
        RETURN;
    END IF;
    IF benefit !~ '^[a-z][a-z0-9_]{0,62}$' OR NOT @extschema@._valid_benefit(benefit, value) THEN
        RAISE EXCEPTION 'invalid benefit "%" or value %', benefit, value
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'payment_terms_days: whole days 0 to 3650; support_sla_hours: a positive number; mdf_rate: a fraction 0 to 1; priority_shipping, early_access, dedicated_account_manager: true or false; other names (lower case, digits, _): a number, string or boolean.',
                  HINT = 'For example loyalty.set_benefit(''Distributor Club'', ''Gold'', ''mdf_rate'', ''0.02'').';
    END IF;
    INSERT INTO @extschema@.tier_benefit AS b (program_id, tier, benefit, value)
    VALUES (pid, tier, benefit, value)
    ON CONFLICT ON CONSTRAINT tier_benefit_pkey DO UPDATE SET value = excluded.value;
END
$$;
COMMENT ON FUNCTION @extschema@.set_benefit(text, text, text, pg_catalog.jsonb) IS
    'Sets what a tier unlocks: one named entitlement and its value (a JSON scalar, typed by the well-known names); NULL removes it. A tier name that is not on the ladder defines a benefit-only tier, held through loyalty.grant_tier.';

-- Tier changes by hand, under the program's tier lock (one tier writer at a
-- time, as fold and settlement).
CREATE FUNCTION @extschema@._set_tier(pid integer, account text, new_tier text, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_tier text;
    tomorrow date := @extschema@._today(pid) + 1;
    since timestamptz;
    change bigint;
    last_doc date;
BEGIN
    PERFORM @extschema@._tier_lock(pid);
    SELECT a.tier INTO old_tier FROM @extschema@.account a
    WHERE a.program_id = pid AND a.account_key = account::@extschema@.account_key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = pid)
            USING ERRCODE = 'no_data_found',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF old_tier IS NOT DISTINCT FROM new_tier THEN
        RETURN;
    END IF;
    -- values first, then the writes: on Citus, a write to a distributed
    -- table may hold neither a sub-select nor now() inside a CASE
    since := CASE WHEN new_tier IS NULL THEN NULL ELSE now() END;
    SELECT coalesce(max(h.change_no), 0) + 1 INTO change FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = account::@extschema@.account_key;
    SELECT b.last_doc_date + 1 INTO last_doc FROM @extschema@.balance b
    WHERE b.program_id = pid AND b.account_key = account::@extschema@.account_key;
    UPDATE @extschema@.account a SET tier = new_tier, tier_since = since
    WHERE a.program_id = pid AND a.account_key = account::@extschema@.account_key;
    INSERT INTO @extschema@.tier_history (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason)
    VALUES (pid, (account OPERATOR(pg_catalog.||) '')::@extschema@.account_key, change, greatest(tomorrow, coalesce(last_doc, tomorrow)), old_tier, new_tier, why);
END
$$;
COMMENT ON FUNCTION @extschema@._set_tier(integer, text, text, text) IS 'Internal: changes an account''s tier by hand (account row and tier history), from tomorrow.';

CREATE FUNCTION @extschema@.grant_tier(program text, account_key text, tier text, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = grant_tier.program;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = grant_tier.account_key::@extschema@.account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', coalesce(account_key, 'NULL'), program
            USING ERRCODE = CASE WHEN account_key IS NULL THEN 'null_value_not_allowed' ELSE 'no_data_found' END,
                  DETAIL = 'A tier is granted to an enrolled account.',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF tier IS NULL OR NOT (EXISTS (SELECT FROM @extschema@.program p, @extschema@.tiers(p.ladder) t
                                    WHERE p.program_id = pid AND t.name = grant_tier.tier)
                            OR EXISTS (SELECT FROM @extschema@.tier_benefit b
                                       WHERE b.program_id = pid AND b.tier = grant_tier.tier)) THEN
        RAISE EXCEPTION 'program "%" has no tier "%"', program, coalesce(tier, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A tier granted by hand is a ladder tier or a benefit-only tier (one with benefits and no threshold).',
                  HINT = 'Define a benefit-only tier with loyalty.set_benefit(program, tier, benefit, value) first.';
    END IF;
    PERFORM @extschema@._set_tier(pid, account_key, tier, 'manual');
    INSERT INTO @extschema@.tier_grant AS g (program_id, account_key, tier, reason)
    VALUES (pid, (account_key OPERATOR(pg_catalog.||) '')::@extschema@.account_key, tier, reason)
    ON CONFLICT ON CONSTRAINT tier_grant_pkey DO UPDATE
    SET tier = excluded.tier, reason = excluded.reason, granted_at = excluded.granted_at, granted_by = excluded.granted_by;
END
$$;
COMMENT ON FUNCTION @extschema@.grant_tier(text, text, text, text) IS
    'Gives an account a tier by hand (a paid VIP membership, a strategic partner) from tomorrow on; it holds it through re-qualification until loyalty.revoke_tier. Recorded in loyalty.tier_history with reason manual.';

CREATE FUNCTION @extschema@.revoke_tier(program text, account_key text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    qualified text;
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = revoke_tier.program;
    DELETE FROM @extschema@.tier_grant g WHERE g.program_id = pid AND g.account_key = revoke_tier.account_key::@extschema@.account_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account_key "%" holds no tier granted by hand in program "%"', coalesce(account_key, 'NULL'), program
            USING ERRCODE = CASE WHEN account_key IS NULL THEN 'null_value_not_allowed' ELSE 'no_data_found' END,
                  DETAIL = 'revoke_tier ends a tier given with loyalty.grant_tier().',
                  HINT = 'Granted tiers: SELECT * FROM loyalty.tier_grant.';
    END IF;
    -- back to what the account qualifies for today
    SELECT @extschema@.tier_of(p.ladder, @extschema@._measure(pid, revoke_tier.account_key, @extschema@._today(pid)))
    INTO qualified FROM @extschema@.program p WHERE p.program_id = pid;
    PERFORM @extschema@._set_tier(pid, account_key, qualified, 'manual');
    RETURN qualified;
END
$$;
COMMENT ON FUNCTION @extschema@.revoke_tier(text, text) IS
    'Ends a tier granted by hand: the account returns, from tomorrow on, to the ladder tier its rolling measure reaches today (returned), and is re-qualified by settlement again.';

-- As of a date.  Checks its own arguments.
CREATE FUNCTION @extschema@.tier(program text, account_key text, as_of date) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.tier(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    IF as_of IS NULL OR NOT isfinite(as_of) THEN
        RAISE EXCEPTION 'as_of must be a date, not %', coalesce(as_of::text, 'NULL')
            USING ERRCODE = CASE WHEN as_of IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'as_of is the day whose tier is asked for.',
                  HINT = 'For example loyalty.tier(''Distributor Club'', ''1042'', ''2025-03-31''); without a date: loyalty.tier(program, account_key).';
    END IF;
    RETURN @extschema@._tier_at((SELECT p.program_id FROM @extschema@.program p WHERE p.name = tier.program), account_key, as_of);
END
$$;
COMMENT ON FUNCTION @extschema@.tier(text, text, date) IS
    'An account''s tier on a date: the tier its documents dated that day earn by (loyalty.tier_history); NULL when it had none.';

CREATE FUNCTION @extschema@.balance(program text, account_key text, as_of date,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    zone text;
    win_start date;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    IF as_of IS NULL OR NOT isfinite(as_of) THEN
        RAISE EXCEPTION 'as_of must be a date, not %', coalesce(as_of::text, 'NULL')
            USING ERRCODE = CASE WHEN as_of IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'as_of is the day whose closing balance is asked for.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'', ''2025-03-31''); without a date: loyalty.balance(program, account_key).';
    END IF;
    SELECT p.program_id, p.time_zone,
           (date_trunc('month', as_of::timestamp)
            - make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
    INTO pid, zone, win_start FROM @extschema@.program p WHERE p.name = balance.program;
    -- the ledger as it stood at the end of as_of in the program's calendar
    SELECT coalesce(sum(l.points), 0), coalesce(sum(l.qualifying), 0) INTO points, qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = balance.account_key::@extschema@.account_key
      AND l.posted_at < ((as_of + 1)::timestamp AT TIME ZONE zone);
    -- the rolling window ending with as_of's month, by document date
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key::@extschema@.account_key
      AND m.month >= win_start AND m.month <= as_of;
    tier := @extschema@._tier_at(pid, account_key, as_of);
END
$$;
COMMENT ON FUNCTION @extschema@.balance(text, text, date) IS
    'An account''s balance on a date: points and lifetime qualifying spend of the ledger entries posted up to the end of as_of (program''s time zone), the rolling qualifying spend of the window ending with as_of''s month (by document date), and the tier documents of that day earn by.';

CREATE FUNCTION @extschema@.benefits(program text, account_key text)
RETURNS TABLE (benefit text, value pg_catalog.jsonb, tier text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.benefits(''Distributor Club'', ''1042'').';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = benefits.program;
    RETURN QUERY
    SELECT b.benefit, b.value, b.tier
    FROM @extschema@.account a JOIN @extschema@.tier_benefit b ON b.program_id = a.program_id AND b.tier = a.tier
    WHERE a.program_id = pid AND a.account_key = benefits.account_key::@extschema@.account_key
    ORDER BY b.benefit;
END
$$;
COMMENT ON FUNCTION @extschema@.benefits(text, text) IS
    'The benefits of an account''s current tier, one row per entitlement (none without a tier).';

-- The partner statement / QBR, as (section, item, value) rows: readable in
-- psql, pivotable by a BI tool.
CREATE FUNCTION @extschema@.statement(program text, account_key text, period_end date)
RETURNS TABLE (section text, item text, value text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e text[] := @extschema@._program_problem(program);
    pid integer;
    prog @extschema@.program;
    pstart date;
    t text;
    since date;
    m numeric;
    nxt record;
    outcome text;
    zone_end timestamptz;
    zone_start timestamptz;
    soon bigint;
    closing bigint;
BEGIN
    -- a partner's login reads its own account only (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account_key);
    e := coalesce(e, @extschema@._period_end_problem((SELECT p.program_id FROM @extschema@.program p WHERE p.name = statement.program),
                                                     period_end));
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF account_key IS NULL THEN
        RAISE EXCEPTION 'account_key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'account_key is the ERP''s customer key in text form.',
            HINT = 'For example loyalty.statement(''Distributor Club'', ''1042'', ''2025-03-31'').';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name = statement.program;
    pid := prog.program_id;
    pstart := @extschema@._period_start(pid, period_end);
    zone_start := pstart::timestamp AT TIME ZONE prog.time_zone;
    zone_end := (period_end + 1)::timestamp AT TIME ZONE prog.time_zone;
    -- the tier the period's settlement decided (in force from the day it
    -- ran), or, for a period not settled yet, the tier of its last day
    SELECT s.new_tier, s.outcome, s.measure INTO t, outcome, m FROM @extschema@.settlement_account s
    WHERE s.program_id = pid AND s.account_key = statement.account_key::@extschema@.account_key AND s.period_end = statement.period_end;
    IF NOT FOUND THEN
        t := @extschema@._tier_at(pid, account_key, period_end);
        m := @extschema@._measure(pid, account_key, period_end);
        outcome := 'not settled yet';
    END IF;
    SELECT max(h.effective_from) INTO since FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = statement.account_key::@extschema@.account_key AND h.new_tier = t;
    -- the next tier above the account's tier (or above what it measures)
    SELECT x.name, x.threshold, greatest(x.threshold - m, 0) AS gap INTO nxt
    FROM @extschema@.tiers(prog.ladder) x
    WHERE x.rank > greatest(coalesce((SELECT y.rank FROM @extschema@.tiers(prog.ladder) y WHERE y.name = t), 0),
                            coalesce(@extschema@.tier_rank(prog.ladder, m), 0))
    ORDER BY x.rank LIMIT 1;

    RETURN QUERY VALUES ('period', 'from', pstart::text), ('period', 'to', period_end::text),
                        ('tier', 'tier', t), ('tier', 'since', since::text), ('tier', 'settlement', outcome),
                        ('tier', 'measure (' || prog.tier_basis || ', rolling window)', m::text),
                        ('progress', 'next tier', nxt.name), ('progress', 'threshold', nxt.threshold::text),
                        ('progress', 'missing', nxt.gap::text);
    -- points earned in the period: accrual by document month and ERP table,
    -- the other kinds by posting date
    RETURN QUERY
    SELECT 'points earned', coalesce(a.source_name, '(unknown table)'), sum(x.points)::text
    FROM @extschema@.accrual_month x LEFT JOIN @extschema@.attachment a ON a.attachment_id = x.attachment_id
    WHERE x.program_id = pid AND x.account_key = statement.account_key::@extschema@.account_key AND x.month >= pstart AND x.month <= period_end
    GROUP BY a.source_name ORDER BY a.source_name;
    RETURN QUERY
    SELECT 'points earned', l.kind::text, sum(l.points)::text
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
      AND l.kind IN ('award', 'adjust') AND l.posted_at >= zone_start AND l.posted_at < zone_end
    GROUP BY l.kind ORDER BY l.kind;
    -- as values: on Citus the query below runs on the account's shard, where
    -- these functions could not read the configuration by name
    soon := @extschema@._expiring_soon(pid, account_key, period_end);
    closing := (SELECT b.points FROM @extschema@.balance(program, account_key, period_end) b);
    RETURN QUERY
    SELECT 'points', v.item, v.value FROM (VALUES
        ('redeemed', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                      WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key AND l.kind = 'redeem'
                        AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expired', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                     WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key AND l.kind = 'expire'
                       AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expiring soon', soon::text),
        ('balance at period end', closing::text)) v(item, value);
    RETURN QUERY
    SELECT 'rebates', v.item, v.value FROM (VALUES
        ('accrued in period', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                               WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
                                 AND l.rebate <> 0 AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('balance at period end', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                                   WHERE l.program_id = pid AND l.account_key = statement.account_key::@extschema@.account_key
                                     AND l.rebate <> 0 AND l.posted_at < zone_end))) v(item, value);
    RETURN QUERY
    SELECT 'benefits', b.benefit, b.value::text FROM @extschema@.tier_benefit b
    WHERE b.program_id = pid AND b.tier = t ORDER BY b.benefit;
    -- what the next tier would add or change
    RETURN QUERY
    SELECT 'next tier unlocks', n.benefit, n.value::text FROM @extschema@.tier_benefit n
    WHERE n.program_id = pid AND n.tier = nxt.name
      AND n.value IS DISTINCT FROM (SELECT b.value FROM @extschema@.tier_benefit b
                                    WHERE b.program_id = pid AND b.tier = t AND b.benefit = n.benefit)
    ORDER BY n.benefit;
END
$$;
COMMENT ON FUNCTION @extschema@.statement(text, text, date) IS
    'The partner statement (QBR) of an account for the settlement period ending on period_end, as (section, item, value) rows: the tier the period''s settlement decided (or, not settled yet, the tier of its last day) and since when, the measure and what is missing to the next tier above it, points earned by ERP table and kind, redeemed, expired, expiring soon, balance, rebates, benefits, and what the next tier unlocks.';

GRANT SELECT ON @extschema@.tier_requirement, @extschema@.tier_grant, @extschema@.tier_benefit, @extschema@.account_benefits
TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON @extschema@.tier_replay TO loyalty_reader, loyalty_operator, loyalty_admin;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_replay', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_requirement', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_grant', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_benefit', '');
REVOKE ALL ON FUNCTION @extschema@.set_tier_rules(text, text, text, text, numeric),
                      @extschema@.set_tier_requirement(text, text, text, bigint),
                      @extschema@.set_benefit(text, text, text, pg_catalog.jsonb),
                      @extschema@.grant_tier(text, text, text, text), @extschema@.revoke_tier(text, text),
                      @extschema@.tier(text, text, date), @extschema@.balance(text, text, date),
                      @extschema@.benefits(text, text), @extschema@.statement(text, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_tier_rules(text, text, text, text, numeric),
                          @extschema@.set_tier_requirement(text, text, text, bigint),
                          @extschema@.set_benefit(text, text, text, pg_catalog.jsonb),
                          @extschema@.grant_tier(text, text, text, text), @extschema@.revoke_tier(text, text) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.tier(text, text, date), @extschema@.balance(text, text, date),
                          @extschema@.benefits(text, text), @extschema@.statement(text, text, date)
TO loyalty_reader, loyalty_operator, loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._valid_benefit(text, pg_catalog.jsonb), @extschema@._tier_at(integer, text, date),
                      @extschema@._benefit(integer, text, text, date), @extschema@._measure(integer, text, date),
                      @extschema@._set_tier(integer, text, text, text) FROM PUBLIC;
