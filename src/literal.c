/*
 * literal.c — the tokenizer both type literals share.
 *
 * Owns the lexical rules of the tier_ladder and rebate_schedule literals:
 *
 *   spaces   blanks, tabs and line breaks between tokens are ignored;
 *   names    bare: letters (ASCII or any non-ASCII character), digits, '_',
 *            '-', '.', '/', '&' and spaces inside; or double-quoted, with ""
 *            for a quote, to hold any other character except control
 *            characters.  A name never begins or ends with a space;
 *   numbers  plain decimals, digits with an optional decimal point, never a
 *            sign, an exponent, NaN or Infinity.  They are canonicalised on
 *            the way in (leading zeros of the integer part and trailing zeros
 *            of the fraction dropped), so '50000.00' and '50000' read as the
 *            same value and print as 50000;
 *   errors   one helper, lit_error(), raises every rejection.
 *
 * PostgreSQL 15 has no soft-error input API (escontext / ereturn arrived in
 * 16), so a bad literal is reported with a plain ereport(ERROR).
 */
#include "postgres.h"

#include "common/hashfn.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "parser/scansup.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "literal.h"

/* How much of a long token an error message quotes. */
#define LIT_CLIP_BYTES 40

/* A byte that may start or continue a word: ASCII letter or digit, '_', or
 * any byte of a non-ASCII character. */
static inline bool
lit_is_word_byte(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '_' || IS_HIGHBIT_SET(c);
}

static inline bool
lit_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* A byte allowed in a bare (unquoted) name. */
static inline bool
lit_is_bare_byte(char c)
{
	return lit_is_word_byte(c) || c == ' ' || c == '-' || c == '.' ||
		c == '/' || c == '&';
}

static inline bool
lit_is_control(char c)
{
	return (unsigned char) c < 0x20 || c == 0x7f;
}

/*
 * Starts reading input.  typname and hint are quoted in every error; binary
 * says the text was rebuilt from a binary value by a recv function, so that
 * errors carry the binary-format SQLSTATE instead.
 */
void
lit_init(LiteralScanner *s, const char *input, const char *typname,
		 const char *hint, bool binary)
{
	s->input = input;
	s->p = input;
	s->typname = typname;
	s->hint = hint;
	s->binary = binary;
}

/*
 * Raises the one error every bad literal gets.  fmt builds the errdetail: a
 * full sentence naming the offending part and its position.
 */
void
lit_error(const LiteralScanner *s, const char *fmt,...)
{
	StringInfoData detail;

	initStringInfo(&detail);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&detail, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&detail, needed);
	}

	if (s->binary)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type %s: \"%s\"",
						s->typname, s->input),
				 errdetail("%s", detail.data),
				 errhint("%s", s->hint)));
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid input syntax for type %s: \"%s\"",
						s->typname, s->input),
				 errdetail("%s", detail.data),
				 errhint("%s", s->hint)));
	pg_unreachable();
}

void
lit_skip_spaces(LiteralScanner *s)
{
	while (scanner_isspace(*s->p))
		s->p++;
}

/* True when only spaces are left. */
bool
lit_at_end(LiteralScanner *s)
{
	lit_skip_spaces(s);
	return *s->p == '\0';
}

/* Consumes c if it is the next token. */
bool
lit_accept(LiteralScanner *s, char c)
{
	lit_skip_spaces(s);
	if (*s->p != c)
		return false;
	s->p++;
	return true;
}

/* Consumes c or reports what is there instead; after says where we are. */
void
lit_expect(LiteralScanner *s, char c, const char *after)
{
	if (lit_accept(s, c))
		return;
	lit_error(s, "Expected \"%c\" at position %d %s, found %s.",
			  c, lit_position(s, s->p), after, lit_found(s, s->p));
}

/* The 1-based character position of at within the input. */
int
lit_position(const LiteralScanner *s, const char *at)
{
	return pg_mbstrlen_with_len(s->input, at - s->input) + 1;
}

/* str, cut to at most maxbytes on a character boundary, "..." if cut. */
char *
lit_clip(const char *str, int maxbytes)
{
	int			len = strlen(str);
	int			keep;

	if (len <= maxbytes)
		return pstrdup(str);
	keep = pg_mbcliplen(str, len, maxbytes);
	return psprintf("%.*s...", keep, str);
}

/*
 * Describes what the input holds at "at" for a "found ..." clause: the word
 * there, or the single character, in double quotes; or "end of input".
 */
char *
lit_found(const LiteralScanner *s, const char *at)
{
	const char *q = at;
	char	   *token;

	if (*at == '\0')
		return pstrdup("end of input");
	if (lit_is_word_byte(*q))
	{
		while (lit_is_word_byte(*q) || *q == '.')
			q += pg_mblen(q);
	}
	else
		q += pg_mblen(q);
	token = pnstrdup(at, q - at);
	return psprintf("\"%s\"", lit_clip(token, LIT_CLIP_BYTES));
}

