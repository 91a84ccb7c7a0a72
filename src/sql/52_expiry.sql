-- Point expiry at settlement.  Placeholders: the expiry work replaces this
-- file (the settlement frame in 50_settlement.sql calls these by name).

CREATE FUNCTION @extschema@._settle_expiry(program_id integer, period_start date, period_end date) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
RETURN 0::bigint;
COMMENT ON FUNCTION @extschema@._settle_expiry(integer, date, date) IS
    'Internal: settlement step that posts the expiry of points past their lifetime for the period [period_start, period_end] (both days included) and returns the points expired (>= 0). Placeholder returning 0, replaced by the point expiry work.';

CREATE FUNCTION @extschema@._expiring_soon(program_id integer, account_key text, as_of date) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN 0::bigint;
COMMENT ON FUNCTION @extschema@._expiring_soon(integer, text, date) IS
    'Internal: points of an account that expire at the next settlement after as_of, for loyalty.statement(). Placeholder returning 0, replaced by the point expiry work.';
REVOKE ALL ON FUNCTION @extschema@._settle_expiry(integer, date, date), @extschema@._expiring_soon(integer, text, date) FROM PUBLIC;
