-- Generates the demo ERP's data: two fiscal years (November to October),
-- 2024-11-01 .. 2026-10-31.
--
--   psql -v customers=2000 -v lines=200000 -f demo/generate.sql
--
-- Customers and products go straight into erp.customer and erp.product.
-- Invoices, credit notes and their lines go into erp.staging_invoice and
-- erp.staging_invoice_line; erp.load_invoices(from, to) posts them into the
-- real tables month by month, the way the ERP would have, so that a loyalty
-- program attached beforehand accrues inside the load (demo/load.sql).
--
-- Deterministic: one fixed seed, every random number drawn by a single scan
-- of a generate_series or of a sorted subquery (so in one fixed order), no
-- parallel workers, no now(). Two runs with the same sizes give the same
-- rows.
--
-- The shape a real wholesaler's ledger has:
--   * a few customers carry most of the volume: customer of rank r gets a
--     share of the lines proportional to 1/r (Zipf), so the top 1% carry
--     about 45% of the lines (with 2,000 customers);
--   * each customer buys mostly from the product line of its industry;
--   * volume grows over the two years;
--   * ~2.5% of invoices are followed by a credit note (a partial return of
--     one or two of its lines, negative quantity and amount);
--   * payment discipline differs per customer: about 15% of invoices are
--     paid after the due date and about 5% are still unpaid past it;
--   * about 1% of invoices are in the customer's local currency, not EUR.

\if :{?customers}
\else
\set customers 2000
\endif
\if :{?lines}
\else
\set lines 200000
\endif

SET client_min_messages = warning;
-- random() must be drawn by one process, in one order.
SET max_parallel_workers_per_gather = 0;
SELECT setseed(0.20241101) AS seed \gset

-- ---------------------------------------------------------------------------
-- Product lines and products: 31 product templates x 8 brands.

INSERT INTO erp.product_line (product_line, name) VALUES
    ('CABLES',     'Cables and wires'),
    ('SOLAR',      'Solar and storage'),
    ('LIGHTING',   'Lighting'),
    ('SWITCHGEAR', 'Switchgear and protection'),
    ('TOOLS',      'Tools and test equipment'),
    ('TIMBER',     'Timber and boards');

