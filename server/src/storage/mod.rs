//! The hub's embedded SQLite storage: the row-level primitives of the hub
//! log contract (`omnisync_hub_engine::log::contract`) as SQL. One writer
//! group-commits through the shared [`HubStore`]; a small pool of readers
//! serves catch-up and admin reads (WAL lets them run beside the writer).
//! Everything that is not SQL (outcomes checked once, numbering, the price
//! book, snapshots, page cutting, import writes) is shared engine code.
//!
//! Architecture invariant: an op's outcome and its changes are written in
//! the same transaction, committed with `synchronous=FULL`, before any ack
//! for it leaves the hub.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use omnisync_core::OpId;
use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::{DocId, DocSetId, ReplicaId};
use omnisync_core::vocab::ids::{StoreId, TenantId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::OrderRecord;
use omnisync_hub_engine::events::{Event, EventFilter, EventType};
use omnisync_hub_engine::ledger::authority::Reservation;
use omnisync_hub_engine::ledger::sku_ledger::SkuLedger;
use omnisync_hub_engine::log::shared::storage_error;
use omnisync_hub_engine::log::{
    Backend, HubLogError, HubStore, LogRows, PageCut, ReadBackend, WriteTxn,
};
use rusqlite::{Connection, OptionalExtension, params};

pub use omnisync_hub_engine::log::{SNAPSHOT_CATCH_UP_GAP_MIN, hub_replica};

pub mod pg_registry;
pub mod postgres;

/// Where a hub keeps its log: a SQLite file in a data directory (one
/// process), or a PostgreSQL database (processes may share it).
#[derive(Clone, Debug)]
pub enum LogTarget {
    /// `<dir>/hub.db`, locked by the one process writing it.
    DataDir(PathBuf),
    /// A PostgreSQL database.
    Database(Box<postgres::PgUrl>),
}

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_snapshots.sql"),
    include_str!("migrations/0003_ledger.sql"),
    include_str!("migrations/0004_events.sql"),
];
/// File in the data directory held locked by the one process writing it.
pub const LOCK_FILE_NAME: &str = "hub.lock";
/// Reader connections kept open for reuse.
pub const READER_POOL_LEN_MAX: usize = 8;
/// File name of the hub database inside the data directory.
pub const DB_FILE_NAME: &str = "hub.db";

/// The hub log's single writer over SQLite: the shared writer on the
/// SQLite backend.
pub type SqliteHubLog = HubStore<SqliteBackend>;

fn open_connection(path: &Path) -> Result<Connection, HubLogError> {
    let db = Connection::open(path).map_err(storage_error)?;
    // On Apple platforms fsync does not reach stable storage; F_FULLFSYNC
    // does. Set before WAL mode so the file's creation is flushed too.
    #[cfg(target_vendor = "apple")]
    {
        db.pragma_update(None, "fullfsync", "ON")
            .map_err(storage_error)?;
        db.pragma_update(None, "checkpoint_fullfsync", "ON")
            .map_err(storage_error)?;
    }
    db.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage_error)?;
    db.pragma_update(None, "synchronous", "FULL")
        .map_err(storage_error)?;
    db.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage_error)?;
    Ok(db)
}

/// Opens (creating and migrating) the hub database in `data_dir` for
/// writing; refused while another process writes it.
pub fn open(data_dir: &Path) -> Result<SqliteHubLog, HubLogError> {
    HubStore::open(SqliteBackend::open(data_dir)?)
}

/// Takes the data directory's lock (held by the one process writing it),
/// refusing when another process holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, HubLogError> {
    let lock = std::fs::File::create(data_dir.join(LOCK_FILE_NAME))
        .map_err(|error| storage_error(format!("creating the lock file: {error}")))?;
    lock.try_lock().map_err(|_| {
        storage_error(format!(
            "{} is in use by another omnisync-hub process (serve, import or migrate); stop it first",
            data_dir.display()
        ))
    })?;
    Ok(lock)
}

