/*
 * keytype.c — account keys in C and in loyalty's tables.  C handles an
 * account key as the text the ERP's key column prints (its output
 * function); loyalty's account_key columns are text, or integer/bigint
 * once loyalty.distribute() laid them out around an ERP table distributed
 * by such a key (Citus co-locates only columns of one type).  SQL statements
 * convert with KEY_CAST and KEY_TEXT; the few places that build a row or an
 * index scan key themselves convert here, by the column's own type.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "keytype.h"

/* The value of key in a column of type type (text, integer or bigint). */
Datum
loyalty_key_datum(Oid type, const char *key)
{
	switch (type)
	{
		case TEXTOID:
			return CStringGetTextDatum(key);
		case INT4OID:
			return DirectFunctionCall1(int4in, CStringGetDatum(key));
		case INT8OID:
			return DirectFunctionCall1(int8in, CStringGetDatum(key));
	}
	elog(ERROR, "account keys of type %s are not supported", format_type_be(type));
	return (Datum) 0;
}

/* Equality of the key column's type, for an index scan key. */
RegProcedure
loyalty_key_eq(Oid type)
{
	switch (type)
	{
		case TEXTOID:
			return F_TEXTEQ;
		case INT4OID:
			return F_INT4EQ;
		case INT8OID:
			return F_INT8EQ;
	}
	elog(ERROR, "account keys of type %s are not supported", format_type_be(type));
	return InvalidOid;
}

/* The collation a scan key on the column compares with. */
Oid
loyalty_key_collation(Oid type)
{
	return type == TEXTOID ? DEFAULT_COLLATION_OID : InvalidOid;
}

/* The type of loyalty's account_key columns: the base type of the domain. */
Oid
loyalty_key_type(void)
{
	Oid			domain = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid, CStringGetDatum("account_key"),
										 ObjectIdGetDatum(get_namespace_oid("loyalty", false)));

	if (!OidIsValid(domain))
		elog(ERROR, "type loyalty.account_key does not exist");
	return getBaseType(domain);
}

/*
 * An account key argument as text: the API takes keys as text, and redeem
 * also as a number (for Citus to route it by an integer distribution column).
 */
text *
loyalty_key_arg(FunctionCallInfo fcinfo, int arg)
{
	Oid		   *argtypes;
	int			nargs;
	Oid			type;
	Oid			output;
	bool		varlena;

	/* the declared type: the call's expression is not always at hand */
	(void) get_func_signature(fcinfo->flinfo->fn_oid, &argtypes, &nargs);
	if (arg >= nargs)
		elog(ERROR, "function %u has no argument %d", fcinfo->flinfo->fn_oid, arg + 1);
	type = argtypes[arg];
	if (type == TEXTOID)
		return PG_GETARG_TEXT_PP(arg);
	getTypeOutputInfo(type, &output, &varlena);
	return cstring_to_text(OidOutputFunctionCall(output, PG_GETARG_DATUM(arg)));
}
