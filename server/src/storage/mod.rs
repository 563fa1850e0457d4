//! The hub's embedded SQLite storage: one writer that group-commits, and a
//! small pool of readers for catch-up and admin reads (WAL lets them run
//! beside the writer).
//!
//! Architecture invariant: an op's outcome and its changes are written in
//! the same transaction, committed with `synchronous=FULL`, before any ack
//! for it leaves the hub.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use omnisync_core::OpId;
use omnisync_core::hublog::{AppliedBatch, HubLog, HubLogError, HubLogRead};
use omnisync_core::ids::{DocId, DocSetId, ReplicaId};
use omnisync_core::protocol::hub::{ChangePage, IncomingOp};
use omnisync_core::protocol::message::{Ack, AckOutcome, OpBody, RemoteChange};
use rusqlite::{Connection, OptionalExtension, params};

const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];
/// Reader connections kept open for reuse.
pub const READER_POOL_LEN_MAX: usize = 8;
/// File name of the hub database inside the data directory.
pub const DB_FILE_NAME: &str = "hub.db";

fn storage_error(error: impl std::fmt::Display) -> HubLogError {
    HubLogError::Storage(error.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, HubLogError> {
    let db = Connection::open(path).map_err(storage_error)?;
    db.pragma_update(None, "journal_mode", "WAL").map_err(storage_error)?;
    db.pragma_update(None, "synchronous", "FULL").map_err(storage_error)?;
    db.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage_error)?;
    Ok(db)
}

/// The single writer of the hub's log.
pub struct SqliteHubLog {
    db: Connection,
    head: u64,
    log_id: String,
}

impl SqliteHubLog {
    /// Opens (creating and migrating) the hub database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, HubLogError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| storage_error(format!("creating {}: {error}", data_dir.display())))?;
        let mut db = open_connection(&data_dir.join(DB_FILE_NAME))?;
        migrate(&mut db)?;
        let head: Option<i64> =
            db.query_row("SELECT MAX(hub_seq) FROM changes", [], |row| row.get(0)).map_err(storage_error)?;
        let log_id = claim_log_id(&db)?;
        Ok(Self { db, head: head.unwrap_or(0) as u64, log_id })
    }

    /// The identity of this change log (random, made when the database was).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }
}

fn claim_log_id(db: &Connection) -> Result<String, HubLogError> {
    let existing: Option<String> = db
        .query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |row| row.get(0))
        .optional()
        .map_err(storage_error)?;
    if let Some(log_id) = existing {
        return Ok(log_id);
    }
    let log_id = omnisync_core::ReplicaId::random().to_string();
    db.execute("INSERT INTO meta (key, value) VALUES ('log_id', ?1)", [&log_id]).map_err(storage_error)?;
    Ok(log_id)
}