CREATE TEMP TABLE gen_template (
    t            int,
    product_line text,
    name         text,
    unit         text,
    price        numeric,   -- EUR per unit
    qmin         numeric,   -- quantity of one line: qmin .. qmax in steps of qstep
    qmax         numeric,
    qstep        numeric
);
INSERT INTO gen_template VALUES
    ( 1, 'CABLES',     'NYM-J 3x1.5 mm2 installation cable',   'm',    0.95,  100, 2000,  50),
    ( 2, 'CABLES',     'NYM-J 5x2.5 mm2 installation cable',   'm',    2.40,  100, 1500,  50),
    ( 3, 'CABLES',     'NYY-J 5x16 mm2 power cable',           'm',   14.50,   50,  500,  50),
    ( 4, 'CABLES',     'N2XH-J 4x25 mm2 halogen-free cable',   'm',   29.00,   50,  300,  50),
    ( 5, 'CABLES',     'H07RN-F 3G2.5 rubber cable',           'm',    3.10,   50,  500,  50),
    ( 6, 'CABLES',     'Cat.6A S/FTP data cable',              'm',    1.35,  305, 3050, 305),
    ( 7, 'SOLAR',      'Mono PERC module 410 Wp',              'pcs', 118.00,  10,  160,  2),
    ( 8, 'SOLAR',      'Bifacial glass-glass module 450 Wp',   'pcs', 139.00,  10,  120,  2),
    ( 9, 'SOLAR',      'String inverter 10 kW',                'pcs',1450.00,   1,    8,  1),
    (10, 'SOLAR',      'Hybrid inverter 8 kW',                 'pcs',1890.00,   1,    6,  1),
    (11, 'SOLAR',      'LFP battery module 5 kWh',             'pcs',1650.00,   1,   10,  1),
    (12, 'SOLAR',      'Roof mounting rail set',               'pcs',  46.00,  10,  100,  5),
    (13, 'LIGHTING',   'LED panel 600x600 36 W',               'pcs',  29.00,  10,  200,  5),
    (14, 'LIGHTING',   'LED high-bay 150 W',                   'pcs', 145.00,   4,   60,  2),
    (15, 'LIGHTING',   'LED floodlight 100 W',                 'pcs',  69.00,   2,   40,  1),
    (16, 'LIGHTING',   'Emergency luminaire 3 h',              'pcs',  58.00,   5,   80,  1),
    (17, 'LIGHTING',   'LED street light 60 W',                'pcs', 265.00,   2,   30,  1),
    (18, 'SWITCHGEAR', 'MCB 1P B16',                           'pcs',   4.20,  20,  400, 10),
    (19, 'SWITCHGEAR', 'RCD 4P 40 A 30 mA',                    'pcs',  52.00,   5,   80,  1),
    (20, 'SWITCHGEAR', 'Distribution board 48 modules',        'pcs', 210.00,   1,   15,  1),
    (21, 'SWITCHGEAR', 'MID energy meter 3-phase',             'pcs', 139.00,   2,   30,  1),
    (22, 'SWITCHGEAR', 'Contactor 3P 25 A',                    'pcs',  38.00,   5,   60,  1),
    (23, 'TOOLS',      'Cordless drill 18 V',                  'pcs', 189.00,   1,   12,  1),
    (24, 'TOOLS',      'Insulated screwdriver set',            'pcs',  64.00,   1,   20,  1),
    (25, 'TOOLS',      'Cable stripping tool',                 'pcs',  39.00,   2,   25,  1),
    (26, 'TOOLS',      'Crimping tool set',                    'pcs', 129.00,   1,   10,  1),
    (27, 'TOOLS',      'Digital multimeter CAT IV',            'pcs', 219.00,   1,    8,  1),
    (28, 'TIMBER',     'Construction timber C24 KVH',          'm3',  520.00, 0.5,   25, 0.001),
    (29, 'TIMBER',     'Glulam beam GL24h',                    'm3',  780.00, 0.5,   15, 0.001),
    (30, 'TIMBER',     'OSB/3 board 18 mm',                    'm3',  410.00, 1.0,   30, 0.001),
    (31, 'TIMBER',     'Spruce battens 30x50',                 'm3',  380.00, 0.5,   10, 0.001);

CREATE TEMP TABLE gen_product AS
SELECT row_number() OVER (ORDER BY product_line, t, b)::int AS product_id, s.*
FROM (SELECT o.*, random() AS u_price
      FROM (SELECT tt.*, b.b,
                   (ARRAY['Voltra','Helion','Arkon','Forgex','Norden','Ampera','Vesta','Sunvia'])[b.b] AS brand
            FROM gen_template tt CROSS JOIN generate_series(1, 8) b(b)
            ORDER BY tt.t, b.b) o) s;

INSERT INTO erp.product (product_id, sku, name, product_line, unit, list_price)
SELECT product_id,
       left(product_line, 3) || '-' || lpad(product_id::text, 4, '0'),
       brand || ' ' || name,
       product_line, unit,
       round(price * (0.85 + 0.4 * u_price)::numeric, 2)
FROM gen_product
ORDER BY product_id;

-- Where each product line's products are: ids first_id .. first_id + n - 1.
CREATE TEMP TABLE gen_line_range AS
SELECT product_line, min(product_id) AS first_id, count(*)::int AS n
FROM erp.product GROUP BY product_line;
SELECT count(*) AS n_products FROM erp.product \gset

-- ---------------------------------------------------------------------------
-- Customers: a random permutation gives each one its size rank.

CREATE TEMP TABLE gen_customer0 AS
SELECT g,
       random() AS u_rank, random() AS u_model, random() AS u_industry, random() AS u_region,
       random() AS u_name1, random() AS u_name2, random() AS u_form, random() AS u_terms,
       random() AS u_payer, random() AS u_discount, random() AS u_share, random() AS u_since,
       random() AS u_lpi
FROM generate_series(1, :customers) g;

