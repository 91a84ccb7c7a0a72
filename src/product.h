/*
 * product.h — product lines from a product table (the product master): the
 * batched look-up of a statement's products, the line in force on a
 * document's date, and the trigger that keeps a product's earlier lines.
 */
#ifndef LOYALTY_PRODUCT_H
#define LOYALTY_PRODUCT_H

#include "mapping.h"
#include "utils/hsearch.h"

/* A product as the lines of one statement see it. */
typedef struct ProductFacts
{
	char	   *line;			/* the product's current line; NULL: none, or no such product */
	int			nhist;			/* earlier lines, ascending valid_until */
	DateADT    *until;
	char	  **hist_line;
} ProductFacts;

/*
 * Fills every entry of keys (a keymap of the lines' product keys) with its
 * ProductFacts, allocated in cxt: one query of the product table as the
 * current user, one of loyalty.product_history as the owner.  Caller is
 * connected to SPI.
 */
extern void product_lookup(Attachment *att, HTAB *keys, MemoryContext cxt);

/* The product line in force on a document's date. */
extern char *product_line_on(const ProductFacts *pf, bool has_date, DateADT date);

#endif
