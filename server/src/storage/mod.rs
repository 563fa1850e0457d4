//! The hub's embedded SQLite storage: one writer that group-commits, and a
//! small pool of readers for catch-up and admin reads (WAL lets them run
//! beside the writer).
//!
//! Architecture invariant: an op's outcome and its changes are written in
//! the same transaction, committed with `synchronous=FULL`, before any ack
//! for it leaves the hub.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use omnisync_core::OpId;
use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::StoreId;
use omnisync_core::vocab::ids::{DocId, DocSetId, ReplicaId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::{OrderRecord, is_record_doc};
use omnisync_hub_engine::hub_session::{ChangePage, CommittedChanges, IncomingOp};
use omnisync_hub_engine::ledger::authority::{
    AuthorityConfig, LedgerChanges, LedgerSource, Reservation,
};
use omnisync_hub_engine::ledger::price_book::PriceBook;
use omnisync_hub_engine::ledger::sku_ledger::SkuLedger;
use omnisync_hub_engine::log::{
    AppliedBatch, HubLog, HubLogError, HubLogRead, HubTxn, apply_ops, maintain_ledger,
};
use rusqlite::{Connection, OptionalExtension, params};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_snapshots.sql"),
    include_str!("migrations/0003_ledger.sql"),
];
/// A device more than this many sequence numbers behind a set's snapshot
/// point gets the snapshots instead of the history.
pub const SNAPSHOT_CATCH_UP_GAP_MIN: u64 = 10_000;
/// File in the data directory held locked by the one process writing it.
pub const LOCK_FILE_NAME: &str = "hub.lock";
/// Reader connections kept open for reuse.
pub const READER_POOL_LEN_MAX: usize = 8;
/// File name of the hub database inside the data directory.
pub const DB_FILE_NAME: &str = "hub.db";

fn storage_error(error: impl std::fmt::Display) -> HubLogError {
    HubLogError::Storage(error.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, HubLogError> {
    let db = Connection::open(path).map_err(storage_error)?;
    db.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage_error)?;
    db.pragma_update(None, "synchronous", "FULL")
        .map_err(storage_error)?;
    db.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage_error)?;
    Ok(db)
}

/// The single writer of the hub's log.
pub struct SqliteHubLog {
    db: Connection,
    head: u64,
    log_id: String,
    config: AuthorityConfig,
    prices: PriceBook,
    /// Held for the writer's life: a second hub (or an import) on the same
    /// directory would hand out the same sequence numbers.
    _lock: std::fs::File,
}

