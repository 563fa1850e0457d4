-- omnisync hub store, schema 2: document snapshots for fast first sync.

-- A saved automerge document holding every change of doc_id up to covers_seq.
CREATE TABLE snapshots (
    doc_id      TEXT PRIMARY KEY,
    set_id      TEXT NOT NULL,
    covers_seq  INTEGER NOT NULL,
    bytes       BLOB NOT NULL
) STRICT;
CREATE INDEX snapshots_by_set ON snapshots (set_id, doc_id);

-- Per set: every document of the set has a snapshot covering at least this
-- sequence number, so a new device can start from the snapshots plus the
-- changes after it.
CREATE TABLE set_snapshots (
    set_id      TEXT PRIMARY KEY,
    covers_seq  INTEGER NOT NULL
) STRICT;
