-- The demo ERP: a European electrical / building-materials wholesaler.
--
-- This schema stands for the customer's existing system, which loyalty must
-- take as it is: it is not shaped for us and loyalty adds nothing to it.
-- Lines are keyed by (invoice_id, line_no); customer, document date,
-- currency, document type and payment dates live on the invoice header.
-- As in most ERPs (SAP's billing items carry the material's product
-- hierarchy, for one), a line keeps a copy of its product's product line
-- taken when it was posted, so reports need not join the product master.

CREATE SCHEMA erp;
COMMENT ON SCHEMA erp IS 'The demo ERP (customers, products, invoices, payments): stands for the customer''s own system';

CREATE TABLE erp.customer (
    customer_id         int           PRIMARY KEY,
    name                text          NOT NULL,
    cooperation_model   text          NOT NULL
        CHECK (cooperation_model IN ('direct', 'distributor', 'integrator', 'reseller')),
    industry            text          NOT NULL,
    region              text          NOT NULL,
    potential_spend     numeric(14,2) NOT NULL CHECK (potential_spend >= 0),
    payment_terms_days  int           NOT NULL DEFAULT 30 CHECK (payment_terms_days BETWEEN 0 AND 120),
    created_on          date          NOT NULL
);
COMMENT ON TABLE erp.customer IS 'Business customers (sold-to parties)';
COMMENT ON COLUMN erp.customer.cooperation_model IS 'How the customer works with us: direct, distributor, integrator or reseller';
COMMENT ON COLUMN erp.customer.potential_spend IS 'Sales'' estimate of the customer''s annual wallet in our categories, EUR';
COMMENT ON COLUMN erp.customer.payment_terms_days IS 'Days from invoice date to due date';
CREATE INDEX customer_name_idx ON erp.customer (name);
CREATE INDEX customer_segment_idx ON erp.customer (cooperation_model, region);

CREATE TABLE erp.product_line (
    product_line text PRIMARY KEY,
    name         text NOT NULL
);
COMMENT ON TABLE erp.product_line IS 'Product lines (top level of the product hierarchy)';

CREATE TABLE erp.product (
    product_id   int           PRIMARY KEY,
    sku          text          NOT NULL UNIQUE,
    name         text          NOT NULL,
    product_line text          NOT NULL REFERENCES erp.product_line,
    unit         text          NOT NULL CHECK (unit IN ('pcs', 'm', 'm3')),
    list_price   numeric(12,2) NOT NULL CHECK (list_price > 0)
);
COMMENT ON TABLE erp.product IS 'Product master';
COMMENT ON COLUMN erp.product.unit IS 'Sales unit: pieces, metres or cubic metres';
COMMENT ON COLUMN erp.product.list_price IS 'List price per sales unit, EUR';
CREATE INDEX product_line_idx ON erp.product (product_line);

CREATE TABLE erp.invoice (
    invoice_id           bigint  PRIMARY KEY,
    document_no          text    NOT NULL UNIQUE,
    customer_id          int     NOT NULL REFERENCES erp.customer,
    invoice_date         date    NOT NULL,
    doc_type             text    NOT NULL CHECK (doc_type IN ('INV', 'CRN')),
    reference_invoice_id bigint  REFERENCES erp.invoice,
    currency             char(3) NOT NULL,
    due_date             date    NOT NULL,
    paid_date            date,
    CHECK (due_date >= invoice_date),
    CHECK (paid_date >= invoice_date),
    CHECK ((doc_type = 'CRN') = (reference_invoice_id IS NOT NULL))
);
COMMENT ON TABLE erp.invoice IS 'Billing documents: invoices (INV) and credit notes (CRN)';
COMMENT ON COLUMN erp.invoice.doc_type IS 'INV = invoice, CRN = credit note (negative lines)';
COMMENT ON COLUMN erp.invoice.reference_invoice_id IS 'For a credit note: the invoice it corrects';
COMMENT ON COLUMN erp.invoice.paid_date IS 'Date the invoice was paid in full; NULL while it is open';
CREATE INDEX invoice_customer_date_idx ON erp.invoice (customer_id, invoice_date);
CREATE INDEX invoice_date_idx ON erp.invoice (invoice_date);
CREATE INDEX invoice_reference_idx ON erp.invoice (reference_invoice_id) WHERE reference_invoice_id IS NOT NULL;
CREATE INDEX invoice_open_items_idx ON erp.invoice (due_date) WHERE paid_date IS NULL;

CREATE TABLE erp.invoice_line (
    invoice_id   bigint        NOT NULL REFERENCES erp.invoice ON DELETE CASCADE,
    line_no      int           NOT NULL CHECK (line_no > 0),
    product_id   int           NOT NULL REFERENCES erp.product,
    product_line text          NOT NULL,
    quantity     numeric(12,3) NOT NULL CHECK (quantity <> 0),
    unit_price   numeric(12,2) NOT NULL CHECK (unit_price >= 0),
    discount     numeric(5,4)  NOT NULL DEFAULT 0 CHECK (discount BETWEEN 0 AND 0.3),
    amount       numeric(14,2) NOT NULL,
    PRIMARY KEY (invoice_id, line_no),
    CHECK (amount = round(quantity * unit_price * (1 - discount), 2))
);
COMMENT ON TABLE erp.invoice_line IS 'Billing document lines; credit-note lines carry negative quantity and amount';
COMMENT ON COLUMN erp.invoice_line.product_line IS 'The product''s product line when the line was posted';
COMMENT ON COLUMN erp.invoice_line.discount IS 'Line discount as a fraction, 0 to 0.3';
COMMENT ON COLUMN erp.invoice_line.amount IS 'Net line amount in the document currency: round(quantity * unit_price * (1 - discount), 2)';
CREATE INDEX invoice_line_product_idx ON erp.invoice_line (product_id);

CREATE TABLE erp.payment (
    payment_id bigint        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id bigint        NOT NULL REFERENCES erp.invoice,
    paid_on    date          NOT NULL,
    amount     numeric(14,2) NOT NULL CHECK (amount > 0)
);
COMMENT ON TABLE erp.payment IS 'Incoming payments, each cleared against one invoice';
CREATE INDEX payment_invoice_idx ON erp.payment (invoice_id);
CREATE INDEX payment_paid_on_idx ON erp.payment (paid_on);
