//! The storage contract: the row-level primitives a hub log backend
//! implements. Everything else (exactly-once outcomes, numbering, the
//! authority, the price book, snapshots, page cutting, import writes, the
//! hub's replica id) is shared code in [`super::shared`], [`super::store`]
//! and [`super::read`], so two backends cannot disagree on it.
//!
//! # How to add a backend
//!
//! A backend (SQLite, PostgreSQL) is one module that implements three traits,
//! plus one test that runs the shared conformance suite.
//!
//! 1. [`LogRows`]: reads, usable both in a read snapshot and inside a write
//!    transaction:
//!    - [`head_seq`](LogRows::head_seq): the highest stored sequence number
//!      (0 when empty);
//!    - [`meta`](LogRows::meta): a value of the small key/value table
//!      (`log_id`);
//!    - [`find_outcome`](LogRows::find_outcome): an op's stored answer;
//!    - [`changes_after`](LogRows::changes_after): a set's changes above a
//!      sequence number, in order, fed to a [`PageCut`] (ask
//!      [`PageCut::full`] before decoding each row; fetch at most
//!      [`PageCut::rows_max`] rows);
//!    - [`doc_changes`](LogRows::doc_changes): one document's change bytes
//!      in a sequence range, in order;
//!    - [`latest_change`](LogRows::latest_change): one document's newest
//!      change at or below a sequence number;
//!    - [`set_docs`](LogRows::set_docs): the documents of a set that have
//!      changes, in id order;
//!    - [`snapshot`](LogRows::snapshot), [`set_snapshot`](LogRows::set_snapshot),
//!      [`snapshots_after`](LogRows::snapshots_after): saved documents, the
//!      point a set's snapshots cover, and a page of a set's snapshots in id
//!      order (through [`PageCut::push_snapshot`]);
//!    - [`changes_between`](LogRows::changes_between): every change of every
//!      set in a sequence range, in order (a process catching up with what
//!      other writers of a shared store committed);
//!    - [`prefetch`](LogRows::prefetch) (optional, a no-op by default): a
//!      hint naming every row a group commit is about to look up, so a
//!      backend with costly round trips (PostgreSQL) reads them in a few
//!      batched queries and answers the lookups from memory.
//!    - the outbox of events ([`crate::events`]):
//!      [`event_head`](LogRows::event_head),
//!      [`store_event_seq`](LogRows::store_event_seq),
//!      [`events_after`](LogRows::events_after);
//!    - for compaction (see below): [`change_sets`](LogRows::change_sets),
//!      [`count_changes`](LogRows::count_changes),
//!      [`changed_docs`](LogRows::changed_docs).
//! 2. [`WriteTxn`]: one open write transaction. Rows: `put_meta`,
//!    `put_outcome`, `append` (a numbered change), `append_event` (an
//!    event of the outbox, numbered by the shared code), the ledger's rows
//!    (`get_sku`/`put_sku`, `get_order`/`put_order`, `get_key`/`put_key`,
//!    `get_reservation`/`put_reservation`, `get_last_order_no`/`put_order_no`,
//!    `skus_with_rights`), `put_snapshot`, `put_set_snapshot`,
//!    [`delete_changes`](WriteTxn::delete_changes) (compaction), and
//!    [`commit`](WriteTxn::commit).
//! 3. [`Backend`]: [`begin`](Backend::begin) opens a write transaction;
//!    [`ReadBackend::read`] runs reads on one consistent snapshot (safe
//!    beside the writer, from many threads).
//!
//! Then `HubStore::open(backend)` is the writer ([`super::HubLog`] plus the
//! import writes) and every [`ReadBackend`] is a [`super::HubLogRead`].
//!
//! ## Transactional expectations
//!
//! - Everything written through one [`WriteTxn`] becomes durable at once in
//!   [`WriteTxn::commit`], or not at all: dropping the transaction without
//!   committing must roll it back. The shared writer runs one transaction per
//!   group commit, checks and writes each op's outcome in it, and acks only
//!   after `commit` returned. `commit` returns only once the data is durable
//!   (SQLite: `synchronous=FULL`).
//! - Reads inside a write transaction see the transaction's own writes of
//!   outcomes and ledger rows; the shared code never reads a change back in
//!   the transaction that appended it.
//! - One writer at a time: either the backend refuses a second writer on
//!   the same store (SQLite holds a lock file), or it serializes write
//!   transactions across writers (PostgreSQL takes one advisory lock right
//!   after `BEGIN`), because two concurrent writers would hand out the same
//!   sequence numbers. [`LogRows::head_seq`] read inside a write transaction
//!   must therefore be the committed head as of that transaction: the shared
//!   writer takes its numbering from it at the start of every transaction,
//!   so several processes may write one store in turn.
//! - Sequence numbers are given by the shared code; `append` stores them
//!   as given and never renumbers.
//! - A backend that cannot fail (memory) may write in place: it has no
//!   rollback, which is correct only because it never returns an error.
//! - Keep each primitive to one query (or one row visit), with prepared
//!   statements cached: the shared code calls them per op, and the group
//!   commit runs tens of thousands of decided checkouts a second. A backend
//!   whose round trips cost more than a row visit (a database server) may
//!   instead keep the transaction's writes in memory and send them in a few
//!   multi-row statements at `commit`, answering reads from that overlay
//!   first; [`LogRows::prefetch`] lets it batch the reads too.
//! - Row encodings are the backend's own: the contract passes typed values
//!   (`AckOutcome`, `SkuLedger`, `OrderRecord`, ...) and the backend encodes
//!   them (SQLite: postcard blobs through its `encode`/`decode` helpers).
//! - Sequence numbers fit in a signed 64-bit column; `u64::MAX` as an upper
//!   bound (`doc_changes` for admin reads) means "no bound".
//!
//! ## Compaction: deleting changes covered by snapshots
//!
//! The shared writer ([`super::HubStore::compact`]) bounds the log: once a
//! set holds enough changes older than the configured age, it saves the
//! documents changed since the set's snapshot point as snapshots covering a
//! new point `S` (a record's snapshot is its newest version), records `S`
//! with [`WriteTxn::put_set_snapshot`] and the set's *compacted point* `S`
//! in the metadata (key `compacted/<set>`), and only then, in later
//! transactions, deletes the set's changes numbered `<= S` through
//! [`WriteTxn::delete_changes`]. Readers send a cursor below the compacted
//! point the snapshots first. What a backend must do:
//!
//! - [`delete_changes(set, upto, limit)`](WriteTxn::delete_changes): delete
//!   at most `limit` changes of `set` numbered `<= upto`, the oldest first,
//!   and return how many it deleted (the shared code calls it again until it
//!   deletes fewer than `limit`). One statement, e.g. in SQL:
//!   `DELETE FROM changes WHERE hub_seq IN (SELECT hub_seq FROM changes
//!   WHERE set_id = $1 AND hub_seq <= $2 ORDER BY hub_seq LIMIT $3)`.
//!   It is part of the open write transaction like every other write: the
//!   rows vanish at `commit`, or not at all if it is dropped. Snapshots,
//!   outcomes and ledger rows are never deleted.
//! - [`head_seq`](LogRows::head_seq) must stay the highest number ever given
//!   after deletions: a backend that derives it from the changes takes the
//!   greater of the highest stored change and the highest set snapshot
//!   point (compaction never deletes above a set's snapshot point), or keeps
//!   it in a row of its own. Otherwise a restarted hub would number new
//!   changes again under deleted numbers.
//! - [`change_sets`](LogRows::change_sets): the sets that have changes, in
//!   order (SQL: `SELECT DISTINCT set_id FROM changes ORDER BY set_id`;
//!   SQLite walks the `(set_id, hub_seq)` index with a recursive query).
//! - [`count_changes(set, after, upto)`](LogRows::count_changes): how many
//!   changes of `set` are numbered in `(after, upto]` and their bytes
//!   (`SELECT COUNT(*), COALESCE(SUM(LENGTH(bytes)), 0) ...`).
//! - [`changed_docs(set, after, upto)`](LogRows::changed_docs): the
//!   documents of `set` with a change numbered in `(after, upto]`, in id
//!   order (`SELECT DISTINCT doc_id ... ORDER BY doc_id`).
//!
//! ## Conformance
//!
//! With feature `conformance`, call `log::conformance::run_all(fresh)` in the
//! backend's tests, where `fresh` makes an empty log implementing
//! `conformance::Conformant` (the writer and a reader of the same store;
//! `conformance::Paired { writer, reader, keep }` is one for any backend). It
//! covers exactly-once outcomes, rejections, intents, page limits by count
//! and by bytes, import writes, snapshots for a far-behind cursor, the
//! hub's replica, and compaction (devices from nothing, from the deleted
//! range and live converge; the age and amount rules).
//! `conformance::price_book_forgets_a_failed_commit(backend)` is for
//! backends that roll back (all but memory): it wraps the backend in
//! `conformance::failing::FailingCommits`; so does
//! `conformance::price_book_rebuilds_from_compacted_prices(backend)`, which
//! every backend runs. The SQLite backend's tests
//! (`omnisync-hub`, `storage/mod.rs`) are the example to copy; the
//! PostgreSQL backend (`storage/postgres.rs`) is the example of a backend
//! that batches its reads (`prefetch`) and writes (an overlay flushed at
//! commit) and lets several writers take turns.

