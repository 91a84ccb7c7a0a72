/*
 * debit.c — what a debit (redemption, MDF claim) waits for before it reads
 * a balance.  The account lock (loyalty._lock_for_debit) orders debits among
 * themselves, but accrual never takes it: an ERP transaction posting a credit
 * note for the account may be in flight, its balance delta appended and not
 * committed.  A debit that checked the balance without it would spend points
 * the credit note is about to take back.  So the debit waits for every
 * transaction still in progress that appended a balance delta of the
 * account: the redemption waits for the ERP, never the reverse.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "keytype.h"
#include "loyalty.h"

/*
 * The full transaction id of xid, a transaction id not later than next:
 * in next's epoch, or the one before when xid is numerically above next's.
 */
static FullTransactionId
full_xid_before(FullTransactionId next, TransactionId xid)
{
	uint32		epoch = EpochFromFullTransactionId(next);

	if (xid > XidFromFullTransactionId(next) && epoch > 0)
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

/*
 * Reads balance_delta's primary key (program_id, account_key, posted_xid,
 * delta_no) for (program, account) and waits for each transaction still in
 * progress among the posting transactions, other than our own.  The index
 * entries carry posted_xid, the posting's top-level transaction, so the heap
 * is never visited: an entry older than RecentXmin (set by this
 * transaction's last snapshot: every transaction before it had finished)
 * is passed over at once, whatever became of its row (a fold may have
 * deleted it); only the few recent ones are looked up in the proc array.
 * Returns how many transactions it waited for.
 */
static int
await_deltas(Relation rel, Relation idx, int32 program_id, text *account_key)
{
	ScanKeyData sk[2];
	IndexScanDesc scan;
	FullTransactionId next = ReadNextFullTransactionId();
	FullTransactionId horizon = full_xid_before(next, RecentXmin);
	FullTransactionId mine = GetTopFullTransactionIdIfAny();
	TransactionId last = InvalidTransactionId;
	int			waited = 0;
	Oid			key_type = TupleDescAttr(RelationGetDescr(idx), 1)->atttypid;

	ScanKeyEntryInitialize(&sk[0], 0, 1, BTEqualStrategyNumber, InvalidOid, InvalidOid,
						   F_INT4EQ, Int32GetDatum(program_id));
	ScanKeyEntryInitialize(&sk[1], 0, 2, BTEqualStrategyNumber, InvalidOid, loyalty_key_collation(key_type),
						   loyalty_key_eq(key_type), loyalty_key_datum(key_type, text_to_cstring(account_key)));
	scan = index_beginscan(rel, idx, SnapshotAny, 2, 0);
	scan->xs_want_itup = true;
	index_rescan(scan, sk, 2, NULL, 0);
	while (index_getnext_tid(scan, ForwardScanDirection) != NULL)
	{
		bool		isnull;
		Datum		d = index_getattr(scan->xs_itup, 3, scan->xs_itupdesc, &isnull);
		FullTransactionId fxid;
		TransactionId xid;

		if (isnull)
			continue;
		fxid = DatumGetFullTransactionId(d);
		xid = XidFromFullTransactionId(fxid);
		/*
		 * Not this node's transaction at all: on Citus, a row written on
		 * another node (copied into its shard by distribute(), or by a shard
		 * move) keeps that node's id, which may be past this node's next one.
		 * Rows are copied committed: nothing to wait for.
		 */
		if (!FullTransactionIdPrecedes(fxid, next))
			continue;
		if (FullTransactionIdPrecedes(fxid, horizon) || FullTransactionIdEquals(fxid, mine) ||
			TransactionIdEquals(xid, last) || !TransactionIdIsInProgress(xid))
			continue;
		XactLockTableWait(xid, NULL, NULL, XLTW_None);
		last = xid;				/* its other deltas need no second wait */
		waited++;
	}
	index_endscan(scan);
	return waited;
}

/*
 * Waits until no other transaction in progress has appended a balance delta
 * of the account; returns how many transactions it waited for.  For the
 * debits written in C (loyalty.redeem), after their account lock.
 */
int
loyalty_await_account(int32 program_id, text *account_key)
{
	Oid			relid = InvalidOid;
	Relation	rel;
	Relation	idx;
	int			waited;

	/*
	 * On Citus the account's deltas are in a shard, and their posted_xid
	 * are the xids of the node holding it: the wait is only right there,
	 * on the shard.  loyalty.balance_delta is an empty shell.
	 */
	if (loyalty_citus_installed())
	{
		bool		distributed;

		SPI_connect();
		distributed = loyalty_citus_distributed();
		if (distributed)
			relid = loyalty_account_shard("balance_delta", account_key);
		SPI_finish();
		if (distributed && !OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the balance deltas of account \"%s\" are not on this node", text_to_cstring(account_key)),
					 errdetail("On Citus, a debit waits for the postings in flight on the node holding the account's shard, with that node's transaction ids."),
					 errhint("loyalty.redeem() runs on the account's node when called as a statement of its own, outside BEGIN ... COMMIT; the other debits send their account part there themselves.")));
	}
	if (!OidIsValid(relid))
		relid = get_relname_relid("balance_delta", get_namespace_oid("loyalty", false));
	rel = table_open(relid, AccessShareLock);
	idx = index_open(RelationGetPrimaryKeyIndex(rel), AccessShareLock);
	waited = await_deltas(rel, idx, program_id, account_key);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return waited;
}

PG_FUNCTION_INFO_V1(loyalty_await_postings);
/*
 * loyalty._await_postings(program_id, account_key): waits until no other
 * transaction in progress has appended a balance delta of the account;
 * returns how many transactions it waited for.
 */
Datum
loyalty_await_postings(PG_FUNCTION_ARGS)
{
	/*
	 * Not STRICT: the planner would answer a call with NULL constants
	 * without checking who may execute it.  No account, nothing to wait for.
	 */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_INT32(0);
	PG_RETURN_INT32(loyalty_await_account(PG_GETARG_INT32(0), PG_GETARG_TEXT_PP(1)));
}
