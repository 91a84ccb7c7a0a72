/*
 * loyalty.h — declarations shared across the C files: the extension owner
 * switch, the backend caches and their invalidation.
 */
#ifndef LOYALTY_H
#define LOYALTY_H

#include "compat.h"

#include "executor/spi.h"
#include "utils/date.h"
#include "utils/numeric.h"

/* Writes to loyalty tables run as the extension owner with a pinned path. */
typedef struct OwnerScope
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_nest_level;
} OwnerScope;

extern Oid	loyalty_extension_owner(void);	/* under SPI */
extern void loyalty_enter_owner(OwnerScope *scope);
extern void loyalty_leave_owner(OwnerScope *scope);

/*
 * Cache validity.  Relcache invalidations of loyalty.program (sent by the
 * triggers on the configuration tables) clear config_valid; those of
 * loyalty.account (account and tier history changes) clear accounts_valid;
 * those of a mapped ERP table clear config_valid only if the table's
 * definition changed (loyalty_watched_changed).
 * Callbacks only flip flags: caches are rebuilt at the start of the next
 * statement, never under a running one.
 */
extern bool loyalty_config_valid;
extern bool loyalty_accounts_valid;
extern void loyalty_watch_relation(Oid relid);
extern bool loyalty_watched_changed(void);
extern void loyalty_set_sentinels(Oid program_rel, Oid account_rel);
extern void loyalty_check_version(void);

/* Errors of the public functions' parameters */
#define LOYALTY_PROGRAM_DETAIL "program is the name of a loyalty program, as given to loyalty.create_program()."
extern void loyalty_require(bool isnull, const char *param, const char *detail, const char *hint);

/* SPI helpers */
extern void loyalty_spi_check(int ret, int expected, const char *what);
extern void loyalty_rethrow_as_own(ErrorData *edata) pg_attribute_noreturn();
extern SPIPlanPtr loyalty_prepare(const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr loyalty_prepare_batch(const char *sql, int nargs, Oid *argtypes);
extern int	loyalty_execute_latest(SPIPlanPtr plan, Datum *args, long tcount);
extern Datum loyalty_text_array(char **values, bool *nulls, int n);
extern Datum loyalty_int8_array(int64 *values, int n);
extern Datum loyalty_int4_array(int32 *values, int n);
extern Datum loyalty_numeric_array(Numeric *values, int n);
extern Datum loyalty_date_array(DateADT *values, int n);
extern Datum *loyalty_array_items(Datum array, Oid elemtype, const char *prefix, const char *name,
								  int expect, const char *expect_name, int *n);

/* Citus (citus.c) */
extern bool loyalty_citus_installed(void);
extern bool loyalty_citus_hash_table(Oid relid);
extern bool loyalty_citus_distributed(void);
extern int32 loyalty_node_group(void);
extern Oid	loyalty_account_shard(const char *name, text *account_key);
extern Oid	loyalty_trigger_table(Relation rel);
typedef struct ShardPlan
{
	SPIPlanPtr	plan;
	int64		shard;			/* the shard it was prepared for; 0: none */
} ShardPlan;
extern int64 loyalty_shard_key(void);
extern void loyalty_shard_leave(void);
extern const char *loyalty_colocated_shard(Oid table);
extern const char *loyalty_colocated_column(Oid table);
extern void *loyalty_shard_current(void);
extern void loyalty_shard_resume(void *shard);
extern const char *loyalty_table(const char *name);
extern Oid	loyalty_table_oid(const char *name);
extern bool loyalty_plan_stale(ShardPlan *p);
extern void loyalty_plan_forget(ShardPlan *p);

/* debits (debit.c): waits for the transactions still posting to an account */
extern int	loyalty_await_account(int32 program_id, text *account_key);

/* dates */
extern DateADT loyalty_month_start(DateADT d);
extern DateADT loyalty_add_months(DateADT d, int months);

#endif
