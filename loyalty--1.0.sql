\echo Use "CREATE EXTENSION loyalty" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The two base types: tier_ladder and rebate_schedule (src/tier_ladder.c,
-- src/rebate_schedule.c, src/literal.c).
-- ---------------------------------------------------------------------------

-- tier_ladder ---------------------------------------------------------------

CREATE TYPE @extschema@.tier_ladder;

CREATE FUNCTION @extschema@.tier_ladder_in(pg_catalog.cstring)
RETURNS @extschema@.tier_ladder
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_in'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.tier_ladder_out(@extschema@.tier_ladder)
RETURNS pg_catalog.cstring
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_out'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.tier_ladder_recv(pg_catalog.internal)
RETURNS @extschema@.tier_ladder
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_recv'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.tier_ladder_send(@extschema@.tier_ladder)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_send'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE @extschema@.tier_ladder (
    INPUT = @extschema@.tier_ladder_in,
    OUTPUT = @extschema@.tier_ladder_out,
    RECEIVE = @extschema@.tier_ladder_recv,
    SEND = @extschema@.tier_ladder_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = int4,
    STORAGE = extended
);

COMMENT ON TYPE @extschema@.tier_ladder IS
'Ordered named tier thresholds, e.g. ''Member:0, Silver:50000, Gold:250000, Platinum:1000000''. 1 to 64 tiers; names 1 to 63 bytes, distinct ignoring case, double-quoted when they hold characters other than letters, digits, spaces and _ - . / &; thresholds 0 or more, strictly ascending, at most 15 digits before and 6 after the decimal point. Printed in canonical form: insignificant zeros dropped, so ''Gold:50000.00'' = ''Gold:50000''.';
COMMENT ON FUNCTION @extschema@.tier_ladder_in(pg_catalog.cstring) IS
'Text input of tier_ladder: parses, validates and canonicalises a literal such as ''Member:0, Silver:50000''.';
COMMENT ON FUNCTION @extschema@.tier_ladder_out(@extschema@.tier_ladder) IS
'Text output of tier_ladder: the canonical literal, Name:threshold pairs joined by ", ".';
COMMENT ON FUNCTION @extschema@.tier_ladder_recv(pg_catalog.internal) IS
'Binary input of tier_ladder: reads the versioned binary form and validates it exactly as text input does.';
COMMENT ON FUNCTION @extschema@.tier_ladder_send(@extschema@.tier_ladder) IS
'Binary output of tier_ladder: a versioned compact form (version, tier count, then each name and threshold).';

CREATE FUNCTION @extschema@.tier_ladder_eq(@extschema@.tier_ladder, @extschema@.tier_ladder)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_eq'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.tier_ladder_ne(@extschema@.tier_ladder, @extschema@.tier_ladder)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_ne'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.tier_ladder_hash(@extschema@.tier_ladder)
RETURNS pg_catalog.int4
AS 'MODULE_PATHNAME', 'loyalty_tier_ladder_hash'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.tier_ladder_eq(@extschema@.tier_ladder, @extschema@.tier_ladder) IS
'True when two ladders have the same tiers in the same order: same names (exact case) and equal thresholds.';
COMMENT ON FUNCTION @extschema@.tier_ladder_ne(@extschema@.tier_ladder, @extschema@.tier_ladder) IS
'True when two ladders differ in any tier name, threshold or order.';
COMMENT ON FUNCTION @extschema@.tier_ladder_hash(@extschema@.tier_ladder) IS
'Hash of a tier_ladder, consistent with =, for hash joins, GROUP BY and DISTINCT.';

CREATE OPERATOR @extschema@.= (
    LEFTARG = @extschema@.tier_ladder,
    RIGHTARG = @extschema@.tier_ladder,
    FUNCTION = @extschema@.tier_ladder_eq,
    COMMUTATOR = OPERATOR(@extschema@.=),
    NEGATOR = OPERATOR(@extschema@.<>),
    RESTRICT = pg_catalog.eqsel,
    JOIN = pg_catalog.eqjoinsel,
    HASHES
);

CREATE OPERATOR @extschema@.<> (
    LEFTARG = @extschema@.tier_ladder,
    RIGHTARG = @extschema@.tier_ladder,
    FUNCTION = @extschema@.tier_ladder_ne,
    COMMUTATOR = OPERATOR(@extschema@.<>),
    NEGATOR = OPERATOR(@extschema@.=),
    RESTRICT = pg_catalog.neqsel,
    JOIN = pg_catalog.neqjoinsel
);

COMMENT ON OPERATOR @extschema@.= (@extschema@.tier_ladder, @extschema@.tier_ladder) IS
'equal tier ladders';
COMMENT ON OPERATOR @extschema@.<> (@extschema@.tier_ladder, @extschema@.tier_ladder) IS
'different tier ladders';

CREATE OPERATOR CLASS @extschema@.tier_ladder_hash_ops
    DEFAULT FOR TYPE @extschema@.tier_ladder USING hash AS
    OPERATOR 1 @extschema@.= (@extschema@.tier_ladder, @extschema@.tier_ladder),
    FUNCTION 1 @extschema@.tier_ladder_hash(@extschema@.tier_ladder);

CREATE FUNCTION @extschema@.tier_of(ladder @extschema@.tier_ladder, amount pg_catalog.numeric)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'loyalty_tier_of'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.tier_of(@extschema@.tier_ladder, pg_catalog.numeric) IS
'Name of the highest tier whose threshold is at most amount (an amount exactly on a threshold reaches that tier); NULL below the first threshold. A negative amount (net credit after credit notes) counts as 0. NaN and Infinity are an error.';

CREATE FUNCTION @extschema@.tier_rank(ladder @extschema@.tier_ladder, amount pg_catalog.numeric)
RETURNS pg_catalog.int4
AS 'MODULE_PATHNAME', 'loyalty_tier_rank'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.tier_rank(@extschema@.tier_ladder, pg_catalog.numeric) IS
'1-based rank (1 = lowest tier) of the tier that tier_of() returns; NULL below the first threshold. A negative amount counts as 0.';

CREATE FUNCTION @extschema@.next_tier(ladder @extschema@.tier_ladder, amount pg_catalog.numeric,
                                      OUT name pg_catalog.text,
                                      OUT threshold pg_catalog.numeric,
                                      OUT gap pg_catalog.numeric)
RETURNS pg_catalog.record
AS 'MODULE_PATHNAME', 'loyalty_next_tier'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.next_tier(@extschema@.tier_ladder, pg_catalog.numeric) IS
'The tier above the one amount reaches (the first tier when below it), its threshold, and the gap = threshold - amount still to go; one row of NULLs at the top tier. A negative amount counts as 0, so the gap is measured from 0.';

CREATE FUNCTION @extschema@.tiers(ladder @extschema@.tier_ladder)
RETURNS TABLE (rank pg_catalog.int4, name pg_catalog.text, threshold pg_catalog.numeric)
AS 'MODULE_PATHNAME', 'loyalty_tiers'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
ROWS 8;

COMMENT ON FUNCTION @extschema@.tiers(@extschema@.tier_ladder) IS
'The tiers of a ladder, one row each, lowest first: rank (1-based), name and threshold.';

-- rebate_schedule -----------------------------------------------------------

CREATE TYPE @extschema@.rebate_schedule;

CREATE FUNCTION @extschema@.rebate_schedule_in(pg_catalog.cstring)
RETURNS @extschema@.rebate_schedule
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_in'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.rebate_schedule_out(@extschema@.rebate_schedule)
RETURNS pg_catalog.cstring
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_out'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.rebate_schedule_recv(pg_catalog.internal)
RETURNS @extschema@.rebate_schedule
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_recv'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.rebate_schedule_send(@extschema@.rebate_schedule)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_send'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE @extschema@.rebate_schedule (
    INPUT = @extschema@.rebate_schedule_in,
    OUTPUT = @extschema@.rebate_schedule_out,
    RECEIVE = @extschema@.rebate_schedule_recv,
    SEND = @extschema@.rebate_schedule_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = int4,
    STORAGE = extended
);

COMMENT ON TYPE @extschema@.rebate_schedule IS
'Volume rebate brackets with a mode, e.g. ''retro: 0:0%, 100000:2%, 500000:3.5%''. retro: the rate of the highest bracket reached applies to the whole volume; marginal: each bracket''s slice earns its own rate. 1 to 64 brackets; thresholds 0 or more, strictly ascending (volume below the first earns 0%); rates 0% to 100%; numbers at most 15 digits before and 6 after the decimal point. Printed in canonical form: lower-case mode, insignificant zeros dropped.';
COMMENT ON FUNCTION @extschema@.rebate_schedule_in(pg_catalog.cstring) IS
'Text input of rebate_schedule: parses, validates and canonicalises a literal such as ''marginal: 0:1%, 50000:2%''.';
COMMENT ON FUNCTION @extschema@.rebate_schedule_out(@extschema@.rebate_schedule) IS
'Text output of rebate_schedule: the canonical literal, mode then threshold:rate% brackets joined by ", ".';
COMMENT ON FUNCTION @extschema@.rebate_schedule_recv(pg_catalog.internal) IS
'Binary input of rebate_schedule: reads the versioned binary form and validates it exactly as text input does.';
COMMENT ON FUNCTION @extschema@.rebate_schedule_send(@extschema@.rebate_schedule) IS
'Binary output of rebate_schedule: a versioned compact form (version, mode, bracket count, then each threshold and rate).';

CREATE FUNCTION @extschema@.rebate_schedule_eq(@extschema@.rebate_schedule, @extschema@.rebate_schedule)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_eq'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.rebate_schedule_ne(@extschema@.rebate_schedule, @extschema@.rebate_schedule)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_ne'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule)
RETURNS pg_catalog.int4
AS 'MODULE_PATHNAME', 'loyalty_rebate_schedule_hash'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.rebate_schedule_eq(@extschema@.rebate_schedule, @extschema@.rebate_schedule) IS
'True when two schedules have the same mode and the same brackets (equal thresholds and rates).';
COMMENT ON FUNCTION @extschema@.rebate_schedule_ne(@extschema@.rebate_schedule, @extschema@.rebate_schedule) IS
'True when two schedules differ in mode or in any bracket.';
COMMENT ON FUNCTION @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule) IS
'Hash of a rebate_schedule, consistent with =, for hash joins, GROUP BY and DISTINCT.';

