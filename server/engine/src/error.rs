//! The one error of the hub's storage, shared by the storage contract and the
//! ledger authority that reads through it.

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubLogError {
    /// The database failed.
    #[error("hub storage: {0}")]
    Storage(String),
    /// The changes asked for were compacted into snapshots: a reader that
    /// starts below the set's compacted point must take the snapshots first
    /// (`HubLogRead::catch_up_page`).
    #[error(
        "the changes of {set} up to {compacted} were compacted into snapshots; cursor {cursor} must start from the snapshots"
    )]
    Compacted {
        /// The set.
        set: String,
        /// The cursor asked for.
        cursor: u64,
        /// The set's compacted point.
        compacted: u64,
    },
    /// The events asked for are older than the outbox keeps: a consumer
    /// that read nothing after `after` for longer than the retention lost
    /// them, and resumes from `pruned` (after reconciling).
    #[error(
        "events after {after} were pruned up to {pruned} (older than the outbox keeps); resume after {pruned}"
    )]
    EventsPruned {
        /// The position asked to read after.
        after: u64,
        /// The highest position deleted.
        pruned: u64,
    },
}
