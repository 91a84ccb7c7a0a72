-- Retrospective volume rebates at settlement.  Placeholder: the rebate work
-- replaces this file (the settlement frame in 50_settlement.sql calls it by name).

CREATE FUNCTION @extschema@._settle_rebates(program_id integer, period_start date, period_end date) RETURNS numeric
LANGUAGE sql SET search_path = pg_catalog, pg_temp
RETURN 0::numeric;
COMMENT ON FUNCTION @extschema@._settle_rebates(integer, date, date) IS
    'Internal: settlement step that trues up the rebates of the period [period_start, period_end] (both days included) and returns the money trued up. Placeholder returning 0, replaced by the rebate work.';
REVOKE ALL ON FUNCTION @extschema@._settle_rebates(integer, date, date) FROM PUBLIC;
