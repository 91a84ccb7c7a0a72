/*
 * tier_ladder.c — the tier_ladder type: ordered named thresholds such as
 * 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'.
 *
 * Owns the literal's grammar (on top of literal.c), the canonical stored
 * form, text and binary I/O, equality, and the lookups: which tier an amount
 * reaches, its rank, the next tier and the gap to it.
 *
 *   ladder := tier { "," tier }
 *   tier   := name ":" threshold
 *
 * Canonical form: names as written (bare when possible, otherwise quoted),
 * thresholds without insignificant zeros, ", " between tiers.  Equal ladders
 * are therefore equal bytes, and '=' is a byte comparison.
 *
 * Rules: 1 to 64 tiers; names 1..63 bytes, distinct ignoring the case of
 * ASCII letters ("Gold" and "gold" in one ladder is surely a typo, and
 * tier_ladder_find can then look a name up without regard to case);
 * thresholds 0 or more, strictly ascending, at most 15 digits before and 6
 * after the decimal point.
 *
 * A negative amount (net credit after credit notes) reaches what 0 reaches.
 *
 * PostgreSQL 15 has no soft-error input API, so bad input is a plain ERROR.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "literal.h"
#include "loyalty.h"
#include "tier_ladder.h"

static const char *const tier_ladder_hint =
"A tier ladder is a list of Name:threshold pairs in ascending order, such as "
"'Member:0, Silver:50000, Gold:250000'; double-quote a name that contains "
"other characters.";

static int
num_cmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp,
											 NumericGetDatum(a),
											 NumericGetDatum(b)));
}

/* Lays out a canonical value from parsed, validated tiers. */
static TierLadder *
tier_ladder_build(int n, char **names, Numeric *thresholds)
{
	Size		size = offsetof(TierLadder, entry) + 2 * n * sizeof(uint32);
	uint32		toff[TIER_LADDER_MAX_TIERS];
	uint32		noff[TIER_LADDER_MAX_TIERS];
	TierLadder *l;

	for (int i = 0; i < n; i++)
	{
		size = INTALIGN(size);
		toff[i] = size;
		size += VARSIZE(thresholds[i]);
		noff[i] = size;
		size += strlen(names[i]) + 1;
	}

	l = palloc0(size);
	SET_VARSIZE(l, size);
	l->version = TIER_LADDER_VERSION;
	l->ntiers = n;
	for (int i = 0; i < n; i++)
	{
		l->entry[2 * i] = toff[i];
		memcpy((char *) l + toff[i], thresholds[i], VARSIZE(thresholds[i]));
		l->entry[2 * i + 1] = noff[i];
		strcpy((char *) l + noff[i], names[i]);
	}
	return l;
}

/*
 * Parses and validates a literal.  binary says the text was rebuilt from a
 * binary value, which must pass exactly the same checks.
 */
static TierLadder *
tier_ladder_parse(const char *input, bool binary)
{
	LiteralScanner s;
	char	   *names[TIER_LADDER_MAX_TIERS];
	int			name_pos[TIER_LADDER_MAX_TIERS];
	Numeric		thresholds[TIER_LADDER_MAX_TIERS];
	char	   *tokens[TIER_LADDER_MAX_TIERS];
	int			n = 0;

	lit_init(&s, input, "tier_ladder", tier_ladder_hint, binary);
	if (lit_at_end(&s))
		lit_error(&s, "The ladder has no tiers.");

	for (;;)
	{
		const char *at;
		char	   *name;
		char	   *shown;
		int			pos;

		lit_skip_spaces(&s);
		at = s.p;
		pos = lit_position(&s, at);
		if (n == TIER_LADDER_MAX_TIERS)
			lit_error(&s, "Tier %d at position %d is one too many; a ladder has at most %d tiers.",
					  n + 1, pos, TIER_LADDER_MAX_TIERS);

		name = lit_read_name(&s, "tier name", TIER_LADDER_MAX_NAME);
		shown = lit_clip(name, 40);
		for (int j = 0; j < n; j++)
		{
			if (lit_name_cmp_ci(names[j], name) == 0)
				lit_error(&s, "The tier name \"%s\" at position %d repeats tier \"%s\" at position %d; names must differ, ignoring case.",
						  shown, pos, lit_clip(names[j], 40), name_pos[j]);
		}

		if (!lit_accept(&s, ':'))
			lit_error(&s, "Expected \":\" at position %d after tier name \"%s\", found %s%s.",
					  lit_position(&s, s.p), shown, lit_found(&s, s.p),
					  strspn(name, "0123456789") == strlen(name) ?
					  " (thresholds take no thousands separators)" : "");
		lit_skip_spaces(&s);
		at = s.p;
		thresholds[n] = lit_read_number(&s,
										psprintf("threshold of tier \"%s\"", shown),
										&tokens[n]);
		if (n > 0 && num_cmp(thresholds[n], thresholds[n - 1]) <= 0)
			lit_error(&s, "Threshold %s of tier \"%s\" at position %d is not greater than the previous threshold %s.",
					  tokens[n], shown, lit_position(&s, at), tokens[n - 1]);
		names[n] = name;
		name_pos[n] = pos;
		n++;

		if (lit_at_end(&s))
			break;
		if (!lit_accept(&s, ','))
			lit_error(&s, "Expected \",\" or the end of the ladder at position %d after the threshold of tier \"%s\", found %s.",
					  lit_position(&s, s.p), shown, lit_found(&s, s.p));
	}

	return tier_ladder_build(n, names, thresholds);
}

