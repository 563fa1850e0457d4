//! The records and enums that cross the FFI boundary, and their conversions
//! from and to the core's types. Inputs arrive as plain strings and numbers
//! and are parsed here into the core's newtypes, so a bad value becomes an
//! [`OmnisyncError::InvalidInput`] instead of reaching the store.

use std::str::FromStr;

use omnisync_core::client::{Link, SyncStatus as CoreSyncStatus};
use omnisync_core::retail::catalog::{self, ProductField};
use omnisync_core::retail::{customer, prices};
use omnisync_core::vocab::goods::{Currency, Sku};
use omnisync_core::vocab::ids::{DocId, DocSetKind, OpId, ReplicaId};
use omnisync_core::vocab::layout::{self, DocKind};

use crate::error::{OmnisyncError, Result};

/// How to open a store on a device.
#[derive(Clone, Debug, uniffi::Record)]
pub struct StoreConfig {
    /// Path of the SQLite database file (created if missing).
    pub path: String,
    /// This device's id, e.g. `till-1` (`A-Z a-z 0-9 - _ .`).
    pub device_id: String,
    /// The store this device belongs to, e.g. `berlin-01`.
    pub store_id: String,
    /// `ws://host:port/v1/sync`, or `wss://` for a hub serving TLS.
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
}

/// An amount of money in minor units (cents) of a currency.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Money {
    /// Minor units: 1899 is 18.99.
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
}

/// Where a price applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Channel {
    /// Tills in the store.
    Pos,
    /// The web shop.
    Web,
    /// The mobile app.
    App,
}

/// A product to create or update; `None` fields are left as they are.
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

/// A product field holding concurrent values, for a conflict screen.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct FieldConflict {
    /// The field name (`name`, `category`, ...).
    pub field: String,
    /// Every concurrent value, sorted.
    pub values: Vec<String>,
}

/// A product as the local query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Product {
    /// The SKU.
    pub sku: String,
    /// Display name.
    pub name: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Barcode.
    pub barcode: Option<String>,
    /// Brand.
    pub brand: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `active`, `archived`, or unset.
    pub status: Option<String>,
    /// Fields with concurrent values.
    pub conflicts: Vec<FieldConflict>,
}

/// A price in force.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Price {
    /// The product.
    pub sku: String,
    /// The channel.
    pub channel: Channel,
    /// From when it applies, ms since the epoch.
    pub effective_from_ms: u64,
    /// The amount.
    pub money: Money,
}

/// A cart line.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CartLine {
    /// Unique line id (use it to change or remove the line).
    pub line_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// Product name, if the catalog has it.
    pub name: Option<String>,
    /// Unit price in force on the channel, if priced.
    pub unit_price: Option<Money>,
}

/// A cart with its total at current prices.
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
    pub op_id: String,
    /// The new line's id.
    pub line_id: String,
}

/// The state of the link to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum LinkState {
    /// Not connected (hub unreachable, switched offline, or sync stopped).
    Offline,
    /// Connecting or waiting for the handshake.
    Connecting,
    /// Handshake done; syncing.
    Online,
}

/// What an app shows about sync.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    /// Link state.
    pub link: LinkState,
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
    pub refused_sets: Vec<String>,
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

impl Channel {
    /// The core's channel.
    pub(crate) fn to_core(self) -> omnisync_core::vocab::goods::Channel {
        match self {
            Channel::Pos => omnisync_core::vocab::goods::Channel::Pos,
            Channel::Web => omnisync_core::vocab::goods::Channel::Web,
            Channel::App => omnisync_core::vocab::goods::Channel::App,
        }
    }

    fn from_core(channel: omnisync_core::vocab::goods::Channel) -> Self {
        match channel {
            omnisync_core::vocab::goods::Channel::Pos => Channel::Pos,
            omnisync_core::vocab::goods::Channel::Web => Channel::Web,
            omnisync_core::vocab::goods::Channel::App => Channel::App,
        }
    }
}

impl Money {
    /// Parses into the core's money (checks the currency code).
    pub(crate) fn to_core(&self) -> Result<omnisync_core::vocab::goods::Money> {
        Ok(omnisync_core::vocab::goods::Money {
            amount_minor: self.amount_minor,
            currency: Currency::new(&self.currency)?,
        })
    }