use omnisync_core::protocol::message::{AckOutcome, RemoteChange};
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::ids::{DocId, DocSetId, OpId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::Decision;
use omnisync_core::vocab::record::OrderRecord;

use super::HubLogError;
use crate::events::{Event, EventFilter};
use crate::hub_session::{ChangePage, CommittedChanges};
use crate::ledger::authority::Reservation;
use crate::ledger::sku_ledger::SkuLedger;

/// The rows a group commit is about to look up, named before it starts so a
/// backend can read them in a few batched queries ([`LogRows::prefetch`]).
/// A hint only: the shared code still asks for each row, and a row left out
/// is simply read when asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefetch {
    /// Op ids whose stored outcome is looked up.
    pub ops: Vec<OpId>,
    /// Ledger entries per (store, SKU).
    pub skus: Vec<(StoreId, Sku)>,
    /// Orders per (store, order id).
    pub orders: Vec<(StoreId, String)>,
    /// Idempotency keys per (store, key) as stored (`checkout:…`, `stock:…`).
    pub keys: Vec<(StoreId, String)>,
    /// Reservations per (store, reservation key).
    pub reservations: Vec<(StoreId, String)>,
    /// Stores whose last order number is looked up.
    pub stores: Vec<StoreId>,
}

impl Prefetch {
    /// True when nothing is named.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.skus.is_empty()
            && self.orders.is_empty()
            && self.keys.is_empty()
            && self.reservations.is_empty()
            && self.stores.is_empty()
    }
}

