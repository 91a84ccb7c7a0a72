/*
 * reconcile.h — what the rows of an attached ERP table should have accrued,
 * recomputed with the trigger's own points function: read as the caller,
 * compared and posted as the extension owner.
 */
#ifndef LOYALTY_RECONCILE_H
#define LOYALTY_RECONCILE_H

#include "mapping.h"

/*
 * The columns of a facts query: SELECT RECONCILE_FACTS_COLUMNS FROM
 * (<loyalty._facts_sql(attachment)>) f.
 */
#define RECONCILE_FACTS_COLUMNS "f.row_key, " RECONCILE_FACT_VALUES
#define RECONCILE_FACT_VALUES \
	"f.account_key, f.doc_date, f.amount, f.quantity, f.product_line," \
	" f.currency, f.doc_type, f.due_date, f.paid_date, f.header_found"
#define RECONCILE_FACTS_NCOLUMNS 11

/* A row of a facts query as the points function takes it. */
extern void reconcile_row_facts(Attachment *att, HeapTuple tup, TupleDesc desc, RowFacts *f);

/* The account of a row as the points function takes it (auto enrolment included). */
extern AccountInfo *reconcile_account(Program *prog, const char *key);

/* Runs a query as the extension owner; the caller is connected to SPI. */
extern int	reconcile_owner_query(const char *sql, int nargs, Oid *argtypes,
								  Datum *values, const char *nulls, bool read_only);

/* Restates accounts of an attachment (all when n is 0) from since's month, latest snapshot. */
extern int	reconcile_shard_calls(Oid source, const char *account, const char *call, char ***sqls);
extern Oid	reconcile_enter_shard(text *name, Oid *shard);
extern Oid	reconcile_account_table(void);
extern const char *reconcile_step(text *name, const char *const *steps, int n, const char *what);
extern void reconcile_restate(int32 attachment_id, char **accounts, int n, DateADT since,
							  const char *what);

#endif