CREATE TEMP TABLE gen_customer AS
WITH ranked AS (
    SELECT c.*, row_number() OVER (ORDER BY u_rank, g) AS size_rank
    FROM gen_customer0 c
), modelled AS (
    SELECT r.*,
           size_rank::float8 / :customers AS p,
           (ARRAY['construction','electrical contracting','renewables','utilities',
                  'manufacturing','facility management','public sector','telecom'])[1 + floor(u_industry * 8)::int] AS industry,
           (ARRAY['DACH','Nordics','Benelux','Iberia','CEE','UK & Ireland','France','Italy'])[1 + floor(u_region * 8)::int] AS region
    FROM ranked r
), weighted AS (
    SELECT m.*,
           CASE WHEN p <= 0.03 THEN CASE WHEN u_model < 0.70 THEN 'distributor'
                                         WHEN u_model < 0.90 THEN 'integrator' ELSE 'direct' END
                WHEN p <= 0.15 THEN CASE WHEN u_model < 0.30 THEN 'distributor' WHEN u_model < 0.55 THEN 'integrator'
                                         WHEN u_model < 0.80 THEN 'reseller' ELSE 'direct' END
                ELSE                CASE WHEN u_model < 0.08 THEN 'distributor' WHEN u_model < 0.28 THEN 'integrator'
                                         WHEN u_model < 0.62 THEN 'reseller' ELSE 'direct' END
           END AS cooperation_model,
           sum(1.0 / size_rank) OVER (ORDER BY size_rank) AS cum_w
    FROM modelled m
)
SELECT 10000 + g AS customer_id,
       size_rank, industry, region, cooperation_model,
       (ARRAY['Nord','Sued','West','Ost','Alpen','Baltic','Iberia','Adria','Rhein','Donau','Weser','Elbe',
              'Vistula','Tatra','Fjord','Atlas','Delta','Nova','Prima','Terra','Volt','Lumen','Helio','Kraft'])[1 + floor(u_name1 * 24)::int]
       || (ARRAY['elektro',' Energie',' Bau','licht',' Kabel',' Solar','technik',' Systems',' Supply',
                 ' Trade',' Install',' Power',' Projekt',' Handel'])[1 + floor(u_name2 * 14)::int]
       || ' ' ||
       (CASE region
            WHEN 'DACH'         THEN ARRAY['GmbH','AG','GmbH & Co. KG']
            WHEN 'Nordics'      THEN ARRAY['AB','Oy','A/S']
            WHEN 'Benelux'      THEN ARRAY['B.V.','N.V.','BVBA']
            WHEN 'Iberia'       THEN ARRAY['S.L.','S.A.','Lda.']
            WHEN 'CEE'          THEN ARRAY['Sp. z o.o.','s.r.o.','Kft.']
            WHEN 'UK & Ireland' THEN ARRAY['Ltd','PLC','Ltd']
            WHEN 'France'       THEN ARRAY['SAS','SARL','SA']
            ELSE                     ARRAY['S.r.l.','S.p.A.','S.r.l.']
        END)[1 + floor(u_form * 3)::int] AS name,
       CASE industry
            WHEN 'construction'          THEN 'TIMBER'
            WHEN 'electrical contracting' THEN 'SWITCHGEAR'
            WHEN 'renewables'            THEN 'SOLAR'
            WHEN 'utilities'             THEN 'CABLES'
            WHEN 'manufacturing'         THEN 'TOOLS'
            WHEN 'facility management'   THEN 'LIGHTING'
            WHEN 'public sector'         THEN 'LIGHTING'
            ELSE                              'CABLES'
       END AS focus_line,
       CASE WHEN u_terms < 0.10 THEN 14
            WHEN cooperation_model = 'distributor' THEN 60
            WHEN cooperation_model = 'integrator' THEN 45
            ELSE 30 END AS payment_terms_days,
       -- payment discipline: share of invoices paid late, share never paid
       CASE WHEN u_payer < 0.60 THEN 0.05 WHEN u_payer < 0.90 THEN 0.30 ELSE 0.60 END AS p_late,
       CASE WHEN u_payer < 0.60 THEN 0.03 WHEN u_payer < 0.90 THEN 0.06 ELSE 0.14 END AS p_unpaid,
       -- negotiated discount: larger for the channel
       CASE cooperation_model WHEN 'distributor' THEN 0.10 + 0.10 * u_discount
                              WHEN 'integrator'  THEN 0.05 + 0.08 * u_discount
                              WHEN 'reseller'    THEN 0.03 + 0.07 * u_discount
                              ELSE                    0.05 * u_discount END AS base_discount,
       0.2 + 0.6 * u_share AS share_of_wallet,
       date '2010-01-01' + floor(u_since * 5479)::int AS created_on,
       2 + 6 * u_lpi AS lines_per_invoice,
       -- exact allocation: customer of rank r owns lines (floor(L*W(r-1)/W), floor(L*W(r)/W)]
       (floor(:lines * cum_w / max(cum_w) OVER ())
        - floor(:lines * coalesce(lag(cum_w) OVER (ORDER BY size_rank), 0) / max(cum_w) OVER ()))::int AS n_lines
