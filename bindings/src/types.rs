//! The records and enums of the bindings' own that are not ledger types:
//! how a store is opened, product input, a cart, the sync status and the
//! collections of change events. The core's value types (money, channels,
//! products, prices, cart lines) cross the FFI as they are (derived in the
//! core, feature `ffi`); the types here either exist only at the FFI or
//! stand for a core type UniFFI cannot carry, with the reason next to them.
//! Inputs arrive as plain strings and numbers and are parsed here into the
//! core's newtypes, so a bad value becomes an
//! [`crate::OmnisyncError::InvalidInput`] instead of reaching the store.

use omnisync_core::client::{Link, SyncStatus as CoreSyncStatus};
use omnisync_core::retail::catalog::{self, ProductField};
use omnisync_core::retail::customer::{self, CartLine};
use omnisync_core::vocab::goods::{Money, Sku};
use omnisync_core::vocab::ids::{DocId, DocSetId, DocSetKind, OpId};
use omnisync_core::vocab::layout::{self, DocKind};

#[cfg(test)]
use crate::error::OmnisyncError;
use crate::error::Result;

/// How to open a store on a device.
#[derive(Clone, Debug, uniffi::Record)]
pub struct StoreConfig {
    /// Path of the SQLite database file (created if missing).
    pub path: String,
    /// This device's id, e.g. `till-1` (`A-Z a-z 0-9 - _ .`).
    pub device_id: String,
    /// The store this device belongs to, e.g. `berlin-01`.
    pub store_id: String,
    /// `ws://host:port/v1/sync`, or `wss://` for a hub serving TLS: the
    /// hub tried first. May be empty when `hub_urls` lists the addresses.
    pub hub_url: String,
    /// The device's signed token from enrolment, if any (`customer:ID` on a
    /// development hub grants that customer's data). The store keeps it and
    /// the newer refreshed ones; pass the enrolment token again, or none.
    #[uniffi(default = None)]
    pub credentials_token: Option<String>,
    /// A 32-byte key from the platform keystore to encrypt the database
    /// with SQLCipher; needs a library built with the `encryption` feature.
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
    /// PEM of the CA that signed the hub's certificate (a store running its
    /// own hub); `None` trusts the public web roots.
    #[uniffi(default = None)]
    pub hub_ca_pem: Option<String>,
    /// More hub addresses (`ws://` or `wss://`), tried after `hub_url` in
    /// this order: when a connection drops or an attempt fails, the device
    /// moves to the next one (and around). A host name that resolves to
    /// several addresses stands for each of them.
    #[uniffi(default)]
    pub hub_urls: Vec<String>,
}

impl StoreConfig {
    /// Every hub address, `hub_url` first (when given), then `hub_urls`;
    /// checked by the core when the store opens (an empty list, a malformed
    /// URL or another scheme is `InvalidInput`).
    pub(crate) fn hub_addresses(&self) -> Vec<String> {
        std::iter::once(&self.hub_url)
            .filter(|url| !url.trim().is_empty())
            .chain(&self.hub_urls)
            .cloned()
            .collect()
    }
}

/// A product to create or update; `None` fields are left as they are.
///
/// A separate FFI input because the core's `ProductUpdate` holds
/// `(ProductField, String)` pairs, which UniFFI cannot carry, and because
/// the SKU arrives as text and is parsed in `to_core` (a typed error).
#[derive(Clone, Debug, Default, uniffi::Record)]
pub struct ProductInput {
    /// The product's SKU.
    pub sku: String,
    /// Display name.
    #[uniffi(default = None)]
    pub name: Option<String>,
    /// Category path, e.g. `coffee/beans`.
    #[uniffi(default = None)]
    pub category: Option<String>,
    /// EAN/UPC barcode.
    #[uniffi(default = None)]
    pub barcode: Option<String>,
    /// Brand.
    #[uniffi(default = None)]
    pub brand: Option<String>,
    /// Long description.
    #[uniffi(default = None)]
    pub description: Option<String>,
    /// `active` or `archived`.
    #[uniffi(default = None)]
    pub status: Option<String>,
}

/// A cart with its total at current prices.
///
/// A separate FFI type because the core's `CartView` counts unpriced lines
/// as `usize`, which UniFFI cannot carry; the lines cross as they are.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Cart {
    /// Lines, oldest first.
    pub lines: Vec<CartLine>,
    /// Sum of priced lines, in the currency of the first priced line.
    pub total: Option<Money>,
    /// Lines without a price in force.
    pub unpriced_lines: u64,
}

/// The result of adding a cart line.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CartLineAdded {
    /// The recorded op (see [`crate::OmnisyncStore::op_state`]).
    pub op_id: OpId,
    /// The new line's id.
    pub line_id: String,
}

/// What an app shows about sync.
///
/// A separate FFI type because the core's `SyncStatus` also carries the
/// hub's typed refusal of the session, a wire-protocol error
/// (`protocol::message::ProtocolError`) that is not part of the FFI; apps
/// get its text in `last_error`. Converted in one place, `From` below.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    /// Link state.
    pub link: Link,
    /// Local ops not yet acknowledged by the hub.
    pub pending: u64,
    /// Age of the oldest pending op, ms.
    pub oldest_pending_age_ms: u64,
    /// Ops refused by the hub (dead-letter lane).
    pub rejected: u64,
    /// Open compensation tasks: provisional sales the hub could not cover
    /// (see `compensations()`).
    pub compensations_open: u64,
    /// When the last acknowledgement arrived, ms since the epoch.
    pub last_ack_ms: Option<u64>,
    /// True when every followed set has reached the hub's head since connecting.
    pub caught_up: bool,
    /// The last connection error, if the link is down because of one.
    pub last_error: Option<String>,
    /// Followed data sets the hub does not let this device read (e.g.
    /// `orders.berlin-01`); they are not synced.
    pub refused_sets: Vec<DocSetId>,
    /// The hub address of the session while online (the URL, with the
    /// resolved address in parentheses when the URL names a host).
    pub hub: Option<String>,
}

