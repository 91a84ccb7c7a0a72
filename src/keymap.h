/*
 * keymap.h — hash tables keyed by a value of an ERP column's own type,
 * compared with the type's own hash function and equality (and the
 * column's collation): numeric 1 and 1.0, char(n) with and without
 * trailing blanks, citext or a nondeterministic collation match exactly as
 * they do in SQL, never by their text form.
 */
#ifndef LOYALTY_KEYMAP_H
#define LOYALTY_KEYMAP_H

#include "fmgr.h"
#include "utils/hsearch.h"

typedef struct KeyType
{
	Oid			typid;
	Oid			collation;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	FmgrInfo	hash;
	FmgrInfo	eq;
} KeyType;

typedef struct KeyMapKey
{
	Datum		value;
	const KeyType *type;
} KeyMapKey;

typedef struct KeyMapEntry
{
	KeyMapKey	key;			/* must be first */
	bool		in_new;			/* seen in an added row */
	void	   *value;
} KeyMapEntry;

/* The type's hash and equality; a clear error if it has none. */
extern KeyType *keytype_get(Oid typid, Oid collation, MemoryContext cxt);
extern HTAB *keymap_create(const char *name, MemoryContext cxt);
/* Enters a key, copying the value into cxt when it is new. */
extern KeyMapEntry *keymap_enter(HTAB *map, const KeyType *type, Datum value,
								 MemoryContext cxt, bool *found);
extern KeyMapEntry *keymap_find(HTAB *map, const KeyType *type, Datum value);
/* The type's default equality operator as SQL text: OPERATOR(schema.=). */
extern char *keytype_equality_operator(Oid typid);
/* Every key of a map as one SQL array of the key type. */
extern Datum keymap_key_array(HTAB *map, const KeyType *type);
/* The value's text form, for messages and row keys. */
extern char *keytype_out(const KeyType *type, Datum value);

#endif