CREATE OPERATOR @extschema@.= (
    LEFTARG = @extschema@.rebate_schedule,
    RIGHTARG = @extschema@.rebate_schedule,
    FUNCTION = @extschema@.rebate_schedule_eq,
    COMMUTATOR = OPERATOR(@extschema@.=),
    NEGATOR = OPERATOR(@extschema@.<>),
    RESTRICT = pg_catalog.eqsel,
    JOIN = pg_catalog.eqjoinsel,
    HASHES
);

CREATE OPERATOR @extschema@.<> (
    LEFTARG = @extschema@.rebate_schedule,
    RIGHTARG = @extschema@.rebate_schedule,
    FUNCTION = @extschema@.rebate_schedule_ne,
    COMMUTATOR = OPERATOR(@extschema@.<>),
    NEGATOR = OPERATOR(@extschema@.=),
    RESTRICT = pg_catalog.neqsel,
    JOIN = pg_catalog.neqjoinsel
);

COMMENT ON OPERATOR @extschema@.= (@extschema@.rebate_schedule, @extschema@.rebate_schedule) IS
'equal rebate schedules';
COMMENT ON OPERATOR @extschema@.<> (@extschema@.rebate_schedule, @extschema@.rebate_schedule) IS
'different rebate schedules';

CREATE OPERATOR CLASS @extschema@.rebate_schedule_hash_ops
    DEFAULT FOR TYPE @extschema@.rebate_schedule USING hash AS
    OPERATOR 1 @extschema@.= (@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    FUNCTION 1 @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule);

CREATE FUNCTION @extschema@.rebate(schedule @extschema@.rebate_schedule, volume pg_catalog.numeric)
RETURNS pg_catalog.numeric
AS 'MODULE_PATHNAME', 'loyalty_rebate'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.rebate(@extschema@.rebate_schedule, pg_catalog.numeric) IS
'The rebate earned on volume: retro = volume x the rate reached; marginal = the sum of each bracket''s slice x its rate. Exact numeric arithmetic, never float and never rounded: the result has the volume''s scale, or more decimals when the exact product needs them; round it to the currency yourself. Symmetric for a negative volume (credit notes exceeding invoices): rebate(s, -v) = -rebate(s, v). NaN and Infinity are an error.';

CREATE FUNCTION @extschema@.rebate_rate(schedule @extschema@.rebate_schedule, volume pg_catalog.numeric)
RETURNS pg_catalog.numeric
AS 'MODULE_PATHNAME', 'loyalty_rebate_rate'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.rebate_rate(@extschema@.rebate_schedule, pg_catalog.numeric) IS
'The rate, in percent (3.5 means 3.5%), of the bracket volume reaches (for marginal, the rate of the top slice); 0 below the first threshold. rebate_rate(s, -v) = rebate_rate(s, v).';

CREATE FUNCTION @extschema@.rebate_mode(schedule @extschema@.rebate_schedule)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'loyalty_rebate_mode'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.rebate_mode(@extschema@.rebate_schedule) IS
'The schedule''s mode: retro or marginal.';

CREATE FUNCTION @extschema@.brackets(schedule @extschema@.rebate_schedule)
RETURNS TABLE (threshold pg_catalog.numeric, rate pg_catalog.numeric)
AS 'MODULE_PATHNAME', 'loyalty_brackets'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
ROWS 8;

COMMENT ON FUNCTION @extschema@.brackets(@extschema@.rebate_schedule) IS
'The brackets of a schedule, one row each, lowest first: threshold and rate in percent.';
-- The domain model (ARCHITECTURE.md §2).  Every loyalty table carries the
-- program and the ERP's account key so that it can be co-located with the
-- ERP's own tables; nothing on the accrual path draws from a sequence.

-- Roles: created when absent, never dropped by DROP EXTENSION (roles are
-- cluster-wide and may be shared by several databases).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_reader') THEN
        CREATE ROLE loyalty_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_operator') THEN
        CREATE ROLE loyalty_operator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_admin') THEN
        CREATE ROLE loyalty_admin NOLOGIN;
    END IF;
END
$roles$;

-- Multiplier maps are JSON objects of positive numbers, e.g. {"SOLAR": 2};
-- segment maps nest one level: {"cooperation_model": {"distributor": 1.1}}.
CREATE FUNCTION @extschema@._valid_multipliers(m pg_catalog.jsonb, nested boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT pg_catalog.jsonb_typeof(m) OPERATOR(pg_catalog.=) 'object'
   AND NOT EXISTS (
        SELECT FROM pg_catalog.jsonb_each(m) AS e
        WHERE CASE WHEN nested
                   THEN e.key OPERATOR(pg_catalog.<>) ALL (ARRAY['cooperation_model', 'industry', 'region'])
                        OR NOT @extschema@._valid_multipliers(e.value, false)
                   ELSE pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.<>) 'number'
                        OR (e.value)::text::pg_catalog.numeric OPERATOR(pg_catalog.<=) 0
              END)
$$;
COMMENT ON FUNCTION @extschema@._valid_multipliers(pg_catalog.jsonb, boolean) IS
    'Internal: CHECK helper for the multiplier maps of loyalty.rule.';

CREATE TABLE @extschema@.program (
    program_id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE
                         CHECK (name OPERATOR(pg_catalog.~) '^[^[:cntrl:]]{1,63}$' AND name OPERATOR(pg_catalog.=) pg_catalog.btrim(name)),
    currency             text NOT NULL CHECK (currency OPERATOR(pg_catalog.~) '^[A-Z]{3}$'),
    ladder               @extschema@.tier_ladder,
    basis                text NOT NULL DEFAULT 'amount' CHECK (basis IN ('amount', 'quantity')),
    rounding             text NOT NULL DEFAULT 'floor' CHECK (rounding IN ('floor', 'half_up', 'half_even')),
    qualification_window interval NOT NULL DEFAULT '12 months'
                         CHECK (qualification_window OPERATOR(pg_catalog.>=) '1 month'::interval
                                AND qualification_window OPERATOR(pg_catalog.<=) '10 years'::interval),
    enrollment           text NOT NULL DEFAULT 'auto' CHECK (enrollment IN ('auto', 'explicit')),
    strict               boolean NOT NULL DEFAULT false,
    settlement_period    text NOT NULL DEFAULT 'quarter' CHECK (settlement_period IN ('month', 'quarter', 'year')),
    point_lifetime       interval CHECK (point_lifetime OPERATOR(pg_catalog.>) '0'::interval),
    rebate               @extschema@.rebate_schedule,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.program IS 'One loyalty or partner program: currency, accrual basis, rounding, tier ladder, qualification window, settlement period, point lifetime, enrolment policy.';
COMMENT ON COLUMN @extschema@.program.program_id IS 'Surrogate key; every other loyalty table carries it.';
COMMENT ON COLUMN @extschema@.program.name IS 'The name users type in every loyalty function (unique, 1 to 63 characters).';
COMMENT ON COLUMN @extschema@.program.currency IS 'ISO 4217 code; invoice rows in another currency are rejected to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.ladder IS 'Tier ladder applied to rolling qualifying spend; NULL for a program without tiers.';
COMMENT ON COLUMN @extschema@.program.basis IS 'amount: points per currency unit; quantity: points per unit of the mapped quantity column (e.g. per cubic metre).';
COMMENT ON COLUMN @extschema@.program.rounding IS 'How a row''s points are made whole: floor (toward zero), half_up (half away from zero) or half_even. Applied symmetrically, so a credit note reverses exactly what the same invoice earned.';
COMMENT ON COLUMN @extschema@.program.qualification_window IS 'Rolling window of qualifying spend that decides the tier, counted in whole calendar months ending with the current month.';
COMMENT ON COLUMN @extschema@.program.enrollment IS 'auto: every customer that invoices is enrolled; explicit: only accounts enrolled with loyalty.enroll earn.';
COMMENT ON COLUMN @extschema@.program.strict IS 'When true, an invoice row the program cannot accrue fails the ERP statement instead of going to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.settlement_period IS 'Period of settlement runs: month, quarter or year.';
COMMENT ON COLUMN @extschema@.program.point_lifetime IS 'How long earned points stay valid before expiry at settlement; NULL = points never expire.';
COMMENT ON COLUMN @extschema@.program.rebate IS 'Volume rebate schedule settled per period; NULL = no rebate.';
COMMENT ON COLUMN @extschema@.program.created_at IS 'When the program was created.';

CREATE TABLE @extschema@.account (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    account_key       text NOT NULL CHECK (account_key OPERATOR(pg_catalog.<>) ''),
    cooperation_model text CHECK (cooperation_model IN ('direct', 'distributor', 'integrator', 'reseller')),
    industry          text,
    region            text,
    potential_spend   numeric CHECK (potential_spend OPERATOR(pg_catalog.>=) 0),
    cohort            text CHECK (cohort IN ('pilot', 'control')),
    tier              text,
    tier_since        timestamptz,
    enrolled_by       text NOT NULL DEFAULT 'explicit' CHECK (enrolled_by IN ('explicit', 'auto')),
    enrolled_from     date NOT NULL DEFAULT '-infinity',
    enrolled_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key),
    CHECK ((tier IS NULL) = (tier_since IS NULL))
);
COMMENT ON TABLE @extschema@.account IS 'A B2B customer or partner enrolled in a program, keyed by the ERP''s own customer key.';
COMMENT ON COLUMN @extschema@.account.program_id IS 'The program (loyalty.program).';
COMMENT ON COLUMN @extschema@.account.account_key IS 'The ERP''s customer key in text form (an int or bigint key is stored as its decimal text).';
COMMENT ON COLUMN @extschema@.account.cooperation_model IS 'Segment: direct, distributor, integrator or reseller.';
COMMENT ON COLUMN @extschema@.account.industry IS 'Segment: industry.';
COMMENT ON COLUMN @extschema@.account.region IS 'Segment: region.';
COMMENT ON COLUMN @extschema@.account.potential_spend IS 'Estimated annual wallet, the denominator of share of wallet.';
COMMENT ON COLUMN @extschema@.account.cohort IS 'pilot or control for ROI measurement; control accounts accrue qualifying spend but no points. NULL = not in the experiment. Earlier values: loyalty.account_history.';
COMMENT ON COLUMN @extschema@.account.tier IS 'Current tier name from the program''s ladder; NULL below the first threshold.';
COMMENT ON COLUMN @extschema@.account.tier_since IS 'When the current tier was reached.';
COMMENT ON COLUMN @extschema@.account.enrolled_by IS 'explicit (loyalty.enroll) or auto (first invoice under an auto-enrolment program).';
COMMENT ON COLUMN @extschema@.account.enrolled_at IS 'When the account was enrolled.';
COMMENT ON COLUMN @extschema@.account.enrolled_from IS 'First document date that earns (-infinity: all of them). Documents dated before it are ignored, so that enrolling never changes what an older document earned.';

