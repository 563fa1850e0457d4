//! The one error of the hub's storage, shared by the storage contract and the
//! ledger authority that reads through it.

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubLogError {
    /// The database failed.
    #[error("hub storage: {0}")]
    Storage(String),
}
