/*
 * accrual.h — the statement-level processing shared by the accrual trigger,
 * the header trigger and backfill.
 */
#ifndef LOYALTY_ACCRUAL_H
#define LOYALTY_ACCRUAL_H

#include "mapping.h"
#include "utils/tuplestore.h"

/* A set of source rows, added (sign +1) or removed (sign -1). */
typedef struct RowSet
{
	Tuplestorestate *store;		/* transition table, or */
	HeapTuple  *tuples;			/* rows fetched by a query */
	int			ntuples;
	int			sign;
	HTAB	   *header_facts;	/* header key -> HeaderFacts (a keymap); NULL: look up */
	struct StrEntry **accounts; /* filled by the first pass: each row's account */
} RowSet;

extern void accrual_process(Attachment *att, TupleDesc desc, RowSet *sets, int nsets,
							const char *reason);
extern HTAB *accrual_header_map(MemoryContext cxt);
extern const HeaderFacts *accrual_stashed_header(Attachment *att, Datum key);

#endif