fn migrate(db: &mut Connection) -> Result<(), HubLogError> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(storage_error)?;
    if version > MIGRATIONS.len() as i64 {
        return Err(storage_error(format!(
            "hub database schema {version} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = db.transaction().map_err(storage_error)?;
        tx.execute_batch(sql).map_err(storage_error)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64).map_err(storage_error)?;
        tx.commit().map_err(storage_error)?;
    }
    Ok(())
}

fn encode_outcome(outcome: &AckOutcome) -> Result<Vec<u8>, HubLogError> {
    postcard::to_stdvec(outcome).map_err(storage_error)
}

fn decode_outcome(bytes: &[u8]) -> Result<AckOutcome, HubLogError> {
    postcard::from_bytes(bytes).map_err(|error| storage_error(format!("stored outcome: {error}")))
}

impl HubLog for SqliteHubLog {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        let mut batch = AppliedBatch::default();
        let mut head = self.head;
        let now_ms = omnisync_core::now_ms() as i64;
        let tx = self.db.transaction().map_err(storage_error)?;
        // Outcomes decided earlier in this same batch (a duplicate inside one push).
        let mut decided: HashMap<OpId, AckOutcome> = HashMap::new();
        {
            let mut find = tx
                .prepare_cached("SELECT outcome FROM op_outcomes WHERE replica = ?1 AND seq = ?2")
                .map_err(storage_error)?;
            let mut insert_outcome = tx
                .prepare_cached(
                    "INSERT INTO op_outcomes (replica, seq, outcome, decided_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(storage_error)?;
            let mut insert_change = tx
                .prepare_cached(
                    "INSERT INTO changes (hub_seq, set_id, doc_id, origin, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(storage_error)?;
            for incoming in ops {
                let id = incoming.op.id;
                if let Some(outcome) = decided.get(&id) {
                    batch.acks.push(Ack { op: id, outcome: outcome.clone() });
                    batch.duplicates += 1;
                    continue;
                }
                let stored: Option<Vec<u8>> = find
                    .query_row(params![&id.replica.0[..], id.seq as i64], |row| row.get(0))
                    .optional()
                    .map_err(storage_error)?;
                if let Some(stored) = stored {
                    batch.acks.push(Ack { op: id, outcome: decode_outcome(&stored)? });
                    batch.duplicates += 1;
                    continue;
                }
                let outcome = match incoming.rejection() {
                    Some(rejected) => {
                        batch.rejected += 1;
                        rejected
                    }
                    None => {
                        batch.stored += 1;
                        let OpBody::Changes(changes) = incoming.op.body;
                        for change in changes {
                            head += 1;
                            let set = change.doc.set();
                            insert_change
                                .execute(params![
                                    head as i64,
                                    set.as_str(),
                                    change.doc.as_str(),
                                    &id.replica.0[..],
                                    &change.bytes
                                ])
                                .map_err(storage_error)?;
                            batch.committed.by_set.entry(set).or_default().push(RemoteChange {
                                hub_seq: head,
                                doc: change.doc,
                                origin: id.replica,
                                bytes: change.bytes,
                            });
                        }
                        AckOutcome::Applied { hub_seq: head }
                    }
                };
                insert_outcome
                    .execute(params![&id.replica.0[..], id.seq as i64, encode_outcome(&outcome)?, now_ms])
                    .map_err(storage_error)?;
                decided.insert(id, outcome.clone());
                batch.acks.push(Ack { op: id, outcome });
            }
        }
        tx.commit().map_err(storage_error)?;
        self.head = head;
        Ok(batch)
    }

    fn head_seq(&self) -> Result<u64, HubLogError> {
        Ok(self.head)
    }
}

/// A pool of read-only connections to the hub database.
pub struct SqliteReader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    /// Readers for the hub database in `data_dir` (opened by [`SqliteHubLog::open`] first).
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join(DB_FILE_NAME), pool: Mutex::new(Vec::new()) }
    }

    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, HubLogError>,
    ) -> Result<T, HubLogError> {
        let pooled = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let db = match pooled {
            Some(db) => db,
            None => open_connection(&self.path)?,
        };
        let result = read(&db);
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < READER_POOL_LEN_MAX {
            pool.push(db);
        }
        result
    }
}

impl HubLogRead for SqliteReader {
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.with_connection(|db| {
            // One read transaction: the head and the page come from the same snapshot.
            db.execute_batch("BEGIN").map_err(storage_error)?;
            let result = read_page(db, set, cursor, len_max, bytes_target);
            let _ = db.execute_batch("COMMIT");
            result
        })
    }

    fn doc_changes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
        self.with_connection(|db| {
            let mut statement = db
                .prepare_cached("SELECT bytes FROM changes WHERE doc_id = ?1 ORDER BY hub_seq")
                .map_err(storage_error)?;
            let rows = statement
                .query_map([doc.as_str()], |row| row.get::<_, Vec<u8>>(0))
                .map_err(storage_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_error)?;
            Ok(rows)
        })
    }

    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        self.with_connection(|db| {
            let stored: Option<Vec<u8>> = db
                .query_row(
                    "SELECT outcome FROM op_outcomes WHERE replica = ?1 AND seq = ?2",
                    params![&op.replica.0[..], op.seq as i64],
                    |row| row.get(0),
                )
                .optional()
                .map_err(storage_error)?;
            stored.map(|bytes| decode_outcome(&bytes)).transpose()
        })
    }
}

