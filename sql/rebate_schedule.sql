--
-- rebate_schedule: volume rebate brackets with a mode, e.g. a distributor
-- earning 2% back from 100,000 of annual purchases and 3.5% from 500,000.
--
\pset null '(null)'
-- The operators live in schema loyalty: put it on the search_path to use
-- = and <> unqualified, as a DBA would.
SET search_path = public, loyalty;

--
-- 1. The literal
--

-- The mode (retro or marginal), a colon, then threshold:rate% brackets,
-- lowest first.  The output is the canonical form.
SELECT 'retro: 0:0%, 100000:2%, 500000:3.5%'::loyalty.rebate_schedule;
SELECT 'marginal: 0:1%, 50000:2%'::loyalty.rebate_schedule;

-- The mode is read in any case and printed in lower case; spaces, tabs and
-- line breaks between tokens are ignored.
SELECT E'RETRO:0:0%,100000:2%'::loyalty.rebate_schedule;
SELECT E'  Marginal :\n\t0 : 1 % ,  50000 : 2 %  '::loyalty.rebate_schedule;

-- Numbers are canonicalised: 2.50% is 2.5%, 100000.00 is 100000.
SELECT 'retro: 0000:0.0%, 100000.00:2.50%, 500000:03.500%'::loyalty.rebate_schedule;
SELECT 'retro: 0:0%, 100000.00:2.50%'::loyalty.rebate_schedule
     = 'retro: 0:0%, 100000:2.5%'::loyalty.rebate_schedule AS same_value;

-- The mode is part of the value.
SELECT 'retro: 0:1%'::loyalty.rebate_schedule
    <> 'marginal: 0:1%'::loyalty.rebate_schedule AS differ;

-- The first threshold may be above 0: volume below it earns 0%.  Rates may
-- have up to 6 decimals; 0% and 100% are both allowed.
SELECT 'retro: 250000:1.125%'::loyalty.rebate_schedule;
SELECT 'marginal: 0:0.000001%, 1:100%'::loyalty.rebate_schedule;

-- Limits: up to 64 brackets, numbers up to 15 digits before and 6 after the
-- decimal point.
SELECT count(*) AS brackets, max(threshold) AS top, max(rate) AS max_rate
  FROM loyalty.brackets(('retro: ' || (SELECT string_agg(i * 1000 || ':' || i || '%', ', ')
                                         FROM generate_series(1, 64) i))::loyalty.rebate_schedule);
SELECT 'retro: 999999999999999.999999:99.999999%'::loyalty.rebate_schedule;

-- The output reads back as the same value.
SELECT s, s::text::loyalty.rebate_schedule = s AS round_trips
  FROM (VALUES ('retro: 0:0%, 100000:2%, 500000:3.5%'::loyalty.rebate_schedule),
               ('marginal: 0.5:0.000001%, 7:100%')) v(s);

--
-- 2. The mode and the brackets
--
SELECT loyalty.rebate_mode('RETRO: 0:1%'), loyalty.rebate_mode('marginal: 0:1%');
SELECT * FROM loyalty.brackets('retro: 0:0%, 100000:2%, 500000:3.5%');

--
-- 3. rebate() and rebate_rate()
--
-- The result is exact: numeric arithmetic, never float, never rounded.  It
-- keeps the volume's scale (2% of 100000.00 is 2000.00) and has more
-- decimals only when the exact amount needs them.
--

-- retro: the rate of the highest bracket reached (threshold <= volume)
-- applies to the whole volume.  Checked by hand:
--   99999.99  -> 0%   -> 0.00
--   100000    -> 2%   -> 2000            (exactly on the threshold)
--   123456.78 -> 2%   -> 2469.1356
--   499999.99 -> 2%   -> 9999.9998       (one cent below the next bracket)
--   500000    -> 3.5% -> 17500
--   1000000   -> 3.5% -> 35000
SELECT volume,
       loyalty.rebate('retro: 0:0%, 100000:2%, 500000:3.5%', volume) AS rebate,
       loyalty.rebate_rate('retro: 0:0%, 100000:2%, 500000:3.5%', volume) AS rate
  FROM unnest('{0, 99999.99, 100000, 100000.00, 123456.78, 250000,
                499999.99, 500000, 1000000}'::numeric[]) volume;

