-- omnisync hub store on PostgreSQL, schema 1: the change log, op outcomes,
-- snapshots and the authority's state, as in the SQLite schemas 1 to 3.
-- Text that is sorted (set, document, store and SKU ids) uses the "C"
-- collation: ids are ordered by their bytes, as on every backend.

CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

-- The committed head, one row: read by every write transaction right after
-- it takes the writers' lock, and by readers in their snapshot.
CREATE TABLE log_head (
    id  int PRIMARY KEY CHECK (id = 1),
    seq int8 NOT NULL
);
INSERT INTO log_head (id, seq) VALUES (1, 0);

-- Every accepted automerge change and hub record, numbered by hub_seq
-- (gapless, ascending in commit order).
CREATE TABLE changes (
    hub_seq int8 PRIMARY KEY,
    set_id  text COLLATE "C" NOT NULL,
    doc_id  text COLLATE "C" NOT NULL,
    origin  bytea NOT NULL,
    bytes   bytea NOT NULL
);
CREATE INDEX changes_by_set ON changes (set_id, hub_seq);
CREATE INDEX changes_by_doc ON changes (doc_id, hub_seq);

-- The durable answer given to every op id, so a retry gets the same answer.
CREATE TABLE op_outcomes (
    replica    bytea NOT NULL,
    seq        int8 NOT NULL,
    outcome    bytea NOT NULL,
    decided_ms int8 NOT NULL,
    PRIMARY KEY (replica, seq)
);

-- A saved automerge document holding every change of doc_id up to covers_seq.
CREATE TABLE snapshots (
    doc_id     text COLLATE "C" PRIMARY KEY,
    set_id     text COLLATE "C" NOT NULL,
    covers_seq int8 NOT NULL,
    bytes      bytea NOT NULL
);
CREATE INDEX snapshots_by_set ON snapshots (set_id, doc_id);

-- Per set, the point every snapshot of the set covers.
CREATE TABLE set_snapshots (
    set_id     text COLLATE "C" PRIMARY KEY,
    covers_seq int8 NOT NULL
);

-- Stock ledger per (store, SKU), with every terminal's rights.
CREATE TABLE ledger_skus (
    store_id   text COLLATE "C" NOT NULL,
    sku        text COLLATE "C" NOT NULL,
    state      bytea NOT NULL,
    has_rights boolean NOT NULL,
    PRIMARY KEY (store_id, sku)
);
CREATE INDEX ledger_skus_with_rights ON ledger_skus (store_id, sku) WHERE has_rights;

-- Decided orders.
CREATE TABLE ledger_orders (
    store_id text COLLATE "C" NOT NULL,
    order_id text COLLATE "C" NOT NULL,
    record   bytea NOT NULL,
    PRIMARY KEY (store_id, order_id)
);

-- Idempotency keys of checkouts and stock commands, with their decision.
CREATE TABLE ledger_keys (
    store_id text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    decision bytea NOT NULL,
    PRIMARY KEY (store_id, key)
);

CREATE TABLE ledger_reservations (
    store_id text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    state    bytea NOT NULL,
    PRIMARY KEY (store_id, key)
);

-- Last order number given per store.
CREATE TABLE ledger_stores (
    store_id      text COLLATE "C" PRIMARY KEY,
    last_order_no int8 NOT NULL
);
