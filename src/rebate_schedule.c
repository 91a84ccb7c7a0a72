/*
 * rebate_schedule.c — the rebate_schedule type: volume rebate brackets with a
 * mode, such as 'retro: 0:0%, 100000:2%, 500000:3.5%'.
 *
 * Owns the literal's grammar (on top of literal.c), the canonical stored
 * form, text and binary I/O, equality, and the pricing of a volume.
 *
 *   schedule := mode ":" bracket { "," bracket }
 *   mode     := "retro" | "marginal"          (any case; printed lower-case)
 *   bracket  := threshold ":" rate "%"
 *
 * retro:    the rate of the highest bracket reached (threshold <= volume)
 *           applies to the whole volume, as in SAP condition contracts;
 * marginal: each bracket's slice [threshold_i, threshold_i+1) earns its own
 *           rate, like income-tax brackets.
 * Volume below the first threshold (which may be above 0) earns nothing.
 *
 * Rules: 1 to 64 brackets; thresholds 0 or more, strictly ascending; rates
 * 0% to 100% (not necessarily ascending: a schedule that pays less at the
 * top is odd but not wrong); every number at most 15 digits before and 6
 * after the decimal point.  Canonical form drops insignificant zeros.
 *
 * All arithmetic is numeric and exact: no float, no rounding.  A negative
 * volume (credit notes exceeding invoices) is priced symmetrically.
 *
 * PostgreSQL 15 has no soft-error input API, so bad input is a plain ERROR.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/numeric.h"

#include "literal.h"
#include "loyalty.h"
#include "rebate_schedule.h"

static const char *const rebate_schedule_hint =
"A rebate schedule is a mode, retro or marginal, then threshold:rate% "
"brackets in ascending order, such as 'retro: 0:0%, 100000:2%, 500000:3.5%'.";

static const char *const rebate_mode_names[] = {"retro", "marginal"};

static int
num_cmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp,
											 NumericGetDatum(a),
											 NumericGetDatum(b)));
}

static Numeric
num_op(PGFunction op, Numeric a, Numeric b)
{
	return DatumGetNumeric(DirectFunctionCall2(op,
											   NumericGetDatum(a),
											   NumericGetDatum(b)));
}

/* Lays out a canonical value from parsed, validated brackets. */
static RebateSchedule *
rebate_schedule_build(RebateMode mode, int n, Numeric *thresholds,
					  Numeric *rates)
{
	Size		size = offsetof(RebateSchedule, entry) + 2 * n * sizeof(uint32);
	uint32		off[2 * REBATE_SCHEDULE_MAX_BRACKETS];
	RebateSchedule *s;

	for (int i = 0; i < n; i++)
	{
		size = INTALIGN(size);
		off[2 * i] = size;
		size += VARSIZE(thresholds[i]);
		size = INTALIGN(size);
		off[2 * i + 1] = size;
		size += VARSIZE(rates[i]);
	}

	s = palloc0(size);
	SET_VARSIZE(s, size);
	s->version = REBATE_SCHEDULE_VERSION;
	s->mode = (uint8) mode;
	s->nbrackets = n;
	for (int i = 0; i < n; i++)
	{
		s->entry[2 * i] = off[2 * i];
		memcpy((char *) s + off[2 * i], thresholds[i], VARSIZE(thresholds[i]));
		s->entry[2 * i + 1] = off[2 * i + 1];
		memcpy((char *) s + off[2 * i + 1], rates[i], VARSIZE(rates[i]));
	}
	return s;
}

/*
 * Parses and validates a literal.  binary says the text was rebuilt from a
 * binary value, which must pass exactly the same checks.
 */
