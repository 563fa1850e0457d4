//! The retail data model: typed documents, one merge rule per domain, and
//! the query tables (projections) that apps read instead of documents. The
//! database below calls these rules through [`hooks::RetailHooks`].
//!
//! | domain | document | merged how |
//! |---|---|---|
//! | product metadata | `store.S/catalog/bNNN` | multi-value register per field; conflicts surfaced, resolvable |
//! | catalog manifest | `store.S/manifest` | bucket count and the size of the last import; written by the hub |
//! | price | `store.S/prices/bNNN` | last-writer-wins by hybrid logical clock, ties by writer, per channel and effective-from time |
//! | cart | `customer.C/cart` | lines keyed by unique line id; quantity is a counter; remove wins over a concurrent edit |
//! | wishlist | `customer.C/wishlist` | add-wins set (a unique tag per add) |
//! | customer profile | `customer.C/profile` | last-writer-wins per field |
//! | browsing history | `customer.C/history` | bounded, best effort |
//! | recommendations | `customer.C/recommendations` | last-writer-wins list |
//! | stock level | `store.S/rec/stock/SKU` (hub record) | never merged: the hub's ledger decides, the newest version wins on the device |
//! | a terminal's allowance | `device.S.D/rec/allowance/SKU` (hub record) | never merged: newest version wins |
//! | order | `orders.S/rec/order/ORDER` (hub record) | never merged: decided by the hub from a checkout intent; status changes are intents with an expected version |
//!
//! Checkouts, stock commands, reservations and order status changes are
//! intents ([`crate::vocab::intent`]) that the hub decides; the device keeps
//! its side (allowance spent, pending order, compensation tasks) in query
//! tables written in the same transaction as the intent.
//!
//! Keys inside a document are flat (`sku/field`), never nested maps: two
//! replicas creating the same nested map concurrently would hide one of
//! them, while flat keys merge field by field.

pub mod api;
pub mod catalog;
pub mod customer;
pub mod hooks;
pub mod hub_records;
pub mod orders;
pub mod prices;
pub(crate) mod project;
pub(crate) mod register;
pub mod stock;

#[cfg(test)]
mod tests;

use crate::vocab::ids::IdError;

/// Why a domain operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetailError {
    /// Input that breaks a rule of the domain.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An identifier failed to parse.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The thing to change does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An optimistic-concurrency check failed.
    #[error("version conflict: expected {expected}, found {found}")]
    VersionConflict {
        /// The version the caller based its change on.
        expected: u64,
        /// The version the store holds.
        found: u64,
    },
    /// A sale the till may not make now (offline and the SKU's policy is
    /// `block`); nothing was written.
    #[error("blocked: {0}")]
    Blocked(String),
    /// The device database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

impl From<crate::vocab::intent::InvalidIntent> for RetailError {
    /// An intent that breaks a rule is invalid input like any other.
    fn from(invalid: crate::vocab::intent::InvalidIntent) -> Self {
        RetailError::Invalid(invalid.0)
    }
}