/// The writer's connection to the hub database, holding the directory's lock.
pub struct SqliteBackend {
    db: Connection,
    /// Held for the writer's life: a second hub (or an import) on the same
    /// directory would hand out the same sequence numbers.
    _lock: std::fs::File,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (creating and migrating) the hub database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, HubLogError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| storage_error(format!("creating {}: {error}", data_dir.display())))?;
        let lock = lock_data_dir(data_dir)?;
        let mut db = open_connection(&data_dir.join(DB_FILE_NAME))?;
        migrate(&mut db)?;
        Ok(Self { db, _lock: lock })
    }
}

impl SqliteBackend {
    /// Moves the write-ahead log into the database file (`wal_checkpoint`);
    /// with `vacuum`, also rebuilds the file without its free pages, which
    /// SQLite otherwise keeps for reuse after compaction deleted rows. For
    /// size measurements and maintenance: it holds the writer meanwhile.
    pub fn checkpoint(&mut self, vacuum: bool) -> Result<(), HubLogError> {
        let truncate = |db: &Connection| {
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(storage_error)
        };
        truncate(&self.db)?;
        if vacuum {
            self.db.execute_batch("VACUUM").map_err(storage_error)?;
            truncate(&self.db)?;
        }
        Ok(())
    }
}

impl Backend for SqliteBackend {
    type Txn<'t> = SqliteRows<rusqlite::Transaction<'t>>;

    fn begin(&mut self) -> Result<Self::Txn<'_>, HubLogError> {
        Ok(SqliteRows(self.db.transaction().map_err(storage_error)?))
    }
}

