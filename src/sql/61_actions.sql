-- Non-purchase actions.  Placeholder: the actions work replaces this file
-- (tier qualification on action counts calls it by name).

CREATE FUNCTION @extschema@._action_counts(program_id integer, action text, from_date date, to_date date)
RETURNS TABLE (account_key text, actions bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULL::text, NULL::bigint WHERE false $$;
COMMENT ON FUNCTION @extschema@._action_counts(integer, text, date, date) IS
    'Internal: approved actions of a kind per account dated in [from_date, to_date), for tier qualification on action counts. Placeholder returning no rows, replaced by the actions work.';
REVOKE ALL ON FUNCTION @extschema@._action_counts(integer, text, date, date) FROM PUBLIC;