FROM weighted;

-- ---------------------------------------------------------------------------
-- Lines, drawn customer by customer; an invoice ends where u_break says so.

CREATE TEMP TABLE gen_line0 AS
SELECT s.customer_id, s.k,
       random() AS u_break, random() AS u_focus, random() AS u_product,
       random() AS u_qty, random() AS u_discount
FROM (SELECT c.customer_id, k
      FROM gen_customer c CROSS JOIN LATERAL generate_series(1, c.n_lines) k
      ORDER BY c.customer_id, k) s;

CREATE TEMP TABLE gen_line AS
WITH broken AS (
    SELECT l.*, c.focus_line, c.base_discount,
           sum((l.k = 1 OR l.u_break < 1.0 / c.lines_per_invoice)::int)
               OVER (PARTITION BY l.customer_id ORDER BY l.k) AS inv_ord
    FROM gen_line0 l JOIN gen_customer c USING (customer_id)
)
SELECT b.customer_id, b.inv_ord,
       row_number() OVER (PARTITION BY b.customer_id, b.inv_ord ORDER BY b.k)::int AS line_no,
       p.product_id, p.product_line, p.unit, p.list_price AS unit_price,
       CASE WHEN p.unit = 'm3'
            THEN round(t.qmin + floor(b.u_qty ^ 2 * ((t.qmax - t.qmin) / t.qstep + 1))::numeric * t.qstep, 3)
            ELSE t.qmin + floor(b.u_qty ^ 2 * ((t.qmax - t.qmin) / t.qstep + 1))::numeric * t.qstep
       END AS quantity,
       round(least(0.30, b.base_discount + CASE WHEN b.u_discount < 0.15 THEN 0.05 ELSE 0 END)::numeric, 3) AS discount
FROM broken b
JOIN gen_line_range r ON r.product_line = b.focus_line
JOIN erp.product p
  ON p.product_id = CASE WHEN b.u_focus < 0.5 THEN r.first_id + floor(b.u_product * r.n)::int
                         ELSE 1 + floor(b.u_product * :n_products)::int END
JOIN gen_product t USING (product_id);

-- ---------------------------------------------------------------------------
-- Invoices: date, currency, payment; some get a credit note.

CREATE TEMP TABLE gen_invoice0 AS
SELECT s.customer_id, s.inv_ord,
       random() AS u_date, random() AS u_currency, random() AS u_pay, random() AS u_pay_days,
       random() AS u_credit, random() AS u_credit_days, random() AS u_credit_lines, random() AS u_credit_share
FROM (SELECT DISTINCT customer_id, inv_ord FROM gen_line ORDER BY customer_id, inv_ord) s;

CREATE TEMP TABLE gen_invoice AS
WITH dated AS (
    SELECT i.*, c.region, c.payment_terms_days, c.p_late, c.p_unpaid,
           -- growth: later dates are likelier; weekends move to Friday / Monday
           date '2024-11-01' + floor(730 * i.u_date ^ 0.85)::int AS raw_date
    FROM gen_invoice0 i JOIN gen_customer c USING (customer_id)
), d2 AS (
    SELECT d.*,
           raw_date + CASE extract(isodow FROM raw_date) WHEN 6 THEN -1 WHEN 7 THEN 1 ELSE 0 END AS invoice_date
    FROM dated d
)
SELECT customer_id, inv_ord, invoice_date,
       CASE WHEN u_currency < 0.01 THEN
            CASE region WHEN 'UK & Ireland' THEN 'GBP' WHEN 'Nordics' THEN 'SEK' WHEN 'CEE' THEN 'PLN'
                        WHEN 'DACH' THEN 'CHF' ELSE 'USD' END
            ELSE 'EUR' END AS currency,
       invoice_date + payment_terms_days AS due_date,
       CASE WHEN u_pay < p_unpaid THEN NULL
            WHEN u_pay < p_unpaid + p_late
                 THEN invoice_date + payment_terms_days + 1 + floor(u_pay_days ^ 2 * 75)::int
            ELSE invoice_date + 1 + floor(u_pay_days * payment_terms_days)::int
       END AS paid_date,
       u_credit < 0.025 AS credited,
       invoice_date + 5 + floor(u_credit_days * 40)::int AS credit_date,
       CASE WHEN u_credit_lines < 0.35 THEN 2 ELSE 1 END AS credit_lines,
       0.1 + 0.9 * u_credit_share AS credit_share
