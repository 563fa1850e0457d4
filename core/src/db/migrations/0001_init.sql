-- omnisync device store, schema 1: documents, operation log, sync cursors.

-- Key/value facts about this database: replica id, device id, store id.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Latest compacted form of each automerge document (NULL until the first compaction).
CREATE TABLE docs (
    doc_id       TEXT PRIMARY KEY,
    snapshot     BLOB,
    chunk_count  INTEGER NOT NULL DEFAULT 0,
    updated_ms   INTEGER NOT NULL
) STRICT;

-- Changes since the snapshot, local and remote, in the order they were applied.
CREATE TABLE doc_chunks (
    doc_id   TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    bytes    BLOB NOT NULL,
    PRIMARY KEY (doc_id, chunk_no)
) STRICT, WITHOUT ROWID;

-- The operation log. seq is this replica's op sequence number (OpId.seq).
-- status: 'pending' | 'acknowledged' | 'rejected' (the dead-letter lane).
CREATE TABLE ops (
    seq            INTEGER PRIMARY KEY,
    created_ms     INTEGER NOT NULL,
    status         TEXT NOT NULL,
    body           BLOB NOT NULL,
    docs           TEXT NOT NULL,
    acked_ms       INTEGER,
    hub_seq        INTEGER,
    reject_code    TEXT,
    reject_detail  TEXT
) STRICT;
CREATE INDEX ops_by_status ON ops (status, seq);

-- Per subscribed document set: the hub sequence number applied through.
CREATE TABLE subscriptions (
    set_id  TEXT PRIMARY KEY,
    cursor  INTEGER NOT NULL
) STRICT;
