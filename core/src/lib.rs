//! omnisync-core: the offline-first replica and sync protocol embedded in every
//! POS terminal and app.
//!
//! Layers, bottom up; each imports only from the layers below it (checked in
//! CI by `.ci/check-layers`):
//! - [`vocab`]: identifiers, goods and money, the hybrid clock, document
//!   layout, typed edits, and the intents, decisions and hub records the hub
//!   decides and publishes;
//! - [`protocol`]: wire messages and the device's sans-I/O session;
//! - [`db`]: the device database ([`Replica`]): documents, the operation log,
//!   cursors and credentials in one SQLite file. It knows nothing of retail:
//!   it calls the rules through [`db::Hooks`] inside its transactions;
//! - [`retail`]: the retail data model, its merge rules and query tables, the
//!   typed API, and the [`db::Hooks`] implementation;
//! - `client` (feature `client`): the tokio/WebSocket client runtime.
//!
//! Beside them, `ffi` (feature `ffi`, directly on `vocab`) declares how the
//! vocabulary's identifiers cross to Kotlin, Swift and Python as custom
//! types; the value types of every layer carry their own UniFFI derives
//! behind the same feature, so each is defined once.
//!
//! The hub's side (its log contract, the ledger authority, the hub session)
//! is the crate `omnisync-hub-engine`; devices never compile it.

pub mod db;
pub mod protocol;
pub mod retail;
pub mod vocab;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "ffi")]
pub mod ffi;

// The core is a UniFFI component of its own: the records, enums and custom
// types that cross the bindings' FFI are defined (and derived) here once.
#[cfg(feature = "ffi")]
uniffi::setup_scaffolding!();

pub use db::{DbError, DocEdit, Durability, Replica};
pub use vocab::edit::{Edit, Value};
pub use vocab::goods::{Channel, Currency, Money, Sku};
pub use vocab::ids::{CustomerId, DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId, TenantId};

/// Milliseconds since the Unix epoch from the system clock. Only runtimes call
/// this; the protocol and the database take time as an argument.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