static RebateSchedule *
rebate_schedule_parse(const char *input, bool binary)
{
	LiteralScanner s;
	Numeric		thresholds[REBATE_SCHEDULE_MAX_BRACKETS];
	Numeric		rates[REBATE_SCHEDULE_MAX_BRACKETS];
	char	   *tokens[REBATE_SCHEDULE_MAX_BRACKETS];
	Numeric		hundred = int64_to_numeric(100);
	RebateMode	mode;
	const char *at;
	char	   *word;
	int			n = 0;

	lit_init(&s, input, "rebate_schedule", rebate_schedule_hint, binary);
	if (lit_at_end(&s))
		lit_error(&s, "The schedule is empty; it needs a mode and at least one bracket.");

	lit_skip_spaces(&s);
	at = s.p;
	word = lit_read_word(&s);
	if (word[0] == '\0')
		lit_error(&s, "Expected the mode, retro or marginal, at position %d, found %s.",
				  lit_position(&s, at), lit_found(&s, at));
	if (pg_strcasecmp(word, "retro") == 0)
		mode = REBATE_RETRO;
	else if (pg_strcasecmp(word, "marginal") == 0)
		mode = REBATE_MARGINAL;
	else
		lit_error(&s, "The mode %s at position %d is unknown; the modes are retro and marginal.",
				  lit_found(&s, at), lit_position(&s, at));
	lit_expect(&s, ':', "after the mode");
	if (lit_at_end(&s))
		lit_error(&s, "Expected a bracket at position %d after the mode, found end of input.",
				  lit_position(&s, s.p));

	for (;;)
	{
		char	   *after;
		char	   *rate_token;

		lit_skip_spaces(&s);
		at = s.p;
		if (n == REBATE_SCHEDULE_MAX_BRACKETS)
			lit_error(&s, "Bracket %d at position %d is one too many; a schedule has at most %d brackets.",
					  n + 1, lit_position(&s, at), REBATE_SCHEDULE_MAX_BRACKETS);

		thresholds[n] = lit_read_number(&s,
										psprintf("threshold of bracket %d", n + 1),
										&tokens[n]);
		if (n > 0 && num_cmp(thresholds[n], thresholds[n - 1]) <= 0)
			lit_error(&s, "Threshold %s of bracket %d at position %d is not greater than the previous threshold %s.",
					  tokens[n], n + 1, lit_position(&s, at), tokens[n - 1]);
		if (!lit_accept(&s, ':'))
			lit_error(&s, "Expected \":\" at position %d after the threshold of bracket %d, found %s%s.",
					  lit_position(&s, s.p), n + 1, lit_found(&s, s.p),
					  (s.p[0] == ',' && s.p[1] >= '0' && s.p[1] <= '9') ?
					  " (thresholds take no thousands separators)" : "");

		lit_skip_spaces(&s);
		at = s.p;
		rates[n] = lit_read_number(&s, psprintf("rate of bracket %d", n + 1),
								   &rate_token);
		if (num_cmp(rates[n], hundred) > 0)
			lit_error(&s, "The rate of bracket %d at position %d (%s%%) is over 100%%.",
					  n + 1, lit_position(&s, at), rate_token);
		after = psprintf("after the rate of bracket %d", n + 1);
		lit_expect(&s, '%', after);
		n++;

		if (lit_at_end(&s))
			break;
		if (!lit_accept(&s, ','))
			lit_error(&s, "Expected \",\" or the end of the schedule at position %d after bracket %d, found %s.",
					  lit_position(&s, s.p), n, lit_found(&s, s.p));
	}

	return rebate_schedule_build(mode, n, thresholds, rates);
}

RebateMode
rebate_schedule_mode(const RebateSchedule *s)
{
	return (RebateMode) s->mode;
}

int
rebate_schedule_nbrackets(const RebateSchedule *s)
{
	return s->nbrackets;
}

Numeric
rebate_schedule_threshold(const RebateSchedule *s, int i)
{
	Assert(i >= 0 && i < s->nbrackets);
	return (Numeric) ((char *) s + s->entry[2 * i]);
}

Numeric
rebate_schedule_rate_of(const RebateSchedule *s, int i)
{
	Assert(i >= 0 && i < s->nbrackets);
	return (Numeric) ((char *) s + s->entry[2 * i + 1]);
}

/* Rejects NaN and infinite volumes: there is no rebate on "not a number". */
static void
rebate_check_volume(Numeric volume)
{
	if (numeric_is_nan(volume) || numeric_is_inf(volume))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rebate volume must be a finite number"),
				 errdetail("The volume is %s.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(volume))))));
}

/* The highest bracket whose threshold is at most a (a >= 0), or -1. */
static int
rebate_index_abs(const RebateSchedule *s, Numeric a)
{
	int			lo = 0;
	int			hi = s->nbrackets - 1;
	int			found = -1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (num_cmp(rebate_schedule_threshold(s, mid), a) <= 0)
		{
			found = mid;
			lo = mid + 1;
		}
		else
			hi = mid - 1;
	}
	return found;
}

static Numeric
num_abs(Numeric n)
{
	return DatumGetNumeric(DirectFunctionCall1(numeric_abs, NumericGetDatum(n)));
}

