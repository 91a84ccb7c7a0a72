/*
 * append.h — appending rows to loyalty's tables with heap and index calls.
 */
#ifndef LOYALTY_APPEND_H
#define LOYALTY_APPEND_H

#include "access/htup.h"
#include "utils/relcache.h"

/*
 * Opens loyalty.<relname> for appending rows with exactly the columns
 * names[0..n), whose positions go to col[]; gives its row descriptor.  NULL
 * when the table must be written through SQL instead (see append.c).
 */
extern Relation append_open(const char *relname, const char *const *names, int n, int *col,
							TupleDesc *desc);

/* Inserts the tuples with their index entries, and closes the table. */
extern void append_close(Relation rel, HeapTuple *tuples, int n);

#endif