CREATE TABLE @extschema@.account_history (
    program_id        integer NOT NULL,
    account_key       text NOT NULL,
    valid_until       date NOT NULL,
    cooperation_model text,
    industry          text,
    region            text,
    cohort            text,
    changed_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, valid_until),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.account_history IS 'Earlier segments and cohorts of an account. Documents dated before valid_until earn by the values of the first row that ends after them; later documents by loyalty.account''s current values. A change takes effect from the day after it is made, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.account_history.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.account_history.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.account_history.valid_until IS 'First document date these values no longer apply to.';
COMMENT ON COLUMN @extschema@.account_history.cooperation_model IS 'Segment: cooperation model, as it was.';
COMMENT ON COLUMN @extschema@.account_history.industry IS 'Segment: industry, as it was.';
COMMENT ON COLUMN @extschema@.account_history.region IS 'Segment: region, as it was.';
COMMENT ON COLUMN @extschema@.account_history.cohort IS 'Cohort, as it was.';
COMMENT ON COLUMN @extschema@.account_history.changed_at IS 'When the change was made.';

CREATE TABLE @extschema@.member (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    member_id   text NOT NULL CHECK (member_id OPERATOR(pg_catalog.<>) ''),
    name        text,
    email       text,
    role        text NOT NULL CHECK (role IN ('economic_buyer', 'technical_buyer', 'end_user', 'champion')),
    PRIMARY KEY (program_id, account_key, member_id),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.member IS 'A person at an account; points may be earned by the account or by a member.';
COMMENT ON COLUMN @extschema@.member.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member.account_key IS 'The account the person works for.';
COMMENT ON COLUMN @extschema@.member.member_id IS 'The person''s key (e.g. the ERP contact id or an e-mail).';
COMMENT ON COLUMN @extschema@.member.name IS 'Display name.';
COMMENT ON COLUMN @extschema@.member.email IS 'Contact e-mail.';
COMMENT ON COLUMN @extschema@.member.role IS 'economic_buyer, technical_buyer, end_user or champion.';

CREATE TABLE @extschema@.rule (
    program_id               integer NOT NULL REFERENCES @extschema@.program,
    valid_from               date NOT NULL,
    points_per_unit          numeric NOT NULL CHECK (points_per_unit OPERATOR(pg_catalog.>=) 0 AND points_per_unit OPERATOR(pg_catalog.<) 1000000),
    min_amount               numeric NOT NULL DEFAULT 0 CHECK (min_amount OPERATOR(pg_catalog.>=) 0),
    product_line_multipliers jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(product_line_multipliers, false)),
    tier_multipliers         jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(tier_multipliers, false)),
    segment_multipliers      jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(segment_multipliers, true)),
    on_time_bonus_pct        numeric NOT NULL DEFAULT 0 CHECK (on_time_bonus_pct OPERATOR(pg_catalog.>=) 0 AND on_time_bonus_pct OPERATOR(pg_catalog.<=) 1000),
    cap_points               bigint CHECK (cap_points OPERATOR(pg_catalog.>) 0),
    cap_period               text CHECK (cap_period IN ('month', 'quarter', 'year')),
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, valid_from),
    CHECK ((cap_points IS NULL) = (cap_period IS NULL)),
    CHECK (valid_from OPERATOR(pg_catalog.<>) 'infinity'::date)
);
COMMENT ON TABLE @extschema@.rule IS 'Versioned earning rules: an invoice row earns by the version in force on its own document date. Versions in force are immutable; change the rules by adding a version (loyalty.add_rule).';
COMMENT ON COLUMN @extschema@.rule.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rule.valid_from IS 'First document date this version applies to (-infinity for the program''s first version).';
COMMENT ON COLUMN @extschema@.rule.points_per_unit IS 'Base rate: points per currency unit (basis amount) or per quantity unit (basis quantity).';
COMMENT ON COLUMN @extschema@.rule.min_amount IS 'Rows whose absolute basis value is below this earn no points (they still count as qualifying spend).';
COMMENT ON COLUMN @extschema@.rule.product_line_multipliers IS 'Multiplier by product line, e.g. {"SOLAR": 2}; lines not listed get 1.';
COMMENT ON COLUMN @extschema@.rule.tier_multipliers IS 'Multiplier by the account''s tier on the document date, e.g. {"Gold": 1.25}.';
COMMENT ON COLUMN @extschema@.rule.segment_multipliers IS 'Multipliers by segment attribute, e.g. {"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.05}}; several that apply multiply.';
COMMENT ON COLUMN @extschema@.rule.on_time_bonus_pct IS 'Bonus, in percent of the row''s points, when the document is paid on or before its due date.';
COMMENT ON COLUMN @extschema@.rule.cap_points IS 'Most points an account can earn from invoices in one cap period; NULL = no cap.';
COMMENT ON COLUMN @extschema@.rule.cap_period IS 'Calendar period of the cap: month, quarter or year (the version in force on the period''s first day decides).';
COMMENT ON COLUMN @extschema@.rule.created_at IS 'When the version was added.';

CREATE TABLE @extschema@.attachment (
    attachment_id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program_id          integer NOT NULL REFERENCES @extschema@.program,
    source              regclass NOT NULL,
    source_name         text NOT NULL,
    key_columns         text[] NOT NULL CHECK (pg_catalog.cardinality(key_columns) OPERATOR(pg_catalog.>) 0),
    account_expr        text NOT NULL,
    amount_expr         text,
    quantity_expr       text,
    date_expr           text NOT NULL,
    product_line_expr   text,
    currency_expr       text,
    doc_type_expr       text,
    credit_note_types   text[],
    due_date_expr       text,
    paid_date_expr      text,
    header              regclass,
    header_key_column   text,
    header_match_column text,
    attached_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    detached_at         timestamptz,
    CHECK (amount_expr IS NOT NULL OR quantity_expr IS NOT NULL),
    CHECK ((header IS NULL) = (header_key_column IS NULL) AND (header IS NULL) = (header_match_column IS NULL)),
    CHECK ((doc_type_expr IS NULL) = (credit_note_types IS NULL))
);
CREATE UNIQUE INDEX attachment_active_uniq ON @extschema@.attachment (program_id, source) WHERE detached_at IS NULL;
COMMENT ON TABLE @extschema@.attachment IS 'How an ERP table feeds a program (loyalty.attach): the column mapping, validated at attach time. Expressions are SQL over the source table (alias s) or its header table (alias h). Detached attachments stay for the audit trail.';
COMMENT ON COLUMN @extschema@.attachment.attachment_id IS 'Surrogate key; the accrual trigger''s argument.';
COMMENT ON COLUMN @extschema@.attachment.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.attachment.source IS 'The ERP table (invoices or invoice lines).';
COMMENT ON COLUMN @extschema@.attachment.source_name IS 'The source''s qualified name when it was attached, kept for the audit trail.';
COMMENT ON COLUMN @extschema@.attachment.key_columns IS 'Columns that identify a row of the source (its primary key by default; several for a composite key).';
COMMENT ON COLUMN @extschema@.attachment.account_expr IS 'SQL for the account key.';
COMMENT ON COLUMN @extschema@.attachment.amount_expr IS 'SQL for the amount (a column or an expression of the row''s columns).';
COMMENT ON COLUMN @extschema@.attachment.quantity_expr IS 'SQL for the quantity (basis quantity).';
COMMENT ON COLUMN @extschema@.attachment.date_expr IS 'SQL for the document date.';
COMMENT ON COLUMN @extschema@.attachment.product_line_expr IS 'SQL for the product line.';
COMMENT ON COLUMN @extschema@.attachment.currency_expr IS 'SQL for the document currency.';
COMMENT ON COLUMN @extschema@.attachment.doc_type_expr IS 'SQL for the document type.';
COMMENT ON COLUMN @extschema@.attachment.credit_note_types IS 'Document types that are credit notes: their amount and quantity count as negative whatever sign the row stores.';
COMMENT ON COLUMN @extschema@.attachment.due_date_expr IS 'SQL for the payment due date (on-time bonus).';
COMMENT ON COLUMN @extschema@.attachment.paid_date_expr IS 'SQL for the paid date (on-time bonus).';
COMMENT ON COLUMN @extschema@.attachment.header IS 'Header table holding the account, date, currency, document type and payment dates of a lines table.';
COMMENT ON COLUMN @extschema@.attachment.header_key_column IS 'Column of the source that references the header.';
COMMENT ON COLUMN @extschema@.attachment.header_match_column IS 'Column of the header it references.';
COMMENT ON COLUMN @extschema@.attachment.attached_at IS 'When loyalty.attach ran.';
COMMENT ON COLUMN @extschema@.attachment.detached_at IS 'When loyalty.detach ran; NULL while attached.';

-- An enum rather than a CHECK: the check would be re-parsed on every posting.
CREATE TYPE @extschema@.ledger_kind AS ENUM ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'redeem', 'expire', 'adjust', 'award', 'rebate', 'mdf');
COMMENT ON TYPE @extschema@.ledger_kind IS 'What a ledger entry records: earn, reverse, bonus, cap, backfill, restate, redeem, expire, adjust, award, rebate, mdf.';