int
rebate_schedule_index(const RebateSchedule *s, Numeric volume)
{
	rebate_check_volume(volume);
	return rebate_index_abs(s, num_abs(volume));
}

Numeric
rebate_schedule_rate(const RebateSchedule *s, Numeric volume)
{
	int			i = rebate_schedule_index(s, volume);

	if (i < 0)
		return int64_to_numeric(0);
	return DatumGetNumeric(datumCopy(NumericGetDatum(rebate_schedule_rate_of(s, i)),
									 false, -1));
}

Numeric
rebate_schedule_rebate(const RebateSchedule *s, Numeric volume)
{
	Numeric		a;
	Numeric		sum;				/* sum of amount x rate-in-percent */
	Numeric		rebate;
	int			reached;
	int			scale;

	rebate_check_volume(volume);
	a = num_abs(volume);
	reached = rebate_index_abs(s, a);

	if (reached < 0)
		sum = int64_to_numeric(0);
	else if (s->mode == REBATE_RETRO)
		sum = num_op(numeric_mul, a, rebate_schedule_rate_of(s, reached));
	else
	{
		sum = int64_to_numeric(0);
		for (int i = 0; i <= reached; i++)
		{
			Numeric		upper = (i < reached) ? rebate_schedule_threshold(s, i + 1) : a;
			Numeric		slice = num_op(numeric_sub, upper,
									   rebate_schedule_threshold(s, i));

			sum = num_op(numeric_add, sum,
						 num_op(numeric_mul, slice, rebate_schedule_rate_of(s, i)));
		}
	}

	/* Percent to a fraction: multiplying by 0.01 is exact, dividing by 100
	 * would round to numeric_div's chosen scale. */
	rebate = num_op(numeric_mul, sum,
					DatumGetNumeric(DirectFunctionCall3(numeric_in,
														CStringGetDatum("0.01"),
														ObjectIdGetDatum(InvalidOid),
														Int32GetDatum(-1))));
	if (num_cmp(volume, int64_to_numeric(0)) < 0)
		rebate = DatumGetNumeric(DirectFunctionCall1(numeric_uminus,
													 NumericGetDatum(rebate)));

	/*
	 * Drop zeros the product does not need, but keep the volume's scale: 2%
	 * of 100000.00 is 2000.00, 2% of 100000 is 2000.  Only zeros go, so this
	 * never rounds; numeric_round cannot go past NUMERIC_MAX_RESULT_SCALE,
	 * so an absurdly precise volume keeps the product's full scale instead.
	 */
	scale = Max(DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(volume))),
				DatumGetInt32(DirectFunctionCall1(numeric_min_scale, NumericGetDatum(rebate))));
	if (scale < DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(rebate))) &&
		scale <= NUMERIC_MAX_RESULT_SCALE)
		rebate = DatumGetNumeric(DirectFunctionCall2(numeric_round,
													 NumericGetDatum(rebate),
													 Int32GetDatum(scale)));
	return rebate;
}

/* Text input: parses and canonicalises a literal. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_in);
Datum
loyalty_rebate_schedule_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);

	PG_RETURN_REBATE_SCHEDULE_P(rebate_schedule_parse(input, false));
}

/* Text output: the canonical literal. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_out);
Datum
loyalty_rebate_schedule_out(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s: ", rebate_mode_names[s->mode]);
	for (int i = 0; i < s->nbrackets; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfo(&buf, "%s:%s%%",
						 DatumGetCString(DirectFunctionCall1(numeric_out,
															 NumericGetDatum(rebate_schedule_threshold(s, i)))),
						 DatumGetCString(DirectFunctionCall1(numeric_out,
															 NumericGetDatum(rebate_schedule_rate_of(s, i)))));
	}
	PG_RETURN_CSTRING(buf.data);
}

/*
 * Binary format, version 1:
 *   byte    format version (1)
 *   byte    mode: 0 retro, 1 marginal
 *   int16   number of brackets
 *   per bracket: threshold, then rate in percent, in numeric's binary format
 */
#define REBATE_SCHEDULE_SEND_VERSION 1

