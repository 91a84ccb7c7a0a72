-- The domain model (ARCHITECTURE.md §2).  Every loyalty table carries the
-- program and the ERP's account key so that it can be co-located with the
-- ERP's own tables; nothing on the accrual path draws from a sequence.

-- Roles: created when absent, never dropped by DROP EXTENSION (roles are
-- cluster-wide and may be shared by several databases).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_reader') THEN
        CREATE ROLE loyalty_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_operator') THEN
        CREATE ROLE loyalty_operator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_admin') THEN
        CREATE ROLE loyalty_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'loyalty_partner') THEN
        CREATE ROLE loyalty_partner NOLOGIN;
    END IF;
END
$roles$;

-- Multiplier maps are JSON objects of positive numbers, e.g. {"SOLAR": 2};
-- segment maps nest one level: {"cooperation_model": {"distributor": 1.1}}.
CREATE FUNCTION @extschema@._valid_multipliers(m pg_catalog.jsonb, nested boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT pg_catalog.jsonb_typeof(m) OPERATOR(pg_catalog.=) 'object'
   AND NOT EXISTS (
        SELECT FROM pg_catalog.jsonb_each(m) AS e
        WHERE CASE WHEN nested
                   THEN e.key OPERATOR(pg_catalog.<>) ALL (ARRAY['cooperation_model', 'industry', 'region'])
                        OR NOT @extschema@._valid_multipliers(e.value, false)
                   ELSE pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.<>) 'number'
                        OR (e.value)::text::pg_catalog.numeric OPERATOR(pg_catalog.<=) 0
              END)
$$;
COMMENT ON FUNCTION @extschema@._valid_multipliers(pg_catalog.jsonb, boolean) IS
    'Internal: CHECK helper for the multiplier maps of loyalty.rule.';

CREATE TABLE @extschema@.program (
    program_id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE
                         CHECK (name OPERATOR(pg_catalog.~) '^[^[:cntrl:]]{1,63}$' AND name OPERATOR(pg_catalog.=) pg_catalog.btrim(name)),
    currency             text NOT NULL CHECK (currency OPERATOR(pg_catalog.~) '^[A-Z]{3}$'),
    ladder               @extschema@.tier_ladder,
    basis                text NOT NULL DEFAULT 'amount' CHECK (basis IN ('amount', 'quantity')),
    rounding             text NOT NULL DEFAULT 'toward_zero' CHECK (rounding IN ('toward_zero', 'half_up', 'half_even')),
    qualification_window interval NOT NULL DEFAULT '12 months'
                         CHECK (qualification_window OPERATOR(pg_catalog.>=) '1 month'::interval
                                AND qualification_window OPERATOR(pg_catalog.<=) '10 years'::interval),
    enrollment           text NOT NULL DEFAULT 'auto' CHECK (enrollment IN ('auto', 'explicit')),
    strict               boolean NOT NULL DEFAULT false,
    settlement_period    text NOT NULL DEFAULT 'quarter' CHECK (settlement_period IN ('month', 'quarter', 'year')),
    point_lifetime       interval CHECK (point_lifetime OPERATOR(pg_catalog.>) '0'::interval),
    rebate               @extschema@.rebate_schedule,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    time_zone            text NOT NULL DEFAULT pg_catalog.current_setting('TimeZone')
                         CHECK (pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL),
    tier_basis           text NOT NULL DEFAULT 'qualifying' CHECK (tier_basis IN ('qualifying', 'points', 'action')),
    tier_action          text,
    tier_grace           text NOT NULL DEFAULT 'none' CHECK (tier_grace IN ('none', 'one_level', 'margin', 'periods')),
    tier_grace_value     numeric,
    CONSTRAINT program_tier_rules_check
        CHECK ((tier_basis = 'action') = (tier_action IS NOT NULL)
               AND CASE tier_grace WHEN 'margin' THEN tier_grace_value OPERATOR(pg_catalog.>) 0 AND tier_grace_value OPERATOR(pg_catalog.<) 1
                                   WHEN 'periods' THEN tier_grace_value OPERATOR(pg_catalog.>=) 1 AND tier_grace_value OPERATOR(pg_catalog.<=) 100
                                        AND tier_grace_value OPERATOR(pg_catalog.=) pg_catalog.trunc(tier_grace_value)
                                   ELSE tier_grace_value IS NULL END)
);
COMMENT ON TABLE @extschema@.program IS 'One loyalty or partner program: currency, accrual basis, rounding, tier ladder, qualification window, settlement period, point lifetime, enrolment policy.';
COMMENT ON COLUMN @extschema@.program.program_id IS 'Surrogate key; every other loyalty table carries it.';
COMMENT ON COLUMN @extschema@.program.name IS 'The name users type in every loyalty function (unique, 1 to 63 characters).';
COMMENT ON COLUMN @extschema@.program.currency IS 'ISO 4217 code; invoice rows in another currency are rejected to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.ladder IS 'Tier ladder applied to rolling qualifying spend; NULL for a program without tiers.';
COMMENT ON COLUMN @extschema@.program.basis IS 'amount: points per currency unit; quantity: points per unit of the mapped quantity column (e.g. per cubic metre).';
COMMENT ON COLUMN @extschema@.program.rounding IS 'How a row''s points are made whole: toward_zero (drops the fraction: 247.83 and -247.83 give 247 and -247), half_up (half away from zero: 2.5 gives 3, -2.5 gives -3) or half_even (half to the even neighbour: 2.5 gives 2, 3.5 gives 4). Symmetric around zero, so a credit note reverses exactly what the same invoice earned.';
COMMENT ON COLUMN @extschema@.program.qualification_window IS 'Rolling window of qualifying spend that decides the tier, counted in whole calendar months ending with the current month.';
COMMENT ON COLUMN @extschema@.program.enrollment IS 'auto: every customer that invoices is enrolled; explicit: only accounts enrolled with loyalty.enroll earn.';
COMMENT ON COLUMN @extschema@.program.strict IS 'When true, an invoice row the program cannot accrue fails the ERP statement instead of going to loyalty.rejected_event.';
COMMENT ON COLUMN @extschema@.program.settlement_period IS 'Period of settlement runs: month, quarter or year.';
COMMENT ON COLUMN @extschema@.program.point_lifetime IS 'How long earned points stay valid before expiry at settlement; NULL = points never expire.';
COMMENT ON COLUMN @extschema@.program.rebate IS 'Volume rebate schedule settled per period; NULL = no rebate.';
COMMENT ON COLUMN @extschema@.program.created_at IS 'When the program was created.';
COMMENT ON COLUMN @extschema@.program.tier_basis IS 'What the ladder''s thresholds measure over the rolling window at settlement: qualifying (spend, the default), points (earned by documents of the window) or action (count of tier_action, e.g. certifications). Extra requirements per tier: loyalty.tier_requirement. Set with loyalty.set_tier_rules().';
COMMENT ON COLUMN @extschema@.program.tier_action IS 'The action counted when tier_basis is action; NULL otherwise.';
COMMENT ON COLUMN @extschema@.program.tier_grace IS 'How settlement downgrades an account below its tier: none (to what it qualifies for), one_level (at most one level per period), margin (keeps a tier while the measure is within tier_grace_value of its threshold) or periods (only after tier_grace_value settled periods in a row below).';
COMMENT ON COLUMN @extschema@.program.tier_grace_value IS 'margin: fraction below the threshold still kept (0.1 = 10 %); periods: how many periods in a row below before dropping; NULL otherwise.';
COMMENT ON COLUMN @extschema@.program.time_zone IS 'The program''s calendar: what "today" is for tier upgrades, segment changes and the rolling window, whichever time zone the posting session uses (default: the creating session''s TimeZone).';