CREATE TABLE @extschema@.ledger (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    entry_no      bigint NOT NULL CHECK (entry_no OPERATOR(pg_catalog.>) 0),
    kind          @extschema@.ledger_kind NOT NULL,
    points        bigint NOT NULL DEFAULT 0,
    qualifying    numeric NOT NULL DEFAULT 0,
    rebate        numeric NOT NULL DEFAULT 0,
    mdf           numeric NOT NULL DEFAULT 0,
    member_id     text,
    attachment_id integer,
    source_rows   integer NOT NULL DEFAULT 0 CHECK (source_rows OPERATOR(pg_catalog.>=) 0),
    corrects      bigint,
    reason        text,
    posted_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    PRIMARY KEY (program_id, account_key, entry_no),
    -- no foreign key to account: its check would run a query per posting on
    -- the hot path; accounts with postings cannot be deleted (account_keep)
    CHECK (corrects IS NULL OR corrects OPERATOR(pg_catalog.<) entry_no)
);
COMMENT ON TABLE @extschema@.ledger IS 'Append-only journal of every movement. Nothing is updated or deleted; corrections are new entries. Wallets are columns: points, qualifying (tier spend), rebate and mdf (money).';
COMMENT ON COLUMN @extschema@.ledger.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.ledger.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.ledger.entry_no IS 'Entry number within the account, gap-free from 1 (the account''s balance row hands them out, so no global sequence is involved).';
COMMENT ON COLUMN @extschema@.ledger.kind IS 'earn / reverse: what an ERP statement''s new / old rows earn; bonus: on-time payment bonus; cap: points withheld (or given back) by a cap; backfill: history accrued by loyalty.backfill; restate: what an account''s documents earn differently after its enrolment date changed; redeem, expire, adjust, award, rebate, mdf.';
COMMENT ON COLUMN @extschema@.ledger.points IS 'Points moved (negative for reversals, redemptions, expiry).';
COMMENT ON COLUMN @extschema@.ledger.qualifying IS 'Tier-qualifying spend moved, in program currency.';
COMMENT ON COLUMN @extschema@.ledger.rebate IS 'Rebate money moved.';
COMMENT ON COLUMN @extschema@.ledger.mdf IS 'Market development funds moved.';
COMMENT ON COLUMN @extschema@.ledger.member_id IS 'The member who earned or spent, when not the account as a whole.';
COMMENT ON COLUMN @extschema@.ledger.attachment_id IS 'The ERP table mapping whose rows produced the entry.';
COMMENT ON COLUMN @extschema@.ledger.source_rows IS 'How many ERP rows the entry sums.';
COMMENT ON COLUMN @extschema@.ledger.corrects IS 'Entry number (same account) this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.reason IS 'Free text: the statement kind for accruals, the reason for adjustments.';
COMMENT ON COLUMN @extschema@.ledger.posted_at IS 'Transaction timestamp of the posting.';
COMMENT ON COLUMN @extschema@.ledger.posted_xid IS 'Transaction that posted the entry.';

CREATE TABLE @extschema@.balance (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    points      bigint NOT NULL DEFAULT 0,
    qualifying  numeric NOT NULL DEFAULT 0,
    rebate      numeric NOT NULL DEFAULT 0,
    mdf         numeric NOT NULL DEFAULT 0,
    entry_count bigint NOT NULL DEFAULT 0 CHECK (entry_count OPERATOR(pg_catalog.>=) 0),
    m_month        date[] NOT NULL DEFAULT '{}',
    m_attachment   integer[] NOT NULL DEFAULT '{}',
    m_points       bigint[] NOT NULL DEFAULT '{}',
    m_qualifying   numeric[] NOT NULL DEFAULT '{}',
    m_source_rows  bigint[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key)
    -- no foreign key to account, as for the ledger (account_keep)
);
COMMENT ON TABLE @extschema@.balance IS 'Running totals per account, kept equal to the sums of loyalty.ledger in the same transaction: the O(1) read path.';
COMMENT ON COLUMN @extschema@.balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance.points IS 'Points available (sum of ledger.points).';
COMMENT ON COLUMN @extschema@.balance.qualifying IS 'Lifetime qualifying spend (sum of ledger.qualifying); the rolling figure that decides tiers is loyalty.balance(program, account).rolling_qualifying.';
COMMENT ON COLUMN @extschema@.balance.rebate IS 'Rebate money (sum of ledger.rebate).';
COMMENT ON COLUMN @extschema@.balance.mdf IS 'MDF money (sum of ledger.mdf).';
COMMENT ON COLUMN @extschema@.balance.entry_count IS 'Number of ledger entries of the account, i.e. the last entry_no.';
COMMENT ON COLUMN @extschema@.balance.m_month IS 'Per-month sums, one element per (document month, attachment), sorted: the months. Read them through the view loyalty.accrual_month. They live on the balance row so that a statement writes one row per account, whatever the number of months its documents span.';
COMMENT ON COLUMN @extschema@.balance.m_attachment IS 'Per-month sums: the attachment (ERP table mapping) of each element.';
COMMENT ON COLUMN @extschema@.balance.m_points IS 'Per-month sums: points earned by the documents of the month (bonus included, caps not applied).';
COMMENT ON COLUMN @extschema@.balance.m_qualifying IS 'Per-month sums: qualifying spend of the documents of the month.';
COMMENT ON COLUMN @extschema@.balance.m_source_rows IS 'Per-month sums: net number of ERP rows accrued.';
COMMENT ON COLUMN @extschema@.balance.updated_at IS 'Last change.';

CREATE VIEW @extschema@.accrual_month AS
SELECT b.program_id, x.attachment_id, b.account_key, x.month, x.points, x.qualifying, x.source_rows
FROM @extschema@.balance b,
     ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
         AS x(month, attachment_id, points, qualifying, source_rows);
COMMENT ON VIEW @extschema@.accrual_month IS 'What each account''s documents earned per document month and ERP table, before caps: the rolling qualification window, caps and loyalty.verify read it.';
COMMENT ON COLUMN @extschema@.accrual_month.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.accrual_month.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.accrual_month.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.accrual_month.month IS 'First day of the documents'' month.';
COMMENT ON COLUMN @extschema@.accrual_month.points IS 'Points earned by the rows of that month (bonus included, cap not applied).';
COMMENT ON COLUMN @extschema@.accrual_month.qualifying IS 'Qualifying spend of the rows of that month.';
COMMENT ON COLUMN @extschema@.accrual_month.source_rows IS 'Net number of rows accrued (inserts minus deletes).';

CREATE TABLE @extschema@.unenrolled_activity (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    account_key   text NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    first_seen    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, attachment_id)
);
COMMENT ON TABLE @extschema@.unenrolled_activity IS 'Customers that invoiced under an explicit-enrolment program without being enrolled: ignored by accrual, counted here (candidates to enrol).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.last_seen IS 'Last time seen.';

CREATE TABLE @extschema@.reward (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    reward_id         text NOT NULL CHECK (reward_id OPERATOR(pg_catalog.<>) ''),
    name              text NOT NULL,
    points_price      bigint NOT NULL CHECK (points_price OPERATOR(pg_catalog.>) 0),
    min_tier          text,
    stock             integer CHECK (stock OPERATOR(pg_catalog.>=) 0),
    per_account_limit integer CHECK (per_account_limit OPERATOR(pg_catalog.>) 0),
    active            boolean NOT NULL DEFAULT true,
    PRIMARY KEY (program_id, reward_id)
);
COMMENT ON TABLE @extschema@.reward IS 'Catalogue of rewards (goods, discounts, business services) with their points price.';
COMMENT ON COLUMN @extschema@.reward.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.reward.reward_id IS 'The reward''s code.';
COMMENT ON COLUMN @extschema@.reward.name IS 'What the partner sees.';
COMMENT ON COLUMN @extschema@.reward.points_price IS 'Points per unit.';
COMMENT ON COLUMN @extschema@.reward.min_tier IS 'Lowest tier that may redeem it; NULL = any.';
COMMENT ON COLUMN @extschema@.reward.stock IS 'Units left; NULL = unlimited.';
COMMENT ON COLUMN @extschema@.reward.per_account_limit IS 'Most units one account may redeem; NULL = unlimited.';
COMMENT ON COLUMN @extschema@.reward.active IS 'Whether it can be redeemed now.';

CREATE TABLE @extschema@.redemption (
    program_id      integer NOT NULL,
    redemption_id   bigint GENERATED ALWAYS AS IDENTITY,
    account_key     text NOT NULL,
    reward_id       text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    points          bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>) 0),
    status          text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'approved', 'fulfilled', 'cancelled')),
    requested_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    cancelled_at    timestamptz,
    ledger_entry_no bigint,
    PRIMARY KEY (program_id, redemption_id),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, reward_id) REFERENCES @extschema@.reward,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.redemption IS 'Rewards redeemed; a cancellation posts a reversing ledger entry.';
COMMENT ON COLUMN @extschema@.redemption.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.redemption.redemption_id IS 'Surrogate key.';
COMMENT ON COLUMN @extschema@.redemption.account_key IS 'The redeeming account.';
COMMENT ON COLUMN @extschema@.redemption.reward_id IS 'The reward.';
COMMENT ON COLUMN @extschema@.redemption.quantity IS 'Units.';
COMMENT ON COLUMN @extschema@.redemption.points IS 'Points spent (quantity x price).';
COMMENT ON COLUMN @extschema@.redemption.status IS 'requested, approved, fulfilled or cancelled.';
COMMENT ON COLUMN @extschema@.redemption.requested_at IS 'When it was requested.';
COMMENT ON COLUMN @extschema@.redemption.cancelled_at IS 'When it was cancelled.';
COMMENT ON COLUMN @extschema@.redemption.ledger_entry_no IS 'The ledger entry that spent the points.';