/// Reads every backend offers, in a read snapshot or a write transaction:
/// the shared code builds pages, documents and snapshots from these.
pub trait LogRows {
    /// The highest sequence number given, 0 for an empty log; it stays
    /// put when compaction deletes changes (see the module doc).
    fn head_seq(&mut self) -> Result<u64, HubLogError>;

    /// A value of the backend's key/value metadata (`log_id`).
    fn meta(&mut self, key: &str) -> Result<Option<String>, HubLogError>;

    /// The stored answer for an op, if it was ever applied or rejected.
    fn find_outcome(&mut self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError>;

    /// Feeds the changes of `set` with a sequence number above `after` to
    /// `page`, in sequence order: before decoding each row the backend asks
    /// [`PageCut::full`] and stops when it says so. At most
    /// [`PageCut::rows_max`] rows need be fetched.
    fn changes_after(
        &mut self,
        set: &DocSetId,
        after: u64,
        page: &mut PageCut,
    ) -> Result<(), HubLogError>;

    /// Calls `visit` with the bytes of every change of `doc` whose sequence
    /// number is in `(after, upto]`, in order.
    fn doc_changes(
        &mut self,
        doc: &DocId,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(&[u8]) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError>;

    /// The newest change of `doc` at or below `upto` (a record's current
    /// version).
    fn latest_change(&mut self, doc: &DocId, upto: u64) -> Result<Option<Vec<u8>>, HubLogError>;

    /// The documents of `set` with at least one change, in id order.
    fn set_docs(&mut self, set: &DocSetId) -> Result<Vec<DocId>, HubLogError>;

    /// A document's saved snapshot and the sequence number it covers.
    fn snapshot(&mut self, doc: &DocId) -> Result<Option<(Vec<u8>, u64)>, HubLogError>;

    /// The sequence number the snapshots of `set` cover, if it has any.
    fn set_snapshot(&mut self, set: &DocSetId) -> Result<Option<u64>, HubLogError>;

    /// Feeds the snapshots of `set` after document `after` (all when `None`)
    /// to `page` in document id order, through [`PageCut::push_snapshot`],
    /// asking [`PageCut::full`] before each.
    fn snapshots_after(
        &mut self,
        set: &DocSetId,
        after: Option<&DocId>,
        page: &mut PageCut,
    ) -> Result<(), HubLogError>;

    /// Calls `visit` with every change of every set whose sequence number is
    /// in `(after, upto]`, in sequence order (see [`committed_between`] for
    /// them grouped by set, as a commit's fan-out carries them).
    fn changes_between(
        &mut self,
        after: u64,
        upto: u64,
        visit: &mut dyn FnMut(RemoteChange) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError>;

    /// Names the rows about to be looked up in this transaction (a hint; see
    /// [`Prefetch`]). A backend whose reads are cheap keeps this no-op; one
    /// that batches them must answer the later lookups exactly as the
    /// single-row reads would, absence of a row included.
    fn prefetch(&mut self, want: &Prefetch) -> Result<(), HubLogError> {
        let _ = want;
        Ok(())
    }

    /// The highest outbox position written (0 when none). Like
    /// [`head_seq`](LogRows::head_seq), read inside a write transaction it
    /// is the committed one as of that transaction.
    fn event_head(&mut self) -> Result<u64, HubLogError>;

    /// The last per-store position given to an event of `store` (0 when
    /// none).
    fn store_event_seq(&mut self, store: &StoreId) -> Result<u64, HubLogError>;

    /// Calls `visit` with the outbox's events above position `after` that
    /// pass `filter`, in position order, at most `limit` of them.
    fn events_after(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        visit: &mut dyn FnMut(Event) -> Result<(), HubLogError>,
    ) -> Result<(), HubLogError>;

    /// Every set with at least one stored change, in id order (compaction
    /// visits them in turn).
    fn change_sets(&mut self) -> Result<Vec<DocSetId>, HubLogError>;

    /// The number of changes of `set` numbered in `(after, upto]` and the
    /// sum of their byte lengths (compaction's trigger).
    fn count_changes(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<(u64, u64), HubLogError>;

    /// The documents of `set` with at least one change numbered in
    /// `(after, upto]`, in id order: the ones compaction must snapshot again.
    fn changed_docs(
        &mut self,
        set: &DocSetId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<DocId>, HubLogError>;
}

/// The changes in `(after, upto]` grouped by set, each set's in sequence
/// order: what the commits that wrote them fanned out.
pub fn committed_between(
    rows: &mut (impl LogRows + ?Sized),
    after: u64,
    upto: u64,
) -> Result<CommittedChanges, HubLogError> {
    let mut committed = CommittedChanges::default();
    rows.changes_between(after, upto, &mut |change| {
        committed
            .by_set
            .entry(change.doc.set())
            .or_default()
            .push(change);
        Ok(())
    })?;
    Ok(committed)
}

/// One open write transaction: durable only at [`commit`](Self::commit),
/// rolled back when dropped without it.
pub trait WriteTxn: LogRows {
    /// Sets a metadata value.
    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), HubLogError>;
    /// Stores an op's answer (an op id is stored once).
    fn put_outcome(
        &mut self,
        op: &OpId,
        outcome: &AckOutcome,
        now_ms: u64,
    ) -> Result<(), HubLogError>;
    /// Stores a numbered change as given.
    fn append(&mut self, change: &RemoteChange) -> Result<(), HubLogError>;
    /// Stores an event in the outbox as given (numbered by the shared
    /// code; never renumbered).
    fn append_event(&mut self, event: &Event) -> Result<(), HubLogError>;
    /// A SKU's ledger entry.
    fn get_sku(&mut self, store: &StoreId, sku: &Sku) -> Result<Option<SkuLedger>, HubLogError>;
    /// Writes a SKU's ledger entry (insert or replace).
    fn put_sku(
        &mut self,
        store: &StoreId,
        sku: &Sku,
        ledger: &SkuLedger,
    ) -> Result<(), HubLogError>;
    /// An order.
    fn get_order(
        &mut self,
        store: &StoreId,
        order_id: &str,
    ) -> Result<Option<OrderRecord>, HubLogError>;
    /// Writes an order (insert or replace).
    fn put_order(&mut self, store: &StoreId, order: &OrderRecord) -> Result<(), HubLogError>;
    /// The decision an idempotency key got.
    fn get_key(&mut self, store: &StoreId, key: &str) -> Result<Option<Decision>, HubLogError>;
    /// Stores the decision of a first-used idempotency key.
    fn put_key(
        &mut self,
        store: &StoreId,
        key: &str,
        decision: &Decision,
    ) -> Result<(), HubLogError>;
    /// A reservation.
    fn get_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
    ) -> Result<Option<Reservation>, HubLogError>;
    /// Writes a reservation (insert or replace).
    fn put_reservation(
        &mut self,
        store: &StoreId,
        key: &str,
        reservation: &Reservation,
    ) -> Result<(), HubLogError>;
    /// The last order number given in a store (0 if none).
    fn get_last_order_no(&mut self, store: &StoreId) -> Result<u64, HubLogError>;
    /// Writes the last order number given in a store.
    fn put_order_no(&mut self, store: &StoreId, last: u64) -> Result<(), HubLogError>;
    /// Every ledger entry in which some terminal holds rights
    /// (`SkuLedger::held() > 0`), sorted.
    fn skus_with_rights(&mut self) -> Result<Vec<(StoreId, Sku)>, HubLogError>;
    /// Saves a document's snapshot covering `covers` (insert or replace).
    fn put_snapshot(&mut self, doc: &DocId, covers: u64, bytes: &[u8]) -> Result<(), HubLogError>;
    /// Records the point the snapshots of `set` cover.
    fn put_set_snapshot(&mut self, set: &DocSetId, covers: u64) -> Result<(), HubLogError>;
    /// Deletes at most `limit` changes of `set` numbered `<= upto`, oldest
    /// first, and returns how many it deleted. Only compaction calls it, and
    /// only below a point the set's snapshots cover (see the module doc).
    fn delete_changes(&mut self, set: &DocSetId, upto: u64, limit: u64)
    -> Result<u64, HubLogError>;
    /// Deletes at most `limit` events written before `before_ms`, oldest
    /// first, never the newest event of a store (its position numbers the
    /// store's next one); returns how many were deleted and the highest
    /// position deleted (0 when none). One statement, e.g. in SQL:
    /// `DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE
    /// e.time_ms < $1 AND e.store_seq < (SELECT MAX(store_seq) FROM events x
    /// WHERE x.store_id = e.store_id) ORDER BY e.seq LIMIT $2) RETURNING seq`.
    fn delete_events(&mut self, before_ms: u64, limit: u64) -> Result<(u64, u64), HubLogError>;
    /// Makes everything written durable, at once.
    fn commit(self) -> Result<(), HubLogError>
    where
        Self: Sized;
}

/// A store the single writer opens transactions on.
pub trait Backend {
    /// The backend's write transaction.
    type Txn<'t>: WriteTxn
    where
        Self: 't;
    /// Opens a write transaction.
    fn begin(&mut self) -> Result<Self::Txn<'_>, HubLogError>;
}

/// A store's readers: every reader is a [`super::HubLogRead`].
pub trait ReadBackend {
    /// Runs `read` on one consistent snapshot of the store (the head and a
    /// page come from the same one). `read` and its answer are `Send`: a
    /// backend whose client must not block an async runtime's thread may
    /// run it on another thread.
    fn read<T: Send>(
        &self,
        read: impl FnOnce(&mut dyn LogRows) -> Result<T, HubLogError> + Send,
    ) -> Result<T, HubLogError>;
}

/// A page being cut from the rows a backend reads: at most `len_max`
/// changes, stopping once `bytes_target` is passed (but never empty).
#[derive(Debug)]
pub struct PageCut {
    len_max: usize,
    bytes_target: usize,
    bytes: usize,
    more: bool,
    changes: Vec<RemoteChange>,
    /// Sequence number and origin given to snapshots.
    snapshot_as: (u64, ReplicaId),
}

impl PageCut {
    /// An empty page with the given limits.
    pub fn new(len_max: usize, bytes_target: usize) -> Self {
        Self {
            len_max,
            bytes_target,
            bytes: 0,
            more: false,
            changes: Vec::new(),
            snapshot_as: (0, ReplicaId([0; 16])),
        }
    }

    /// An empty page of snapshots, each numbered `covers` and from `hub`.
    pub fn snapshots(len_max: usize, bytes_target: usize, covers: u64, hub: ReplicaId) -> Self {
        Self {
            snapshot_as: (covers, hub),
            ..Self::new(len_max, bytes_target)
        }
    }

    /// Rows a backend need fetch: one past the page tells there is more.
    pub fn rows_max(&self) -> usize {
        self.len_max.saturating_add(1)
    }

    /// True when the page takes no more rows; the next row, which the
    /// backend has, then marks the page as followed by more.
    pub fn full(&mut self) -> bool {
        let full = self.changes.len() >= self.len_max
            || (self.bytes >= self.bytes_target && !self.changes.is_empty());
        self.more |= full;
        full
    }

    /// Adds a change read from the log.
    pub fn push(&mut self, change: RemoteChange) {
        self.bytes += change.bytes.len();
        self.changes.push(change);
    }

    /// Adds a document's snapshot.
    pub fn push_snapshot(&mut self, doc: DocId, bytes: Vec<u8>) {
        let (hub_seq, origin) = self.snapshot_as;
        self.push(RemoteChange {
            hub_seq,
            doc,
            origin,
            bytes,
        });
    }

    /// The page of changes read after `cursor` with the log at `head`.
    pub fn into_changes(self, cursor: u64, head: u64) -> ChangePage {
        let cursor = if self.more {
            self.changes.last().map_or(cursor, |change| change.hub_seq)
        } else {
            head.max(cursor)
        };
        ChangePage {
            changes: self.changes,
            cursor,
            caught_up: !self.more,
            resume: None,
        }
    }

    /// The page of snapshots: the cursor moves to the snapshot point only
    /// with the last snapshot; until then `resume` names the last one sent.
    pub fn into_snapshots(self, cursor: u64) -> ChangePage {
        let resume = if self.more {
            self.changes.last().map(|change| change.doc.clone())
        } else {
            None
        };
        let cursor = if self.more {
            cursor
        } else {
            self.snapshot_as.0
        };
        ChangePage {
            changes: self.changes,
            cursor,
            caught_up: false,
            resume,
        }
    }
}
