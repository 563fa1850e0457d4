//! The device's local store: one SQLite file (WAL, one writer) holding the
//! automerge documents, the operation log and the sync cursors.
//!
//! Architecture invariant: a local write returns only after one SQLite
//! transaction that holds both the document change and its op has committed
//! with `synchronous=FULL`, so a sale the app was told about survives a crash
//! of the app, the OS or the power. Remote changes and acknowledgements are
//! committed with `synchronous=NORMAL`: if the last of those roll back after a
//! power loss, the cursor rolls back with them and the hub sends them again.

mod credentials;
pub mod docs;
pub mod encryption;
pub mod hooks;
pub mod oplog;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::protocol::message::{self, Ack, ChangeBatch, DocChange, Op, OpBody};
use crate::vocab::edit::{self, Edit, EditError, Value};
use crate::vocab::hlc::{CLOCK_DRIFT_MAX_MS, Hlc, HlcClock};
use crate::vocab::ids::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};
pub use hooks::{DecidedState, Hooks, NoHooks};
pub use oplog::{AckSummary, DeadLetter, OpLogStats, OpStatus};

/// Most documents one op may change.
pub const OP_DOCS_MAX: usize = message::OP_DOC_CHANGES_MAX;
/// Op sequence numbers reserved durably at a time (one extra fsync per block).
pub const SEQ_RESERVE_BLOCK: u64 = 1024;
/// Remote changes applied per SQLite transaction (see field notes on
/// automerge memory: moderate batches keep memory flat).
pub const REMOTE_APPLY_BATCH_MAX: usize = 128;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_projections.sql"),
    include_str!("migrations/0003_ledger.sql"),
    include_str!("migrations/0004_reupload.sql"),
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer omnisync.
    #[error("database schema {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Schema version in the file.
        found: i64,
        /// Newest schema this build knows.
        supported: i64,
    },
    /// The database belongs to another device or store.
    #[error("database belongs to {key} {found:?}, not {expected:?}")]
    WrongOwner {
        /// `device_id` or `store_id`.
        key: &'static str,
        /// What the file says.
        found: String,
        /// What the caller asked for.
        expected: String,
    },
    /// Stored bytes do not decode.
    #[error("stored data for {doc} is corrupt: {detail}")]
    Corrupt {
        /// What was being read.
        doc: String,
        /// Decoder's explanation.
        detail: String,
    },
    /// An edit was refused; nothing was written.
    #[error("edit of {doc} refused: {source}")]
    Edit {
        /// The document.
        doc: String,
        /// Why.
        source: EditError,
    },
    /// The edits would not change any document (e.g. writing the value a key
    /// already holds); nothing was written and no op was recorded. Safe to ignore.
    #[error("the edits change nothing")]
    Unchanged,
    /// The op is empty or too large; nothing was written.
    #[error("invalid op: {0}")]
    InvalidOp(String),
    /// Encoding failed.
    #[error("encoding: {0}")]
    Encode(String),
    /// The database could not be encrypted or decrypted (no SQLCipher in
    /// this build, a wrong key, a plain file opened as encrypted).
    #[error("database encryption: {0}")]
    Encryption(String),
}

/// How durable a local commit must be when the call returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the app, the OS and the power (`synchronous=FULL`,
    /// one fsync). For anything the user is told is final: a sale, a payment.
    #[default]
    Full,
    /// Survives a crash of the app but may roll back on power loss
    /// (`synchronous=NORMAL`). For edits a user can redo: cart lines, browsing.
    /// A later `Full` commit makes it durable too (the WAL is synced in order).
    AppCrash,
}

/// Edits to one document, part of an op.
#[derive(Clone, Debug, PartialEq)]
pub struct DocEdit {
    /// The document.
    pub doc: DocId,
    /// The edits, applied in order as one automerge change.
    pub edits: Vec<Edit>,
}

/// The local store of one device.
pub struct Replica {
    pub(crate) db: Connection,
    replica: ReplicaId,
    device: DeviceId,
    store: StoreId,
    last_seq: u64,
    seq_reserved: u64,
    actor: automerge::ActorId,
    docs: docs::DocCache,
    clock: HlcClock,
    /// The `synchronous` level the connection is set to.
    sync: Durability,
    /// The rules called inside every transaction that changes a document,
    /// applies a hub record or records a decision.
    hooks: Box<dyn Hooks>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("device", &self.device)
            .field("replica", &self.replica)
            .finish()
    }
}

