
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
'The quantile t of Student''s t distribution with df degrees of freedom (df may be fractional): P(T <= t) = p. Accurate to about 1e-13; what loyalty.did() uses for its interval.';