CREATE TABLE @extschema@.tier_history (
    program_id         integer NOT NULL,
    account_key        text NOT NULL,
    change_no          bigint GENERATED ALWAYS AS IDENTITY,
    changed_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    effective_from     date NOT NULL,
    old_tier           text,
    new_tier           text,
    reason             text NOT NULL CHECK (reason IN ('upgrade_on_accrual', 'requalification', 'manual')),
    rolling_qualifying numeric,
    PRIMARY KEY (program_id, account_key, change_no),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CHECK (old_tier IS DISTINCT FROM new_tier)
);
COMMENT ON TABLE @extschema@.tier_history IS 'Every tier change with its reason. A document earns tier multipliers by the tier in force on its date, and a change takes effect from the day after it happens, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.tier_history.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_history.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.tier_history.change_no IS 'Surrogate key, ascending in time.';
COMMENT ON COLUMN @extschema@.tier_history.changed_at IS 'When the change was recorded.';
COMMENT ON COLUMN @extschema@.tier_history.effective_from IS 'First document date the new tier applies to.';
COMMENT ON COLUMN @extschema@.tier_history.old_tier IS 'Tier before (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.new_tier IS 'Tier after (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.reason IS 'upgrade_on_accrual, requalification (settlement) or manual.';
COMMENT ON COLUMN @extschema@.tier_history.rolling_qualifying IS 'Rolling qualifying spend that justified the change.';

CREATE TABLE @extschema@.settlement_run (
    program_id   integer NOT NULL REFERENCES @extschema@.program,
    period_start date NOT NULL,
    period_end   date NOT NULL,
    status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    started_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at  timestamptz,
    accounts     integer CHECK (accounts OPERATOR(pg_catalog.>=) 0),
    points_expired bigint,
    rebate_total numeric,
    PRIMARY KEY (program_id, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start),
    CHECK ((status = 'done') <= (finished_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.settlement_run IS 'One row per program and settlement period: the idempotency key of settlement.';
COMMENT ON COLUMN @extschema@.settlement_run.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_run.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.settlement_run.period_end IS 'Day after the period''s last day (exclusive end).';
COMMENT ON COLUMN @extschema@.settlement_run.status IS 'running, done or failed.';
COMMENT ON COLUMN @extschema@.settlement_run.started_at IS 'Start.';
COMMENT ON COLUMN @extschema@.settlement_run.finished_at IS 'End.';
COMMENT ON COLUMN @extschema@.settlement_run.accounts IS 'Accounts settled.';
COMMENT ON COLUMN @extschema@.settlement_run.points_expired IS 'Points expired.';
COMMENT ON COLUMN @extschema@.settlement_run.rebate_total IS 'Rebates posted.';

CREATE TABLE @extschema@.rejected_event (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    event_id      bigint GENERATED ALWAYS AS IDENTITY,
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    row_key       text,
    account_key   text,
    reason        text NOT NULL,
    row_data      jsonb,
    rejected_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resolved_at   timestamptz,
    PRIMARY KEY (program_id, event_id)
);
CREATE INDEX rejected_event_open ON @extschema@.rejected_event (attachment_id, row_key) WHERE resolved_at IS NULL;
COMMENT ON TABLE @extschema@.rejected_event IS 'Dead letters: invoice rows a program could not accrue, with the reason; the ERP''s insert went through (unless the program is strict).';
COMMENT ON COLUMN @extschema@.rejected_event.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rejected_event.event_id IS 'Surrogate key.';
COMMENT ON COLUMN @extschema@.rejected_event.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form.';
COMMENT ON COLUMN @extschema@.rejected_event.account_key IS 'The account, when known.';
COMMENT ON COLUMN @extschema@.rejected_event.reason IS 'Why it could not be accrued.';
COMMENT ON COLUMN @extschema@.rejected_event.row_data IS 'The source row as JSON.';
COMMENT ON COLUMN @extschema@.rejected_event.rejected_at IS 'When.';
COMMENT ON COLUMN @extschema@.rejected_event.resolved_at IS 'When it was settled: the row was deleted, or updated into a row that accrues (or parked for another reason); or when someone marked it handled.';

-- pg_dump keeps the contents of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.program', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.account', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.account_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.member', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ledger', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_activity', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.reward', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.redemption', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_run', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.program_program_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment_attachment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.redemption_redemption_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_history_change_no_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event_event_id_seq', '');

-- The ledger is append-only.
CREATE FUNCTION @extschema@._ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'loyalty.ledger is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on loyalty.ledger is refused: entries are never changed or removed.', TG_OP),
              HINT = 'Post a correcting entry instead, e.g. with loyalty.adjust().';
END
$$;
COMMENT ON FUNCTION @extschema@._ledger_append_only() IS 'Internal: refuses UPDATE, DELETE and TRUNCATE on loyalty.ledger.';
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON @extschema@.ledger
    FOR EACH ROW EXECUTE FUNCTION @extschema@._ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON @extschema@.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ledger_append_only();

-- An account with postings is part of the audit trail: it stays.  (This
-- replaces foreign keys from the ledger and balances, whose per-row checks
-- would cost every ERP insert a query.)
CREATE FUNCTION @extschema@._account_keep() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' OR EXISTS (SELECT FROM @extschema@.balance b
                                     WHERE b.program_id = OLD.program_id AND b.account_key = OLD.account_key) THEN
        RAISE EXCEPTION 'loyalty accounts with ledger entries cannot be removed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = CASE WHEN TG_OP = 'TRUNCATE' THEN 'TRUNCATE of loyalty.account is refused.'
                                ELSE pg_catalog.format('Account %s has postings in the ledger.', OLD.account_key) END,
                  HINT = 'Leave the account enrolled; move it out of the program''s cohorts instead.';
    END IF;
    RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._account_keep() IS 'Internal: refuses to delete accounts that have ledger entries.';
CREATE TRIGGER account_keep BEFORE DELETE ON @extschema@.account
    FOR EACH ROW EXECUTE FUNCTION @extschema@._account_keep();
CREATE TRIGGER account_no_truncate BEFORE TRUNCATE ON @extschema@.account
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._account_keep();

-- Rule versions in force are part of the audit trail: a document's points
-- must be recomputable forever.
CREATE FUNCTION @extschema@._rule_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.valid_from <= CURRENT_DATE
       OR EXISTS (SELECT FROM @extschema@.accrual_month m
                  WHERE m.program_id = OLD.program_id AND m.month >= date_trunc('month', OLD.valid_from)::date) THEN
        RAISE EXCEPTION 'rule version valid from % of program "%" cannot be changed', OLD.valid_from,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = OLD.program_id)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It is in force, or documents dated in its months have already earned by it.',
                  HINT = 'Add a new version with loyalty.add_rule(program, valid_from => ...).';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;
COMMENT ON FUNCTION @extschema@._rule_immutable() IS 'Internal: refuses changes to rule versions already in force.';
CREATE TRIGGER rule_immutable BEFORE UPDATE OR DELETE ON @extschema@.rule
    FOR EACH ROW EXECUTE FUNCTION @extschema@._rule_immutable();

-- Least privilege.  Readers see everything, operators run the day-to-day
-- functions, admins configure programs.  Writes to the accrual tables happen
-- through the extension's functions and triggers, which run as its owner.
GRANT USAGE ON SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT INSERT, UPDATE ON @extschema@.member, @extschema@.reward TO loyalty_operator, loyalty_admin;
GRANT UPDATE (cooperation_model, industry, region, potential_spend, cohort, enrolled_from) ON @extschema@.account TO loyalty_operator, loyalty_admin;
GRANT UPDATE (resolved_at) ON @extschema@.rejected_event TO loyalty_operator, loyalty_admin;
GRANT INSERT, UPDATE ON @extschema@.program, @extschema@.rule, @extschema@.attachment TO loyalty_admin;
GRANT INSERT ON @extschema@.account, @extschema@.account_history TO loyalty_operator, loyalty_admin;
-- Programs, rules and enrolment: the names DBAs and integrations type.

CREATE FUNCTION @extschema@._invalidate() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_invalidate' LANGUAGE C;
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
    SELECT p.program_id INTO id FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._program_id(text) IS 'Internal: a program''s id by name, with a clear error when there is none.';

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

CREATE FUNCTION @extschema@.create_program(
    name                 text,
    currency             text DEFAULT 'EUR',
    ladder               @extschema@.tier_ladder DEFAULT NULL,
    points_per_unit      numeric DEFAULT 1,
    basis                text DEFAULT 'amount',
    rounding             text DEFAULT 'floor',
    qualification_window interval DEFAULT '12 months',
    enrollment           text DEFAULT 'auto',
    strict               boolean DEFAULT false,
    starts_on            date DEFAULT NULL,
    settlement_period    text DEFAULT 'quarter',
    point_lifetime       interval DEFAULT NULL,
    rebate               @extschema@.rebate_schedule DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
BEGIN
    PERFORM @extschema@._check_choice('basis', basis, ARRAY['amount', 'quantity']);
    PERFORM @extschema@._check_choice('rounding', rounding, ARRAY['floor', 'half_up', 'half_even']);
    PERFORM @extschema@._check_choice('enrollment', enrollment, ARRAY['auto', 'explicit']);
    PERFORM @extschema@._check_choice('settlement_period', settlement_period, ARRAY['month', 'quarter', 'year']);
    IF currency IS NULL OR currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'invalid currency: %', coalesce(quote_literal(currency), 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an ISO 4217 code in capitals, e.g. currency => ''EUR''.';
    END IF;
    IF points_per_unit IS NULL OR points_per_unit < 0 THEN
        RAISE EXCEPTION 'points_per_unit must be zero or positive, not %', coalesce(points_per_unit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF name IS NULL OR name !~ '^[^[:cntrl:]]{1,63}$' OR name <> btrim(name) THEN
        RAISE EXCEPTION 'invalid program name: %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A program name has 1 to 63 characters, no control characters and no leading or trailing spaces.';
    END IF;
    IF qualification_window IS NULL OR qualification_window < '1 month' OR qualification_window > '10 years' THEN
        RAISE EXCEPTION 'qualification_window must be between 1 month and 10 years, not %', coalesce(qualification_window::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example qualification_window => ''12 months''.';
    END IF;
    IF points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be below 1000000, not %', points_per_unit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.program p WHERE p.name = create_program.name) THEN
        RAISE EXCEPTION 'loyalty program "%" already exists', name
            USING ERRCODE = 'duplicate_object', HINT = 'Choose another name, or change the existing program''s rules with loyalty.add_rule().';
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    last_month date;
BEGIN
    IF valid_from IS NULL THEN
        RAISE EXCEPTION 'valid_from must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Give the first document date the version applies to.';
    END IF;
    IF cap_period IS NOT NULL THEN
        PERFORM @extschema@._check_choice('cap_period', cap_period, ARRAY['month', 'quarter', 'year']);
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rule r WHERE r.program_id = pid AND r.valid_from = add_rule.valid_from) THEN
        RAISE EXCEPTION 'program "%" already has a rule version valid from %', program, valid_from
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Versions are immutable once documents earned by them; add one with another valid_from.';
    END IF;
    IF points_per_unit IS NULL OR points_per_unit < 0 OR points_per_unit >= 1000000 THEN
        RAISE EXCEPTION 'points_per_unit must be at least 0 and below 1000000, not %', coalesce(points_per_unit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT @extschema@._valid_multipliers(coalesce(product_line_multipliers, 'null'), false)
       OR NOT @extschema@._valid_multipliers(coalesce(tier_multipliers, 'null'), false)
       OR NOT @extschema@._valid_multipliers(coalesce(segment_multipliers, 'null'), true) THEN
        RAISE EXCEPTION 'invalid multiplier map'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Multipliers are JSON objects of positive numbers; segment multipliers nest them under cooperation_model, industry or region.',
                  HINT = 'For example product_line_multipliers => ''{"SOLAR": 2}'', segment_multipliers => ''{"region": {"North": 1.1}}''.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) THEN
        RAISE EXCEPTION 'cap_points and cap_period go together' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example cap_points => 10000, cap_period => ''quarter''.';
    END IF;
    -- A version must not change what documents already accrued have earned.
    SELECT max(m.month) INTO last_month FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.month >= date_trunc('month', valid_from)::date;
    IF last_month IS NOT NULL THEN
        RAISE EXCEPTION 'a rule version valid from % would change points already accrued', valid_from
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Program "%s" has accrued documents dated in %s.', program, to_char(last_month, 'YYYY-MM')),
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    policy text;
    before @extschema@.account;
    after @extschema@.account;
    att integer;
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
    SELECT * INTO before FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = enroll.account_key;
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit',
            coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE current_date END))
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = enroll.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow; the
    -- old values stay for the documents before (the first change of a day
    -- keeps them: values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, enroll.account_key, current_date + 1, before.cooperation_model, before.industry,
                before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all: restate them.
    IF before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
       AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = enroll.account_key) THEN
        IF NOT has_function_privilege('@extschema@._reconcile(integer, date, text, text)', 'EXECUTE') THEN
            RAISE EXCEPTION 'changing enrolled_from of account "%" restates its documents', enroll.account_key
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'The account has postings; which of its documents earn would change.',
                      HINT = 'Ask a member of loyalty_admin to change it.';
        END IF;
        FOR att IN SELECT x.attachment_id FROM @extschema@.attachment x
                   WHERE x.program_id = pid AND x.detached_at IS NULL
                     AND EXISTS (SELECT FROM pg_class c WHERE c.oid = x.source) LOOP
            PERFORM @extschema@._reconcile(att, '-infinity', enroll.account_key, 'restate');
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.enroll(text, text, text, text, text, numeric, text, date) IS
    'Enrols an account (or updates the segment attributes of an enrolled one). Under explicit enrolment, documents dated before enrolled_from (default today) do not earn. A new segment or cohort applies to documents dated from tomorrow (the old values are kept in loyalty.account_history); a new enrolled_from restates the account''s documents (ledger kind restate).';

REVOKE ALL ON FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule),
                      @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text),
                      @extschema@.enroll(text, text, text, text, text, numeric, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.create_program(text, text, @extschema@.tier_ladder, numeric, text, text, interval, text, boolean, date, text, interval, @extschema@.rebate_schedule),
                          @extschema@.add_rule(text, date, numeric, numeric, jsonb, jsonb, jsonb, numeric, bigint, text) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.enroll(text, text, text, text, text, numeric, text, date) TO loyalty_operator, loyalty_admin;
-- Accrual: attaching ERP tables, the triggers, and the functions that read,
-- explain, verify and backfill what the triggers post.

CREATE FUNCTION @extschema@.accrue() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.accrue() IS 'Statement-level accrual trigger created by loyalty.attach(); its argument is the attachment id.';

CREATE FUNCTION @extschema@.accrue_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue_header' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.accrue_header() IS 'Statement-level trigger on a header table: re-accrues the lines of headers whose account, date, currency, document type or payment dates changed.';

CREATE FUNCTION @extschema@.stash_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_stash_header' LANGUAGE C;
COMMENT ON FUNCTION @extschema@.stash_header() IS 'Row trigger on a header table: keeps the facts of a deleted or renumbered header until commit so that its lines are reversed exactly.';

CREATE FUNCTION @extschema@._refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% would bypass loyalty accrual', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'The table is attached to a loyalty program; TRUNCATE fires no row events, so the points its rows earned would stay.',
              HINT = 'DELETE the rows instead, or detach the program first with loyalty.detach().';
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_truncate() IS 'Internal: refuses TRUNCATE on attached ERP tables.';

CREATE TYPE @extschema@.row_points AS (
    status                  text,
    reason                  text,
    rule_valid_from         date,
    basis                   numeric,
    points_per_unit         numeric,
    product_line_multiplier numeric,
    tier_on_date            text,
    tier_multiplier         numeric,
    segment_multiplier      numeric,
    raw_points              numeric,
    rounding                text,
    points                  bigint,
    on_time_bonus           bigint,
    qualifying              numeric,
    month                   date);
COMMENT ON TYPE @extschema@.row_points IS 'Every step of one row''s points: status, rule version, basis, multipliers, rounding, bonus, qualifying spend.';

CREATE FUNCTION @extschema@._row_points(attachment integer, account_key text, amount numeric, quantity numeric,
                                        doc_date date, product_line text, currency text, doc_type text,
                                        due_date date, paid_date date, header_found boolean)
RETURNS @extschema@.row_points
AS 'MODULE_PATHNAME', 'loyalty_row_points' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._row_points(integer, text, numeric, numeric, date, text, text, text, date, date, boolean) IS
    'Internal: the accrual trigger''s points function, for explain_points, verify and backfill.';

CREATE FUNCTION @extschema@._cap_for_month(program_id integer, month date,
                                           OUT period_start date, OUT period_end date, OUT cap_points bigint)
AS 'MODULE_PATHNAME', 'loyalty_cap_for_month' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION @extschema@._cap_for_month(integer, date) IS 'Internal: the cap period a document month falls in, NULL when uncapped.';

CREATE FUNCTION @extschema@._post_backfill(attachment integer, accounts text[], months date[],
                                           points bigint[], qualifying numeric[], source_rows bigint[],
                                           kind text DEFAULT 'backfill')
RETURNS void
AS 'MODULE_PATHNAME', 'loyalty_post_backfill' LANGUAGE C STRICT;
COMMENT ON FUNCTION @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) IS
    'Internal: posts reconciled sums (backfill or restate) through the trigger''s own posting path.';

-- The facts of every row of an attachment's source, as SQL: the set-based
-- twin of the trigger's C mapping (mapping.c), over the same expressions.
CREATE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    key text;
    from_clause text;
    hdr text;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x WHERE x.attachment_id = attachment;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'loyalty attachment % does not exist', attachment USING ERRCODE = 'undefined_object';
    END IF;
    key := CASE WHEN cardinality(a.key_columns) = 1 THEN format('(s.%I)::text', a.key_columns[1])
                ELSE format('(ROW(%s))::text', (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(a.key_columns) c)) END;
    -- a partitioned table is read with its partitions; a plain one alone
    from_clause := format('FROM %s %s s',
                          CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.source) = 'p' THEN '' ELSE 'ONLY' END,
                          a.source);
    IF a.header IS NULL THEN
        hdr := format('(%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency, (%s)::text AS doc_type,'
                      ' (%s)::date AS due_date, (%s)::date AS paid_date, true AS header_found',
                      a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
                      coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'));
    ELSE
        hdr := 'hh.account_key, hh.doc_date, hh.currency, hh.doc_type, hh.due_date, hh.paid_date, hh.found IS NOT NULL AS header_found';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS account_key, (%s)::date AS doc_date, (%s)::text AS currency,'
            ' (%s)::text AS doc_type, (%s)::date AS due_date, (%s)::date AS paid_date, true AS found'
            ' FROM ONLY %s h WHERE h.%I OPERATOR(pg_catalog.=) s.%I) hh ON true',
            a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
            coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'),
            a.header, a.header_match_column, a.header_key_column);
    END IF;
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, (%s)::text AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  coalesce(a.product_line_expr, 'NULL'), from_clause);
END
$$;
COMMENT ON FUNCTION @extschema@._facts_sql(integer) IS 'Internal: SQL that maps every row of an attachment''s source to the facts the points function takes.';

