/*
 * accrual.h — the statement-level processing shared by the accrual trigger,
 * the header trigger and backfill.
 */
#ifndef LOYALTY_ACCRUAL_H
#define LOYALTY_ACCRUAL_H

#include "mapping.h"
#include "executor/spi.h"
#include "utils/portal.h"
#include "utils/tuplestore.h"

/* A set of source rows, added (sign +1) or removed (sign -1). */
typedef struct RowSet
{
	Tuplestorestate *store;		/* transition table, or */
	HeapTuple  *tuples;			/* rows fetched by a query, or */
	int			ntuples;
	Portal		portal;			/* a cursor over such rows (one whole-row column) */
	bool		same_rows;		/* the previous set's rows, again */
	bool		report_moves;	/* portal: report the lines' identities (header_race.c) */
	int			sign;
	HTAB	   *header_facts;	/* header key -> HeaderFacts (a keymap); NULL: look up */
	/* the chunk being processed (accrual.c) */
	int			next;			/* position in tuples */
	int			nrows;
	MinimalTuple *mrows;		/* from store */
	HeapTuple  *hrows;			/* from tuples or portal */
	SPITupleTable *tuptable;	/* portal's rows, freed with the chunk */
	struct StrEntry **accounts; /* filled by the first pass: each row's account */
} RowSet;

extern void accrual_process(Attachment *att, TupleDesc desc, RowSet *sets, int nsets,
							const char *reason);
extern HTAB *accrual_header_map(MemoryContext cxt);
extern const HeaderFacts *accrual_stashed_header(Attachment *att, Datum key);

#endif
