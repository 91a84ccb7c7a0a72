/*
 * mapping.h — attachments: how an ERP table's columns (or expressions of
 * them, or its header table's columns) map onto RowFacts.  The stored
 * mapping is read from loyalty.attachment as the extension owner (values
 * only); its expressions are parsed, planned and run as the role that
 * writes the ERP rows, once per backend and role.
 */
#ifndef LOYALTY_MAPPING_H
#define LOYALTY_MAPPING_H

#include "executor/executor.h"
#include "rules.h"

typedef enum MapField
{
	F_ACCOUNT,
	F_AMOUNT,
	F_QUANTITY,
	F_DATE,
	F_PRODUCT_LINE,
	F_CURRENCY,
	F_DOC_TYPE,
	F_DUE,
	F_PAID,
	F_HEADER_KEY,				/* source: the raw key; header: the raw match key */
	F_ROW_KEY,					/* source only: the row key as text */
	F_PRODUCT_KEY,				/* source only: the raw product key */
	F_COUNT
} MapField;

/* The header's part of a row's facts. */
typedef struct HeaderFacts
{
	char	   *account;
	bool		has_date;
	DateADT		date;
	char	   *currency;
	char	   *doc_type;
	bool		has_due;
	DateADT		due;
	bool		has_paid;
	DateADT		paid;
} HeaderFacts;

typedef struct Attachment
{
	int32		id;
	Oid			built_for;		/* role the expressions were built as;
								 * InvalidOid: stored values only */
	Oid			source;
	char	   *source_name;
	Program    *program;
	bool		mapped[F_COUNT];
	ExprState  *src[F_COUNT];	/* over source rows */
	bool		has_header;
	Oid			header;
	ExprState  *hdr[F_COUNT];	/* over header rows */
	char	   *header_key_column;	/* the source's column naming the header */
	char	   *header_match_column;	/* the header's column it matches */
	char	   *header_name;	/* the header table, schema-qualified */
	Oid			header_key_type;	/* the type of both */
	struct KeyType *header_key; /* its hash and equality, with the column's collation */
	ShardPlan	header_plan;	/* the header rows of an array of keys (accrual.c), per shard */
	Oid			header_rowtype;
	bool		has_product;	/* the product line comes from a product table */
	Oid			product;
	char	   *product_name;	/* schema-qualified */
	char	   *product_key_column; /* the source's column naming the product */
	char	   *product_match_column;	/* the product table's column it matches */
	char	   *product_line_text;	/* the product line over the product row (alias p) */
	Oid			product_key_type;
	struct KeyType *product_key;
	SPIPlanPtr	product_plan;	/* the products of an array of keys (product.c) */
	int			ncredit;
	char	  **credit_types;
	char	   *src_text[F_COUNT];	/* the stored mapping SQL, NULL: unmapped */
	char	   *hdr_text[F_COUNT];
} Attachment;

/*
 * Caller is connected to SPI.  Errors if the attachment is gone.
 * mapping_get: with its expressions, built for the current user.
 * mapping_get_config: the stored values only (program, credit-note types),
 * for callers that evaluate no expression; safe as the extension owner.
 */
extern Attachment *mapping_get(int32 attachment_id);
extern Attachment *mapping_get_config(int32 attachment_id);
extern void mapping_recheck(int32 attachment_id);
extern Program *mapping_get_program(int32 program_id);
extern void mapping_refresh(void);

extern void mapping_source_facts(Attachment *att, ExprContext *econtext,
								 TupleTableSlot *slot, RowFacts *facts, bool with_account);
extern Datum mapping_header_key(Attachment *att, ExprContext *econtext,
								TupleTableSlot *slot, bool *isnull);
extern char *mapping_row_key(Attachment *att, ExprContext *econtext, TupleTableSlot *slot);
extern Datum mapping_header_facts(Attachment *att, ExprContext *econtext,
								  TupleTableSlot *slot, HeaderFacts *hf, bool *isnull);
/* FROM clause item for an ERP table: ONLY unless partitioned. */
extern char *mapping_table_ref(Oid relid, const char *qualified_name);
extern void mapping_apply_header(Attachment *att, const HeaderFacts *hf, RowFacts *facts);

/* One user-written expression of a relation's row, analysed as the current user. */
extern Node *mapping_parse_expr(Relation rel, const char *alias, const char *text, const char *what);
extern void mapping_check_deterministic(Node *expr, const char *what);
extern void mapping_check_no_float(Node *expr, const char *what, Oid relid);
extern char *mapping_deparse(Node *expr, Oid relid, const char *alias);

#endif