CREATE TABLE @extschema@.account (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    account_key       text NOT NULL CHECK (account_key OPERATOR(pg_catalog.<>) ''),
    cooperation_model text CHECK (cooperation_model IN ('direct', 'distributor', 'integrator', 'reseller')),
    industry          text,
    region            text,
    potential_spend   numeric CHECK (potential_spend OPERATOR(pg_catalog.>=) 0),
    cohort            text CHECK (cohort IN ('pilot', 'control')),
    tier              text,
    tier_since        timestamptz,
    enrolled_by       text NOT NULL DEFAULT 'explicit' CHECK (enrolled_by IN ('explicit', 'auto')),
    enrolled_from     date NOT NULL DEFAULT '-infinity',
    enrolled_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- counts the debits (redemptions, claims, expiry) of the account: taking
    -- the next number locks the row, so that debits check the balance one
    -- after the other; the accrual path never touches it
    debit_no          bigint NOT NULL DEFAULT 0 CHECK (debit_no OPERATOR(pg_catalog.>=) 0),
    PRIMARY KEY (program_id, account_key),
    CHECK ((tier IS NULL) = (tier_since IS NULL))
);
COMMENT ON TABLE @extschema@.account IS 'A B2B customer or partner enrolled in a program, keyed by the ERP''s own customer key.';
COMMENT ON COLUMN @extschema@.account.program_id IS 'The program (loyalty.program).';
COMMENT ON COLUMN @extschema@.account.account_key IS 'The ERP''s customer key in text form (an int or bigint key is stored as its decimal text).';
COMMENT ON COLUMN @extschema@.account.cooperation_model IS 'Segment: direct, distributor, integrator or reseller.';
COMMENT ON COLUMN @extschema@.account.industry IS 'Segment: industry.';
COMMENT ON COLUMN @extschema@.account.region IS 'Segment: region.';
COMMENT ON COLUMN @extschema@.account.potential_spend IS 'Estimated annual wallet, the denominator of share of wallet.';
COMMENT ON COLUMN @extschema@.account.cohort IS 'pilot or control for ROI measurement; control accounts accrue qualifying spend but no points. NULL = not in the experiment. Earlier values: loyalty.account_history.';
COMMENT ON COLUMN @extschema@.account.tier IS 'Current tier name from the program''s ladder; NULL below the first threshold.';
COMMENT ON COLUMN @extschema@.account.tier_since IS 'When the current tier was reached.';
COMMENT ON COLUMN @extschema@.account.enrolled_by IS 'explicit (loyalty.enroll) or auto (first invoice under an auto-enrolment program).';
COMMENT ON COLUMN @extschema@.account.enrolled_at IS 'When the account was enrolled.';
COMMENT ON COLUMN @extschema@.account.debit_no IS 'How many debits (redemptions, claims, expiry) the account has had; taking the next number serialises them.';
COMMENT ON COLUMN @extschema@.account.enrolled_from IS 'First document date that earns (-infinity: all of them). Documents dated before it are ignored, so that enrolling never changes what an older document earned.';

CREATE TABLE @extschema@.account_history (
    program_id        integer NOT NULL,
    account_key       text NOT NULL,
    valid_until       date NOT NULL,
    cooperation_model text,
    industry          text,
    region            text,
    cohort            text,
    changed_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, valid_until),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.account_history IS 'Earlier segments and cohorts of an account. Documents dated before valid_until earn by the values of the first row that ends after them; later documents by loyalty.account''s current values. A change takes effect from the day after it is made, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.account_history.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.account_history.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.account_history.valid_until IS 'First document date these values no longer apply to.';
COMMENT ON COLUMN @extschema@.account_history.cooperation_model IS 'Segment: cooperation model, as it was.';
COMMENT ON COLUMN @extschema@.account_history.industry IS 'Segment: industry, as it was.';
COMMENT ON COLUMN @extschema@.account_history.region IS 'Segment: region, as it was.';
COMMENT ON COLUMN @extschema@.account_history.cohort IS 'Cohort, as it was.';
COMMENT ON COLUMN @extschema@.account_history.changed_at IS 'When the change was made.';

CREATE TABLE @extschema@.member (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    member_id   text NOT NULL CHECK (member_id OPERATOR(pg_catalog.<>) ''),
    name        text,
    email       text,
    role        text NOT NULL CHECK (role IN ('economic_buyer', 'technical_buyer', 'end_user', 'champion')),
    PRIMARY KEY (program_id, account_key, member_id),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account
);
COMMENT ON TABLE @extschema@.member IS 'A person at an account; points may be earned by the account or by a member.';
COMMENT ON COLUMN @extschema@.member.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.member.account_key IS 'The account the person works for.';
COMMENT ON COLUMN @extschema@.member.member_id IS 'The person''s key (e.g. the ERP contact id or an e-mail).';
COMMENT ON COLUMN @extschema@.member.name IS 'Display name.';
COMMENT ON COLUMN @extschema@.member.email IS 'Contact e-mail.';
COMMENT ON COLUMN @extschema@.member.role IS 'economic_buyer, technical_buyer, end_user or champion.';

CREATE TABLE @extschema@.rule (
    program_id               integer NOT NULL REFERENCES @extschema@.program,
    valid_from               date NOT NULL,
    points_per_unit          numeric NOT NULL CHECK (points_per_unit OPERATOR(pg_catalog.>=) 0 AND points_per_unit OPERATOR(pg_catalog.<) 1000000),
    min_amount               numeric NOT NULL DEFAULT 0 CHECK (min_amount OPERATOR(pg_catalog.>=) 0),
    product_line_multipliers jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(product_line_multipliers, false)),
    tier_multipliers         jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(tier_multipliers, false)),
    segment_multipliers      jsonb NOT NULL DEFAULT '{}' CHECK (@extschema@._valid_multipliers(segment_multipliers, true)),
    on_time_bonus_pct        numeric NOT NULL DEFAULT 0 CHECK (on_time_bonus_pct OPERATOR(pg_catalog.>=) 0 AND on_time_bonus_pct OPERATOR(pg_catalog.<=) 1000),
    cap_points               bigint CHECK (cap_points OPERATOR(pg_catalog.>) 0),
    cap_period               text CHECK (cap_period IN ('month', 'quarter', 'year')),
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, valid_from),
    CHECK ((cap_points IS NULL) = (cap_period IS NULL)),
    CHECK (valid_from OPERATOR(pg_catalog.<>) 'infinity'::date)
);
COMMENT ON TABLE @extschema@.rule IS 'Versioned earning rules: an invoice row earns by the version in force on its own document date. Versions in force are immutable; change the rules by adding a version (loyalty.add_rule).';
COMMENT ON COLUMN @extschema@.rule.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rule.valid_from IS 'First document date this version applies to (-infinity for the program''s first version).';
COMMENT ON COLUMN @extschema@.rule.points_per_unit IS 'Base rate: points per currency unit (basis amount) or per quantity unit (basis quantity).';
COMMENT ON COLUMN @extschema@.rule.min_amount IS 'Rows whose absolute basis value is below this earn no points (they still count as qualifying spend).';
COMMENT ON COLUMN @extschema@.rule.product_line_multipliers IS 'Multiplier by product line, e.g. {"SOLAR": 2}; lines not listed get 1.';
COMMENT ON COLUMN @extschema@.rule.tier_multipliers IS 'Multiplier by the account''s tier on the document date, e.g. {"Gold": 1.25}.';
COMMENT ON COLUMN @extschema@.rule.segment_multipliers IS 'Multipliers by segment attribute, e.g. {"cooperation_model": {"distributor": 1.1}, "region": {"North": 1.05}}; several that apply multiply.';
COMMENT ON COLUMN @extschema@.rule.on_time_bonus_pct IS 'Bonus, in percent of the row''s points, when the document is paid on or before its due date.';
COMMENT ON COLUMN @extschema@.rule.cap_points IS 'Most points an account can earn from invoices in one cap period; NULL = no cap.';
COMMENT ON COLUMN @extschema@.rule.cap_period IS 'Calendar period of the cap: month, quarter or year (the version in force on the period''s first day decides).';
COMMENT ON COLUMN @extschema@.rule.created_at IS 'When the version was added.';

