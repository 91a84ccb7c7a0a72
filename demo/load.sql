-- Posts the staged ERP documents (demo/generate.sql) into erp.invoice,
-- erp.invoice_line and erp.payment, one month per transaction, and shows
-- what the ERP then holds. Run on its own when no program is attached, or
-- from demo/accrual.sql after attach, so that accrual happens inside the
-- ERP's own inserts and updates.

\set QUIET on
\pset footer off
\pset numericlocale on

\echo
\echo '== Posting 24 months of invoices, credit notes and payments into the ERP'
\echo '   (erp.load_invoices: per month, one INSERT of headers, one of lines,'
\echo '   one of payments and one UPDATE of paid dates, each month committed)'
\timing on
CALL erp.load_invoices(date '2024-11-01', date '2026-11-01');
\timing off
ANALYZE erp.invoice, erp.invoice_line, erp.payment;

\echo
\echo '================================================================================'
\echo ' The demo ERP at a glance (fiscal years run November to October)'
\echo '================================================================================'
SELECT 'FY' || extract(year FROM i.invoice_date + interval '2 months')  AS fiscal_year,
       count(DISTINCT i.invoice_id) FILTER (WHERE i.doc_type = 'INV')  AS invoices,
       count(DISTINCT i.invoice_id) FILTER (WHERE i.doc_type = 'CRN')  AS credit_notes,
       count(*)                                                        AS lines,
       count(DISTINCT i.customer_id)                                   AS buying_customers,
       round(sum(l.amount) FILTER (WHERE i.currency = 'EUR'), 2)       AS net_revenue_eur,
       count(DISTINCT i.invoice_id) FILTER (WHERE i.currency <> 'EUR') AS non_eur_documents
FROM erp.invoice i
JOIN erp.invoice_line l USING (invoice_id)
GROUP BY 1
ORDER BY 1;

\echo 'Payment of invoices, as of 2026-10-31:'
SELECT count(*)                                                                     AS invoices,
       round(100.0 * count(*) FILTER (WHERE paid_date <= due_date) / count(*), 1)     AS paid_on_time_pct,
       round(100.0 * count(*) FILTER (WHERE paid_date > due_date) / count(*), 1)      AS paid_late_pct,
       round(100.0 * count(*) FILTER (WHERE paid_date IS NULL
                                        AND due_date < date '2026-10-31') / count(*), 1)  AS unpaid_overdue_pct,
       round(100.0 * count(*) FILTER (WHERE paid_date IS NULL
                                        AND due_date >= date '2026-10-31') / count(*), 1) AS open_not_yet_due_pct
FROM erp.invoice
WHERE doc_type = 'INV';

\echo 'Concentration: the largest customers (ranked by invoice lines) and their share:'
WITH per_customer AS (
    SELECT i.customer_id, count(*) AS lines, sum(l.amount) FILTER (WHERE i.currency = 'EUR') AS revenue
    FROM erp.invoice i JOIN erp.invoice_line l USING (invoice_id)
    GROUP BY i.customer_id
), ranked AS (
    SELECT p.*, row_number() OVER (ORDER BY lines DESC, customer_id) AS r,
           (SELECT count(*) FROM erp.customer) AS n
    FROM per_customer p
)
SELECT 'largest 1%'                                                            AS "group",
       count(*) FILTER (WHERE r <= n / 100)                                    AS customers,
       round(100.0 * sum(lines) FILTER (WHERE r <= n / 100) / sum(lines), 1)   AS lines_pct,
       round(100 * sum(revenue) FILTER (WHERE r <= n / 100) / sum(revenue), 1) AS revenue_pct
FROM ranked
UNION ALL
SELECT 'largest 20%',
       count(*) FILTER (WHERE r <= n / 5),
       round(100.0 * sum(lines) FILTER (WHERE r <= n / 5) / sum(lines), 1),
       round(100 * sum(revenue) FILTER (WHERE r <= n / 5) / sum(revenue), 1)
FROM ranked;
