/*
 * keymap.c — hash tables keyed by typed values (see keymap.h).  Used for the
 * header keys of a statement's lines, so that a line finds its header
 * exactly as the SQL join in verify() and backfill() does.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_operator.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "keymap.h"

KeyType *
keytype_get(Oid typid, Oid collation, MemoryContext cxt)
{
	TypeCacheEntry *tc = lookup_type_cache(typid, TYPECACHE_HASH_PROC_FINFO | TYPECACHE_EQ_OPR_FINFO);
	KeyType    *kt;

	if (!OidIsValid(tc->hash_proc) || !OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s has no hash function and equality operator", format_type_be(typid)),
				 errdetail("loyalty matches invoice lines with their header by the key type's own equality."),
				 errhint("Use a header key column of a hashable type such as integer, bigint, text or uuid.")));
	kt = MemoryContextAllocZero(cxt, sizeof(KeyType));
	kt->typid = typid;
	kt->collation = collation;
	get_typlenbyvalalign(typid, &kt->typlen, &kt->typbyval, &kt->typalign);
	fmgr_info_copy(&kt->hash, &tc->hash_proc_finfo, cxt);
	fmgr_info_copy(&kt->eq, &tc->eq_opr_finfo, cxt);
	return kt;
}

static uint32
keymap_hash(const void *key, Size keysize)
{
	const KeyMapKey *k = key;

	return DatumGetUInt32(FunctionCall1Coll((FmgrInfo *) &k->type->hash, k->type->collation, k->value));
}

static int
keymap_match(const void *a, const void *b, Size keysize)
{
	const KeyMapKey *x = a,
			   *y = b;

	return DatumGetBool(FunctionCall2Coll((FmgrInfo *) &x->type->eq, x->type->collation,
										  x->value, y->value)) ? 0 : 1;
}

HTAB *
keymap_create(const char *name, MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(KeyMapKey);
	ctl.entrysize = sizeof(KeyMapEntry);
	ctl.hash = keymap_hash;
	ctl.match = keymap_match;
	ctl.hcxt = cxt;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

KeyMapEntry *
keymap_enter(HTAB *map, const KeyType *type, Datum value, MemoryContext cxt, bool *found)
{
	KeyMapKey	k = {value, type};
	KeyMapEntry *e = hash_search(map, &k, HASH_ENTER, found);

	if (!*found)
	{
		/* the probe's value lives in row memory: keep a copy */
		MemoryContext old = MemoryContextSwitchTo(cxt);

		e->key.value = datumCopy(value, type->typbyval, type->typlen);
		e->key.type = type;
		e->in_new = false;
		e->value = NULL;
		MemoryContextSwitchTo(old);
	}
	return e;
}

KeyMapEntry *
keymap_find(HTAB *map, const KeyType *type, Datum value)
{
	KeyMapKey	k = {value, type};

	return hash_search(map, &k, HASH_FIND, NULL);
}

char *
keytype_out(const KeyType *type, Datum value)
{
	Oid			typoutput;
	bool		varlena;

	getTypeOutputInfo(type->typid, &typoutput, &varlena);
	return OidOutputFunctionCall(typoutput, value);
}

char *
keytype_equality_operator(Oid typid)
{
	TypeCacheEntry *tc = lookup_type_cache(typid, TYPECACHE_EQ_OPR);
	HeapTuple	tup;
	Form_pg_operator op;
	char	   *r;

	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("type %s has no equality operator", format_type_be(typid))));
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(tc->eq_opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", tc->eq_opr);
	op = (Form_pg_operator) GETSTRUCT(tup);
	r = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
				 NameStr(op->oprname));
	ReleaseSysCache(tup);
	return r;
}

PG_FUNCTION_INFO_V1(loyalty_equality_operator);
/* loyalty._equality_operator(regtype): the SQL twin, for verify's joins. */
Datum
loyalty_equality_operator(PG_FUNCTION_ARGS)
{
	/* not STRICT: a NULL call must reach the EXECUTE check, not be folded away */
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(keytype_equality_operator(getBaseType(PG_GETARG_OID(0)))));
}

/* Every key of a map as one SQL array of the key type: a look-up's parameter. */
Datum
keymap_key_array(HTAB *map, const KeyType *type)
{
	Datum	   *keys = palloc(sizeof(Datum) * (hash_get_num_entries(map) + 1));
	HASH_SEQ_STATUS seq;
	KeyMapEntry *e;
	int			n = 0;

	hash_seq_init(&seq, map);
	while ((e = hash_seq_search(&seq)) != NULL)
		keys[n++] = e->key.value;
	return PointerGetDatum(construct_array(keys, n, type->typid, type->typlen, type->typbyval, type->typalign));
}
