/*
 * header_race.h — a header change and a line statement of the same invoice
 * in two concurrent transactions: each side records what it used, and at
 * commit (or PREPARE) whichever commits second finds the difference and
 * restates the accounts involved.  See header_race.c.
 */
#ifndef LOYALTY_HEADER_RACE_H
#define LOYALTY_HEADER_RACE_H

#include "mapping.h"
#include "storage/itemptr.h"

/*
 * Line side: a line statement read header key's facts from another
 * transaction's row version (relation, ctid, xmin).
 */
extern void header_race_line_read(Attachment *att, Datum key, const HeaderFacts *hf,
								  Oid rel, ItemPointer tid, TransactionId xmin);

/*
 * Header side: a header statement changed key's facts from of to nf.  It
 * returns true when the statement must report the lines it moves of that
 * header (header_race_line_moved), the first time in the transaction.
 */
extern bool header_race_header_changed(Attachment *att, Datum key, const HeaderFacts *of,
									   const HeaderFacts *nf);
extern void header_race_line_moved(Attachment *att, Datum key, Oid tableoid, ItemPointer ctid,
								   TransactionId xmin);
/* Ends the lines' report of one header statement. */
extern void header_race_statement_done(void);

/* Shared by both sides and accrual.c */
extern bool header_facts_equal(const HeaderFacts *a, const HeaderFacts *b);
extern HeaderFacts *header_facts_copy(const HeaderFacts *hf);

#endif