fn migrate(db: &mut Connection) -> Result<(), HubLogError> {
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(storage_error)?;
    if version > MIGRATIONS.len() as i64 {
        return Err(storage_error(format!(
            "hub database schema {version} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = db.transaction().map_err(storage_error)?;
        tx.execute_batch(sql).map_err(storage_error)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(storage_error)?;
        tx.commit().map_err(storage_error)?;
    }
    Ok(())
}

// Stored blobs: this release writes the evolvable format of
// `omnisync_core::vocab::codec` and reads the previous release's postcard too.
pub(crate) fn encode_outcome(outcome: &AckOutcome) -> Result<Vec<u8>, HubLogError> {
    Ok(outcome.encode_stored())
}

pub(crate) fn decode_outcome(bytes: &[u8]) -> Result<AckOutcome, HubLogError> {
    AckOutcome::decode_stored(bytes)
        .map_err(|error| storage_error(format!("stored outcome: {error}")))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HubLogError> {
    Ok(omnisync_core::vocab::codec::encode_stored(value))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, HubLogError> {
    omnisync_core::vocab::codec::decode_stored(bytes)
        .map_err(|error| storage_error(format!("stored {what}: {error}")))
}

/// A sequence number as SQLite stores it (`u64::MAX` means "no bound").
pub(crate) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// An outbox row as both SQL backends store it.
pub(crate) struct EventColumns {
    pub seq: i64,
    pub tenant: String,
    pub store: String,
    pub store_seq: i64,
    pub kind: String,
    pub time_ms: i64,
    pub data: String,
}

impl EventColumns {
    /// The event, or a storage error naming the row that does not decode.
    pub fn into_event(self) -> Result<Event, HubLogError> {
        let bad = |what: &str| storage_error(format!("outbox row {}: {what}", self.seq));
        Ok(Event {
            seq: self.seq as u64,
            tenant: TenantId::new(&self.tenant).map_err(|_| bad("bad tenant"))?,
            store: StoreId::new(&self.store).map_err(|_| bad("bad store"))?,
            store_seq: self.store_seq as u64,
            kind: EventType::parse(&self.kind)
                .ok_or_else(|| bad(&format!("unknown type {:?}", self.kind)))?,
            time_ms: self.time_ms as u64,
            data: serde_json::from_str(&self.data).map_err(|_| bad("data is not JSON"))?,
        })
    }
}

/// The contract's rows over a connection: a reader's `&Connection` or the
/// writer's open transaction.
pub struct SqliteRows<C>(C);

impl<C: Deref<Target = Connection>> SqliteRows<C> {
    fn blob(&self, sql: &str, a: &str, b: &str) -> Result<Option<Vec<u8>>, HubLogError> {
        self.0
            .prepare_cached(sql)
            .map_err(storage_error)?
            .query_row(params![a, b], |row| row.get(0))
            .optional()
            .map_err(storage_error)
    }

    fn run(&self, sql: &str, values: &[&dyn rusqlite::ToSql]) -> Result<(), HubLogError> {
        self.0
            .prepare_cached(sql)
            .map_err(storage_error)?
            .execute(values)
            .map_err(storage_error)?;
        Ok(())
    }
}

impl<C: Deref<Target = Connection>> LogRows for SqliteRows<C> {
    fn event_head(&mut self) -> Result<u64, HubLogError> {
        let head: Option<i64> = self
            .0
            .prepare_cached("SELECT MAX(seq) FROM events")
            .map_err(storage_error)?
            .query_row([], |row| row.get(0))
            .map_err(storage_error)?;
        Ok(head.unwrap_or(0) as u64)
    }

    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        let last: Option<i64> = self
            .0
            .prepare_cached("SELECT MAX(store_seq) FROM events WHERE store_id = ?1")
            .map_err(storage_error)?
            .query_row([store.as_str()], |row| row.get(0))
            .map_err(storage_error)?;
        Ok(last.unwrap_or(0) as u64)
    }

    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        let mut sql = String::from(
            "SELECT seq, tenant, store_id, store_seq, type, time_ms, data FROM events WHERE seq > ?",
        );
        let mut values: Vec<rusqlite::types::Value> = vec![seq_param(after).into()];
        if !filter.stores.is_empty() {
            sql.push_str(" AND store_id IN (");
            sql.push_str(&vec!["?"; filter.stores.len()].join(", "));
            sql.push(')');
            values.extend(
                filter
                    .stores
                    .iter()
                    .map(|store| store.as_str().to_owned().into()),
            );
        }
        if !filter.types.is_empty() {
            sql.push_str(" AND type IN (");
            sql.push_str(&vec!["?"; filter.types.len()].join(", "));
            sql.push(')');
            values.extend(
                filter
                    .types
                    .iter()
                    .map(|kind| kind.as_str().to_owned().into()),
            );
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        values.push((limit.min(i64::MAX as usize) as i64).into());
        let mut statement = self.0.prepare_cached(&sql).map_err(storage_error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(values))
            .map_err(storage_error)?;
        while let Some(row) = rows.next().map_err(storage_error)? {
            let columns = EventColumns {
                seq: row.get(0).map_err(storage_error)?,
                tenant: row.get(1).map_err(storage_error)?,
                store: row.get(2).map_err(storage_error)?,
                store_seq: row.get(3).map_err(storage_error)?,
                kind: row.get(4).map_err(storage_error)?,
                time_ms: row.get(5).map_err(storage_error)?,
                data: row.get(6).map_err(storage_error)?,
            };
            visit(columns.into_event()?)?;
        }
        Ok(())
    }

    fn head_seq(&mut self) -> Result<u64, HubLogError> {
        // Compaction deletes changes, never above a set's snapshot point.
        let head: Option<i64> = self
            .0
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(hub_seq) FROM changes), 0),
                            COALESCE((SELECT MAX(covers_seq) FROM set_snapshots), 0))",
            )
            .map_err(storage_error)?
            .query_row([], |row| row.get(0))
            .map_err(storage_error)?;
        Ok(head.unwrap_or(0) as u64)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError> {
        self.0
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .map_err(storage_error)?
            .query_row([key], |row| row.get(0))
            .optional()
            .map_err(storage_error)
    }

    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        let stored: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT outcome FROM op_outcomes WHERE replica = ?1 AND seq = ?2")
            .map_err(storage_error)?
            .query_row(params![&op.replica.0[..], op.seq as i64], |row| row.get(0))
            .optional()
            .map_err(storage_error)?;
        stored.map(|bytes| decode_outcome(&bytes)).transpose()
    }

    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT hub_seq, doc_id, origin, bytes FROM changes
                 WHERE set_id = ?1 AND hub_seq > ?2 ORDER BY hub_seq LIMIT ?3",
            )
            .map_err(storage_error)?;
        let mut rows = statement
            .query(params![set.as_str(), after as i64, page.rows_max() as i64])
            .map_err(storage_error)?;
        while let Some(row) = rows.next().map_err(storage_error)? {
            if page.full() {
                break;
            }
            let hub_seq: i64 = row.get(0).map_err(storage_error)?;
            let doc: String = row.get(1).map_err(storage_error)?;
            let origin: Vec<u8> = row.get(2).map_err(storage_error)?;
            let bytes: Vec<u8> = row.get(3).map_err(storage_error)?;
            page.push(stored_change(hub_seq, doc, &origin, bytes)?);
        }
        Ok(())
    }

    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT bytes FROM changes WHERE doc_id = ?1 AND hub_seq > ?2 AND hub_seq <= ?3 ORDER BY hub_seq")
            .map_err(storage_error)?;
        let mut rows = statement
            .query(params![doc.as_str(), seq_param(after), seq_param(upto)])
            .map_err(storage_error)?;
        while let Some(row) = rows.next().map_err(storage_error)? {
            let bytes = row
                .get_ref(0)
                .and_then(|value| value.as_blob().map_err(Into::into))
                .map_err(storage_error)?;
            visit(bytes)?;
        }
        Ok(())
    }

    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError> {
        self.0
            .prepare_cached(
                "SELECT bytes FROM changes WHERE doc_id = ?1 AND hub_seq <= ?2 ORDER BY hub_seq DESC LIMIT 1",
            )
            .map_err(storage_error)?
            .query_row(params![doc.as_str(), seq_param(upto)], |row| row.get(0))
            .optional()
            .map_err(storage_error)
    }

    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT DISTINCT doc_id FROM changes WHERE set_id = ?1 ORDER BY doc_id")
            .map_err(storage_error)?;
        let rows = statement
            .query_map([set.as_str()], |row| row.get::<_, String>(0))
            .map_err(storage_error)?;
        let mut docs = Vec::new();
        for row in rows {
            docs.push(DocId::new(row.map_err(storage_error)?).map_err(storage_error)?);
        }
        Ok(docs)
    }

    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError> {
        let snapshot: Option<(Vec<u8>, i64)> = self
            .0
            .prepare_cached("SELECT bytes, covers_seq FROM snapshots WHERE doc_id = ?1")
            .map_err(storage_error)?
            .query_row([doc.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(storage_error)?;
        Ok(snapshot.map(|(bytes, covers)| (bytes, covers as u64)))
    }

    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError> {
        let covers: Option<i64> = self
            .0
            .prepare_cached("SELECT covers_seq FROM set_snapshots WHERE set_id = ?1")
            .map_err(storage_error)?
            .query_row([set.as_str()], |row| row.get(0))
            .optional()
            .map_err(storage_error)?;
        Ok(covers.map(|covers| covers as u64))
    }

    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError> {
        // One index probe per set rather than a walk over every change.
        let mut statement = self
            .0
            .prepare_cached(
                "WITH RECURSIVE sets(set_id) AS (
                     SELECT MIN(set_id) FROM changes
                     UNION ALL
                     SELECT (SELECT MIN(set_id) FROM changes WHERE set_id > sets.set_id)
                     FROM sets WHERE sets.set_id IS NOT NULL)
                 SELECT set_id FROM sets WHERE set_id IS NOT NULL",
            )
            .map_err(storage_error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(storage_error)?;
        let mut sets = Vec::new();
        for row in rows {
            sets.push(DocSetId::new(row.map_err(storage_error)?).map_err(storage_error)?);
        }
        Ok(sets)
    }

    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError> {
        let (count, bytes): (i64, i64) = self
            .0
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) FROM changes
                 WHERE set_id = ?1 AND hub_seq > ?2 AND hub_seq <= ?3",
            )
            .map_err(storage_error)?
            .query_row(
                params![set.as_str(), seq_param(after), seq_param(upto)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(storage_error)?;
        Ok((count as u64, bytes as u64))
    }

    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT DISTINCT doc_id FROM changes
                 WHERE set_id = ?1 AND hub_seq > ?2 AND hub_seq <= ?3 ORDER BY doc_id",
            )
            .map_err(storage_error)?;
        let rows = statement
            .query_map(
                params![set.as_str(), seq_param(after), seq_param(upto)],
                |row| row.get::<_, String>(0),
            )
            .map_err(storage_error)?;
        let mut docs = Vec::new();
        for row in rows {
            docs.push(DocId::new(row.map_err(storage_error)?).map_err(storage_error)?);
        }
        Ok(docs)
    }

    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError> {
        let after = after.map(DocId::as_str).unwrap_or("");
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT doc_id, bytes FROM snapshots WHERE set_id = ?1 AND doc_id > ?2 ORDER BY doc_id LIMIT ?3",
            )
            .map_err(storage_error)?;
        let mut rows = statement
            .query(params![set.as_str(), after, page.rows_max() as i64])
            .map_err(storage_error)?;
        while let Some(row) = rows.next().map_err(storage_error)? {
            if page.full() {
                break;
            }
            let doc: String = row.get(0).map_err(storage_error)?;
            let bytes: Vec<u8> = row.get(1).map_err(storage_error)?;
            page.push_snapshot(DocId::new(doc).map_err(storage_error)?, bytes);
        }
        Ok(())
    }

    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT hub_seq, doc_id, origin, bytes FROM changes
                 WHERE hub_seq > ?1 AND hub_seq <= ?2 ORDER BY hub_seq",
            )
            .map_err(storage_error)?;
        let mut rows = statement
            .query(params![seq_param(after), seq_param(upto)])
            .map_err(storage_error)?;
        while let Some(row) = rows.next().map_err(storage_error)? {
            let hub_seq: i64 = row.get(0).map_err(storage_error)?;
            let doc: String = row.get(1).map_err(storage_error)?;
            let origin: Vec<u8> = row.get(2).map_err(storage_error)?;
            let bytes: Vec<u8> = row.get(3).map_err(storage_error)?;
            visit(stored_change(hub_seq, doc, &origin, bytes)?)?;
        }
        Ok(())
    }
}

