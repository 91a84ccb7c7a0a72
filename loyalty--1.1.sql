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
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_partner') THEN
        CREATE ROLE loyalty_partner NOLOGIN;
    END IF;
END
$roles$;

-- Multiplier maps are JSON objects of positive numbers, e.g. {"SOLAR": 2};
-- segment maps nest one level: {"cooperation_model": {"distributor": 1.1}}.
CREATE FUNCTION @extschema@._valid_multipliers(m pg_catalog.jsonb, nested boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
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
    rounding             text NOT NULL DEFAULT 'toward_zero' CHECK (rounding IN ('toward_zero', 'half_up', 'half_even')),
    qualification_window interval NOT NULL DEFAULT '12 months'
                         CHECK (qualification_window OPERATOR(pg_catalog.>=) '1 month'::interval
                                AND qualification_window OPERATOR(pg_catalog.<=) '10 years'::interval),
    enrollment           text NOT NULL DEFAULT 'auto' CHECK (enrollment IN ('auto', 'explicit')),
    strict               boolean NOT NULL DEFAULT false,
    settlement_period    text NOT NULL DEFAULT 'quarter' CHECK (settlement_period IN ('month', 'quarter', 'year')),
    point_lifetime       interval CHECK (point_lifetime OPERATOR(pg_catalog.>) '0'::interval),
    rebate               @extschema@.rebate_schedule,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    time_zone            text NOT NULL DEFAULT pg_catalog.current_setting('TimeZone')
                         CHECK (pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL),
    tier_basis           text NOT NULL DEFAULT 'qualifying' CHECK (tier_basis IN ('qualifying', 'points', 'action')),
    tier_action          text,
    tier_grace           text NOT NULL DEFAULT 'none' CHECK (tier_grace IN ('none', 'one_level', 'margin', 'periods')),
    tier_grace_value     numeric,
    CONSTRAINT program_tier_rules_check
        CHECK ((tier_basis = 'action') = (tier_action IS NOT NULL)
               AND CASE tier_grace WHEN 'margin' THEN tier_grace_value OPERATOR(pg_catalog.>) 0 AND tier_grace_value OPERATOR(pg_catalog.<) 1
                                   WHEN 'periods' THEN tier_grace_value OPERATOR(pg_catalog.>=) 1 AND tier_grace_value OPERATOR(pg_catalog.<=) 100
                                        AND tier_grace_value OPERATOR(pg_catalog.=) pg_catalog.trunc(tier_grace_value)
                                   ELSE tier_grace_value IS NULL END)
);
COMMENT ON TABLE @extschema@.program IS 'One loyalty or partner program: currency, accrual basis, rounding, tier ladder, qualification window, settlement period, point lifetime, enrolment policy.';
COMMENT ON COLUMN @extschema@.program.program_id IS 'Surrogate key; every other loyalty table carries it.';
COMMENT ON COLUMN @extschema@.program.name IS 'The name users type in every loyalty function (unique, 1 to 63 characters).';
COMMENT ON COLUMN @extschema@.program.currency IS 'ISO 4217 code; invoice rows in another currency are rejected to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.ladder IS 'Tier ladder applied to rolling qualifying spend; NULL for a program without tiers.';
COMMENT ON COLUMN @extschema@.program.basis IS 'amount: points per currency unit; quantity: points per unit of the mapped quantity column (e.g. per cubic metre).';
COMMENT ON COLUMN @extschema@.program.rounding IS 'How a row''s points are made whole: toward_zero (drops the fraction: 247.83 and -247.83 give 247 and -247), half_up (half away from zero: 2.5 gives 3, -2.5 gives -3) or half_even (half to the even neighbour: 2.5 gives 2, 3.5 gives 4). Symmetric around zero, so a credit note reverses exactly what the same invoice earned.';
COMMENT ON COLUMN @extschema@.program.qualification_window IS 'Rolling window of qualifying spend that decides the tier, counted in whole calendar months ending with the current month.';
COMMENT ON COLUMN @extschema@.program.enrollment IS 'auto: every customer that invoices is enrolled; explicit: only accounts enrolled with loyalty.enroll earn.';
COMMENT ON COLUMN @extschema@.program.strict IS 'When true, an invoice row the program cannot accrue fails the ERP statement instead of going to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.settlement_period IS 'Period of settlement runs: month, quarter or year.';
COMMENT ON COLUMN @extschema@.program.point_lifetime IS 'How long earned points stay valid before expiry at settlement; NULL = points never expire.';
COMMENT ON COLUMN @extschema@.program.rebate IS 'Volume rebate schedule settled per period; NULL = no rebate.';
COMMENT ON COLUMN @extschema@.program.created_at IS 'When the program was created.';
COMMENT ON COLUMN @extschema@.program.tier_basis IS 'What the ladder''s thresholds measure over the rolling window at settlement: qualifying (spend, the default), points (earned by documents of the window) or action (count of tier_action, e.g. certifications). Extra requirements per tier: loyalty.tier_requirement. Set with loyalty.set_tier_rules().';
COMMENT ON COLUMN @extschema@.program.tier_action IS 'The action counted when tier_basis is action; NULL otherwise.';
COMMENT ON COLUMN @extschema@.program.tier_grace IS 'How settlement downgrades an account below its tier: none (to what it qualifies for), one_level (at most one level per period), margin (keeps a tier while the measure is within tier_grace_value of its threshold) or periods (only after tier_grace_value settled periods in a row below).';
COMMENT ON COLUMN @extschema@.program.tier_grace_value IS 'margin: fraction below the threshold still kept (0.1 = 10 %); periods: how many periods in a row below before dropping; NULL otherwise.';
COMMENT ON COLUMN @extschema@.program.time_zone IS 'The program''s calendar: what "today" is for tier upgrades, segment changes and the rolling window, whichever time zone the posting session uses (default: the creating session''s TimeZone).';

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
    -- counts the debits (redemptions, claims, expiry) of the account: taking
    -- the next number locks the row, so that debits check the balance one
    -- after the other; the accrual path never touches it
    debit_no          bigint NOT NULL DEFAULT 0 CHECK (debit_no OPERATOR(pg_catalog.>=) 0),
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
COMMENT ON COLUMN @extschema@.account.debit_no IS 'How many debits (redemptions, claims, expiry) the account has had; taking the next number serialises them.';
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
    product             regclass,
    line_product_column text,
    product_id_column   text,
    CHECK (amount_expr IS NOT NULL OR quantity_expr IS NOT NULL),
    CHECK ((header IS NULL) = (header_key_column IS NULL) AND (header IS NULL) = (header_match_column IS NULL)),
    CHECK ((doc_type_expr IS NULL) = (credit_note_types IS NULL)),
    CONSTRAINT attachment_product_check
        CHECK ((product IS NULL) = (line_product_column IS NULL) AND (product IS NULL) = (product_id_column IS NULL)
               AND (product IS NULL OR product_line_expr IS NOT NULL))
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
COMMENT ON COLUMN @extschema@.attachment.header_key_column IS 'The lines'' column (of source) that references the header: attach()''s line_header_column.';
COMMENT ON COLUMN @extschema@.attachment.header_match_column IS 'The header''s own column that line_header_column references (its primary key by default): attach()''s header_id_column.';
COMMENT ON COLUMN @extschema@.attachment.attached_at IS 'When loyalty.attach ran.';
COMMENT ON COLUMN @extschema@.attachment.detached_at IS 'When loyalty.detach ran; NULL while attached.';
COMMENT ON COLUMN @extschema@.attachment.product IS 'Product table (the product master) holding the product line of each line''s product; product_line_expr is then over it (alias p). NULL: the product line is a column of the source.';
COMMENT ON COLUMN @extschema@.attachment.line_product_column IS 'The lines'' column (of source) that references the product table.';
COMMENT ON COLUMN @extschema@.attachment.product_id_column IS 'The product table''s own column that line_product_column references (its primary key by default).';

-- A product's earlier product lines, per attachment: written by the trigger
-- on the product table (loyalty.track_product) when a product's mapped
-- product line changes or the product is deleted, so that what a document
-- earned never changes after the fact.
CREATE TABLE @extschema@.product_history (
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    product_key   text NOT NULL,
    valid_until   date NOT NULL,
    product_line  text,
    changed_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (attachment_id, product_key, valid_until)
);
COMMENT ON TABLE @extschema@.product_history IS 'Earlier product lines of the products of an attachment''s product table. A document dated before valid_until earns by the product line of the first row of its product that ends after the document''s date; later documents by the product''s current row. A change takes effect from the day after it is made (in the program''s calendar), or after the latest document of the product already written, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.product_history.attachment_id IS 'The attachment whose product table it is.';
COMMENT ON COLUMN @extschema@.product_history.product_key IS 'The product''s key (product_id_column) in its text form.';
COMMENT ON COLUMN @extschema@.product_history.valid_until IS 'First document date this product line no longer applies to.';
COMMENT ON COLUMN @extschema@.product_history.product_line IS 'The product line as it was (NULL: none, or the product did not exist).';
COMMENT ON COLUMN @extschema@.product_history.changed_at IS 'When the change was made.';

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
    corrects_xid  xid8,
    -- numbered per transaction, not per account: two transactions posting
    -- to one account must not wait for each other for a number
    PRIMARY KEY (program_id, account_key, posted_xid, entry_no),
    -- no foreign key to account: its check would run a query per posting on
    -- the hot path; accounts with postings cannot be deleted (account_keep)
    CHECK ((corrects IS NULL) = (corrects_xid IS NULL))
);
COMMENT ON TABLE @extschema@.ledger IS 'Append-only journal of every movement. Nothing is updated or deleted; corrections are new entries. Wallets are columns: points, qualifying (tier spend), rebate and mdf (money).';
COMMENT ON COLUMN @extschema@.ledger.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.ledger.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.ledger.entry_no IS 'Entry number within the posting transaction (posted_xid), from 1; with the account and posted_xid it identifies the entry. No sequence and no per-account counter is involved, so postings never wait for each other.';
COMMENT ON COLUMN @extschema@.ledger.kind IS 'earn / reverse: what an ERP statement''s new / old rows earn; bonus: on-time payment bonus; cap: points withheld (or given back) by a cap; backfill: history accrued by loyalty.backfill; restate: what an account''s documents earn differently after its enrolment date changed; redeem, expire, adjust, award, rebate, mdf.';
COMMENT ON COLUMN @extschema@.ledger.points IS 'Points moved (negative for reversals, redemptions, expiry).';
COMMENT ON COLUMN @extschema@.ledger.qualifying IS 'Tier-qualifying spend moved, in program currency.';
COMMENT ON COLUMN @extschema@.ledger.rebate IS 'Rebate money moved.';
COMMENT ON COLUMN @extschema@.ledger.mdf IS 'Market development funds moved.';
COMMENT ON COLUMN @extschema@.ledger.member_id IS 'The member who earned or spent, when not the account as a whole.';
COMMENT ON COLUMN @extschema@.ledger.attachment_id IS 'The ERP table mapping whose rows produced the entry.';
COMMENT ON COLUMN @extschema@.ledger.source_rows IS 'How many ERP rows the entry sums.';
COMMENT ON COLUMN @extschema@.ledger.corrects IS 'Entry number of the entry (same account, transaction corrects_xid) this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.corrects_xid IS 'Transaction of the entry this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.reason IS 'Free text: the statement kind for accruals, the reason for adjustments.';
COMMENT ON COLUMN @extschema@.ledger.posted_at IS 'Transaction timestamp of the posting.';
COMMENT ON COLUMN @extschema@.ledger.posted_xid IS 'Transaction that posted the entry.';

CREATE TABLE @extschema@.balance_folded (
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
    last_doc_date  date,
    PRIMARY KEY (program_id, account_key)
    -- no foreign key to account, as for the ledger (account_keep)
);
COMMENT ON TABLE @extschema@.balance_folded IS 'Running totals per account as of the last loyalty.fold(): the ERP''s transactions never write it (they append to loyalty.balance_delta), so they never wait on each other here. Read balances through the view loyalty.balance, which adds what is not folded yet.';
COMMENT ON COLUMN @extschema@.balance_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_folded.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_folded.points IS 'Points available (sum of the folded ledger entries, caps included).';
COMMENT ON COLUMN @extschema@.balance_folded.qualifying IS 'Lifetime qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_folded.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance_folded.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance_folded.entry_count IS 'Number of ledger entries folded.';
COMMENT ON COLUMN @extschema@.balance_folded.m_month IS 'Per-month sums, one element per (document month, attachment), sorted: the months. Read them through the view loyalty.accrual_month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_attachment IS 'Per-month sums: the attachment (ERP table mapping) of each element.';
COMMENT ON COLUMN @extschema@.balance_folded.m_points IS 'Per-month sums: points earned by the documents of the month (bonus included, caps not applied).';
COMMENT ON COLUMN @extschema@.balance_folded.m_qualifying IS 'Per-month sums: qualifying spend of the documents of the month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_source_rows IS 'Per-month sums: net number of ERP rows accrued.';
COMMENT ON COLUMN @extschema@.balance_folded.updated_at IS 'Last fold that changed the row.';
COMMENT ON COLUMN @extschema@.balance_folded.last_doc_date IS 'The latest document date the account ever accrued (never decreases): tier and segment changes take effect after it, so that no accrued document changes what it earned.';

-- What one statement (or backfill, or restatement) changed for one
-- account: appended, never updated, so that two transactions posting to the
-- same customer never wait on each other, deadlock or fail to serialize.
-- loyalty.fold() moves committed rows into loyalty.balance_folded.
CREATE TABLE @extschema@.balance_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    points        bigint NOT NULL DEFAULT 0,
    qualifying    numeric NOT NULL DEFAULT 0,
    rebate        numeric NOT NULL DEFAULT 0,
    mdf           numeric NOT NULL DEFAULT 0,
    entry_count   bigint NOT NULL DEFAULT 0,
    m_month       date[] NOT NULL DEFAULT '{}',
    m_attachment  integer[] NOT NULL DEFAULT '{}',
    m_points      bigint[] NOT NULL DEFAULT '{}',
    m_qualifying  numeric[] NOT NULL DEFAULT '{}',
    m_source_rows bigint[] NOT NULL DEFAULT '{}',
    last_doc_date date,
    posted_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.balance_delta IS 'Balance changes not folded yet, one row per account and posting statement. Appended by the accrual triggers, backfill and restatements; loyalty.fold() (pg_cron) adds committed rows to loyalty.balance_folded and deletes them. loyalty.balance and loyalty.accrual_month add them in, so reads are exact whether or not a fold ran.';
COMMENT ON COLUMN @extschema@.balance_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_delta.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_xid IS 'Transaction that posted the change.';
COMMENT ON COLUMN @extschema@.balance_delta.delta_no IS 'Number within the transaction (shared with the ledger entries it posted).';
COMMENT ON COLUMN @extschema@.balance_delta.points IS 'Points posted, before caps (loyalty.balance applies them; the fold books them as ledger entries of kind cap).';
COMMENT ON COLUMN @extschema@.balance_delta.qualifying IS 'Qualifying spend posted.';
COMMENT ON COLUMN @extschema@.balance_delta.rebate IS 'Rebate money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.mdf IS 'MDF money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.entry_count IS 'Ledger entries posted with it.';
COMMENT ON COLUMN @extschema@.balance_delta.m_month IS 'Per-month sums posted: the months (sorted, with m_attachment).';
COMMENT ON COLUMN @extschema@.balance_delta.m_attachment IS 'Per-month sums posted: the attachments.';
COMMENT ON COLUMN @extschema@.balance_delta.m_points IS 'Per-month sums posted: points (caps not applied).';
COMMENT ON COLUMN @extschema@.balance_delta.m_qualifying IS 'Per-month sums posted: qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_delta.m_source_rows IS 'Per-month sums posted: net ERP rows.';
COMMENT ON COLUMN @extschema@.balance_delta.last_doc_date IS 'The latest document date the posting added.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_at IS 'When.';

CREATE FUNCTION @extschema@.pending_caps(program_id integer, account_key text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_pending_caps' LANGUAGE C STABLE STRICT SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.pending_caps(integer, text) IS
    'What the caps withhold (negative) or give back from an account''s postings not folded yet: the cap entry the next loyalty.fold() books. loyalty.balance adds it, so that balances are capped before the fold. Reads with the caller''s rights and snapshot.';

CREATE VIEW @extschema@.balance AS
SELECT s.program_id, s.account_key,
       (s.points OPERATOR(pg_catalog.+) CASE WHEN s.pending THEN @extschema@.pending_caps(s.program_id, s.account_key) ELSE 0 END)::bigint AS points,
       s.qualifying, s.rebate, s.mdf, s.entry_count::bigint AS entry_count, s.updated_at, s.last_doc_date
FROM (SELECT u.program_id, u.account_key, pg_catalog.sum(u.points) AS points, pg_catalog.sum(u.qualifying) AS qualifying,
             pg_catalog.sum(u.rebate) AS rebate, pg_catalog.sum(u.mdf) AS mdf, pg_catalog.sum(u.entry_count) AS entry_count,
             pg_catalog.max(u.updated_at) AS updated_at, pg_catalog.max(u.last_doc_date) AS last_doc_date,
             pg_catalog.bool_or(u.pending) AS pending
      FROM (SELECT f.program_id, f.account_key, f.points, f.qualifying, f.rebate, f.mdf, f.entry_count,
                   f.updated_at, f.last_doc_date, false AS pending
            FROM @extschema@.balance_folded f
            UNION ALL
            SELECT d.program_id, d.account_key, d.points, d.qualifying, d.rebate, d.mdf, d.entry_count,
                   d.posted_at, d.last_doc_date, true
            FROM @extschema@.balance_delta d) u
      GROUP BY u.program_id, u.account_key) s;
COMMENT ON VIEW @extschema@.balance IS 'Running totals per account: the folded balance plus every posting not folded yet that the reader can see (its own uncommitted ones included), caps applied. Equal to the sums of loyalty.ledger at all times, with the caps the next fold books.';
COMMENT ON COLUMN @extschema@.balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance.points IS 'Points available, caps applied.';
COMMENT ON COLUMN @extschema@.balance.qualifying IS 'Lifetime qualifying spend; the rolling figure that decides tiers is loyalty.balance(program, account).rolling_qualifying.';
COMMENT ON COLUMN @extschema@.balance.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance.entry_count IS 'Number of ledger entries of the account (cap entries the next fold books not included).';
COMMENT ON COLUMN @extschema@.balance.updated_at IS 'Last change.';
COMMENT ON COLUMN @extschema@.balance.last_doc_date IS 'The latest document date the account ever accrued.';

CREATE VIEW @extschema@.accrual_month AS
SELECT u.program_id, u.attachment_id, u.account_key, u.month,
       pg_catalog.sum(u.points)::bigint AS points, pg_catalog.sum(u.qualifying) AS qualifying,
       pg_catalog.sum(u.source_rows)::bigint AS source_rows
FROM (SELECT b.program_id, x.attachment_id, b.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_folded b,
           ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                      pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)
      UNION ALL
      SELECT d.program_id, x.attachment_id, d.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_delta d,
           ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points),
                      pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)) u
GROUP BY u.program_id, u.attachment_id, u.account_key, u.month
HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0
    OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0;
COMMENT ON VIEW @extschema@.accrual_month IS 'What each account''s documents earned per document month and ERP table, before caps: the rolling qualification window, caps and loyalty.verify read it.';
COMMENT ON COLUMN @extschema@.accrual_month.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.accrual_month.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.accrual_month.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.accrual_month.month IS 'First day of the documents'' month.';
COMMENT ON COLUMN @extschema@.accrual_month.points IS 'Points earned by the rows of that month (bonus included, cap not applied).';
COMMENT ON COLUMN @extschema@.accrual_month.qualifying IS 'Qualifying spend of the rows of that month.';
COMMENT ON COLUMN @extschema@.accrual_month.source_rows IS 'Net number of rows accrued (inserts minus deletes).';

CREATE TABLE @extschema@.unenrolled_folded (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    account_key   text NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    first_seen    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, attachment_id)
);
COMMENT ON TABLE @extschema@.unenrolled_folded IS 'Activity of customers not enrolled in an explicit-enrolment program, as of the last loyalty.fold(). Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_folded.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.last_seen IS 'Last time seen.';

-- Appended by the accrual triggers, one row per customer and statement, so
-- that two transactions invoicing the same unenrolled customer never wait
-- for each other; loyalty.fold() sums committed rows into unenrolled_folded.
CREATE TABLE @extschema@.unenrolled_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    attachment_id integer NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.unenrolled_delta IS 'Activity of unenrolled customers not folded yet, one row per customer, ERP table and statement. Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.posted_xid IS 'Transaction that saw the rows.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.delta_no IS 'Number within the transaction.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.source_rows IS 'Net rows seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.seen_at IS 'When.';

CREATE VIEW @extschema@.unenrolled_activity AS
SELECT u.program_id, u.attachment_id, u.account_key, pg_catalog.sum(u.source_rows)::bigint AS source_rows,
       pg_catalog.sum(u.amount) AS amount, pg_catalog.min(u.first_seen) AS first_seen, pg_catalog.max(u.last_seen) AS last_seen
FROM (SELECT f.program_id, f.attachment_id, f.account_key, f.source_rows, f.amount, f.first_seen, f.last_seen
      FROM @extschema@.unenrolled_folded f
      UNION ALL
      SELECT d.program_id, d.attachment_id, d.account_key, d.source_rows, d.amount, d.seen_at, d.seen_at
      FROM @extschema@.unenrolled_delta d) u
GROUP BY u.program_id, u.attachment_id, u.account_key;
COMMENT ON VIEW @extschema@.unenrolled_activity IS 'Customers that invoiced under an explicit-enrolment program without being enrolled: ignored by accrual, counted here (candidates to enrol).';
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
    kind              text NOT NULL DEFAULT 'goods'
                      CHECK (kind IN ('discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                                      'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other')),
    description       text,
    valid_from        date,
    valid_until       date,
    period_limit      integer CHECK (period_limit OPERATOR(pg_catalog.>) 0),
    limit_period      text CHECK (limit_period IN ('month', 'quarter', 'year')),
    PRIMARY KEY (program_id, reward_id),
    CONSTRAINT reward_limit_pair_check CHECK ((period_limit IS NULL) = (limit_period IS NULL)),
    CONSTRAINT reward_window_check CHECK (valid_until OPERATOR(pg_catalog.>) valid_from)
);
COMMENT ON TABLE @extschema@.reward IS 'Catalogue of rewards (discounts, goods and business services: training seats, consultancy hours, extended warranty, marketing support, trade-show places, service visits, sessions with experts) with their points price and limits. Written with loyalty.set_reward(); redeemed with loyalty.redeem().';
COMMENT ON COLUMN @extschema@.reward.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.reward.reward_id IS 'The reward''s code.';
COMMENT ON COLUMN @extschema@.reward.name IS 'What the partner sees.';
COMMENT ON COLUMN @extschema@.reward.points_price IS 'Points per unit.';
COMMENT ON COLUMN @extschema@.reward.min_tier IS 'Lowest tier that may redeem it; NULL = any.';
COMMENT ON COLUMN @extschema@.reward.stock IS 'Units left; NULL = unlimited. Each redemption takes its units, each cancellation gives them back.';
COMMENT ON COLUMN @extschema@.reward.per_account_limit IS 'Most units one account may redeem in all (cancelled redemptions not counted); NULL = unlimited.';
COMMENT ON COLUMN @extschema@.reward.active IS 'Whether it can be redeemed now.';
COMMENT ON COLUMN @extschema@.reward.kind IS 'What it is: discount, goods, training, consultancy, extended_warranty, marketing_support, trade_show, service_visit, expert_session or other.';
COMMENT ON COLUMN @extschema@.reward.description IS 'Longer description for the catalogue.';
COMMENT ON COLUMN @extschema@.reward.valid_from IS 'First day (program calendar) it can be redeemed; NULL = since always.';
COMMENT ON COLUMN @extschema@.reward.valid_until IS 'First day (program calendar) it can no longer be redeemed; NULL = no end.';
COMMENT ON COLUMN @extschema@.reward.period_limit IS 'Most units one account may redeem per calendar period (limit_period), cancelled redemptions not counted; NULL = no such limit.';
COMMENT ON COLUMN @extschema@.reward.limit_period IS 'The calendar period of period_limit: month, quarter or year (program calendar).';

-- Keyed by the account and its debit number (loyalty._lock_for_debit): no
-- sequence, co-located with the account.  No foreign key to loyalty.reward:
-- its check would share-lock the reward's row in every redemption, one row
-- that all redemptions of a popular reward would then queue on; a reward is
-- never deleted (no loyalty role may, and set_reward deactivates instead).
-- None to loyalty.account or loyalty.member either, as for the ledger:
-- each check is a trigger and a query per redemption; redeem() checks the
-- account and the member itself, an account with postings cannot be deleted
-- (account_keep), no loyalty role may delete a member, and verify's member
-- check (_verify_members) reports entries of unknown members.
CREATE TABLE @extschema@.redemption (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    redemption_no bigint NOT NULL,
    redemption_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    reward_id     text NOT NULL,
    member_id     text,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>) 0),
    status        text NOT NULL DEFAULT 'redeemed' CHECK (status IN ('redeemed', 'cancelled')),
    redeemed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    redeemed_on   date NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no      bigint NOT NULL,
    cancelled_at  timestamptz,
    cancel_xid    xid8,
    cancel_entry_no bigint,
    PRIMARY KEY (program_id, account_key, redemption_no),
    CONSTRAINT redemption_cancel_check
        CHECK ((status OPERATOR(pg_catalog.=) 'cancelled') = (cancelled_at IS NOT NULL)
               AND (cancelled_at IS NULL) = (cancel_xid IS NULL) AND (cancel_xid IS NULL) = (cancel_entry_no IS NULL))
);
CREATE INDEX redemption_id_idx ON @extschema@.redemption (redemption_id);
COMMENT ON TABLE @extschema@.redemption IS 'Rewards redeemed (loyalty.redeem): each spent its points with a ledger entry of kind redeem; a cancellation (loyalty.cancel_redemption) posts the opposite entry, pointing at the original.';
COMMENT ON COLUMN @extschema@.redemption.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.redemption.account_key IS 'The redeeming account.';
COMMENT ON COLUMN @extschema@.redemption.redemption_no IS 'The account''s debit number (loyalty.account.debit_no) the redemption took.';
COMMENT ON COLUMN @extschema@.redemption.redemption_id IS 'The redemption''s identifier, returned by loyalty.redeem() and taken by loyalty.cancel_redemption().';
COMMENT ON COLUMN @extschema@.redemption.reward_id IS 'The reward.';
COMMENT ON COLUMN @extschema@.redemption.member_id IS 'The member who redeemed from their own points; NULL = the account.';
COMMENT ON COLUMN @extschema@.redemption.quantity IS 'Units.';
COMMENT ON COLUMN @extschema@.redemption.points IS 'Points spent (quantity x price at the time).';
COMMENT ON COLUMN @extschema@.redemption.status IS 'redeemed or cancelled.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_at IS 'When it was redeemed.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_on IS 'The day it was redeemed in the program''s calendar (the per-period limit counts by it).';
COMMENT ON COLUMN @extschema@.redemption.posted_xid IS 'Transaction of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.entry_no IS 'Entry number (within posted_xid) of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.cancelled_at IS 'When it was cancelled.';
COMMENT ON COLUMN @extschema@.redemption.cancel_xid IS 'Transaction of the ledger entry that gave the points back.';
COMMENT ON COLUMN @extschema@.redemption.cancel_entry_no IS 'Entry number (within cancel_xid) of the ledger entry that gave the points back.';

CREATE TABLE @extschema@.tier_history (
    program_id         integer NOT NULL,
    account_key        text NOT NULL,
    change_no          bigint NOT NULL CHECK (change_no OPERATOR(pg_catalog.>) 0),
    changed_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    effective_from     date NOT NULL,
    old_tier           text,
    new_tier           text,
    reason             text NOT NULL,
    rolling_qualifying numeric,
    PRIMARY KEY (program_id, account_key, change_no),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CHECK (old_tier IS DISTINCT FROM new_tier),
    CONSTRAINT tier_history_reason_check
        CHECK (reason IN ('upgrade_on_accrual', 'requalification', 'grace', 'downgrade', 'manual', 'backfill'))
);
COMMENT ON TABLE @extschema@.tier_history IS 'Every tier change with its reason. A document earns tier multipliers by the tier in force on its date, and a change takes effect from the day after it happens, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.tier_history.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_history.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.tier_history.change_no IS 'Number of the change within the account, from 1, ascending in time (the account''s highest plus one, taken by whoever holds the program''s tier lock).';
COMMENT ON COLUMN @extschema@.tier_history.changed_at IS 'When the change was recorded.';
COMMENT ON COLUMN @extschema@.tier_history.effective_from IS 'First document date the new tier applies to.';
COMMENT ON COLUMN @extschema@.tier_history.old_tier IS 'Tier before (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.new_tier IS 'Tier after (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.reason IS 'upgrade_on_accrual (fold), requalification (settlement: up, or down to what the account qualifies for), grace (settlement: down, but less far than the account qualifies for, by the program''s grace rule), downgrade (settlement: down after the grace periods ran out), manual (loyalty.grant_tier / revoke_tier), backfill.';
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
    mdf_total    numeric,
    period_qualifying  numeric,
    carried_qualifying numeric,
    period_points      bigint,
    carried_points     bigint,
    tiers_up     integer,
    tiers_down   integer,
    tiers_held   integer,
    settled_by   text,
    PRIMARY KEY (program_id, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start),
    CHECK ((status = 'done') <= (finished_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.settlement_run IS 'One row per program and settlement period: the idempotency key of settlement.';
COMMENT ON COLUMN @extschema@.settlement_run.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_run.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.settlement_run.period_end IS 'Last day of the period (included), as given to loyalty.settle().';
COMMENT ON COLUMN @extschema@.settlement_run.status IS 'running, done or failed.';
COMMENT ON COLUMN @extschema@.settlement_run.started_at IS 'Start.';
COMMENT ON COLUMN @extschema@.settlement_run.finished_at IS 'End.';
COMMENT ON COLUMN @extschema@.settlement_run.accounts IS 'Accounts settled.';
COMMENT ON COLUMN @extschema@.settlement_run.points_expired IS 'Points expired.';
COMMENT ON COLUMN @extschema@.settlement_run.rebate_total IS 'Rebate money trued up (what the rebate step returned).';
COMMENT ON COLUMN @extschema@.settlement_run.mdf_total IS 'MDF money accrued (what the MDF step returned).';
COMMENT ON COLUMN @extschema@.settlement_run.period_qualifying IS 'Qualifying spend of the documents dated in the period, as settled.';
COMMENT ON COLUMN @extschema@.settlement_run.carried_qualifying IS 'Qualifying spend of documents dated before the period that no earlier run counted (late invoices, credit notes): the adjustment carried into this run.';
COMMENT ON COLUMN @extschema@.settlement_run.period_points IS 'Points earned by the documents dated in the period (before caps), as settled.';
COMMENT ON COLUMN @extschema@.settlement_run.carried_points IS 'Points of documents dated before the period that no earlier run counted.';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_up IS 'Accounts moved up by re-qualification.';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_down IS 'Accounts moved down (fully, or one level or within the margin by grace).';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_held IS 'Accounts below their tier that kept it (grace, or an upgrade reached in the period).';
COMMENT ON COLUMN @extschema@.settlement_run.settled_by IS 'The role that ran the settlement.';

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
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form (a key over 1024 bytes: its first bytes and the MD5 of the whole, since the column is indexed).';
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
SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance_folded', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_folded', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.reward', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_run', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.program_program_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment_attachment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.product_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance_delta', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_delta', '');

-- The ledger is append-only.
CREATE FUNCTION @extschema@._ledger_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'loyalty.ledger is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on loyalty.ledger is refused: entries are never changed or removed.', TG_OP),
              HINT = 'Correct the ERP''s invoice rows instead (UPDATE, DELETE or a credit note): the accrual posts the correcting entries.';
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

-- A dead letter marked handled stays handled: resolved_at is the one column
-- operators may write on loyalty.rejected_event, once.
CREATE FUNCTION @extschema@._rejected_resolved_once() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the dead letter of row % is already settled', coalesce(OLD.row_key, '(no key)')
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('It was settled at %s; resolved_at is set once and never changed.', OLD.resolved_at),
              HINT = 'Leave it as it is; open dead letters are those WHERE resolved_at IS NULL.';
END
$$;
COMMENT ON FUNCTION @extschema@._rejected_resolved_once() IS 'Internal: refuses changes to resolved_at of a settled dead letter.';
CREATE TRIGGER rejected_event_resolved_once BEFORE UPDATE OF resolved_at ON @extschema@.rejected_event
    FOR EACH ROW WHEN (OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at)
    EXECUTE FUNCTION @extschema@._rejected_resolved_once();

-- Least privilege.  Readers see everything, operators run the day-to-day
-- functions, admins configure programs.  No role writes the accrual or
-- configuration tables directly: the functions that check what a change
-- may do are the only way in (they write as the extension owner), so no
-- direct write can bypass their checks.  Members have no functions yet and
-- stay writable (the rewards catalogue is written by loyalty.set_reward);
-- of a dead letter, only resolved_at.
GRANT USAGE ON SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT INSERT, UPDATE ON @extschema@.member TO loyalty_operator, loyalty_admin;
GRANT UPDATE (resolved_at) ON @extschema@.rejected_event TO loyalty_operator, loyalty_admin;
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
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _today.program_id);
COMMENT ON FUNCTION @extschema@._today(integer) IS 'Internal: today in the program''s time zone.';