impl Replica {
    /// Opens (creating if needed) the database file at `path` for this
    /// device of shop `store`, calling `hooks` inside its transactions.
    /// Apps use `Replica::open` (the retail rules as hooks).
    pub fn open_with(
        path: &Path,
        device: DeviceId,
        store: StoreId,
        hooks: Box<dyn Hooks>,
    ) -> Result<Self, DbError> {
        let db = Connection::open(path)?;
        Self::init(db, device, store, hooks)
    }

    /// [`Replica::open_with`] through the SQLite VFS registered under the
    /// name `vfs` instead of the platform's default one: for tests that put
    /// a fault-injecting VFS under the store (`core/tests/power_loss.rs`).
    /// Apps never need it.
    pub fn open_with_vfs(
        path: &Path,
        vfs: &str,
        device: DeviceId,
        store: StoreId,
        hooks: Box<dyn Hooks>,
    ) -> Result<Self, DbError> {
        let db = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)?;
        Self::init(db, device, store, hooks)
    }

    /// A database in memory, for tests and simulations.
    pub fn open_in_memory_with(
        device: DeviceId,
        store: StoreId,
        hooks: Box<dyn Hooks>,
    ) -> Result<Self, DbError> {
        Self::init(Connection::open_in_memory()?, device, store, hooks)
    }

    pub(crate) fn init(
        mut db: Connection,
        device: DeviceId,
        store: StoreId,
        hooks: Box<dyn Hooks>,
    ) -> Result<Self, DbError> {
        // On Apple platforms fsync() only hands the data to the drive, whose
        // cache a power cut empties; F_FULLFSYNC (these pragmas) flushes it. Set
        // first, so that creating the file and switching to WAL use it too.
        #[cfg(target_vendor = "apple")]
        {
            db.pragma_update(None, "fullfsync", "ON")?;
            db.pragma_update(None, "checkpoint_fullfsync", "ON")?;
        }
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        // 16 MiB of page cache: a first sync writes large transactions, and a
        // cache that spills to the file mid-transaction doubles the writes.
        db.pragma_update(None, "cache_size", -16_384)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut db)?;
        let replica = claim_identity(&db, &device, &store)?;
        let epoch = u32::try_from(bump_meta_counter(&db, "epoch", 1)?).unwrap_or(u32::MAX);
        // Sequence numbers up to the reservation may have reached the hub in
        // ops a power cut rolled back: never hand them out again.
        let seq_reserved = read_meta_u64(&db, "seq_reserved")?;
        let last_seq = oplog::last_seq(&db)?.max(seq_reserved);
        let hub_offset_ms: i64 = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'hub_offset_ms'",
                [],
                |row| row.get::<_, String>(0),
            )
            .optional()?
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let clock = HlcClock {
            hub_offset_ms,
            ..HlcClock::default()
        };
        Ok(Self {
            db,
            replica,
            device,
            store,
            last_seq,
            seq_reserved,
            actor: replica.actor(epoch),
            docs: docs::DocCache::default(),
            clock,
            sync: Durability::Full,
            hooks,
        })
    }

    /// This database's replica id (automerge actor, op id prefix).
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The device this store belongs to.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The store (shop) this device belongs to.
    pub fn store_id(&self) -> &StoreId {
        &self.store
    }

    /// Records an op: applies the edits to their documents and writes the
    /// changes and the op in one durable transaction. On any error nothing is
    /// written and the documents are as before.
    pub fn commit(&mut self, edits: &[DocEdit], now_ms: u64) -> Result<OpId, DbError> {
        self.commit_with(edits, now_ms, Durability::Full)
    }

    /// [`Replica::commit`] with an explicit [`Durability`].
    pub fn commit_with(
        &mut self,
        edits: &[DocEdit],
        now_ms: u64,
        durability: Durability,
    ) -> Result<OpId, DbError> {
        if edits.is_empty() || edits.len() > OP_DOCS_MAX {
            return Err(DbError::InvalidOp(format!(
                "an op changes 1 to {OP_DOCS_MAX} documents, not {}",
                edits.len()
            )));
        }
        self.set_sync(durability)?;
        let result = self.commit_inner(edits, now_ms);
        if result.is_err() {
            for doc_edit in edits {
                self.docs.evict(&doc_edit.doc);
            }
        }
        result
    }

    fn commit_inner(&mut self, edits: &[DocEdit], now_ms: u64) -> Result<OpId, DbError> {
        let mut changes = Vec::with_capacity(edits.len());
        let mut before_heads = Vec::with_capacity(edits.len());
        for doc_edit in edits {
            let doc = self.docs.get_mut(&self.db, &doc_edit.doc, &self.actor)?;
            before_heads.push(doc.get_heads());
            let mut tx = doc.transaction();
            if let Err(source) = edit::apply_edits(&mut tx, &doc_edit.edits) {
                tx.rollback();
                return Err(DbError::Edit {
                    doc: doc_edit.doc.to_string(),
                    source,
                });
            }
            let options =
                automerge::transaction::CommitOptions::default().with_time((now_ms / 1000) as i64);
            let (hash, _) = tx.commit_with(options);
            if hash.is_none() {
                continue; // The edits changed nothing (e.g. deleting a missing key).
            }
            // A commit that produced a hash has a last local change.
            let change = doc.get_last_local_change().expect("committed change");
            changes.push(DocChange {
                doc: doc_edit.doc.clone(),
                bytes: change.raw_bytes().to_vec(),
            });
        }
        if changes.is_empty() {
            return Err(DbError::Unchanged);
        }
        let doc_names = changes
            .iter()
            .map(|change| change.doc.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let body = OpBody::Changes(changes);
        let payload = body.payload_len();
        if payload > message::OP_BYTES_MAX {
            return Err(DbError::InvalidOp(format!(
                "op of {payload} bytes exceeds {} bytes",
                message::OP_BYTES_MAX
            )));
        }
        let seq = self.last_seq + 1;
        if seq > self.seq_reserved {
            self.reserve_seqs(seq)?;
        }
        let tx = self.db.transaction()?;
        if let OpBody::Changes(changes) = &body {
            for change in changes {
                let doc = self.docs.get_mut(&tx, &change.doc, &self.actor)?;
                docs::append_chunk(&tx, &change.doc, &change.bytes, doc, now_ms)?;
            }
        }
        for (doc_edit, before) in edits.iter().zip(&before_heads) {
            let doc = self.docs.get_mut(&tx, &doc_edit.doc, &self.actor)?;
            self.hooks
                .document_changed(&tx, &doc_edit.doc, doc, before)?;
        }
        oplog::insert(&tx, seq, now_ms, &body, &doc_names)?;
        tx.commit()?;
        self.last_seq = seq;
        Ok(OpId {
            replica: self.replica,
            seq,
        })
    }

    /// Records an intent for the hub to decide, together with its local
    /// effects (`local` gets the transaction and the op's sequence number),
    /// in one durable transaction (`synchronous=FULL`). On error nothing is
    /// written.
    pub(crate) fn commit_intent(
        &mut self,
        intent: &crate::vocab::intent::Intent,
        now_ms: u64,
        local: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<(), DbError>,
    ) -> Result<OpId, DbError> {
        let body = OpBody::Intent(intent.clone());
        let payload = body.payload_len();
        if payload > message::OP_BYTES_MAX {
            return Err(DbError::InvalidOp(format!(
                "intent of {payload} bytes exceeds {} bytes",
                message::OP_BYTES_MAX
            )));
        }
        self.set_sync(Durability::Full)?;
        let seq = self.last_seq + 1;
        if seq > self.seq_reserved {
            self.reserve_seqs(seq)?;
        }
        let tx = self.db.transaction()?;
        local(&tx, seq)?;
        let docs = intent
            .affected_docs(&self.store, &self.device)
            .iter()
            .map(DocId::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        oplog::insert(&tx, seq, now_ms, &body, &docs)?;
        tx.commit()?;
        self.last_seq = seq;
        Ok(OpId {
            replica: self.replica,
            seq,
        })
    }

    /// Runs local-only bookkeeping in one durable transaction.
    pub(crate) fn local_transaction(
        &mut self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        self.set_sync(Durability::Full)?;
        let tx = self.db.transaction()?;
        work(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The intent an op of this device carries, if it is one.
    pub fn op_intent(&self, seq: u64) -> Result<Option<crate::vocab::intent::Intent>, DbError> {
        oplog::intent(&self.db, seq)
    }

    /// The leaf value at `path` in a document, if any.
    pub fn get(&mut self, doc: &DocId, path: &[&str]) -> Result<Option<Value>, DbError> {
        let path: Vec<String> = path.iter().map(|key| (*key).to_owned()).collect();
        let loaded = self.docs.get_mut(&self.db, doc, &self.actor)?;
        Ok(edit::read_value(loaded, &path))
    }

    /// The keys of the map at `path` in a document (root for an empty path).
    pub fn keys(&mut self, doc: &DocId, path: &[&str]) -> Result<Vec<String>, DbError> {
        let path: Vec<String> = path.iter().map(|key| (*key).to_owned()).collect();
        let loaded = self.docs.get_mut(&self.db, doc, &self.actor)?;
        Ok(edit::read_keys(loaded, &path))
    }

    /// A whole document as JSON (debugging, demos, convergence checks).
    pub fn doc_json(&mut self, doc: &DocId) -> Result<serde_json::Value, DbError> {
        let loaded = self.docs.get_mut(&self.db, doc, &self.actor)?;
        Ok(docs::to_json(loaded))
    }

    /// A document's heads (sorted hex): two replicas with equal heads hold
    /// equal documents.
    pub fn doc_heads(&mut self, doc: &DocId) -> Result<Vec<String>, DbError> {
        let loaded = self.docs.get_mut(&self.db, doc, &self.actor)?;
        Ok(docs::heads_hex(loaded))
    }

    /// Every document stored locally.
    pub fn doc_ids(&self) -> Result<Vec<DocId>, DbError> {
        docs::list(&self.db)
    }

    /// Pending ops after `after_seq`, oldest first, at most `limit`.
    pub fn pending_ops(&self, after_seq: u64, limit: usize) -> Result<Vec<Op>, DbError> {
        oplog::pending(&self.db, self.replica, after_seq, limit)
    }

    /// The acknowledged ops to probe the hub with on a connect (see
    /// `Hello::probe`): the newest, the 2nd, 4th, 8th, … newest answered ops,
    /// each with its place in the hub's log.
    /// Ops answered before the device last met a new hub log are left out:
    /// that log never held them.
    pub fn restore_probe(&self) -> Result<Vec<message::ProbedOp>, DbError> {
        let floor = read_meta_u64(&self.db, "probe_floor_seq")?;
        oplog::probe(&self.db, self.replica, floor)
    }

    /// Answers a hub restored from an older backup, in one transaction:
    /// lowers every stored cursor to `behind.known_through` and flags for
    /// upload again every answered op the hub may lack, without changing
    /// its status, decision or local effects (the hub applies an op id once
    /// and answers those it holds with their stored outcome). Returns how
    /// many ops now wait to be uploaded again.
    pub fn requeue_for_restored_hub(
        &mut self,
        behind: &crate::protocol::device_session::HubBehind,
    ) -> Result<usize, DbError> {
        let floor = read_meta_u64(&self.db, "probe_floor_seq")?;
        self.set_sync(Durability::AppCrash)?;
        let tx = self.db.transaction()?;
        let flagged =
            oplog::requeue_for_restored_hub(&tx, behind.known_through, behind.known_op_seq, floor)?;
        tx.commit()?;
        Ok(flagged)
    }

    /// Records the hub's verdicts for ops.
    pub fn record_acks(&mut self, acks: &[Ack], now_ms: u64) -> Result<AckSummary, DbError> {
        self.set_sync(Durability::AppCrash)?;
        let hooks = &*self.hooks;
        let replica = self.replica;
        let db = &mut self.db;
        (|| {
            let tx = db.transaction()?;
            let summary = oplog::record_acks(&tx, hooks, replica, acks, now_ms)?;
            tx.commit()?;
            Ok(summary)
        })()
    }

    /// Applies a batch of remote changes and stores the batch's cursor, in
    /// transactions of at most [`REMOTE_APPLY_BATCH_MAX`] changes. Returns the
    /// documents that changed.
    pub fn apply_remote(
        &mut self,
        batch: &ChangeBatch,
        now_ms: u64,
    ) -> Result<Vec<DocId>, DbError> {
        let mut changed: Vec<DocId> = Vec::new();
        let chunks: Vec<_> = batch.changes.chunks(REMOTE_APPLY_BATCH_MAX).collect();
        if chunks.is_empty() {
            self.set_cursor(&batch.set, batch.cursor)?;
        }
        for (index, chunk) in chunks.iter().enumerate() {
            // A chunk may claim its last sequence number only when the rest of
            // the batch lies beyond it (snapshots share one number).
            let cursor = match (chunks.get(index + 1), chunk.last()) {
                (None, _) => Some(batch.cursor),
                (Some(next), Some(last))
                    if next
                        .first()
                        .is_some_and(|first| first.hub_seq > last.hub_seq) =>
                {
                    Some(last.hub_seq)
                }
                _ => None,
            };
            let result = self.apply_remote_chunk(&batch.set, chunk, cursor, now_ms, &mut changed);
            if result.is_err() {
                for change in *chunk {
                    self.docs.evict(&change.doc);
                }
            }
            result?;
        }
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    fn apply_remote_chunk(
        &mut self,
        set: &DocSetId,
        chunk: &[message::RemoteChange],
        cursor: Option<u64>,
        now_ms: u64,
        changed: &mut Vec<DocId>,
    ) -> Result<(), DbError> {
        self.set_sync(Durability::AppCrash)?;
        (|| {
            let tx = self.db.transaction()?;
            let mut before_heads: Vec<(DocId, Vec<automerge::ChangeHash>)> = Vec::new();
            for change in chunk {
                if change.doc.set() != *set {
                    continue; // A hub never sends this; never let it cross sets.
                }
                let corrupt = |detail: String| DbError::Corrupt {
                    doc: change.doc.to_string(),
                    detail: format!("remote change #{}: {detail}", change.hub_seq),
                };
                if crate::vocab::record::is_record_doc(&change.doc) {
                    if self
                        .hooks
                        .record_arrived(&tx, change)
                        .map_err(|error| match error {
                            DbError::Corrupt { detail, .. } => corrupt(detail),
                            other => other,
                        })?
                    {
                        changed.push(change.doc.clone());
                    }
                    continue;
                }
                let doc = self.docs.get_mut(&tx, &change.doc, &self.actor)?;
                let before = doc.get_heads();
                if !before_heads.iter().any(|(id, _)| *id == change.doc) {
                    before_heads.push((change.doc.clone(), before.clone()));
                }
                // Decoded strictly once: automerge's load_incremental would
                // skip undecodable parts silently.
                let known = match docs::decode_remote(&change.bytes).map_err(corrupt)? {
                    docs::Remote::Change(decoded) => {
                        let known =
                            automerge::ReadDoc::get_change_by_hash(doc, &decoded.hash()).is_some();
                        doc.apply_changes([decoded])
                            .map_err(|error| corrupt(error.to_string()))?;
                        Some(known)
                    }
                    docs::Remote::Document(mut loaded) => {
                        if doc.is_empty() {
                            loaded.set_actor(self.actor.clone());
                            *doc = loaded;
                        } else {
                            doc.merge(&mut loaded)
                                .map_err(|error| corrupt(error.to_string()))?;
                        }
                        None
                    }
                };
                let heads_changed = doc.get_heads() != before;
                if heads_changed {
                    changed.push(change.doc.clone());
                }
                // A change waiting for its dependencies leaves the heads alone
                // but must still be stored, or a restart would lose it.
                if known == Some(false) || heads_changed {
                    docs::append_chunk(&tx, &change.doc, &change.bytes, doc, now_ms)?;
                }
            }
            for (doc_id, before) in &before_heads {
                let doc = self.docs.get_mut(&tx, doc_id, &self.actor)?;
                self.hooks.document_changed(&tx, doc_id, doc, before)?;
            }
            if let Some(cursor) = cursor {
                tx.prepare_cached(
                    "INSERT INTO subscriptions (set_id, cursor) VALUES (?1, ?2)
                     ON CONFLICT (set_id) DO UPDATE SET cursor = MAX(cursor, ?2)",
                )?
                .execute(params![set.as_str(), cursor as i64])?;
            }
            tx.commit()?;
            Ok(())
        })()
    }

    fn set_cursor(&mut self, set: &DocSetId, cursor: u64) -> Result<(), DbError> {
        self.with_relaxed_sync(|db, _| {
            db.execute(
                "INSERT INTO subscriptions (set_id, cursor) VALUES (?1, ?2)
                 ON CONFLICT (set_id) DO UPDATE SET cursor = MAX(cursor, ?2)",
                params![set.as_str(), cursor as i64],
            )?;
            Ok(())
        })
    }

    /// Adds a document set to follow (kept across restarts). Idempotent.
    pub fn subscribe(&mut self, set: &DocSetId) -> Result<(), DbError> {
        self.db.execute(
            "INSERT INTO subscriptions (set_id, cursor) VALUES (?1, 0) ON CONFLICT (set_id) DO NOTHING",
            [set.as_str()],
        )?;
        Ok(())
    }

    /// The followed sets with the hub sequence number applied through.
    pub fn subscriptions(&self) -> Result<Vec<(DocSetId, u64)>, DbError> {
        let mut statement = self
            .db
            .prepare("SELECT set_id, cursor FROM subscriptions ORDER BY set_id")?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(set, cursor)| DocSetId::new(set).ok().map(|set| (set, cursor as u64)))
            .collect())
    }

    /// Where an op is in its lifecycle; `None` for an op this store never made.
    pub fn op_status(&self, op: &OpId) -> Result<Option<OpStatus>, DbError> {
        if op.replica != self.replica {
            return Ok(None);
        }
        oplog::status(&self.db, op.seq)
    }

    /// Every count of the op log (acknowledged, confirmed and refused are
    /// counted over the whole log: for reports, not for every commit).
    pub fn op_stats(&self, now_ms: u64) -> Result<OpLogStats, DbError> {
        oplog::stats(&self.db, now_ms, true)
    }

    /// The counts a sync status shows (pending, oldest pending age,
    /// rejected, open compensations, last ack), cheap enough for every commit;
    /// the whole-log counts are left at 0.
    pub fn sync_counts(&self, now_ms: u64) -> Result<OpLogStats, DbError> {
        oplog::stats(&self.db, now_ms, false)
    }

    /// Ops the hub refused, with the reasons.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, DbError> {
        oplog::dead_letters(&self.db, self.replica)
    }

    /// Durably reserves a block of op sequence numbers starting at `from`,
    /// in its own `synchronous=FULL` transaction, before any of them is used.
    fn reserve_seqs(&mut self, from: u64) -> Result<(), DbError> {
        let reserved = from + SEQ_RESERVE_BLOCK - 1;
        let durability = self.sync;
        self.set_sync(Durability::Full)?;
        let result = self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('seq_reserved', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            [reserved.to_string()],
        );
        self.set_sync(durability)?;
        result?;
        self.seq_reserved = reserved;
        Ok(())
    }

    /// Runs `read` on a loaded document (for building domain edits).
    pub(crate) fn with_doc<T>(
        &mut self,
        doc: &DocId,
        read: impl FnOnce(&automerge::Automerge) -> T,
    ) -> Result<T, DbError> {
        let loaded = self.docs.get_mut(&self.db, doc, &self.actor)?;
        Ok(read(loaded))
    }

    /// A hybrid logical clock reading greater than `floor` and every earlier one.
    pub(crate) fn hlc_tick(&mut self, now_ms: u64, floor: Hlc) -> Hlc {
        self.clock.tick(now_ms, floor)
    }

    /// Learns the hub's clock (from a handshake) so register timestamps follow
    /// the hub's time even when the device clock is wrong. Persists the offset.
    pub fn observe_hub_time(&mut self, hub_ms: u64, now_ms: u64) -> Result<(), DbError> {
        let skew_ms = self.clock.observe_hub(hub_ms, now_ms);
        if skew_ms.unsigned_abs() > CLOCK_DRIFT_MAX_MS {
            tracing::warn!(device = %self.device, skew_ms, "device clock is off; stamping with the hub's time instead");
        }
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('hub_offset_ms', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            [self.clock.hub_offset_ms.to_string()],
        )?;
        Ok(())
    }

    /// The hub change log the stored cursors belong to, if ever connected.
    pub fn hub_log_id(&self) -> Result<Option<String>, DbError> {
        Ok(self
            .db
            .query_row(
                "SELECT value FROM meta WHERE key = 'hub_log_id'",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records the hub change log the cursors now belong to. When it replaces
    /// another log, every cursor restarts from 0 in the same transaction.
    pub fn set_hub_log_id(&mut self, log_id: &str) -> Result<(), DbError> {
        let previous = self.hub_log_id()?;
        let tx = self.db.transaction()?;
        if previous.is_some_and(|previous| previous != log_id) {
            tracing::warn!(device = %self.device, log_id, "hub change log changed; restarting every subscription from 0");
            tx.execute("UPDATE subscriptions SET cursor = 0", [])?;
            // The new log never held the ops answered so far: they are not
            // probed again (a replaced hub does not get them back).
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('probe_floor_seq', (SELECT COALESCE(MAX(seq), 0) FROM ops))
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [],
            )?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('hub_log_id', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            [log_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The highest sequence number of an op in the log (0 if none). Sequence
    /// numbers grow but may skip (see [`SEQ_RESERVE_BLOCK`]).
    pub fn last_seq(&self) -> Result<u64, DbError> {
        oplog::last_seq(&self.db)
    }

    /// Ops with a sequence number above `after`, with the documents each changed.
    pub fn ops_after(&self, after: u64) -> Result<Vec<(OpId, Vec<DocId>)>, DbError> {
        let mut statement = self
            .db
            .prepare_cached("SELECT seq, docs FROM ops WHERE seq > ?1 ORDER BY seq")?;
        let rows = statement
            .query_map([after as i64], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(seq, docs)| {
                let docs = docs
                    .split(' ')
                    .filter_map(|doc| DocId::new(doc).ok())
                    .collect();
                (
                    OpId {
                        replica: self.replica,
                        seq: seq as u64,
                    },
                    docs,
                )
            })
            .collect())
    }

    /// Every op id in the log, oldest first.
    pub fn op_ids(&self) -> Result<Vec<OpId>, DbError> {
        let mut statement = self.db.prepare_cached("SELECT seq FROM ops ORDER BY seq")?;
        let seqs = statement
            .query_map([], |row| row.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(seqs
            .into_iter()
            .map(|seq| OpId {
                replica: self.replica,
                seq: seq as u64,
            })
            .collect())
    }

    fn with_relaxed_sync<T>(
        &mut self,
        f: impl FnOnce(&mut Connection, ReplicaId) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.set_sync(Durability::AppCrash)?;
        f(&mut self.db, self.replica)
    }

    /// Sets the connection's `synchronous` level for the next transactions,
    /// skipping the pragma when it is already in force. Every promised commit
    /// calls this with [`Durability::Full`] right before it begins.
    fn set_sync(&mut self, durability: Durability) -> Result<(), DbError> {
        if self.sync != durability {
            let level = match durability {
                Durability::Full => "FULL",
                Durability::AppCrash => "NORMAL",
            };
            self.db.pragma_update(None, "synchronous", level)?;
            self.sync = durability;
        }
        Ok(())
    }
}

fn read_meta_u64(db: &Connection, key: &str) -> Result<u64, DbError> {
    let text: Option<String> = db
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(text.and_then(|text| text.parse().ok()).unwrap_or(0))
}

/// Adds `by` to a counter in `meta` (durably) and returns the new value.
fn bump_meta_counter(db: &Connection, key: &str, by: u64) -> Result<u64, DbError> {
    let value = read_meta_u64(db, key)? + by;
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        [key, &value.to_string()],
    )?;
    Ok(value)
}

/// Applies the numbered migrations the file has not seen yet.
fn migrate(db: &mut Connection) -> Result<(), DbError> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(DbError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Reads (or on first open writes) the replica id and the owner of the file.
fn claim_identity(
    db: &Connection,
    device: &DeviceId,
    store: &StoreId,
) -> Result<ReplicaId, DbError> {
    let read = |key: &str| -> Result<Option<String>, DbError> {
        Ok(db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    };
    for (key, expected) in [("device_id", device.as_str()), ("store_id", store.as_str())] {
        match read(key)? {
            Some(found) if found != expected => {
                return Err(DbError::WrongOwner {
                    key,
                    found,
                    expected: expected.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                    [key, expected],
                )?;
            }
        }
    }
    if let Some(text) = read("replica_id")? {
        return text.parse().map_err(|_| DbError::Corrupt {
            doc: "meta.replica_id".into(),
            detail: format!("{text:?} is not a replica id"),
        });
    }
    let replica = ReplicaId::random();
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('replica_id', ?1)",
        [replica.to_string()],
    )?;
    Ok(replica)
}

#[cfg(test)]
mod tests;