/// A change row as the contract passes it.
pub(crate) fn stored_change(
    hub_seq: i64,
    doc: String,
    origin: &[u8],
    bytes: Vec<u8>,
) -> Result<RemoteChange, HubLogError> {
    Ok(RemoteChange {
        hub_seq: u64::try_from(hub_seq)
            .map_err(|_| storage_error(format!("stored sequence number {hub_seq} is negative")))?,
        doc: DocId::new(doc).map_err(storage_error)?,
        origin: ReplicaId::from_slice(origin)
            .ok_or_else(|| storage_error("stored origin is not 16 bytes"))?,
        bytes,
    })
}

impl WriteTxn for SqliteRows<rusqlite::Transaction<'_>> {
    fn delete_events(&mut self, before_ms: u64, limit: u64) -> Result<(u64, u64), HubLogError> {
        let mut statement = self
            .0
            .prepare_cached(
                "DELETE FROM events WHERE seq IN (
                     SELECT e.seq FROM events e
                     WHERE e.time_ms < ?1
                       AND e.store_seq < (SELECT MAX(x.store_seq) FROM events x
                                          WHERE x.store_id = e.store_id)
                     ORDER BY e.seq LIMIT ?2)
                 RETURNING seq",
            )
            .map_err(storage_error)?;
        let deleted: Vec<i64> = statement
            .query_map(params![seq_param(before_ms), seq_param(limit)], |row| {
                row.get(0)
            })
            .map_err(storage_error)?
            .collect::<Result<_, _>>()
            .map_err(storage_error)?;
        let highest = deleted.iter().copied().max().unwrap_or(0);
        Ok((deleted.len() as u64, highest as u64))
    }

    fn append_event(&mut self, event: &Event) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO events (seq, tenant, store_id, store_seq, type, time_ms, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                seq_param(event.seq),
                event.tenant.as_str(),
                event.store.as_str(),
                seq_param(event.store_seq),
                event.kind.as_str(),
                seq_param(event.time_ms),
                event.data.to_string()
            ],
        )
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = ?2",
            params![key, value],
        )
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO op_outcomes (replica, seq, outcome, decided_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                &op.replica.0[..],
                op.seq as i64,
                encode_outcome(outcome)?,
                now_ms as i64
            ],
        )
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO changes (hub_seq, set_id, doc_id, origin, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                change.hub_seq as i64,
                change.doc.set().as_str(),
                change.doc.as_str(),
                &change.origin.0[..],
                &change.bytes
            ],
        )
    }

    fn get_sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        self.blob(
            "SELECT state FROM ledger_skus WHERE store_id = ?1 AND sku = ?2",
            store.as_str(),
            sku.as_str(),
        )?
        .map(|bytes| decode(&bytes, "ledger entry"))
        .transpose()
    }

    fn put_sku(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        ledger: &SkuLedger,
    ) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO ledger_skus (store_id, sku, state, has_rights) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (store_id, sku) DO UPDATE SET state = ?3, has_rights = ?4",
            params![
                store.as_str(),
                sku.as_str(),
                encode(ledger)?,
                ledger.held() > 0
            ],
        )
    }

    fn get_order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError> {
        self.blob(
            "SELECT record FROM ledger_orders WHERE store_id = ?1 AND order_id = ?2",
            store.as_str(),
            order_id,
        )?
        .map(|bytes| decode(&bytes, "order"))
        .transpose()
    }

    fn put_order(&mut self, store: &StoreId, order: &OrderRecord) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO ledger_orders (store_id, order_id, record) VALUES (?1, ?2, ?3)
             ON CONFLICT (store_id, order_id) DO UPDATE SET record = ?3",
            params![store.as_str(), order.order_id.as_str(), encode(order)?],
        )
    }

    fn get_key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        self.blob(
            "SELECT decision FROM ledger_keys WHERE store_id = ?1 AND key = ?2",
            store.as_str(),
            key,
        )?
        .map(|bytes| decode(&bytes, "decision"))
        .transpose()
    }

    fn put_key(
        &mut self,
        store: &StoreId,
        key: &str,
        decision: &Decision,
    ) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO ledger_keys (store_id, key, decision) VALUES (?1, ?2, ?3)",
            params![store.as_str(), key, encode(decision)?],
        )
    }

    fn get_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError> {
        self.blob(
            "SELECT state FROM ledger_reservations WHERE store_id = ?1 AND key = ?2",
            store.as_str(),
            key,
        )?
        .map(|bytes| decode(&bytes, "reservation"))
        .transpose()
    }

    fn put_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
        reservation: &Reservation,
    ) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO ledger_reservations (store_id, key, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (store_id, key) DO UPDATE SET state = ?3",
            params![store.as_str(), key, encode(reservation)?],
        )
    }

    fn get_last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        let last: Option<i64> = self
            .0
            .prepare_cached("SELECT last_order_no FROM ledger_stores WHERE store_id = ?1")
            .map_err(storage_error)?
            .query_row([store.as_str()], |row| row.get(0))
            .optional()
            .map_err(storage_error)?;
        Ok(last.unwrap_or(0) as u64)
    }

    fn put_order_no(&mut self, store: &StoreId, last: u64) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO ledger_stores (store_id, last_order_no) VALUES (?1, ?2)
             ON CONFLICT (store_id) DO UPDATE SET last_order_no = ?2",
            params![store.as_str(), last as i64],
        )
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        let mut statement = self
            .0
            .prepare_cached(
                "SELECT store_id, sku FROM ledger_skus WHERE has_rights = 1 ORDER BY store_id, sku",
            )
            .map_err(storage_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(storage_error)?;
        let mut keys = Vec::new();
        for row in rows {
            let (store, sku) = row.map_err(storage_error)?;
            keys.push((
                StoreId::new(store).map_err(storage_error)?,
                Sku::new(sku).map_err(storage_error)?,
            ));
        }
        Ok(keys)
    }

    fn put_snapshot(&mut self, doc: &DocId, covers: u64, bytes: &[u8]) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO snapshots (doc_id, set_id, covers_seq, bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (doc_id) DO UPDATE SET covers_seq = ?3, bytes = ?4",
            params![doc.as_str(), doc.set().as_str(), covers as i64, bytes],
        )
    }

    fn put_set_snapshot(&mut self, set: &DocSetId, covers: u64) -> Result<(), HubLogError> {
        self.run(
            "INSERT INTO set_snapshots (set_id, covers_seq) VALUES (?1, ?2)
             ON CONFLICT (set_id) DO UPDATE SET covers_seq = ?2",
            params![set.as_str(), covers as i64],
        )
    }

    fn delete_changes(
        &mut self,
        set: &DocSetId,
        upto: u64,
        limit: u64,
    ) -> Result<u64, HubLogError> {
        let deleted = self
            .0
            .prepare_cached(
                "DELETE FROM changes WHERE hub_seq IN (
                     SELECT hub_seq FROM changes WHERE set_id = ?1 AND hub_seq <= ?2
                     ORDER BY hub_seq LIMIT ?3)",
            )
            .map_err(storage_error)?
            .execute(params![set.as_str(), seq_param(upto), seq_param(limit)])
            .map_err(storage_error)?;
        Ok(deleted as u64)
    }

    fn commit(self) -> Result<(), HubLogError> {
        self.0.commit().map_err(storage_error)
    }
}