-- Windows of 1.0 programs may hold days: 30 days count as a month, as 1.0's
-- trigger counted them.  New programs give whole months.
CREATE FUNCTION @extschema@._window_months(w interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN GREATEST(1, (pg_catalog.date_part('year', w) OPERATOR(pg_catalog.*) 12
                               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', w)
                               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', w) OPERATOR(pg_catalog./) 30))::integer);
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
    SELECT * INTO before FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key;
    INSERT INTO @extschema@.account AS a (program_id, account_key, cooperation_model, industry, region,
                                          potential_spend, cohort, enrolled_by, enrolled_from)
    VALUES (pid, account_key, cooperation_model, industry, region, potential_spend, cohort, 'explicit',
            coalesce(enrolled_from, CASE policy WHEN 'auto' THEN '-infinity'::date ELSE @extschema@._today(pid) END))
    ON CONFLICT ON CONSTRAINT account_pkey DO UPDATE
    SET cooperation_model = coalesce(excluded.cooperation_model, a.cooperation_model),
        industry = coalesce(excluded.industry, a.industry),
        region = coalesce(excluded.region, a.region),
        potential_spend = coalesce(excluded.potential_spend, a.potential_spend),
        cohort = coalesce(excluded.cohort, a.cohort),
        enrolled_from = coalesce(_enroll.enrolled_from, a.enrolled_from);

    SELECT * INTO after FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = _enroll.account_key;

    -- A new segment or cohort applies to documents dated from tomorrow (in
    -- the program's calendar), and never to a document already accrued: after
    -- the account's latest document date if that is later.  The old values
    -- stay for the documents before (the first change of a day keeps them:
    -- values that were never in force for any date are dropped).
    IF before.account_key IS NOT NULL
       AND (before.cooperation_model, before.industry, before.region, before.cohort)
           IS DISTINCT FROM (after.cooperation_model, after.industry, after.region, after.cohort) THEN
        INSERT INTO @extschema@.account_history (program_id, account_key, valid_until, cooperation_model,
                                                 industry, region, cohort)
        VALUES (pid, _enroll.account_key,
                GREATEST(@extschema@._today(pid) + 1,
                         (SELECT b.last_doc_date + 1 FROM @extschema@.balance b
                          WHERE b.program_id = pid AND b.account_key = _enroll.account_key)),
                before.cooperation_model, before.industry, before.region, before.cohort)
        ON CONFLICT DO NOTHING;
    END IF;

    -- A new enrolment date changes which documents earn at all; so does a
    -- first enrolment of a customer whose documents were ignored so far.
    enrolled_program := pid;
    restate := (before.account_key IS NOT NULL AND before.enrolled_from IS DISTINCT FROM after.enrolled_from
                AND EXISTS (SELECT FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = _enroll.account_key))
               OR (before.account_key IS NULL
                   AND EXISTS (SELECT FROM @extschema@.unenrolled_activity u
                               WHERE u.program_id = pid AND u.account_key = _enroll.account_key AND u.source_rows <> 0));
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
-- Accrual: attaching ERP tables, the triggers, and the functions that read,
-- explain, verify and backfill what the triggers post.

CREATE FUNCTION @extschema@.accrue() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.accrue() IS 'Statement-level accrual trigger created by loyalty.attach(); its argument is the attachment id.';

CREATE FUNCTION @extschema@.accrue_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_accrue_header' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.accrue_header() IS 'Statement-level triggers on a header table: re-accrue the lines of headers whose account, date, currency, document type or payment dates changed, and accrue the lines that were waiting for a header inserted after them.';

CREATE FUNCTION @extschema@.stash_header() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_stash_header' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.stash_header() IS 'Row trigger on a header table: keeps the facts of a deleted or renumbered header until commit so that its lines are reversed exactly.';

CREATE FUNCTION @extschema@.track_product() RETURNS trigger
AS 'MODULE_PATHNAME', 'loyalty_track_product' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.track_product() IS 'Statement-level triggers on a product table: when a product''s mapped product line changes, the product is deleted, or a product is inserted after lines that name it, keeps the line it had for the documents dated before the change (loyalty.product_history).';

CREATE FUNCTION @extschema@._refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% would bypass loyalty accrual', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'The table is attached to a loyalty program; TRUNCATE fires no row events, so the points its rows earned would stay.',
              HINT = 'DELETE the rows instead, or detach the program first with loyalty.detach().';
END
$$;
COMMENT ON FUNCTION @extschema@._refuse_truncate() IS 'Internal: refuses TRUNCATE on attached ERP tables.';

CREATE FUNCTION @extschema@._capped_points(program_id integer, months date[], points bigint[]) RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_capped_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._capped_points(integer, date[], bigint[]) IS 'Internal: an account''s per-month points after the program''s nested caps (month, quarter, year), summed; the trigger''s own computation, for verify().';

CREATE FUNCTION @extschema@._equality_operator(type regtype) RETURNS text
AS 'MODULE_PATHNAME', 'loyalty_equality_operator' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._equality_operator(regtype) IS 'Internal: a type''s own equality operator as SQL text, for joins on ERP keys.';
REVOKE ALL ON FUNCTION @extschema@._equality_operator(regtype) FROM PUBLIC;

-- The facts of every row of an attachment's source, as SQL: the set-based
-- twin of the trigger's C mapping (mapping.c), over the same expressions.
CREATE FUNCTION @extschema@._facts_sql(attachment integer) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a @extschema@.attachment;
    key text;
    from_clause text;
    hdr text;
    pl text;
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
            ' FROM %s %s h WHERE h.%I %s s.%I) hh ON true',
            a.account_expr, a.date_expr, coalesce(a.currency_expr, 'NULL'), coalesce(a.doc_type_expr, 'NULL'),
            coalesce(a.due_date_expr, 'NULL'), coalesce(a.paid_date_expr, 'NULL'),
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.header) = 'p' THEN '' ELSE 'ONLY' END,
            a.header, a.header_match_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.header_key_column)::regtype),
            a.header_key_column);
    END IF;
    -- the product line from the product table: the row of the line's product
    -- (by the key type's own equality), or its earlier line in force on the
    -- document's date (loyalty.product_history, matched by the key's text
    -- form), as the trigger looks them up (src/product.c)
    IF a.product IS NOT NULL THEN
        pl := 'CASE WHEN ph.found THEN ph.product_line ELSE pp.product_line END';
        from_clause := from_clause || format(
            ' LEFT JOIN LATERAL (SELECT (%s)::text AS product_line, (p.%I)::text AS product_key'
            ' FROM %s %s p WHERE p.%I %s s.%I) pp ON true'
            ' LEFT JOIN LATERAL (SELECT x.product_line, true AS found FROM @extschema@.product_history x'
            ' WHERE x.attachment_id OPERATOR(pg_catalog.=) %s'
            ' AND x.product_key OPERATOR(pg_catalog.=) coalesce(pp.product_key, (s.%I)::text)'
            ' AND x.valid_until OPERATOR(pg_catalog.>) %s ORDER BY x.valid_until LIMIT 1) ph ON true',
            a.product_line_expr, a.product_id_column,
            CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = a.product) = 'p' THEN '' ELSE 'ONLY' END,
            a.product, a.product_id_column,
            @extschema@._equality_operator((SELECT t.atttypid FROM pg_attribute t
                                            WHERE t.attrelid = a.source AND t.attname = a.line_product_column)::regtype),
            a.line_product_column, a.attachment_id, a.line_product_column,
            CASE WHEN a.header IS NULL THEN format('(%s)::date', a.date_expr) ELSE 'hh.doc_date' END);
    ELSE
        pl := format('(%s)::text', coalesce(a.product_line_expr, 'NULL'));
    END IF;
    RETURN format('SELECT %s AS row_key, %s, (%s)::numeric AS amount, (%s)::numeric AS quantity, %s AS product_line %s',
                  key, hdr, coalesce(a.amount_expr, 'NULL'), coalesce(a.quantity_expr, 'NULL'),
                  pl, from_clause);
END
$$;
COMMENT ON FUNCTION @extschema@._facts_sql(integer) IS 'Internal: SQL that maps every row of an attachment''s source to the facts the points function takes.';

-- Checks a mapped column: it must exist and be of an accepted type.  Returns
-- the column's name as the catalog spells it; callers quote it with
-- format('%I.%I', alias, name), they never edit SQL text.
CREATE FUNCTION @extschema@._check_column(rel regclass, param text, col text, accepted regtype[], expected text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ regtype;
    name text;
BEGIN
    IF col IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.atttypid::regtype, a.attname INTO typ, name FROM pg_attribute a
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
                  DETAIL = pg_catalog.format('%s names a column of %s; it must be %s.', param, rel, expected),
                  HINT = CASE WHEN param = 'amount_column'
                              THEN 'Map a numeric or integer column, or cast it with amount_expression, e.g. amount_expression => ''unit_price::numeric * quantity''.'
                              ELSE 'Map a column of that type.' END;
    END IF;
    RETURN name;
END
$$;
COMMENT ON FUNCTION @extschema@._check_column(regclass, text, text, regtype[], text) IS 'Internal: attach-time validation of one mapped column; returns its name.';

CREATE FUNCTION @extschema@._as_local(rel regclass, col text, expr text, zone text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col)
                 = 'timestamp with time zone'::regtype
            THEN format('(%s AT TIME ZONE %L)', expr, zone)
            ELSE expr END;
COMMENT ON FUNCTION @extschema@._as_local(regclass, text, text, text) IS 'Internal: pins a timestamptz column to the program''s time zone, so that a document''s date is the same in every session.';

-- The owner's part of attach() (src/attach.c runs the caller's part first:
-- privileges, and amount_expression parsed and validated as the caller and
-- handed over in canonical form).  Nothing here runs code of the caller's:
-- columns are checked against the catalog, the triggers are the owner's.
CREATE FUNCTION @extschema@._attach(
    source              regclass,
    program             text,
    account_column      text,
    amount_column       text,
    quantity_column     text,
    date_column         text,
    key_column          text,
    product_line_column text,
    currency_column     text,
    doc_type_column     text,
    credit_note_types   text[],
    due_date_column     text,
    paid_date_column    text,
    amount_expression   text,
    header              regclass,
    header_key_column   text,
    header_match_column text,
    product             regclass,
    line_product_column text,
    product_id_column   text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    prog @extschema@.program;
    keys text[];
    dside regclass := coalesce(header, source);
    dalias text := CASE WHEN header IS NULL THEN 's' ELSE 'h' END;
    ints regtype[] := ARRAY['smallint', 'integer', 'bigint']::regtype[];
    texts regtype[] := ARRAY['text', 'character varying', 'character']::regtype[];
    nums regtype[] := ARRAY['numeric', 'smallint', 'integer', 'bigint']::regtype[];
    dates regtype[] := ARRAY['date', 'timestamp without time zone', 'timestamp with time zone']::regtype[];
    acc text; amt text; qty text; dat text; pl text; cur text; dt text; due text; paid text;
    hk text; hm text; lp text; pk text;
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
            DETAIL = 'source names the table whose rows earn points; attach creates triggers on it.',
            HINT = 'Attach the table the ERP writes invoices or invoice lines to.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.attachment x WHERE x.program_id = pid AND x.source = _attach.source AND x.detached_at IS NULL) THEN
        RAISE EXCEPTION 'program "%" is already attached to %', program, source USING ERRCODE = 'duplicate_object',
            DETAIL = 'A program is attached to a table once.',
            HINT = 'Detach it first with loyalty.detach() to change the mapping.';
    END IF;
    IF account_column IS NULL OR date_column IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN account_column IS NULL THEN 'account_column' ELSE 'date_column' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'account_column and date_column name the customer key and document date columns.',
                  HINT = 'For example account_column => ''customer_id'', date_column => ''invoice_date''.';
    END IF;
    IF header IS NOT NULL THEN
        IF header_key_column IS NULL THEN
            RAISE EXCEPTION 'line_header_column must not be NULL when header is given' USING ERRCODE = 'null_value_not_allowed',
                DETAIL = 'line_header_column names the column of the lines table that references the header table.',
                HINT = 'Name it, e.g. line_header_column => ''invoice_id''.';
        END IF;
        hk := @extschema@._check_column(source, 'line_header_column', header_key_column, NULL, NULL);
        hm := coalesce(header_match_column,
                       (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = header AND i.indisprimary AND i.indnatts = 1));
        IF hm IS NULL THEN
            RAISE EXCEPTION 'header % has no single-column primary key', header USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'header_id_column names the header''s column that the lines reference; by default its primary key.',
                HINT = 'Name it with header_id_column, e.g. header_id_column => ''invoice_id''.';
        END IF;
        hm := @extschema@._check_column(header, 'header_id_column', hm, NULL, NULL);
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
    -- the product line is a column of the product table when there is one
    pl := @extschema@._check_column(coalesce(product, source), 'product_line_column', product_line_column, texts || ints, 'text or integer');
    IF product IS NOT NULL THEN
        IF line_product_column IS NULL OR product_line_column IS NULL THEN
            RAISE EXCEPTION '% must not be NULL when product is given',
                            CASE WHEN line_product_column IS NULL THEN 'line_product_column' ELSE 'product_line_column' END
                USING ERRCODE = 'null_value_not_allowed',
                      DETAIL = 'line_product_column names the lines'' column that references the product table; product_line_column the product table''s column that holds the product line.',
                      HINT = 'For example product => ''erp.product'', line_product_column => ''product_id'', product_line_column => ''category_id''.';
        END IF;
        lp := @extschema@._check_column(source, 'line_product_column', line_product_column, NULL, NULL);
        pk := @extschema@._check_column(product, 'product_id_column', product_id_column, NULL, NULL);
    END IF;
    -- each column as alias.column, quoted from its catalog name: s for the
    -- source, h for the header; a timestamptz becomes a date in the time
    -- zone in force at attach time, fixed in the mapping, so that no
    -- session setting can move a document
    acc := format('%I.%I', dalias, acc);
    dat := @extschema@._as_local(dside, dat, format('%I.%I', dalias, dat), prog.time_zone);
    cur := CASE WHEN cur IS NOT NULL THEN format('%I.%I', dalias, cur) END;
    dt := CASE WHEN dt IS NOT NULL THEN format('%I.%I', dalias, dt) END;
    due := CASE WHEN due IS NOT NULL THEN @extschema@._as_local(dside, due, format('%I.%I', dalias, due), prog.time_zone) END;
    paid := CASE WHEN paid IS NOT NULL THEN @extschema@._as_local(dside, paid, format('%I.%I', dalias, paid), prog.time_zone) END;
    amt := CASE WHEN amt IS NOT NULL THEN format('s.%I', amt) END;
    qty := CASE WHEN qty IS NOT NULL THEN format('s.%I', qty) END;
    pl := CASE WHEN pl IS NOT NULL THEN format('%I.%I', CASE WHEN product IS NULL THEN 's' ELSE 'p' END, pl) END;
    IF (doc_type_column IS NULL) <> (credit_note_types IS NULL) THEN
        RAISE EXCEPTION 'doc_type_column and credit_note_types go together' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = CASE WHEN doc_type_column IS NULL THEN 'credit_note_types was given without doc_type_column.'
                          ELSE 'doc_type_column was given without credit_note_types.' END,
            HINT = 'For example doc_type_column => ''doc_type'', credit_note_types => ''{CRN}''.';
    END IF;
    IF amount_expression IS NOT NULL THEN
        IF amount_column IS NOT NULL THEN
            RAISE EXCEPTION 'give amount_column or amount_expression, not both' USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'Both say where the amount comes from.',
                HINT = 'Map a column with amount_column, or compute the amount with amount_expression.';
        END IF;
        amt := amount_expression;
    END IF;
    IF prog.basis = 'quantity' AND qty IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per quantity: quantity_column is required', program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The program was created with basis => ''quantity'': points are paid per unit of the quantity column.',
                  HINT = 'For example quantity_column => ''quantity''.';
    END IF;
    IF prog.basis = 'amount' AND amt IS NULL THEN
        RAISE EXCEPTION 'program "%" accrues per amount: amount_column or amount_expression is required', program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Points are paid per currency unit of the amount.',
                  HINT = 'For example amount_column => ''amount'', or amount_expression => ''quantity * unit_price''.';
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
                      DETAIL = 'key_column names the columns that identify a row: those of the primary key or of a unique index.',
                      HINT = 'Name the columns of the primary key or of a unique index, e.g. key_column => ''invoice_id, line_no''.';
        END IF;
    ELSE
        keys := (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                 WHERE i.indrelid = source AND i.indisprimary);
        IF keys IS NULL THEN
            RAISE EXCEPTION '% has no primary key', source USING ERRCODE = 'invalid_parameter_value',
                DETAIL = 'key_column, by default the primary key, names the columns that identify a row.',
                HINT = 'Name the columns of a unique index with key_column => ''col1, col2''.';
        END IF;
    END IF;

    INSERT INTO @extschema@.attachment AS x (program_id, source, source_name, key_columns, account_expr, amount_expr,
        quantity_expr, date_expr, product_line_expr, currency_expr, doc_type_expr, credit_note_types,
        due_date_expr, paid_date_expr, header, header_key_column, header_match_column,
        product, line_product_column, product_id_column)
    VALUES (pid, source, source::text, keys, acc, amt, qty, dat, pl, cur, dt, credit_note_types,
            due, paid, header, hk, hm, product, lp, pk)
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
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.accrue_header(%s)', trg || '_header_ins', header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE DELETE OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@.stash_header(%s)',
                       trg || '_header_delete', hm, header, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_header_truncate', header);
    END IF;
    IF product IS NOT NULL THEN
        -- a product's line changed, a product deleted, or inserted after
        -- lines named it: its earlier line is kept for the documents dated
        -- before the change (loyalty.product_history)
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_upd', product, id);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS loyalty_old'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_del', product, id);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS loyalty_new'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.track_product(%s)', trg || '_product_ins', product, id);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._refuse_truncate()',
                       trg || '_product_truncate', product);
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) IS
    'Internal: the extension owner''s part of attach(): column checks, the attachment row and the triggers.';
REVOKE ALL ON FUNCTION @extschema@._attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, regclass, text, text) FROM PUBLIC;

-- attach() itself is C (src/attach.c), SECURITY INVOKER: it checks its
-- arguments, the caller's TRIGGER and SELECT privileges and parses
-- amount_expression as the caller, then runs _attach() as the extension
-- owner.  A lines table names the header's key twice: line_header_column
-- (the lines' column that references the header) and header_id_column (the
-- header's own column, its primary key by default).  header_key_column and
-- header_match_column are their deprecated names, in the same positions.
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
    line_header_column  text DEFAULT NULL,
    header_id_column    text DEFAULT NULL,
    header_key_column   text DEFAULT NULL,
    header_match_column text DEFAULT NULL,
    product             regclass DEFAULT NULL,
    line_product_column text DEFAULT NULL,
    product_id_column   text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_attach' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text) IS
    'Maps an ERP invoice (or invoice-line) table onto a program and creates its accrual triggers. The caller needs TRIGGER and SELECT on the table (and on header). Columns are validated now; amount_expression must be one deterministic expression of the row''s columns, numeric or integer, never float, and is stored in canonical form. With header, the account, date, currency, document type and payment dates are read from the header table, whose row is the one whose header_id_column (default: its primary key) equals the line''s line_header_column; header_key_column and header_match_column are their deprecated names. With product, product_line_column names a column of the product table (the product master), whose row is the one whose product_id_column (default: its primary key) equals the line''s line_product_column; a product moved to another line later changes nothing already earned (loyalty.product_history). Returns the attachment id. Rows that existed before: loyalty.backfill().';

-- A rename, drop or type change of a mapped column is checked when the
-- ALTER TABLE ends: each attachment of the table must still parse, as the
-- role that altered it, or the ALTER fails with what to do.
CREATE FUNCTION @extschema@._check_mapped_columns() RETURNS event_trigger
AS 'MODULE_PATHNAME', 'loyalty_check_mapped_columns' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._check_mapped_columns() IS 'Internal: event trigger refusing an ALTER TABLE that breaks the mapping of an attached table.';
REVOKE ALL ON FUNCTION @extschema@._check_mapped_columns() FROM PUBLIC;
CREATE EVENT TRIGGER loyalty_check_mapped_columns ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION @extschema@._check_mapped_columns();

-- The active attachment of a program on a table, or a clear error.
CREATE FUNCTION @extschema@._attachment_of(source regclass, program text) RETURNS @extschema@.attachment
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := @extschema@._program_id(program);
    a @extschema@.attachment;
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'source must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = 'source is the ERP table the program is attached to.',
            HINT = 'SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = _attachment_of.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            DETAIL = pg_catalog.format('No active attachment of program "%s" has source %s.', program, source),
            HINT = 'Attach it with loyalty.attach(); SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    RETURN a;
END
$$;
COMMENT ON FUNCTION @extschema@._attachment_of(regclass, text) IS 'Internal: the active attachment of a program on a table.';

-- As the owner: the triggers are the owner's (attach creates them so), and
-- nothing a user defined runs here.
CREATE FUNCTION @extschema@.detach(source regclass, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    a @extschema@.attachment;
    trg text;
BEGIN
    IF source IS NULL OR program IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN source IS NULL THEN 'source' ELSE 'program' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'detach takes the ERP table (source) and the name of the program attached to it.',
                  HINT = 'For example loyalty.detach(''erp.invoice'', ''Distributor Club'').';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = detach.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO a FROM @extschema@.attachment x
    WHERE x.program_id = pid AND x.source = detach.source AND x.detached_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'program "%" is not attached to %', program, source USING ERRCODE = 'undefined_object',
            DETAIL = pg_catalog.format('No active attachment of program "%s" has source %s.', program, source),
            HINT = 'SELECT source FROM loyalty.attachment WHERE detached_at IS NULL lists what is attached.';
    END IF;
    trg := 'loyalty_accrual_' || a.attachment_id;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_ins', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_upd', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_del', source);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_truncate', source);
    IF a.header IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_ins', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_delete', a.header);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_header_truncate', a.header);
    END IF;
    IF a.product IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_upd', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_del', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_ins', a.product);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg || '_product_truncate', a.product);
    END IF;
    UPDATE @extschema@.attachment x SET detached_at = now() WHERE x.attachment_id = a.attachment_id;
END
$$;
COMMENT ON FUNCTION @extschema@.detach(regclass, text) IS 'Drops the accrual triggers of a program on a table. What was accrued stays in the ledger.';

CREATE FUNCTION @extschema@._rolling_start(program_id integer) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT (pg_catalog.date_trunc('month', @extschema@._today(p.program_id)::timestamp)
                - pg_catalog.make_interval(months => @extschema@._window_months(p.qualification_window) - 1))::date
        FROM @extschema@.program p WHERE p.program_id = _rolling_start.program_id);
COMMENT ON FUNCTION @extschema@._rolling_start(integer) IS 'Internal: first month of the rolling qualification window.';

-- As the caller, so that row-level security applies to a partner's login
-- (src/sql/80_partner.sql); loyalty._may_read refuses another account first.
CREATE FUNCTION @extschema@.balance(program text, account_key text,
                                    OUT points bigint, OUT qualifying numeric, OUT rolling_qualifying numeric, OUT tier text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'balance takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.balance(''Distributor Club'', ''1042'').';
    END IF;
    PERFORM @extschema@._may_read(program, account_key);
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = balance.program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    -- a customer without an account (not enrolled, or not yet invoiced) has
    -- nothing: a zero row, so that a set-based BI query does not abort
    SELECT a.tier INTO tier FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = balance.account_key;
    SELECT coalesce(b.points, 0), coalesce(b.qualifying, 0) INTO points, qualifying
    FROM (SELECT) x LEFT JOIN @extschema@.balance b ON b.program_id = pid AND b.account_key = balance.account_key;
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= @extschema@._rolling_start(pid) AND m.month <= @extschema@._today(pid);
    -- an upgrade is due as soon as the rolling spend reaches the next
    -- threshold (the next loyalty.fold() records it); below every upgrade,
    -- the first tier applies when its threshold is 0
    SELECT CASE WHEN tier IS NULL
                     OR @extschema@.tier_rank(p.ladder, rolling_qualifying)
                        > (SELECT t.rank FROM @extschema@.tiers(p.ladder) t WHERE t.name = tier)
                THEN coalesce(@extschema@.tier_of(p.ladder, rolling_qualifying), tier) ELSE tier END
    INTO tier FROM @extschema@.program p WHERE p.program_id = pid;
END
$$;
COMMENT ON FUNCTION @extschema@.balance(text, text) IS 'An account''s points, lifetime qualifying spend, rolling qualifying spend (the tier window) and tier; zeros (and the first tier when its threshold is 0) for a customer with no account yet.';

-- Checks its own arguments, so that its errors are its own, not balance()'s.
CREATE FUNCTION @extschema@.tier(program text, account_key text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF program IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN program IS NULL THEN 'program' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'tier takes the program''s name and the ERP''s customer key in text form.',
                  HINT = 'For example loyalty.tier(''Distributor Club'', ''1042'').';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.program p WHERE p.name = tier.program) THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    RETURN (SELECT b.tier FROM @extschema@.balance(program, account_key) b);
END
$$;
COMMENT ON FUNCTION @extschema@.tier(text, text) IS 'An account''s current tier (NULL below the first threshold).';

-- explain_points, verify, backfill (and enroll's restatement) recompute what
-- the rows of an attached table earn: the facts query (_facts_sql, the
-- attaching user's mapping expressions) runs as the caller, the points
-- function is the trigger's own (src/reconcile.c), and loyalty's tables are
-- read and written as the owner.
CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key text[])
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_points' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, text[]) IS
    'How a row''s points were computed, per attached program: rule version, basis, multipliers, rounding, bonus, cap. Give the key columns'' values in order.';
-- The same with the key values in their own types: explain_points('erp.invoice',
-- 90017::bigint).  Each is turned into text by its type's output function and
-- read back by the key column's type, then compared by that type's equality.
CREATE FUNCTION @extschema@.explain_points(source regclass, VARIADIC key "any")
RETURNS TABLE (program text, account_key text, document_date date, status text, reason text,
               rule_valid_from date, basis numeric, points_per_unit numeric, product_line text,
               product_line_multiplier numeric, tier_on_date text, tier_multiplier numeric,
               segment_multiplier numeric, raw_points numeric, rounding text, points bigint,
               on_time_bonus bigint, qualifying numeric, cap text)
AS 'MODULE_PATHNAME', 'loyalty_explain_points_any' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.explain_points(regclass, "any") IS
    'How a row''s points were computed, per attached program, with the key columns'' values given in their own types, in order.';

-- What verify checks besides the source rows, as the owner (it reads
-- loyalty's tables and the catalog only).  An attached table that was
-- dropped cannot be checked; one whose triggers are missing, disabled or
-- doubled does not accrue what it should.
CREATE FUNCTION @extschema@._verify_attachments(program_id integer)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH att AS (
    SELECT x.attachment_id, x.source::oid AS source, x.header::oid AS header, x.product::oid AS product,
           pg_catalog.decode(x.attachment_id::text OPERATOR(pg_catalog.||) E'\\000', 'escape') AS arg
    FROM @extschema@.attachment x
    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL
      AND EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::oid)),
-- tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate, 64 instead;
-- an accrual trigger must fire once, the TRUNCATE guard (shared by every
-- attachment of a table) at least once
need (attachment_id, rel, fn, arg, what, mask, bits, once) AS (
    SELECT a.attachment_id, a.source, '@extschema@.accrue()'::regprocedure::oid, a.arg, 'accrue AFTER ' OPERATOR(pg_catalog.||) e.event,
           67 OPERATOR(pg_catalog.|) e.bit, e.bit, true
    FROM att a, (VALUES ('INSERT', 4), ('UPDATE', 16), ('DELETE', 8)) AS e(event, bit)
  UNION ALL
    SELECT a.attachment_id, a.source, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
           '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
    FROM att a
  UNION ALL
    SELECT a.attachment_id, a.header, '@extschema@.accrue_header()'::regprocedure::oid, a.arg, 'accrue_header AFTER UPDATE', 83, 16, true
    FROM att a WHERE a.header IS NOT NULL
  UNION ALL
    SELECT a.attachment_id, a.header, '@extschema@.stash_header()'::regprocedure::oid, a.arg,
           'stash_header BEFORE ' OPERATOR(pg_catalog.||) e.event OPERATOR(pg_catalog.||) ' FOR EACH ROW',
           67 OPERATOR(pg_catalog.|) e.bit, 3 OPERATOR(pg_catalog.|) e.bit, true
    FROM att a, (VALUES ('DELETE', 8), ('UPDATE', 16)) AS e(event, bit) WHERE a.header IS NOT NULL
  UNION ALL
    SELECT a.attachment_id, a.header, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
           '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
    FROM att a WHERE a.header IS NOT NULL
  UNION ALL
    SELECT a.attachment_id, a.product, '@extschema@.track_product()'::regprocedure::oid, a.arg, 'track_product AFTER ' OPERATOR(pg_catalog.||) e.event,
           67 OPERATOR(pg_catalog.|) e.bit, e.bit, true
    FROM att a, (VALUES ('INSERT', 4), ('UPDATE', 16), ('DELETE', 8)) AS e(event, bit) WHERE a.product IS NOT NULL
  UNION ALL
    SELECT a.attachment_id, a.product, '@extschema@._refuse_truncate()'::regprocedure::oid, ''::bytea,
           '_refuse_truncate BEFORE TRUNCATE', 99, 34, false
    FROM att a WHERE a.product IS NOT NULL)
SELECT NULL::text, NULL::date, x.attachment_id, 'source_dropped: ' OPERATOR(pg_catalog.||) x.source_name, NULL::numeric, NULL::numeric
FROM @extschema@.attachment x
WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND x.detached_at IS NULL
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) x.source::oid)
UNION ALL
SELECT NULL::text, NULL::date, n.attachment_id,
       CASE WHEN t.enabled OPERATOR(pg_catalog.>) 0 THEN 'trigger_duplicate: '
            WHEN t.disabled OPERATOR(pg_catalog.>) 0 THEN 'trigger_disabled: '
            ELSE 'trigger_missing: ' END
       OPERATOR(pg_catalog.||) n.what OPERATOR(pg_catalog.||) ' on ' OPERATOR(pg_catalog.||) n.rel::regclass::text,
       1::numeric, t.enabled::numeric
FROM need n,
     LATERAL (SELECT pg_catalog.count(*) FILTER (WHERE g.tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::"char"[])) AS enabled,
                     pg_catalog.count(*) FILTER (WHERE g.tgenabled OPERATOR(pg_catalog.=) ANY ('{D,R}'::"char"[])) AS disabled
              FROM pg_catalog.pg_trigger g
              WHERE g.tgrelid OPERATOR(pg_catalog.=) n.rel AND g.tgfoid OPERATOR(pg_catalog.=) n.fn
                AND g.tgargs OPERATOR(pg_catalog.=) n.arg
                AND (g.tgtype::integer OPERATOR(pg_catalog.&) n.mask) OPERATOR(pg_catalog.=) n.bits) AS t
WHERE t.enabled OPERATOR(pg_catalog.=) 0 OR (n.once AND t.enabled OPERATOR(pg_catalog.>) 1)
$$;
COMMENT ON FUNCTION @extschema@._verify_attachments(integer) IS
    'Internal: verify''s checks of a program''s attached tables: dropped tables, and accrual triggers missing, disabled or doubled.';

-- The checks of verify that read loyalty's tables only, as the owner, for
-- every account of a program or for one (account NULL: every one).  PL/pgSQL
-- so that the one-account check is planned for its key (an index look-up),
-- not for every account.

