-- omnisync hub store, schema 3: the authority's state. Each row holds the
-- entity in postcard (see omnisync_core::ledger), written in the same
-- transaction as the outcomes of the ops that changed it.

-- Stock ledger per (store, SKU), with every terminal's rights.
CREATE TABLE ledger_skus (
    store_id   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    state      BLOB NOT NULL,
    has_rights INTEGER NOT NULL,
    PRIMARY KEY (store_id, sku)
) STRICT, WITHOUT ROWID;
CREATE INDEX ledger_skus_with_rights ON ledger_skus (has_rights) WHERE has_rights = 1;

-- Decided orders.
CREATE TABLE ledger_orders (
    store_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    record   BLOB NOT NULL,
    PRIMARY KEY (store_id, order_id)
) STRICT, WITHOUT ROWID;

-- Idempotency keys of checkouts and stock commands, with their decision.
CREATE TABLE ledger_keys (
    store_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    decision BLOB NOT NULL,
    PRIMARY KEY (store_id, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger_reservations (
    store_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    state    BLOB NOT NULL,
    PRIMARY KEY (store_id, key)
) STRICT, WITHOUT ROWID;

-- Last order number given per store.
CREATE TABLE ledger_stores (
    store_id      TEXT PRIMARY KEY,
    last_order_no INTEGER NOT NULL
) STRICT;
