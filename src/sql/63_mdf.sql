-- Market development funds at settlement.  Placeholder: the MDF work
-- replaces this file (the settlement frame in 50_settlement.sql calls it by name).

CREATE FUNCTION @extschema@._settle_mdf(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE sql SET search_path = pg_catalog, pg_temp
RETURN 0::numeric;
COMMENT ON FUNCTION @extschema@._settle_mdf(integer, date, date) IS
    'Internal: settlement step that accrues the MDF of the period [period_start, period_end] (both days included) and returns the money accrued. Placeholder returning 0, replaced by the MDF work.';
REVOKE ALL ON FUNCTION @extschema@._settle_mdf(integer, date, date) FROM PUBLIC;