-- The per-month sums, capped, against the ledger's accrual entries.
CREATE FUNCTION @extschema@._verify_ledger(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    RETURN QUERY
    -- _capped_points adds up the elements of a month (one per attachment);
    -- a program without caps needs only the sum
    WITH expected AS (
        SELECT m.account_key,
               coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(m.month) FILTER (WHERE capped),
                                                   pg_catalog.array_agg(m.points) FILTER (WHERE capped)),
                        pg_catalog.sum(m.points)) AS points,
               pg_catalog.sum(m.qualifying) AS qualifying
        FROM @extschema@.accrual_month m
        WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2)
        GROUP BY 1),
    posted AS (
        SELECT l.account_key, pg_catalog.sum(l.points) AS points, pg_catalog.sum(l.qualifying) AS qualifying
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2)
          AND l.kind OPERATOR(pg_catalog.=) ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[])
        GROUP BY 1),
    -- the cap entries the next fold books, for the accounts with unfolded postings
    pending AS (
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) d
        WHERE capped)
    SELECT coalesce(e.account_key, p.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM expected e
         FULL JOIN (SELECT coalesce(po.account_key, pe.account_key) AS account_key,
                           coalesce(po.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, po.qualifying
                    FROM posted po FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) po.account_key) p
           ON p.account_key OPERATOR(pg_catalog.=) e.account_key,
         LATERAL (VALUES ('ledger_accrual_points', coalesce(e.points, 0)::numeric, coalesce(p.points, 0)::numeric),
                         ('ledger_qualifying', coalesce(e.qualifying, 0), coalesce(p.qualifying, 0))) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@._verify_ledger(integer, text) IS
    'Internal: verify''s check of the per-month sums, capped, against the ledger''s accrual entries, of every account of a program or of one.';

-- The ledger's sums against loyalty.balance: the one place that says what
-- a balance must be, given the ledger.
CREATE FUNCTION @extschema@._verify_balance(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    RETURN QUERY
    -- the ledger, plus the cap entries the next fold books (loyalty.balance
    -- applies them already)
    WITH pending AS (
        SELECT d.account_key, @extschema@.pending_caps($1, d.account_key) AS points
        FROM (SELECT DISTINCT x.account_key FROM @extschema@.balance_delta x
              WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) d
        WHERE capped)
    SELECT coalesce(l.account_key, b.account_key), NULL::date, NULL::integer, v.item, v.e, v.a
    FROM (SELECT coalesce(x.account_key, pe.account_key) AS account_key,
                 coalesce(x.points, 0) OPERATOR(pg_catalog.+) coalesce(pe.points, 0) AS points, x.qualifying,
                 x.rebate, x.mdf, x.n
          FROM (SELECT x.account_key, pg_catalog.sum(x.points) AS points, pg_catalog.sum(x.qualifying) AS qualifying,
                       pg_catalog.sum(x.rebate) AS rebate, pg_catalog.sum(x.mdf) AS mdf, pg_catalog.count(*) AS n
                FROM @extschema@.ledger x
                WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
                GROUP BY 1) x
               FULL JOIN pending pe ON pe.account_key OPERATOR(pg_catalog.=) x.account_key) l
         FULL JOIN (SELECT x.account_key, x.points, x.qualifying, x.rebate, x.mdf, x.entry_count AS n
                    FROM @extschema@.balance x
                    WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) b
           ON b.account_key OPERATOR(pg_catalog.=) l.account_key,
         LATERAL (VALUES ('balance_points', coalesce(l.points, 0)::numeric, coalesce(b.points, 0)::numeric),
                         ('balance_qualifying', coalesce(l.qualifying, 0), coalesce(b.qualifying, 0)),
                         ('balance_rebate', coalesce(l.rebate, 0), coalesce(b.rebate, 0)),
                         ('balance_mdf', coalesce(l.mdf, 0), coalesce(b.mdf, 0)),
                         ('balance_entries', coalesce(l.n, 0)::numeric, coalesce(b.n, 0)::numeric)) AS v(item, e, a)
    WHERE v.e IS DISTINCT FROM v.a;
END
$$;
COMMENT ON FUNCTION @extschema@._verify_balance(integer, text) IS
    'Internal: verify''s check of the balances against the sums of the ledger, of every account of a program or of one.';

CREATE FUNCTION @extschema@.verify(program text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text) IS
    'Recomputes every attached source row, the per-month sums, the ledger and the balances of a program, and returns each difference (expected vs actual); also attached tables dropped, and accrual triggers missing, disabled or doubled. Empty means every point reconciles with the invoices. Refused unless the caller can read every row of the attached tables.';

CREATE FUNCTION @extschema@.fold(program text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_fold' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.fold(text) IS
    'Folds the committed balance changes of a program (NULL: of every program) into loyalty.balance_folded, books the cap entries they call for and records the tier upgrades they earn; returns how many changes it folded. Schedule it with pg_cron (e.g. every minute). Balances read the same before and after; a fold already running for a program is not waited for (that program is skipped).';
REVOKE ALL ON FUNCTION @extschema@.fold(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.fold(text) TO loyalty_operator, loyalty_admin;

-- The quick checks a DBA can run every night, with verify's output: one
-- account, or the document months from a date on.
CREATE FUNCTION @extschema@.verify(program text, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify_account' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text, text) IS
    'verify() for one enrolled account: its source rows, per-month sums, ledger and balance; also the attached tables'' triggers. Call it with account => ''...''.';

CREATE FUNCTION @extschema@.verify(program text, since date)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
AS 'MODULE_PATHNAME', 'loyalty_verify_since' LANGUAGE C STABLE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.verify(text, date) IS
    'verify() for the document months from since (rounded down to its month) on: the source rows of those months against their per-month sums; also the attached tables'' triggers. The ledger and balance totals span every month: verify(program) and verify(program, account) check them. Call it with since => ''...''.';
GRANT EXECUTE ON FUNCTION @extschema@.verify(text, text), @extschema@.verify(text, date)
TO loyalty_reader, loyalty_operator, loyalty_admin;

CREATE FUNCTION @extschema@.backfill(source regclass, program text, since date,
                                     OUT accounts integer, OUT months integer, OUT source_rows bigint,
                                     OUT points bigint, OUT qualifying numeric)
AS 'MODULE_PATHNAME', 'loyalty_backfill' LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.backfill(regclass, text, date) IS
    'Accrues the rows of an attached table dated from since (rounded down to its month) that the triggers have not accrued, set-based. Idempotent: what is already accrued is not posted again, so a second or interrupted run is safe.';

REVOKE ALL ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text),
                      @extschema@.detach(regclass, text),
                      @extschema@.backfill(regclass, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.attach(regclass, text, text, text, text, text, text, text, text, text, text[], text, text, text, regclass, text, text, text, text, regclass, text, text),
                          @extschema@.detach(regclass, text),
                          @extschema@.backfill(regclass, text, date) TO loyalty_admin;

-- Two sets of per-month sums added up, as typed arrays, never as bytes to
-- decode: the fold does the same in C (ledger_months_merge); this SQL
-- entry point stays for inspection and its tests.
CREATE FUNCTION @extschema@._month_merge(a_month date[], a_attachment integer[], a_points bigint[], a_qualifying numeric[], a_source_rows bigint[],
                                         b_month date[], b_attachment integer[], b_points bigint[], b_qualifying numeric[], b_source_rows bigint[],
    OUT m_month date[], OUT m_attachment integer[], OUT m_points bigint[], OUT m_qualifying numeric[], OUT m_source_rows bigint[])
AS 'MODULE_PATHNAME', 'loyalty_month_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._month_merge(date[], integer[], bigint[], numeric[], bigint[], date[], integer[], bigint[], numeric[], bigint[]) IS
    'Internal: adds two sorted sets of per-month sums.';

-- Postings that do not come from an invoice row: redemptions, awards, expiry,
-- rebates, MDF, adjustments.  They go through one place, as the trigger's do:
-- a ledger entry and a balance delta in the same transaction, numbered from
-- the transaction's own counter (no sequence, no shared row to lock), so that
-- loyalty.balance, the fold and verify() see them as they see accrual.

CREATE FUNCTION @extschema@._ledger_number() RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_ledger_number' LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@._ledger_number() IS
'Internal: the next ledger entry number of the current transaction.';

CREATE FUNCTION @extschema@._post(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    rebate       numeric DEFAULT 0,
    mdf          numeric DEFAULT 0,
    member_id    text DEFAULT NULL,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._ledger_number();
BEGIN
    IF kind = ANY ('{earn,reverse,bonus,cap,backfill,restate}'::@extschema@.ledger_kind[]) THEN
        RAISE EXCEPTION 'ledger kind % is posted by accrual only', kind
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Accrual kinds are derived from invoice rows and checked against them by verify().';
    END IF;
    IF coalesce(points, 0) = 0 AND coalesce(rebate, 0) = 0 AND coalesce(mdf, 0) = 0 THEN
        RETURN NULL;            -- nothing to post
    END IF;
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    VALUES ($1, $2, n, $3, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), $8, $10, $9, $5);
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    VALUES ($1, $2, n, coalesce($4, 0), coalesce($6, 0), coalesce($7, 0), 1);
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post(integer, text, @extschema@.ledger_kind, bigint, text, numeric, numeric, text, xid8, bigint) IS
'Internal: posts one ledger entry that does not come from an invoice row (redeem, expire, award, rebate, mdf, adjust) with its balance delta; returns its entry number within the transaction (NULL when there is nothing to post).';

-- A debit (redemption, MDF claim, expiry) checks a balance and then lowers
-- it.  Two debits of one account must not both pass the check on the same
-- balance: each first takes the account's next debit number, which locks its
-- row until commit.  Under READ COMMITTED the debit's next statement then
-- sees every debit committed before; under REPEATABLE READ or SERIALIZABLE a
-- debit committed since the snapshot makes this UPDATE fail with
-- serialization_failure instead of overdrawing.  Accrual never takes this
-- lock: the ERP's statements do not wait for debits.
CREATE FUNCTION @extschema@._lock_for_debit(program_id integer, account_key text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
    WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) $2
    RETURNING a.debit_no INTO n;
    IF n IS NULL THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', $2,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1)
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have balances to spend from.',
                  HINT = 'Enrol it with loyalty.enroll(); accounts enrolled automatically appear after loyalty.fold().';
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._lock_for_debit(integer, text) IS
'Internal: locks an account for a debit until commit and returns its next debit number.';
-- Settlement: one run per program and period, in one transaction.  Tier
-- re-qualification over the rolling window, then the steps of the other
-- wallets (rebates, MDF, expiry: 52_expiry.sql, 53_rebates.sql, 63_mdf.sql),
-- then the run's row.  A crash leaves nothing; a second call finds the row.
--
-- The amounts a run counts are per account "to date": everything dated up
-- to the period's last day as the run saw it.  The next run counts what was
-- added since, split into the documents dated in its own period and those
-- dated before it (late invoices, credit notes for a settled period): the
-- carried adjustment.  Summed over the runs, every document counts once.

-- What one run saw and decided for each account: the carried amounts of the
-- next run are computed against it, and the "periods below" grace counts on it.
CREATE TABLE @extschema@.settlement_account (
    program_id         integer NOT NULL,
    account_key        text NOT NULL,
    period_end         date NOT NULL,
    qualifying_to_date numeric NOT NULL DEFAULT 0,
    points_to_date     bigint NOT NULL DEFAULT 0,
    period_qualifying  numeric NOT NULL DEFAULT 0,
    carried_qualifying numeric NOT NULL DEFAULT 0,
    period_points      bigint NOT NULL DEFAULT 0,
    carried_points     bigint NOT NULL DEFAULT 0,
    measure            numeric,
    old_tier           text,
    qualified_tier     text,
    new_tier           text,
    periods_below      integer NOT NULL DEFAULT 0 CHECK (periods_below OPERATOR(pg_catalog.>=) 0),
    outcome            text NOT NULL CHECK (outcome IN ('up', 'down', 'grace', 'held', 'kept', 'same', 'manual')),
    PRIMARY KEY (program_id, account_key, period_end)
);
-- a run reads the rows of its own and of the previous period
CREATE INDEX settlement_account_period ON @extschema@.settlement_account (program_id, period_end);
COMMENT ON TABLE @extschema@.settlement_account IS 'One row per account and settlement run: the amounts the run counted and its tier decision. The next run counts what was posted since against it (the carried adjustment), so a late document is counted once, by the first run after it.';
COMMENT ON COLUMN @extschema@.settlement_account.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_account.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.settlement_account.period_end IS 'Last day of the settled period (loyalty.settlement_run).';
COMMENT ON COLUMN @extschema@.settlement_account.qualifying_to_date IS 'Qualifying spend of every document dated up to period_end, as the run saw it.';
COMMENT ON COLUMN @extschema@.settlement_account.points_to_date IS 'Points (before caps) of every document dated up to period_end, as the run saw it.';
COMMENT ON COLUMN @extschema@.settlement_account.period_qualifying IS 'Qualifying spend of the documents dated in the period.';
COMMENT ON COLUMN @extschema@.settlement_account.carried_qualifying IS 'Qualifying spend of documents dated before the period that no earlier run counted (late invoices, credit notes).';
COMMENT ON COLUMN @extschema@.settlement_account.period_points IS 'Points of the documents dated in the period (before caps).';
COMMENT ON COLUMN @extschema@.settlement_account.carried_points IS 'Points of documents dated before the period that no earlier run counted.';
COMMENT ON COLUMN @extschema@.settlement_account.measure IS 'What the tier qualification measured over the rolling window ending with the period (spend, points or action count, by program.tier_basis).';
COMMENT ON COLUMN @extschema@.settlement_account.old_tier IS 'Tier before the run.';
COMMENT ON COLUMN @extschema@.settlement_account.qualified_tier IS 'Tier the measure (and the tier requirements) reach.';
COMMENT ON COLUMN @extschema@.settlement_account.new_tier IS 'Tier after the run.';
COMMENT ON COLUMN @extschema@.settlement_account.periods_below IS 'Settled periods in a row the account qualified below its tier and kept it (grace periods).';
COMMENT ON COLUMN @extschema@.settlement_account.outcome IS 'up, down (to the qualified tier), grace (down less far, by the grace rule), held (below, kept by grace), kept (below, kept: tier reached in this period), same, manual (tier granted by an admin, not re-qualified).';

-- Lock classes (advisory, transaction-scoped; the second key is the
-- program): settlements of a program one at a time; tier writes (fold's
-- upgrades, settlement, grants) one at a time.  fold.c tries the tier lock
-- and skips when it is taken; the others wait.
CREATE FUNCTION @extschema@._settle_lock(program_id integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_advisory_xact_lock(1280267078, program_id) $$;
COMMENT ON FUNCTION @extschema@._settle_lock(integer) IS 'Internal: waits for the program''s settlement lock (held until commit).';

CREATE FUNCTION @extschema@._tier_lock(program_id integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_advisory_xact_lock(1280268614, program_id) $$;
COMMENT ON FUNCTION @extschema@._tier_lock(integer) IS 'Internal: waits for the program''s tier lock (the lock loyalty.fold() tries), held until commit: tier changes of a program are written one transaction at a time.';

CREATE FUNCTION @extschema@._period_length(period text) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN pg_catalog.make_interval(months => CASE period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END);
COMMENT ON FUNCTION @extschema@._period_length(text) IS 'Internal: the length of a settlement period (month, quarter, year).';

-- The first day of the period that period_end ends (NULL when it ends
-- none), and the problems of the arguments the public functions report
-- themselves (so that their errors name no internal helper): NULL when
-- fine, else {SQLSTATE, message, detail, hint}.
CREATE FUNCTION @extschema@._period_start(program_id integer, period_end date) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT CASE WHEN pg_catalog.isfinite(period_end)
                         AND pg_catalog.date_trunc('month', (period_end OPERATOR(pg_catalog.+) 1)::timestamp)
                             OPERATOR(pg_catalog.=) (period_end OPERATOR(pg_catalog.+) 1)::timestamp
                         AND (pg_catalog.date_part('month', period_end OPERATOR(pg_catalog.+) 1)::integer
                              OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                             OPERATOR(pg_catalog.=) (1 OPERATOR(pg_catalog.%) CASE p.settlement_period WHEN 'month' THEN 1 WHEN 'quarter' THEN 3 ELSE 12 END)
                    THEN ((period_end OPERATOR(pg_catalog.+) 1)::timestamp
                          OPERATOR(pg_catalog.-) @extschema@._period_length(p.settlement_period))::date END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_start.program_id);
COMMENT ON FUNCTION @extschema@._period_start(integer, date) IS 'Internal: the first day of the settlement period ending on period_end; NULL when period_end is not the last day of one of the program''s periods.';

CREATE FUNCTION @extschema@._program_problem(program text) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN program IS NULL
            THEN ARRAY['22004', 'program must not be NULL',
                       'program is the name of a loyalty program, as given to loyalty.create_program().',
                       'List programs with SELECT name FROM loyalty.program.']
            WHEN NOT EXISTS (SELECT FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program)
            THEN ARRAY['42704', pg_catalog.format('loyalty program "%s" does not exist', program),
                       'program names no program of this database (names are case-sensitive).',
                       'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.'] END;
COMMENT ON FUNCTION @extschema@._program_problem(text) IS 'Internal: what is wrong with a program argument (NULL, unknown) as {SQLSTATE, message, detail, hint}; NULL when it names a program.';

CREATE FUNCTION @extschema@._period_end_problem(program_id integer, period_end date) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT CASE WHEN period_end IS NULL OR NOT pg_catalog.isfinite(period_end)
                    THEN ARRAY[CASE WHEN period_end IS NULL THEN '22004' ELSE '22023' END,
                               'period_end must be a date, not ' || coalesce(period_end::text, 'NULL'),
                               'period_end is the last day of a settlement period of the program.',
                               'For example period_end => ''2025-03-31''.']
                    WHEN @extschema@._period_start(program_id, period_end) IS NULL
                    THEN ARRAY['22023', pg_catalog.format('period_end %s is not the last day of a %s', period_end, p.settlement_period),
                               pg_catalog.format('Program "%s" settles by %s; period_end is the last day of one.', p.name, p.settlement_period),
                               pg_catalog.format('The %s around it ends on %s; the one before ended on %s.', p.settlement_period,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.+) @extschema@._period_length(p.settlement_period)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date,
                                   (pg_catalog.date_trunc(p.settlement_period, period_end::timestamp)
                                    OPERATOR(pg_catalog.-) '1 day'::interval)::date)] END
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _period_end_problem.program_id);
COMMENT ON FUNCTION @extschema@._period_end_problem(integer, date) IS 'Internal: what is wrong with a period_end argument (NULL, not finite, not the last day of one of the program''s periods) as {SQLSTATE, message, detail, hint}; NULL when fine.';

-- The tier decision of every account, one statement (one snapshot): what
-- the run counted and what each account qualifies for, into
-- settlement_account.  Returns the number of accounts.
CREATE FUNCTION @extschema@._settle_accounts(pid integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prog @extschema@.program;
    prev_end date;
    cutoff timestamptz;
    win_start date;
    names text[];
    thresholds numeric[];
    has_req boolean;
    n bigint;
BEGIN
    SELECT * INTO prog FROM @extschema@.program p WHERE p.program_id = pid;
    SELECT max(r.period_end) INTO prev_end FROM @extschema@.settlement_run r
    WHERE r.program_id = pid AND r.period_end < _settle_accounts.period_end;
    cutoff := period_start::timestamp AT TIME ZONE prog.time_zone;
    win_start := (date_trunc('month', period_end::timestamp)
                  - make_interval(months => @extschema@._window_months(prog.qualification_window) - 1))::date;
    -- the ladder by rank (1 = lowest), for array look-ups instead of joins
    SELECT array_agg(t.name ORDER BY t.rank), array_agg(t.threshold ORDER BY t.rank)
    INTO names, thresholds FROM @extschema@.tiers(prog.ladder) t;
    has_req := EXISTS (SELECT FROM @extschema@.tier_requirement r WHERE r.program_id = pid);

    INSERT INTO @extschema@.settlement_account AS s
        (program_id, account_key, period_end, qualifying_to_date, points_to_date, period_qualifying, carried_qualifying,
         period_points, carried_points, measure, old_tier, qualified_tier, new_tier, periods_below, outcome)
    -- The month sums of every account, summed over the three ranges the run
    -- needs.  These are the per-month arrays loyalty.accrual_month unnests
    -- (folded rows and deltas not folded yet), summed row by row: grouping
    -- them by month first, as the view does, costs ten times more and is
    -- not needed for sums over ranges.
    WITH m AS (
        SELECT u.account_key, sum(u.q_to_date) AS q_to_date, sum(u.p_to_date) AS p_to_date,
               sum(u.q_period) AS q_period, sum(u.p_period) AS p_period,
               sum(u.q_window) AS q_window, sum(u.p_window) AS p_window
        FROM (SELECT f.account_key, f.m_month, f.m_qualifying, f.m_points
              FROM @extschema@.balance_folded f WHERE f.program_id = pid
              UNION ALL
              SELECT d.account_key, d.m_month, d.m_qualifying, d.m_points
              FROM @extschema@.balance_delta d WHERE d.program_id = pid) b,
             LATERAL (SELECT b.account_key,
                             sum(x.q) FILTER (WHERE x.month <= period_end) AS q_to_date,
                             sum(x.p) FILTER (WHERE x.month <= period_end) AS p_to_date,
                             sum(x.q) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS q_period,
                             sum(x.p) FILTER (WHERE x.month >= period_start AND x.month <= period_end) AS p_period,
                             sum(x.q) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS q_window,
                             sum(x.p) FILTER (WHERE x.month >= win_start AND x.month <= period_end) AS p_window
                      FROM unnest(b.m_month, b.m_qualifying, b.m_points) AS x(month, q, p)) u
        GROUP BY u.account_key),
    -- upgrades on accrual recorded in the period or after it (a run late
    -- after the period's end): they stand until the next period's end
    recent AS (
        SELECT DISTINCT h.account_key, h.new_tier
        FROM @extschema@.tier_history h
        WHERE h.program_id = pid AND h.reason = 'upgrade_on_accrual' AND h.changed_at >= cutoff),
    granted AS (
        SELECT g.account_key FROM @extschema@.tier_grant g WHERE g.program_id = pid),
    prev AS (
        SELECT x.account_key, x.qualifying_to_date, x.points_to_date, x.periods_below
        FROM @extschema@.settlement_account x
        WHERE x.program_id = pid AND x.period_end = prev_end),
    acts AS (
        SELECT c.account_key, c.action, c.actions
        FROM (SELECT DISTINCT r.action FROM @extschema@.tier_requirement r WHERE r.program_id = pid
              UNION SELECT prog.tier_action WHERE prog.tier_action IS NOT NULL) a,
             LATERAL (SELECT x.account_key, a.action, x.actions
                      FROM @extschema@._action_counts(pid, a.action, win_start, period_end + 1) x) c),
    base AS (
        SELECT coalesce(a.account_key, m.account_key, pv.account_key) AS account_key,
               a.account_key IS NOT NULL AS enrolled, a.tier,
               coalesce(m.q_to_date, 0) AS q_to_date, coalesce(m.p_to_date, 0) AS p_to_date,
               coalesce(m.q_period, 0) AS q_period, coalesce(m.p_period, 0) AS p_period,
               CASE prog.tier_basis WHEN 'qualifying' THEN coalesce(m.q_window, 0)
                                    WHEN 'points' THEN coalesce(m.p_window, 0)
                                    ELSE coalesce((SELECT c.actions FROM acts c
                                                   WHERE c.account_key = coalesce(a.account_key, m.account_key, pv.account_key)
                                                     AND c.action = prog.tier_action), 0) END AS measure,
               coalesce(pv.qualifying_to_date, 0) AS q_prev, coalesce(pv.points_to_date, 0) AS p_prev,
               coalesce(pv.periods_below, 0) AS below_prev,
               g.account_key IS NOT NULL AS granted
        FROM (SELECT * FROM @extschema@.account x WHERE x.program_id = pid) a
             FULL JOIN m ON m.account_key = a.account_key
             FULL JOIN prev pv ON pv.account_key = coalesce(a.account_key, m.account_key)
             LEFT JOIN granted g ON g.account_key = a.account_key),
    ranked AS (
        SELECT b.*,
               array_position(names, b.tier) AS cur_rank,
               -- the highest tier whose threshold the measure reaches (and,
               -- when the program has any, whose extra requirements the
               -- account meets)
               CASE WHEN NOT has_req THEN coalesce(@extschema@.tier_rank(prog.ladder, b.measure), 0)
                    ELSE coalesce((SELECT max(l.rank) FROM unnest(names, thresholds) WITH ORDINALITY AS l(name, threshold, rank)
                                   WHERE l.threshold <= b.measure
                                     AND NOT EXISTS (SELECT FROM @extschema@.tier_requirement r
                                                     WHERE r.program_id = pid AND r.tier = l.name
                                                       AND coalesce((SELECT c.actions FROM acts c
                                                                     WHERE c.account_key = b.account_key AND c.action = r.action), 0)
                                                           < r.min_count)), 0) END AS q_rank,
               -- the margin grace: the highest tier kept within the margin
               CASE WHEN prog.tier_grace = 'margin'
                    THEN coalesce((SELECT max(l.rank) FROM unnest(thresholds) WITH ORDINALITY AS l(threshold, rank)
                                   WHERE l.threshold * (1 - prog.tier_grace_value) <= b.measure), 0)
                    ELSE 0 END AS margin_rank,
               x.account_key IS NOT NULL AS reached_in_period
        FROM base b LEFT JOIN recent x ON x.account_key = b.account_key AND x.new_tier = b.tier),
    decided AS (
        SELECT r.*,
               CASE WHEN NOT r.enrolled OR prog.ladder IS NULL THEN r.cur_rank
                    WHEN r.granted THEN r.cur_rank
                    WHEN r.tier IS NOT NULL AND r.cur_rank IS NULL THEN NULL   -- a tier off the ladder: kept
                    WHEN r.q_rank >= coalesce(r.cur_rank, 0) THEN r.q_rank
                    WHEN r.reached_in_period THEN r.cur_rank
                    WHEN prog.tier_grace = 'one_level' THEN greatest(r.q_rank, r.cur_rank - 1)
                    WHEN prog.tier_grace = 'margin' THEN greatest(r.q_rank, least(r.margin_rank, r.cur_rank))
                    WHEN prog.tier_grace = 'periods' AND r.below_prev + 1 < prog.tier_grace_value THEN r.cur_rank
                    ELSE r.q_rank END AS new_rank
        FROM ranked r)
    SELECT pid, d.account_key, period_end, d.q_to_date, d.p_to_date, d.q_period,
           d.q_to_date - d.q_period - d.q_prev, d.p_period, d.p_to_date - d.p_period - d.p_prev,
           d.measure, d.tier, names[d.q_rank],
           CASE WHEN d.new_rank IS NULL THEN d.tier ELSE names[d.new_rank] END,
           CASE WHEN d.enrolled AND NOT d.granted AND d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                     AND d.new_rank = d.cur_rank AND NOT d.reached_in_period
                THEN d.below_prev + 1 ELSE 0 END,
           CASE WHEN d.granted THEN 'manual'
                WHEN d.new_rank IS NULL OR d.new_rank = coalesce(d.cur_rank, 0) THEN
                     CASE WHEN d.cur_rank IS NOT NULL AND d.q_rank < d.cur_rank
                          THEN CASE WHEN d.reached_in_period THEN 'kept' ELSE 'held' END
                          ELSE 'same' END
                WHEN d.new_rank > coalesce(d.cur_rank, 0) THEN 'up'
                WHEN d.new_rank > d.q_rank THEN 'grace'
                ELSE 'down' END
    FROM decided d;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_accounts(integer, date, date) IS 'Internal: settlement''s one pass over the accounts of a program: amounts counted (of the period, carried from earlier periods) and the tier decision of each, into loyalty.settlement_account.';

-- The tier changes a run decided: account rows and tier history, set-based.
-- An upgrade or downgrade counts for documents dated from tomorrow in the
-- program's calendar, and never for a document already accrued (as fold's
-- upgrades): what a document earned never changes after the fact.
CREATE FUNCTION @extschema@._settle_tiers(pid integer, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    tomorrow date := @extschema@._today(pid) + 1;
BEGIN
    -- the latest document date of each account that moves (what
    -- loyalty.balance's last_doc_date says) and its last change number:
    -- index probes per moving account (the run's rows are too fresh for
    -- the planner to size a join with them)
    WITH c AS (
        SELECT s.account_key, s.old_tier, s.new_tier, s.outcome, s.measure,
               coalesce((SELECT max(h.change_no) FROM @extschema@.tier_history h
                         WHERE h.program_id = pid AND h.account_key = s.account_key), 0) + 1 AS change_no,
               greatest(tomorrow,
                        (SELECT f.last_doc_date FROM @extschema@.balance_folded f
                         WHERE f.program_id = pid AND f.account_key = s.account_key) + 1,
                        (SELECT max(d.last_doc_date) FROM @extschema@.balance_delta d
                         WHERE d.program_id = pid AND d.account_key = s.account_key) + 1) AS effective_from
        FROM @extschema@.settlement_account s
        WHERE s.program_id = pid AND s.period_end = _settle_tiers.period_end
          AND s.outcome IN ('up', 'down', 'grace')),
    upd AS (
        UPDATE @extschema@.account a SET tier = c.new_tier,
               tier_since = CASE WHEN c.new_tier IS NULL THEN NULL ELSE pg_catalog.now() END
        FROM c
        WHERE a.program_id = pid AND a.account_key = c.account_key AND a.tier IS NOT DISTINCT FROM c.old_tier
        RETURNING c.*)
    INSERT INTO @extschema@.tier_history
        (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason, rolling_qualifying)
    SELECT pid, u.account_key, u.change_no, u.effective_from, u.old_tier, u.new_tier,
           CASE u.outcome WHEN 'up' THEN 'requalification' WHEN 'grace' THEN 'grace' ELSE 'downgrade' END,
           u.measure
    FROM upd u ORDER BY u.account_key;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_tiers(integer, date) IS 'Internal: writes the tier changes a settlement run decided (loyalty.account and loyalty.tier_history).';

-- As the owner: settlement reads loyalty's own tables only (accrual_month,
-- account, tier rules, the earlier runs) and evaluates nothing a user
-- defined; the steps it calls are the extension's own.
CREATE FUNCTION @extschema@.settle(program text, period_end date) RETURNS @extschema@.settlement_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    pstart date;
    e text[];
    run @extschema@.settlement_run;
    later date;
    n bigint;
    changed bigint;
    expired bigint;
    rebates numeric;
    mdf numeric;
    jit_was text;
BEGIN
    e := coalesce(@extschema@._program_problem(program),
                  @extschema@._period_end_problem((SELECT p.program_id FROM @extschema@.program p WHERE p.name = settle.program),
                                                  period_end));
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name = settle.program;
    pstart := @extschema@._period_start(pid, period_end);
    IF period_end >= @extschema@._today(pid) THEN
        RAISE EXCEPTION 'the % ending on period_end % has not ended yet', (SELECT p.settlement_period FROM @extschema@.program p WHERE p.program_id = pid), period_end
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Invoices dated in the period may still arrive until its last day has passed in the program''s time zone (%s).',
                                             (SELECT p.time_zone FROM @extschema@.program p WHERE p.program_id = pid)),
                  HINT = 'Settle it on the day after its last day or later; loyalty.settle_due() settles every period that has ended.';
    END IF;
    -- one settlement of the program at a time: a second call waits here,
    -- then (a new snapshot per statement) finds the run the first committed
    PERFORM @extschema@._settle_lock(pid);
    SELECT * INTO run FROM @extschema@.settlement_run r WHERE r.program_id = pid AND r.period_end = settle.period_end;
    IF FOUND THEN
        RAISE NOTICE 'program "%" is already settled for the period ending %', program, period_end
            USING DETAIL = 'A period is settled once; its run is in loyalty.settlement_run.';
        RETURN run;
    END IF;
    SELECT max(r.period_end) INTO later FROM @extschema@.settlement_run r WHERE r.program_id = pid AND r.period_end > settle.period_end;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION 'program "%" is already settled for a later period (ending %)', program, later
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Periods are settled in order; what a skipped period would count was carried into the later run.',
                  HINT = 'Nothing to do: late documents of earlier periods are carried into the next run.';
    END IF;
    PERFORM @extschema@._tier_lock(pid);
    -- backfill replayed the tiers of this period as settlement would have
    SELECT max(t.through) INTO later FROM @extschema@.tier_replay t WHERE t.program_id = pid;
    IF later >= settle.period_end THEN
        RAISE EXCEPTION 'the tiers of program "%" for the period ending % were replayed by loyalty.backfill()', program, period_end
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('backfill re-qualified the tiers of every period up to %s as settlement would have (loyalty.tier_replay); settling one again would re-qualify it twice.', later),
                  HINT = 'Settle the periods after it: loyalty.settle_due() starts there.';
    END IF;
    -- the pass is one cheap scan, but its plan is costed high enough to be
    -- JIT-compiled, which costs more than the pass: off for this run
    -- (restored below; an error rolls the setting back with the run)
    jit_was := pg_catalog.current_setting('jit');
    PERFORM pg_catalog.set_config('jit', 'off', true);

    n := @extschema@._settle_accounts(pid, pstart, period_end);
    RAISE NOTICE 'settle "%" %..%: % accounts counted', program, pstart, period_end, n;
    changed := @extschema@._settle_tiers(pid, period_end);
    RAISE NOTICE 'settle "%" %..%: % tier changes', program, pstart, period_end, changed;
    -- the rebate and expiry steps take the day after the period as their
    -- cutoff (the period's documents are those dated before it).  Expiry
    -- runs first: it locks the accounts it debits before this transaction
    -- posts anything to them.  A redemption holds its account's lock while
    -- it waits for the postings in flight on the account (_await_postings);
    -- had the rebates or MDF been posted first, a redemption arriving
    -- between them and the expiry lock would deadlock with the settlement.
    -- (Rebates and MDF carry no points: the order changes no figure.)
    expired := @extschema@._settle_expiry(pid, pstart, period_end OPERATOR(pg_catalog.+) 1);
    rebates := @extschema@._settle_rebates(pid, pstart, period_end OPERATOR(pg_catalog.+) 1);
    RAISE NOTICE 'settle "%" %..%: rebates trued up %', program, pstart, period_end, rebates;
    mdf := @extschema@._settle_mdf(pid, pstart, period_end);
    RAISE NOTICE 'settle "%" %..%: MDF accrued %', program, pstart, period_end, mdf;
    RAISE NOTICE 'settle "%" %..%: % points expired', program, pstart, period_end, expired;

    INSERT INTO @extschema@.settlement_run AS r
        (program_id, period_start, period_end, status, started_at, finished_at, accounts, points_expired, rebate_total,
         mdf_total, period_qualifying, carried_qualifying, period_points, carried_points, tiers_up, tiers_down,
         tiers_held, settled_by)
    SELECT pid, pstart, settle.period_end, 'done', pg_catalog.now(), pg_catalog.clock_timestamp(), n, expired, rebates, mdf,
           coalesce(sum(s.period_qualifying), 0), coalesce(sum(s.carried_qualifying), 0),
           coalesce(sum(s.period_points), 0), coalesce(sum(s.carried_points), 0),
           count(*) FILTER (WHERE s.outcome = 'up'), count(*) FILTER (WHERE s.outcome IN ('down', 'grace')),
           count(*) FILTER (WHERE s.outcome IN ('held', 'kept')), session_user
    FROM @extschema@.settlement_account s
    WHERE s.program_id = pid AND s.period_end = settle.period_end
    RETURNING * INTO run;
    PERFORM pg_catalog.set_config('jit', jit_was, true);
    RETURN run;
END
$$;
COMMENT ON FUNCTION @extschema@.settle(text, date) IS
    'Settles a program for the period ending on period_end (the last day of a month, quarter or year, by program.settlement_period): tier re-qualification over the rolling window, rebate true-up, MDF, point expiry, in one transaction. Once per period: a second call returns the existing run with a NOTICE; concurrent calls wait for each other. Documents dated in a settled period that arrive later are counted by the next run (carried_qualifying).';

-- Every period that has ended and is not settled, oldest first, program by
-- program.  Periods before the program's first document month or creation
-- are not settled (nothing to count).
CREATE FUNCTION @extschema@.settle_due(program text DEFAULT NULL) RETURNS SETOF @extschema@.settlement_run
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
    d date;
    last_end date;
    first_start date;
    cur_start date;
    step interval;
    e text[];
BEGIN
    IF program IS NOT NULL AND @extschema@._program_problem(program) IS NOT NULL THEN
        e := @extschema@._program_problem(program);
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3] || ' NULL settles every program.', HINT = e[4];
    END IF;
    FOR p IN SELECT x.program_id, x.name, x.settlement_period, x.created_at, x.time_zone FROM @extschema@.program x
             WHERE settle_due.program IS NULL OR x.name = settle_due.program ORDER BY x.program_id LOOP
        step := @extschema@._period_length(p.settlement_period);
        SELECT max(r.period_end) INTO last_end FROM @extschema@.settlement_run r WHERE r.program_id = p.program_id;
        IF last_end IS NOT NULL THEN
            first_start := last_end + 1;
        ELSE
            -- the period holding the program's start or its first document
            SELECT date_trunc(p.settlement_period,
                              least((p.created_at AT TIME ZONE p.time_zone)::date,
                                    (SELECT min(m.month) FROM @extschema@.accrual_month m WHERE m.program_id = p.program_id))::timestamp)::date
            INTO first_start;
        END IF;
        -- periods whose tiers backfill replayed are not settled again
        SELECT greatest(first_start, max(t.through) + 1) INTO first_start
        FROM @extschema@.tier_replay t WHERE t.program_id = p.program_id;
        -- the current period has not ended: the last to settle ends before it
        cur_start := date_trunc(p.settlement_period, @extschema@._today(p.program_id)::timestamp)::date;
        d := first_start;
        WHILE d < cur_start LOOP
            RETURN NEXT @extschema@.settle(p.name, (d + step - interval '1 day')::date);
            d := (d + step)::date;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.settle_due(text) IS
    'Settles every period that has ended (in each program''s time zone) and is not settled yet, oldest first, of every program or of one; returns the runs it made. What a pg_cron job calls (loyalty.schedule_settlement).';

-- pg_cron: one named job per program, as the caller (the job then runs as
-- the caller: a role that may settle).
CREATE FUNCTION @extschema@._cron_schema() RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT n.nspname FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                                   AND d.refobjid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'
                                   AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) d.objid
        WHERE e.extname OPERATOR(pg_catalog.=) 'pg_cron' LIMIT 1);
COMMENT ON FUNCTION @extschema@._cron_schema() IS 'Internal: the schema pg_cron created in this database (cron), as the extension''s own member; NULL when pg_cron is not created here.';

CREATE FUNCTION @extschema@.schedule_settlement(program text, cron text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    job bigint;
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    IF cron IS NULL THEN
        RAISE EXCEPTION 'cron must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'cron is a pg_cron schedule, e.g. ''0 2 * * *'' (every day at 02:00).',
                  HINT = 'settle_due() settles only periods that have ended, so a daily schedule settles each period once, the night after it ends.';
    END IF;
    nsp := @extschema@._cron_schema();
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('The settlement of program "%s" would run as a pg_cron job; the extension pg_cron is not created in this database.', program),
                  HINT = pg_catalog.format('Install the package postgresql-15-cron, set shared_preload_libraries = ''pg_cron'' and cron.database_name = %L in postgresql.conf, restart the server, then run CREATE EXTENSION pg_cron in this database. Without pg_cron, call SELECT * FROM loyalty.settle_due() from any scheduler.', current_database());
    END IF;
    -- pg_cron replaces the schedule of a job of the same name: idempotent
    EXECUTE pg_catalog.format('SELECT %I.schedule($1, $2, $3)', nsp)
    INTO job
    USING 'loyalty-settle-' || program, cron,
          pg_catalog.format('SELECT count(*) FROM %I.settle_due(%L)', '@extschema@', program);
    RETURN job;
END
$$;
COMMENT ON FUNCTION @extschema@.schedule_settlement(text, text) IS
    'Registers (or re-registers with a new schedule) the pg_cron job loyalty-settle-<program> that runs loyalty.settle_due(program) as the calling role; returns the job id. Needs pg_cron created in this database.';

CREATE FUNCTION @extschema@.unschedule_settlement(program text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    done boolean;
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    nsp := @extschema@._cron_schema();
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('No job loyalty-settle-%s can exist without pg_cron.', program),
                  HINT = 'Nothing to unschedule.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = nsp AND c.relname = 'job') THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %I.job j WHERE j.jobname = $1)', nsp)
    INTO done USING 'loyalty-settle-' || program;
    IF NOT done THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('SELECT %I.unschedule($1)', nsp) INTO done USING 'loyalty-settle-' || program;
    RETURN done;
END
$$;
COMMENT ON FUNCTION @extschema@.unschedule_settlement(text) IS
    'Removes the pg_cron job loyalty-settle-<program>; false when there is none.';

GRANT SELECT ON @extschema@.settlement_account TO loyalty_reader, loyalty_operator, loyalty_admin;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_account', '');
REVOKE ALL ON FUNCTION @extschema@.settle(text, date), @extschema@.settle_due(text),
                      @extschema@.schedule_settlement(text, text), @extschema@.unschedule_settlement(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.settle(text, date), @extschema@.settle_due(text) TO loyalty_operator, loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.schedule_settlement(text, text), @extschema@.unschedule_settlement(text) TO loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._settle_lock(integer), @extschema@._tier_lock(integer), @extschema@._period_length(text),
                      @extschema@._program_problem(text), @extschema@._period_end_problem(integer, date),
                      @extschema@._period_start(integer, date), @extschema@._settle_accounts(integer, date, date),
                      @extschema@._settle_tiers(integer, date), @extschema@._cron_schema() FROM PUBLIC;
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
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE benefit
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
END;
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
-- by (the tier history, as the accrual reads it).
CREATE FUNCTION @extschema@._tier_at(program_id integer, account_key text, as_of date) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT h.new_tier FROM @extschema@.tier_history h
        WHERE h.program_id OPERATOR(pg_catalog.=) _tier_at.program_id
          AND h.account_key OPERATOR(pg_catalog.=) _tier_at.account_key
          AND h.effective_from OPERATOR(pg_catalog.<=) _tier_at.as_of
        ORDER BY h.effective_from DESC, h.change_no DESC LIMIT 1);
COMMENT ON FUNCTION @extschema@._tier_at(integer, text, date) IS 'Internal: an account''s tier on a date, from loyalty.tier_history (NULL: none).';

-- A benefit of an account on a date, e.g. the MDF rate a claim earns.
CREATE FUNCTION @extschema@._benefit(program_id integer, account_key text, benefit text, as_of date) RETURNS pg_catalog.jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _benefit.program_id
          AND b.tier OPERATOR(pg_catalog.=) @extschema@._tier_at(_benefit.program_id, _benefit.account_key, _benefit.as_of)
          AND b.benefit OPERATOR(pg_catalog.=) _benefit.benefit);
COMMENT ON FUNCTION @extschema@._benefit(integer, text, text, date) IS 'Internal: the value of one benefit of an account on a date (by its tier that day), NULL when its tier has none; e.g. _benefit(program_id, account_key, ''mdf_rate'', d)::numeric.';

-- The MDF rate of an account on a date: the mdf_rate benefit of its tier
-- that day (loyalty._settle_mdf credits the period's spend at it).
CREATE FUNCTION @extschema@._mdf_rate(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT b.value FROM @extschema@.tier_benefit b
        WHERE b.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
          AND b.benefit OPERATOR(pg_catalog.=) 'mdf_rate'
          -- before its first recorded tier (a period settled from documents
          -- older than the program's history), the account counts at that tier
          AND b.tier OPERATOR(pg_catalog.=) coalesce(
                @extschema@._tier_at(_mdf_rate.program_id, _mdf_rate.account_key, _mdf_rate.as_of),
                (SELECT h.new_tier FROM @extschema@.tier_history h
                 WHERE h.program_id OPERATOR(pg_catalog.=) _mdf_rate.program_id
                   AND h.account_key OPERATOR(pg_catalog.=) _mdf_rate.account_key
                 ORDER BY h.effective_from, h.change_no LIMIT 1)))::numeric;
COMMENT ON FUNCTION @extschema@._mdf_rate(integer, text, date) IS 'Internal: the MDF rate (a fraction) of an account on a date, from the mdf_rate benefit of its tier that day (of its first recorded tier, before it had one); NULL when that tier has none.';

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
        WHERE m.program_id = prog.program_id AND m.account_key = _measure.account_key
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
BEGIN
    PERFORM @extschema@._tier_lock(pid);
    SELECT a.tier INTO old_tier FROM @extschema@.account a
    WHERE a.program_id = pid AND a.account_key = account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = pid)
            USING ERRCODE = 'no_data_found',
                  HINT = 'Enrol it first with loyalty.enroll().';
    END IF;
    IF old_tier IS NOT DISTINCT FROM new_tier THEN
        RETURN;
    END IF;
    UPDATE @extschema@.account a SET tier = new_tier,
           tier_since = CASE WHEN new_tier IS NULL THEN NULL ELSE now() END
    WHERE a.program_id = pid AND a.account_key = account;
    INSERT INTO @extschema@.tier_history (program_id, account_key, change_no, effective_from, old_tier, new_tier, reason)
    VALUES (pid, account,
            coalesce((SELECT max(h.change_no) FROM @extschema@.tier_history h
                      WHERE h.program_id = pid AND h.account_key = account), 0) + 1,
            greatest(tomorrow, coalesce((SELECT b.last_doc_date + 1 FROM @extschema@.balance b
                                         WHERE b.program_id = pid AND b.account_key = account), tomorrow)),
            old_tier, new_tier, why);
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
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = grant_tier.account_key) THEN
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
    VALUES (pid, account_key, tier, reason)
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
    DELETE FROM @extschema@.tier_grant g WHERE g.program_id = pid AND g.account_key = revoke_tier.account_key;
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
    SELECT p.program_id, p.time_zone INTO pid, zone FROM @extschema@.program p WHERE p.name = balance.program;
    -- the ledger as it stood at the end of as_of in the program's calendar
    SELECT coalesce(sum(l.points), 0), coalesce(sum(l.qualifying), 0) INTO points, qualifying
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = balance.account_key
      AND l.posted_at < ((as_of + 1)::timestamp AT TIME ZONE zone);
    -- the rolling window ending with as_of's month, by document date
    SELECT coalesce(sum(m.qualifying), 0) INTO rolling_qualifying FROM @extschema@.accrual_month m
    WHERE m.program_id = pid AND m.account_key = balance.account_key
      AND m.month >= (date_trunc('month', as_of::timestamp)
                      - make_interval(months => (SELECT @extschema@._window_months(p.qualification_window) - 1
                                                 FROM @extschema@.program p WHERE p.program_id = pid)))::date
      AND m.month <= as_of;
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
    WHERE a.program_id = pid AND a.account_key = benefits.account_key
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
    WHERE s.program_id = pid AND s.account_key = statement.account_key AND s.period_end = statement.period_end;
    IF NOT FOUND THEN
        t := @extschema@._tier_at(pid, account_key, period_end);
        m := @extschema@._measure(pid, account_key, period_end);
        outcome := 'not settled yet';
    END IF;
    SELECT max(h.effective_from) INTO since FROM @extschema@.tier_history h
    WHERE h.program_id = pid AND h.account_key = statement.account_key AND h.new_tier = t;
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
    WHERE x.program_id = pid AND x.account_key = statement.account_key AND x.month >= pstart AND x.month <= period_end
    GROUP BY a.source_name ORDER BY a.source_name;
    RETURN QUERY
    SELECT 'points earned', l.kind::text, sum(l.points)::text
    FROM @extschema@.ledger l
    WHERE l.program_id = pid AND l.account_key = statement.account_key
      AND l.kind IN ('award', 'adjust') AND l.posted_at >= zone_start AND l.posted_at < zone_end
    GROUP BY l.kind ORDER BY l.kind;
    RETURN QUERY
    SELECT 'points', v.item, v.value FROM (VALUES
        ('redeemed', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                      WHERE l.program_id = pid AND l.account_key = statement.account_key AND l.kind = 'redeem'
                        AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expired', (SELECT coalesce(-sum(l.points), 0)::text FROM @extschema@.ledger l
                     WHERE l.program_id = pid AND l.account_key = statement.account_key AND l.kind = 'expire'
                       AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('expiring soon', @extschema@._expiring_soon(pid, account_key, period_end)::text),
        ('balance at period end', (SELECT b.points::text FROM @extschema@.balance(program, account_key, period_end) b))) v(item, value);
    RETURN QUERY
    SELECT 'rebates', v.item, v.value FROM (VALUES
        ('accrued in period', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                               WHERE l.program_id = pid AND l.account_key = statement.account_key
                                 AND l.rebate <> 0 AND l.posted_at >= zone_start AND l.posted_at < zone_end)),
        ('balance at period end', (SELECT coalesce(sum(l.rebate), 0)::text FROM @extschema@.ledger l
                                   WHERE l.program_id = pid AND l.account_key = statement.account_key
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

-- Point expiry.  A program's point_lifetime says how long points stay
-- spendable; settlement expires what is older.  No lot table: points are
-- consumed oldest first, so what must expire at a cutoff follows from sums
-- the engine keeps anyway (the FIFO closed form):
--
--   due = max(0, earned before the threshold month - consumed so far)
--
-- The age of a point is counted in whole months (expiry is month-granular):
--   * an accrued point is as old as its document's month (loyalty.accrual_month:
--     a backfilled or late-posted invoice is as old as its document date; a
--     credit note reduces its own document month; caps apply as the engine
--     applies them, to the months in order);
--   * any other credit (award, adjust or bonus > 0 posted through _post) is
--     as old as the month of its posting date in the program's time zone.
-- The points of month M expire at the first cutoff C (a settlement's
-- period_end, exclusive) at which every day of M is older than the lifetime:
-- M + 1 month + lifetime <= C, that is M < date_trunc('month', C - lifetime).
-- With a lifetime of 12 months, the points of March 2026 expire at the
-- cutoff 2027-04-01 (the end of the first quarter of 2027), those of April
-- 2026 at 2027-07-01.
--
-- Consumed so far: every redeem and expire entry (negative; a cancelled
-- redemption's positive entry gives its points back) and every other
-- non-accrual entry below zero (a negative adjustment spends like a
-- redemption).  A credit note that takes more than its month earned takes
-- the rest from the newest points before it: the points of the months
-- before the threshold are therefore the least running total from the
-- threshold on, not just the total at the threshold (so that expiry never
-- takes points a later credit note already took, and never more than the
-- balance).

-- The months whose points are expired at cutoff: those before this one.
CREATE FUNCTION @extschema@._expiry_threshold(program_id integer, cutoff date) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (SELECT pg_catalog.date_trunc('month', (cutoff OPERATOR(pg_catalog.-) p.point_lifetime))::date
        FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) _expiry_threshold.program_id);
COMMENT ON FUNCTION @extschema@._expiry_threshold(integer, date) IS
    'Internal: the first month whose points are still valid at cutoff (NULL when the program''s points never expire).';

-- What must expire at cutoff, per account with something to expire (account
-- NULL: every account of the program).  Reads loyalty's tables only, in the
-- caller's snapshot; PL/pgSQL so that the one-account call is planned for
-- its key.
CREATE FUNCTION @extschema@._expiry_due(program_id integer, cutoff date, account text)
RETURNS TABLE (account_key text, points bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    t date := @extschema@._expiry_threshold($1, $2);
    zone text;
    capped boolean := EXISTS (SELECT FROM @extschema@.rule r
                              WHERE r.program_id OPERATOR(pg_catalog.=) $1 AND r.cap_points IS NOT NULL);
BEGIN
    IF t IS NULL THEN
        RETURN;                 -- points of this program never expire
    END IF;
    SELECT p.time_zone INTO zone FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1;
    RETURN QUERY
    WITH other AS (
        -- the entries that are not accrual: credits by posting month, debits
        SELECT l.account_key,
               pg_catalog.date_trunc('month', l.posted_at AT TIME ZONE zone)::date AS month,
               l.kind OPERATOR(pg_catalog.=) ANY ('{redeem,expire}'::@extschema@.ledger_kind[])
                   OR l.points OPERATOR(pg_catalog.<) 0 AS debit,
               l.points
        FROM @extschema@.ledger l
        WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($3 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $3)
          AND l.points OPERATOR(pg_catalog.<>) 0
          AND l.kind OPERATOR(pg_catalog.<>) ALL ('{earn,reverse,cap,backfill,restate}'::@extschema@.ledger_kind[])
          AND NOT (l.kind OPERATOR(pg_catalog.=) 'bonus' AND l.attachment_id IS NOT NULL)),
    series AS (
        SELECT u.account_key, u.month, pg_catalog.sum(u.acc)::bigint AS acc, pg_catalog.sum(u.cred)::bigint AS cred
        FROM (SELECT m.account_key, m.month, m.points AS acc, 0::bigint AS cred
              FROM @extschema@.accrual_month m
              WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND ($3 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $3)
              UNION ALL
              SELECT o.account_key, o.month, 0, o.points FROM other o WHERE NOT o.debit) u
        GROUP BY 1, 2),
    running AS (
        -- points earned up to each month, caps applied as the engine applies them
        SELECT s.account_key, s.month,
               CASE WHEN capped
                    THEN (SELECT coalesce(@extschema@._capped_points($1, pg_catalog.array_agg(x.month), pg_catalog.array_agg(x.acc)), 0)
                          FROM series x
                          WHERE x.account_key OPERATOR(pg_catalog.=) s.account_key AND x.month OPERATOR(pg_catalog.<=) s.month)
                    ELSE pg_catalog.sum(s.acc) OVER w END
               OPERATOR(pg_catalog.+) pg_catalog.sum(s.cred) OVER w AS total
        FROM series s
        WINDOW w AS (PARTITION BY s.account_key ORDER BY s.month)),
    old AS (
        SELECT r.account_key,
               LEAST((pg_catalog.array_agg(r.total ORDER BY r.month DESC) FILTER (WHERE r.month OPERATOR(pg_catalog.<) t))[1],
                                pg_catalog.min(r.total) FILTER (WHERE r.month OPERATOR(pg_catalog.>=) t)) AS earned
        FROM running r
        GROUP BY 1
        HAVING pg_catalog.bool_or(r.month OPERATOR(pg_catalog.<) t)),
    spent AS (
        SELECT o.account_key, OPERATOR(pg_catalog.-) pg_catalog.sum(o.points) AS consumed
        FROM other o WHERE o.debit GROUP BY 1)
    SELECT o.account_key, (o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0))::bigint
    FROM old o LEFT JOIN spent s ON s.account_key OPERATOR(pg_catalog.=) o.account_key
    WHERE o.earned OPERATOR(pg_catalog.-) coalesce(s.consumed, 0) OPERATOR(pg_catalog.>) 0;
END
$$;
COMMENT ON FUNCTION @extschema@._expiry_due(integer, date, text) IS
    'Internal: the points that must expire at cutoff (a period end, exclusive), per account of a program (or of one account), by the FIFO closed form; accounts with nothing to expire are left out.';

-- Settlement's expiry: one expire entry per account with points older than
-- the lifetime at period_end.  Idempotent by construction: the entries it
-- posts count as consumed, so a second call at the same cutoff finds
-- nothing due.  Each account is locked as a debit is (its next debit
-- number, in ascending key order, in one statement), and what is due is
-- computed in the next statement: a redemption committed meanwhile is seen,
-- one that comes later waits and then sees the expiry, so neither can spend
-- the points of the other.  The entries have the exact shape of _post's,
-- written in one statement for the whole program.
CREATE FUNCTION @extschema@._settle_expiry(program_id integer, period_start date, period_end date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    locked text[];
    t date := @extschema@._expiry_threshold($1, $3);
    total bigint;
BEGIN
    IF t IS NULL THEN
        RETURN 0;               -- no lifetime: points never expire
    END IF;
    WITH due AS (SELECT d.account_key FROM @extschema@._expiry_due($1, $3, NULL) d),
    lock AS (
        SELECT a.account_key FROM @extschema@.account a
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key IN (SELECT due.account_key FROM due)
        ORDER BY a.account_key
        FOR NO KEY UPDATE OF a),
    numbered AS (
        UPDATE @extschema@.account a SET debit_no = a.debit_no OPERATOR(pg_catalog.+) 1
        FROM lock k
        WHERE a.program_id OPERATOR(pg_catalog.=) $1 AND a.account_key OPERATOR(pg_catalog.=) k.account_key
        RETURNING a.account_key)
    SELECT pg_catalog.array_agg(n.account_key) INTO locked FROM numbered n;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;
    -- a new statement, a new snapshot: every debit of these accounts that
    -- committed before the lock is counted
    WITH due AS (
        SELECT d.account_key, d.points, @extschema@._ledger_number() AS n
        FROM @extschema@._expiry_due($1, $3, NULL) d
        JOIN pg_catalog.unnest(locked) k(account_key) ON k.account_key OPERATOR(pg_catalog.=) d.account_key),
    entries AS (
        INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                             member_id, corrects, corrects_xid, reason)
        SELECT $1, d.account_key, d.n, 'expire', OPERATOR(pg_catalog.-) d.points, 0, 0, NULL, NULL, NULL,
               pg_catalog.format('expiry at %s: points of months before %s', $3, t)
        FROM due d
        RETURNING l.points),
    deltas AS (
        INSERT INTO @extschema@.balance_delta AS b (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
        SELECT $1, d.account_key, d.n, OPERATOR(pg_catalog.-) d.points, 0, 0, 1
        FROM due d
        RETURNING b.points)
    SELECT coalesce(OPERATOR(pg_catalog.-) pg_catalog.sum(e.points), 0)::bigint INTO total FROM entries e;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_expiry(integer, date, date) IS
    'Internal: settlement''s expiry at period_end (exclusive): posts one expire entry per account whose points are older than the program''s point_lifetime, oldest points consumed first; returns the points expired. Idempotent: a second call at the same cutoff posts nothing.';

-- The settlement cutoffs (period ends) after as_of up to 90 days on.
CREATE FUNCTION @extschema@._expiry_cutoffs(program_id integer, as_of date) RETURNS SETOF date
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT c::date
FROM @extschema@.program p,
     LATERAL (SELECT CASE p.settlement_period WHEN 'month' THEN interval '1 month'
                                              WHEN 'quarter' THEN interval '3 months' ELSE interval '1 year' END AS step) s,
     pg_catalog.generate_series(pg_catalog.date_trunc(p.settlement_period, as_of::timestamp) OPERATOR(pg_catalog.+) s.step,
                                (as_of OPERATOR(pg_catalog.+) 90)::timestamp, s.step) AS c
WHERE p.program_id OPERATOR(pg_catalog.=) _expiry_cutoffs.program_id AND p.point_lifetime IS NOT NULL
$$;
COMMENT ON FUNCTION @extschema@._expiry_cutoffs(integer, date) IS
    'Internal: the program''s settlement cutoffs (first days of its month, quarter or year periods) after as_of and at most 90 days after it.';

-- Expiring soon: what the settlements of the next 90 days expire if the
-- account spends nothing meanwhile, points overdue from a cutoff whose
-- settlement has not run yet included.  0 when no cutoff falls in the
-- next 90 days (a yearly settlement period far away) or points never expire.
CREATE FUNCTION @extschema@._expiring_soon(program_id integer, account_key text, as_of date) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT coalesce((SELECT d.points
                 FROM @extschema@._expiry_due(program_id, (SELECT pg_catalog.max(c) FROM @extschema@._expiry_cutoffs(program_id, as_of) c),
                                              account_key) d), 0)
$$;
COMMENT ON FUNCTION @extschema@._expiring_soon(integer, text, date) IS
    'Internal: the points of an account that the settlement cutoffs of the next 90 days after as_of expire if it spends nothing meanwhile (overdue points included).';

-- The reader's view of it, per cutoff.
CREATE FUNCTION @extschema@.expiring_points(program text, account text DEFAULT NULL, as_of date DEFAULT NULL)
RETURNS TABLE (account_key text, cutoff date, points bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    pid integer;
    day date;
BEGIN
    -- a partner's login reads its own account only, and not every account
    -- (account NULL) (src/sql/80_partner.sql)
    PERFORM @extschema@._may_read(program, account);
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF as_of IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'as_of must be a finite date, not %', as_of
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'as_of is the day from which the next 90 days of settlement cutoffs are looked at.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, @extschema@._today(pid));
    -- what is due at a cutoff includes what is due at the ones before it
    RETURN QUERY
    SELECT y.account_key, y.cutoff, y.points
    FROM (SELECT x.account_key, x.cutoff,
                 (x.due OPERATOR(pg_catalog.-)
                  coalesce(pg_catalog.lag(x.due) OVER (PARTITION BY x.account_key ORDER BY x.cutoff), 0))::bigint AS points
          FROM (SELECT d.account_key, c AS cutoff, d.points AS due
                FROM @extschema@._expiry_cutoffs(pid, day) c,
                     LATERAL @extschema@._expiry_due(pid, c, expiring_points.account) d) x) y
    WHERE y.points OPERATOR(pg_catalog.>) 0
    ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION @extschema@.expiring_points(text, text, date) IS
    'Points that expire at each settlement cutoff of the next 90 days after as_of (default: today in the program''s time zone) if the account spends nothing meanwhile, per account (account NULL: every account with points to expire). Points of a month expire at the first cutoff at which the whole month is older than the program''s point_lifetime; the oldest points are spent first.';
GRANT EXECUTE ON FUNCTION @extschema@.expiring_points(text, text, date) TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Retrospective volume rebates.  An agreement gives an account, or every
-- account of a segment, a rebate_schedule over the qualifying spend of each
-- of its periods (the program's settlement period, or its own month,
-- quarter or year; calendar periods).  While a period runs,
-- loyalty.accrue_rebates() posts the estimate (the schedule applied to the
-- volume so far) to the rebate wallet; at settlement _settle_rebates()
-- posts the true-up (final - already accrued, possibly negative) and
-- writes a settlement line the ERP turns into a credit note.  An invoice or
-- credit note dated in a period already settled changes its volume: the
-- next settlement posts an adjustment line for that period.  Every amount
-- is recomputed from the volumes each time and compared with what was
-- posted, so nothing is counted twice, whichever call comes when.
--
-- The volume of a period is the qualifying spend of the account's
-- documents dated in it (loyalty.accrual_month, by document month: the
-- same spend that qualifies for tiers, credit notes and corrections
-- included), within the agreement's validity, month by month.  A negative
-- volume earns no rebate.  Amounts are rounded to cents (half away from
-- zero) in the program's currency.

CREATE TABLE @extschema@.rebate_agreement (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    agreement_id      text NOT NULL CHECK (agreement_id OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.]{1,40}$'),
    account_key       text,
    cooperation_model text,
    region            text,
    industry          text,
    schedule          @extschema@.rebate_schedule NOT NULL,
    product_lines     text[],
    period            text NOT NULL CHECK (period IN ('month', 'quarter', 'year')),
    valid_from        date NOT NULL,
    valid_until       date,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    ended_at          timestamptz,
    PRIMARY KEY (program_id, agreement_id),
    CHECK (account_key IS NULL OR (cooperation_model IS NULL AND region IS NULL AND industry IS NULL)),
    CHECK (valid_until OPERATOR(pg_catalog.>) valid_from)
);
COMMENT ON TABLE @extschema@.rebate_agreement IS 'Volume rebate agreements: a rebate schedule over the qualifying spend of each period, for one account or every account of a segment. Created and ended with loyalty.create_rebate_agreement and loyalty.end_rebate_agreement.';
COMMENT ON COLUMN @extschema@.rebate_agreement.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_agreement.agreement_id IS 'The agreement''s code (letters, digits, _ and .; it is part of the settlement lines'' document keys).';
COMMENT ON COLUMN @extschema@.rebate_agreement.account_key IS 'The one account it covers; NULL: every account of the segment.';
COMMENT ON COLUMN @extschema@.rebate_agreement.cooperation_model IS 'Segment: accounts with this cooperation model (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.region IS 'Segment: accounts of this region (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.industry IS 'Segment: accounts of this industry (NULL: any).';
COMMENT ON COLUMN @extschema@.rebate_agreement.schedule IS 'The rebate brackets (retro or marginal) applied to each period''s volume.';
COMMENT ON COLUMN @extschema@.rebate_agreement.product_lines IS 'Product lines whose spend counts (from loyalty.rebate_line_volume); NULL: all spend.';
COMMENT ON COLUMN @extschema@.rebate_agreement.period IS 'Rebate period: month, quarter or year (calendar periods).';
COMMENT ON COLUMN @extschema@.rebate_agreement.valid_from IS 'First day it applies to: documents of earlier months do not count.';
COMMENT ON COLUMN @extschema@.rebate_agreement.valid_until IS 'First day it no longer applies to (NULL: open-ended): documents of this month and later do not count.';
COMMENT ON COLUMN @extschema@.rebate_agreement.created_at IS 'When it was created.';
COMMENT ON COLUMN @extschema@.rebate_agreement.ended_at IS 'When loyalty.end_rebate_agreement ended it.';

-- Every rebate posted for an agreement, account and period: estimates,
-- true-ups and adjustments.  What is already accrued for a period is their
-- sum; each row names its ledger entry.
CREATE TABLE @extschema@.rebate_posting (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    agreement_id text NOT NULL,
    period_end   date NOT NULL,
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint NOT NULL,
    period_start date NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('estimate', 'trueup', 'adjustment')),
    volume       numeric NOT NULL,
    amount       numeric NOT NULL,
    posted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, agreement_id, period_end, posted_xid, entry_no),
    FOREIGN KEY (program_id, agreement_id) REFERENCES @extschema@.rebate_agreement
);
COMMENT ON TABLE @extschema@.rebate_posting IS 'Every rebate posted to the rebate wallet per agreement, account and period (estimate, true-up, adjustment), with its ledger entry (account, posted_xid, entry_no). What is accrued for a period is the sum of its amounts.';
COMMENT ON COLUMN @extschema@.rebate_posting.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_posting.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.rebate_posting.agreement_id IS 'The agreement.';
COMMENT ON COLUMN @extschema@.rebate_posting.period_end IS 'Day after the period''s last day.';
COMMENT ON COLUMN @extschema@.rebate_posting.posted_xid IS 'Transaction of the ledger entry.';
COMMENT ON COLUMN @extschema@.rebate_posting.entry_no IS 'The ledger entry''s number within posted_xid.';
COMMENT ON COLUMN @extschema@.rebate_posting.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.rebate_posting.kind IS 'estimate (loyalty.accrue_rebates while the period runs), trueup (settlement) or adjustment (a later settlement, after late postings).';
COMMENT ON COLUMN @extschema@.rebate_posting.volume IS 'The period''s volume the amount was computed from.';
COMMENT ON COLUMN @extschema@.rebate_posting.amount IS 'Money posted to the rebate wallet (negative: taken back).';
COMMENT ON COLUMN @extschema@.rebate_posting.posted_at IS 'When.';

-- What the ERP reads to issue its credit notes: one line per agreement,
-- account and settled period, and one more per later change of the
-- period's volume.  The document key is stable (the same line has the same
-- key however often it is read) and unique, so the ERP posts each once.
CREATE TABLE @extschema@.settlement_line (
    program_id      integer NOT NULL,
    account_key     text NOT NULL,
    agreement_id    text NOT NULL,
    period_end      date NOT NULL,
    adjustment_no   integer NOT NULL CHECK (adjustment_no OPERATOR(pg_catalog.>=) 0),
    document_key    text NOT NULL,
    period_start    date NOT NULL,
    volume          numeric NOT NULL,
    final           numeric NOT NULL,
    accrued         numeric NOT NULL,
    amount          numeric NOT NULL,
    credit_note     numeric NOT NULL,
    currency        text NOT NULL,
    settled_through date NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    posted_xid      xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no        bigint,
    PRIMARY KEY (program_id, account_key, agreement_id, period_end, adjustment_no),
    -- unique with the account key first, as every unique index of an
    -- account-scoped table (distributable by account on Citus)
    CONSTRAINT settlement_line_document_key UNIQUE (program_id, account_key, document_key),
    FOREIGN KEY (program_id, agreement_id) REFERENCES @extschema@.rebate_agreement
);
COMMENT ON TABLE @extschema@.settlement_line IS 'Rebate settlement lines for the ERP: per agreement, account and settled period, the final rebate and what was trued up; later lines (adjustment_no > 0) when invoices or credit notes dated in a settled period arrive. Issue a credit note of credit_note per line, keyed by document_key.';
COMMENT ON COLUMN @extschema@.settlement_line.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_line.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.settlement_line.agreement_id IS 'The rebate agreement.';
COMMENT ON COLUMN @extschema@.settlement_line.period_end IS 'Day after the rebate period''s last day.';
COMMENT ON COLUMN @extschema@.settlement_line.adjustment_no IS '0 for the period''s settlement; 1, 2, ... for each later adjustment.';
COMMENT ON COLUMN @extschema@.settlement_line.document_key IS 'Stable unique key for the ERP''s credit note: LOY-<program_id>-<agreement>-<account>-<period_end as YYYY-MM-DD>, with -ADJ-<n> for adjustments (a function of the primary key, and the primary key of it: agreement codes have no -).';
COMMENT ON COLUMN @extschema@.settlement_line.period_start IS 'First day of the rebate period.';
COMMENT ON COLUMN @extschema@.settlement_line.volume IS 'The period''s qualifying spend when the line was written.';
COMMENT ON COLUMN @extschema@.settlement_line.final IS 'The period''s rebate on that volume.';
COMMENT ON COLUMN @extschema@.settlement_line.accrued IS 'What the rebate wallet held for the period before this line (estimates, earlier lines).';
COMMENT ON COLUMN @extschema@.settlement_line.amount IS 'What this line posted to the rebate wallet: final - accrued (negative: taken back).';
COMMENT ON COLUMN @extschema@.settlement_line.credit_note IS 'The credit note the ERP issues for this line: the final rebate for adjustment 0, the change of the final rebate for later lines (negative: a debit note).';
COMMENT ON COLUMN @extschema@.settlement_line.currency IS 'The program''s currency.';
COMMENT ON COLUMN @extschema@.settlement_line.settled_through IS 'The period_end of the settlement that wrote the line.';
COMMENT ON COLUMN @extschema@.settlement_line.created_at IS 'When it was written.';
COMMENT ON COLUMN @extschema@.settlement_line.posted_xid IS 'Transaction that wrote it (and its ledger entry).';
COMMENT ON COLUMN @extschema@.settlement_line.entry_no IS 'Its ledger entry''s number within posted_xid (NULL: nothing to post, final = accrued).';

-- The qualifying spend per product line of the programs with agreements
-- scoped to product lines, appended by the accrual trigger (rebate_lines.c)
-- as it reads the ERP rows with their writer's rights: settlement never
-- evaluates the attaching user's mapping.  One bucket per scoped line, and
-- one (product_line NULL) for the rest, so that an account's buckets of a
-- month add up to its accrual_month qualifying spend.
CREATE TABLE @extschema@.rebate_line_volume (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint NOT NULL,
    month        date NOT NULL,
    product_line text,
    qualifying   numeric NOT NULL,
    source_rows  bigint NOT NULL,
    PRIMARY KEY (program_id, account_key, posted_xid, entry_no)
);
COMMENT ON TABLE @extschema@.rebate_line_volume IS 'Qualifying spend per account, document month and product line, appended by the accrual trigger for the programs that have rebate agreements scoped to product lines (from the first such agreement''s creation on): the volumes of those agreements. Sum the rows of a key; removed and credited rows come as negative rows.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.posted_xid IS 'Transaction of the ERP statement.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.entry_no IS 'Number within posted_xid (the ledger''s numbering).';
COMMENT ON COLUMN @extschema@.rebate_line_volume.month IS 'Document month (first day).';
COMMENT ON COLUMN @extschema@.rebate_line_volume.product_line IS 'A product line some agreement of the program scopes; NULL: any other line, or none.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.qualifying IS 'Change of the qualifying spend.';
COMMENT ON COLUMN @extschema@.rebate_line_volume.source_rows IS 'Change of the number of ERP rows counted.';

-- the trigger caches the set of scoped product lines with the program
CREATE TRIGGER rebate_agreement_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.rebate_agreement
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate('config');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_line_volume', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_agreement', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rebate_posting', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_line', '');
GRANT SELECT ON @extschema@.rebate_agreement, @extschema@.rebate_posting, @extschema@.settlement_line
    TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON @extschema@.rebate_line_volume TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Several rebate postings at once, each with the exact shape of _post's:
-- one ledger entry and one balance delta, numbered in the transaction.
-- Returns each account's entry number, in the order given.
CREATE FUNCTION @extschema@._post_rebates(program_id integer, account_keys text[], amounts numeric[], reasons text[])
RETURNS TABLE (ord bigint, entry_no bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
WITH r AS (
    SELECT u.ord, u.account_key, u.amount, u.reason, @extschema@._ledger_number() AS n
    FROM ROWS FROM (pg_catalog.unnest(account_keys), pg_catalog.unnest(amounts), pg_catalog.unnest(reasons))
         WITH ORDINALITY AS u(account_key, amount, reason, ord)
    WHERE u.amount OPERATOR(pg_catalog.<>) 0),
entries AS (
    INSERT INTO @extschema@.ledger AS l (program_id, account_key, entry_no, kind, points, rebate, mdf,
                                         member_id, corrects, corrects_xid, reason)
    SELECT $1, r.account_key, r.n, 'rebate', 0, r.amount, 0, NULL, NULL, NULL, r.reason FROM r
    RETURNING l.entry_no),
deltas AS (
    INSERT INTO @extschema@.balance_delta AS d (program_id, account_key, delta_no, points, rebate, mdf, entry_count)
    SELECT $1, r.account_key, r.n, 0, r.amount, 0, 1 FROM r
    RETURNING d.delta_no)
SELECT r.ord, r.n FROM r
$$;
COMMENT ON FUNCTION @extschema@._post_rebates(integer, text[], numeric[], text[]) IS
    'Internal: posts rebate money to several accounts, one ledger entry and balance delta each (the shape of _post''s); zero amounts are skipped. Returns the entry number of each posted element by its position.';

-- Every agreement period that has a volume, a posting or a line, per
-- account: the volume now (one pass over loyalty.accrual_month, the months
-- of the period within the agreement's validity), the final rebate on it,
-- what is posted for it, and its last settlement line (open: the volume
-- of the months up to to_end's, for estimates).  A segment's
-- accounts are its members now; an account that left the segment keeps the
-- periods it already has postings or lines for.  Only periods that start by
-- to_end (open) or end by it (not open) are returned.
CREATE FUNCTION @extschema@._rebate_periods(program_id integer, to_end date, open boolean)
RETURNS TABLE (agreement_id text, account_key text, period_start date, period_end date,
               volume numeric, final numeric, accrued numeric, last_final numeric, adjustments integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- one grouped pass over the volumes, the postings and the lines (no join
-- between them: each row of every source is a fact of its period)
WITH ag AS (
    SELECT g.agreement_id, g.account_key, g.cooperation_model, g.region, g.industry, g.schedule, g.period,
           g.product_lines, pg_catalog.date_trunc('month', g.valid_from)::date AS first_month, g.valid_until,
           CASE g.period WHEN 'month' THEN interval '1 month' WHEN 'quarter' THEN interval '3 months'
                         ELSE interval '1 year' END AS step
    FROM @extschema@.rebate_agreement g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1),
known AS (
    SELECT r.agreement_id, r.account_key, r.period_start, r.amount AS accrued, NULL::numeric AS final, NULL::integer AS adj
    FROM @extschema@.rebate_posting r WHERE r.program_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT s.agreement_id, s.account_key, s.period_start, 0, s.final, s.adjustment_no
    FROM @extschema@.settlement_line s WHERE s.program_id OPERATOR(pg_catalog.=) $1),
pairs AS (
    SELECT u.agreement_id, u.account_key, pg_catalog.bool_or(u.member) AS member
    FROM (SELECT ag.agreement_id, a.account_key, true AS member
          FROM ag JOIN @extschema@.account a
            ON a.program_id OPERATOR(pg_catalog.=) $1
           AND (ag.account_key IS NULL OR a.account_key OPERATOR(pg_catalog.=) ag.account_key)
           AND (ag.cooperation_model IS NULL OR a.cooperation_model OPERATOR(pg_catalog.=) ag.cooperation_model)
           AND (ag.region IS NULL OR a.region OPERATOR(pg_catalog.=) ag.region)
           AND (ag.industry IS NULL OR a.industry OPERATOR(pg_catalog.=) ag.industry)
          UNION ALL
          SELECT k.agreement_id, k.account_key, false FROM known k) u
    GROUP BY 1, 2),
-- the spend of every product line (accrual_month) for unscoped agreements,
-- the scoped lines' buckets (rebate_line_volume) for the others
volumes AS (
    SELECT x.account_key, x.month, x.qualifying, NULL::text AS product_line
    FROM @extschema@.accrual_month x WHERE x.program_id OPERATOR(pg_catalog.=) $1
    UNION ALL
    SELECT v.account_key, v.month, v.qualifying, v.product_line
    FROM @extschema@.rebate_line_volume v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND v.product_line IS NOT NULL),
facts AS (
    SELECT ag.agreement_id, x.account_key, pg_catalog.date_trunc(ag.period, x.month)::date AS period_start,
           x.qualifying AS volume, 0 AS accrued, NULL::numeric AS final, NULL::integer AS adj, p.member, false AS known
    FROM volumes x
    JOIN pairs p ON p.account_key OPERATOR(pg_catalog.=) x.account_key
    JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) p.agreement_id
    WHERE x.month OPERATOR(pg_catalog.>=) ag.first_month
      AND CASE WHEN ag.product_lines IS NULL THEN x.product_line IS NULL
               ELSE x.product_line OPERATOR(pg_catalog.=) ANY (ag.product_lines) END
      AND (ag.valid_until IS NULL OR x.month OPERATOR(pg_catalog.<) ag.valid_until)
      -- an estimate counts the months up to to_end's (the volume so far)
      AND (NOT open OR x.month OPERATOR(pg_catalog.<=) to_end)
    UNION ALL
    SELECT k.agreement_id, k.account_key, k.period_start, 0, k.accrued, k.final, k.adj, false, true FROM known k)
SELECT t.agreement_id, t.account_key, t.period_start, t.period_end, t.volume,
       pg_catalog.round(@extschema@.rebate(ag.schedule, GREATEST(t.volume, 0)), 2),
       t.accrued, t.last_final, t.adjustments
FROM (SELECT f.agreement_id, f.account_key, f.period_start, (f.period_start OPERATOR(pg_catalog.+) ag.step)::date AS period_end,
             pg_catalog.sum(f.volume) AS volume, pg_catalog.sum(f.accrued) AS accrued,
             (pg_catalog.array_agg(f.final ORDER BY f.adj DESC) FILTER (WHERE f.adj IS NOT NULL))[1] AS last_final,
             pg_catalog.max(f.adj) AS adjustments
      FROM facts f JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) f.agreement_id
      WHERE CASE WHEN open THEN f.period_start OPERATOR(pg_catalog.<=) to_end
                 ELSE (f.period_start OPERATOR(pg_catalog.+) ag.step)::date OPERATOR(pg_catalog.<=) to_end END
      GROUP BY f.agreement_id, f.account_key, f.period_start, ag.step
      -- a member's periods with a volume, and every period already posted or settled
      HAVING pg_catalog.bool_or(f.member) OR pg_catalog.bool_or(f.known)) t
JOIN ag ON ag.agreement_id OPERATOR(pg_catalog.=) t.agreement_id
$$;
COMMENT ON FUNCTION @extschema@._rebate_periods(integer, date, boolean) IS
    'Internal: per rebate agreement, account and period that has a volume, a posting or a settlement line (and starts by to_end when open, else ends by it): the volume now, the final rebate on it, what is posted for it, and its last line''s final and number.';

-- Writes settlement lines for the given periods and posts their amounts.
CREATE FUNCTION @extschema@._write_settlement_lines(program_id integer, settled_through date,
                                         agreement_ids text[], account_keys text[], period_starts date[], period_ends date[],
                                         volumes numeric[], finals numeric[], accrueds numeric[], last_finals numeric[],
                                         adjustment_nos integer[])
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur text := (SELECT p.currency FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) $1);
    keys text[];
    total numeric;
BEGIN
    -- the date in ISO form whatever the session's DateStyle: the key is stable
    keys := ARRAY(SELECT pg_catalog.format('LOY-%s-%s-%s-%s', $1, u.g, u.a, pg_catalog.to_char(u.e, 'YYYY-MM-DD'))
                         OPERATOR(pg_catalog.||) CASE WHEN u.n OPERATOR(pg_catalog.>) 0 THEN '-ADJ-' OPERATOR(pg_catalog.||) u.n ELSE '' END
                  FROM ROWS FROM (pg_catalog.unnest(agreement_ids), pg_catalog.unnest(account_keys),
                                  pg_catalog.unnest(period_ends), pg_catalog.unnest(adjustment_nos))
                       WITH ORDINALITY AS u(g, a, e, n, ord) ORDER BY u.ord);
    WITH posted AS (
        SELECT p.ord, p.entry_no
        FROM @extschema@._post_rebates($1, account_keys,
                                       ARRAY(SELECT f OPERATOR(pg_catalog.-) c
                                             FROM ROWS FROM (pg_catalog.unnest(finals), pg_catalog.unnest(accrueds))
                                                  WITH ORDINALITY AS u(f, c, ord) ORDER BY u.ord),
                                       ARRAY(SELECT pg_catalog.format('rebate %s %s', CASE WHEN u.n OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'true-up' END, u.k)
                                             FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(adjustment_nos))
                                                  WITH ORDINALITY AS u(k, n, ord) ORDER BY u.ord)) p),
    lines AS (
        SELECT u.*, p.entry_no
        FROM ROWS FROM (pg_catalog.unnest(agreement_ids), pg_catalog.unnest(account_keys), pg_catalog.unnest(period_starts),
                        pg_catalog.unnest(period_ends), pg_catalog.unnest(volumes), pg_catalog.unnest(finals),
                        pg_catalog.unnest(accrueds), pg_catalog.unnest(last_finals), pg_catalog.unnest(adjustment_nos),
                        pg_catalog.unnest(keys))
             WITH ORDINALITY AS u(g, a, s, e, v, f, c, lf, n, k, ord)
        LEFT JOIN posted p ON p.ord OPERATOR(pg_catalog.=) u.ord),
    postings AS (
        INSERT INTO @extschema@.rebate_posting (program_id, account_key, agreement_id, period_end, entry_no,
                                                period_start, kind, volume, amount)
        SELECT $1, l.a, l.g, l.e, l.entry_no, l.s, CASE WHEN l.n OPERATOR(pg_catalog.>) 0 THEN 'adjustment' ELSE 'trueup' END,
               l.v, l.f OPERATOR(pg_catalog.-) l.c
        FROM lines l WHERE l.entry_no IS NOT NULL),
    written AS (
        INSERT INTO @extschema@.settlement_line AS x (program_id, account_key, agreement_id, period_end, adjustment_no,
                                                      document_key, period_start, volume, final, accrued, amount,
                                                      credit_note, currency, settled_through, entry_no)
        SELECT $1, l.a, l.g, l.e, l.n, l.k, l.s, l.v, l.f, l.c, l.f OPERATOR(pg_catalog.-) l.c,
               l.f OPERATOR(pg_catalog.-) coalesce(l.lf, 0), cur, settled_through, l.entry_no
        FROM lines l
        RETURNING x.amount)
    SELECT coalesce(pg_catalog.sum(w.amount), 0) INTO total FROM written w;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._write_settlement_lines(integer, date, text[], text[], date[], date[], numeric[], numeric[], numeric[], numeric[], integer[]) IS
    'Internal: writes settlement lines (and their rebate postings and ledger entries) for the given periods; returns the money posted.';

-- Settlement's rebates at period_end: every agreement period that ends
-- by period_end gets its settlement line when it has none yet (final on
-- the volume now; the true-up final - accrued posted), and an adjustment
-- line when its final rebate on the volume now differs from its last
-- line's (invoices or credit notes dated in it that arrived since).  A
-- period with no volume and nothing posted needs no line.  Serialised with
-- accrue_rebates per program.  Idempotent: a second call finds every
-- period settled and every final unchanged.  (period_start is not needed:
-- every period ending by period_end is settled, earlier ones included.)
CREATE FUNCTION @extschema@._settle_rebates(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), $1);
    -- a new statement, a new snapshot: after the lock
    SELECT pg_catalog.array_agg(x.agreement_id ORDER BY x.account_key, x.agreement_id, x.period_end) AS g,
           pg_catalog.array_agg(x.account_key ORDER BY x.account_key, x.agreement_id, x.period_end) AS a,
           pg_catalog.array_agg(x.period_start ORDER BY x.account_key, x.agreement_id, x.period_end) AS s,
           pg_catalog.array_agg(x.period_end ORDER BY x.account_key, x.agreement_id, x.period_end) AS e,
           pg_catalog.array_agg(x.volume ORDER BY x.account_key, x.agreement_id, x.period_end) AS v,
           pg_catalog.array_agg(x.final ORDER BY x.account_key, x.agreement_id, x.period_end) AS f,
           pg_catalog.array_agg(x.accrued ORDER BY x.account_key, x.agreement_id, x.period_end) AS c,
           pg_catalog.array_agg(x.last_final ORDER BY x.account_key, x.agreement_id, x.period_end) AS lf,
           pg_catalog.array_agg(coalesce(x.adjustments OPERATOR(pg_catalog.+) 1, 0) ORDER BY x.account_key, x.agreement_id, x.period_end) AS n
    INTO r
    FROM @extschema@._rebate_periods($1, $3, false) x
    WHERE CASE WHEN x.adjustments IS NULL THEN x.final OPERATOR(pg_catalog.<>) 0 OR x.accrued OPERATOR(pg_catalog.<>) 0
               ELSE x.final OPERATOR(pg_catalog.<>) x.last_final END;
    IF r.g IS NULL THEN
        RETURN 0;
    END IF;
    RETURN @extschema@._write_settlement_lines($1, $3, r.g, r.a, r.s, r.e, r.v, r.f, r.c, r.lf, r.n);
END
$$;
COMMENT ON FUNCTION @extschema@._settle_rebates(integer, date, date) IS
    'Internal: settlement''s rebates at period_end (exclusive): the settlement line and true-up (final - accrued) of every agreement period ending by then that has none, and an adjustment line for every settled period whose volume changed since; returns the money posted (the sum of the lines'' amounts).';

-- The estimate while periods run: per agreement, covered account and open
-- period (started by as_of, not settled), the rebate on the volume so far
-- minus what is already posted for the period.
CREATE FUNCTION @extschema@.accrue_rebates(program text, as_of date DEFAULT NULL) RETURNS numeric
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    day date;
    keys text[];
    g text[]; a text[]; s date[]; e date[]; v numeric[]; d numeric[];
    total numeric;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF as_of IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'as_of must be a finite date, not %', as_of
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'as_of is the day the estimate is made for: the periods open on it are estimated.',
                  HINT = 'Leave it out for today in the program''s time zone.';
    END IF;
    day := coalesce(as_of, (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date
                            FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
    SELECT pg_catalog.array_agg(x.agreement_id ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.account_key ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.period_start ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.period_end ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.volume ORDER BY x.account_key, x.agreement_id, x.period_end),
           pg_catalog.array_agg(x.final OPERATOR(pg_catalog.-) x.accrued ORDER BY x.account_key, x.agreement_id, x.period_end)
    INTO g, a, s, e, v, d
    FROM @extschema@._rebate_periods(pid, day, true) x
    WHERE x.adjustments IS NULL AND x.final OPERATOR(pg_catalog.<>) x.accrued;
    IF g IS NULL THEN
        RETURN 0;
    END IF;
    keys := ARRAY(SELECT pg_catalog.format('rebate estimate %s %s %s..%s', u.g, u.a, u.s, u.e)
                  FROM ROWS FROM (pg_catalog.unnest(g), pg_catalog.unnest(a), pg_catalog.unnest(s), pg_catalog.unnest(e))
                       WITH ORDINALITY AS u(g, a, s, e, ord) ORDER BY u.ord);
    WITH posted AS (SELECT p.ord, p.entry_no FROM @extschema@._post_rebates(pid, a, d, keys) p),
    rows AS (
        INSERT INTO @extschema@.rebate_posting AS r (program_id, account_key, agreement_id, period_end, entry_no,
                                                     period_start, kind, volume, amount)
        SELECT pid, u.a, u.g, u.e, p.entry_no, u.s, 'estimate', u.v, u.d
        FROM ROWS FROM (pg_catalog.unnest(g), pg_catalog.unnest(a), pg_catalog.unnest(s), pg_catalog.unnest(e),
                        pg_catalog.unnest(v), pg_catalog.unnest(d)) WITH ORDINALITY AS u(g, a, s, e, v, d, ord)
        JOIN posted p ON p.ord OPERATOR(pg_catalog.=) u.ord
        RETURNING r.amount)
    SELECT coalesce(pg_catalog.sum(x.amount), 0) INTO total FROM rows x;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@.accrue_rebates(text, date) IS
    'Posts the rebate estimate of every open rebate period (started by as_of, default today in the program''s time zone, and not settled yet): per agreement and covered account, the rebate on the period''s volume so far (documents of the months up to as_of''s) minus what is already posted for it (kind rebate, reason naming agreement and period). Returns the money posted. Idempotent: a second call posts nothing until volumes change. Schedule it with pg_cron, like loyalty.fold().';
GRANT EXECUTE ON FUNCTION @extschema@.accrue_rebates(text, date) TO loyalty_operator, loyalty_admin;

-- verify()'s check of the product-line buckets: from the first month a
-- scoped agreement counts on, an account's buckets of a month add up to its
-- accrual_month qualifying spend and rows (both written by the same trigger
-- statement; a restatement by enroll() or backfill() that reaches those
-- months is not split by product line, and shows here).
CREATE FUNCTION @extschema@._verify_rebate_lines(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
WITH since AS (
    SELECT pg_catalog.min(pg_catalog.date_trunc('month', g.valid_from))::date AS month
    FROM @extschema@.rebate_agreement g
    WHERE g.program_id OPERATOR(pg_catalog.=) $1 AND g.product_lines IS NOT NULL),
accrued AS (
    SELECT m.account_key, m.month, pg_catalog.sum(m.qualifying) AS qualifying, pg_catalog.sum(m.source_rows) AS n
    FROM @extschema@.accrual_month m, since
    WHERE m.program_id OPERATOR(pg_catalog.=) $1 AND m.month OPERATOR(pg_catalog.>=) since.month
      AND ($2 IS NULL OR m.account_key OPERATOR(pg_catalog.=) $2)
    GROUP BY 1, 2),
split AS (
    SELECT v.account_key, v.month, pg_catalog.sum(v.qualifying) AS qualifying, pg_catalog.sum(v.source_rows) AS n
    FROM @extschema@.rebate_line_volume v
    WHERE v.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR v.account_key OPERATOR(pg_catalog.=) $2)
    GROUP BY 1, 2)
SELECT coalesce(a.account_key, s.account_key), coalesce(a.month, s.month), NULL::integer, v.item, v.e, v.a
FROM accrued a
     FULL JOIN (SELECT s.* FROM split s, since WHERE s.month OPERATOR(pg_catalog.>=) since.month) s
       ON s.account_key OPERATOR(pg_catalog.=) a.account_key AND s.month OPERATOR(pg_catalog.=) a.month,
     LATERAL (VALUES ('rebate_line_qualifying', coalesce(a.qualifying, 0), coalesce(s.qualifying, 0)),
                     ('rebate_line_rows', coalesce(a.n, 0)::numeric, coalesce(s.n, 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
$$;
COMMENT ON FUNCTION @extschema@._verify_rebate_lines(integer, text) IS
    'Internal: verify''s check of loyalty.rebate_line_volume: from the first month an agreement scoped to product lines counts on, the product-line buckets of each account and month add up to its accrual_month qualifying spend and source rows.';
REVOKE ALL ON FUNCTION @extschema@._verify_rebate_lines(integer, text) FROM PUBLIC;

-- Agreements are configured by admins.  Every argument is checked here,
-- before anything is written, and each error names its parameter.
CREATE FUNCTION @extschema@.create_rebate_agreement(
    program           text,
    agreement_id      text,
    schedule          @extschema@.rebate_schedule,
    account_key       text DEFAULT NULL,
    cooperation_model text DEFAULT NULL,
    region            text DEFAULT NULL,
    industry          text DEFAULT NULL,
    product_lines     text[] DEFAULT NULL,
    period            text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    prog @extschema@.program;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT * INTO prog FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF prog.program_id IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    pid := prog.program_id;
    IF agreement_id IS NULL OR NOT agreement_id OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.]{1,40}$' THEN
        RAISE EXCEPTION 'invalid agreement_id: %', coalesce(pg_catalog.quote_literal(agreement_id), 'NULL')
            USING ERRCODE = CASE WHEN agreement_id IS NULL THEN 'null_value_not_allowed' ELSE 'invalid_parameter_value' END,
                  DETAIL = 'agreement_id is the agreement''s code: 1 to 40 letters, digits, _ or . (it is part of the document keys of its settlement lines).',
                  HINT = 'For example agreement_id => ''DIST2026''.';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.rebate_agreement g
               WHERE g.program_id OPERATOR(pg_catalog.=) pid AND g.agreement_id OPERATOR(pg_catalog.=) create_rebate_agreement.agreement_id) THEN
        RAISE EXCEPTION 'agreement_id "%" is already used in program "%"', agreement_id, program
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Agreement codes are unique within a program, and never reused: settlement lines carry them.',
                  HINT = 'Choose another agreement_id, or end the existing one with loyalty.end_rebate_agreement().';
    END IF;
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'schedule is the rebate brackets applied to each period''s volume.',
                  HINT = 'For example schedule => ''retro: 0:0%, 100000:2%, 500000:3.5%''.';
    END IF;
    IF account_key IS NOT NULL AND (cooperation_model IS NOT NULL OR region IS NOT NULL OR industry IS NOT NULL) THEN
        RAISE EXCEPTION 'account_key and a segment cannot be given together'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An agreement covers one account (account_key) or every account of a segment (cooperation_model, region, industry).',
                  HINT = 'Give account_key alone, or the segment attributes alone.';
    END IF;
    IF account_key IS NOT NULL AND NOT EXISTS (
            SELECT FROM @extschema@.account a
            WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) create_rebate_agreement.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF cooperation_model IS NOT NULL AND NOT cooperation_model OPERATOR(pg_catalog.=) ANY (ARRAY['direct', 'distributor', 'integrator', 'reseller']) THEN
        RAISE EXCEPTION 'invalid value for cooperation_model: %', pg_catalog.quote_literal(cooperation_model)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'cooperation_model must be one of direct, distributor, integrator, reseller.',
                  HINT = 'For example cooperation_model => ''distributor''; leave it out to match any.';
    END IF;
    IF region OPERATOR(pg_catalog.=) '' OR industry OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION '% must not be empty', CASE WHEN region OPERATOR(pg_catalog.=) '' THEN 'region' ELSE 'industry' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An empty segment attribute matches no account.',
                  HINT = 'Leave it out to match any value.';
    END IF;
    IF period IS NOT NULL AND NOT period OPERATOR(pg_catalog.=) ANY (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'invalid value for period: %', pg_catalog.quote_literal(period)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period must be one of month, quarter, year (calendar periods).',
                  HINT = 'For example period => ''quarter''; leave it out for the program''s settlement period.';
    END IF;
    IF valid_from IN ('infinity', '-infinity') OR valid_until IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION '% must be a finite date', CASE WHEN valid_from IN ('infinity', '-infinity') THEN 'valid_from' ELSE 'valid_until' END
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day the agreement applies to, valid_until the first day it no longer does.',
                  HINT = 'Leave valid_from out for today, valid_until for an open-ended agreement.';
    END IF;
    valid_from := coalesce(valid_from, (pg_catalog.now() AT TIME ZONE prog.time_zone)::date);
    IF valid_until IS NOT NULL AND valid_until OPERATOR(pg_catalog.<=) valid_from THEN
        RAISE EXCEPTION 'valid_until (%) must be after valid_from (%)', valid_until, valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Give a later valid_until, or leave it out for an open-ended agreement.';
    END IF;
    IF product_lines IS NOT NULL THEN
        product_lines := ARRAY(SELECT DISTINCT l FROM pg_catalog.unnest(product_lines) l ORDER BY 1);
        IF pg_catalog.cardinality(product_lines) OPERATOR(pg_catalog.=) 0
           OR EXISTS (SELECT FROM pg_catalog.unnest(product_lines) l WHERE l IS NULL OR l OPERATOR(pg_catalog.=) '') THEN
            RAISE EXCEPTION 'product_lines must list product lines, none NULL or empty'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'product_lines are the product lines (as the attachments map them) whose qualifying spend counts.',
                      HINT = 'For example product_lines => ''{networking,storage}''; leave it out to count all spend.';
        END IF;
        IF NOT EXISTS (SELECT FROM @extschema@.attachment x
                       WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.detached_at IS NULL
                         AND (x.product IS NOT NULL OR x.product_line_expr IS NOT NULL)) THEN
            RAISE EXCEPTION 'product_lines cannot be given: program "%" maps no product line', program
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'A product-line scope needs an attachment that maps each row''s product line.',
                      HINT = 'Attach the ERP table with product_line_column (or product => ...), or leave product_lines out.';
        END IF;
        -- The trigger splits the spend by these lines from now on: the
        -- documents the agreement counts must all be accrued after it.
        -- (Serialised with other agreements of the program.)
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('loyalty.rebates'), pid);
        IF EXISTS (SELECT FROM @extschema@.accrual_month m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid
                     AND m.month OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('month', valid_from)::date) THEN
            RAISE EXCEPTION 'valid_from % is too early for product_lines: program "%" has documents dated in % or later',
                            valid_from, program, pg_catalog.to_char(valid_from, 'YYYY-MM')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The spend of a product line is recorded as documents are accrued, from the first agreement scoping it on; documents accrued before cannot be split by product line.',
                      HINT = 'Give a valid_from whose month has no accrued documents yet (usually the first day of the next month).';
        END IF;
    END IF;
    INSERT INTO @extschema@.rebate_agreement (program_id, agreement_id, account_key, cooperation_model, region, industry,
                                              schedule, product_lines, period, valid_from, valid_until)
    VALUES (pid, agreement_id, account_key, cooperation_model, region, industry,
            schedule, product_lines, coalesce(period, prog.settlement_period), valid_from, valid_until);
END
$$;
COMMENT ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date) IS
    'Creates a volume rebate agreement: a rebate schedule over each period''s qualifying spend, of every product line or of product_lines only (valid_from must then be in a month with no accrued documents yet) (period: month, quarter or year; default the program''s settlement period), for one account (account_key) or every account of a segment (cooperation_model, region, industry; none: every account), valid from valid_from (default today) until valid_until (exclusive; default open-ended). Estimates are posted by loyalty.accrue_rebates, true-ups at settlement.';

CREATE FUNCTION @extschema@.end_rebate_agreement(program text, agreement_id text, valid_until date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    g @extschema@.rebate_agreement;
    settled date;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF agreement_id IS NULL THEN
        RAISE EXCEPTION 'agreement_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'agreement_id is the code the agreement was created with.',
                  HINT = 'List them with SELECT agreement_id FROM loyalty.rebate_agreement.';
    END IF;
    SELECT * INTO g FROM @extschema@.rebate_agreement x
    WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.agreement_id OPERATOR(pg_catalog.=) end_rebate_agreement.agreement_id
    FOR UPDATE;
    IF g.agreement_id IS NULL THEN
        RAISE EXCEPTION 'rebate agreement "%" of program "%" does not exist', agreement_id, program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'agreement_id names no agreement of the program (codes are case-sensitive).',
                  HINT = 'List them with SELECT agreement_id FROM loyalty.rebate_agreement.';
    END IF;
    IF valid_until IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'valid_until must be a finite date'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Leave it out to end the agreement with the current period.';
    END IF;
    -- by default the agreement ends with its current period
    valid_until := coalesce(valid_until,
                            (SELECT (pg_catalog.date_trunc(g.period, (pg_catalog.now() AT TIME ZONE p.time_zone)::date::timestamp)
                                     OPERATOR(pg_catalog.+) CASE g.period WHEN 'month' THEN interval '1 month'
                                                                          WHEN 'quarter' THEN interval '3 months'
                                                                          ELSE interval '1 year' END)::date
                             FROM @extschema@.program p WHERE p.program_id OPERATOR(pg_catalog.=) pid));
    IF g.valid_until IS NOT NULL AND g.valid_until OPERATOR(pg_catalog.<=) valid_until THEN
        RAISE EXCEPTION 'rebate agreement "%" already ends on %', agreement_id, g.valid_until
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'An agreement can be ended earlier, not extended.',
                  HINT = 'Create a new agreement for the time after it.';
    END IF;
    IF valid_until OPERATOR(pg_catalog.<=) g.valid_from THEN
        RAISE EXCEPTION 'valid_until (%) must be after the agreement''s valid_from (%)', valid_until, g.valid_from
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_until is the first day the agreement no longer applies to.',
                  HINT = 'Give a later date.';
    END IF;
    SELECT pg_catalog.max(s.period_end) INTO settled FROM @extschema@.settlement_line s
    WHERE s.program_id OPERATOR(pg_catalog.=) pid AND s.agreement_id OPERATOR(pg_catalog.=) g.agreement_id;
    IF settled IS NOT NULL AND valid_until OPERATOR(pg_catalog.<) settled THEN
        RAISE EXCEPTION 'rebate agreement "%" is settled up to %', agreement_id, settled
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('valid_until %s would change periods already settled.', valid_until),
                  HINT = pg_catalog.format('Give valid_until => ''%s'' or later.', settled);
    END IF;
    UPDATE @extschema@.rebate_agreement x SET valid_until = end_rebate_agreement.valid_until, ended_at = pg_catalog.now()
    WHERE x.program_id OPERATOR(pg_catalog.=) pid AND x.agreement_id OPERATOR(pg_catalog.=) g.agreement_id;
END
$$;
COMMENT ON FUNCTION @extschema@.end_rebate_agreement(text, text, date) IS
    'Ends a rebate agreement: documents dated from valid_until on (default: the end of its current period) no longer count. An agreement can be ended earlier, never extended, and not before a period it was settled for.';

REVOKE ALL ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date),
                      @extschema@.end_rebate_agreement(text, text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.create_rebate_agreement(text, text, @extschema@.rebate_schedule, text, text, text, text, text[], text, date, date),
                          @extschema@.end_rebate_agreement(text, text, date) TO loyalty_admin;

-- Rewards: the catalogue, redemption and its cancellation.
--
-- A redemption is a debit and follows the debit protocol (45_postings.sql):
-- it locks the account (loyalty._lock_for_debit), waits for transactions
-- still posting to the account (a credit note of the ERP in flight), then,
-- in later statements, reads the balance, the stock and the limits, and
-- posts.  Locks are always taken in one order: the account, then the
-- reward.  A credit note that starts after the check may still take the
-- balance below zero: that is the invoice's reversal, not an overdraft of
-- the redemption; a negative balance refuses every redemption until
-- earnings cover it.

-- Registered here rather than with the other tables (20_schema.sql), so that
-- a fresh install lists it where the upgrade from 1.0, which re-creates the
-- table, registers it again.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.redemption', '');

CREATE FUNCTION @extschema@._await_postings(program_id integer, account_key text) RETURNS integer
AS 'MODULE_PATHNAME', 'loyalty_await_postings' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._await_postings(integer, text) IS
'Internal: waits for the other transactions in progress that appended balance deltas of the account (an ERP credit note in flight), so that a debit reads a balance nobody is still changing; returns how many it waited for.';

-- Writes one reward of the catalogue (insert or replace).
CREATE FUNCTION @extschema@.set_reward(
    program           text,
    reward_id         text,
    name              text,
    points_price      bigint,
    kind              text DEFAULT 'goods',
    min_tier          text DEFAULT NULL,
    stock             integer DEFAULT NULL,
    per_account_limit integer DEFAULT NULL,
    period_limit      integer DEFAULT NULL,
    limit_period      text DEFAULT NULL,
    valid_from        date DEFAULT NULL,
    valid_until       date DEFAULT NULL,
    description       text DEFAULT NULL,
    active            boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    lad @extschema@.tier_ladder;
    kinds text[] := ARRAY['discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                          'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other'];
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, p.ladder INTO pid, lad FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'Create it with loyalty.create_program(), or list programs with SELECT name FROM loyalty.program.';
    END IF;
    IF reward_id IS NULL OR reward_id = '' OR reward_id <> btrim(reward_id) OR length(reward_id) > 63 THEN
        RAISE EXCEPTION 'reward_id must be a code of 1 to 63 characters without surrounding spaces'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('reward_id %s was given.', coalesce(pg_catalog.quote_literal(reward_id), 'NULL')),
                  HINT = 'For example reward_id => ''TRAINING-SEAT''.';
    END IF;
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'name of reward "%" must not be NULL or empty', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'name is what the partner sees in the catalogue.',
                  HINT = 'For example name => ''Training seat, 2 days''.';
    END IF;
    IF points_price IS NULL OR points_price <= 0 OR points_price > 1000000000000 THEN
        RAISE EXCEPTION 'points_price of reward "%" must be between 1 and 1000000000000', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points_price %s was given.', coalesce(points_price::text, 'NULL')),
                  HINT = 'Give the points one unit costs.';
    END IF;
    IF kind IS NULL OR kind <> ALL (kinds) THEN
        RAISE EXCEPTION 'kind of reward "%" must be one of %', reward_id, pg_catalog.array_to_string(kinds, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('kind %s was given.', coalesce(pg_catalog.quote_literal(kind), 'NULL')),
                  HINT = 'Use other for a reward that fits none of them.';
    END IF;
    IF min_tier IS NOT NULL AND (lad IS NULL OR NOT EXISTS (SELECT FROM @extschema@.tiers(lad) t WHERE t.name = min_tier)) THEN
        RAISE EXCEPTION 'min_tier "%" is not a tier of program "%"', min_tier, program
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN lad IS NULL THEN 'The program has no tier ladder.'
                                ELSE pg_catalog.format('Its tiers are %s.', lad) END,
                  HINT = 'Give a tier name of the program''s ladder (exact case), or NULL for every tier.';
    END IF;
    IF stock < 0 OR per_account_limit <= 0 OR period_limit <= 0 THEN
        RAISE EXCEPTION 'stock of reward "%" must not be negative, per_account_limit and period_limit must be positive', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('stock %s, per_account_limit %s, period_limit %s were given.',
                                             coalesce(stock::text, 'NULL'), coalesce(per_account_limit::text, 'NULL'),
                                             coalesce(period_limit::text, 'NULL')),
                  HINT = 'NULL means unlimited.';
    END IF;
    IF (period_limit IS NULL) <> (limit_period IS NULL) OR limit_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'period_limit and limit_period of reward "%" go together; limit_period is month, quarter or year', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('period_limit %s, limit_period %s were given.', coalesce(period_limit::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(limit_period), 'NULL')),
                  HINT = 'For example period_limit => 2, limit_period => ''quarter''.';
    END IF;
    IF NOT pg_catalog.isfinite(valid_from) OR NOT pg_catalog.isfinite(valid_until) OR valid_until <= valid_from THEN
        RAISE EXCEPTION 'valid_from and valid_until of reward "%" must be finite dates, valid_from before valid_until', reward_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('valid_from %s, valid_until %s were given.', coalesce(valid_from::text, 'NULL'),
                                             coalesce(valid_until::text, 'NULL')),
                  HINT = 'NULL means no start (valid_from) or no end (valid_until); valid_until is the first day it is no longer offered.';
    END IF;
    IF active IS NULL THEN
        RAISE EXCEPTION 'active of reward "%" must not be NULL', reward_id
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'active says whether the reward can be redeemed.',
                  HINT = 'Give true or false.';
    END IF;
    INSERT INTO @extschema@.reward AS r (program_id, reward_id, name, points_price, min_tier, stock, per_account_limit,
                                         active, kind, description, valid_from, valid_until, period_limit, limit_period)
    VALUES (pid, reward_id, name, points_price, min_tier, stock, per_account_limit,
            active, kind, description, valid_from, valid_until, period_limit, limit_period)
    ON CONFLICT ON CONSTRAINT reward_pkey DO UPDATE
    SET name = excluded.name, points_price = excluded.points_price, min_tier = excluded.min_tier,
        stock = excluded.stock, per_account_limit = excluded.per_account_limit, active = excluded.active,
        kind = excluded.kind, description = excluded.description, valid_from = excluded.valid_from,
        valid_until = excluded.valid_until, period_limit = excluded.period_limit, limit_period = excluded.limit_period;
END
$$;
COMMENT ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean) IS
'Adds a reward to a program''s catalogue, or replaces it: points price, kind, minimum tier, stock, per-account and per-period limits, validity window. Redemptions already made keep their price; deactivate (active => false) instead of deleting.';

-- A redemption: one short transaction.  Written in C (src/redeem.c): the
-- checks and the debit protocol above, in two statements for a reward
-- without stock, tier or limits, through plans each backend prepares once.
CREATE FUNCTION @extschema@.redeem(
    program     text,
    account_key text,
    reward      text,
    quantity    integer DEFAULT 1,
    member      text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'loyalty_redeem'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Its plans are kept, and every statement looks up one account by its key:
-- planned while balance_delta was empty (a new program, or just after a fold
-- and the autovacuum that follows), a kept plan would scan the whole table
-- for every later redemption as it grows.  Planning with sequential scans
-- off, whenever the plans are made or remade, keeps the index.
SET enable_seqscan = off;
COMMENT ON FUNCTION @extschema@.redeem(text, text, text, integer, text) IS
'Redeems quantity units of a reward for an account (or for one of its members, from the points they earned): checks the catalogue (active, validity window, minimum tier, stock, per-account and per-period limits) and the balance after locking the account, posts a ledger entry of kind redeem and returns the redemption''s id. Never overdraws: an insufficient balance fails with SQLSTATE LY001, a reward out of stock, out of its window or over a limit with LY002, and nothing is written.';

CREATE FUNCTION @extschema@.cancel_redemption(redemption_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d @extschema@.redemption;
    entry bigint;
BEGIN
    IF redemption_id IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'redemption_id is what loyalty.redeem() returned.',
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    SELECT * INTO d FROM @extschema@.redemption x WHERE x.redemption_id = redemption_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'redemption_id names no redemption'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No redemption has id %s; redemption_id is what loyalty.redeem() returned.', redemption_id),
                  HINT = 'Find it in loyalty.redemption.';
    END IF;
    -- the same lock order as redeem: the account, then the reward
    PERFORM @extschema@._lock_for_debit(d.program_id, d.account_key);
    SELECT * INTO d FROM @extschema@.redemption x
    WHERE x.program_id = d.program_id AND x.account_key = d.account_key AND x.redemption_no = d.redemption_no;
    IF d.status = 'cancelled' THEN
        RAISE EXCEPTION 'the redemption is already cancelled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Redemption %s was cancelled at %s; its points were given back then.', redemption_id, d.cancelled_at),
                  HINT = 'Nothing to do.';
    END IF;
    UPDATE @extschema@.reward x SET stock = x.stock + d.quantity
    WHERE x.program_id = d.program_id AND x.reward_id = d.reward_id AND x.stock IS NOT NULL;
    entry := @extschema@._post_member(d.program_id, d.account_key, 'redeem', d.points,
                                      pg_catalog.format('cancel redemption of %s x %s', d.quantity, d.reward_id),
                                      d.member_id, corrects_xid => d.posted_xid, corrects => d.entry_no);
    UPDATE @extschema@.redemption x
    SET status = 'cancelled', cancelled_at = pg_catalog.now(), cancel_xid = pg_catalog.pg_current_xact_id(), cancel_entry_no = entry
    WHERE x.program_id = d.program_id AND x.account_key = d.account_key AND x.redemption_no = d.redemption_no;
END
$$;
COMMENT ON FUNCTION @extschema@.cancel_redemption(uuid) IS
'Cancels a redemption: gives its points back with a ledger entry of kind redeem pointing at the original (corrects_xid, corrects), and its units back to the stock. A redemption is cancelled once.';

REVOKE ALL ON FUNCTION @extschema@._await_postings(integer, text),
                      @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean),
                      @extschema@.redeem(text, text, text, integer, text),
                      @extschema@.cancel_redemption(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_reward(text, text, text, bigint, text, text, integer, integer, integer, text, date, date, text, boolean)
TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.redeem(text, text, text, integer, text),
                          @extschema@.cancel_redemption(uuid) TO loyalty_operator;

-- Non-purchase actions: training completed, certification, referral that
-- signs, lead registered or won, survey answered, product review, startup
-- onboarded.  Versioned rules per program and action (points per action,
-- cap per period, approval needed or not), awards keyed by the account and
-- its own counter, idempotent by the CRM's reference.  Only approved awards
-- post points and count for tier qualification (_action_counts).

CREATE TABLE @extschema@.action_rule (
    program_id     integer NOT NULL REFERENCES @extschema@.program,
    action         text NOT NULL CHECK (action OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'),
    valid_from     date NOT NULL CHECK (valid_from OPERATOR(pg_catalog.<>) 'infinity'::date),
    points         bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0 AND points OPERATOR(pg_catalog.<=) 1000000000),
    needs_approval boolean NOT NULL DEFAULT false,
    cap_points     bigint CHECK (cap_points OPERATOR(pg_catalog.>) 0),
    cap_period     text CHECK (cap_period IN ('month', 'quarter', 'year')),
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    category       text NOT NULL DEFAULT 'other'
                   CHECK (category IN ('training', 'certification', 'referral', 'review', 'survey', 'lead', 'onboarding', 'other')),
    PRIMARY KEY (program_id, action, valid_from),
    CONSTRAINT action_rule_cap_pair_check CHECK ((cap_points IS NULL) = (cap_period IS NULL))
);
COMMENT ON TABLE @extschema@.action_rule IS 'Versioned rules for non-purchase actions (loyalty.set_action_rule): an action earns by the version in force on the day it occurred.';
COMMENT ON COLUMN @extschema@.action_rule.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.action_rule.action IS 'The action''s code, e.g. training_completed, certification, referral_signed, lead_registered, lead_won, survey_answered, product_review, startup_onboarded.';
COMMENT ON COLUMN @extschema@.action_rule.valid_from IS 'First day of occurrence this version applies to (-infinity for the first version).';
COMMENT ON COLUMN @extschema@.action_rule.points IS 'Points per action (per unit of quantity).';
COMMENT ON COLUMN @extschema@.action_rule.needs_approval IS 'When true, an award waits as pending until an operator approves it (loyalty.approve_award) and posts nothing before.';
COMMENT ON COLUMN @extschema@.action_rule.cap_points IS 'Most points one account earns from this action per cap period (pending awards count, rejected ones do not); NULL = no cap.';
COMMENT ON COLUMN @extschema@.action_rule.cap_period IS 'Calendar period of the cap, by the day the action occurred: month, quarter or year.';
COMMENT ON COLUMN @extschema@.action_rule.created_at IS 'When the version was written.';
COMMENT ON COLUMN @extschema@.action_rule.category IS 'What kind of action it is, for the KPIs (loyalty.kpi): training or certification (training completion), referral, review, survey or lead (advocacy), onboarding, or other. A property of the action: every version of an action has the same.';

CREATE TABLE @extschema@.award (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    award_no      bigint NOT NULL,
    award_id      uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    action        text NOT NULL,
    member_id     text,
    occurred_on   date NOT NULL,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    rule_from     date NOT NULL,
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>=) 0),
    capped        bigint NOT NULL DEFAULT 0 CHECK (capped OPERATOR(pg_catalog.>=) 0),
    reference     text,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    awarded_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at    timestamptz,
    decided_by    text,
    note          text,
    posted_xid    xid8,
    entry_no      bigint,
    PRIMARY KEY (program_id, account_key, award_no),
    CONSTRAINT award_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT award_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT award_entry_check CHECK ((posted_xid IS NULL) = (entry_no IS NULL)
                                        AND (entry_no IS NULL OR status OPERATOR(pg_catalog.=) 'approved'))
);
CREATE INDEX award_id_idx ON @extschema@.award (award_id);
CREATE INDEX award_action_idx ON @extschema@.award (program_id, action, occurred_on) WHERE status = 'approved';
COMMENT ON TABLE @extschema@.award IS 'Points for non-purchase actions (loyalty.award), one row per CRM event: pending, approved or rejected. An approved award with points has its ledger entry of kind award (posted_xid, entry_no).';
COMMENT ON COLUMN @extschema@.award.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.award.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.award.award_no IS 'The account''s debit number (loyalty.account.debit_no) the award took: a per-account counter.';
COMMENT ON COLUMN @extschema@.award.award_id IS 'The award''s identifier, returned by loyalty.award() and taken by approve_award() and reject_award().';
COMMENT ON COLUMN @extschema@.award.action IS 'The action (loyalty.action_rule).';
COMMENT ON COLUMN @extschema@.award.member_id IS 'The member who did it (their own points); NULL = the account.';
COMMENT ON COLUMN @extschema@.award.occurred_on IS 'When the action took place: decides the rule version and the cap period.';
COMMENT ON COLUMN @extschema@.award.quantity IS 'How many actions the event counts (e.g. seats of a training).';
COMMENT ON COLUMN @extschema@.award.rule_from IS 'valid_from of the rule version it earned by.';
COMMENT ON COLUMN @extschema@.award.points IS 'Points it earns (posted once approved), after the cap.';
COMMENT ON COLUMN @extschema@.award.capped IS 'Points the cap withheld.';
COMMENT ON COLUMN @extschema@.award.reference IS 'The CRM''s identifier of the event: the same reference for the same account awards once.';
COMMENT ON COLUMN @extschema@.award.status IS 'pending (waits for approval), approved (counts) or rejected (never counts).';
COMMENT ON COLUMN @extschema@.award.awarded_at IS 'When it was recorded.';
COMMENT ON COLUMN @extschema@.award.decided_at IS 'When it was approved or rejected (at once for actions that need no approval).';
COMMENT ON COLUMN @extschema@.award.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.award.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.award.posted_xid IS 'Transaction of its ledger entry (NULL: nothing posted).';
COMMENT ON COLUMN @extschema@.award.entry_no IS 'Entry number (within posted_xid) of its ledger entry.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.action_rule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.award', '');

CREATE FUNCTION @extschema@.set_action_rule(
    program        text,
    action         text,
    points         bigint,
    needs_approval boolean DEFAULT false,
    cap_points     bigint DEFAULT NULL,
    cap_period     text DEFAULT NULL,
    valid_from     date DEFAULT NULL,
    category       text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    since date := valid_from;
    last_award date;
    kind text := category;
BEGIN
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
    IF action IS NULL OR action !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'action must be a code of lower-case letters, digits and _ (1 to 63, starting with a letter)'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('action %s was given.', coalesce(pg_catalog.quote_literal(action), 'NULL')),
                  HINT = 'For example action => ''certification''.';
    END IF;
    IF points IS NULL OR points < 0 OR points > 1000000000 THEN
        RAISE EXCEPTION 'points of action "%" must be between 0 and 1000000000', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('points %s was given.', coalesce(points::text, 'NULL')),
                  HINT = 'Give the points one action earns.';
    END IF;
    IF needs_approval IS NULL THEN
        RAISE EXCEPTION 'needs_approval of action "%" must not be NULL', action
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'needs_approval says whether an operator must approve each award.',
                  HINT = 'Give true or false.';
    END IF;
    IF (cap_points IS NULL) <> (cap_period IS NULL) OR cap_points <= 0
       OR cap_period <> ALL (ARRAY['month', 'quarter', 'year']) THEN
        RAISE EXCEPTION 'cap_points and cap_period of action "%" go together: a positive cap per month, quarter or year', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('cap_points %s, cap_period %s were given.', coalesce(cap_points::text, 'NULL'),
                                             coalesce(pg_catalog.quote_literal(cap_period), 'NULL')),
                  HINT = 'For example cap_points => 500, cap_period => ''quarter''; both NULL for no cap.';
    END IF;
    IF since = 'infinity' THEN
        RAISE EXCEPTION 'valid_from of action "%" must not be infinity', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'valid_from is the first day of occurrence the version applies to.',
                  HINT = 'Give a date, or NULL: the first version then applies to every day, a later one from today.';
    END IF;
    IF kind <> ALL (ARRAY['training', 'certification', 'referral', 'review', 'survey', 'lead', 'onboarding', 'other']) THEN
        RAISE EXCEPTION 'category of action "%" must be training, certification, referral, review, survey, lead, onboarding or other', action
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('category %s was given.', pg_catalog.quote_literal(kind)),
                  HINT = 'For example category => ''training''; NULL keeps the action''s category (a new action''s follows its code).';
    END IF;
    -- The category belongs to the action: NULL keeps the one it has; a new
    -- action's follows its code (the codes loyalty.action_rule.action lists).
    IF kind IS NULL THEN
        SELECT r.category INTO kind FROM @extschema@.action_rule r
        WHERE r.program_id = pid AND r.action = action ORDER BY r.valid_from DESC LIMIT 1;
        kind := coalesce(kind, CASE WHEN action ~ '(^|_)(training|course|learning)' THEN 'training'
                                    WHEN action ~ '(^|_)certifi' THEN 'certification'
                                    WHEN action ~ '(^|_)referral' THEN 'referral'
                                    WHEN action ~ '(^|_)review' THEN 'review'
                                    WHEN action ~ '(^|_)survey' THEN 'survey'
                                    WHEN action ~ '(^|_)lead(_|$)' THEN 'lead'
                                    WHEN action ~ '(^|_)onboard' THEN 'onboarding'
                                    ELSE 'other' END);
    END IF;
    IF since IS NULL THEN
        since := CASE WHEN EXISTS (SELECT FROM @extschema@.action_rule r WHERE r.program_id = pid AND r.action = action)
                      THEN @extschema@._today(pid) ELSE '-infinity' END;
    END IF;
    -- What an award earned never changes: a version may start only after
    -- the last action already awarded.
    SELECT pg_catalog.max(w.occurred_on) INTO last_award FROM @extschema@.award w
    WHERE w.program_id = pid AND w.action = action;
    IF last_award >= since THEN
        RAISE EXCEPTION 'valid_from % of action "%" is not after the last action awarded (%)', since, action, last_award
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Awards already made keep the version they earned by.',
                  HINT = pg_catalog.format('Give valid_from => ''%s'' or later.', last_award + 1);
    END IF;
    INSERT INTO @extschema@.action_rule AS r (program_id, action, valid_from, points, needs_approval, cap_points, cap_period,
                                              category)
    VALUES (pid, action, since, points, needs_approval, cap_points, cap_period, kind)
    ON CONFLICT ON CONSTRAINT action_rule_pkey DO UPDATE
    SET points = excluded.points, needs_approval = excluded.needs_approval, cap_points = excluded.cap_points,
        cap_period = excluded.cap_period, created_at = excluded.created_at, category = excluded.category;
    -- every version of the action: the KPIs count its past awards by it too
    UPDATE @extschema@.action_rule r SET category = kind
    WHERE r.program_id = pid AND r.action = action AND r.category <> kind;
END
$$;
COMMENT ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text) IS
'Writes a version of a non-purchase action''s rule: points per action, approval needed or not, cap per period, and the action''s category for the KPIs (training, certification, referral, review, survey, lead, onboarding, other; it applies to every version of the action; NULL keeps it, and a new action''s follows its code, e.g. training_completed is training, lead_won lead). valid_from NULL: the first version applies to every day, a later one from today. A version can start only after the last action already awarded.';

CREATE FUNCTION @extschema@.award(
    program     text,
    account_key text,
    action      text,
    occurred_on date DEFAULT NULL,
    member      text DEFAULT NULL,
    reference   text DEFAULT NULL,
    quantity    integer DEFAULT 1)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    today date;
    day date;
    rule @extschema@.action_rule;
    prior @extschema@.award;
    no bigint;
    earned numeric;
    granted bigint;
    used bigint;
    period_start date;
    st text;
    entry bigint;
    id uuid;
BEGIN
    IF program IS NULL THEN
        RAISE EXCEPTION 'program must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'program is the name of a loyalty program, as given to loyalty.create_program().',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    SELECT p.program_id, (pg_catalog.now() AT TIME ZONE p.time_zone)::date INTO pid, today
    FROM @extschema@.program p WHERE p.name = program;
    IF pid IS NULL THEN
        RAISE EXCEPTION 'loyalty program "%" does not exist', program
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'program names no program of this database (names are case-sensitive).',
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts earn points for actions.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m WHERE m.program_id = pid
                                          AND m.account_key = account_key AND m.member_id = member) THEN
        RAISE EXCEPTION 'member "%" is not a member of account "%"', member, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'A member earns for the account they belong to.',
                  HINT = 'Add the person to loyalty.member first, or award the account (member => NULL).';
    END IF;
    day := coalesce(occurred_on, today);
    IF NOT pg_catalog.isfinite(day) OR day > today THEN
        RAISE EXCEPTION 'occurred_on % is not a day that has happened', day
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Today is %s in the program''s calendar.', today),
                  HINT = 'Give the day the action took place, or NULL for today.';
    END IF;
    IF quantity IS NULL OR quantity <= 0 THEN
        RAISE EXCEPTION 'quantity must be a positive number of actions'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('quantity %s was given.', coalesce(quantity::text, 'NULL')),
                  HINT = 'Give 1 for one action.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the CRM''s identifier of the event.',
                  HINT = 'Give the event''s identifier, or NULL when there is none.';
    END IF;
    SELECT * INTO rule FROM @extschema@.action_rule r
    WHERE r.program_id = pid AND r.action = action AND r.valid_from <= day
    ORDER BY r.valid_from DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" has no rule in program "%" on %', action, program, day
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'action is an action of loyalty.action_rule in force on the day it occurred.',
                  HINT = 'Define it with loyalty.set_action_rule().';
    END IF;

    -- One award of the account at a time: the cap and the reference are
    -- checked on everything committed before.
    no := @extschema@._lock_for_debit(pid, account_key);
    IF reference IS NOT NULL THEN
        SELECT * INTO prior FROM @extschema@.award w
        WHERE w.program_id = pid AND w.account_key = account_key AND w.reference = reference;
        IF FOUND THEN
            IF (prior.action, prior.member_id, prior.occurred_on, prior.quantity)
               IS DISTINCT FROM (action, member, day, quantity) THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already awarded for another event', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It was awarded for %s x %s on %s%s.', prior.quantity, prior.action,
                                                     prior.occurred_on, coalesce(' by member ' || prior.member_id, '')),
                          HINT = 'A reference names one CRM event; give the new event its own reference.';
            END IF;
            RETURN prior.award_id;      -- the same event again: awarded once
        END IF;
    END IF;

    earned := rule.points::numeric * quantity;
    granted := LEAST(earned, 9223372036854775807);
    IF rule.cap_points IS NOT NULL THEN
        period_start := pg_catalog.date_trunc(rule.cap_period, day::timestamp)::date;
        SELECT coalesce(pg_catalog.sum(w.points), 0) INTO used FROM @extschema@.award w
        WHERE w.program_id = pid AND w.account_key = account_key AND w.action = action
          AND w.status <> 'rejected' AND w.occurred_on >= period_start
          AND w.occurred_on < (period_start + CASE rule.cap_period WHEN 'month' THEN interval '1 month'
                                                                   WHEN 'quarter' THEN interval '3 months'
                                                                   ELSE interval '1 year' END)::date;
        granted := GREATEST(0, LEAST(granted, rule.cap_points - used));
    END IF;
    st := CASE WHEN rule.needs_approval THEN 'pending' ELSE 'approved' END;
    IF st = 'approved' THEN
        entry := @extschema@._post_member(pid, account_key, 'award', granted,
                                          pg_catalog.format('%s x %s', quantity, action) || coalesce(' ref ' || reference, ''),
                                          member);
    END IF;
    INSERT INTO @extschema@.award AS w (program_id, account_key, award_no, action, member_id, occurred_on, quantity, rule_from,
                                        points, capped, reference, status, decided_at, posted_xid, entry_no)
    VALUES (pid, account_key, no, action, member, day, quantity, rule.valid_from, granted,
            LEAST(earned - granted, 9223372036854775807), reference, st,
            CASE WHEN st = 'approved' THEN pg_catalog.now() END,
            CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry)
    RETURNING w.award_id INTO id;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer) IS
'Awards points for a non-purchase action to an account (or one of its members) by the rule version in force on occurred_on (default today), capped per period; returns the award''s id. Idempotent by reference: the same CRM event again returns the first award and posts nothing. An action that needs approval waits as pending and posts nothing until loyalty.approve_award().';

-- Approval and rejection: one decision per award.
CREATE FUNCTION @extschema@._decide_award(award_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    w @extschema@.award;
    entry bigint;
BEGIN
    SELECT * INTO w FROM @extschema@.award x WHERE x.award_id = award_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @extschema@._lock_for_debit(w.program_id, w.account_key);
    SELECT * INTO w FROM @extschema@.award x
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
    IF w.status <> 'pending' THEN
        RETURN;
    END IF;
    IF approve THEN
        entry := @extschema@._post_member(w.program_id, w.account_key, 'award', w.points,
                                          pg_catalog.format('%s x %s', w.quantity, w.action) || coalesce(' ref ' || w.reference, ''),
                                          w.member_id);
    END IF;
    UPDATE @extschema@.award x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_award.note,
        posted_xid = CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = entry
    WHERE x.program_id = w.program_id AND x.account_key = w.account_key AND x.award_no = w.award_no;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_award(uuid, boolean, text) IS
'Internal: approves (posts the points) or rejects a pending award, under the account''s lock; does nothing to an award that is not pending.';

CREATE FUNCTION @extschema@.approve_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_award(award_id, true, note);
    SELECT w.status INTO st FROM @extschema@.award w WHERE w.award_id = award_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    ELSIF st = 'rejected' THEN
        RAISE EXCEPTION 'the award was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was rejected; a decision on an award is final.', award_id),
                  HINT = 'Record the event again with a new reference if it is genuine.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.approve_award(uuid, text) IS
'Approves a pending award: posts its points (ledger kind award) and makes it count for tier qualification. Approving an approved award again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_award(award_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF award_id IS NULL THEN
        RAISE EXCEPTION 'award_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'award_id is what loyalty.award() returned.',
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_award(award_id, false, note);
    SELECT w.status INTO st FROM @extschema@.award w WHERE w.award_id = award_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'award_id names no award'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No award has id %s; award_id is what loyalty.award() returned.', award_id),
                  HINT = 'Pending awards: SELECT award_id FROM loyalty.award WHERE status = ''pending''.';
    ELSIF st = 'approved' THEN
        RAISE EXCEPTION 'the award was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Award %s was approved and its points posted; a decision on an award is final.', award_id),
                  HINT = 'Take the points back with an adjustment if the approval was a mistake.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.reject_award(uuid, text) IS
'Rejects a pending award: it posts nothing, never counts, and frees its share of the cap. Rejecting a rejected award again changes nothing; returns the status.';

-- Read by settlement for tier qualification on counted actions.
CREATE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT w.account_key, pg_catalog.sum(w.quantity)::bigint
FROM @extschema@.award w
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND w.action OPERATOR(pg_catalog.=) $2
  AND w.status OPERATOR(pg_catalog.=) 'approved'
  AND w.occurred_on OPERATOR(pg_catalog.>=) $3 AND w.occurred_on OPERATOR(pg_catalog.<) $4
GROUP BY w.account_key
$$;
COMMENT ON FUNCTION @extschema@._action_counts(integer, text, date, date) IS
'Internal: approved actions per account that occurred in [from_date, to_date) (their quantities summed), for tier qualification at settlement.';

REVOKE ALL ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text),
                      @extschema@.award(text, text, text, date, text, text, integer),
                      @extschema@._decide_award(uuid, boolean, text),
                      @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text),
                      @extschema@._action_counts(integer, text, date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.set_action_rule(text, text, bigint, boolean, bigint, text, date, text) TO loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.award(text, text, text, date, text, text, integer),
                          @extschema@.approve_award(uuid, text), @extschema@.reject_award(uuid, text) TO loyalty_operator;
GRANT SELECT ON @extschema@.action_rule, @extschema@.award TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Member-level points and the leaderboard.
--
-- A member's points are the ledger entries that carry their member_id: what
-- they earned by actions (loyalty.award(..., member => ...)) less what they
-- redeemed (loyalty.redeem(..., member => ...)).  They are part of the
-- account's points as well: the account's balance (loyalty.balance) counts
-- every entry of the account, its members' included, and a member's
-- redemption needs both the member's and the account's points to cover it.
-- Accrual, expiry, rebates and adjustments are the account's (no member).
--
-- loyalty.member_points keeps each member's running total, written in the
-- same transaction as the entry, by loyalty._post_member only.  Every member
-- posting (award, approval, redemption, cancellation) holds the account's
-- debit lock, so the row is never contended beyond what the account lock
-- already serialises.  verify() compares it with the ledger
-- (loyalty._verify_members).  (An index on the ledger's member entries would
-- have spared the table, but the accrual path appends ledger index entries
-- itself and takes no partial or expression index.)
CREATE TABLE @extschema@.member_points (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    member_id   text NOT NULL,
    points      bigint NOT NULL DEFAULT 0,
    earned      bigint NOT NULL DEFAULT 0,
    spent       bigint NOT NULL DEFAULT 0,
    entry_count bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, member_id),
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member,
    CONSTRAINT member_points_sum_check CHECK (points OPERATOR(pg_catalog.=) (earned OPERATOR(pg_catalog.-) spent))
);
COMMENT ON TABLE @extschema@.member_points IS 'Running totals of the ledger entries that carry a member, one row per member with any; written with the entry, checked against the ledger by verify(). Read it through loyalty.member_balance.';
COMMENT ON COLUMN @extschema@.member_points.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_points.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_points.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_points.points IS 'Points the member may redeem: earned less spent.';
COMMENT ON COLUMN @extschema@.member_points.earned IS 'Points of the member''s entries of kinds other than redeem (awards).';
COMMENT ON COLUMN @extschema@.member_points.spent IS 'Points of the member''s redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_points.entry_count IS 'Ledger entries that carry the member.';
COMMENT ON COLUMN @extschema@.member_points.updated_at IS 'Last change.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.member_points', '');

-- _post for an entry of a member (or of the account, member NULL): the
-- ledger entry, the account's balance delta and the member's running total.
-- The caller holds the account's debit lock.
CREATE FUNCTION @extschema@._post_member(
    program_id   integer,
    account_key  text,
    kind         @extschema@.ledger_kind,
    points       bigint,
    reason       text,
    member_id    text,
    corrects_xid xid8 DEFAULT NULL,
    corrects     bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := @extschema@._post($1, $2, $3, $4, $5, member_id => $6, corrects_xid => $7, corrects => $8);
BEGIN
    IF n IS NOT NULL AND $6 IS NOT NULL THEN
        INSERT INTO @extschema@.member_points AS m (program_id, account_key, member_id, points, earned, spent, entry_count)
        VALUES ($1, $2, $6, $4,
                CASE WHEN $3 OPERATOR(pg_catalog.<>) 'redeem' THEN $4 ELSE 0 END,
                CASE WHEN $3 OPERATOR(pg_catalog.=) 'redeem' THEN OPERATOR(pg_catalog.-) $4 ELSE 0 END, 1)
        ON CONFLICT ON CONSTRAINT member_points_pkey DO UPDATE
        SET points = m.points OPERATOR(pg_catalog.+) excluded.points,
            earned = m.earned OPERATOR(pg_catalog.+) excluded.earned,
            spent = m.spent OPERATOR(pg_catalog.+) excluded.spent,
            entry_count = m.entry_count OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.now();
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) IS
'Internal: posts one ledger entry (loyalty._post) and, when it carries a member, adds it to the member''s running total in loyalty.member_points; the caller holds the account''s debit lock.';

CREATE VIEW @extschema@.member_balance AS
SELECT m.program_id, m.account_key, m.member_id, m.name, m.role,
       coalesce(t.points, 0) AS points, coalesce(t.earned, 0) AS earned, coalesce(t.spent, 0) AS spent,
       coalesce(t.entry_count, 0) AS entry_count
FROM @extschema@.member m
LEFT JOIN @extschema@.member_points t
  ON t.program_id OPERATOR(pg_catalog.=) m.program_id AND t.account_key OPERATOR(pg_catalog.=) m.account_key
     AND t.member_id OPERATOR(pg_catalog.=) m.member_id;
COMMENT ON VIEW @extschema@.member_balance IS 'Points of each member of an account: the sums of the ledger entries that carry the member (awards for their actions, their redemptions and cancellations). Part of the account''s points in loyalty.balance.';
COMMENT ON COLUMN @extschema@.member_balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member_balance.account_key IS 'The account the member belongs to.';
COMMENT ON COLUMN @extschema@.member_balance.member_id IS 'The member.';
COMMENT ON COLUMN @extschema@.member_balance.name IS 'Display name.';
COMMENT ON COLUMN @extschema@.member_balance.role IS 'economic_buyer, technical_buyer, end_user or champion.';
COMMENT ON COLUMN @extschema@.member_balance.points IS 'Points the member may redeem (earned less spent).';
COMMENT ON COLUMN @extschema@.member_balance.earned IS 'Points earned (awards).';
COMMENT ON COLUMN @extschema@.member_balance.spent IS 'Points spent on redemptions, net of cancellations.';
COMMENT ON COLUMN @extschema@.member_balance.entry_count IS 'Ledger entries that carry the member.';

-- verify()'s checks of the member wallets and of the rows that posted
-- (redemptions, awards): same columns as loyalty._verify_balance, one row
-- per drift.
CREATE FUNCTION @extschema@._verify_members(program_id integer, account text)
RETURNS TABLE (account_key text, month date, attachment_id integer, item text, expected numeric, actual numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- a ledger entry whose member is not a member of its account
SELECT l.account_key, NULL::date, NULL::integer, 'member_unknown:' OPERATOR(pg_catalog.||) l.member_id,
       0::numeric, pg_catalog.count(*)::numeric
FROM @extschema@.ledger l
WHERE l.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR l.account_key OPERATOR(pg_catalog.=) $2)
  AND l.member_id IS NOT NULL
  AND NOT EXISTS (SELECT FROM @extschema@.member m
                  WHERE m.program_id OPERATOR(pg_catalog.=) l.program_id AND m.account_key OPERATOR(pg_catalog.=) l.account_key
                    AND m.member_id OPERATOR(pg_catalog.=) l.member_id)
GROUP BY l.account_key, l.member_id
UNION ALL
-- a member's running total that differs from the sums of their entries,
-- or that is below zero (redemptions check it; nothing else debits it)
SELECT coalesce(t.account_key, l.account_key), NULL, NULL, v.item, v.e, v.a
FROM (SELECT x.account_key, x.member_id, pg_catalog.sum(x.points) AS points, pg_catalog.count(*) AS n
      FROM @extschema@.ledger x
      WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)
        AND x.member_id IS NOT NULL
      GROUP BY 1, 2) l