FROM d2;

-- Every document, numbered in posting order (the ERP's own sequence).
CREATE TEMP TABLE gen_doc AS
WITH docs AS (
    SELECT customer_id, inv_ord, 'INV' AS doc_type, invoice_date, currency, due_date,
           CASE WHEN paid_date <= date '2026-10-31' THEN paid_date END AS paid_date
    FROM gen_invoice
    UNION ALL
    SELECT customer_id, inv_ord, 'CRN', credit_date, currency, credit_date, NULL
    FROM gen_invoice
    WHERE credited AND credit_date <= date '2026-10-31'
), numbered AS (
    SELECT d.*, 1000000 + row_number() OVER (ORDER BY invoice_date, customer_id, inv_ord, doc_type) AS invoice_id
    FROM docs d
)
SELECT n.*,
       doc_type || '-' || extract(year FROM invoice_date) || '-'
       || lpad((row_number() OVER (PARTITION BY doc_type, extract(year FROM invoice_date) ORDER BY invoice_id))::text, 6, '0')
       AS document_no
FROM numbered n;

-- ---------------------------------------------------------------------------
-- Staging tables shaped like the real ones, and the loader.

CREATE UNLOGGED TABLE erp.staging_invoice (LIKE erp.invoice, total numeric(14,2) NOT NULL DEFAULT 0, PRIMARY KEY (invoice_id));
CREATE UNLOGGED TABLE erp.staging_invoice_line (LIKE erp.invoice_line, PRIMARY KEY (invoice_id, line_no));
COMMENT ON TABLE erp.staging_invoice IS 'Generated documents waiting to be posted by erp.load_invoices';
COMMENT ON TABLE erp.staging_invoice_line IS 'Generated document lines waiting to be posted by erp.load_invoices';

INSERT INTO erp.staging_invoice_line (invoice_id, line_no, product_id, product_line, quantity, unit_price, discount, amount)
SELECT d.invoice_id, l.line_no, l.product_id, l.product_line, l.quantity, l.unit_price, l.discount,
       round(l.quantity * l.unit_price * (1 - l.discount), 2)
FROM gen_line l JOIN gen_doc d ON d.customer_id = l.customer_id AND d.inv_ord = l.inv_ord AND d.doc_type = 'INV'
ORDER BY d.invoice_id, l.line_no;

-- A credit note returns part of the first one or two lines of its invoice.
INSERT INTO erp.staging_invoice_line (invoice_id, line_no, product_id, product_line, quantity, unit_price, discount, amount)
SELECT c.invoice_id, l.line_no, l.product_id, l.product_line, q.quantity, l.unit_price, l.discount,
       round(q.quantity * l.unit_price * (1 - l.discount), 2)
FROM gen_doc c
JOIN gen_invoice i ON i.customer_id = c.customer_id AND i.inv_ord = c.inv_ord
JOIN gen_line l ON l.customer_id = c.customer_id AND l.inv_ord = c.inv_ord AND l.line_no <= i.credit_lines
CROSS JOIN LATERAL (
    SELECT -CASE WHEN l.unit = 'm3' THEN greatest(0.1, round(l.quantity * i.credit_share::numeric, 3))
                 ELSE greatest(1, round(l.quantity * i.credit_share::numeric)) END AS quantity
) q
WHERE c.doc_type = 'CRN'
ORDER BY c.invoice_id, l.line_no;

INSERT INTO erp.staging_invoice (invoice_id, document_no, customer_id, invoice_date, doc_type,
                                 reference_invoice_id, currency, due_date, paid_date, total)
SELECT d.invoice_id, d.document_no, d.customer_id, d.invoice_date, d.doc_type,
       CASE WHEN d.doc_type = 'CRN' THEN o.invoice_id END,
       d.currency, d.due_date, d.paid_date, t.total
FROM gen_doc d
LEFT JOIN gen_doc o ON d.doc_type = 'CRN' AND o.doc_type = 'INV'
                   AND o.customer_id = d.customer_id AND o.inv_ord = d.inv_ord
JOIN (SELECT invoice_id, sum(amount) AS total FROM erp.staging_invoice_line GROUP BY invoice_id) t
  ON t.invoice_id = d.invoice_id
ORDER BY d.invoice_id;
CREATE INDEX ON erp.staging_invoice (invoice_date);
CREATE INDEX ON erp.staging_invoice (paid_date);

-- Customers last: the wallet estimate is derived from what they really
-- bought in fiscal 2026.
INSERT INTO erp.customer (customer_id, name, cooperation_model, industry, region,
                          potential_spend, payment_terms_days, created_on)
SELECT c.customer_id, c.name, c.cooperation_model, c.industry, c.region,
       greatest(10000, round(coalesce(s.spend, 0) / c.share_of_wallet::numeric, -3)),
       c.payment_terms_days, c.created_on
FROM gen_customer c
LEFT JOIN (SELECT i.customer_id, sum(i.total) AS spend
           FROM erp.staging_invoice i
           WHERE i.invoice_date >= date '2025-11-01' AND i.currency = 'EUR'
           GROUP BY i.customer_id) s USING (customer_id)
ORDER BY c.customer_id;

ANALYZE erp.customer, erp.product, erp.staging_invoice, erp.staging_invoice_line;

-- Posts the staged documents dated in [p_from, p_to) month by month, one
-- transaction per month: each month's invoice headers, then their lines,
-- then the payments received that month (a payment row and the invoice's
-- paid_date set by an UPDATE, as the ERP's cash application does).
-- With p_payments_as_updates => false, headers are inserted with their final
-- paid_date instead (a history import) and no UPDATE runs.
CREATE PROCEDURE erp.load_invoices(p_from date, p_to date, p_payments_as_updates boolean DEFAULT true)
LANGUAGE plpgsql AS $$
DECLARE
    m_start date;
    m_end   date;
BEGIN
    m_start := p_from;
    WHILE m_start < p_to LOOP
        m_end := least((date_trunc('month', m_start) + interval '1 month')::date, p_to);

        INSERT INTO erp.invoice (invoice_id, document_no, customer_id, invoice_date, doc_type,
                                 reference_invoice_id, currency, due_date, paid_date)
        SELECT invoice_id, document_no, customer_id, invoice_date, doc_type,
               reference_invoice_id, currency, due_date,
               CASE WHEN NOT p_payments_as_updates THEN paid_date END
        FROM erp.staging_invoice
        WHERE invoice_date >= m_start AND invoice_date < m_end
        ORDER BY invoice_id;

        INSERT INTO erp.invoice_line
        SELECT l.*
        FROM erp.staging_invoice_line l
        JOIN erp.staging_invoice i USING (invoice_id)
        WHERE i.invoice_date >= m_start AND i.invoice_date < m_end
        ORDER BY l.invoice_id, l.line_no;

        INSERT INTO erp.payment (invoice_id, paid_on, amount)
        SELECT s.invoice_id, s.paid_date, s.total
        FROM erp.staging_invoice s
        JOIN erp.invoice i USING (invoice_id)
        WHERE s.paid_date >= m_start AND s.paid_date < m_end AND s.total > 0
        ORDER BY s.paid_date, s.invoice_id;

        IF p_payments_as_updates THEN
            UPDATE erp.invoice i
            SET paid_date = s.paid_date
            FROM erp.staging_invoice s
            WHERE s.invoice_id = i.invoice_id
              AND s.paid_date >= m_start AND s.paid_date < m_end;
        END IF;

        COMMIT;
        m_start := m_end;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE erp.load_invoices(date, date, boolean) IS
    'Posts the staged documents dated in [p_from, p_to) month by month, one transaction per month';

\echo generated :customers customers, :lines invoice lines (staged in erp.staging_invoice, erp.staging_invoice_line)
