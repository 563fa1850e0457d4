-- omnisync hub store, schema 1: the numbered change log and op outcomes.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Every accepted automerge change, numbered by hub_seq (gapless, ascending
-- in commit order). set_id is the document's set, for subscription reads.
CREATE TABLE changes (
    hub_seq  INTEGER PRIMARY KEY,
    set_id   TEXT NOT NULL,
    doc_id   TEXT NOT NULL,
    origin   BLOB NOT NULL,
    bytes    BLOB NOT NULL
) STRICT;
CREATE INDEX changes_by_set ON changes (set_id, hub_seq);
CREATE INDEX changes_by_doc ON changes (doc_id, hub_seq);

-- The durable answer given to every op id, so a retry gets the same answer.
CREATE TABLE op_outcomes (
    replica     BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    outcome     BLOB NOT NULL,
    decided_ms  INTEGER NOT NULL,
    PRIMARY KEY (replica, seq)
) STRICT, WITHOUT ROWID;
