/*
 * keytype.h — account keys in C and in loyalty's tables (keytype.c).
 */
#ifndef LOYALTY_KEYTYPE_H
#define LOYALTY_KEYTYPE_H

#include "postgres.h"

#include "fmgr.h"

/*
 * The cast that turns an account key given as text (a parameter, an
 * unnested text array) into the type of loyalty's account_key columns:
 * text, or integer/bigint after loyalty.distribute() (src/sql/10_types.sql).
 * Append it to the expression: "$2" KEY_CAST, "pg_catalog.unnest($2" KEYS_CAST ")".
 */
#define KEY_CAST "::loyalty.account_key"
#define KEYS_CAST "::loyalty.account_key[]"
/*
 * A key given as text, as the value of a key column in INSERT ... VALUES.
 * Citus routes such an INSERT by the value, and (12.1) cannot evaluate a
 * parameter cast straight to a domain ("failed to evaluate partition key
 * in insert"); with an operator between them it evaluates both.
 */
#define KEY_VALUE(p) "(" p " OPERATOR(pg_catalog.||) '')" KEY_CAST
/* and back, for a key read into C as text */
#define KEY_TEXT "::pg_catalog.text"

extern Datum loyalty_key_datum(Oid type, const char *key);
extern RegProcedure loyalty_key_eq(Oid type);
extern Oid	loyalty_key_collation(Oid type);
extern Oid	loyalty_key_type(void);
extern text *loyalty_key_arg(FunctionCallInfo fcinfo, int arg);

#endif
