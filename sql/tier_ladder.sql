--
-- tier_ladder: ordered named thresholds, e.g. a partner program's
-- Member / Silver / Gold / Platinum levels by qualifying spend.
--
\pset null '(null)'
-- The operators live in schema loyalty: put it on the search_path to use
-- = and <> unqualified, as a DBA would.
SET search_path = public, loyalty;

--
-- 1. The literal
--

-- Name:threshold pairs, lowest first.  The output is the canonical form.
SELECT 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'::loyalty.tier_ladder;

-- Spaces, tabs and line breaks between tokens are ignored; spaces inside a
-- name are part of it.
SELECT E'  Member :0,\n\tSilver:50000 ,Gold Plus:   250000  '::loyalty.tier_ladder;

-- Thresholds are canonicalised: leading zeros and insignificant fraction
-- zeros go, so 50000.00 and 50000 are the same threshold.
SELECT 'Member:000, Silver:050000.00, Gold:250000.50, Top:7000000.'::loyalty.tier_ladder;
SELECT 'Member:0, Silver:50000.00'::loyalty.tier_ladder
     = 'Member:0, Silver:50000'::loyalty.tier_ladder AS same_value;
-- A fraction may omit its leading zero; 6 significant decimals are allowed.
SELECT 'Starter:.5, Pro:1.123456, Max:2.1234560'::loyalty.tier_ladder;

-- Bare names: letters (any alphabet), digits, '_', '-', '.', '/', '&' and
-- spaces inside.
SELECT 'Bronze & Co.:0, Tier-2/EU:1000, Élite_Ü:5000, Золото:9000'::loyalty.tier_ladder;

-- Any other character needs double quotes, with "" for a quote inside.
-- Output quotes exactly the names that need it.
SELECT '"Gold, EU":0, "Platinum: Elite":10, "The ""Best""":20, "100%":30, "Gold":40'::loyalty.tier_ladder;

-- Names keep their case; two ladders differing only in case are different
-- values.  Order matters too.
SELECT 'Gold:0'::loyalty.tier_ladder = 'gold:0'::loyalty.tier_ladder AS same_case,
       'A:0, B:1'::loyalty.tier_ladder <> 'A:0, B:2'::loyalty.tier_ladder AS differ,
       'A:0, B:1'::loyalty.tier_ladder = 'A:0,B:1.0'::loyalty.tier_ladder AS same;

-- Limits: names up to 63 bytes, up to 64 tiers, thresholds up to 15 digits
-- before and 6 after the decimal point.
SELECT (repeat('N', 63) || ':0')::loyalty.tier_ladder;
SELECT count(*) AS tiers, max(threshold) AS top
  FROM loyalty.tiers((SELECT string_agg('T' || i || ':' || i, ', ')
                        FROM generate_series(1, 64) i)::loyalty.tier_ladder);
SELECT 'Top:999999999999999.999999'::loyalty.tier_ladder;

-- The output reads back as the same value.
SELECT l, l::text::loyalty.tier_ladder = l AS round_trips
  FROM (VALUES ('Member:0, Silver:50000'::loyalty.tier_ladder),
               ('"a""b":0, "c, d":1.5, Élite:2'),
               ('X:0.000001')) v(l);

