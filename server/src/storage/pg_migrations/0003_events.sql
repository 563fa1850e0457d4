-- omnisync hub store on PostgreSQL, schema 3: the outbox. Typed events
-- written in the same transaction as their cause; `seq` is dense across the
-- outbox, `store_seq` dense within a store. `data` is the event's JSON
-- payload, queryable with PostgreSQL's JSON operators.
CREATE TABLE events (
    seq       int8 PRIMARY KEY,
    tenant    text NOT NULL,
    store_id  text COLLATE "C" NOT NULL,
    store_seq int8 NOT NULL,
    type      text NOT NULL,
    time_ms   int8 NOT NULL,
    data      jsonb NOT NULL
);
CREATE UNIQUE INDEX events_by_store ON events (store_id, store_seq);
-- Pruning finds the events older than the retention without scanning the rest.
CREATE INDEX events_by_time ON events (time_ms);
