
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

-- account_key ---------------------------------------------------------------

-- The type of the account keys loyalty stores: text, unless
-- loyalty.distribute() laid the tables out around an ERP table distributed
-- by an integer or bigint customer key (Citus co-locates only tables whose
-- distribution columns have one type); it then re-creates this domain over
-- that type.  The API takes account keys as text; a statement compares or
-- stores one as p::@extschema@.account_key, which is the column's own type
-- on any layout (and no cast at all on text), so indexes and Citus's
-- routing by account still apply.  Used only inside function bodies and
-- statements, never by a column or a signature, so that it can be
-- re-created.  A view that hands a key column to a function taking text
-- writes key::pg_catalog.varchar::text: distribute() re-creates the views
-- from their stored definitions, and a cast from text to text leaves none.
-- A key given as text, as the value of a key column in INSERT ... VALUES,
-- is written (k OPERATOR(pg_catalog.||) '')::@extschema@.account_key: Citus
-- routes such an INSERT by that value and (12.1) cannot evaluate a parameter
-- cast straight to a domain ("failed to evaluate partition key in insert").
CREATE DOMAIN @extschema@.account_key AS text;
COMMENT ON DOMAIN @extschema@.account_key IS
'The type of loyalty''s account_key columns (text; integer or bigint after loyalty.distribute() around an ERP table distributed by such a key). Internal: statements cast account keys given as text to it.';