-- marginal: each bracket's slice [threshold_i, threshold_i+1) earns its own
-- rate; rebate_rate is the rate of the top slice reached.  By hand, for
-- 'marginal: 0:1%, 50000:2%, 200000:3%':
--   10000     -> 10000 x 1%                                   = 100
--   50000     -> 50000 x 1%                                   = 500
--   60000     -> 500 + 10000 x 2%                             = 700
--   123456.78 -> 500 + 73456.78 x 2%                          = 1969.1356
--   200000    -> 500 + 150000 x 2%                            = 3500
--   300000    -> 500 + 3000 + 100000 x 3%                     = 6500
SELECT volume,
       loyalty.rebate('marginal: 0:1%, 50000:2%, 200000:3%', volume) AS rebate,
       loyalty.rebate_rate('marginal: 0:1%, 50000:2%, 200000:3%', volume) AS rate
  FROM unnest('{0, 10000, 49999.99, 50000, 60000, 123456.78, 200000,
                300000}'::numeric[]) volume;

-- The same brackets, both modes, 600000 of volume:
--   retro:    600000 x 3.5%                    = 21000
--   marginal: 400000 x 2% + 100000 x 3.5%      = 8000 + 3500 = 11500
SELECT loyalty.rebate('retro: 0:0%, 100000:2%, 500000:3.5%', 600000) AS retro,
       loyalty.rebate('marginal: 0:0%, 100000:2%, 500000:3.5%', 600000) AS marginal;

-- A first threshold above 0: nothing below it, in either mode.
--   marginal 600000 -> 400000 x 2% + 100000 x 3% = 8000 + 3000 = 11000
SELECT volume,
       loyalty.rebate('retro: 100000:2%', volume) AS retro,
       loyalty.rebate('marginal: 100000:2%, 500000:3%', volume) AS marginal,
       loyalty.rebate_rate('marginal: 100000:2%, 500000:3%', volume) AS rate
  FROM unnest('{0, 99999.99, 100000, 600000}'::numeric[]) volume;

-- Exactness where float would not be exact:
--   12345.67 x 3.125%           = 385.8021875
--   99999999999999.99 x 3.5%    = 3499999999999.99965
--   marginal at 99999999999999.99:
--     500 + 3000 + 99999999799999.99 x 3% = 2999999997499.9997
--   0.001 x 1%                  = 0.00001
--   1 x 0.000001%               = 0.00000001
SELECT loyalty.rebate('retro: 0:3.125%', 12345.67) AS a,
       loyalty.rebate('retro: 0:3.5%', 99999999999999.99) AS b,
       loyalty.rebate('marginal: 0:1%, 50000:2%, 200000:3%', 99999999999999.99) AS c,
       loyalty.rebate('marginal: 0:1%', 0.001) AS d,
       loyalty.rebate('retro: 0:0.000001%', 1) AS e,
       loyalty.rebate('retro: 0:100%', 1234.5) AS f;

-- A negative volume (credit notes exceeding invoices) is priced
-- symmetrically: rebate(s, -v) = -rebate(s, v), rebate_rate(s, -v) =
-- rebate_rate(s, v).  So a credit note reverses exactly what its invoice
-- earned.
SELECT volume,
       loyalty.rebate('retro: 0:0%, 100000:2%, 500000:3.5%', volume) AS retro,
       loyalty.rebate('marginal: 0:1%, 50000:2%, 200000:3%', volume) AS marginal,
       loyalty.rebate_rate('retro: 0:0%, 100000:2%, 500000:3.5%', volume) AS rate
  FROM unnest('{-600000, -123456.78, -99999.99, -0.01}'::numeric[]) volume;
