//! Automerge documents on disk (snapshot plus incremental chunks) and a
//! bounded in-memory cache of loaded documents.
//!
//! Every change, local or remote, is appended as a chunk in the same SQLite
//! transaction that records why it happened (an op, or a sync cursor). After
//! [`COMPACT_CHUNKS_MAX`] chunks a document is saved whole as its new snapshot
//! and the chunks are dropped, which keeps load time and disk use bounded.

use std::collections::HashMap;

use automerge::{Automerge, ReadDoc as _};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::db::DbError;
use crate::vocab::ids::DocId;

/// Chunks a document may accumulate before it is compacted into a snapshot.
pub const COMPACT_CHUNKS_MAX: i64 = 256;
/// Documents kept loaded in memory; the least recently used is dropped first.
pub const DOC_CACHE_LEN_MAX: usize = 512;

/// A bounded cache of loaded documents with a use clock for eviction.
#[derive(Default)]
pub(crate) struct DocCache {
    docs: HashMap<DocId, CachedDoc>,
    clock: u64,
}

struct CachedDoc {
    doc: Automerge,
    last_used: u64,
}

impl DocCache {
    /// Returns the loaded document, reading it from disk if needed.
    pub(crate) fn get_mut(
        &mut self,
        db: &Connection,
        doc_id: &DocId,
        actor: &automerge::ActorId,
    ) -> Result<&mut Automerge, DbError> {
        self.clock += 1;
        let clock = self.clock;
        if !self.docs.contains_key(doc_id) {
            self.evict_if_full();
            let mut doc = load(db, doc_id)?;
            doc.set_actor(actor.clone());
            self.docs.insert(
                doc_id.clone(),
                CachedDoc {
                    doc,
                    last_used: clock,
                },
            );
        }
        // Inserted just above when missing.
        let cached = self.docs.get_mut(doc_id).expect("document was just loaded");
        cached.last_used = clock;
        Ok(&mut cached.doc)
    }

    /// Forgets a document, so the next use reloads it from disk. Used when a
    /// SQLite transaction fails after the in-memory document was changed.
    pub(crate) fn evict(&mut self, doc_id: &DocId) {
        self.docs.remove(doc_id);
    }

    fn evict_if_full(&mut self) {
        if self.docs.len() < DOC_CACHE_LEN_MAX {
            return;
        }
        if let Some(oldest) = self
            .docs
            .iter()
            .min_by_key(|(_, cached)| cached.last_used)
            .map(|(id, _)| id.clone())
        {
            self.docs.remove(&oldest);
        }
    }
}

/// Loads a document from its snapshot and chunks; an unknown document is empty.
pub(crate) fn load(db: &Connection, doc_id: &DocId) -> Result<Automerge, DbError> {
    let snapshot: Option<Option<Vec<u8>>> = db
        .query_row(
            "SELECT snapshot FROM docs WHERE doc_id = ?1",
            [doc_id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    let mut doc = match snapshot.flatten() {
        Some(bytes) => Automerge::load(&bytes).map_err(|error| DbError::Corrupt {
            doc: doc_id.to_string(),
            detail: error.to_string(),
        })?,
        None => Automerge::new(),
    };
    let mut statement =
        db.prepare_cached("SELECT bytes FROM doc_chunks WHERE doc_id = ?1 ORDER BY chunk_no")?;
    let mut rows = statement.query([doc_id.as_str()])?;
    while let Some(row) = rows.next()? {
        let bytes: Vec<u8> = row.get(0)?;
        doc.load_incremental(&bytes)
            .map_err(|error| DbError::Corrupt {
                doc: doc_id.to_string(),
                detail: error.to_string(),
            })?;
    }
    Ok(doc)
}

/// Appends one chunk to a document, compacting it when it has too many.
pub(crate) fn append_chunk(
    tx: &Transaction<'_>,
    doc_id: &DocId,
    bytes: &[u8],
    doc: &Automerge,
    now_ms: u64,
) -> Result<(), DbError> {
    let chunk_count: i64 = tx
        .prepare_cached("SELECT chunk_count FROM docs WHERE doc_id = ?1")?
        .query_row([doc_id.as_str()], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    // Compacting while changes wait for missing dependencies would drop them
    // from the snapshot; keep the chunks until the dependencies arrive.
    if chunk_count + 1 >= COMPACT_CHUNKS_MAX && doc.get_missing_deps(&[]).is_empty() {
        tx.execute(
            "INSERT INTO docs (doc_id, snapshot, chunk_count, updated_ms) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (doc_id) DO UPDATE SET snapshot = ?2, chunk_count = 0, updated_ms = ?3",
            params![doc_id.as_str(), doc.save(), now_ms as i64],
        )?;
        tx.execute(
            "DELETE FROM doc_chunks WHERE doc_id = ?1",
            [doc_id.as_str()],
        )?;
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO docs (doc_id, snapshot, chunk_count, updated_ms) VALUES (?1, NULL, 1, ?2)
         ON CONFLICT (doc_id) DO UPDATE SET chunk_count = chunk_count + 1, updated_ms = ?2",
    )?
    .execute(params![doc_id.as_str(), now_ms as i64])?;
    tx.prepare_cached(
        "INSERT INTO doc_chunks (doc_id, chunk_no, bytes)
         VALUES (?1, (SELECT COALESCE(MAX(chunk_no), 0) + 1 FROM doc_chunks WHERE doc_id = ?1), ?2)",
    )?
    .execute(params![doc_id.as_str(), bytes])?;
    Ok(())
}

/// Bytes received from the hub, decoded strictly.
#[allow(clippy::large_enum_variant)] // Short-lived, one at a time: boxing buys nothing.
pub(crate) enum Remote {
    /// One change.
    Change(automerge::Change),
    /// A saved document (a snapshot).
    Document(Automerge),
}

/// Decodes bytes that must be one whole automerge change or one whole saved
/// document; anything else (or anything partly undecodable) is an error.
pub(crate) fn decode_remote(bytes: &[u8]) -> Result<Remote, String> {
    if let Ok(change) = automerge::Change::from_bytes(bytes.to_vec()) {
        return Ok(Remote::Change(change));
    }
    let options = automerge::LoadOptions::new().on_partial_load(automerge::OnPartialLoad::Error);
    Automerge::load_with_options(bytes, options)
        .map(Remote::Document)
        .map_err(|error| error.to_string())
}

/// The ids of every document stored locally.
pub(crate) fn list(db: &Connection) -> Result<Vec<DocId>, DbError> {
    let mut statement = db.prepare("SELECT doc_id FROM docs ORDER BY doc_id")?;
    let ids = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .filter_map(|id| id.ok().and_then(|id| DocId::new(id).ok()))
        .collect();
    Ok(ids)
}

/// A document's heads as hex strings, sorted: equal heads mean equal state.
pub(crate) fn heads_hex(doc: &Automerge) -> Vec<String> {
    let mut heads: Vec<String> = doc
        .get_heads()
        .iter()
        .map(|head| head.to_string())
        .collect();
    heads.sort();
    heads
}

/// The document as JSON, for debugging and convergence checks.
pub(crate) fn to_json(doc: &Automerge) -> serde_json::Value {
    serde_json::to_value(automerge::AutoSerde::from(doc)).unwrap_or(serde_json::Value::Null)
}
