//! omnisync-ffi: the UniFFI bindings that Kotlin (Android, JVM), Swift (iOS)
//! and Python apps use to embed omnisync.
//!
//! A thin layer over `omnisync-core`: [`open_store`] opens a device's store
//! and returns an [`OmnisyncStore`] with the retail operations and queries
//! (catalog, prices, carts; stock commands, checkout, orders and
//! compensations decided by the hub), sync control and events. The crate owns one tokio runtime ([`runtime`]);
//! every export that touches the database is `async` and runs that work on
//! the runtime's blocking pool, so an app's UI thread never waits on SQLite
//! or the network. Errors are one enum, [`OmnisyncError`], translated from
//! the core's errors in `error.rs` only.
//!
//! Types are defined once: the core's value types (money, channels,
//! products, prices, cart lines, stock views, orders, compensations, modes
//! and policies, and the identifiers `Sku`, `Currency`, `OpId`, `DocSetId`
//! as custom types) carry UniFFI derives behind `omnisync-core`'s feature
//! `ffi` and cross as they are. The core is its own UniFFI component, so the
//! generated code has two modules: `dev.omnisync.core` (Kotlin),
//! `omnisync_core` (Python), `OmnisyncCore.swift` (Swift) for those, and this
//! crate's for the store, its events and inputs, and the few types that
//! stand for a core type UniFFI cannot carry (each says why).

#![warn(missing_docs)]

uniffi::setup_scaffolding!();

mod error;
mod events;
mod ledger;
mod store;
mod types;

use std::sync::OnceLock;

pub use error::OmnisyncError;
pub use events::{ChangeOrigin, DecidedOp, EVENT_QUEUE_MAX, EventListener, StoreEvent};
pub use ledger::{CheckoutInput, CheckoutReceipt, OpState, OrderLineInput, ReceiptLine};
pub use store::{OmnisyncStore, open_store};
pub use types::{Cart, CartLineAdded, Collection, ProductInput, StoreConfig, SyncStatus};

/// Worker threads of the bindings' runtime: sync tasks are I/O-bound and a
/// phone has few cores; SQLite work goes to the separate blocking pool.
pub const RUNTIME_WORKERS: usize = 2;

/// The bindings' own tokio runtime, created on first use and kept for the
/// life of the process (apps open and close stores many times).
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, OmnisyncError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_WORKERS)
                .thread_name("omnisync-rt")
                .enable_all()
                .build()
                .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(|detail| OmnisyncError::Internal {
            detail: format!("could not start the runtime: {detail}"),
        })
}