    pub(crate) fn from_core(money: omnisync_core::vocab::goods::Money) -> Self {
        Money {
            amount_minor: money.amount_minor,
            currency: money.currency.as_str().to_owned(),
        }
    }
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

impl From<catalog::Product> for Product {
    fn from(product: catalog::Product) -> Self {
        Product {
            sku: product.sku,
            name: product.name,
            category: product.category,
            barcode: product.barcode,
            brand: product.brand,
            description: product.description,
            status: product.status,
            conflicts: product
                .conflicts
                .into_iter()
                .map(|conflict| FieldConflict {
                    field: conflict.field.as_str().to_owned(),
                    values: conflict.values,
                })
                .collect(),
        }
    }
}

impl From<prices::Price> for Price {
    fn from(price: prices::Price) -> Self {
        Price {
            sku: price.sku,
            channel: Channel::from_core(price.channel),
            effective_from_ms: price.effective_from_ms,
            money: Money::from_core(price.money),
        }
    }
}

impl From<customer::CartView> for Cart {
    fn from(cart: customer::CartView) -> Self {
        Cart {
            lines: cart
                .lines
                .into_iter()
                .map(|line| CartLine {
                    line_id: line.line_id,
                    sku: line.sku,
                    quantity: line.quantity,
                    name: line.name,
                    unit_price: line.unit_price.map(Money::from_core),
                })
                .collect(),
            total: cart.total.map(Money::from_core),
            unpriced_lines: cart.unpriced_lines as u64,
        }
    }
}

impl From<&CoreSyncStatus> for SyncStatus {
    fn from(status: &CoreSyncStatus) -> Self {
        SyncStatus {
            link: match status.link {
                Link::Offline => LinkState::Offline,
                Link::Connecting => LinkState::Connecting,
                Link::Online => LinkState::Online,
            },
            pending: status.pending,
            oldest_pending_age_ms: status.oldest_pending_age_ms,
            rejected: status.rejected,
            compensations_open: status.compensations_open,
            last_ack_ms: status.last_ack_ms,
            caught_up: status.caught_up,
            last_error: status.last_error.clone(),
            refused_sets: status
                .refused_sets
                .iter()
                .map(|set| set.as_str().to_owned())
                .collect(),
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
                    (DocSetKind::Replica, "stock") => Collection::Stock,
                    (DocSetKind::Device | DocSetKind::Replica, "allowance") => {
                        Collection::Allowances
                    }
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

/// The text form of an op id handed to apps: the full replica id in hex,
/// a colon, the sequence number. (The core's `Display` abbreviates the
/// replica, so it cannot be parsed back.)
pub(crate) fn op_id_text(op: &OpId) -> String {
    format!("{}:{}", op.replica, op.seq)
}

/// Parses [`op_id_text`]'s form.
pub(crate) fn parse_op_id(text: &str) -> Result<OpId> {
    let invalid = || OmnisyncError::InvalidInput {
        detail: format!("op id {text:?} is not REPLICA_HEX:SEQ"),
    };
    let (replica, seq) = text.split_once(':').ok_or_else(invalid)?;
    Ok(OpId {
        replica: ReplicaId::from_str(replica)?,
        seq: seq.parse().map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_round_trip_and_bad_ones_are_typed_errors() {
        let op = OpId {
            replica: ReplicaId([7; 16]),
            seq: 42,
        };
        assert_eq!(parse_op_id(&op_id_text(&op)).unwrap(), op);
        for bad in [
            "",
            "nohex:1",
            "0707:1",
            "07070707070707070707070707070707:x",
        ] {
            assert!(matches!(
                parse_op_id(bad),
                Err(OmnisyncError::InvalidInput { .. })
            ));
        }
    }

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
    fn bad_money_and_skus_are_invalid_input() {
        let money = Money {
            amount_minor: 100,
            currency: "euro".into(),
        };
        assert!(matches!(
            money.to_core(),
            Err(OmnisyncError::InvalidInput { .. })
        ));
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