/*
 * Reads a name, bare or double-quoted, of at most maxbytes bytes.  what names
 * the kind of name in errors ("tier name").
 */
char *
lit_read_name(LiteralScanner *s, const char *what, int maxbytes)
{
	const char *start;
	char	   *name;
	int			len;

	lit_skip_spaces(s);
	start = s->p;

	if (*start == '"')
	{
		StringInfoData buf;
		const char *q = start + 1;

		initStringInfo(&buf);
		for (;;)
		{
			if (*q == '\0')
				lit_error(s, "The quoted %s at position %d has no closing double quote.",
						  what, lit_position(s, start));
			if (*q == '"')
			{
				if (q[1] != '"')
				{
					q++;
					break;
				}
				appendStringInfoChar(&buf, '"');
				q += 2;
				continue;
			}
			if (lit_is_control(*q))
				lit_error(s, "The quoted %s at position %d contains a control character at position %d.",
						  what, lit_position(s, start), lit_position(s, q));
			len = pg_mblen(q);
			appendBinaryStringInfo(&buf, q, len);
			q += len;
		}
		s->p = q;
		name = buf.data;
		len = buf.len;
		if (len == 0)
			lit_error(s, "The quoted %s at position %d is empty.",
					  what, lit_position(s, start));
		if (name[0] == ' ' || name[len - 1] == ' ')
			lit_error(s, "The quoted %s \"%s\" at position %d begins or ends with a space.",
					  what, lit_clip(name, LIT_CLIP_BYTES),
					  lit_position(s, start));
	}
	else if (lit_is_bare_byte(*start))
	{
		const char *q = start;
		const char *end = start;

		/* Spaces inside belong to the name; trailing ones do not. */
		while (lit_is_bare_byte(*q))
		{
			if (*q == ' ')
				q++;
			else
			{
				q += pg_mblen(q);
				end = q;
			}
		}
		s->p = end;
		name = pnstrdup(start, end - start);
		len = end - start;
	}
	else
		lit_error(s, "Expected a %s at position %d, found %s.",
				  what, lit_position(s, start), lit_found(s, start));

	if (len > maxbytes)
		lit_error(s, "The %s \"%s\" at position %d is %d bytes long; the limit is %d bytes.",
				  what, lit_clip(name, maxbytes), lit_position(s, start),
				  len, maxbytes);
	return name;
}

/* Reads a run of ASCII letters (possibly none), such as a mode keyword. */
char *
lit_read_word(LiteralScanner *s)
{
	const char *start;

	lit_skip_spaces(s);
	start = s->p;
	while ((*s->p >= 'a' && *s->p <= 'z') || (*s->p >= 'A' && *s->p <= 'Z'))
		s->p++;
	return pnstrdup(start, s->p - start);
}

/* The word-like run starting at "at" (letters, digits, '_', '.'), as text. */
static char *
lit_token_at(const char *at)
{
	const char *q = at;

	while (lit_is_word_byte(*q) || *q == '.')
		q += pg_mblen(q);
	return lit_clip(pnstrdup(at, q - at), LIT_CLIP_BYTES);
}

/*
 * Reads a non-negative plain decimal and returns it in canonical form.  what
 * names the value in errors ("threshold of tier \"Gold\""); *token, if not
 * NULL, receives the number as written (cut to a readable length), for later
 * messages about it.
 */
