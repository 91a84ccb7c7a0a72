/*
 * rebate_lines.h — per product line qualifying spend for rebate agreements
 * scoped to product lines (loyalty.rebate_line_volume).
 */
#ifndef LOYALTY_REBATE_LINES_H
#define LOYALTY_REBATE_LINES_H

#include "rules.h"
#include "utils/hsearch.h"

/* The product lines some agreement of a program scopes, sorted. */
typedef struct RebateLines
{
	int			n;
	char	  **lines;
} RebateLines;

/* NULL when no agreement of the program is scoped (nothing to track). */
extern const RebateLines *rebate_lines_of(Program *prog);
extern HTAB *rebate_lines_start(MemoryContext cxt);
extern void rebate_lines_add(HTAB *sums, const RebateLines *rl, const char *account, DateADT month,
							 const char *line, Numeric qualifying, int sign);
extern void rebate_lines_post(Program *prog, HTAB *sums);

#endif