--
-- 2. Placing an amount: tier_of, tier_rank, next_tier
--
-- An amount exactly on a threshold reaches that tier; one cent below does
-- not.  next_tier gives the tier above and the gap still to go; at the top
-- it is one row of NULLs.  A negative amount (net credit after credit notes)
-- counts as 0: it reaches what 0 reaches and its gap is measured from 0.
--
SELECT amount,
       loyalty.tier_of(l, amount) AS tier,
       loyalty.tier_rank(l, amount) AS rank,
       n.name AS next, n.threshold, n.gap
  FROM (SELECT 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'::loyalty.tier_ladder) x(l),
       unnest('{-1200.50, 0, 0.01, 49999.99, 50000, 50000.00, 50000.01,
                249999.99, 250000, 999999.99, 1000000, 99999999999999.99}'::numeric[]) amount,
       LATERAL loyalty.next_tier(l, amount) n;

-- When the first threshold is above 0, smaller amounts reach no tier: tier_of
-- and tier_rank are NULL, and the next tier is the first one.
SELECT amount,
       loyalty.tier_of(l, amount) AS tier,
       loyalty.tier_rank(l, amount) AS rank,
       (loyalty.next_tier(l, amount)).*
  FROM (SELECT 'Silver:50000, Gold:250000'::loyalty.tier_ladder) x(l),
       unnest('{-10, 0, 49999.99, 50000}'::numeric[]) amount;

-- A single-tier ladder.
SELECT loyalty.tier_of('Only:0', 5), (loyalty.next_tier('Only:0', 5)).*;

-- Amounts of any size and scale are fine (only thresholds are limited).
SELECT loyalty.tier_of('A:0, B:1000000', 1e30),
       (loyalty.next_tier('A:0, B:1000000', 0.0000000001)).gap;

-- The functions are STRICT: a NULL ladder or amount gives NULL.
SELECT loyalty.tier_of(NULL, 5), loyalty.tier_of('A:0', NULL),
       loyalty.tier_rank('A:0', NULL), (loyalty.next_tier(NULL, 5)).*;

-- NaN and infinite amounts reach no meaningful tier: an error.
SELECT loyalty.tier_of('A:0', 'NaN');
SELECT loyalty.tier_rank('A:0', 'Infinity');
SELECT loyalty.next_tier('A:0', '-Infinity');

--
-- 3. Listing the tiers
--
SELECT * FROM loyalty.tiers('Member:0, Silver:50000, "Gold, EU":250000.5');

--
-- 4. Storage: a column, equality, hashing, binary COPY
--
CREATE TABLE tl (id int PRIMARY KEY, ladder loyalty.tier_ladder);
INSERT INTO tl VALUES
  (1, 'Member:0, Silver:50000, Gold:250000, Platinum:1000000'),
  (2, 'Member:0, Silver:50000.00, Gold:250000, Platinum:1000000'),
  (3, '"Gold, EU":0, "The ""Best""":99999999999999.99'),
  (4, 'Élite:0.5, Золото:7'),
  (5, (SELECT string_agg('Tier ' || i || ':' || i * 1000, ', ')
         FROM generate_series(1, 64) i)::loyalty.tier_ladder),
  (6, NULL);

-- Rows 1 and 2 hold the same value: =, GROUP BY and DISTINCT agree (the
-- type has a hash opclass, so these run as hash joins and aggregates).
SELECT a.id, b.id FROM tl a JOIN tl b ON a.ladder = b.ladder AND a.id < b.id;
SELECT count(*) AS distinct_ladders
  FROM (SELECT DISTINCT ladder FROM tl WHERE ladder IS NOT NULL) d;
SELECT ladder, count(*) FROM tl WHERE id <= 2 GROUP BY ladder;

-- Binary COPY out and back in gives the same values.
SELECT '/tmp/loyalty_types_' || pg_backend_pid() || '.bin' AS f \gset
COPY tl TO :'f' (FORMAT binary);
CREATE TABLE tl2 (LIKE tl);
COPY tl2 FROM :'f' (FORMAT binary);
SELECT count(*) AS rows,
       count(*) FILTER (WHERE tl.ladder IS NOT DISTINCT FROM tl2.ladder
                          AND tl.ladder::text IS NOT DISTINCT FROM tl2.ladder::text) AS equal
  FROM tl JOIN tl2 USING (id);

-- The binary form: version 1, tier count, then per tier the name (int32
-- length + bytes) and the threshold in numeric's binary format.
SELECT loyalty.tier_ladder_send('Gold:5');

-- Binary input is checked exactly as text input is.  A binary COPY file has
-- no type information, so a bytea written out can be read back as a
-- tier_ladder: that is how these hand-made binary values get in.
CREATE TABLE tl_bin (ladder loyalty.tier_ladder);
-- Gold:5.000 (numeric dscale 3) is accepted and canonicalised.
COPY (SELECT decode('01 0001 00000004 476f6c64 0001 0000 0000 0003 0005', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- A name that needs quoting comes through intact.
COPY (SELECT decode('01 0001 00000003 612c62 0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- Unknown format version.
COPY (SELECT decode('02 0001 00000004 476f6c64 0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- No tiers.
COPY (SELECT decode('01 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- A negative threshold (numeric sign 0x4000).
COPY (SELECT decode('01 0001 00000004 476f6c64 0001 0000 4000 0000 0005', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- A NaN threshold (numeric sign 0xC000).
COPY (SELECT decode('01 0001 00000004 476f6c64 0000 0000 c000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- Duplicate names, ignoring case: A:0, a:5.
COPY (SELECT decode('01 0002 00000001 41 0000 0000 0000 0000 00000001 61 0001 0000 0000 0000 0005', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- Thresholds out of order: A:5, B:0.
COPY (SELECT decode('01 0002 00000001 41 0001 0000 0000 0000 0005 00000001 42 0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- An empty name.
COPY (SELECT decode('01 0001 00000000 0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- Two tiers announced, one present.
COPY (SELECT decode('01 0002 00000001 41 0000 0000 0000 0000', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- A name length running past the end.
COPY (SELECT decode('01 0001 7fffffff 41', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;
-- Bytes left over after the last tier.
COPY (SELECT decode('01 0001 00000001 41 0000 0000 0000 0000 ff', 'hex')) TO :'f' (FORMAT binary);
COPY tl_bin FROM :'f' (FORMAT binary);
SELECT ladder FROM tl_bin;
TRUNCATE tl_bin;

--
-- 5. Invalid literals: each error names the offending part and its
-- 1-based character position, and the hint shows the accepted form.
--

-- Empty.
SELECT ''::loyalty.tier_ladder;
SELECT '   '::loyalty.tier_ladder;
-- Missing pieces.
SELECT 'Member'::loyalty.tier_ladder;
SELECT 'Member:'::loyalty.tier_ladder;
SELECT ':0'::loyalty.tier_ladder;
SELECT 'Member:0,'::loyalty.tier_ladder;
SELECT 'Member:0,,Silver:5'::loyalty.tier_ladder;
-- Junk after a threshold.
SELECT 'Member:0 Silver:5'::loyalty.tier_ladder;
SELECT 'Member:0; Silver:5'::loyalty.tier_ladder;
-- There are no thousands separators: the comma separates tiers.
SELECT 'Member:1,000'::loyalty.tier_ladder;
-- Thresholds must be strictly ascending.
SELECT 'Member:0, Silver:50000, Gold:50000'::loyalty.tier_ladder;
SELECT 'Member:0, Gold:250000, Silver:50000'::loyalty.tier_ladder;
SELECT 'Member:0, Silver:50000.00, Gold:50000'::loyalty.tier_ladder;
-- Names must differ, ignoring case; quoting does not make a name different.
SELECT 'Gold:0, Silver:10, gold:20'::loyalty.tier_ladder;
SELECT 'Gold:0, "Gold":20'::loyalty.tier_ladder;
-- Numbers: no sign, no exponent, no NaN or Infinity, no stray characters.
SELECT 'Member:-1'::loyalty.tier_ladder;
SELECT 'Member:+1'::loyalty.tier_ladder;
SELECT 'Member:1e5'::loyalty.tier_ladder;
SELECT 'Member:2.5E+3'::loyalty.tier_ladder;
SELECT 'Member:NaN'::loyalty.tier_ladder;
SELECT 'Member:Infinity'::loyalty.tier_ladder;
SELECT 'Member:-Infinity'::loyalty.tier_ladder;
SELECT 'Member:1.2.3'::loyalty.tier_ladder;
SELECT 'Member:12abc'::loyalty.tier_ladder;
SELECT 'Member:.'::loyalty.tier_ladder;
SELECT 'Member:$100'::loyalty.tier_ladder;
-- Too many digits.
SELECT 'Member:1234567890123456'::loyalty.tier_ladder;
SELECT 'Member:0.1234567'::loyalty.tier_ladder;
-- Names: too long (64 bytes, also in a multibyte alphabet), bad characters,
-- bad quoting.
SELECT (repeat('N', 64) || ':0')::loyalty.tier_ladder;
SELECT (repeat('Ж', 32) || ':0')::loyalty.tier_ladder;
SELECT 'Gold!:0'::loyalty.tier_ladder;
SELECT '"Gold:0'::loyalty.tier_ladder;
SELECT '"":0'::loyalty.tier_ladder;
SELECT '" Gold":0'::loyalty.tier_ladder;
SELECT E'"Go\tld":0'::loyalty.tier_ladder;
-- At most 64 tiers.
SELECT (SELECT string_agg('T' || i || ':' || i, ', ')
          FROM generate_series(1, 65) i)::loyalty.tier_ladder;
-- Positions count characters, not bytes.
SELECT 'Élite:5, Золото:3'::loyalty.tier_ladder;

DROP TABLE tl, tl2, tl_bin;