FULL JOIN (SELECT x.account_key, x.member_id, x.points, x.entry_count
           FROM @extschema@.member_points x
           WHERE x.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR x.account_key OPERATOR(pg_catalog.=) $2)) t
  ON t.account_key OPERATOR(pg_catalog.=) l.account_key AND t.member_id OPERATOR(pg_catalog.=) l.member_id,
LATERAL (VALUES ('member_points:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.points, 0)::numeric,
                 coalesce(t.points, 0)::numeric),
                ('member_entries:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), coalesce(l.n, 0)::numeric,
                 coalesce(t.entry_count, 0)::numeric),
                ('member_overdrawn:' OPERATOR(pg_catalog.||) coalesce(t.member_id, l.member_id), 0::numeric,
                 LEAST(coalesce(t.points, 0), 0)::numeric)) AS v(item, e, a)
WHERE v.e IS DISTINCT FROM v.a
UNION ALL
-- a redemption whose spending entry (or, cancelled, whose giving back) is
-- missing from the ledger or differs from it
SELECT d.account_key, NULL, NULL, v.item, v.e, v.a
FROM @extschema@.redemption d
LEFT JOIN @extschema@.ledger s
  ON s.program_id OPERATOR(pg_catalog.=) d.program_id AND s.account_key OPERATOR(pg_catalog.=) d.account_key
     AND s.posted_xid OPERATOR(pg_catalog.=) d.posted_xid AND s.entry_no OPERATOR(pg_catalog.=) d.entry_no
     AND s.kind OPERATOR(pg_catalog.=) 'redeem' AND s.member_id IS NOT DISTINCT FROM d.member_id