impl SqliteHubLog {
    /// Opens (creating and migrating) the hub database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, HubLogError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| storage_error(format!("creating {}: {error}", data_dir.display())))?;
        let lock = std::fs::File::create(data_dir.join(LOCK_FILE_NAME))
            .map_err(|error| storage_error(format!("creating the lock file: {error}")))?;
        lock.try_lock().map_err(|_| {
            storage_error(format!(
                "{} is in use by another omnisync-hub process (serve or import); stop it first",
                data_dir.display()
            ))
        })?;
        let mut db = open_connection(&data_dir.join(DB_FILE_NAME))?;
        migrate(&mut db)?;
        let head: Option<i64> = db
            .query_row("SELECT MAX(hub_seq) FROM changes", [], |row| row.get(0))
            .map_err(storage_error)?;
        let log_id = claim_log_id(&db)?;
        Ok(Self {
            db,
            head: head.unwrap_or(0) as u64,
            log_id,
            config: AuthorityConfig::default(),
            prices: PriceBook::new(),
            _lock: lock,
        })
    }

    /// Decides intents the hub issues itself (import stock counts) in one
    /// durable transaction; returns the decisions.
    pub fn apply_hub_intents(
        &mut self,
        store: &StoreId,
        intents: &[omnisync_core::vocab::intent::Intent],
    ) -> Result<Vec<Decision>, HubLogError> {
        let now_ms = omnisync_core::now_ms();
        let issuer = omnisync_core::DeviceId::new("hub").map_err(storage_error)?;
        self.write(|txn, head, hub, config| {
            omnisync_hub_engine::log::apply_hub_intents(
                txn, head, hub, config, store, &issuer, intents, now_ms,
            )
        })
        .map(|(decisions, _)| decisions)
    }

    /// Sets the authority's settings (price tolerance).
    pub fn set_authority_config(&mut self, config: AuthorityConfig) {
        self.config = config;
    }

    /// The identity of this change log (random, made when the database was).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The replica id the hub writes its own changes (imports) as.
    pub fn hub_replica(&self) -> ReplicaId {
        hub_replica(&self.log_id)
    }

    /// Appends changes made by the hub itself (catalog imports) in one
    /// durable transaction; returns the sequence number of the last one.
    pub fn append_hub_changes(
        &mut self,
        changes: Vec<(DocId, Vec<u8>)>,
    ) -> Result<u64, HubLogError> {
        let origin = self.hub_replica();
        let mut head = self.head;
        let tx = self.db.transaction().map_err(storage_error)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO changes (hub_seq, set_id, doc_id, origin, bytes) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(storage_error)?;
            for (doc, bytes) in changes {
                head += 1;
                insert
                    .execute(params![
                        head as i64,
                        doc.set().as_str(),
                        doc.as_str(),
                        &origin.0[..],
                        bytes
                    ])
                    .map_err(storage_error)?;
            }
        }
        tx.commit().map_err(storage_error)?;
        self.head = head;
        Ok(head)
    }

    /// A document as the hub has it now, or `None` if it has no changes.
    pub fn load_doc(&self, doc: &DocId) -> Result<Option<automerge::Automerge>, HubLogError> {
        let loaded = load_doc_at(&self.db, doc, self.head)?;
        Ok((!loaded.get_heads().is_empty()).then_some(loaded))
    }

    /// Saves every document of `set` as a snapshot covering the current head,
    /// and records that point for the set. Returns the number of documents.
    pub fn snapshot_set(&mut self, set: &DocSetId) -> Result<usize, HubLogError> {
        let covers = self.head;
        let docs: Vec<String> = {
            let mut statement = self
                .db
                .prepare("SELECT DISTINCT doc_id FROM changes WHERE set_id = ?1 ORDER BY doc_id")
                .map_err(storage_error)?;
            statement
                .query_map([set.as_str()], |row| row.get(0))
                .map_err(storage_error)?
                .collect::<Result<_, _>>()
                .map_err(storage_error)?
        };
        let tx = self.db.transaction().map_err(storage_error)?;
        for doc_id in &docs {
            let doc = DocId::new(doc_id.clone()).map_err(storage_error)?;
            // A record's snapshot is its newest version; a document's is its save.
            let bytes = if is_record_doc(&doc) {
                tx.query_row(
                    "SELECT bytes FROM changes WHERE doc_id = ?1 AND hub_seq <= ?2 ORDER BY hub_seq DESC LIMIT 1",
                    params![doc_id, covers as i64],
                    |row| row.get::<_, Vec<u8>>(0),
                )
                .map_err(storage_error)?
            } else {
                load_doc_at(&tx, &doc, covers)?.save()
            };
            tx.execute(
                "INSERT INTO snapshots (doc_id, set_id, covers_seq, bytes) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (doc_id) DO UPDATE SET covers_seq = ?3, bytes = ?4",
                params![doc_id, set.as_str(), covers as i64, bytes],
            )
            .map_err(storage_error)?;
        }
        tx.execute(
            "INSERT INTO set_snapshots (set_id, covers_seq) VALUES (?1, ?2)
             ON CONFLICT (set_id) DO UPDATE SET covers_seq = ?2",
            params![set.as_str(), covers as i64],
        )
        .map_err(storage_error)?;
        tx.commit().map_err(storage_error)?;
        Ok(docs.len())
    }
}

/// The hub's own replica id for a change log: derived from the log id so it
/// is stable for the log and distinct between hubs.
pub fn hub_replica(log_id: &str) -> ReplicaId {
    let mut bytes = [0u8; 16];
    for (index, byte) in log_id.bytes().enumerate() {
        bytes[index % 16] ^= byte.rotate_left((index / 16) as u32);
    }
    bytes[0] = 0xff; // Never a random device replica by accident in practice.
    ReplicaId(bytes)
}