/// A pool of read-only connections to the hub database; a
/// [`omnisync_hub_engine::log::HubLogRead`] through the shared read code.
pub struct SqliteReader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    /// Readers for the hub database in `data_dir` (opened by [`open`] first).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(DB_FILE_NAME),
            pool: Mutex::new(Vec::new()),
        }
    }

    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, HubLogError>,
    ) -> Result<T, HubLogError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let db = match pooled {
            Some(db) => db,
            None => open_connection(&self.path)?,
        };
        let result = read(&db);
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < READER_POOL_LEN_MAX {
            pool.push(db);
        }
        result
    }
}

impl ReadBackend for SqliteReader {
    fn read<T: Send>(
        &self,
        read: impl FnOnce(&mut dyn LogRows) -> Result<T, HubLogError> + Send,
    ) -> Result<T, HubLogError> {
        self.with_connection(|db| {
            // One read transaction: the head and the page come from the same snapshot.
            db.execute_batch("BEGIN").map_err(storage_error)?;
            let result = read(&mut SqliteRows(db));
            let _ = db.execute_batch("COMMIT");
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnisync_hub_engine::hub_session::IncomingOp;
    use omnisync_hub_engine::log::conformance::Paired;
    use omnisync_hub_engine::log::{HubLog, HubLogRead};

    /// Writer and reader of one directory, so the shared conformance suite
    /// can run.
    type Both = Paired<SqliteBackend, SqliteReader, tempfile::TempDir>;

    #[test]
    fn a_second_writer_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path()).unwrap();
        let second = open(dir.path());
        assert!(second.is_err_and(|error| error.to_string().contains("in use")));
    }

    fn fresh() -> Both {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(dir.path()).unwrap();
        let reader = SqliteReader::new(dir.path());
        Paired {
            writer,
            reader,
            keep: dir,
        }
    }

    #[test]
    fn sqlite_log_conforms() {
        omnisync_hub_engine::log::conformance::run_all(fresh);
    }

    #[test]
    fn sqlite_price_book_rebuilds_from_compacted_prices() {
        let dir = tempfile::tempdir().unwrap();
        omnisync_hub_engine::log::conformance::price_book_rebuilds_from_compacted_prices(
            SqliteBackend::open(dir.path()).unwrap(),
        );
    }

    #[test]
    fn sqlite_price_book_forgets_a_failed_commit() {
        let dir = tempfile::tempdir().unwrap();
        omnisync_hub_engine::log::conformance::price_book_forgets_a_failed_commit(
            SqliteBackend::open(dir.path()).unwrap(),
        );
    }

    #[test]
    fn the_head_survives_compaction_and_reopening() {
        use omnisync_hub_engine::log::CompactPolicy;
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open(dir.path()).unwrap();
        let set = DocSetId::new("store.a").unwrap();
        let mut doc = automerge::Automerge::new();
        let ops = (1..=3)
            .map(|seq| {
                use automerge::transaction::Transactable as _;
                let mut tx = doc.transaction();
                tx.put(automerge::ROOT, "n", seq as i64).unwrap();
                tx.commit();
                let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
                incoming(seq, "store.a/x", bytes)
            })
            .collect();
        writer.apply(ops).unwrap();
        writer.set_compaction(Some(CompactPolicy {
            after_age_ms: 0,
            min_changes: 1,
            min_bytes: u64::MAX,
        }));
        while writer.compact(1).unwrap().more {}
        let reader = SqliteReader::new(dir.path());
        assert!(reader.changes_since(&set, 0, 10, 1 << 20).is_err());
        let page = reader.catch_up_page(&set, 0, None, 10, 1 << 20).unwrap();
        assert_eq!((page.changes.len(), page.cursor), (1, 3), "one snapshot");
        drop(writer);
        let mut reopened = open(dir.path()).unwrap();
        assert_eq!(reopened.head_seq().unwrap(), 3, "every change was deleted");
        let applied = reopened
            .apply(vec![incoming(4, "store.a/y", vec![1])])
            .unwrap();
        assert_eq!(applied.committed.by_set[&set][0].hub_seq, 4, "never reused");
    }

    fn incoming(seq: u64, doc: &str, bytes: Vec<u8>) -> IncomingOp {
        use omnisync_core::protocol::message::{DocChange, Op, OpBody};
        IncomingOp {
            op: Op {
                id: OpId {
                    replica: ReplicaId([7; 16]),
                    seq,
                },
                created_ms: 0,
                body: OpBody::Changes(vec![DocChange {
                    doc: DocId::new(doc).unwrap(),
                    bytes,
                }]),
            },
            device: omnisync_core::vocab::ids::DeviceId::new("till-1").unwrap(),
            store: StoreId::new("a").unwrap(),
            verdict: omnisync_hub_engine::hub_session::Verdict::Accept,
        }
    }

    #[test]
    fn the_head_survives_reopening() {
        let both = fresh();
        let mut writer = both.writer;
        writer.apply(vec![]).unwrap();
        let dir = both.keep;
        omnisync_hub_engine::log::conformance::duplicates_get_the_original_answer(Paired {
            writer,
            reader: SqliteReader::new(dir.path()),
            keep: (),
        });
        let reopened = open(dir.path()).unwrap();
        assert_eq!(reopened.head_seq().unwrap(), 1);
    }
}