LEFT JOIN @extschema@.ledger c
  ON c.program_id OPERATOR(pg_catalog.=) d.program_id AND c.account_key OPERATOR(pg_catalog.=) d.account_key
     AND c.posted_xid OPERATOR(pg_catalog.=) d.cancel_xid AND c.entry_no OPERATOR(pg_catalog.=) d.cancel_entry_no
     AND c.kind OPERATOR(pg_catalog.=) 'redeem' AND c.member_id IS NOT DISTINCT FROM d.member_id
     AND c.corrects_xid OPERATOR(pg_catalog.=) d.posted_xid AND c.corrects OPERATOR(pg_catalog.=) d.entry_no,
LATERAL (VALUES ('redemption_spent:' OPERATOR(pg_catalog.||) d.redemption_id::text, d.points::numeric,
                 (OPERATOR(pg_catalog.-) s.points)::numeric),
                ('redemption_given_back:' OPERATOR(pg_catalog.||) d.redemption_id::text,
                 CASE WHEN d.status OPERATOR(pg_catalog.=) 'cancelled' THEN d.points ELSE 0 END::numeric,
                 coalesce(c.points, 0)::numeric)) AS v(item, e, a)
WHERE d.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR d.account_key OPERATOR(pg_catalog.=) $2)
  AND v.e IS DISTINCT FROM v.a