int
tier_ladder_ntiers(const TierLadder *l)
{
	return l->ntiers;
}

const char *
tier_ladder_name(const TierLadder *l, int i)
{
	Assert(i >= 0 && i < l->ntiers);
	return (const char *) l + l->entry[2 * i + 1];
}

Numeric
tier_ladder_threshold(const TierLadder *l, int i)
{
	Assert(i >= 0 && i < l->ntiers);
	return (Numeric) ((char *) l + l->entry[2 * i]);
}

/* Rejects NaN and infinite amounts: no tier is reached by "not a number". */
static void
tier_ladder_check_amount(Numeric amount)
{
	if (numeric_is_nan(amount) || numeric_is_inf(amount))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tier amount must be a finite number"),
				 errdetail("The amount is %s.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(amount))))));
}

/* amount, with a negative amount counted as 0. */
static Numeric
tier_ladder_clamp(Numeric amount)
{
	Numeric		zero = int64_to_numeric(0);

	return num_cmp(amount, zero) < 0 ? zero : amount;
}

int
tier_ladder_index(const TierLadder *l, Numeric amount)
{
	int			lo = 0;
	int			hi = l->ntiers - 1;
	int			found = -1;

	tier_ladder_check_amount(amount);
	amount = tier_ladder_clamp(amount);
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (num_cmp(tier_ladder_threshold(l, mid), amount) <= 0)
		{
			found = mid;
			lo = mid + 1;
		}
		else
			hi = mid - 1;
	}
	return found;
}

int
tier_ladder_find(const TierLadder *l, const char *name)
{
	for (int i = 0; i < l->ntiers; i++)
	{
		if (lit_name_cmp_ci(tier_ladder_name(l, i), name) == 0)
			return i;
	}
	return -1;
}

/* Text input: parses and canonicalises a literal. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_in);
Datum
loyalty_tier_ladder_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);

	PG_RETURN_TIER_LADDER_P(tier_ladder_parse(input, false));
}

/* Text output: the canonical literal. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_out);
Datum
loyalty_tier_ladder_out(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < l->ntiers; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		lit_append_name(&buf, tier_ladder_name(l, i));
		appendStringInfoChar(&buf, ':');
		appendStringInfoString(&buf,
							   DatumGetCString(DirectFunctionCall1(numeric_out,
																   NumericGetDatum(tier_ladder_threshold(l, i)))));
	}
	PG_RETURN_CSTRING(buf.data);
}

/*
 * Binary format, version 1:
 *   byte    format version (1)
 *   int16   number of tiers
 *   per tier: int32 name length + name bytes (client encoding),
 *             threshold in numeric's binary format
 */
#define TIER_LADDER_SEND_VERSION 1

/* Binary output: the versioned compact form. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_send);
Datum
loyalty_tier_ladder_send(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, TIER_LADDER_SEND_VERSION);
	pq_sendint16(&buf, l->ntiers);
	for (int i = 0; i < l->ntiers; i++)
	{
		const char *name = tier_ladder_name(l, i);
		bytea	   *num;

		pq_sendcountedtext(&buf, name, strlen(name), false);
		num = DatumGetByteaPP(DirectFunctionCall1(numeric_send,
												  NumericGetDatum(tier_ladder_threshold(l, i))));
		pq_sendbytes(&buf, VARDATA_ANY(num), VARSIZE_ANY_EXHDR(num));
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/*
 * Binary input.  The decoded tiers are written back as a literal and parsed,
 * so a binary value passes exactly the checks a text value does.
 */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_recv);