SELECT bool_and(loyalty.rebate(s, -v) = -loyalty.rebate(s, v)
                AND loyalty.rebate_rate(s, -v) = loyalty.rebate_rate(s, v)) AS symmetric
  FROM (VALUES ('retro: 0:0%, 100000:2%, 500000:3.5%'::loyalty.rebate_schedule),
               ('marginal: 10000:1%, 50000:2.25%, 200000:3%')) x(s),
       generate_series(0, 600000, 1234.5) v;

-- The functions are STRICT: NULL in, NULL out.
SELECT loyalty.rebate(NULL, 5), loyalty.rebate('retro: 0:1%', NULL),
       loyalty.rebate_rate('retro: 0:1%', NULL), loyalty.rebate_mode(NULL);

-- NaN and infinite volumes have no rebate: an error.
SELECT loyalty.rebate('retro: 0:1%', 'NaN');
SELECT loyalty.rebate('retro: 0:1%', 'Infinity');
SELECT loyalty.rebate_rate('marginal: 0:1%', '-Infinity');

--
-- 4. Storage: a column, equality, hashing, binary COPY
--
CREATE TABLE rs (id int PRIMARY KEY, schedule loyalty.rebate_schedule);
INSERT INTO rs VALUES
  (1, 'retro: 0:0%, 100000:2%, 500000:3.5%'),
  (2, 'RETRO: 0:0.0%, 100000.00:2%, 500000:3.50%'),
  (3, 'marginal: 0:0%, 100000:2%, 500000:3.5%'),
  (4, 'marginal: 0.000001:0.000001%, 999999999999999.999999:100%'),
  (5, ('retro: ' || (SELECT string_agg(i * 1000 || ':' || i || '%', ', ')
                       FROM generate_series(1, 64) i))::loyalty.rebate_schedule),
  (6, NULL);

-- Rows 1 and 2 hold the same value; row 3 differs only by its mode.
SELECT a.id, b.id FROM rs a JOIN rs b ON a.schedule = b.schedule AND a.id < b.id;
SELECT count(*) AS distinct_schedules
  FROM (SELECT DISTINCT schedule FROM rs WHERE schedule IS NOT NULL) d;

-- Binary COPY out and back in gives the same values.
SELECT '/tmp/loyalty_types_' || pg_backend_pid() || '.bin' AS f \gset
COPY rs TO :'f' (FORMAT binary);
CREATE TABLE rs2 (LIKE rs);
COPY rs2 FROM :'f' (FORMAT binary);
SELECT count(*) AS rows,
       count(*) FILTER (WHERE rs.schedule IS NOT DISTINCT FROM rs2.schedule
                          AND rs.schedule::text IS NOT DISTINCT FROM rs2.schedule::text) AS equal
  FROM rs JOIN rs2 USING (id);

-- The binary form: version 1, mode (0 retro, 1 marginal), bracket count,
-- then per bracket the threshold and the rate in numeric's binary format.
SELECT loyalty.rebate_schedule_send('marginal: 0:1%, 50000:2%');

