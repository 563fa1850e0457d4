-- omnisync device store, schema 2: query tables (projections) of the retail
-- documents. They are rebuilt from documents in the same transaction as every
-- document change, so the app reads them instead of opening documents.

-- Product metadata. A field with concurrent values shows the value every
-- replica picks alike; all values are in product_conflicts.
CREATE TABLE products (
    set_id      TEXT NOT NULL,
    sku         TEXT NOT NULL,
    name        TEXT,
    category    TEXT,
    barcode     TEXT,
    brand       TEXT,
    description TEXT,
    status      TEXT,
    PRIMARY KEY (set_id, sku)
) STRICT;
CREATE INDEX products_by_barcode ON products (set_id, barcode, sku);
CREATE INDEX products_by_category ON products (set_id, category, sku);

CREATE TABLE product_conflicts (
    set_id TEXT NOT NULL,
    sku    TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  TEXT NOT NULL
) STRICT;
CREATE INDEX product_conflicts_by_sku ON product_conflicts (set_id, sku);

-- Full-text search over name, brand and category.
CREATE VIRTUAL TABLE products_fts USING fts5 (set_id UNINDEXED, sku, name, brand, category, tokenize = 'unicode61 remove_diacritics 2');

-- Prices: the winning value of each (sku, channel, effective-from) register.
CREATE TABLE prices (
    set_id            TEXT NOT NULL,
    sku               TEXT NOT NULL,
    channel           TEXT NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    amount_minor      INTEGER NOT NULL,
    currency          TEXT NOT NULL,
    hlc_wall_ms       INTEGER NOT NULL,
    hlc_counter       INTEGER NOT NULL,
    PRIMARY KEY (set_id, sku, channel, effective_from_ms)
) STRICT;

CREATE TABLE stock_levels (
    set_id  TEXT NOT NULL,
    sku     TEXT NOT NULL,
    on_hand INTEGER NOT NULL,
    PRIMARY KEY (set_id, sku)
) STRICT;

CREATE TABLE cart_lines (
    doc_id    TEXT NOT NULL,
    line_id   TEXT NOT NULL,
    sku       TEXT NOT NULL,
    quantity  INTEGER NOT NULL,
    added_ms  INTEGER NOT NULL,
    PRIMARY KEY (doc_id, line_id)
) STRICT;

CREATE TABLE wishlist_items (
    doc_id TEXT NOT NULL,
    sku    TEXT NOT NULL,
    PRIMARY KEY (doc_id, sku)
) STRICT;

CREATE TABLE profile_fields (
    doc_id TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (doc_id, field)
) STRICT;

CREATE TABLE history_entries (
    doc_id  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    sku     TEXT NOT NULL,
    PRIMARY KEY (doc_id, at_ms, sku)
) STRICT;

CREATE TABLE recommendations (
    doc_id   TEXT NOT NULL,
    position INTEGER NOT NULL,
    sku      TEXT NOT NULL,
    PRIMARY KEY (doc_id, position)
) STRICT;

CREATE TABLE orders (
    set_id       TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    doc_id       TEXT NOT NULL,
    status       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    total_minor  INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    conflicted   INTEGER NOT NULL,
    PRIMARY KEY (set_id, order_id)
) STRICT;
CREATE INDEX orders_by_status ON orders (set_id, status, created_ms);