-- Checks a mapped column: it must exist and be of an accepted type.
CREATE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ regtype;
BEGIN
    IF col IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
    WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF typ IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', col, rel
            USING ERRCODE = 'undefined_column',
                  DETAIL = pg_catalog.format('%s names a column of %s.', param, rel),
                  HINT = pg_catalog.format('Columns of %s: %s.', rel,
                         (SELECT string_agg(quote_ident(x.attname), ', ' ORDER BY x.attnum) FROM pg_attribute x
                          WHERE x.attrelid = rel AND x.attnum > 0 AND NOT x.attisdropped));
    END IF;
    IF accepted IS NOT NULL AND NOT typ = ANY (accepted) THEN
        RAISE EXCEPTION 'column "%" of relation % has type %, but % must be %', col, rel, typ, param, expected
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Map a column of the expected type, or an expression (amount_expression) that casts it.';
    END IF;
    RETURN format('s.%I', col);
END
$$;
COMMENT ON FUNCTION @extschema@._check_column(regclass, text, text, regtype[], text) IS 'Internal: attach-time validation of one mapped column.';

CREATE FUNCTION @extschema@._as_local(rel regclass, col text, expr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, current_setting('TimeZone'))
            ELSE expr END;
COMMENT ON FUNCTION @extschema@._as_local(regclass, text, text) IS 'Internal: pins a timestamptz column to the time zone in force at attach time.';

