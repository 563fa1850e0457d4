//! The hub's durable change log: a small storage contract, the logic every
//! backend shares, an in-memory backend and one conformance suite.
//!
//! - [`contract`]: the row-level primitives a backend implements (its module
//!   doc says how to add a backend);
//! - [`shared`]: the op loop (exactly-once outcomes, numbering, intents
//!   decided by the authority) and the price book, over a transaction;
//! - [`store`]: [`HubStore`], the single writer over any backend, with the
//!   import writes (hub-made changes, hub intents, snapshots of a set);
//! - [`read`]: pages cut by count and bytes, and the snapshot catch-up rule,
//!   making every read backend a [`HubLogRead`];
//! - [`compact`]: compaction, old changes folded into snapshots and deleted;
//! - [`memory`]: the memory backend, for simulations and tests;
//! - [`conformance`] (feature `conformance`): the suite every backend runs.
//!
//! The hub runtime and the deterministic simulation both talk to storage
//! through [`HubLog`] and [`HubLogRead`]; the SQLite backend lives in the hub
//! crate.

pub mod compact;
pub mod contract;
pub mod memory;
pub mod read;
pub mod shared;
pub mod store;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use compact::{CompactPolicy, CompactStep};
pub use contract::{Backend, LogRows, PageCut, Prefetch, ReadBackend, WriteTxn, committed_between};
pub use memory::{MEMORY_LOG_ID, MemoryBackend, MemoryHubLog};
pub use read::SNAPSHOT_CATCH_UP_GAP_MIN;
pub use shared::{HubTxn, apply_hub_intents, apply_ops, hub_replica, maintain_ledger};
pub use store::HubStore;

use crate::hub_session::{ChangePage, CommittedChanges, IncomingOp};
use omnisync_core::protocol::message::{Ack, AckOutcome};
use omnisync_core::vocab::ids::{DocSetId, OpId};

pub use crate::error::HubLogError;

/// What one group commit produced.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    /// One ack per incoming op, in the same order.
    pub acks: Vec<Ack>,
    /// The changes newly stored (and records published), for fan-out.
    pub committed: CommittedChanges,
    /// Ops applied for the first time.
    pub stored: usize,
    /// Ops refused for the first time.
    pub rejected: usize,
    /// Intents decided for the first time.
    pub decided: usize,
    /// Ops answered with an earlier outcome (retries and duplicates).
    pub duplicates: usize,
}

/// Durable storage of ops and the numbered change log.
pub trait HubLog {
    /// Applies ops in one durable transaction. Each op id is applied once: a
    /// repeated id (in this batch or from before) gets its original answer and
    /// changes nothing. Intents are decided in op order in the same
    /// transaction. Returns after the commit is durable.
    fn apply(&mut self, ops: Vec<IncomingOp>) -> Result<AppliedBatch, HubLogError>;

    /// Periodic work of the authority (recalling idle allowances), in one
    /// durable transaction; returns the records it published.
    fn maintain(&mut self, now_ms: u64) -> Result<CommittedChanges, HubLogError>;

    /// The highest sequence number given so far.
    fn head_seq(&self) -> Result<u64, HubLogError>;

    /// One bounded step of compaction (see [`compact`]) in a durable
    /// transaction of its own, with `now_ms` dating the log's changes.
    /// Runs between group commits; `more` in the answer asks to be called
    /// again soon. A log without compaction does nothing.
    fn compact(&mut self, now_ms: u64) -> Result<CompactStep, HubLogError> {
        let _ = now_ms;
        Ok(CompactStep::default())
    }
}

/// Reads of the hub's log; safe to call from many threads while a
/// [`HubLog`] writes.
pub trait HubLogRead {
    /// Reads changes of `set` with a sequence number above `cursor`: at most
    /// `len_max` changes, stopping early once `bytes_target` is passed.
    fn changes_since(
        &self,
        set: &DocSetId,
        cursor: u64,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError>;

    /// The next page for a catching-up subscription. Backends with snapshots
    /// send a device far behind the saved documents of the set instead of its
    /// whole history: while `resume` is set (or the device starts far behind
    /// the set's snapshot point) the page holds snapshots, documents after
    /// `resume` in id order, and the cursor does not move until the last one.
    fn catch_up_page(
        &self,
        set: &DocSetId,
        cursor: u64,
        resume: Option<&omnisync_core::vocab::ids::DocId>,
        len_max: usize,
        bytes_target: usize,
    ) -> Result<ChangePage, HubLogError> {
        let _ = resume;
        self.changes_since(set, cursor, len_max, bytes_target)
    }

    /// One document as stored, in order: its snapshot first if it has one
    /// (for a record, its newest version at the snapshot point), then every
    /// change after it. Loading each with `load_incremental` rebuilds the
    /// document; a record's last entry is its newest version. Compaction
    /// deletes the changes a snapshot covers, so this is the whole document.
    /// For admin reads and the hub's change index.
    fn doc_changes(
        &self,
        doc: &omnisync_core::vocab::ids::DocId,
    ) -> Result<Vec<Vec<u8>>, HubLogError>;

    /// The stored answer for an op, if it was ever applied or rejected.
    fn outcome(&self, op: &OpId) -> Result<Option<AckOutcome>, HubLogError>;

    /// Every change with a sequence number in `(after, upto]`, grouped by
    /// set as a commit's fan-out carries them: what other writers of a
    /// shared store committed, for this process's live subscriptions.
    /// Readers that cannot list them say so with an error.
    fn changes_between(&self, after: u64, upto: u64) -> Result<CommittedChanges, HubLogError> {
        let _ = (after, upto);
        Err(HubLogError::Storage(
            "this reader cannot list the changes of every set".into(),
        ))
    }

    /// The highest sequence number committed, as a reader sees it now.
    fn head(&self) -> Result<u64, HubLogError> {
        Err(HubLogError::Storage(
            "this reader cannot read the head".into(),
        ))
    }

    /// At most `limit` events of the outbox above position `after` that pass
    /// `filter`, with where the next read starts and the outbox's head, all
    /// from one snapshot.
    fn events(
        &self,
        after: u64,
        filter: &crate::events::EventFilter,
        limit: usize,
    ) -> Result<crate::events::EventPage, HubLogError> {
        let _ = (after, filter, limit);
        Err(HubLogError::Storage(
            "this reader cannot read the outbox".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_log_conforms() {
        super::conformance::run_all(super::MemoryHubLog::new);
    }

    #[test]
    fn memory_price_book_rebuilds_from_compacted_prices() {
        super::conformance::price_book_rebuilds_from_compacted_prices(super::MemoryBackend::new());
    }
}