/// A document from its snapshot (if any) and its changes up to `covers`,
/// applied in moderate batches.
fn load_doc_at(
    db: &Connection,
    doc: &DocId,
    covers: u64,
) -> Result<automerge::Automerge, HubLogError> {
    let snapshot: Option<(Vec<u8>, i64)> = db
        .query_row(
            "SELECT bytes, covers_seq FROM snapshots WHERE doc_id = ?1",
            [doc.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(storage_error)?;
    let (mut loaded, after) = match snapshot {
        Some((bytes, covers_seq)) => (
            automerge::Automerge::load(&bytes).map_err(storage_error)?,
            covers_seq,
        ),
        None => (automerge::Automerge::new(), 0),
    };
    let mut statement = db
        .prepare_cached("SELECT bytes FROM changes WHERE doc_id = ?1 AND hub_seq > ?2 AND hub_seq <= ?3 ORDER BY hub_seq")
        .map_err(storage_error)?;
    let mut rows = statement
        .query(params![doc.as_str(), after, covers as i64])
        .map_err(storage_error)?;
    while let Some(row) = rows.next().map_err(storage_error)? {
        let bytes: Vec<u8> = row.get(0).map_err(storage_error)?;
        loaded.load_incremental(&bytes).map_err(storage_error)?;
    }
    Ok(loaded)
}

fn claim_log_id(db: &Connection) -> Result<String, HubLogError> {
    let existing: Option<String> = db
        .query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(storage_error)?;
    if let Some(log_id) = existing {
        return Ok(log_id);
    }
    let log_id = omnisync_core::ReplicaId::random().to_string();
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('log_id', ?1)",
        [&log_id],
    )
    .map_err(storage_error)?;
    Ok(log_id)
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

fn encode_outcome(outcome: &AckOutcome) -> Result<Vec<u8>, HubLogError> {
    postcard::to_stdvec(outcome).map_err(storage_error)
}

fn decode_outcome(bytes: &[u8]) -> Result<AckOutcome, HubLogError> {
    postcard::from_bytes(bytes).map_err(|error| storage_error(format!("stored outcome: {error}")))
}

impl HubLog for SqliteHubLog {
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError> {
        let now_ms = omnisync_core::now_ms();
        self.write(|txn, head, hub, config| apply_ops(txn, head, hub, config, ops, now_ms))
    }

    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError> {
        self.write(|txn, head, hub, config| maintain_ledger(txn, head, hub, config, now_ms))
    }

    fn head_seq(&self) -> Result<u64, HubLogError> {
        Ok(self.head)
    }
}

impl SqliteHubLog {
    /// Runs `work` in one write transaction and commits it if it succeeded;
    /// the head moves only then. `work` gets the transaction, the head to
    /// advance, the hub's replica and the authority's settings. On failure
    /// the price book may hold changes that rolled back: it is dropped and
    /// rebuilt from storage on demand.
    fn write<T>(
        &mut self,
        work: impl FnOnce(
            &mut SqliteTxn<'_>,
            &mut u64,
            ReplicaId,
            AuthorityConfig,
        ) -> Result<T, HubLogError>,
    ) -> Result<T, HubLogError> {
        let hub = self.hub_replica();
        let config = self.config;
        let mut head = self.head;
        let tx = self.db.transaction().map_err(storage_error)?;
        let result = {
            let mut txn = SqliteTxn {
                tx: &tx,
                prices: &mut self.prices,
                head_before: self.head,
            };
            work(&mut txn, &mut head, hub, config)
        };
        let committed = result.and_then(|value| {
            tx.commit().map_err(storage_error)?;
            Ok(value)
        });
        match committed {
            Ok(value) => {
                self.head = head;
                Ok(value)
            }
            Err(error) => {
                self.prices = PriceBook::new();
                Err(error)
            }
        }
    }
}

/// The SQLite side of one group commit.
struct SqliteTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    prices: &'a mut PriceBook,
    /// The head before this transaction (documents are loaded up to it).
    head_before: u64,
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HubLogError> {
    postcard::to_stdvec(value).map_err(storage_error)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, HubLogError> {
    postcard::from_bytes(bytes).map_err(|error| storage_error(format!("stored {what}: {error}")))
}

impl SqliteTxn<'_> {
    fn blob(&self, sql: &str, a: &str, b: &str) -> Result<Option<Vec<u8>>, HubLogError> {
        self.tx
            .prepare_cached(sql)
            .map_err(storage_error)?
            .query_row(params![a, b], |row| row.get(0))
            .optional()
            .map_err(storage_error)
    }
}

impl LedgerSource for SqliteTxn<'_> {
    fn sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError> {
        self.blob(
            "SELECT state FROM ledger_skus WHERE store_id = ?1 AND sku = ?2",
            store.as_str(),
            sku.as_str(),
        )?
        .map(|bytes| decode(&bytes, "ledger entry"))
        .transpose()
    }

    fn order(
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

    fn key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError> {
        self.blob(
            "SELECT decision FROM ledger_keys WHERE store_id = ?1 AND key = ?2",
            store.as_str(),
            key,
        )?
        .map(|bytes| decode(&bytes, "decision"))
        .transpose()
    }

    fn reservation(
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

    fn last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError> {
        let last: Option<i64> = self
            .tx
            .prepare_cached("SELECT last_order_no FROM ledger_stores WHERE store_id = ?1")
            .map_err(storage_error)?
            .query_row([store.as_str()], |row| row.get(0))
            .optional()
            .map_err(storage_error)?;
        Ok(last.unwrap_or(0) as u64)
    }

    fn price(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        channel: Channel,
        at_ms: u64,
    ) -> Result<Option<i64>, HubLogError> {
        let tx = self.tx;
        let head = self.head_before;
        Ok(self.prices.price(store, sku, channel, at_ms, |doc| {
            // Changes appended earlier in this batch went through note_change.
            load_doc_at(tx, doc, head).ok()
        }))
    }

    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError> {
        let mut statement = self
            .tx
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
}

impl HubTxn for SqliteTxn<'_> {
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
        let stored: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT outcome FROM op_outcomes WHERE replica = ?1 AND seq = ?2")
            .map_err(storage_error)?
            .query_row(params![&op.replica.0[..], op.seq as i64], |row| row.get(0))
            .optional()
            .map_err(storage_error)?;
        stored.map(|bytes| decode_outcome(&bytes)).transpose()
    }

    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError> {
        self.tx
            .prepare_cached(
                "INSERT INTO op_outcomes (replica, seq, outcome, decided_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(storage_error)?
            .execute(params![&op.replica.0[..], op.seq as i64, encode_outcome(outcome)?, now_ms as i64])
            .map_err(storage_error)?;
        Ok(())
    }

    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError> {
        self.tx
            .prepare_cached(
                "INSERT INTO changes (hub_seq, set_id, doc_id, origin, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(storage_error)?
            .execute(params![
                change.hub_seq as i64,
                change.doc.set().as_str(),
                change.doc.as_str(),
                &change.origin.0[..],
                &change.bytes
            ])
            .map_err(storage_error)?;
        if PriceBook::follows(&change.doc) {
            let tx = self.tx;
            let head = self.head_before;
            self.prices.note_change(&change.doc, &change.bytes, || {
                load_doc_at(tx, &change.doc, head).ok()
            });
        }
        Ok(())
    }

    fn persist_ledger(&mut self, changes: &LedgerChanges) -> Result<(), HubLogError> {
        let tx = self.tx;
        let run = |sql: &str, values: &[&dyn rusqlite::ToSql]| -> Result<(), HubLogError> {
            tx.prepare_cached(sql)
                .map_err(storage_error)?
                .execute(values)
                .map_err(storage_error)?;
            Ok(())
        };
        for (store, sku, ledger) in &changes.skus {
            run(
                "INSERT INTO ledger_skus (store_id, sku, state, has_rights) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (store_id, sku) DO UPDATE SET state = ?3, has_rights = ?4",
                params![
                    store.as_str(),
                    sku.as_str(),
                    encode(ledger)?,
                    ledger.held() > 0
                ],
            )?;
        }
        for (store, order) in &changes.orders {
            run(
                "INSERT INTO ledger_orders (store_id, order_id, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store_id, order_id) DO UPDATE SET record = ?3",
                params![store.as_str(), order.order_id.as_str(), encode(order)?],
            )?;
        }
        for (store, key, decision) in &changes.keys {
            run(
                "INSERT INTO ledger_keys (store_id, key, decision) VALUES (?1, ?2, ?3)",
                params![store.as_str(), key, encode(decision)?],
            )?;
        }
        for (store, key, reservation) in &changes.reservations {
            run(
                "INSERT INTO ledger_reservations (store_id, key, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store_id, key) DO UPDATE SET state = ?3",
                params![store.as_str(), key, encode(reservation)?],
            )?;
        }
        for (store, last) in &changes.order_nos {
            run(
                "INSERT INTO ledger_stores (store_id, last_order_no) VALUES (?1, ?2)
                 ON CONFLICT (store_id) DO UPDATE SET last_order_no = ?2",
                params![store.as_str(), *last as i64],
            )?;
        }
        Ok(())
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

    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        self.with_connection(|db| {
            db.execute_batch("BEGIN").map_err(storage_error)?;
            let result = (|| {
                let covers: Option<i64> = db
                    .query_row(
                        "SELECT covers_seq FROM set_snapshots WHERE set_id = ?1",
                        [set.as_str()],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(storage_error)?;
                match covers.map(|covers| covers as u64) {
                    Some(covers)
                        if resume.is_some()
                            || (covers > cursor
                                && covers - cursor >= SNAPSHOT_CATCH_UP_GAP_MIN.min(covers)) =>
                    {
                        read_snapshots(db, set, cursor, covers, resume, len_max, bytes_target)
                    }
                    _ => read_page(db, set, cursor, len_max, bytes_target),
                }
            })();
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

/// A page of snapshots of `set`, documents after `resume` in id order.
fn read_snapshots(
    db: &Connection,
    set: &DocSetId,
    cursor: u64,
    covers: u64,
    resume: Option<&DocId>,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let after = resume.map(DocId::as_str).unwrap_or("");
    let mut statement = db
        .prepare_cached(
            "SELECT doc_id, bytes FROM snapshots WHERE set_id = ?1 AND doc_id > ?2 ORDER BY doc_id LIMIT ?3",
        )
        .map_err(storage_error)?;
    let mut rows = statement
        .query(params![set.as_str(), after, (len_max + 1) as i64])
        .map_err(storage_error)?;
    let mut changes = Vec::new();
    let mut bytes_total = 0;
    let mut more = false;
    let hub = hub_replica(&read_log_id(db)?);
    while let Some(row) = rows.next().map_err(storage_error)? {
        if changes.len() >= len_max || (bytes_total >= bytes_target && !changes.is_empty()) {
            more = true;
            break;
        }
        let doc: String = row.get(0).map_err(storage_error)?;
        let bytes: Vec<u8> = row.get(1).map_err(storage_error)?;
        bytes_total += bytes.len();
        changes.push(RemoteChange {
            hub_seq: covers,
            doc: DocId::new(doc).map_err(storage_error)?,
            origin: hub,
            bytes,
        });
    }
    let resume = if more {
        changes.last().map(|change| change.doc.clone())
    } else {
        None
    };
    // The cursor moves to the snapshot point only with the last snapshot.
    let cursor = if more { cursor } else { covers };
    Ok(ChangePage {
        changes,
        cursor,
        caught_up: false,
        resume,
    })
}

fn read_log_id(db: &Connection) -> Result<String, HubLogError> {
    db.query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |row| {
        row.get(0)
    })
    .map_err(storage_error)
}

fn read_page(
    db: &Connection,
    set: &DocSetId,
    cursor: u64,
    len_max: usize,
    bytes_target: usize,
) -> Result<ChangePage, HubLogError> {
    let head: Option<i64> = db
        .query_row("SELECT MAX(hub_seq) FROM changes", [], |row| row.get(0))
        .map_err(storage_error)?;
    let head = head.unwrap_or(0) as u64;
    let mut statement = db
        .prepare_cached(
            "SELECT hub_seq, doc_id, origin, bytes FROM changes
             WHERE set_id = ?1 AND hub_seq > ?2 ORDER BY hub_seq LIMIT ?3",
        )
        .map_err(storage_error)?;
    let mut rows = statement
        .query(params![set.as_str(), cursor as i64, (len_max + 1) as i64])
        .map_err(storage_error)?;
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
            origin: ReplicaId::from_slice(&origin)
                .ok_or_else(|| storage_error("stored origin is not 16 bytes"))?,
            bytes,
        });
    }
    let cursor = if more {
        changes.last().map_or(cursor, |change| change.hub_seq)
    } else {
        head.max(cursor)
    };
    Ok(ChangePage {
        changes,
        cursor,
        caught_up: !more,
        resume: None,
    })
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
        fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError> {
            self.writer.maintain(now_ms)
        }
        fn head_seq(&self) -> Result<u64, HubLogError> {
            self.writer.head_seq()
        }
    }

    impl HubLogRead for Both {
        fn changes_since(
            &self,
            set: &DocSetId,
            cursor: u64,
            len_max: usize,
            bytes_target: usize,
        ) -> Result<ChangePage, HubLogError> {
            self.reader
                .changes_since(set, cursor, len_max, bytes_target)
        }
        fn doc_changes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>, HubLogError> {
            self.reader.doc_changes(doc)
        }
        fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError> {
            self.reader.outcome(op)
        }
    }

    #[test]
    fn a_second_writer_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteHubLog::open(dir.path()).unwrap();
        let second = SqliteHubLog::open(dir.path());
        assert!(second.is_err_and(|error| error.to_string().contains("in use")));
    }

    #[test]
    fn a_device_far_behind_gets_snapshots_then_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SqliteHubLog::open(dir.path()).unwrap();
        let set = DocSetId::new("store.s1").unwrap();
        let mut changes = Vec::new();
        for n in 0..3 {
            let mut doc = automerge::Automerge::new();
            let mut tx = doc.transaction();
            automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "n", n as i64)
                .unwrap();
            tx.commit();
            changes.push((DocId::new(format!("store.s1/d{n}")).unwrap(), doc.save()));
        }
        writer.append_hub_changes(changes).unwrap();
        assert_eq!(writer.snapshot_set(&set).unwrap(), 3);
        let reader = SqliteReader::new(dir.path());
        let first = reader.catch_up_page(&set, 0, None, 2, 1 << 20).unwrap();
        assert_eq!(first.changes.len(), 2);
        assert_eq!(
            (first.cursor, first.caught_up),
            (0, false),
            "cursor waits for the last snapshot"
        );
        let resume = first.resume.clone().expect("more snapshots follow");
        let second = reader
            .catch_up_page(&set, first.cursor, Some(&resume), 2, 1 << 20)
            .unwrap();
        assert_eq!(second.changes.len(), 1);
        assert_eq!((second.cursor, second.resume.is_none()), (3, true));
        let rest = reader
            .catch_up_page(&set, second.cursor, None, 100, 1 << 20)
            .unwrap();
        assert!(rest.changes.is_empty() && rest.caught_up);
    }

    fn fresh() -> Both {
        let dir = tempfile::tempdir().unwrap();
        let writer = SqliteHubLog::open(dir.path()).unwrap();
        let reader = SqliteReader::new(dir.path());
        Both {
            writer,
            reader,
            _dir: dir,
        }
    }

    #[test]
    fn sqlite_log_conforms() {
        omnisync_hub_engine::log::conformance::run_all(fresh);
    }

    #[test]
    fn the_head_survives_reopening() {
        let both = fresh();
        let mut writer = both.writer;
        writer.apply(vec![]).unwrap();
        let dir = both._dir;
        omnisync_hub_engine::log::conformance::duplicates_get_the_original_answer(Both {
            writer,
            reader: SqliteReader::new(dir.path()),
            _dir: tempfile::tempdir().unwrap(),
        });
        let reopened = SqliteHubLog::open(dir.path()).unwrap();
        assert_eq!(reopened.head_seq().unwrap(), 1);
    }
}