/// A kind of data, as reported in change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Enum)]
pub enum Collection {
    /// Product metadata.
    Catalog,
    /// Prices.
    Prices,
    /// Stock levels and policies as the hub publishes them (`stock(sku)`).
    Stock,
    /// This device's escrow allowances (`stock(sku).allowance_left`).
    Allowances,
    /// Orders (and, for this device's own sales, their checkout state).
    Orders,
    /// Shopping carts.
    Cart,
    /// Wishlists.
    Wishlist,
    /// Customer profiles.
    Profile,
    /// Browsing history.
    History,
    /// Recommendations.
    Recommendations,
    /// Anything else.
    Other,
}

impl ProductInput {
    /// The core's update: the SKU parsed, only the given fields.
    pub(crate) fn to_core(&self) -> Result<catalog::ProductUpdate> {
        let candidates = [
            (ProductField::Name, &self.name),
            (ProductField::Category, &self.category),
            (ProductField::Barcode, &self.barcode),
            (ProductField::Brand, &self.brand),
            (ProductField::Description, &self.description),
            (ProductField::Status, &self.status),
        ];
        let fields = candidates
            .into_iter()
            .filter_map(|(field, value)| value.clone().map(|value| (field, value)))
            .collect();
        Ok(catalog::ProductUpdate {
            sku: Sku::new(self.sku.as_str())?,
            fields,
        })
    }
}

impl From<customer::CartView> for Cart {
    fn from(cart: customer::CartView) -> Self {
        Cart {
            lines: cart.lines,
            total: cart.total,
            unpriced_lines: cart.unpriced_lines as u64,
        }
    }
}

impl From<&CoreSyncStatus> for SyncStatus {
    fn from(status: &CoreSyncStatus) -> Self {
        SyncStatus {
            link: status.link,
            pending: status.pending,
            oldest_pending_age_ms: status.oldest_pending_age_ms,
            rejected: status.rejected,
            compensations_open: status.compensations_open,
            last_ack_ms: status.last_ack_ms,
            caught_up: status.caught_up,
            last_error: status.last_error.clone(),
            refused_sets: status.refused_sets.clone(),
            hub: status.hub.clone(),
        }
    }
}

impl SyncStatus {
    /// True when the two differ in anything but the pending op's age, which
    /// changes every tick and would flood listeners.
    pub(crate) fn differs_meaningfully(&self, other: &SyncStatus) -> bool {
        let ageless = |status: &SyncStatus| SyncStatus {
            oldest_pending_age_ms: 0,
            ..status.clone()
        };
        ageless(self) != ageless(other)
    }
}

impl Collection {
    /// The collection a document belongs to. Hub records are told apart by
    /// their path: `store.S/rec/stock/...`, `device.D/rec/allowance/...`
    /// (a device's own allowances) and `orders.S/rec/order/...`.
    pub(crate) fn of(doc: &DocId) -> Self {
        match layout::kind_of(doc) {
            DocKind::Catalog => Collection::Catalog,
            DocKind::Prices => Collection::Prices,
            DocKind::Record => {
                let kind = doc.as_str().split('/').nth(2).unwrap_or("");
                match (doc.set().kind(), kind) {
                    (DocSetKind::Store, "stock") => Collection::Stock,
                    (DocSetKind::Device | DocSetKind::Store, "allowance") => Collection::Allowances,
                    (DocSetKind::Orders, "order") => Collection::Orders,
                    _ => Collection::Other,
                }
            }
            DocKind::Cart => Collection::Cart,
            DocKind::Wishlist => Collection::Wishlist,
            DocKind::Profile => Collection::Profile,
            DocKind::History => Collection::History,
            DocKind::Recommendations => Collection::Recommendations,
            DocKind::Other => Collection::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_map_to_collections_by_path() {
        let of = |doc: &str| Collection::of(&DocId::new(doc).unwrap());
        assert_eq!(of("store.berlin-01/catalog/b001"), Collection::Catalog);
        assert_eq!(of("store.berlin-01/prices/b001"), Collection::Prices);
        assert_eq!(of("store.berlin-01/rec/stock/sku-1"), Collection::Stock);
        assert_eq!(
            of("device.till-2/rec/allowance/sku-1"),
            Collection::Allowances
        );
        assert_eq!(
            of("orders.berlin-01/rec/order/till-2-0001"),
            Collection::Orders
        );
        assert_eq!(
            of("store.berlin-01/rec/order/till-2-0001"),
            Collection::Other
        );
        assert_eq!(of("store.berlin-01/rec/mystery/x"), Collection::Other);
        assert_eq!(of("customer.c-1/cart"), Collection::Cart);
        assert_eq!(of("store.berlin-01/manifest"), Collection::Other);
    }

    #[test]
    fn bad_skus_are_invalid_input() {
        let product = ProductInput {
            sku: "bad sku".into(),
            ..ProductInput::default()
        };
        assert!(matches!(
            product.to_core(),
            Err(OmnisyncError::InvalidInput { .. })
        ));
    }
}
