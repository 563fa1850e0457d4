//! omnisync-core: the offline-first store and sync protocol embedded in every
//! POS terminal and app.
//!
//! Layers, bottom up:
//! - [`ids`]: identifier newtypes, parsed once at the boundary;
//! - [`protocol`]: wire messages and sans-I/O client and hub state machines;
//! - [`edit`]: typed document edits, so callers never see automerge;
//! - [`domain`]: the retail data model, its merge rules and query tables;
//! - [`store`]: the SQLite store with documents, the operation log and cursors;
//! - [`hublog`]: the hub's durable log as a trait, with a memory backend;
//! - `net` (feature `net`): the tokio/WebSocket client runtime.

pub mod domain;
pub mod edit;
pub mod hublog;
pub mod ids;
pub mod ledger;
pub mod protocol;
pub mod store;

#[cfg(feature = "net")]
pub mod net;

pub use edit::{Edit, Value};
pub use ids::{CustomerId, DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId, TenantId};
pub use store::{DocEdit, Durability, Store, StoreError};

/// Milliseconds since the Unix epoch from the system clock. Only runtimes call
/// this; the protocol and store take time as an argument.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