CREATE FUNCTION @extschema@.attach(
    source              regclass,
    program             text,
    account_column      text DEFAULT NULL,
    amount_column       text DEFAULT NULL,
    quantity_column     text DEFAULT NULL,
    date_column         text DEFAULT NULL,
    key_column          text DEFAULT NULL,
    product_line_column text DEFAULT NULL,
    currency_column     text DEFAULT NULL,
    doc_type_column     text DEFAULT NULL,
    credit_note_types   text[] DEFAULT NULL,
    due_date_column     text DEFAULT NULL,
    paid_date_column    text DEFAULT NULL,
    amount_expression   text DEFAULT NULL,
    header              regclass DEFAULT NULL,
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    prog @extschema@.program;
    keys text[];
    dside regclass := coalesce(header, source);
    ints regtype[] := ARRAY['smallint', 'integer', 'bigint']::regtype[];
    texts regtype[] := ARRAY['text', 'character varying', 'character']::regtype[];
    nums regtype[] := ARRAY['numeric', 'smallint', 'integer', 'bigint']::regtype[];
    dates regtype[] := ARRAY['date', 'timestamp without time zone', 'timestamp with time zone']::regtype[];
    acc text; amt text; qty text; dat text; pl text; cur text; dt text; due text; paid text;
    hk text; hm text;
    id integer;
    trg text;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = pid;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = source) = 'p' THEN
        RAISE NOTICE 'rows written straight into a partition of % will not accrue', source
            USING DETAIL = 'Statement triggers on a partitioned table see the rows written through it, not those written to a partition directly, and TRUNCATE of a partition is not refused.',
                  HINT = 'Make the ERP write through the partitioned table.';
    ELSIF (SELECT c.relkind FROM pg_class c WHERE c.oid = source) <> 'r' THEN
        RAISE EXCEPTION '% is not a table', source USING ERRCODE = 'wrong_object_type',
            HINT = 'Attach the table the ERP writes invoices or invoice lines to.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.program_id = pid AND x.source = attach.source AND x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'program "%" is already attached to %', program, source USING ERRCODE = 'duplicate_object',
            HINT = 'Detach it first with loyalty.detach() to change the mapping.';
    END IF;
    IF account_column IS NULL OR date_column IS NULL THEN
        RAISE EXCEPTION 'account_column and date_column are required' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example account_column => ''customer_id'', date_column => ''invoice_date''.';
    END IF;
    IF header IS NOT NULL THEN
        IF header_key_column IS NULL THEN
            RAISE EXCEPTION 'header_key_column is required with header' USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the column of the lines table that references the header, e.g. header_key_column => ''invoice_id''.';
        END IF;
        hk := @extschema@._check_column(source, 'header_key_column', header_key_column, NULL, NULL);
        hm := coalesce(header_match_column,
                       (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = header AND i.indisprimary AND i.indnatts = 1));
        IF hm IS NULL THEN
            RAISE EXCEPTION 'header % has no single-column primary key', header USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the header column the lines reference with header_match_column.';
        END IF;
        PERFORM @extschema@._check_column(header, 'header_match_column', hm, NULL, NULL);
    END IF;

    -- account, date and document columns live on the header when there is one
    acc := @extschema@._check_column(dside, 'account_column', account_column, ints || texts, 'int, bigint or text');
    dat := @extschema@._check_column(dside, 'date_column', date_column, dates, 'a date or timestamp');
    cur := @extschema@._check_column(dside, 'currency_column', currency_column, texts, 'text');
    dt := @extschema@._check_column(dside, 'doc_type_column', doc_type_column, texts || ints, 'text or integer');
    due := @extschema@._check_column(dside, 'due_date_column', due_date_column, dates, 'a date or timestamp');
    paid := @extschema@._check_column(dside, 'paid_date_column', paid_date_column, dates, 'a date or timestamp');
    amt := @extschema@._check_column(source, 'amount_column', amount_column, nums, 'numeric or integer (money is never float)');
    qty := @extschema@._check_column(source, 'quantity_column', quantity_column, nums || ARRAY['real', 'double precision']::regtype[], 'numeric');
    pl := @extschema@._check_column(source, 'product_line_column', product_line_column, texts || ints, 'text or integer');
    -- a timestamptz becomes a date in the time zone in force at attach time,
    -- fixed in the mapping, so that no session setting can move a document
    dat := @extschema@._as_local(dside, date_column, dat);
    due := @extschema@._as_local(dside, due_date_column, due);
    paid := @extschema@._as_local(dside, paid_date_column, paid);
    IF header IS NOT NULL THEN
        acc := replace(acc, 's.', 'h.'); dat := replace(dat, 's.', 'h.');
        cur := replace(cur, 's.', 'h.'); dt := replace(dt, 's.', 'h.');
        due := replace(due, 's.', 'h.'); paid := replace(paid, 's.', 'h.');
    END IF;
    IF (doc_type_column IS NULL) <> (credit_note_types IS NULL) THEN
        RAISE EXCEPTION 'doc_type_column and credit_note_types go together' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example doc_type_column => ''doc_type'', credit_note_types => ''{CRN}''.';
    END IF;
    IF amount_expression IS NOT NULL THEN
        IF amount_column IS NOT NULL THEN
            RAISE EXCEPTION 'give amount_column or amount_expression, not both' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        BEGIN
            EXECUTE format('SELECT (%s)::numeric FROM ONLY %s s LIMIT 0', amount_expression, source);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid amount_expression for %: %', source, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('The expression was: %s', amount_expression),
                      HINT = 'Write an expression of the table''s columns, e.g. ''quantity * unit_price * (1 - discount)''; qualify functions with their schema.';
        END;
        amt := '(' || amount_expression || ')';
    END IF;
    IF prog.basis = 'quantity' AND qty IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per quantity: quantity_column is required', program
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prog.basis = 'amount' AND amt IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per amount: amount_column or amount_expression is required', program
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- the row key: given, or the primary key; it must be unique
    IF key_column IS NOT NULL THEN
        keys := (SELECT array_agg(btrim(k) ORDER BY o) FROM unnest(string_to_array(key_column, ',')) WITH ORDINALITY AS u(k, o));
        PERFORM @extschema@._check_column(source, 'key_column', k, NULL, NULL) FROM unnest(keys) k;
        IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = source AND i.indisunique AND i.indpred IS NULL
                       AND i.indexprs IS NULL
                       AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                            WHERE a.attrelid = source AND a.attnum = ANY (i.indkey::int2[]))
                           = (SELECT array_agg(k ORDER BY k) FROM unnest(keys) k)) THEN
            RAISE EXCEPTION 'key columns (%) of % are not unique', key_column, source
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Name the columns of the primary key or of a unique index, e.g. key_column => ''invoice_id, line_no''.';
        END IF;
    ELSE
        keys := (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                 WHERE i.indrelid = source AND i.indisprimary);
        IF keys IS NULL THEN
            RAISE EXCEPTION '% has no primary key', source USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Name the columns that identify a row with key_column => ''col1, col2''.';
        END IF;
    END IF;

    INSERT INTO @extschema@.attachment AS x (program_id, source, source_name, key_columns, account_expr, amount_expr,
        quantity_expr, date_expr, product_line_expr, currency_expr, doc_type_expr, credit_note_types,
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, header_key_column, hm)
    RETURNING x.attachment_id INTO id;

    trg := 'loyalty_accrual_' || id;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_ins', source, id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_upd', source, id);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS loyalty_old'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue(%s)', trg || '_del', source, id);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                   trg || '_truncate', source);
    IF header IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue_header(%s)', trg || '_header', header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE DELETE OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@.stash_header(%s)',
                       trg || '_header_delete', hm, header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_header_truncate', header);
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. Columns are validated now; with header, the account, date, currency, document type and payment dates are read from the header table. Returns the attachment id. Rows that existed before: loyalty.backfill().';

-- The active attachment of a program on a table, or a clear error.
CREATE FUNCTION @extschema@._attachment_of(source regclass, program text) RETURNS @extschema@.attachment
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = _attachment_of.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            HINT = 'Attach it with loyalty.attach(); SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    RETURN a;
END
$$;
COMMENT ON FUNCTION @extschema@._attachment_of(regclass, text) IS 'Internal: the active attachment of a program on a table.';

CREATE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment := @extschema@._attachment_of(source, program);
    trg text;
BEGIN
    trg := 'loyalty_accrual_' || a.attachment_id;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_ins', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_upd', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_del', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_truncate', source);
    IF a.header IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_delete', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_truncate', a.header);
    END IF;
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;
COMMENT ON FUNCTION @extschema@.detach(regclass, text) IS 'Drops the accrual triggers of a program on a table. What was accrued stays in the ledger.';

CREATE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (date_trunc('month', current_date) - p.qualification_window + interval '1 month')::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id);
COMMENT ON FUNCTION @extschema@._rolling_start(integer) IS 'Internal: first month of the rolling qualification window.';

CREATE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
BEGIN
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  HINT = 'Accounts are enrolled by loyalty.enroll() or, under auto enrolment, by their first invoice.';
    END IF;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key;
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= current_date;
END
$$;
COMMENT ON FUNCTION @extschema@.balance(text, text) IS 'An account''s points, lifetime qualifying spend, rolling qualifying spend (the tier window) and tier.';

CREATE FUNCTION @extschema@.tier(program text, account_key text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT b.tier FROM @extschema@.balance(program, account_key) b);
COMMENT ON FUNCTION @extschema@.tier(text, text) IS 'An account''s current tier (NULL below the first threshold).';

CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key text[])
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    cond text;
    n integer := 0;
BEGIN
    FOR a IN SELECT * FROM @extschema@.attachment x WHERE x.source = explain_points.source AND x.detached_at IS NULL
             ORDER BY x.attachment_id LOOP
        IF cardinality(key) <> cardinality(a.key_columns) THEN
            RAISE EXCEPTION '% is keyed by % column(s) (%), % value(s) given', source, cardinality(a.key_columns),
                array_to_string(a.key_columns, ', '), cardinality(key) USING ERRCODE = 'invalid_parameter_value';
        END IF;
        cond := (SELECT string_agg(format('s.%I = ($1)[%s]::%s', c, o,
                        (SELECT format_type(t.atttypid, t.atttypmod) FROM pg_attribute t WHERE t.attrelid = source AND t.attname = c)), ' AND ')
                 FROM unnest(a.key_columns) WITH ORDINALITY AS u(c, o));
        RETURN QUERY EXECUTE format(
            'SELECT p.name, f.account_key, f.doc_date, r.status, r.reason, r.rule_valid_from, r.basis, r.points_per_unit,'
            ' f.product_line, coalesce(r.product_line_multiplier, 1), r.tier_on_date, coalesce(r.tier_multiplier, 1),'
            ' coalesce(r.segment_multiplier, 1),'
            ' r.raw_points, r.rounding, r.points, r.on_time_bonus, r.qualifying,'
            ' (SELECT format(''%%s points per account from %%s to %%s'', c.cap_points, c.period_start, c.period_end - 1)'
            '  FROM @extschema@._cap_for_month(%s, r.month) c WHERE c.cap_points IS NOT NULL)'
            ' FROM (%s WHERE %s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,'
            ' f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r,'
            ' @extschema@.program p WHERE p.program_id = %s',
            a.program_id, @extschema@._facts_sql(a.attachment_id), cond, a.attachment_id, a.program_id) USING key;
        n := n + 1;
    END LOOP;
    IF n = 0 THEN
        RAISE EXCEPTION 'no loyalty program is attached to %', source USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, text[]) IS
    'How a row''s points were computed, per attached program: rule version, basis, multipliers, rounding, bonus, cap. Give the key columns'' values in order.';