fn read_page(
    db: &Connection,
    set: &DocSetId,
    cursor: u64,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let head: Option<i64> =
        db.query_row("SELECT MAX(hub_seq) FROM changes", [], |row| row.get(0)).map_err(storage_error)?;
    let head = head.unwrap_or(0) as u64;
    let mut statement = db
        .prepare_cached(
            "SELECT hub_seq, doc_id, origin, bytes FROM changes
             WHERE set_id = ?1 AND hub_seq > ?2 ORDER BY hub_seq LIMIT ?3",
        )
        .map_err(storage_error)?;
    let mut rows =
        statement.query(params![set.as_str(), cursor as i64, (len_max + 1) as i64]).map_err(storage_error)?;
    let mut changes = Vec::new();
    let mut bytes_total = 0;
    let mut more = false;
    while let Some(row) = rows.next().map_err(storage_error)? {
        if changes.len() >= len_max || (bytes_total >= bytes_target && !changes.is_empty()) {
            more = true;
            break;
        }
        let hub_seq: i64 = row.get(0).map_err(storage_error)?;
        let doc: String = row.get(1).map_err(storage_error)?;
        let origin: Vec<u8> = row.get(2).map_err(storage_error)?;
        let bytes: Vec<u8> = row.get(3).map_err(storage_error)?;
        bytes_total += bytes.len();
        changes.push(RemoteChange {
            hub_seq: hub_seq as u64,
            doc: DocId::new(doc).map_err(storage_error)?,
            origin: ReplicaId::from_slice(&origin).ok_or_else(|| storage_error("stored origin is not 16 bytes"))?,
            bytes,
        });
    }
    let cursor = if more {
        changes.last().map_or(cursor, |change| change.hub_seq)
    } else {
        head.max(cursor)
    };
    Ok(ChangePage { changes, cursor, caught_up: !more })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writer and reader together, so the shared conformance suite can run.
    struct Both {
        writer: SqliteHubLog,
        reader: SqliteReader,
        _dir: tempfile::TempDir,
    }

    impl HubLog for Both {
        fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
            self.writer.apply(ops)
        }
        fn head_seq(&self) -> Result<u64, HubLogError> {
            self.writer.head_seq()
        }
    }

    impl HubLogRead for Both {
        fn changes_since(&self, set: &DocSetId, cursor: u64, len_max: usize, bytes_target: usize) -> Result<ChangePage, HubLogError> {
            self.reader.changes_since(set, cursor, len_max, bytes_target)
        }
        fn doc_changes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
            self.reader.doc_changes(doc)
        }
        fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
            self.reader.outcome(op)
        }
    }

    fn fresh() -> Both {
        let dir = tempfile::tempdir().unwrap();
        let writer = SqliteHubLog::open(dir.path()).unwrap();
        let reader = SqliteReader::new(dir.path());
        Both { writer, reader, _dir: dir }
    }

    #[test]
    fn sqlite_log_conforms() {
        omnisync_core::hublog::conformance::run_all(fresh);
    }

    #[test]
    fn the_head_survives_reopening() {
        let both = fresh();
        let mut writer = both.writer;
        writer.apply(vec![]).unwrap();
        let dir = both._dir;
        omnisync_core::hublog::conformance::duplicates_get_the_original_answer(Both {
            writer,
            reader: SqliteReader::new(dir.path()),
            _dir: tempfile::tempdir().unwrap(),
        });
        let reopened = SqliteHubLog::open(dir.path()).unwrap();
        assert_eq!(reopened.head_seq().unwrap(), 1);
    }
}