Numeric
lit_read_number(LiteralScanner *s, const char *what, char **token)
{
	const char *start;
	const char *q;
	const char *int_start;
	const char *int_end;
	const char *frac_start = NULL;
	const char *frac_end = NULL;
	int			int_digits;
	int			frac_digits;
	StringInfoData canon;
	Datum		num;

	lit_skip_spaces(s);
	start = q = s->p;

	if (*q == '-' &&
		(lit_is_digit(q[1]) || q[1] == '.' ||
		 pg_strncasecmp(q + 1, "inf", 3) == 0))
		lit_error(s, "The %s at position %d is negative (-%s); it must be 0 or more.",
				  what, lit_position(s, start), lit_token_at(q + 1));

	if ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z'))
	{
		char	   *word = lit_token_at(q);

		if (pg_strcasecmp(word, "nan") == 0 ||
			pg_strcasecmp(word, "infinity") == 0 ||
			pg_strcasecmp(word, "inf") == 0)
			lit_error(s, "The %s at position %d is %s; only finite decimal numbers are accepted.",
					  what, lit_position(s, start), word);
	}

	int_start = q;
	while (lit_is_digit(*q))
		q++;
	int_end = q;
	if (*q == '.')
	{
		q++;
		frac_start = q;
		while (lit_is_digit(*q))
			q++;
		frac_end = q;
	}

	if (int_end == int_start && frac_end == frac_start)
	{
		if (*start == '.')
			lit_error(s, "The %s at position %d is not a number: \"%s\".",
					  what, lit_position(s, start), lit_token_at(start));
		lit_error(s, "Expected a number at position %d for the %s, found %s.",
				  lit_position(s, start), what, lit_found(s, start));
	}

	/* Glued junk: an exponent, a second point, letters. */
	if ((*q == 'e' || *q == 'E') &&
		(lit_is_digit(q[1]) ||
		 ((q[1] == '+' || q[1] == '-') && lit_is_digit(q[2]))))
	{
		const char *e = q + 1;

		if (*e == '+' || *e == '-')
			e++;
		while (lit_is_word_byte(*e) || *e == '.')
			e += pg_mblen(e);
		lit_error(s, "The %s at position %d uses exponent notation (%s); write the number out in full.",
				  what, lit_position(s, start),
				  lit_clip(pnstrdup(start, e - start), LIT_CLIP_BYTES));
	}
	if (lit_is_word_byte(*q) || *q == '.')
		lit_error(s, "The %s at position %d is not a number: \"%s\".",
				  what, lit_position(s, start), lit_token_at(start));

	s->p = q;
	if (token)
		*token = lit_clip(pnstrdup(start, q - start), LIT_CLIP_BYTES);

	/* Canonical form: no leading zeros, no trailing fractional zeros. */
	while (int_start < int_end && *int_start == '0')
		int_start++;
	while (frac_start != NULL && frac_end > frac_start && frac_end[-1] == '0')
		frac_end--;
	int_digits = int_end - int_start;
	frac_digits = frac_start ? frac_end - frac_start : 0;

	if (int_digits > LIT_MAX_INT_DIGITS)
		lit_error(s, "The %s at position %d (%s) has more than %d digits before the decimal point.",
				  what, lit_position(s, start),
				  lit_clip(pnstrdup(start, q - start), LIT_CLIP_BYTES),
				  LIT_MAX_INT_DIGITS);
	if (frac_digits > LIT_MAX_FRAC_DIGITS)
		lit_error(s, "The %s at position %d (%s) has more than %d digits after the decimal point.",
				  what, lit_position(s, start),
				  lit_clip(pnstrdup(start, q - start), LIT_CLIP_BYTES),
				  LIT_MAX_FRAC_DIGITS);

	initStringInfo(&canon);
	if (int_digits == 0)
		appendStringInfoChar(&canon, '0');
	else
		appendBinaryStringInfo(&canon, int_start, int_digits);
	if (frac_digits > 0)
	{
		appendStringInfoChar(&canon, '.');
		appendBinaryStringInfo(&canon, frac_start, frac_digits);
	}

	num = DirectFunctionCall3(numeric_in, CStringGetDatum(canon.data),
							  ObjectIdGetDatum(InvalidOid),
							  Int32GetDatum(-1));
	pfree(canon.data);
	return DatumGetNumeric(num);
}

/* True when a name cannot be written bare. */
bool
lit_name_needs_quotes(const char *name)
{
	int			len = strlen(name);

	if (len == 0 || name[0] == ' ' || name[len - 1] == ' ')
		return true;
	for (const char *q = name; *q; q++)
	{
		if (!lit_is_bare_byte(*q))
			return true;
	}
	return false;
}

/* Appends name double-quoted, doubling any double quote inside. */
void
lit_append_quoted(StringInfo buf, const char *name)
{
	appendStringInfoChar(buf, '"');
	for (const char *q = name; *q; q++)
	{
		if (*q == '"')
			appendStringInfoChar(buf, '"');
		appendStringInfoChar(buf, *q);
	}
	appendStringInfoChar(buf, '"');
}

/* Appends name as the canonical output writes it: bare when it can be. */
void
lit_append_name(StringInfo buf, const char *name)
{
	if (lit_name_needs_quotes(name))
		lit_append_quoted(buf, name);
	else
		appendStringInfoString(buf, name);
}

/*
 * Compares names ignoring the case of ASCII letters only, so the result never
 * depends on the server's locale (the types' functions are IMMUTABLE).
 */
int
lit_name_cmp_ci(const char *a, const char *b)
{
	for (;; a++, b++)
	{
		unsigned char ca = (unsigned char) *a;
		unsigned char cb = (unsigned char) *b;

		if (ca >= 'A' && ca <= 'Z')
			ca += 'a' - 'A';
		if (cb >= 'A' && cb <= 'Z')
			cb += 'a' - 'A';
		if (ca != cb)
			return (int) ca - (int) cb;
		if (ca == '\0')
			return 0;
	}
}

bool
lit_same_bytes(struct varlena *a, struct varlena *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

Datum
lit_hash_bytes(struct varlena *v)
{
	return hash_any((unsigned char *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v));
}