CREATE FUNCTION @extschema@.verify(program text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    -- 0. an attached table that was dropped cannot be checked
    RETURN QUERY
    SELECT NULL::text, NULL::date, x.attachment_id, 'source_dropped: ' || x.source_name, NULL::numeric, NULL::numeric
    FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.detached_at IS NULL AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = x.source);

    -- 1. every source row recomputed vs the per-month sums
    FOR a IN SELECT * FROM @extschema@.attachment x WHERE x.program_id = pid AND x.detached_at IS NULL
             AND EXISTS (SELECT FROM pg_class c WHERE c.oid = x.source) LOOP
        RETURN QUERY EXECUTE format($q$
            WITH src AS (
                SELECT f.account_key, r.month, sum(r.points + r.on_time_bonus) AS points,
                       sum(r.qualifying) AS qualifying, count(*) AS source_rows
                FROM (%s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,
                     f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r
                WHERE r.status IN ('earns', 'below_minimum', 'control_cohort')
                GROUP BY 1, 2),
            acc AS (SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying,
                           sum(m.source_rows) AS source_rows
                    FROM @extschema@.accrual_month m
                    WHERE m.program_id = %s AND m.attachment_id IN
                          (SELECT x.attachment_id FROM @extschema@.attachment x
                           WHERE x.program_id = %s AND x.source = %s::oid)
                    GROUP BY 1, 2),
            j AS (SELECT coalesce(s.account_key, c.account_key) AS k, coalesce(s.month, c.month) AS m,
                         coalesce(s.points, 0) AS sp, coalesce(c.points, 0) AS cp,
                         coalesce(s.qualifying, 0) AS sq, coalesce(c.qualifying, 0) AS cq,
                         coalesce(s.source_rows, 0) AS sr, coalesce(c.source_rows, 0) AS cr
                  FROM src s FULL JOIN acc c ON c.account_key = s.account_key AND c.month = s.month)
            SELECT j.k, j.m, %s, v.item, v.e, v.a FROM j,
                LATERAL (VALUES ('points', j.sp::numeric, j.cp::numeric), ('qualifying', j.sq, j.cq),
                                ('source_rows', j.sr::numeric, j.cr::numeric)) AS v(item, e, a)
            WHERE v.e IS DISTINCT FROM v.a$q$,
            @extschema@._facts_sql(a.attachment_id), a.attachment_id, pid, pid, a.source::oid, a.attachment_id);
    END LOOP;

    -- 2. the per-month sums, capped, vs the ledger's accrual entries
    RETURN QUERY
    WITH months AS (
        SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying
        FROM @extschema@.accrual_month m WHERE m.program_id = pid GROUP BY 1, 2),
    periods AS (
        SELECT mo.account_key, coalesce(c.period_start, mo.month) AS ps, c.cap_points,
               sum(mo.points) AS points, sum(mo.qualifying) AS qualifying
        FROM months mo LEFT JOIN LATERAL @extschema@._cap_for_month(pid, mo.month) c ON true
        GROUP BY 1, 2, 3),
    expected AS (
        SELECT p.account_key, sum(CASE WHEN p.cap_points IS NULL THEN p.points ELSE least(p.points, p.cap_points) END) AS points,
               sum(p.qualifying) AS qualifying
        FROM periods p GROUP BY 1),
    posted AS (
        SELECT l.account_key, sum(l.points) AS points, sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id = pid AND l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate')
        GROUP BY 1)
    SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e FULL JOIN posted p ON p.account_key = e.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;

    -- 3. the ledger vs the balances
    RETURN QUERY
    WITH l AS (SELECT x.account_key, sum(x.points) AS points, sum(x.qualifying) AS qualifying, count(*) AS n
               FROM @extschema@.ledger x WHERE x.program_id = pid GROUP BY 1),
         b AS (SELECT x.account_key, x.points, x.qualifying, x.entry_count AS n
               FROM @extschema@.balance x WHERE x.program_id = pid)
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM l FULL JOIN b ON b.account_key = l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@.verify(text) IS
    'Recomputes every attached source row, the per-month sums, the ledger and the balances of a program, and returns each difference (expected vs actual). Empty means every point reconciles with the invoices.';

-- What the ERP rows of an attachment's source should have accrued since a
-- month, minus what was accrued (under any attachment of the same source),
-- posted as one batch: backfill for history, restate for one account whose
-- segment, cohort or enrolment date changed.
CREATE FUNCTION @extschema@._reconcile(attachment integer, since_month date, account text, kind text,
                                       OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                       OUT points bigint, OUT qualifying numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    d record;
BEGIN
    SELECT * INTO a FROM @extschema@.attachment x WHERE x.attachment_id = attachment;
    EXECUTE format($q$
        WITH src AS (
            SELECT f.account_key, r.month, sum(r.points + r.on_time_bonus) AS points,
                   sum(r.qualifying) AS qualifying, count(*) AS source_rows
            FROM (%s) f, @extschema@._row_points(%s, f.account_key, f.amount, f.quantity, f.doc_date,
                 f.product_line, f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found) r
            WHERE r.status IN ('earns', 'below_minimum', 'control_cohort') AND r.month >= %L
              AND (%L::text IS NULL OR f.account_key = %L::text)
            GROUP BY 1, 2),
        acc AS (SELECT m.account_key, m.month, sum(m.points) AS points, sum(m.qualifying) AS qualifying,
                       sum(m.source_rows) AS source_rows
                FROM @extschema@.accrual_month m
                WHERE m.program_id = %s AND m.month >= %L
                  AND (%L::text IS NULL OR m.account_key = %L::text)
                  AND m.attachment_id IN (SELECT x.attachment_id FROM @extschema@.attachment x
                                          WHERE x.program_id = %s AND x.source = %s::oid)
                GROUP BY 1, 2),
        diff AS (SELECT coalesce(s.account_key, c.account_key) AS k, coalesce(s.month, c.month) AS m,
                        (coalesce(s.points, 0) - coalesce(c.points, 0))::bigint AS p,
                        coalesce(s.qualifying, 0) - coalesce(c.qualifying, 0) AS q,
                        (coalesce(s.source_rows, 0) - coalesce(c.source_rows, 0))::bigint AS r
                 FROM src s FULL JOIN acc c ON c.account_key = s.account_key AND c.month = s.month)
        SELECT array_agg(k ORDER BY k COLLATE "C", m) AS k, array_agg(m ORDER BY k COLLATE "C", m) AS m,
               array_agg(p ORDER BY k COLLATE "C", m) AS p, array_agg(q ORDER BY k COLLATE "C", m) AS q,
               array_agg(r ORDER BY k COLLATE "C", m) AS r,
               count(DISTINCT k)::int AS accounts, count(*)::int AS months,
               coalesce(sum(r), 0)::bigint AS source_rows, coalesce(sum(p), 0)::bigint AS points,
               coalesce(sum(q), 0) AS qualifying
        FROM diff WHERE p <> 0 OR q <> 0 OR r <> 0$q$,
        @extschema@._facts_sql(a.attachment_id), a.attachment_id, since_month, account, account,
        a.program_id, since_month, account, account, a.program_id, a.source::oid)
    INTO d;
    accounts := d.accounts; months := d.months; source_rows := d.source_rows;
    points := d.points; qualifying := d.qualifying;
    IF d.months > 0 THEN
        PERFORM @extschema@._post_backfill(a.attachment_id, d.k, d.m, d.p, d.q, d.r, kind);
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._reconcile(integer, date, text, text) IS
    'Internal: posts what the source rows of an attachment should have accrued and did not (backfill, restate).';

CREATE FUNCTION @extschema@.backfill(source regclass, program text, since date,
                                     OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                     OUT points bigint, OUT qualifying numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment := @extschema@._attachment_of(source, program);
    pid integer := a.program_id;
    since_month date := date_trunc('month', since)::date;
BEGIN
    IF since IS NULL THEN
        RAISE EXCEPTION 'since must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Use ''-infinity'' to backfill the whole history.';
    END IF;
    -- one backfill of a program at a time; concurrent ERP writes go on
    PERFORM pg_advisory_xact_lock(hashtext('loyalty.backfill'), a.attachment_id);

    -- auto enrolment: the customers of the history are members from day one
    IF (SELECT p.enrollment FROM @extschema@.program p WHERE p.program_id = pid) = 'auto' THEN
        EXECUTE format('INSERT INTO @extschema@.account (program_id, account_key, enrolled_by, enrolled_from)'
                       ' SELECT DISTINCT %s, f.account_key, ''auto'', ''-infinity''::date FROM (%s) f'
                       ' WHERE f.account_key IS NOT NULL AND f.doc_date >= %L ORDER BY 2 ON CONFLICT DO NOTHING',
                       pid, @extschema@._facts_sql(a.attachment_id), since_month);
    END IF;

    SELECT * INTO accounts, months, source_rows, points, qualifying
    FROM @extschema@._reconcile(a.attachment_id, since_month, NULL, 'backfill');
END
$$;
COMMENT ON FUNCTION @extschema@.backfill(regclass, text, date) IS
    'Accrues the rows of an attached table dated from since (rounded down to its month) that the triggers have not accrued, set-based. Idempotent: what is already accrued is not posted again, so a second or interrupted run is safe.';

REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text),
                      @extschema@.detach(regclass, text),
                      @extschema@.backfill(regclass, text, date),
                      @extschema@._reconcile(integer, date, text, text),
                      @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text),
                          @extschema@.detach(regclass, text),
                          @extschema@.backfill(regclass, text, date),
                          @extschema@._reconcile(integer, date, text, text),
                          @extschema@._post_backfill(integer, text[], date[], bigint[], numeric[], bigint[], text) TO loyalty_admin;

-- The per-month sums on loyalty.balance: decoded and merged in C inside the
-- balance upsert, so that a statement writes one row per account.
CREATE FUNCTION @extschema@._month_delta(delta bytea, attachment integer,
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS 'MODULE_PATHNAME', 'loyalty_month_delta' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._month_delta(bytea, integer) IS 'Internal: decodes a statement''s per-month deltas for one account.';

CREATE FUNCTION @extschema@._month_merge(a_month date[], a_attachment integer[], a_points bigint[], a_qualifying numeric[], a_source_rows bigint[],
                                         b_month date[], b_attachment integer[], b_points bigint[], b_qualifying numeric[], b_source_rows bigint[],
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS 'MODULE_PATHNAME', 'loyalty_month_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._month_merge(date[], integer[], bigint[], numeric[], bigint[], date[], integer[], bigint[], numeric[], bigint[]) IS
    'Internal: adds two sorted sets of per-month sums.';
