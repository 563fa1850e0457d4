//! The one public error of the bindings, and the one place where every core
//! error is translated into it. Variants carry `detail`, never `message` or
//! `cause`: those names break the generated Kotlin (they clash with
//! `Throwable`'s properties).

use omnisync_core::DbError;
use omnisync_core::client::{ClientError, HubUrlError};
use omnisync_core::retail::RetailError;
use omnisync_core::vocab::ids::IdError;

/// Why a call into omnisync failed. Thrown as an exception in Kotlin, Swift
/// and Python.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum OmnisyncError {
    /// The caller passed something the domain refuses: a malformed id or SKU,
    /// a negative price, a zero, negative or too large quantity, an unknown
    /// currency or policy, an over-long key.
    #[error("invalid input: {detail}")]
    InvalidInput {
        /// What was wrong, for logs and developer screens.
        detail: String,
    },
    /// The thing to change does not exist (an order, a cart line, an open
    /// compensation).
    #[error("not found: {detail}")]
    NotFound {
        /// What was looked for.
        detail: String,
    },
    /// An optimistic-concurrency check failed: reload and retry.
    #[error("version conflict: expected {expected}, found {found}")]
    VersionConflict {
        /// The version the caller based its change on.
        expected: u64,
        /// The version the store holds.
        found: u64,
    },
    /// The till may not make this sale now: a line is not covered by its
    /// allowance, the till is offline and the SKU's offline policy is
    /// `block` (or the till knows no stock of it yet). Nothing was written;
    /// sell it once online, or without that line.
    #[error("blocked: {detail}")]
    Blocked {
        /// Why, for the cashier (which SKU, what is missing).
        detail: String,
    },
    /// The write would not change anything (e.g. the value is already set);
    /// nothing was recorded. Safe to ignore.
    #[error("the write changes nothing")]
    Unchanged,
    /// The database file belongs to another device or store.
    #[error("wrong database: {detail}")]
    WrongDatabase {
        /// Whose database it is.
        detail: String,
    },
    /// The local database failed or holds data this build cannot read.
    #[error("storage: {detail}")]
    Storage {
        /// The database's explanation.
        detail: String,
    },
    /// A wait ran out of time.
    #[error("timed out: {detail}")]
    Timeout {
        /// What was being waited for.
        detail: String,
    },
    /// The store was shut down; open it again to continue.
    #[error("the store is shut down")]
    Closed,
    /// A bug in the bindings (a background task panicked). Please report it.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
}

impl From<IdError> for OmnisyncError {
    fn from(error: IdError) -> Self {
        OmnisyncError::InvalidInput {
            detail: error.to_string(),
        }
    }
}

impl From<HubUrlError> for OmnisyncError {
    fn from(error: HubUrlError) -> Self {
        OmnisyncError::InvalidInput {
            detail: error.to_string(),
        }
    }
}

impl From<DbError> for OmnisyncError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unchanged => OmnisyncError::Unchanged,
            DbError::WrongOwner { .. } => OmnisyncError::WrongDatabase {
                detail: error.to_string(),
            },
            DbError::Edit { .. } | DbError::InvalidOp(_) => OmnisyncError::InvalidInput {
                detail: error.to_string(),
            },
            other => OmnisyncError::Storage {
                detail: other.to_string(),
            },
        }
    }
}

impl From<RetailError> for OmnisyncError {
    fn from(error: RetailError) -> Self {
        match error {
            RetailError::Invalid(detail) => OmnisyncError::InvalidInput { detail },
            RetailError::Id(error) => error.into(),
            RetailError::NotFound(detail) => OmnisyncError::NotFound { detail },
            RetailError::VersionConflict { expected, found } => {
                OmnisyncError::VersionConflict { expected, found }
            }
            RetailError::Blocked(detail) => OmnisyncError::Blocked { detail },
            RetailError::Db(error) => error.into(),
            other => OmnisyncError::Internal {
                detail: other.to_string(),
            },
        }
    }
}

impl From<ClientError> for OmnisyncError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Db(error) => error.into(),
            ClientError::Timeout(..) => OmnisyncError::Timeout {
                detail: error.to_string(),
            },
            other => OmnisyncError::Internal {
                detail: other.to_string(),
            },
        }
    }
}

impl From<tokio::task::JoinError> for OmnisyncError {
    fn from(error: tokio::task::JoinError) -> Self {
        OmnisyncError::Internal {
            detail: format!("background task failed: {error}"),
        }
    }
}

/// The result type of every fallible export.
pub type Result<T, E = OmnisyncError> = std::result::Result<T, E>;