-- Binary input is checked exactly as text input is.  A binary COPY file has
-- no type information, so a bytea written out can be read back as a
-- rebate_schedule: that is how these hand-made binary values get in.
CREATE TABLE rs_bin (schedule loyalty.rebate_schedule);
-- marginal: 0:1.50% (rate with numeric dscale 2) is accepted and canonicalised.
COPY (SELECT decode('01 01 0001  0000 0000 0000 0000  0002 0000 0000 0002 0001 1388', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- Unknown format version.
COPY (SELECT decode('00 00 0001  0000 0000 0000 0000  0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- Unknown mode code.
COPY (SELECT decode('01 02 0001  0000 0000 0000 0000  0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- No brackets.
COPY (SELECT decode('01 00 0000', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- A rate over 100% (150).
COPY (SELECT decode('01 00 0001  0000 0000 0000 0000  0001 0000 0000 0000 0096', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- A negative rate.
COPY (SELECT decode('01 00 0001  0000 0000 0000 0000  0001 0000 4000 0000 0001', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- A NaN threshold.
COPY (SELECT decode('01 00 0001  0000 0000 c000 0000  0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- Thresholds out of order: 5:1%, 0:2%.
COPY (SELECT decode('01 00 0002  0001 0000 0000 0000 0005  0001 0000 0000 0000 0001  0000 0000 0000 0000  0001 0000 0000 0000 0002', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- A rate with 7 decimals (0.0000001, dscale 7).
COPY (SELECT decode('01 00 0001  0000 0000 0000 0000  0001 fffe 0000 0007 000a', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;
-- Truncated: the rate is missing.
COPY (SELECT decode('01 00 0001  0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY rs_bin FROM :'f' (FORMAT binary);
SELECT schedule FROM rs_bin;
TRUNCATE rs_bin;

--
-- 5. Invalid literals: each error names the offending part and its
-- 1-based character position, and the hint shows the accepted form.
--

-- Empty, or no brackets.
SELECT ''::loyalty.rebate_schedule;
SELECT 'retro'::loyalty.rebate_schedule;
SELECT 'retro:'::loyalty.rebate_schedule;
SELECT 'retro:  '::loyalty.rebate_schedule;
-- The mode: missing, unknown, or without its colon.
SELECT '0:0%, 100000:2%'::loyalty.rebate_schedule;
SELECT ': 0:0%'::loyalty.rebate_schedule;
SELECT 'tiered: 0:0%, 100000:2%'::loyalty.rebate_schedule;
SELECT 'retroactive: 0:1%'::loyalty.rebate_schedule;
SELECT 'retro 0:0%'::loyalty.rebate_schedule;
-- A bracket: missing ':' or '%', junk after it, a trailing comma.
SELECT 'retro: 0 1%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1'::loyalty.rebate_schedule;
SELECT 'retro: 0:1, 100:2%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1%%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1% 100:2%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1%; 100:2%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1%,'::loyalty.rebate_schedule;
SELECT 'retro: 0:1%, :2%'::loyalty.rebate_schedule;
-- There are no thousands separators: the comma separates brackets.
SELECT 'retro: 0:0%, 100,000:2%'::loyalty.rebate_schedule;
-- Thresholds must be strictly ascending.
SELECT 'retro: 0:0%, 100000:2%, 100000.00:3%'::loyalty.rebate_schedule;
SELECT 'retro: 0:0%, 500000:3.5%, 100000:2%'::loyalty.rebate_schedule;
-- Rates: 0% to 100%.
SELECT 'retro: 0:101%'::loyalty.rebate_schedule;
SELECT 'retro: 0:100.000001%'::loyalty.rebate_schedule;
SELECT 'retro: 0:-1%'::loyalty.rebate_schedule;
-- Numbers: no sign, no exponent, no NaN or Infinity, no stray characters,
-- not too many digits.
SELECT 'retro: -100:1%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1e1%'::loyalty.rebate_schedule;
SELECT 'retro: 1E5:1%'::loyalty.rebate_schedule;
SELECT 'retro: NaN:1%'::loyalty.rebate_schedule;
SELECT 'retro: 0:Infinity%'::loyalty.rebate_schedule;
SELECT 'retro: 0:two%'::loyalty.rebate_schedule;
SELECT 'retro: 0:2.5.1%'::loyalty.rebate_schedule;
SELECT 'retro: 1234567890123456:1%'::loyalty.rebate_schedule;
SELECT 'retro: 0:1.1234567%'::loyalty.rebate_schedule;
-- At most 64 brackets.
SELECT ('retro: ' || (SELECT string_agg(i || ':1%', ', ')
                        FROM generate_series(1, 65) i))::loyalty.rebate_schedule;
-- Positions count characters, not bytes.
SELECT 'marginal: 0:1%, 5:2€'::loyalty.rebate_schedule;

DROP TABLE rs, rs2, rs_bin;