UNION ALL
-- an approved award whose entry is missing or differs, or any other award
-- that posted
SELECT w.account_key, NULL, NULL, 'award_points:' OPERATOR(pg_catalog.||) w.award_id::text,
       CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END::numeric,
       coalesce(l.points, 0)::numeric
FROM @extschema@.award w
LEFT JOIN @extschema@.ledger l
  ON l.program_id OPERATOR(pg_catalog.=) w.program_id AND l.account_key OPERATOR(pg_catalog.=) w.account_key
     AND l.posted_xid OPERATOR(pg_catalog.=) w.posted_xid AND l.entry_no OPERATOR(pg_catalog.=) w.entry_no
     AND l.kind OPERATOR(pg_catalog.=) 'award' AND l.member_id IS NOT DISTINCT FROM w.member_id
WHERE w.program_id OPERATOR(pg_catalog.=) $1 AND ($2 IS NULL OR w.account_key OPERATOR(pg_catalog.=) $2)
  AND CASE WHEN w.status OPERATOR(pg_catalog.=) 'approved' THEN w.points ELSE 0 END IS DISTINCT FROM coalesce(l.points, 0)
$$;
COMMENT ON FUNCTION @extschema@._verify_members(integer, text) IS
'Internal: verify''s checks of member wallets (entries of unknown members, running totals that differ from the ledger or are below zero) and of the rows that posted (each redemption''s spending and giving-back entries, each approved award''s entry), for a program or one account; one row per drift.';