Datum
loyalty_tier_ladder_recv(PG_FUNCTION_ARGS)
{
	StringInfo	msg = (StringInfo) PG_GETARG_POINTER(0);
	StringInfoData text;
	int			version;
	int			n;

	version = pq_getmsgbyte(msg);
	if (version != TIER_LADDER_SEND_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type tier_ladder"),
				 errdetail("The binary format version is %d; this server reads version %d.",
						   version, TIER_LADDER_SEND_VERSION)));
	n = (int16) pq_getmsgint(msg, 2);
	if (n < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type tier_ladder"),
				 errdetail("The number of tiers is %d.", n)));

	initStringInfo(&text);
	for (int i = 0; i < n; i++)
	{
		int			len = (int) pq_getmsgint(msg, 4);
		int			nbytes;
		char	   *name = pq_getmsgtext(msg, len, &nbytes);
		Datum		num;

		if ((int) strlen(name) != nbytes)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary value for type tier_ladder"),
					 errdetail("The name of tier %d contains a zero byte.", i + 1)));
		num = DirectFunctionCall3(numeric_recv, PointerGetDatum(msg),
								  ObjectIdGetDatum(InvalidOid),
								  Int32GetDatum(-1));
		if (i > 0)
			appendStringInfoString(&text, ", ");
		lit_append_quoted(&text, name);
		appendStringInfoChar(&text, ':');
		appendStringInfoString(&text, DatumGetCString(DirectFunctionCall1(numeric_out, num)));
	}

	PG_RETURN_TIER_LADDER_P(tier_ladder_parse(text.data, true));
}

/* Canonical values are equal exactly when their bytes are. */
static bool
tier_ladder_same(FunctionCallInfo fcinfo)
{
	return lit_same_bytes(PG_GETARG_VARLENA_PP(0), PG_GETARG_VARLENA_PP(1));
}

/* The = operator: same tiers, same names, same thresholds, same order. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_eq);
Datum
loyalty_tier_ladder_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(tier_ladder_same(fcinfo));
}

/* The <> operator. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_ne);
Datum
loyalty_tier_ladder_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!tier_ladder_same(fcinfo));
}

/* Hash support, consistent with =: a hash of the canonical bytes. */
PG_FUNCTION_INFO_V1(loyalty_tier_ladder_hash);
Datum
loyalty_tier_ladder_hash(PG_FUNCTION_ARGS)
{
	return lit_hash_bytes(PG_GETARG_VARLENA_PP(0));
}

/* tier_of(ladder, amount): name of the highest tier reached, NULL if none. */
PG_FUNCTION_INFO_V1(loyalty_tier_of);
Datum
loyalty_tier_of(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	Numeric		amount = PG_GETARG_NUMERIC(1);
	int			i = tier_ladder_index(l, amount);

	if (i < 0)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(tier_ladder_name(l, i)));
}

/* tier_rank(ladder, amount): 1-based rank of the tier reached, NULL if none. */
PG_FUNCTION_INFO_V1(loyalty_tier_rank);
Datum
loyalty_tier_rank(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	Numeric		amount = PG_GETARG_NUMERIC(1);
	int			i = tier_ladder_index(l, amount);

	if (i < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(i + 1);
}

/* next_tier(ladder, amount): the tier above the one reached and the gap. */
PG_FUNCTION_INFO_V1(loyalty_next_tier);
Datum
loyalty_next_tier(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	Numeric		amount = PG_GETARG_NUMERIC(1);
	int			i = tier_ladder_index(l, amount);
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {true, true, true};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	if (i + 1 < l->ntiers)
	{
		Numeric		threshold = tier_ladder_threshold(l, i + 1);

		values[0] = PointerGetDatum(cstring_to_text(tier_ladder_name(l, i + 1)));
		values[1] = NumericGetDatum(threshold);
		values[2] = DirectFunctionCall2(numeric_sub,
										NumericGetDatum(threshold),
										NumericGetDatum(tier_ladder_clamp(amount)));
		nulls[0] = nulls[1] = nulls[2] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* tiers(ladder): one row per tier, lowest first. */
PG_FUNCTION_INFO_V1(loyalty_tiers);
Datum
loyalty_tiers(PG_FUNCTION_ARGS)
{
	TierLadder *l = PG_GETARG_TIER_LADDER_P(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < l->ntiers; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = Int32GetDatum(i + 1);
		values[1] = PointerGetDatum(cstring_to_text(tier_ladder_name(l, i)));
		values[2] = NumericGetDatum(tier_ladder_threshold(l, i));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