-- The names of the tables an attachment reads, as they were when attached.
-- A row type on purpose: Citus copies a table to a new node in binary
-- unless a column's type has no binary form, and a row type has none
-- (CanUseBinaryCopyFormatForType); in binary the regclass columns of
-- loyalty.attachment would reach the node as another node's OIDs, in text
-- they are resolved there by name.
CREATE TYPE @extschema@.attached_names AS (source text, header text, product text);
COMMENT ON TYPE @extschema@.attached_names IS 'The qualified names of an attachment''s source, header and product tables when loyalty.attach ran (loyalty.attachment.names_at_attach).';

CREATE TABLE @extschema@.attachment (
    attachment_id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program_id          integer NOT NULL REFERENCES @extschema@.program,
    source              regclass NOT NULL,
    source_name         text NOT NULL,
    key_columns         text[] NOT NULL CHECK (pg_catalog.cardinality(key_columns) OPERATOR(pg_catalog.>) 0),
    account_expr        text NOT NULL,
    amount_expr         text,
    quantity_expr       text,
    date_expr           text NOT NULL,
    product_line_expr   text,
    currency_expr       text,
    doc_type_expr       text,
    credit_note_types   text[],
    due_date_expr       text,
    paid_date_expr      text,
    header              regclass,
    header_key_column   text,
    header_match_column text,
    attached_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    detached_at         timestamptz,
    product             regclass,
    line_product_column text,
    product_id_column   text,
    names_at_attach     @extschema@.attached_names NOT NULL,
    CHECK (amount_expr IS NOT NULL OR quantity_expr IS NOT NULL),
    CHECK ((header IS NULL) = (header_key_column IS NULL) AND (header IS NULL) = (header_match_column IS NULL)),
    CHECK ((doc_type_expr IS NULL) = (credit_note_types IS NULL)),
    CONSTRAINT attachment_product_check
        CHECK ((product IS NULL) = (line_product_column IS NULL) AND (product IS NULL) = (product_id_column IS NULL)
               AND (product IS NULL OR product_line_expr IS NOT NULL))
);
CREATE UNIQUE INDEX attachment_active_uniq ON @extschema@.attachment (program_id, source) WHERE detached_at IS NULL;
COMMENT ON TABLE @extschema@.attachment IS 'How an ERP table feeds a program (loyalty.attach): the column mapping, validated at attach time. Expressions are SQL over the source table (alias s) or its header table (alias h). Detached attachments stay for the audit trail.';
COMMENT ON COLUMN @extschema@.attachment.attachment_id IS 'Surrogate key; the accrual trigger''s argument.';
COMMENT ON COLUMN @extschema@.attachment.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.attachment.source IS 'The ERP table (invoices or invoice lines).';
COMMENT ON COLUMN @extschema@.attachment.source_name IS 'The source''s qualified name when it was attached, kept for the audit trail.';
COMMENT ON COLUMN @extschema@.attachment.key_columns IS 'Columns that identify a row of the source (its primary key by default; several for a composite key).';
COMMENT ON COLUMN @extschema@.attachment.account_expr IS 'SQL for the account key.';
COMMENT ON COLUMN @extschema@.attachment.amount_expr IS 'SQL for the amount (a column or an expression of the row''s columns).';
COMMENT ON COLUMN @extschema@.attachment.quantity_expr IS 'SQL for the quantity (basis quantity).';
COMMENT ON COLUMN @extschema@.attachment.date_expr IS 'SQL for the document date.';
COMMENT ON COLUMN @extschema@.attachment.product_line_expr IS 'SQL for the product line.';
COMMENT ON COLUMN @extschema@.attachment.currency_expr IS 'SQL for the document currency.';
COMMENT ON COLUMN @extschema@.attachment.doc_type_expr IS 'SQL for the document type.';
COMMENT ON COLUMN @extschema@.attachment.credit_note_types IS 'Document types that are credit notes: their amount and quantity count as negative whatever sign the row stores.';
COMMENT ON COLUMN @extschema@.attachment.due_date_expr IS 'SQL for the payment due date (on-time bonus).';
COMMENT ON COLUMN @extschema@.attachment.paid_date_expr IS 'SQL for the paid date (on-time bonus).';
COMMENT ON COLUMN @extschema@.attachment.header IS 'Header table holding the account, date, currency, document type and payment dates of a lines table.';
COMMENT ON COLUMN @extschema@.attachment.header_key_column IS 'The lines'' column (of source) that references the header: attach()''s line_header_column.';
COMMENT ON COLUMN @extschema@.attachment.header_match_column IS 'The header''s own column that line_header_column references (its primary key by default): attach()''s header_id_column.';
COMMENT ON COLUMN @extschema@.attachment.attached_at IS 'When loyalty.attach ran.';
COMMENT ON COLUMN @extschema@.attachment.detached_at IS 'When loyalty.detach ran; NULL while attached.';
COMMENT ON COLUMN @extschema@.attachment.product IS 'Product table (the product master) holding the product line of each line''s product; product_line_expr is then over it (alias p). NULL: the product line is a column of the source.';
COMMENT ON COLUMN @extschema@.attachment.line_product_column IS 'The lines'' column (of source) that references the product table.';
COMMENT ON COLUMN @extschema@.attachment.names_at_attach IS 'The qualified names of source, header and product when attached, for the audit trail after a table is renamed or dropped. Its row type also makes Citus copy this table to a new node as text, so that source, header and product name that node''s own tables (see loyalty.add_node).';
COMMENT ON COLUMN @extschema@.attachment.product_id_column IS 'The product table''s own column that line_product_column references (its primary key by default).';

-- A product's earlier product lines, per attachment: written by the trigger
-- on the product table (loyalty.track_product) when a product's mapped
-- product line changes or the product is deleted, so that what a document
-- earned never changes after the fact.
CREATE TABLE @extschema@.product_history (
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    product_key   text NOT NULL,
    valid_until   date NOT NULL,
    product_line  text,
    changed_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (attachment_id, product_key, valid_until)
);
COMMENT ON TABLE @extschema@.product_history IS 'Earlier product lines of the products of an attachment''s product table. A document dated before valid_until earns by the product line of the first row of its product that ends after the document''s date; later documents by the product''s current row. A change takes effect from the day after it is made (in the program''s calendar), or after the latest document of the product already written, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.product_history.attachment_id IS 'The attachment whose product table it is.';
COMMENT ON COLUMN @extschema@.product_history.product_key IS 'The product''s key (product_id_column) in its text form.';
COMMENT ON COLUMN @extschema@.product_history.valid_until IS 'First document date this product line no longer applies to.';
COMMENT ON COLUMN @extschema@.product_history.product_line IS 'The product line as it was (NULL: none, or the product did not exist).';
COMMENT ON COLUMN @extschema@.product_history.changed_at IS 'When the change was made.';

