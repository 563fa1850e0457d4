-- The outbox: typed events written in the same transaction as their cause
-- (an order decided, a stock level moved, a price written, ...). `seq` is
-- dense across the outbox, `store_seq` dense within a store.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    tenant    TEXT NOT NULL,
    store_id  TEXT NOT NULL,
    store_seq INTEGER NOT NULL,
    type      TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    data      TEXT NOT NULL
);
CREATE UNIQUE INDEX events_by_store ON events (store_id, store_seq);
-- Pruning finds the events older than the retention without scanning the rest.
CREATE INDEX events_by_time ON events (time_ms);
