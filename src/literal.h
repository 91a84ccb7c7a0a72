/*
 * literal.h — the small tokenizer behind the tier_ladder and rebate_schedule
 * literals.
 *
 * Both literals are lists of "something:number" pairs, so they share one set
 * of reading rules: what a space is, what a name is, what a number is, how a
 * position is counted, and how an error is worded.  Every rejection of either
 * literal goes through lit_error(), so every message has the same shape:
 *
 *   ERROR:  invalid input syntax for type tier_ladder: "<the whole input>"
 *   DETAIL: <the offending part> at position <N> <what is wrong>.
 *   HINT:   <the accepted form, with an example>.
 *
 * Positions are 1-based and count characters, not bytes.
 */
#ifndef LOYALTY_LITERAL_H
#define LOYALTY_LITERAL_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/numeric.h"

/*
 * Limits shared by both literals.  A threshold or a rate has at most
 * LIT_MAX_INT_DIGITS digits before the decimal point (a quadrillion currency
 * units: more than any B2B account turns over) and LIT_MAX_FRAC_DIGITS after
 * it (micro-units: enough for per-unit prices and rates such as 3.125%).
 * Leading zeros of the integer part and trailing zeros of the fraction do not
 * count; they are dropped when the value is canonicalised.
 */
#define LIT_MAX_INT_DIGITS	15
#define LIT_MAX_FRAC_DIGITS	6

typedef struct LiteralScanner
{
	const char *input;			/* the whole literal, quoted in every error */
	const char *p;				/* the next byte to read */
	const char *typname;		/* the SQL type name, for errmsg */
	const char *hint;			/* the accepted form, for errhint */
	bool		binary;			/* checking a value decoded by a recv
								 * function rather than typed text */
} LiteralScanner;

extern void lit_init(LiteralScanner *s, const char *input, const char *typname,
					 const char *hint, bool binary);
extern void lit_skip_spaces(LiteralScanner *s);
extern bool lit_at_end(LiteralScanner *s);
extern bool lit_accept(LiteralScanner *s, char c);
extern void lit_expect(LiteralScanner *s, char c, const char *after);
extern int	lit_position(const LiteralScanner *s, const char *at);
extern char *lit_found(const LiteralScanner *s, const char *at);
extern char *lit_clip(const char *str, int maxbytes);

extern char *lit_read_name(LiteralScanner *s, const char *what, int maxbytes);
extern char *lit_read_word(LiteralScanner *s);
extern Numeric lit_read_number(LiteralScanner *s, const char *what,
							   char **token);

extern bool lit_name_needs_quotes(const char *name);
extern void lit_append_name(StringInfo buf, const char *name);
extern void lit_append_quoted(StringInfo buf, const char *name);
extern int	lit_name_cmp_ci(const char *a, const char *b);

/* Both types store a canonical form: equal values have equal bytes. */
extern bool lit_same_bytes(struct varlena *a, struct varlena *b);
extern Datum lit_hash_bytes(struct varlena *v);

extern void lit_error(const LiteralScanner *s, const char *fmt,...)
			pg_attribute_printf(2, 3) pg_attribute_noreturn();

#endif