-- The leaderboard of gamified programs: points earned per calendar period
-- (month, quarter, year of the posting, in the program's calendar), ranked
-- among the program's accounts, and among its members.  Earned: accrual and
-- awards; redemptions, expiry and adjustments do not move a rank.  (Replaced
-- in src/sql/80_partner.sql by the same view with a partner's filter.)
CREATE VIEW @extschema@.leaderboard AS
WITH earned AS (
    SELECT l.program_id, p.name AS program, l.account_key, l.member_id,
           (l.posted_at AT TIME ZONE p.time_zone)::date AS day, l.points
    FROM @extschema@.ledger l
    JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
), per AS (
    SELECT e.program_id, e.program, g.period, pg_catalog.date_trunc(g.period, e.day::timestamp)::date AS period_start,
           s.scope, e.account_key, CASE WHEN s.scope OPERATOR(pg_catalog.=) 'member' THEN e.member_id END AS member_id,
           pg_catalog.sum(e.points)::bigint AS points
    FROM earned e
    CROSS JOIN (VALUES ('month'), ('quarter'), ('year')) AS g(period)
    CROSS JOIN (VALUES ('account'), ('member')) AS s(scope)
    WHERE s.scope OPERATOR(pg_catalog.=) 'account' OR e.member_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7
)
SELECT r.program_id, r.program, r.period, r.period_start, r.scope,
       pg_catalog.rank() OVER (PARTITION BY r.program_id, r.period, r.period_start, r.scope ORDER BY r.points DESC) AS rank,
       r.account_key, r.member_id, r.points
FROM per r;
COMMENT ON VIEW @extschema@.leaderboard IS 'Points earned (accrual and awards) per program and calendar period of posting, ranked among accounts (scope account) and among members (scope member): the visible leaderboard of gamified programs. Filter by program, period and period_start.';
COMMENT ON COLUMN @extschema@.leaderboard.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.leaderboard.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.leaderboard.period IS 'month, quarter or year.';
COMMENT ON COLUMN @extschema@.leaderboard.period_start IS 'First day of the period (program calendar).';
COMMENT ON COLUMN @extschema@.leaderboard.scope IS 'account: accounts ranked by all points they earned; member: members ranked by the points they earned themselves.';
COMMENT ON COLUMN @extschema@.leaderboard.rank IS 'Rank within program, period and scope (1 = most points; ties share a rank).';
COMMENT ON COLUMN @extschema@.leaderboard.account_key IS 'The account (of the member, for scope member).';
COMMENT ON COLUMN @extschema@.leaderboard.member_id IS 'The member (scope member); NULL for scope account.';
COMMENT ON COLUMN @extschema@.leaderboard.points IS 'Points earned in the period.';

GRANT SELECT ON @extschema@.member_points, @extschema@.member_balance, @extschema@.leaderboard
TO loyalty_reader, loyalty_operator, loyalty_admin;
REVOKE ALL ON FUNCTION @extschema@._verify_members(integer, text),
                      @extschema@._post_member(integer, text, @extschema@.ledger_kind, bigint, text, text, xid8, bigint) FROM PUBLIC;

-- Market development funds: a wallet of money (ledger column mdf) that
-- accrues at settlement as a tier-dependent share of the period's qualifying
-- purchases (loyalty._settle_mdf, called by loyalty.settle), and that the
-- partner spends through claims an operator approves.  A claim is a debit:
-- the debit protocol of redemptions (account lock, wait for postings in
-- flight, balance read after the lock) makes sure the wallet never goes
-- below zero, at the claim (pending claims reserve their amount) and again
-- at the approval, which posts the negative mdf entry.

CREATE TABLE @extschema@.mdf_accrual (
    program_id   integer NOT NULL,
    account_key  text NOT NULL,
    period_end   date NOT NULL,
    period_start date NOT NULL,
    spend        numeric NOT NULL,
    rate         numeric NOT NULL,
    amount       numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>=) 0),
    posted_xid   xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no     bigint,
    PRIMARY KEY (program_id, account_key, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start)
);
COMMENT ON TABLE @extschema@.mdf_accrual IS 'MDF accrued per account and settlement period (loyalty._settle_mdf): the period''s qualifying spend times the MDF rate of the account''s tier. One row per account and period: settling a period again credits no account twice.';
COMMENT ON COLUMN @extschema@.mdf_accrual.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_accrual.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_end IS 'Day after the period''s last day (exclusive end), as in loyalty.settlement_run.';
COMMENT ON COLUMN @extschema@.mdf_accrual.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.mdf_accrual.spend IS 'Qualifying spend of the documents dated in the period (loyalty.accrual_month).';
COMMENT ON COLUMN @extschema@.mdf_accrual.rate IS 'MDF rate of the account''s tier at the period''s end (fraction of spend).';
COMMENT ON COLUMN @extschema@.mdf_accrual.amount IS 'MDF credited: spend (0 if negative) times rate, rounded to cents.';
COMMENT ON COLUMN @extschema@.mdf_accrual.posted_xid IS 'Transaction of the settlement that credited it.';
COMMENT ON COLUMN @extschema@.mdf_accrual.entry_no IS 'Entry number (within posted_xid) of its ledger entry of kind mdf; NULL when the amount was 0.';

CREATE TABLE @extschema@.mdf_claim (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    claim_no    bigint NOT NULL,
    claim_id    uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    amount      numeric NOT NULL CHECK (amount OPERATOR(pg_catalog.>) 0),
    purpose     text NOT NULL,
    reference   text,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    claimed_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_at  timestamptz,
    decided_by  text,
    note        text,
    posted_xid  xid8,
    entry_no    bigint,
    PRIMARY KEY (program_id, account_key, claim_no),
    CONSTRAINT mdf_claim_reference_key UNIQUE (program_id, account_key, reference),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CONSTRAINT mdf_claim_decision_check CHECK ((status OPERATOR(pg_catalog.=) 'pending') = (decided_at IS NULL)),
    CONSTRAINT mdf_claim_entry_check CHECK ((status OPERATOR(pg_catalog.=) 'approved') = (entry_no IS NOT NULL)
                                           AND (posted_xid IS NULL) = (entry_no IS NULL))
);
CREATE INDEX mdf_claim_id_idx ON @extschema@.mdf_claim (claim_id);
COMMENT ON TABLE @extschema@.mdf_claim IS 'Claims against the MDF wallet (loyalty.claim_mdf): pending until an operator approves (the ledger entry of kind mdf takes the amount from the wallet) or rejects (nothing posted).';
COMMENT ON COLUMN @extschema@.mdf_claim.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.mdf_claim.account_key IS 'The claiming account.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_no IS 'The account''s debit number (loyalty.account.debit_no) the claim took.';
COMMENT ON COLUMN @extschema@.mdf_claim.claim_id IS 'The claim''s identifier, returned by loyalty.claim_mdf() and taken by approve_mdf_claim() and reject_mdf_claim().';
COMMENT ON COLUMN @extschema@.mdf_claim.amount IS 'Money claimed, in the program''s currency (cents at most).';
COMMENT ON COLUMN @extschema@.mdf_claim.purpose IS 'What the funds pay for (campaign, event, co-op advertising).';
COMMENT ON COLUMN @extschema@.mdf_claim.reference IS 'The partner portal''s identifier of the claim: the same reference for the same account claims once.';
COMMENT ON COLUMN @extschema@.mdf_claim.status IS 'pending, approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.claimed_at IS 'When it was claimed.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_at IS 'When it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.decided_by IS 'Session user who approved or rejected it.';
COMMENT ON COLUMN @extschema@.mdf_claim.note IS 'Why it was approved or rejected.';
COMMENT ON COLUMN @extschema@.mdf_claim.posted_xid IS 'Transaction of the ledger entry that paid it (approved claims).';
COMMENT ON COLUMN @extschema@.mdf_claim.entry_no IS 'Entry number (within posted_xid) of the ledger entry that paid it.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_accrual', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.mdf_claim', '');
GRANT SELECT ON @extschema@.mdf_accrual, @extschema@.mdf_claim TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Called by loyalty.settle() inside its settlement transaction.
CREATE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date)
RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total numeric;
BEGIN
    IF period_start IS NULL OR period_end IS NULL OR period_end < period_start THEN
        RAISE EXCEPTION 'MDF period [%, %] is empty', period_start, period_end
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'period_start and period_end are the period''s first and last days, both included (as loyalty.settle passes them).',
                  HINT = 'Give period_start <= period_end.';
    END IF;
    -- no tier of the program has an MDF rate: nothing to credit, without
    -- summing every account's spend and looking up its tier to find that out
    IF NOT EXISTS (SELECT FROM @extschema@.tier_benefit b
                   WHERE b.program_id = $1 AND b.benefit = 'mdf_rate') THEN
        RETURN 0;
    END IF;
    WITH spend AS (
        SELECT m.account_key, pg_catalog.sum(m.qualifying) AS spend
        FROM @extschema@.accrual_month m
        WHERE m.program_id = $1 AND m.month >= pg_catalog.date_trunc('month', $2)::date AND m.month <= $3
        GROUP BY m.account_key
    ), due AS (
        SELECT s.account_key, s.spend, @extschema@._mdf_rate($1, s.account_key, $3) AS rate
        FROM spend s
        WHERE NOT EXISTS (SELECT FROM @extschema@.mdf_accrual a
                          WHERE a.program_id = $1 AND a.account_key = s.account_key AND a.period_end = $3)
    ), credited AS (
        INSERT INTO @extschema@.mdf_accrual AS a (program_id, account_key, period_end, period_start, spend, rate, amount, entry_no)
        SELECT $1, d.account_key, $3, $2, d.spend, d.rate, x.amount,
               @extschema@._post($1, d.account_key, 'mdf', 0, pg_catalog.format('mdf accrual %s..%s', $2, $3), mdf => x.amount)
        FROM due d, LATERAL (SELECT pg_catalog.round(GREATEST(d.spend, 0) * coalesce(d.rate, 0), 2) AS amount) x
        WHERE x.amount > 0
        ORDER BY d.account_key
        RETURNING a.amount
    )
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO total FROM credited c;
    RETURN total;
END
$$;
COMMENT ON FUNCTION @extschema@._settle_mdf(integer, date, date) IS
'Internal: credits the MDF wallets for a settlement period (called by loyalty.settle): per account, the qualifying spend of the document months from period_start''s to period_end''s (both days included) times the MDF rate of its tier at period_end (loyalty._mdf_rate), rounded to cents; accounts already credited for the period are skipped. Returns the total credited.';

CREATE FUNCTION @extschema@.claim_mdf(
    program     text,
    account_key text,
    amount      numeric,
    purpose     text,
    reference   text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    pid integer;
    no bigint;
    prior @extschema@.mdf_claim;
    wallet numeric;
    reserved numeric;
    id uuid;
BEGIN
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
                  HINT = 'List programs with SELECT name FROM loyalty.program.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a WHERE a.program_id = pid AND a.account_key = account_key) THEN
        RAISE EXCEPTION 'account_key "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'Only enrolled accounts have an MDF wallet.',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF amount IS NULL OR amount <= 0 OR amount = 'Infinity' OR amount = 'NaN' OR amount <> pg_catalog.round(amount, 2) THEN
        RAISE EXCEPTION 'amount must be a positive sum of money in cents'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('amount %s was given.', coalesce(amount::text, 'NULL')),
                  HINT = 'For example amount => 1500.00.';
    END IF;
    IF purpose IS NULL OR btrim(purpose) = '' THEN
        RAISE EXCEPTION 'purpose must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'purpose says what the funds pay for; the approver reads it.',
                  HINT = 'For example purpose => ''Trade show booth, spring fair''.';
    END IF;
    IF reference = '' THEN
        RAISE EXCEPTION 'reference must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'reference is the partner portal''s identifier of the claim.',
                  HINT = 'Give the claim''s identifier, or NULL when there is none.';
    END IF;

    no := @extschema@._lock_for_debit(pid, account_key);
    PERFORM @extschema@._await_postings(pid, account_key);
    IF reference IS NOT NULL THEN
        SELECT * INTO prior FROM @extschema@.mdf_claim c
        WHERE c.program_id = pid AND c.account_key = account_key AND c.reference = reference;
        IF FOUND THEN
            IF prior.amount <> amount OR prior.purpose <> purpose THEN
                RAISE EXCEPTION 'reference "%" of account "%" was already claimed for another amount or purpose', reference, account_key
                    USING ERRCODE = 'duplicate_object',
                          DETAIL = pg_catalog.format('It claimed %s for %s.', prior.amount, pg_catalog.quote_literal(prior.purpose)),
                          HINT = 'A reference names one claim; give a new claim its own reference.';
            END IF;
            RETURN prior.claim_id;      -- the same claim again
        END IF;
    END IF;
    SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = pid AND b.account_key = account_key;
    SELECT coalesce(pg_catalog.sum(c.amount), 0) INTO reserved FROM @extschema@.mdf_claim c
    WHERE c.program_id = pid AND c.account_key = account_key AND c.status = 'pending';
    IF coalesce(wallet, 0) - reserved < amount THEN
        RAISE EXCEPTION 'account "%" has % of MDF available, % claimed', account_key, coalesce(wallet, 0) - reserved, amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('The wallet holds %s, of which pending claims reserve %s; it never goes below zero.',
                                             coalesce(wallet, 0), reserved),
                  HINT = 'Nothing was claimed. Claim less, or after the next settlement credits the wallet.';
    END IF;
    INSERT INTO @extschema@.mdf_claim AS c (program_id, account_key, claim_no, amount, purpose, reference)
    VALUES (pid, account_key, no, amount, purpose, reference)
    RETURNING c.claim_id INTO id;
    RETURN id;
END
$$;
COMMENT ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text) IS
'Claims an amount from an account''s MDF wallet, pending an operator''s approval; returns the claim''s id. The amount must be available: the wallet less the pending claims (SQLSTATE LY001 otherwise, nothing written). Idempotent by reference.';

CREATE FUNCTION @extschema@._decide_mdf_claim(claim_id uuid, approve boolean, note text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c @extschema@.mdf_claim;
    wallet numeric;
    entry bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM @extschema@._lock_for_debit(c.program_id, c.account_key);
    PERFORM @extschema@._await_postings(c.program_id, c.account_key);
    SELECT * INTO c FROM @extschema@.mdf_claim x
    WHERE x.program_id = c.program_id AND x.account_key = c.account_key AND x.claim_no = c.claim_no;
    IF c.status <> 'pending' THEN
        RETURN;
    END IF;
    IF approve THEN
        SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = c.program_id AND b.account_key = c.account_key;
        IF coalesce(wallet, 0) < c.amount THEN
            RETURN;             -- the caller reports it
        END IF;
        entry := @extschema@._post(c.program_id, c.account_key, 'mdf', 0,
                                   pg_catalog.format('mdf claim: %s', c.purpose) || coalesce(' ref ' || c.reference, ''),
                                   mdf => -c.amount);
    END IF;
    UPDATE @extschema@.mdf_claim x
    SET status = CASE WHEN approve THEN 'approved' ELSE 'rejected' END, decided_at = pg_catalog.now(),
        decided_by = SESSION_USER, note = _decide_mdf_claim.note,
        posted_xid = CASE WHEN entry IS NOT NULL THEN pg_catalog.pg_current_xact_id() END, entry_no = entry
    WHERE x.program_id = c.program_id AND x.account_key = c.account_key AND x.claim_no = c.claim_no;
END
$$;
COMMENT ON FUNCTION @extschema@._decide_mdf_claim(uuid, boolean, text) IS
'Internal: approves (pays from the wallet, if it still holds the amount) or rejects a pending MDF claim, under the account''s lock; does nothing to a claim that is not pending.';

CREATE FUNCTION @extschema@.approve_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    c @extschema@.mdf_claim;
    wallet numeric;
BEGIN
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_mdf_claim(claim_id, true, note);
    SELECT * INTO c FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    ELSIF c.status = 'rejected' THEN
        RAISE EXCEPTION 'the MDF claim was rejected and cannot be approved'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was rejected; a decision on a claim is final.', claim_id),
                  HINT = 'File a new claim if it is genuine.';
    ELSIF c.status = 'pending' THEN
        SELECT b.mdf INTO wallet FROM @extschema@.balance b WHERE b.program_id = c.program_id AND b.account_key = c.account_key;
        RAISE EXCEPTION 'account "%" has % of MDF, the claim asks %', c.account_key, coalesce(wallet, 0), c.amount
            USING ERRCODE = 'LY001',
                  DETAIL = pg_catalog.format('Claim %s stays pending: the MDF wallet never goes below zero.', claim_id),
                  HINT = 'The claim stays pending: approve it after the next settlement credits the wallet, or reject it.';
    END IF;
    RETURN c.status;
END
$$;
COMMENT ON FUNCTION @extschema@.approve_mdf_claim(uuid, text) IS
'Approves a pending MDF claim: posts a ledger entry of kind mdf that takes the amount from the wallet, which must still hold it (SQLSTATE LY001 otherwise; the claim stays pending). Approving an approved claim again changes nothing; returns the status.';

CREATE FUNCTION @extschema@.reject_mdf_claim(claim_id uuid, note text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    st text;
BEGIN
    IF claim_id IS NULL THEN
        RAISE EXCEPTION 'claim_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'claim_id is what loyalty.claim_mdf() returned.',
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    END IF;
    PERFORM @extschema@._decide_mdf_claim(claim_id, false, note);
    SELECT x.status INTO st FROM @extschema@.mdf_claim x WHERE x.claim_id = claim_id;
    IF st IS NULL THEN
        RAISE EXCEPTION 'claim_id names no MDF claim'
            USING ERRCODE = 'no_data_found',
                  DETAIL = pg_catalog.format('No claim has id %s; claim_id is what loyalty.claim_mdf() returned.', claim_id),
                  HINT = 'Pending claims: SELECT claim_id FROM loyalty.mdf_claim WHERE status = ''pending''.';
    ELSIF st = 'approved' THEN
        RAISE EXCEPTION 'the MDF claim was approved and cannot be rejected'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('Claim %s was paid from the wallet; a decision on a claim is final.', claim_id),
                  HINT = 'Nothing to do.';
    END IF;
    RETURN st;
END
$$;
COMMENT ON FUNCTION @extschema@.reject_mdf_claim(uuid, text) IS
'Rejects a pending MDF claim: nothing is posted and its reserve is released. Rejecting a rejected claim again changes nothing; returns the status.';

REVOKE ALL ON FUNCTION @extschema@._settle_mdf(integer, date, date),
                      @extschema@.claim_mdf(text, text, numeric, text, text),
                      @extschema@._decide_mdf_claim(uuid, boolean, text),
                      @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.claim_mdf(text, text, numeric, text, text),
                          @extschema@.approve_mdf_claim(uuid, text), @extschema@.reject_mdf_claim(uuid, text) TO loyalty_operator;

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
        updated_at = pg_catalog.now()
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
    ON CONFLICT ON CONSTRAINT margin_rate_pkey DO UPDATE SET rate = excluded.rate, updated_at = pg_catalog.now();
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
        FROM x GROUP BY 1)
    SELECT @extschema@.did(a.cohort = 'pilot', coalesce(m.pre, 0) * scale, coalesce(m.post, 0)) AS d,
           @extschema@.did(a.cohort = 'pilot', coalesce(m.first_half, 0), coalesce(m.second_half, 0)) AS pd,
           (SELECT sum(x.revenue) FROM x) AS rev, (SELECT sum(x.unrated) FROM x) AS unrated
    INTO est
    FROM @extschema@.account a
    LEFT JOIN m ON m.account_key = a.account_key
    WHERE a.program_id = pid AND a.cohort IS NOT NULL;
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

-- ---------------------------------------------------------------------------
-- KPI views for BI tools (SCENARIOS.md 18): one row per account to start
-- from, tier movements, churn risk, and the quarterly KPIs by segment and
-- cohort.  The views read as their reader (security_invoker), so that
-- row-level security on loyalty's tables applies to whoever reads them;
-- functions a view calls are checked against its reader too, so these call
-- no internal function; the ones over ERP rows (loyalty.sales()) read them
-- with the reader's rights.
-- ---------------------------------------------------------------------------

-- loyalty.account_status, the one row per account a BI tool starts from, is
-- in src/sql/80_partner.sql: it reads cohort and potential spend through
-- loyalty.account_private, which shows a partner's login nothing.

CREATE VIEW @extschema@.tier_movements WITH (security_invoker = true) AS
SELECT p.name AS program, pg_catalog.date_trunc('month', h.effective_from::timestamp)::date AS month,
       h.old_tier, h.new_tier,
       CASE WHEN h.old_tier IS NULL THEN 'entry'
            WHEN h.new_tier IS NULL THEN 'exit'
            WHEN o.rank OPERATOR(pg_catalog.<) n.rank THEN 'upgrade'
            ELSE 'downgrade' END AS direction,
       h.reason, pg_catalog.count(*) AS movements
FROM @extschema@.tier_history h
JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) h.program_id
LEFT JOIN LATERAL @extschema@.tiers(p.ladder) o ON o.name OPERATOR(pg_catalog.=) h.old_tier
LEFT JOIN LATERAL @extschema@.tiers(p.ladder) n ON n.name OPERATOR(pg_catalog.=) h.new_tier
GROUP BY 1, 2, 3, 4, 5, 6;
COMMENT ON VIEW @extschema@.tier_movements IS 'Tier changes per program, month (of the date they took effect), from and to tier, and reason: the movement matrix of a QBR.';
COMMENT ON COLUMN @extschema@.tier_movements.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.tier_movements.month IS 'First day of the month the changes took effect.';
COMMENT ON COLUMN @extschema@.tier_movements.old_tier IS 'Tier before (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_movements.new_tier IS 'Tier after (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_movements.direction IS 'entry (from no tier), exit (to no tier), upgrade or downgrade (by the ladder''s order).';
COMMENT ON COLUMN @extschema@.tier_movements.reason IS 'upgrade_on_accrual, requalification or manual.';
COMMENT ON COLUMN @extschema@.tier_movements.movements IS 'How many changes.';

-- Per account, today: the days since its last document against its own
-- usual interval between documents (the mean gap between its document
-- dates).  As the reader: it reads the ERP rows through loyalty.sales().
CREATE VIEW @extschema@.churn_risk WITH (security_invoker = true) AS
SELECT x.program, x.account_key, x.first_invoice_date, x.last_invoice_date, x.invoice_days,
       x.usual_interval_days, x.days_since_last_invoice,
       pg_catalog.round(x.days_since_last_invoice::numeric OPERATOR(pg_catalog./) x.usual_interval_days, 2) AS overdue_ratio,
       CASE WHEN x.usual_interval_days IS NULL THEN 'unknown'
            WHEN x.days_since_last_invoice OPERATOR(pg_catalog.>) (3 OPERATOR(pg_catalog.*) x.usual_interval_days) THEN 'high'
            WHEN x.days_since_last_invoice OPERATOR(pg_catalog.>) (1.5 OPERATOR(pg_catalog.*) x.usual_interval_days) THEN 'medium'
            ELSE 'low' END AS risk
FROM (SELECT p.name AS program, s.account_key, pg_catalog.min(s.doc_date) AS first_invoice_date,
             pg_catalog.max(s.doc_date) AS last_invoice_date, pg_catalog.count(DISTINCT s.doc_date) AS invoice_days,
             CASE WHEN pg_catalog.count(DISTINCT s.doc_date) OPERATOR(pg_catalog.>) 1
                  THEN pg_catalog.round((pg_catalog.max(s.doc_date) OPERATOR(pg_catalog.-) pg_catalog.min(s.doc_date))::numeric
                                        OPERATOR(pg_catalog./) (pg_catalog.count(DISTINCT s.doc_date) OPERATOR(pg_catalog.-) 1), 1) END
                 AS usual_interval_days,
             (pg_catalog.now() AT TIME ZONE p.time_zone)::date OPERATOR(pg_catalog.-) pg_catalog.max(s.doc_date) AS days_since_last_invoice
      FROM @extschema@.program p CROSS JOIN LATERAL @extschema@.sales(p.name) s
      WHERE s.revenue OPERATOR(pg_catalog.>) 0
        -- the programs whose ERP tables the reader may read
        AND NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')))
      GROUP BY p.name, p.time_zone, s.account_key) x;
COMMENT ON VIEW @extschema@.churn_risk IS 'Churn risk per customer today: days since the last invoice against the customer''s own usual interval between invoices. Reads the ERP rows with the reader''s rights (loyalty.sales()): it shows the programs whose attached tables the reader may read.';
COMMENT ON COLUMN @extschema@.churn_risk.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.churn_risk.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.churn_risk.first_invoice_date IS 'First document date with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.last_invoice_date IS 'Latest document date with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.invoice_days IS 'Distinct document dates with revenue.';
COMMENT ON COLUMN @extschema@.churn_risk.usual_interval_days IS 'Mean days between those dates: (last - first) / (invoice_days - 1); NULL with one date.';
COMMENT ON COLUMN @extschema@.churn_risk.days_since_last_invoice IS 'Days from the latest document to today (the program''s calendar).';
COMMENT ON COLUMN @extschema@.churn_risk.overdue_ratio IS 'days_since_last_invoice / usual_interval_days.';
COMMENT ON COLUMN @extschema@.churn_risk.risk IS 'high (more than 3 usual intervals since the last invoice), medium (more than 1.5), low, or unknown (one invoice date only).';

-- Quarterly KPIs by program, segment (cooperation model) and cohort, the
-- accounts grouped by their current segment and cohort.  An account is
-- active in a quarter with revenue above 0; retention compares a quarter
-- with the one before.  Revenue and margin come from the ERP rows
-- (loyalty.sales(), as the reader), points from the ledger.
CREATE VIEW @extschema@.kpi WITH (security_invoker = true) AS
WITH s AS (
    SELECT p.program_id, x.account_key, pg_catalog.date_trunc('quarter', x.doc_date::timestamp)::date AS quarter,
           x.product_line, x.revenue, x.margin
    FROM @extschema@.program p CROSS JOIN LATERAL @extschema@.sales(p.name) x
    -- the programs whose ERP tables the reader may read
    WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')))),
aq AS (
    SELECT s.program_id, s.account_key, s.quarter, pg_catalog.sum(s.revenue) AS revenue, pg_catalog.sum(s.margin) AS margin
    FROM s GROUP BY 1, 2, 3),
last_q AS (SELECT aq.program_id, pg_catalog.max(aq.quarter) AS quarter FROM aq GROUP BY 1),
-- an account buys a product line for the first time, after earlier purchases
first_buy AS (SELECT s.program_id, s.account_key, pg_catalog.min(s.quarter) AS quarter FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 GROUP BY 1, 2),
cross_sold AS (
    SELECT DISTINCT l.program_id, l.account_key, l.quarter
    FROM (SELECT s.program_id, s.account_key, s.product_line, pg_catalog.min(s.quarter) AS quarter
          FROM s WHERE s.revenue OPERATOR(pg_catalog.>) 0 AND s.product_line IS NOT NULL GROUP BY 1, 2, 3) l
    JOIN first_buy f ON f.program_id OPERATOR(pg_catalog.=) l.program_id AND f.account_key OPERATOR(pg_catalog.=) l.account_key
    WHERE l.quarter OPERATOR(pg_catalog.>) f.quarter),
pts AS (
    SELECT m.program_id, m.account_key, pg_catalog.date_trunc('quarter', m.month::timestamp)::date AS quarter,
           pg_catalog.sum(m.points) AS earned, 0::numeric AS redeemed
    FROM @extschema@.accrual_month m GROUP BY 1, 2, 3
    UNION ALL
    SELECT l.program_id, l.account_key, pg_catalog.date_trunc('quarter', l.posted_at AT TIME ZONE p.time_zone)::date,
           pg_catalog.sum(l.points) FILTER (WHERE l.kind IN ('award', 'adjust') AND l.points OPERATOR(pg_catalog.>) 0),
           OPERATOR(pg_catalog.-) pg_catalog.sum(l.points) FILTER (WHERE l.kind OPERATOR(pg_catalog.=) 'redeem')
    FROM @extschema@.ledger l JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('award', 'adjust', 'redeem') GROUP BY 1, 2, 3),
pq AS (SELECT pts.program_id, pts.account_key, pts.quarter, pg_catalog.sum(pts.earned) AS earned,
              pg_catalog.sum(pts.redeemed) AS redeemed FROM pts GROUP BY 1, 2, 3),
-- approved actions by the quarter they occurred in (as tier qualification
-- and the caps count them), the members' with their account's
act AS (
    SELECT w.program_id, w.account_key, pg_catalog.date_trunc('quarter', w.occurred_on::timestamp)::date AS quarter,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('training', 'certification')) AS trainings,
           pg_catalog.sum(w.quantity) FILTER (WHERE ar.category IN ('referral', 'review', 'survey', 'lead')) AS advocacy
    FROM @extschema@.award w
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) w.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) w.action AND ar.valid_from OPERATOR(pg_catalog.=) w.rule_from
    WHERE w.status OPERATOR(pg_catalog.=) 'approved'
      AND ar.category IN ('training', 'certification', 'referral', 'review', 'survey', 'lead')
    GROUP BY 1, 2, 3),
-- every account and quarter with revenue or points, and the quarter after
-- one with revenue (up to the last quarter with data)
grid AS (
    SELECT aq.program_id, aq.account_key, aq.quarter FROM aq
    UNION
    SELECT aq.program_id, aq.account_key, (aq.quarter OPERATOR(pg_catalog.+) '3 months'::interval)::date
    FROM aq JOIN last_q USING (program_id) WHERE aq.quarter OPERATOR(pg_catalog.<) last_q.quarter
    UNION
    SELECT pq.program_id, pq.account_key, pq.quarter FROM pq
    UNION
    SELECT act.program_id, act.account_key, act.quarter FROM act),
r AS (
    SELECT g.program_id, g.quarter, coalesce(a.cooperation_model, 'none') AS segment, coalesce(a.cohort, 'none') AS cohort,
           a.potential_spend, coalesce(c.revenue, 0) AS revenue, coalesce(c.margin, 0) AS margin,
           coalesce(pr.revenue, 0) AS prev_revenue,
           coalesce(c.revenue OPERATOR(pg_catalog.>) 0, false) AS active,
           coalesce(pr.revenue OPERATOR(pg_catalog.>) 0, false) AS prev_active,
           x.account_key IS NOT NULL AS cross_sold,
           coalesce(q.earned, 0) AS earned, coalesce(q.redeemed, 0) AS redeemed,
           coalesce(t.trainings, 0) AS trainings, coalesce(t.advocacy, 0) AS advocacy
    FROM grid g
    LEFT JOIN @extschema@.account a ON a.program_id OPERATOR(pg_catalog.=) g.program_id AND a.account_key OPERATOR(pg_catalog.=) g.account_key
    LEFT JOIN aq c ON c.program_id OPERATOR(pg_catalog.=) g.program_id AND c.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND c.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN aq pr ON pr.program_id OPERATOR(pg_catalog.=) g.program_id AND pr.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND pr.quarter OPERATOR(pg_catalog.=) (g.quarter OPERATOR(pg_catalog.-) '3 months'::interval)::date
    LEFT JOIN cross_sold x ON x.program_id OPERATOR(pg_catalog.=) g.program_id AND x.account_key OPERATOR(pg_catalog.=) g.account_key
                          AND x.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN pq q ON q.program_id OPERATOR(pg_catalog.=) g.program_id AND q.account_key OPERATOR(pg_catalog.=) g.account_key
                  AND q.quarter OPERATOR(pg_catalog.=) g.quarter
    LEFT JOIN act t ON t.program_id OPERATOR(pg_catalog.=) g.program_id AND t.account_key OPERATOR(pg_catalog.=) g.account_key
                   AND t.quarter OPERATOR(pg_catalog.=) g.quarter),
k AS (
    SELECT r.program_id, r.quarter, r.segment, r.cohort,
           pg_catalog.count(*) FILTER (WHERE r.active) AS active_accounts,
           pg_catalog.count(*) FILTER (WHERE r.prev_active) AS previously_active,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.prev_active) AS retained_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND NOT r.prev_active) AS new_or_returning,
           pg_catalog.sum(r.revenue) AS revenue, pg_catalog.sum(r.margin) AS margin,
           pg_catalog.sum(r.prev_revenue) FILTER (WHERE r.prev_active) AS prev_revenue,
           pg_catalog.sum(LEAST(GREATEST(r.revenue, 0), r.prev_revenue)) FILTER (WHERE r.prev_active) AS kept_revenue,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.prev_active) AS cohort_revenue,
           pg_catalog.count(*) FILTER (WHERE r.prev_active AND r.revenue OPERATOR(pg_catalog.>) r.prev_revenue) AS expansion_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.cross_sold) AS cross_sell_accounts,
           pg_catalog.sum(r.revenue) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet_revenue,
           pg_catalog.sum(r.potential_spend) FILTER (WHERE r.active AND r.potential_spend OPERATOR(pg_catalog.>) 0) AS wallet,
           pg_catalog.sum(r.earned) AS points_earned, pg_catalog.sum(r.redeemed) AS points_redeemed,
           pg_catalog.sum(r.margin) FILTER (WHERE r.active) AS active_margin,
           pg_catalog.sum(r.trainings) AS trainings,
           pg_catalog.count(*) FILTER (WHERE r.trainings OPERATOR(pg_catalog.>) 0) AS accounts_trained,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.trainings OPERATOR(pg_catalog.>) 0) AS active_trained,
           pg_catalog.sum(r.advocacy) AS advocacy,
           pg_catalog.count(*) FILTER (WHERE r.advocacy OPERATOR(pg_catalog.>) 0) AS advocating_accounts,
           pg_catalog.count(*) FILTER (WHERE r.active AND r.advocacy OPERATOR(pg_catalog.>) 0) AS active_advocating
    FROM r GROUP BY 1, 2, 3, 4)
SELECT p.name AS program, k.quarter, k.segment, k.cohort, k.active_accounts, k.previously_active, k.retained_accounts,
       k.new_or_returning,
       pg_catalog.round(k.retained_accounts::numeric OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0), 4) AS account_retention,
       k.revenue, k.margin,
       pg_catalog.round(k.kept_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS gross_revenue_retention,
       pg_catalog.round(k.cohort_revenue OPERATOR(pg_catalog./) NULLIF(k.prev_revenue, 0), 4) AS net_revenue_retention,
       k.expansion_accounts, k.cross_sell_accounts,
       pg_catalog.round(4 OPERATOR(pg_catalog.*) k.wallet_revenue OPERATOR(pg_catalog./) NULLIF(k.wallet, 0), 4) AS share_of_wallet,
       k.points_earned, k.points_redeemed,
       pg_catalog.round(k.points_redeemed OPERATOR(pg_catalog./) NULLIF(k.points_earned, 0), 4) AS programme_utilisation,
       pg_catalog.round(k.active_margin OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0)
                        OPERATOR(pg_catalog./) NULLIF(1 OPERATOR(pg_catalog.-) (k.retained_accounts::numeric
                                                      OPERATOR(pg_catalog./) NULLIF(k.previously_active, 0)), 0), 2) AS clv_estimate,
       k.trainings::bigint AS trainings_completed, k.accounts_trained,
       pg_catalog.round(k.active_trained::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS trained_share,
       k.advocacy::bigint AS advocacy_actions, k.advocating_accounts,
       pg_catalog.round(k.active_advocating::numeric OPERATOR(pg_catalog./) NULLIF(k.active_accounts, 0), 4) AS advocacy_share
FROM k JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) k.program_id
WHERE NOT EXISTS (
          SELECT FROM @extschema@.attachment x
          CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[x.source, x.header, x.product]) AS r(rel)
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel::oid
          WHERE x.program_id OPERATOR(pg_catalog.=) p.program_id AND x.detached_at IS NULL
            AND NOT (pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                     AND pg_catalog.has_table_privilege(c.oid, 'SELECT')));
