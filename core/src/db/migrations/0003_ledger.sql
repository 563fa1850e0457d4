-- omnisync device store, schema 3: what the hub decides. Stock, allowances
-- and orders come from hub records (the newest version wins: every record
-- carries its entity's version, which only grows); the
-- device's own escrow accounting and compensation tasks are local. The
-- automerge-era read-side stock and order tables are replaced.

DROP INDEX orders_by_status;
DROP TABLE orders;
DROP TABLE stock_levels;

CREATE TABLE stock_levels (
    set_id             TEXT NOT NULL,
    sku                TEXT NOT NULL,
    on_hand            INTEGER NOT NULL,
    free               INTEGER NOT NULL,
    reserved           INTEGER NOT NULL,
    held               INTEGER NOT NULL,
    mode               TEXT NOT NULL,
    strong_at_or_below INTEGER NOT NULL,
    offline_policy     TEXT NOT NULL,
    version            INTEGER NOT NULL,
    PRIMARY KEY (set_id, sku)
) STRICT;

-- This device's allowances as the hub granted them (from its device set).
CREATE TABLE allowances (
    device_id TEXT NOT NULL,
    sku       TEXT NOT NULL,
    granted   INTEGER NOT NULL,
    spent     INTEGER NOT NULL,
    released  INTEGER NOT NULL,
    recall    INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (device_id, sku)
) STRICT;

-- This device's own use of its allowances, including ops not yet at the
-- hub: written in the same transaction as the sale that spends them.
CREATE TABLE escrow_local (
    sku      TEXT PRIMARY KEY,
    spent    INTEGER NOT NULL,
    released INTEGER NOT NULL
) STRICT;

-- Orders: this device's checkouts from the moment they are recorded, and
-- every order the hub published.
CREATE TABLE orders (
    order_id        TEXT PRIMARY KEY,
    order_no        INTEGER,
    device_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    total_minor     INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    at_risk         INTEGER NOT NULL,
    lines           TEXT NOT NULL,
    op_seq          INTEGER,
    idempotency_key TEXT
) STRICT;
CREATE INDEX orders_by_status ON orders (status, created_ms);
CREATE UNIQUE INDEX orders_by_key ON orders (idempotency_key);

-- Provisional sales the hub could not cover: the app resolves each one.
CREATE TABLE compensations (
    op_seq      INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL,
    order_no    INTEGER,
    lines       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    state       TEXT NOT NULL,
    resolution  TEXT,
    created_ms  INTEGER NOT NULL,
    resolved_ms INTEGER
) STRICT;

ALTER TABLE ops ADD COLUMN decision BLOB;