-- An enum rather than a CHECK: the check would be re-parsed on every posting.
CREATE TYPE @extschema@.ledger_kind AS ENUM ('earn', 'reverse', 'bonus', 'cap', 'backfill', 'restate', 'redeem', 'expire', 'adjust', 'award', 'rebate', 'mdf');
COMMENT ON TYPE @extschema@.ledger_kind IS 'What a ledger entry records: earn, reverse, bonus, cap, backfill, restate, redeem, expire, adjust, award, rebate, mdf.';

CREATE TABLE @extschema@.ledger (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    entry_no      bigint NOT NULL CHECK (entry_no OPERATOR(pg_catalog.>) 0),
    kind          @extschema@.ledger_kind NOT NULL,
    points        bigint NOT NULL DEFAULT 0,
    qualifying    numeric NOT NULL DEFAULT 0,
    rebate        numeric NOT NULL DEFAULT 0,
    mdf           numeric NOT NULL DEFAULT 0,
    member_id     text,
    attachment_id integer,
    source_rows   integer NOT NULL DEFAULT 0 CHECK (source_rows OPERATOR(pg_catalog.>=) 0),
    corrects      bigint,
    reason        text,
    posted_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    corrects_xid  xid8,
    -- numbered per transaction, not per account: two transactions posting
    -- to one account must not wait for each other for a number
    PRIMARY KEY (program_id, account_key, posted_xid, entry_no),
    -- no foreign key to account: its check would run a query per posting on
    -- the hot path; accounts with postings cannot be deleted (account_keep)
    CHECK ((corrects IS NULL) = (corrects_xid IS NULL))
);
COMMENT ON TABLE @extschema@.ledger IS 'Append-only journal of every movement. Nothing is updated or deleted; corrections are new entries. Wallets are columns: points, qualifying (tier spend), rebate and mdf (money).';
COMMENT ON COLUMN @extschema@.ledger.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.ledger.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.ledger.entry_no IS 'Entry number within the posting transaction (posted_xid), from 1 (on a Citus worker from its node group times 2^40, plus 1: transaction ids are each node''s own, and a shard holds rows written on other nodes too); with the account and posted_xid it identifies the entry. No sequence and no per-account counter is involved, so postings never wait for each other.';
COMMENT ON COLUMN @extschema@.ledger.kind IS 'earn / reverse: what an ERP statement''s new / old rows earn; bonus: on-time payment bonus; cap: points withheld (or given back) by a cap; backfill: history accrued by loyalty.backfill; restate: what an account''s documents earn differently after its enrolment date changed; redeem, expire, adjust, award, rebate, mdf.';
COMMENT ON COLUMN @extschema@.ledger.points IS 'Points moved (negative for reversals, redemptions, expiry).';
COMMENT ON COLUMN @extschema@.ledger.qualifying IS 'Tier-qualifying spend moved, in program currency.';
COMMENT ON COLUMN @extschema@.ledger.rebate IS 'Rebate money moved.';
COMMENT ON COLUMN @extschema@.ledger.mdf IS 'Market development funds moved.';
COMMENT ON COLUMN @extschema@.ledger.member_id IS 'The member who earned or spent, when not the account as a whole.';
COMMENT ON COLUMN @extschema@.ledger.attachment_id IS 'The ERP table mapping whose rows produced the entry.';
COMMENT ON COLUMN @extschema@.ledger.source_rows IS 'How many ERP rows the entry sums.';
COMMENT ON COLUMN @extschema@.ledger.corrects IS 'Entry number of the entry (same account, transaction corrects_xid) this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.corrects_xid IS 'Transaction of the entry this entry corrects, if any.';
COMMENT ON COLUMN @extschema@.ledger.reason IS 'Free text: the statement kind for accruals, the reason for adjustments.';
COMMENT ON COLUMN @extschema@.ledger.posted_at IS 'Transaction timestamp of the posting.';
COMMENT ON COLUMN @extschema@.ledger.posted_xid IS 'Transaction that posted the entry.';

