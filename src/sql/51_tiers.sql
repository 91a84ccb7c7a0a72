
-- PLACEHOLDER of the rewards branch: the MDF rate of an account's tier is a
-- tier benefit owned by the settlement work (entitlement mdf_rate); this
-- stand-in reads it from the setting loyalty.test_mdf_rate so that the MDF
-- wallet can be tested before the merge, which replaces it.  Not in the
-- upgrade script.
CREATE FUNCTION @extschema@._mdf_rate(program_id integer, account_key text, as_of date) RETURNS numeric
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN coalesce(NULLIF(pg_catalog.current_setting('loyalty.test_mdf_rate', true), ''), '0')::pg_catalog.numeric;
COMMENT ON FUNCTION @extschema@._mdf_rate(integer, text, date) IS
'Internal: PLACEHOLDER until the merge with the tier benefits: the MDF rate (fraction of qualifying spend) of the account''s tier on as_of, read here from the setting loyalty.test_mdf_rate.';
REVOKE ALL ON FUNCTION @extschema@._mdf_rate(integer, text, date) FROM PUBLIC;