COMMENT ON VIEW @extschema@.kpi IS 'Quarterly B2B KPIs per program, segment (cooperation model) and cohort: activity, account and revenue retention, expansion, cross-sell, share of wallet, programme utilisation, a CLV estimate, training completion and advocacy. Revenue and margin from the ERP rows with the reader''s rights (loyalty.sales()); accounts grouped by their current segment and cohort (none: not set, or not enrolled). Trainings and advocacy from the approved awards (loyalty.award), classified by their action''s category (loyalty.action_rule.category) and dated by the day the action occurred, as tier qualification and the caps date them: a training counts in the quarter it was done, even when approved later (approving it restates that quarter). It shows the programs whose attached tables the reader may read.';
COMMENT ON COLUMN @extschema@.kpi.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.kpi.quarter IS 'First day of the calendar quarter (of the document dates).';
COMMENT ON COLUMN @extschema@.kpi.segment IS 'Cooperation model of the accounts (none: not set or not enrolled).';
COMMENT ON COLUMN @extschema@.kpi.cohort IS 'pilot, control or none.';
COMMENT ON COLUMN @extschema@.kpi.active_accounts IS 'Accounts with revenue above 0 in the quarter.';
COMMENT ON COLUMN @extschema@.kpi.previously_active IS 'Accounts with revenue above 0 in the quarter before.';
COMMENT ON COLUMN @extschema@.kpi.retained_accounts IS 'Accounts active in both quarters.';
COMMENT ON COLUMN @extschema@.kpi.new_or_returning IS 'Accounts active in the quarter but not in the one before.';
COMMENT ON COLUMN @extschema@.kpi.account_retention IS 'retained_accounts / previously_active.';
COMMENT ON COLUMN @extschema@.kpi.revenue IS 'Revenue in program currency (credit notes negative).';
COMMENT ON COLUMN @extschema@.kpi.margin IS 'Margin at the product lines'' rates (loyalty.margin_rate; revenue where none applies).';
COMMENT ON COLUMN @extschema@.kpi.gross_revenue_retention IS 'Of the accounts active the quarter before: the sum of min(revenue now, revenue before) / revenue before (no expansion counted, 1 at most).';
COMMENT ON COLUMN @extschema@.kpi.net_revenue_retention IS 'Of the accounts active the quarter before: revenue now / revenue before (expansion counted).';
COMMENT ON COLUMN @extschema@.kpi.expansion_accounts IS 'Accounts active the quarter before whose revenue grew.';
COMMENT ON COLUMN @extschema@.kpi.cross_sell_accounts IS 'Active accounts that bought a product line for the first time, having bought others in earlier quarters.';
COMMENT ON COLUMN @extschema@.kpi.share_of_wallet IS 'Annualised revenue (x 4) / potential spend, of the active accounts with a potential spend.';
COMMENT ON COLUMN @extschema@.kpi.points_earned IS 'Points earned: accrual by document quarter, awards and positive adjustments by posting quarter.';
COMMENT ON COLUMN @extschema@.kpi.points_redeemed IS 'Points redeemed, by posting quarter.';
COMMENT ON COLUMN @extschema@.kpi.programme_utilisation IS 'points_redeemed / points_earned.';
COMMENT ON COLUMN @extschema@.kpi.clv_estimate IS 'Margin per active account in the quarter / (1 - account_retention): the expected margin over an account''s remaining life at this quarter''s margin and retention, undiscounted; NULL when retention is 1 or unknown.';
COMMENT ON COLUMN @extschema@.kpi.trainings_completed IS 'Approved actions of category training or certification that occurred in the quarter, the accounts'' and their members'' (quantities summed: seats of a training count each).';
COMMENT ON COLUMN @extschema@.kpi.accounts_trained IS 'Accounts with at least one approved training or certification (theirs or a member''s) that occurred in the quarter, active or not.';
COMMENT ON COLUMN @extschema@.kpi.trained_share IS 'Of the active accounts, the share with a training or certification in the quarter.';
COMMENT ON COLUMN @extschema@.kpi.advocacy_actions IS 'Approved actions of category referral, review, survey or lead that occurred in the quarter, the accounts'' and their members'' (quantities summed).';
COMMENT ON COLUMN @extschema@.kpi.advocating_accounts IS 'Accounts with at least one approved advocacy action (theirs or a member''s) that occurred in the quarter, active or not.';
COMMENT ON COLUMN @extschema@.kpi.advocacy_share IS 'Of the active accounts, the share with an advocacy action in the quarter.';

GRANT SELECT ON @extschema@.tier_movements, @extschema@.churn_risk, @extschema@.kpi
    TO loyalty_reader, loyalty_operator, loyalty_admin;

-- Partner self-service: a login role of the partner's own (a person at the
-- customer, through the company's portal) mapped to one account of a program
-- reads that account and nothing else.  Row-level security on every
-- account-scoped table does it for direct reads (the partner's portal may
-- query the tables and views as it likes); the reading functions check the
-- same mapping first, because they read as the owner.  Loyalty's own roles
-- (reader, operator, admin) read every row as before; the extension owner,
-- which writes everything, bypasses the policies as a table owner does.

CREATE TABLE @extschema@.partner_login (
    login       regrole NOT NULL,
    program_id  integer NOT NULL REFERENCES @extschema@.program,
    account_key text NOT NULL,
    member_id   text,
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (login, program_id),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    FOREIGN KEY (program_id, account_key, member_id) REFERENCES @extschema@.member
);
COMMENT ON TABLE @extschema@.partner_login IS 'Which account (and member) of a program a partner''s login role may read: one account per login and program. Written by loyalty.grant_partner() and loyalty.revoke_partner().';
COMMENT ON COLUMN @extschema@.partner_login.login IS 'The partner''s login role (a member of loyalty_partner).';
COMMENT ON COLUMN @extschema@.partner_login.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.partner_login.account_key IS 'The one account of the program the login reads.';
COMMENT ON COLUMN @extschema@.partner_login.member_id IS 'The person at the account the login stands for (loyalty.member), if any.';
COMMENT ON COLUMN @extschema@.partner_login.granted_at IS 'When the mapping was made.';
CREATE INDEX partner_login_account ON @extschema@.partner_login (program_id, account_key);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.partner_login', '');

-- Who is calling.  Outside the extension's SECURITY DEFINER functions that
-- is CURRENT_USER.  Inside one, CURRENT_USER is the extension's owner, and
-- the caller is the role the session acts as: the one set with SET ROLE,
-- else the session user (neither changes when a definer function starts,
-- and a session sets only roles it is a member of).
CREATE FUNCTION @extschema@._caller() RETURNS regrole
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN CURRENT_USER OPERATOR(pg_catalog.<>)
                 (SELECT pg_catalog.pg_get_userbyid(e.extowner) FROM pg_catalog.pg_extension e
                  WHERE e.extname OPERATOR(pg_catalog.=) 'loyalty')
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
            WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none'
            THEN pg_catalog.to_regrole(pg_catalog.quote_ident(SESSION_USER))
            ELSE pg_catalog.to_regrole(pg_catalog.quote_ident(pg_catalog.current_setting('role'))) END;
COMMENT ON FUNCTION @extschema@._caller() IS 'Internal: the role that called: CURRENT_USER, or, inside a SECURITY DEFINER function of the extension (CURRENT_USER is its owner), the role the session acts as (SET ROLE, else the session user).';

-- Is the caller staff (a loyalty role, or a superuser)?  Partners are
-- everyone else who may call a reading function.
CREATE FUNCTION @extschema@._is_staff() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN coalesce((SELECT pg_catalog.pg_has_role(c.r, 'loyalty_reader', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_operator', 'USAGE')
                         OR pg_catalog.pg_has_role(c.r, 'loyalty_admin', 'USAGE')
                 FROM (SELECT @extschema@._caller() AS r) c), false);
COMMENT ON FUNCTION @extschema@._is_staff() IS 'Internal: true when the caller (loyalty._caller()) is a loyalty role (reader, operator, admin) or a superuser.';

-- Checks the caller (loyalty._caller(): the reading function's caller,
-- also when that function is SECURITY DEFINER): staff pass; a partner passes for its own account only, and gets
-- the same error for every other key, enrolled or not, so that the error
-- tells nothing about other accounts.
CREATE FUNCTION @extschema@._may_read(program text, account_key text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_read.account_key) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login reads its own account only.',
                  HINT = 'The account your login may read is in loyalty.partner_login.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._may_read(text, text) IS 'Internal: raises insufficient_privilege unless the caller is a loyalty role or the partner login of this account.';

-- The same for acting (redeeming): a partner acts for its own account, and
-- as its own member or as the account (member_id NULL); the same error for
-- every other account or member, existing or not.
CREATE FUNCTION @extschema@._may_act(program text, account_key text, member_id text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@._is_staff() THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p USING (program_id)
                   WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                     AND p.name OPERATOR(pg_catalog.=) program
                     AND pl.account_key OPERATOR(pg_catalog.=) _may_act.account_key
                     AND (_may_act.member_id IS NULL OR pl.member_id OPERATOR(pg_catalog.=) _may_act.member_id)) THEN
        RAISE EXCEPTION 'permission denied for this account'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A partner login acts for its own account only, as the account or as its own member.',
                  HINT = 'The account and member your login acts for are in loyalty.partner_login.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._may_act(text, text, text) IS 'Internal: raises insufficient_privilege unless the caller is a loyalty role, or the partner login of this account acting as the account (member_id NULL) or as its own member.';

CREATE FUNCTION @extschema@.grant_partner(login regrole, program text, account_key text, member_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    -- the shared check of a program argument, raised here so that the
    -- error comes from this function (no internal helper in its CONTEXT)
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) grant_partner.program;
    IF login IS NULL OR account_key IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN login IS NULL THEN 'login' ELSE 'account_key' END
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'grant_partner maps a login role to one account of a program.',
                  HINT = 'For example loyalty.grant_partner(''acme_portal'', ''Distributor Club'', ''1042'').';
    END IF;
    IF (SELECT r.rolsuper OR r.rolcreaterole OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) login)
       OR pg_catalog.pg_has_role(login, 'loyalty_reader', 'USAGE') OR pg_catalog.pg_has_role(login, 'loyalty_operator', 'USAGE')
       OR pg_catalog.pg_has_role(login, 'loyalty_admin', 'USAGE') THEN
        RAISE EXCEPTION 'role % cannot be a partner login', login
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A superuser, a role that creates roles or bypasses row-level security, or a loyalty role reads every account: mapping it to one account would restrict nothing.',
                  HINT = 'Create a login role for the partner alone, e.g. CREATE ROLE acme_portal LOGIN.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.account a
                   WHERE a.program_id OPERATOR(pg_catalog.=) pid AND a.account_key OPERATOR(pg_catalog.=) grant_partner.account_key) THEN
        RAISE EXCEPTION 'account "%" is not enrolled in program "%"', account_key, program
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'account_key must name an account of the program (loyalty.account).',
                  HINT = 'Enrol it with loyalty.enroll() first.';
    END IF;
    IF member_id IS NOT NULL AND NOT EXISTS (SELECT FROM @extschema@.member m
                   WHERE m.program_id OPERATOR(pg_catalog.=) pid AND m.account_key OPERATOR(pg_catalog.=) grant_partner.account_key
                     AND m.member_id OPERATOR(pg_catalog.=) grant_partner.member_id) THEN
        RAISE EXCEPTION 'member "%" does not exist at account "%"', member_id, account_key
            USING ERRCODE = 'no_data_found',
                  DETAIL = 'member_id must name a member of the account, or be NULL.',
                  HINT = 'Members are rows of loyalty.member.';
    END IF;
    INSERT INTO @extschema@.partner_login AS pl (login, program_id, account_key, member_id)
    VALUES (login, pid, account_key, member_id)
    ON CONFLICT ON CONSTRAINT partner_login_pkey DO UPDATE
    SET account_key = excluded.account_key, member_id = excluded.member_id, granted_at = pg_catalog.now();
    EXECUTE pg_catalog.format('GRANT loyalty_partner TO %I', pg_catalog.pg_get_userbyid(login));
END
$$;
COMMENT ON FUNCTION @extschema@.grant_partner(regrole, text, text, text) IS 'Lets a partner''s login role read one account of a program (and stand for one of its members): maps it in loyalty.partner_login and grants it loyalty_partner. Refuses superusers, roles with CREATEROLE or BYPASSRLS, and loyalty roles.';

CREATE FUNCTION @extschema@.revoke_partner(login regrole, program text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer;
    -- the shared check of a program argument, raised here so that the
    -- error comes from this function (no internal helper in its CONTEXT)
    e text[] := @extschema@._program_problem(program);
BEGIN
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = e[1], MESSAGE = e[2], DETAIL = e[3], HINT = e[4];
    END IF;
    SELECT p.program_id INTO pid FROM @extschema@.program p WHERE p.name OPERATOR(pg_catalog.=) revoke_partner.program;
    IF login IS NULL THEN
        RAISE EXCEPTION 'login must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'revoke_partner ends the access of one login role to its account of a program.',
                  HINT = 'For example loyalty.revoke_partner(''acme_portal'', ''Distributor Club'').';
    END IF;
    DELETE FROM @extschema@.partner_login pl
    WHERE pl.login OPERATOR(pg_catalog.=) revoke_partner.login AND pl.program_id OPERATOR(pg_catalog.=) pid;
    IF NOT FOUND THEN
        RAISE NOTICE 'role % had no account of program "%"', login, program;
    END IF;
    -- the role stays a loyalty_partner while it maps an account of another program
    IF NOT EXISTS (SELECT FROM @extschema@.partner_login pl WHERE pl.login OPERATOR(pg_catalog.=) revoke_partner.login)
       AND pg_catalog.pg_has_role(login, 'loyalty_partner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('REVOKE loyalty_partner FROM %I', pg_catalog.pg_get_userbyid(login));
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.revoke_partner(regrole, text) IS 'Ends a partner login''s access to its account of a program (and its loyalty_partner membership when it maps no other).';

-- The policies.  Staff see every row; a partner the rows of its account.
-- partner_login's own policy shows a partner its own mapping, which the
-- others' policies read.
ALTER TABLE @extschema@.partner_login ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff ON @extschema@.partner_login TO loyalty_reader, loyalty_operator, loyalty_admin USING (true);
CREATE POLICY partner ON @extschema@.partner_login FOR SELECT TO loyalty_partner
    USING (login OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)));

DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['account', 'account_history', 'member', 'ledger', 'balance_folded', 'balance_delta',
                             'tier_history', 'redemption'] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('CREATE POLICY staff ON @extschema@.%I TO loyalty_reader, loyalty_operator, loyalty_admin'
                                  ' USING (true) WITH CHECK (true)', t);
        EXECUTE pg_catalog.format('CREATE POLICY partner ON @extschema@.%I FOR SELECT TO loyalty_partner USING (EXISTS ('
                                  'SELECT FROM @extschema@.partner_login pl'
                                  ' WHERE pl.program_id OPERATOR(pg_catalog.=) %I.program_id'
                                  ' AND pl.account_key OPERATOR(pg_catalog.=) %I.account_key))', t, t, t);
    END LOOP;
END
$policies$;

-- The views read as their reader, so that the policies apply to it.
ALTER VIEW @extschema@.balance SET (security_invoker = true);
ALTER VIEW @extschema@.accrual_month SET (security_invoker = true);

GRANT USAGE ON SCHEMA @extschema@ TO loyalty_partner;
GRANT SELECT ON @extschema@.program, @extschema@.reward, @extschema@.partner_login, @extschema@.member,
                @extschema@.ledger, @extschema@.balance_folded, @extschema@.balance_delta, @extschema@.tier_history,
                @extschema@.redemption, @extschema@.balance, @extschema@.accrual_month
TO loyalty_partner;
-- of its account row, what the partner may know: not its cohort (pilot or
-- control), its potential spend or the bookkeeping columns
GRANT SELECT (program_id, account_key, cooperation_model, industry, region, tier, tier_since, enrolled_from, enrolled_at)
    ON @extschema@.account TO loyalty_partner;
GRANT SELECT ON @extschema@.partner_login TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT EXECUTE ON FUNCTION @extschema@.grant_partner(regrole, text, text, text),
                          @extschema@.revoke_partner(regrole, text) TO loyalty_admin;
-- balance() reads as its caller: the calendar helpers it calls, and the
-- partner check, are the callers' too (they read the program's settings only)
GRANT EXECUTE ON FUNCTION @extschema@._may_read(text, text), @extschema@._is_staff(),
                          @extschema@._today(integer), @extschema@._rolling_start(integer),
                          @extschema@._window_months(interval)
TO loyalty_reader, loyalty_operator, loyalty_admin, loyalty_partner;

-- ---------------------------------------------------------------------------
-- The partner's cabinet: settlement and rewards.  A partner reads, for its
-- own account, the period results, rebates, MDF wallet and claims, awards,
-- member points, benefits and the rewards it may redeem, and redeems for
-- itself (loyalty.redeem checks loyalty._may_act first).  The reading
-- functions that run as the owner (statement, benefits, expiring_points,
-- tier and balance as of a date) check loyalty._may_read first.  Cancelling
-- a redemption stays the operator's: it is a return, decided by the vendor.
-- ---------------------------------------------------------------------------

-- Row-level security on the account-scoped tables of settlement and
-- rewards, as on the ones above.  tier_grant (who granted a tier, and why)
-- is not granted to partners; the policy keeps it closed all the same.
DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['settlement_account', 'tier_grant', 'award', 'member_points', 'mdf_accrual', 'mdf_claim',
                             'settlement_line', 'rebate_posting'] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('CREATE POLICY staff ON @extschema@.%I TO loyalty_reader, loyalty_operator, loyalty_admin'
                                  ' USING (true) WITH CHECK (true)', t);
        EXECUTE pg_catalog.format('CREATE POLICY partner ON @extschema@.%I FOR SELECT TO loyalty_partner USING (EXISTS ('
                                  'SELECT FROM @extschema@.partner_login pl'
                                  ' WHERE pl.program_id OPERATOR(pg_catalog.=) %I.program_id'
                                  ' AND pl.account_key OPERATOR(pg_catalog.=) %I.account_key))', t, t, t);
    END LOOP;
END
$policies$;

-- The catalogue: a partner sees the rewards it may redeem today: active,
-- within their validity window (the program's calendar), and of a minimum
-- tier its tier reaches, the tier as loyalty.tier() tells it, as redeem()
-- checks it.  Stock and limits are not filtered: an item out of stock is
-- still on offer.  Staff see the whole catalogue.
ALTER TABLE @extschema@.reward ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff ON @extschema@.reward TO loyalty_reader, loyalty_operator, loyalty_admin USING (true) WITH CHECK (true);
CREATE POLICY partner ON @extschema@.reward FOR SELECT TO loyalty_partner USING (
    active AND EXISTS (
        SELECT FROM @extschema@.partner_login pl JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) pl.program_id
        CROSS JOIN LATERAL (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today) d
        WHERE pl.program_id OPERATOR(pg_catalog.=) reward.program_id
          AND (reward.valid_from IS NULL OR reward.valid_from OPERATOR(pg_catalog.<=) d.today)
          AND (reward.valid_until IS NULL OR d.today OPERATOR(pg_catalog.<) reward.valid_until)
          AND (reward.min_tier IS NULL
               OR coalesce((SELECT t.rank FROM @extschema@.tiers(p.ladder) t
                            WHERE t.name OPERATOR(pg_catalog.=) @extschema@.tier(p.name, pl.account_key)), 0)
                  OPERATOR(pg_catalog.>=)
                  coalesce((SELECT t.rank FROM @extschema@.tiers(p.ladder) t
                            WHERE t.name OPERATOR(pg_catalog.=) reward.min_tier), 0))));

-- The leaderboard (src/sql/62_members.sql) runs as its owner, so that a
-- partner gets its true rank among all accounts, but shows a partner the
-- rows of its own account only: the filter applies after the ranking and,
-- the view being a security barrier, before any predicate of the reader's.
-- Ranks, never another account's key or points: a rank is what a
-- leaderboard is for, and it tells how many did better, not who or how much.
-- Staff see every row.
CREATE OR REPLACE VIEW @extschema@.leaderboard WITH (security_barrier = true) AS
WITH earned AS (
    SELECT l.program_id, p.name AS program, l.account_key, l.member_id,
           (l.posted_at AT TIME ZONE p.time_zone)::date AS day, l.points
    FROM @extschema@.ledger l
    JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) l.program_id
    WHERE l.kind IN ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'award')
), per AS (
    SELECT e.program_id, e.program, g.period, pg_catalog.date_trunc(g.period, e.day::timestamp)::date AS period_start,
           s.scope, e.account_key, CASE WHEN s.scope OPERATOR(pg_catalog.=) 'member' THEN e.member_id END AS member_id,
           pg_catalog.sum(e.points)::bigint AS points
    FROM earned e
    CROSS JOIN (VALUES ('month'), ('quarter'), ('year')) AS g(period)
    CROSS JOIN (VALUES ('account'), ('member')) AS s(scope)
    WHERE s.scope OPERATOR(pg_catalog.=) 'account' OR e.member_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7
)
SELECT x.program_id, x.program, x.period, x.period_start, x.scope, x.rank, x.account_key, x.member_id, x.points
FROM (SELECT r.program_id, r.program, r.period, r.period_start, r.scope,
             pg_catalog.rank() OVER (PARTITION BY r.program_id, r.period, r.period_start, r.scope ORDER BY r.points DESC) AS rank,
             r.account_key, r.member_id, r.points
      FROM per r) x
WHERE (SELECT @extschema@._is_staff())
   OR EXISTS (SELECT FROM @extschema@.partner_login pl
              WHERE pl.login OPERATOR(pg_catalog.=) @extschema@._caller()
                AND pl.program_id OPERATOR(pg_catalog.=) x.program_id AND pl.account_key OPERATOR(pg_catalog.=) x.account_key);

-- account_status: one row per enrolled account, the row a BI tool starts
-- from (with the KPI views of src/sql/71_kpi.sql).  For partners: a partner may not read
-- its account's cohort or potential spend (column privileges of
-- loyalty.account), and a view checks the privileges of every column its
-- definition names, whichever its reader selects.  So the view reads the
-- two through account_private, which runs as its owner and shows staff every
-- row, a partner none: a partner's row of account_status has them NULL.  Its
-- filter names no column: the planner makes it a one-time filter (a gate
-- evaluated once, before the scan below it starts), so no predicate of the
-- reader's sees a row when it is false.  Not a security barrier: that would
-- keep the join's key out of the scan, and each row of account_status would
-- then read every account.
CREATE VIEW @extschema@.account_private AS
SELECT a.program_id, a.account_key, a.cohort, a.potential_spend
FROM @extschema@.account a
WHERE (SELECT @extschema@._is_staff());
COMMENT ON VIEW @extschema@.account_private IS 'The columns of loyalty.account a partner''s login may not read (cohort, potential spend), all rows for loyalty''s roles, none for a partner: loyalty.account_status reads them through it.';
COMMENT ON COLUMN @extschema@.account_private.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.account_private.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.account_private.cohort IS 'pilot or control (NULL: not in the experiment).';
COMMENT ON COLUMN @extschema@.account_private.potential_spend IS 'Estimated annual wallet (share of wallet''s denominator).';
CREATE VIEW @extschema@.account_status WITH (security_invoker = true) AS
SELECT p.name AS program, a.account_key, a.cooperation_model, a.industry, a.region, ap.cohort,
       a.tier, a.tier_since,
       coalesce(b.points, 0) AS points, coalesce(b.qualifying, 0) AS qualifying,
       coalesce(r.rolling, 0) AS rolling_qualifying,
       n.name AS next_tier, n.threshold AS next_tier_threshold, n.gap AS gap_to_next_tier,
       coalesce(b.rebate, 0) AS rebate, coalesce(b.mdf, 0) AS mdf, ap.potential_spend,
       b.last_doc_date AS last_invoice_date,
       t.today OPERATOR(pg_catalog.-) b.last_doc_date AS days_since_last_invoice,
       coalesce(w.trainings, 0) AS trainings_completed, coalesce(w.certifications, 0) AS certifications
FROM @extschema@.account a
JOIN @extschema@.program p ON p.program_id OPERATOR(pg_catalog.=) a.program_id
CROSS JOIN LATERAL (SELECT (pg_catalog.now() AT TIME ZONE p.time_zone)::date AS today) t
-- staff only: a partner's row has them NULL
LEFT JOIN @extschema@.account_private ap ON ap.program_id OPERATOR(pg_catalog.=) a.program_id
                                         AND ap.account_key OPERATOR(pg_catalog.=) a.account_key
LEFT JOIN @extschema@.balance b ON b.program_id OPERATOR(pg_catalog.=) a.program_id
                               AND b.account_key OPERATOR(pg_catalog.=) a.account_key
-- the tier window: whole calendar months ending with the current one (as
-- loyalty.balance() counts it)
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(m.qualifying) AS rolling
    FROM @extschema@.accrual_month m
    WHERE m.program_id OPERATOR(pg_catalog.=) a.program_id AND m.account_key OPERATOR(pg_catalog.=) a.account_key
      AND m.month OPERATOR(pg_catalog.<=) t.today
      AND m.month OPERATOR(pg_catalog.>=) (pg_catalog.date_trunc('month', t.today::timestamp)
          OPERATOR(pg_catalog.-) pg_catalog.make_interval(months => GREATEST(1,
              (pg_catalog.date_part('year', p.qualification_window) OPERATOR(pg_catalog.*) 12
               OPERATOR(pg_catalog.+) pg_catalog.date_part('month', p.qualification_window)
               OPERATOR(pg_catalog.+) pg_catalog.round(pg_catalog.date_part('day', p.qualification_window) OPERATOR(pg_catalog./) 30))::integer)
              OPERATOR(pg_catalog.-) 1))::date) r ON true
LEFT JOIN LATERAL @extschema@.next_tier(p.ladder, coalesce(r.rolling, 0)) n ON true
-- approved training and certification actions, its members' included
LEFT JOIN LATERAL (
    SELECT pg_catalog.sum(x.quantity)::bigint AS trainings,
           pg_catalog.sum(x.quantity) FILTER (WHERE ar.category OPERATOR(pg_catalog.=) 'certification')::bigint AS certifications
    FROM @extschema@.award x
    JOIN @extschema@.action_rule ar ON ar.program_id OPERATOR(pg_catalog.=) x.program_id
                                   AND ar.action OPERATOR(pg_catalog.=) x.action AND ar.valid_from OPERATOR(pg_catalog.=) x.rule_from
    WHERE x.program_id OPERATOR(pg_catalog.=) a.program_id AND x.account_key OPERATOR(pg_catalog.=) a.account_key
      AND x.status OPERATOR(pg_catalog.=) 'approved' AND ar.category IN ('training', 'certification')) w ON true;
COMMENT ON VIEW @extschema@.account_status IS 'One row per enrolled account: segment, cohort, tier, balances, progress to the next tier, trainings and certifications. The row a BI tool starts from.';
COMMENT ON COLUMN @extschema@.account_status.program IS 'The program''s name.';
COMMENT ON COLUMN @extschema@.account_status.account_key IS 'The ERP''s customer key.';
COMMENT ON COLUMN @extschema@.account_status.cooperation_model IS 'Segment: direct, distributor, integrator or reseller.';
COMMENT ON COLUMN @extschema@.account_status.industry IS 'Segment: industry.';
COMMENT ON COLUMN @extschema@.account_status.region IS 'Segment: region.';
COMMENT ON COLUMN @extschema@.account_status.cohort IS 'pilot or control (NULL: not in the experiment).';
COMMENT ON COLUMN @extschema@.account_status.tier IS 'Current tier (NULL below the first threshold).';
COMMENT ON COLUMN @extschema@.account_status.tier_since IS 'When the current tier was reached.';
COMMENT ON COLUMN @extschema@.account_status.points IS 'Points available.';
COMMENT ON COLUMN @extschema@.account_status.qualifying IS 'Lifetime qualifying spend, program currency.';
COMMENT ON COLUMN @extschema@.account_status.rolling_qualifying IS 'Qualifying spend of the tier window (the program''s qualification window in whole months, the current one included).';
COMMENT ON COLUMN @extschema@.account_status.next_tier IS 'The tier above the rolling spend (NULL at the top).';
COMMENT ON COLUMN @extschema@.account_status.next_tier_threshold IS 'Its threshold.';
COMMENT ON COLUMN @extschema@.account_status.gap_to_next_tier IS 'Qualifying spend still to go to the next tier.';
COMMENT ON COLUMN @extschema@.account_status.rebate IS 'Rebate money in the wallet.';
COMMENT ON COLUMN @extschema@.account_status.mdf IS 'Market development funds in the wallet.';
COMMENT ON COLUMN @extschema@.account_status.potential_spend IS 'Estimated annual wallet (share of wallet''s denominator).';
COMMENT ON COLUMN @extschema@.account_status.last_invoice_date IS 'Date of the latest document accrued.';
COMMENT ON COLUMN @extschema@.account_status.days_since_last_invoice IS 'Days from the latest document to today (the program''s calendar).';
COMMENT ON COLUMN @extschema@.account_status.trainings_completed IS 'Approved actions of category training or certification (loyalty.action_rule.category), the account''s and its members'', all time; quantities summed.';
COMMENT ON COLUMN @extschema@.account_status.certifications IS 'Of trainings_completed, the certifications.';
GRANT SELECT ON @extschema@.account_status TO loyalty_reader, loyalty_operator, loyalty_admin;

-- The views read as their reader, so that the policies apply to it.
ALTER VIEW @extschema@.account_benefits SET (security_invoker = true);
ALTER VIEW @extschema@.member_balance SET (security_invoker = true);

GRANT SELECT ON @extschema@.settlement_account, @extschema@.award, @extschema@.member_points, @extschema@.mdf_accrual,
                @extschema@.mdf_claim, @extschema@.settlement_line, @extschema@.rebate_posting, @extschema@.tier_benefit,
                @extschema@.account_benefits, @extschema@.member_balance, @extschema@.leaderboard,
                @extschema@.account_status, @extschema@.account_private,
                @extschema@.action_rule  -- account_status counts its trainings by their category
TO loyalty_partner;
GRANT SELECT ON @extschema@.account_private TO loyalty_reader, loyalty_operator, loyalty_admin;
-- the leaderboard's filter calls them as its reader
GRANT EXECUTE ON FUNCTION @extschema@._caller() TO loyalty_reader, loyalty_operator, loyalty_admin, loyalty_partner;
-- Who may execute what.  Deny by default: no function of the extension is
-- executable by PUBLIC unless it is granted here.  Internal functions (the
-- ones whose name starts with _) and trigger functions are the owner's
-- alone (a trigger fires whatever its function's privileges; creating one
-- needs EXECUTE, which no role but the owner has, so nobody can add an
-- accrual trigger of their own).  The documented API is granted to the
-- loyalty role that needs it, next to each function's definition, and the
-- reading functions below.  sql/grants.sql checks every function against an
-- explicit list of these decisions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;

-- The types: input, output, operators and the pure functions over a value
-- (no SQL, no table, nothing but their arguments), for anyone who holds one.
GRANT EXECUTE ON FUNCTION
    @extschema@.tier_ladder_in(pg_catalog.cstring), @extschema@.tier_ladder_out(@extschema@.tier_ladder),
    @extschema@.tier_ladder_recv(pg_catalog.internal), @extschema@.tier_ladder_send(@extschema@.tier_ladder),
    @extschema@.tier_ladder_eq(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_ne(@extschema@.tier_ladder, @extschema@.tier_ladder),
    @extschema@.tier_ladder_hash(@extschema@.tier_ladder),
    @extschema@.tier_of(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tier_rank(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.next_tier(@extschema@.tier_ladder, pg_catalog.numeric),
    @extschema@.tiers(@extschema@.tier_ladder),
    @extschema@.rebate_schedule_in(pg_catalog.cstring), @extschema@.rebate_schedule_out(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_recv(pg_catalog.internal), @extschema@.rebate_schedule_send(@extschema@.rebate_schedule),
    @extschema@.rebate_schedule_eq(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_ne(@extschema@.rebate_schedule, @extschema@.rebate_schedule),
    @extschema@.rebate_schedule_hash(@extschema@.rebate_schedule),
    @extschema@.rebate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_rate(@extschema@.rebate_schedule, pg_catalog.numeric),
    @extschema@.rebate_mode(@extschema@.rebate_schedule),
    @extschema@.brackets(@extschema@.rebate_schedule),
    -- the difference-in-differences aggregate and its t quantile: pure
    -- functions of their arguments (the aggregate's support functions run
    -- with its owner's EXECUTE right and stay the owner's)
    @extschema@.did(boolean, numeric, numeric),
    @extschema@.t_quantile(double precision, double precision)
TO PUBLIC;

-- Reading and checking: every loyalty role (they read the tables anyway).
GRANT EXECUTE ON FUNCTION
    @extschema@.balance(text, text), @extschema@.tier(text, text),
    @extschema@.explain_points(regclass, text[]), @extschema@.explain_points(regclass, "any"),
    @extschema@.verify(text),
    -- the caps of unfolded postings, for the view loyalty.balance (run as its reader)
    @extschema@.pending_caps(integer, text)
TO loyalty_reader, loyalty_operator, loyalty_admin;
-- a partner's login reads its own account through them (src/sql/80_partner.sql)
GRANT EXECUTE ON FUNCTION @extschema@.balance(text, text), @extschema@.tier(text, text),
                          @extschema@.pending_caps(integer, text)
TO loyalty_partner;
-- and its statement, benefits, expiring points, tier and balance as of a
-- date, and redeems for itself: each of them checks the partner's account
-- first (loyalty._may_read, loyalty._may_act).  Not cancel_redemption (a
-- return, decided by the operator).
GRANT EXECUTE ON FUNCTION @extschema@.tier(text, text, date), @extschema@.balance(text, text, date),
                          @extschema@.benefits(text, text), @extschema@.statement(text, text, date),
                          @extschema@.expiring_points(text, text, date),
                          @extschema@.redeem(text, text, text, integer, text)
TO loyalty_partner;