CREATE TABLE @extschema@.balance_folded (
    program_id  integer NOT NULL,
    account_key text NOT NULL,
    points      bigint NOT NULL DEFAULT 0,
    qualifying  numeric NOT NULL DEFAULT 0,
    rebate      numeric NOT NULL DEFAULT 0,
    mdf         numeric NOT NULL DEFAULT 0,
    entry_count bigint NOT NULL DEFAULT 0 CHECK (entry_count OPERATOR(pg_catalog.>=) 0),
    m_month        date[] NOT NULL DEFAULT '{}',
    m_attachment   integer[] NOT NULL DEFAULT '{}',
    m_points       bigint[] NOT NULL DEFAULT '{}',
    m_qualifying   numeric[] NOT NULL DEFAULT '{}',
    m_source_rows  bigint[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_doc_date  date,
    PRIMARY KEY (program_id, account_key)
    -- no foreign key to account, as for the ledger (account_keep)
);
COMMENT ON TABLE @extschema@.balance_folded IS 'Running totals per account as of the last loyalty.fold(): the ERP''s transactions never write it (they append to loyalty.balance_delta), so they never wait on each other here. Read balances through the view loyalty.balance, which adds what is not folded yet.';
COMMENT ON COLUMN @extschema@.balance_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_folded.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_folded.points IS 'Points available (sum of the folded ledger entries, caps included).';
COMMENT ON COLUMN @extschema@.balance_folded.qualifying IS 'Lifetime qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_folded.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance_folded.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance_folded.entry_count IS 'Number of ledger entries folded.';
COMMENT ON COLUMN @extschema@.balance_folded.m_month IS 'Per-month sums, one element per (document month, attachment), sorted: the months. Read them through the view loyalty.accrual_month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_attachment IS 'Per-month sums: the attachment (ERP table mapping) of each element.';
COMMENT ON COLUMN @extschema@.balance_folded.m_points IS 'Per-month sums: points earned by the documents of the month (bonus included, caps not applied).';
COMMENT ON COLUMN @extschema@.balance_folded.m_qualifying IS 'Per-month sums: qualifying spend of the documents of the month.';
COMMENT ON COLUMN @extschema@.balance_folded.m_source_rows IS 'Per-month sums: net number of ERP rows accrued.';
COMMENT ON COLUMN @extschema@.balance_folded.updated_at IS 'Last fold that changed the row.';
COMMENT ON COLUMN @extschema@.balance_folded.last_doc_date IS 'The latest document date the account ever accrued (never decreases): tier and segment changes take effect after it, so that no accrued document changes what it earned.';

-- What one statement (or backfill, or restatement) changed for one
-- account: appended, never updated, so that two transactions posting to the
-- same customer never wait on each other, deadlock or fail to serialize.
-- loyalty.fold() moves committed rows into loyalty.balance_folded.
CREATE TABLE @extschema@.balance_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    points        bigint NOT NULL DEFAULT 0,
    qualifying    numeric NOT NULL DEFAULT 0,
    rebate        numeric NOT NULL DEFAULT 0,
    mdf           numeric NOT NULL DEFAULT 0,
    entry_count   bigint NOT NULL DEFAULT 0,
    m_month       date[] NOT NULL DEFAULT '{}',
    m_attachment  integer[] NOT NULL DEFAULT '{}',
    m_points      bigint[] NOT NULL DEFAULT '{}',
    m_qualifying  numeric[] NOT NULL DEFAULT '{}',
    m_source_rows bigint[] NOT NULL DEFAULT '{}',
    last_doc_date date,
    posted_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.balance_delta IS 'Balance changes not folded yet, one row per account and posting statement. Appended by the accrual triggers, backfill and restatements; loyalty.fold() (pg_cron) adds committed rows to loyalty.balance_folded and deletes them. loyalty.balance and loyalty.accrual_month add them in, so reads are exact whether or not a fold ran.';
COMMENT ON COLUMN @extschema@.balance_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance_delta.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_xid IS 'Transaction that posted the change.';
COMMENT ON COLUMN @extschema@.balance_delta.delta_no IS 'Number within the transaction (shared with the ledger entries it posted).';
COMMENT ON COLUMN @extschema@.balance_delta.points IS 'Points posted, before caps (loyalty.balance applies them; the fold books them as ledger entries of kind cap).';
COMMENT ON COLUMN @extschema@.balance_delta.qualifying IS 'Qualifying spend posted.';
COMMENT ON COLUMN @extschema@.balance_delta.rebate IS 'Rebate money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.mdf IS 'MDF money posted.';
COMMENT ON COLUMN @extschema@.balance_delta.entry_count IS 'Ledger entries posted with it.';
COMMENT ON COLUMN @extschema@.balance_delta.m_month IS 'Per-month sums posted: the months (sorted, with m_attachment).';
COMMENT ON COLUMN @extschema@.balance_delta.m_attachment IS 'Per-month sums posted: the attachments.';
COMMENT ON COLUMN @extschema@.balance_delta.m_points IS 'Per-month sums posted: points (caps not applied).';
COMMENT ON COLUMN @extschema@.balance_delta.m_qualifying IS 'Per-month sums posted: qualifying spend.';
COMMENT ON COLUMN @extschema@.balance_delta.m_source_rows IS 'Per-month sums posted: net ERP rows.';
COMMENT ON COLUMN @extschema@.balance_delta.last_doc_date IS 'The latest document date the posting added.';
COMMENT ON COLUMN @extschema@.balance_delta.posted_at IS 'When.';

CREATE FUNCTION @extschema@.pending_caps(program_id integer, account_key text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'loyalty_pending_caps' LANGUAGE C STABLE STRICT SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.pending_caps(integer, text) IS
    'What the caps withhold (negative) or give back from an account''s postings not folded yet: the cap entry the next loyalty.fold() books. loyalty.balance adds it, so that balances are capped before the fold. Reads with the caller''s rights and snapshot.';

CREATE VIEW @extschema@.balance AS
SELECT s.program_id, s.account_key,
       (s.points OPERATOR(pg_catalog.+) CASE WHEN s.pending THEN @extschema@.pending_caps(s.program_id, s.account_key::pg_catalog.varchar::text) ELSE 0 END)::bigint AS points,
       s.qualifying, s.rebate, s.mdf, s.entry_count::bigint AS entry_count, s.updated_at, s.last_doc_date
FROM (SELECT u.program_id, u.account_key, pg_catalog.sum(u.points) AS points, pg_catalog.sum(u.qualifying) AS qualifying,
             pg_catalog.sum(u.rebate) AS rebate, pg_catalog.sum(u.mdf) AS mdf, pg_catalog.sum(u.entry_count) AS entry_count,
             pg_catalog.max(u.updated_at) AS updated_at, pg_catalog.max(u.last_doc_date) AS last_doc_date,
             pg_catalog.bool_or(u.pending) AS pending
      FROM (SELECT f.program_id, f.account_key, f.points, f.qualifying, f.rebate, f.mdf, f.entry_count,
                   f.updated_at, f.last_doc_date, false AS pending
            FROM @extschema@.balance_folded f
            UNION ALL
            SELECT d.program_id, d.account_key, d.points, d.qualifying, d.rebate, d.mdf, d.entry_count,
                   d.posted_at, d.last_doc_date, true
            FROM @extschema@.balance_delta d) u
      GROUP BY u.program_id, u.account_key) s;
COMMENT ON VIEW @extschema@.balance IS 'Running totals per account: the folded balance plus every posting not folded yet that the reader can see (its own uncommitted ones included), caps applied. Equal to the sums of loyalty.ledger at all times, with the caps the next fold books.';
COMMENT ON COLUMN @extschema@.balance.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.balance.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.balance.points IS 'Points available, caps applied.';
COMMENT ON COLUMN @extschema@.balance.qualifying IS 'Lifetime qualifying spend; the rolling figure that decides tiers is loyalty.balance(program, account).rolling_qualifying.';
COMMENT ON COLUMN @extschema@.balance.rebate IS 'Rebate money.';
COMMENT ON COLUMN @extschema@.balance.mdf IS 'MDF money.';
COMMENT ON COLUMN @extschema@.balance.entry_count IS 'Number of ledger entries of the account (cap entries the next fold books not included).';
COMMENT ON COLUMN @extschema@.balance.updated_at IS 'Last change.';
COMMENT ON COLUMN @extschema@.balance.last_doc_date IS 'The latest document date the account ever accrued.';

CREATE VIEW @extschema@.accrual_month AS
SELECT u.program_id, u.attachment_id, u.account_key, u.month,
       pg_catalog.sum(u.points)::bigint AS points, pg_catalog.sum(u.qualifying) AS qualifying,
       pg_catalog.sum(u.source_rows)::bigint AS source_rows
FROM (SELECT b.program_id, x.attachment_id, b.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_folded b,
           ROWS FROM (pg_catalog.unnest(b.m_month), pg_catalog.unnest(b.m_attachment), pg_catalog.unnest(b.m_points),
                      pg_catalog.unnest(b.m_qualifying), pg_catalog.unnest(b.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)
      UNION ALL
      SELECT d.program_id, x.attachment_id, d.account_key, x.month, x.points, x.qualifying, x.source_rows
      FROM @extschema@.balance_delta d,
           ROWS FROM (pg_catalog.unnest(d.m_month), pg_catalog.unnest(d.m_attachment), pg_catalog.unnest(d.m_points),
                      pg_catalog.unnest(d.m_qualifying), pg_catalog.unnest(d.m_source_rows))
               AS x(month, attachment_id, points, qualifying, source_rows)) u
GROUP BY u.program_id, u.attachment_id, u.account_key, u.month
HAVING pg_catalog.sum(u.points) OPERATOR(pg_catalog.<>) 0 OR pg_catalog.sum(u.qualifying) OPERATOR(pg_catalog.<>) 0
    OR pg_catalog.sum(u.source_rows) OPERATOR(pg_catalog.<>) 0;
COMMENT ON VIEW @extschema@.accrual_month IS 'What each account''s documents earned per document month and ERP table, before caps: the rolling qualification window, caps and loyalty.verify read it.';
COMMENT ON COLUMN @extschema@.accrual_month.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.accrual_month.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.accrual_month.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.accrual_month.month IS 'First day of the documents'' month.';
COMMENT ON COLUMN @extschema@.accrual_month.points IS 'Points earned by the rows of that month (bonus included, cap not applied).';
COMMENT ON COLUMN @extschema@.accrual_month.qualifying IS 'Qualifying spend of the rows of that month.';
COMMENT ON COLUMN @extschema@.accrual_month.source_rows IS 'Net number of rows accrued (inserts minus deletes).';

CREATE TABLE @extschema@.unenrolled_folded (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    account_key   text NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    first_seen    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, attachment_id)
);
COMMENT ON TABLE @extschema@.unenrolled_folded IS 'Activity of customers not enrolled in an explicit-enrolment program, as of the last loyalty.fold(). Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_folded.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_folded.last_seen IS 'Last time seen.';

-- Appended by the accrual triggers, one row per customer and statement, so
-- that two transactions invoicing the same unenrolled customer never wait
-- for each other; loyalty.fold() sums committed rows into unenrolled_folded.
CREATE TABLE @extschema@.unenrolled_delta (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    delta_no      bigint NOT NULL,
    attachment_id integer NOT NULL,
    source_rows   bigint NOT NULL DEFAULT 0,
    amount        numeric NOT NULL DEFAULT 0,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (program_id, account_key, posted_xid, delta_no)
);
COMMENT ON TABLE @extschema@.unenrolled_delta IS 'Activity of unenrolled customers not folded yet, one row per customer, ERP table and statement. Read it through the view loyalty.unenrolled_activity.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.posted_xid IS 'Transaction that saw the rows.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.delta_no IS 'Number within the transaction.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.source_rows IS 'Net rows seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_delta.seen_at IS 'When.';

CREATE VIEW @extschema@.unenrolled_activity AS
SELECT u.program_id, u.attachment_id, u.account_key, pg_catalog.sum(u.source_rows)::bigint AS source_rows,
       pg_catalog.sum(u.amount) AS amount, pg_catalog.min(u.first_seen) AS first_seen, pg_catalog.max(u.last_seen) AS last_seen
FROM (SELECT f.program_id, f.attachment_id, f.account_key, f.source_rows, f.amount, f.first_seen, f.last_seen
      FROM @extschema@.unenrolled_folded f
      UNION ALL
      SELECT d.program_id, d.attachment_id, d.account_key, d.source_rows, d.amount, d.seen_at, d.seen_at
      FROM @extschema@.unenrolled_delta d) u
GROUP BY u.program_id, u.attachment_id, u.account_key;
COMMENT ON VIEW @extschema@.unenrolled_activity IS 'Customers that invoiced under an explicit-enrolment program without being enrolled: ignored by accrual, counted here (candidates to enrol).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.account_key IS 'The ERP customer key.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.source_rows IS 'Net rows seen (inserts minus deletes).';
COMMENT ON COLUMN @extschema@.unenrolled_activity.amount IS 'Net basis amount seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.first_seen IS 'First time seen.';
COMMENT ON COLUMN @extschema@.unenrolled_activity.last_seen IS 'Last time seen.';

CREATE TABLE @extschema@.reward (
    program_id        integer NOT NULL REFERENCES @extschema@.program,
    reward_id         text NOT NULL CHECK (reward_id OPERATOR(pg_catalog.<>) ''),
    name              text NOT NULL,
    points_price      bigint NOT NULL CHECK (points_price OPERATOR(pg_catalog.>) 0),
    min_tier          text,
    stock             integer CHECK (stock OPERATOR(pg_catalog.>=) 0),
    per_account_limit integer CHECK (per_account_limit OPERATOR(pg_catalog.>) 0),
    active            boolean NOT NULL DEFAULT true,
    kind              text NOT NULL DEFAULT 'goods'
                      CHECK (kind IN ('discount', 'goods', 'training', 'consultancy', 'extended_warranty',
                                      'marketing_support', 'trade_show', 'service_visit', 'expert_session', 'other')),
    description       text,
    valid_from        date,
    valid_until       date,
    period_limit      integer CHECK (period_limit OPERATOR(pg_catalog.>) 0),
    limit_period      text CHECK (limit_period IN ('month', 'quarter', 'year')),
    PRIMARY KEY (program_id, reward_id),
    CONSTRAINT reward_limit_pair_check CHECK ((period_limit IS NULL) = (limit_period IS NULL)),
    CONSTRAINT reward_window_check CHECK (valid_until OPERATOR(pg_catalog.>) valid_from)
);
COMMENT ON TABLE @extschema@.reward IS 'Catalogue of rewards (discounts, goods and business services: training seats, consultancy hours, extended warranty, marketing support, trade-show places, service visits, sessions with experts) with their points price and limits. Written with loyalty.set_reward(); redeemed with loyalty.redeem().';
COMMENT ON COLUMN @extschema@.reward.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.reward.reward_id IS 'The reward''s code.';
COMMENT ON COLUMN @extschema@.reward.name IS 'What the partner sees.';
COMMENT ON COLUMN @extschema@.reward.points_price IS 'Points per unit.';
COMMENT ON COLUMN @extschema@.reward.min_tier IS 'Lowest tier that may redeem it; NULL = any.';
COMMENT ON COLUMN @extschema@.reward.stock IS 'Units left; NULL = unlimited. Each redemption takes its units, each cancellation gives them back.';
COMMENT ON COLUMN @extschema@.reward.per_account_limit IS 'Most units one account may redeem in all (cancelled redemptions not counted); NULL = unlimited.';
COMMENT ON COLUMN @extschema@.reward.active IS 'Whether it can be redeemed now.';
COMMENT ON COLUMN @extschema@.reward.kind IS 'What it is: discount, goods, training, consultancy, extended_warranty, marketing_support, trade_show, service_visit, expert_session or other.';
COMMENT ON COLUMN @extschema@.reward.description IS 'Longer description for the catalogue.';
COMMENT ON COLUMN @extschema@.reward.valid_from IS 'First day (program calendar) it can be redeemed; NULL = since always.';
COMMENT ON COLUMN @extschema@.reward.valid_until IS 'First day (program calendar) it can no longer be redeemed; NULL = no end.';
COMMENT ON COLUMN @extschema@.reward.period_limit IS 'Most units one account may redeem per calendar period (limit_period), cancelled redemptions not counted; NULL = no such limit.';
COMMENT ON COLUMN @extschema@.reward.limit_period IS 'The calendar period of period_limit: month, quarter or year (program calendar).';

-- Keyed by the account and its debit number (loyalty._lock_for_debit): no
-- sequence, co-located with the account.  No foreign key to loyalty.reward:
-- its check would share-lock the reward's row in every redemption, one row
-- that all redemptions of a popular reward would then queue on; a reward is
-- never deleted (no loyalty role may, and set_reward deactivates instead).
-- None to loyalty.account or loyalty.member either, as for the ledger:
-- each check is a trigger and a query per redemption; redeem() checks the
-- account and the member itself, an account with postings cannot be deleted
-- (account_keep), no loyalty role may delete a member, and verify's member
-- check (_verify_members) reports entries of unknown members.
CREATE TABLE @extschema@.redemption (
    program_id    integer NOT NULL,
    account_key   text NOT NULL,
    redemption_no bigint NOT NULL,
    redemption_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    reward_id     text NOT NULL,
    member_id     text,
    quantity      integer NOT NULL CHECK (quantity OPERATOR(pg_catalog.>) 0),
    points        bigint NOT NULL CHECK (points OPERATOR(pg_catalog.>) 0),
    status        text NOT NULL DEFAULT 'redeemed' CHECK (status IN ('redeemed', 'cancelled')),
    redeemed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    redeemed_on   date NOT NULL,
    posted_xid    xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    entry_no      bigint NOT NULL,
    cancelled_at  timestamptz,
    cancel_xid    xid8,
    cancel_entry_no bigint,
    PRIMARY KEY (program_id, account_key, redemption_no),
    CONSTRAINT redemption_cancel_check
        CHECK ((status OPERATOR(pg_catalog.=) 'cancelled') = (cancelled_at IS NOT NULL)
               AND (cancelled_at IS NULL) = (cancel_xid IS NULL) AND (cancel_xid IS NULL) = (cancel_entry_no IS NULL))
);
CREATE INDEX redemption_id_idx ON @extschema@.redemption (redemption_id);
COMMENT ON TABLE @extschema@.redemption IS 'Rewards redeemed (loyalty.redeem): each spent its points with a ledger entry of kind redeem; a cancellation (loyalty.cancel_redemption) posts the opposite entry, pointing at the original.';
COMMENT ON COLUMN @extschema@.redemption.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.redemption.account_key IS 'The redeeming account.';
COMMENT ON COLUMN @extschema@.redemption.redemption_no IS 'The account''s debit number (loyalty.account.debit_no) the redemption took.';
COMMENT ON COLUMN @extschema@.redemption.redemption_id IS 'The redemption''s identifier, returned by loyalty.redeem() and taken by loyalty.cancel_redemption().';
COMMENT ON COLUMN @extschema@.redemption.reward_id IS 'The reward.';
COMMENT ON COLUMN @extschema@.redemption.member_id IS 'The member who redeemed from their own points; NULL = the account.';
COMMENT ON COLUMN @extschema@.redemption.quantity IS 'Units.';
COMMENT ON COLUMN @extschema@.redemption.points IS 'Points spent (quantity x price at the time).';
COMMENT ON COLUMN @extschema@.redemption.status IS 'redeemed or cancelled.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_at IS 'When it was redeemed.';
COMMENT ON COLUMN @extschema@.redemption.redeemed_on IS 'The day it was redeemed in the program''s calendar (the per-period limit counts by it).';
COMMENT ON COLUMN @extschema@.redemption.posted_xid IS 'Transaction of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.entry_no IS 'Entry number (within posted_xid) of the ledger entry that spent the points.';
COMMENT ON COLUMN @extschema@.redemption.cancelled_at IS 'When it was cancelled.';
COMMENT ON COLUMN @extschema@.redemption.cancel_xid IS 'Transaction of the ledger entry that gave the points back.';
COMMENT ON COLUMN @extschema@.redemption.cancel_entry_no IS 'Entry number (within cancel_xid) of the ledger entry that gave the points back.';

CREATE TABLE @extschema@.tier_history (
    program_id         integer NOT NULL,
    account_key        text NOT NULL,
    change_no          bigint NOT NULL CHECK (change_no OPERATOR(pg_catalog.>) 0),
    changed_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    effective_from     date NOT NULL,
    old_tier           text,
    new_tier           text,
    reason             text NOT NULL,
    rolling_qualifying numeric,
    PRIMARY KEY (program_id, account_key, change_no),
    FOREIGN KEY (program_id, account_key) REFERENCES @extschema@.account,
    CHECK (old_tier IS DISTINCT FROM new_tier),
    CONSTRAINT tier_history_reason_check
        CHECK (reason IN ('upgrade_on_accrual', 'requalification', 'grace', 'downgrade', 'manual', 'backfill'))
);
COMMENT ON TABLE @extschema@.tier_history IS 'Every tier change with its reason. A document earns tier multipliers by the tier in force on its date, and a change takes effect from the day after it happens, so what a document earned never changes after the fact.';
COMMENT ON COLUMN @extschema@.tier_history.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.tier_history.account_key IS 'The account.';
COMMENT ON COLUMN @extschema@.tier_history.change_no IS 'Number of the change within the account, from 1, ascending in time (the account''s highest plus one, taken by whoever holds the program''s tier lock).';
COMMENT ON COLUMN @extschema@.tier_history.changed_at IS 'When the change was recorded.';
COMMENT ON COLUMN @extschema@.tier_history.effective_from IS 'First document date the new tier applies to.';
COMMENT ON COLUMN @extschema@.tier_history.old_tier IS 'Tier before (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.new_tier IS 'Tier after (NULL: none).';
COMMENT ON COLUMN @extschema@.tier_history.reason IS 'upgrade_on_accrual (fold), requalification (settlement: up, or down to what the account qualifies for), grace (settlement: down, but less far than the account qualifies for, by the program''s grace rule), downgrade (settlement: down after the grace periods ran out), manual (loyalty.grant_tier / revoke_tier), backfill.';
COMMENT ON COLUMN @extschema@.tier_history.rolling_qualifying IS 'Rolling qualifying spend that justified the change.';

CREATE TABLE @extschema@.settlement_run (
    program_id   integer NOT NULL REFERENCES @extschema@.program,
    period_start date NOT NULL,
    period_end   date NOT NULL,
    status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    started_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at  timestamptz,
    accounts     integer CHECK (accounts OPERATOR(pg_catalog.>=) 0),
    points_expired bigint,
    rebate_total numeric,
    mdf_total    numeric,
    period_qualifying  numeric,
    carried_qualifying numeric,
    period_points      bigint,
    carried_points     bigint,
    tiers_up     integer,
    tiers_down   integer,
    tiers_held   integer,
    settled_by   text,
    PRIMARY KEY (program_id, period_end),
    CHECK (period_end OPERATOR(pg_catalog.>) period_start),
    CHECK ((status = 'done') <= (finished_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.settlement_run IS 'One row per program and settlement period: the idempotency key of settlement.';
COMMENT ON COLUMN @extschema@.settlement_run.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.settlement_run.period_start IS 'First day of the period.';
COMMENT ON COLUMN @extschema@.settlement_run.period_end IS 'Last day of the period (included), as given to loyalty.settle().';
COMMENT ON COLUMN @extschema@.settlement_run.status IS 'running, done or failed.';
COMMENT ON COLUMN @extschema@.settlement_run.started_at IS 'Start.';
COMMENT ON COLUMN @extschema@.settlement_run.finished_at IS 'End.';
COMMENT ON COLUMN @extschema@.settlement_run.accounts IS 'Accounts settled.';
COMMENT ON COLUMN @extschema@.settlement_run.points_expired IS 'Points expired.';
COMMENT ON COLUMN @extschema@.settlement_run.rebate_total IS 'Rebate money trued up (what the rebate step returned).';
COMMENT ON COLUMN @extschema@.settlement_run.mdf_total IS 'MDF money accrued (what the MDF step returned).';
COMMENT ON COLUMN @extschema@.settlement_run.period_qualifying IS 'Qualifying spend of the documents dated in the period, as settled.';
COMMENT ON COLUMN @extschema@.settlement_run.carried_qualifying IS 'Qualifying spend of documents dated before the period that no earlier run counted (late invoices, credit notes): the adjustment carried into this run.';
COMMENT ON COLUMN @extschema@.settlement_run.period_points IS 'Points earned by the documents dated in the period (before caps), as settled.';
COMMENT ON COLUMN @extschema@.settlement_run.carried_points IS 'Points of documents dated before the period that no earlier run counted.';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_up IS 'Accounts moved up by re-qualification.';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_down IS 'Accounts moved down (fully, or one level or within the margin by grace).';
COMMENT ON COLUMN @extschema@.settlement_run.tiers_held IS 'Accounts below their tier that kept it (grace, or an upgrade reached in the period).';
COMMENT ON COLUMN @extschema@.settlement_run.settled_by IS 'The role that ran the settlement.';

-- Keyed by the account first, like every account-scoped table, so that it
-- is distributed with the invoice table on Citus and a shard's trigger
-- writes its letters on its own node; numbered within the rejecting
-- transaction (as the ledger is): two ERP transactions parking rows of
-- one customer never wait for each other, and no sequence is shared.
CREATE TABLE @extschema@.rejected_event (
    program_id    integer NOT NULL REFERENCES @extschema@.program,
    account_key   text NOT NULL,
    rejected_xid  xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    event_no      bigint NOT NULL CHECK (event_no OPERATOR(pg_catalog.>) 0),
    attachment_id integer NOT NULL REFERENCES @extschema@.attachment,
    row_key       text,
    reason        text NOT NULL,
    row_data      jsonb,
    rejected_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resolved_at   timestamptz,
    PRIMARY KEY (program_id, account_key, rejected_xid, event_no)
);
CREATE INDEX rejected_event_open ON @extschema@.rejected_event (attachment_id, row_key) WHERE resolved_at IS NULL;
COMMENT ON TABLE @extschema@.rejected_event IS 'Dead letters: invoice rows a program could not accrue, with the reason; the ERP''s insert went through (unless the program is strict). A letter is identified by (program_id, account_key, rejected_xid, event_no).';
COMMENT ON COLUMN @extschema@.rejected_event.program_id IS 'The program.';
COMMENT ON COLUMN @extschema@.rejected_event.account_key IS 'The row''s account key in text form; '''' (empty) when the row gave none (NULL or empty), since the column is part of the key: no account has the key '''' (loyalty.account refuses it). A key over 1024 bytes: its first bytes and the MD5 of the whole, as row_key.';
COMMENT ON COLUMN @extschema@.rejected_event.rejected_xid IS 'Transaction that parked the row (on Citus, the worker''s transaction that wrote the shard); 0 for letters parked before version 1.2.';
COMMENT ON COLUMN @extschema@.rejected_event.event_no IS 'Number within rejected_xid, from the counter that also numbers the transaction''s ledger entries (gaps mean nothing); letters parked before version 1.2 keep their former event_id here.';
COMMENT ON COLUMN @extschema@.rejected_event.attachment_id IS 'The ERP table mapping.';
COMMENT ON COLUMN @extschema@.rejected_event.row_key IS 'The row''s key in text form (a key over 1024 bytes: its first bytes and the MD5 of the whole, since the column is indexed).';
COMMENT ON COLUMN @extschema@.rejected_event.reason IS 'Why it could not be accrued.';
COMMENT ON COLUMN @extschema@.rejected_event.row_data IS 'The source row as JSON.';
COMMENT ON COLUMN @extschema@.rejected_event.rejected_at IS 'When.';
COMMENT ON COLUMN @extschema@.rejected_event.resolved_at IS 'When it was settled: the row was deleted, or updated into a row that accrues (or parked for another reason); or when someone marked it handled.';

-- pg_dump keeps the contents of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.program', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.account', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.account_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.member', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rule', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ledger', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance_folded', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_folded', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.reward', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settlement_run', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.rejected_event', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.program_program_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.attachment_attachment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.product_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.balance_delta', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.unenrolled_delta', '');

-- The ledger is append-only.
CREATE FUNCTION @extschema@._ledger_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'loyalty.ledger is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on loyalty.ledger is refused: entries are never changed or removed.', TG_OP),
              HINT = 'Correct the ERP''s invoice rows instead (UPDATE, DELETE or a credit note): the accrual posts the correcting entries.';
END
$$;
COMMENT ON FUNCTION @extschema@._ledger_append_only() IS 'Internal: refuses UPDATE, DELETE and TRUNCATE on loyalty.ledger.';
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON @extschema@.ledger
    FOR EACH ROW EXECUTE FUNCTION @extschema@._ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON @extschema@.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._ledger_append_only();

-- An account with postings is part of the audit trail: it stays.  (This
-- replaces foreign keys from the ledger and balances, whose per-row checks
-- would cost every ERP insert a query.)
CREATE FUNCTION @extschema@._account_keep() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' OR EXISTS (SELECT FROM @extschema@.balance b
                                     WHERE b.program_id = OLD.program_id AND b.account_key = OLD.account_key) THEN
        RAISE EXCEPTION 'loyalty accounts with ledger entries cannot be removed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = CASE WHEN TG_OP = 'TRUNCATE' THEN 'TRUNCATE of loyalty.account is refused.'
                                ELSE pg_catalog.format('Account %s has postings in the ledger.', OLD.account_key) END,
                  HINT = 'Leave the account enrolled; move it out of the program''s cohorts instead.';
    END IF;
    RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._account_keep() IS 'Internal: refuses to delete accounts that have ledger entries.';
CREATE TRIGGER account_keep BEFORE DELETE ON @extschema@.account
    FOR EACH ROW EXECUTE FUNCTION @extschema@._account_keep();
CREATE TRIGGER account_no_truncate BEFORE TRUNCATE ON @extschema@.account
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._account_keep();

-- Rule versions in force are part of the audit trail: a document's points
-- must be recomputable forever.
CREATE FUNCTION @extschema@._rule_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.valid_from <= CURRENT_DATE
       OR EXISTS (SELECT FROM @extschema@.accrual_month m
                  WHERE m.program_id = OLD.program_id AND m.month >= date_trunc('month', OLD.valid_from)::date) THEN
        RAISE EXCEPTION 'rule version valid from % of program "%" cannot be changed', OLD.valid_from,
                        (SELECT p.name FROM @extschema@.program p WHERE p.program_id = OLD.program_id)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It is in force, or documents dated in its months have already earned by it.',
                  HINT = 'Add a new version with loyalty.add_rule(program, valid_from => ...).';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;
COMMENT ON FUNCTION @extschema@._rule_immutable() IS 'Internal: refuses changes to rule versions already in force.';
CREATE TRIGGER rule_immutable BEFORE UPDATE OR DELETE ON @extschema@.rule
    FOR EACH ROW EXECUTE FUNCTION @extschema@._rule_immutable();

-- A dead letter marked handled stays handled: resolved_at is the one column
-- operators may write on loyalty.rejected_event, once.
CREATE FUNCTION @extschema@._rejected_resolved_once() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the dead letter of row % is already settled', coalesce(OLD.row_key, '(no key)')
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('It was settled at %s; resolved_at is set once and never changed.', OLD.resolved_at),
              HINT = 'Leave it as it is; open dead letters are those WHERE resolved_at IS NULL.';
END
$$;
COMMENT ON FUNCTION @extschema@._rejected_resolved_once() IS 'Internal: refuses changes to resolved_at of a settled dead letter.';
CREATE TRIGGER rejected_event_resolved_once BEFORE UPDATE OF resolved_at ON @extschema@.rejected_event
    FOR EACH ROW WHEN (OLD.resolved_at IS NOT NULL AND NEW.resolved_at IS DISTINCT FROM OLD.resolved_at)
    EXECUTE FUNCTION @extschema@._rejected_resolved_once();

-- Least privilege.  Readers see everything, operators run the day-to-day
-- functions, admins configure programs.  No role writes the accrual or
-- configuration tables directly: the functions that check what a change
-- may do are the only way in (they write as the extension owner), so no
-- direct write can bypass their checks.  Members have no functions yet and
-- stay writable (the rewards catalogue is written by loyalty.set_reward);
-- of a dead letter, only resolved_at.
GRANT USAGE ON SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO loyalty_reader, loyalty_operator, loyalty_admin;
GRANT INSERT, UPDATE ON @extschema@.member TO loyalty_operator, loyalty_admin;
GRANT UPDATE (resolved_at) ON @extschema@.rejected_event TO loyalty_operator, loyalty_admin;