static void
send_numeric(StringInfo buf, Numeric n)
{
	bytea	   *b = DatumGetByteaPP(DirectFunctionCall1(numeric_send,
														NumericGetDatum(n)));

	pq_sendbytes(buf, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
}

/* Binary output: the versioned compact form. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_send);
Datum
loyalty_rebate_schedule_send(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, REBATE_SCHEDULE_SEND_VERSION);
	pq_sendbyte(&buf, s->mode);
	pq_sendint16(&buf, s->nbrackets);
	for (int i = 0; i < s->nbrackets; i++)
	{
		send_numeric(&buf, rebate_schedule_threshold(s, i));
		send_numeric(&buf, rebate_schedule_rate_of(s, i));
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

static char *
recv_numeric_text(StringInfo msg)
{
	Datum		num = DirectFunctionCall3(numeric_recv, PointerGetDatum(msg),
										  ObjectIdGetDatum(InvalidOid),
										  Int32GetDatum(-1));

	return DatumGetCString(DirectFunctionCall1(numeric_out, num));
}

/*
 * Binary input.  The decoded brackets are written back as a literal and
 * parsed, so a binary value passes exactly the checks a text value does.
 */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_recv);
Datum
loyalty_rebate_schedule_recv(PG_FUNCTION_ARGS)
{
	StringInfo	msg = (StringInfo) PG_GETARG_POINTER(0);
	StringInfoData text;
	int			version;
	int			mode;
	int			n;

	version = pq_getmsgbyte(msg);
	if (version != REBATE_SCHEDULE_SEND_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type rebate_schedule"),
				 errdetail("The binary format version is %d; this server reads version %d.",
						   version, REBATE_SCHEDULE_SEND_VERSION)));
	mode = pq_getmsgbyte(msg);
	if (mode != REBATE_RETRO && mode != REBATE_MARGINAL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type rebate_schedule"),
				 errdetail("The mode code is %d; the codes are 0 (retro) and 1 (marginal).",
						   mode)));
	n = (int16) pq_getmsgint(msg, 2);
	if (n < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary value for type rebate_schedule"),
				 errdetail("The number of brackets is %d.", n)));

	initStringInfo(&text);
	appendStringInfo(&text, "%s:", rebate_mode_names[mode]);
	for (int i = 0; i < n; i++)
	{
		char	   *threshold = recv_numeric_text(msg);
		char	   *rate = recv_numeric_text(msg);

		appendStringInfo(&text, "%s %s:%s%%", i > 0 ? "," : "", threshold, rate);
	}

	PG_RETURN_REBATE_SCHEDULE_P(rebate_schedule_parse(text.data, true));
}

/* Canonical values are equal exactly when their bytes are. */
static bool
rebate_schedule_same(FunctionCallInfo fcinfo)
{
	return lit_same_bytes(PG_GETARG_VARLENA_PP(0), PG_GETARG_VARLENA_PP(1));
}

/* The = operator: same mode, same brackets. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_eq);
Datum
loyalty_rebate_schedule_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(rebate_schedule_same(fcinfo));
}

/* The <> operator. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_ne);
Datum
loyalty_rebate_schedule_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!rebate_schedule_same(fcinfo));
}

/* Hash support, consistent with =: a hash of the canonical bytes. */
PG_FUNCTION_INFO_V1(loyalty_rebate_schedule_hash);
Datum
loyalty_rebate_schedule_hash(PG_FUNCTION_ARGS)
{
	return lit_hash_bytes(PG_GETARG_VARLENA_PP(0));
}

/* rebate(schedule, volume): the exact rebate, never rounded. */
PG_FUNCTION_INFO_V1(loyalty_rebate);
Datum
loyalty_rebate(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);

	PG_RETURN_NUMERIC(rebate_schedule_rebate(s, PG_GETARG_NUMERIC(1)));
}

/* rebate_rate(schedule, volume): the rate in percent of the bracket reached. */
PG_FUNCTION_INFO_V1(loyalty_rebate_rate);
Datum
loyalty_rebate_rate(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);

	PG_RETURN_NUMERIC(rebate_schedule_rate(s, PG_GETARG_NUMERIC(1)));
}

/* rebate_mode(schedule): 'retro' or 'marginal'. */
PG_FUNCTION_INFO_V1(loyalty_rebate_mode);
Datum
loyalty_rebate_mode(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);

	PG_RETURN_TEXT_P(cstring_to_text(rebate_mode_names[s->mode]));
}

/* brackets(schedule): one row per bracket, lowest first. */
PG_FUNCTION_INFO_V1(loyalty_brackets);
Datum
loyalty_brackets(PG_FUNCTION_ARGS)
{
	RebateSchedule *s = PG_GETARG_REBATE_SCHEDULE_P(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < s->nbrackets; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = NumericGetDatum(rebate_schedule_threshold(s, i));
		values[1] = NumericGetDatum(rebate_schedule_rate_of(s, i));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
