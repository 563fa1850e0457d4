//! The records and enums that cross the FFI boundary, and their conversions
//! from and to the core's types. Inputs arrive as plain strings and numbers
//! and are parsed here into the core's newtypes, so a bad value becomes an
//! [`OmnisyncError::InvalidInput`] instead of reaching the store.

use std::str::FromStr;

use omnisync_core::domain::catalog::{self, ProductField};
use omnisync_core::domain::{Currency, Sku, customer, orders, prices};
use omnisync_core::ids::{OpId, ReplicaId};
use omnisync_core::net::{Link, SyncStatus as CoreSyncStatus};
use omnisync_core::store::OpStatus;

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

/// One line of an order to create.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct OrderLineInput {
    /// The product.
    pub sku: String,
    /// How many (at least 1).
    pub quantity: i64,
    /// Unit price charged, minor units (not negative).
    pub unit_price_minor: i64,
}

/// An order as the local query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct OrderSummary {
    /// The order id.
    pub order_id: String,
    /// Current status (`completed`, `paid`, ...).
    pub status: String,
    /// Current version (starts at 1).
    pub version: u64,
    /// Order total.
    pub total: Money,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// True when concurrent status changes wait to be settled.
    pub conflicted: bool,
}

/// Where a local op is in its life: the hub's verdict on it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum OpState {
    /// Durable on this device, not yet at the hub.
    Pending,
    /// Durable at the hub.
    Acknowledged {
        /// When the acknowledgement was recorded, ms since the epoch.
        acked_ms: u64,
    },
    /// Refused by the hub; kept in the dead-letter lane.
    Rejected {
        /// The hub's reason code.
        code: String,
        /// The hub's explanation.
        detail: String,
    },
    /// No op with this id exists in this store.
    Unknown,
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
    /// When the last acknowledgement arrived, ms since the epoch.
    pub last_ack_ms: Option<u64>,
    /// True when every followed set has reached the hub's head since connecting.
    pub caught_up: bool,
    /// The last connection error, if the link is down because of one.
    pub last_error: Option<String>,
}

/// A kind of data, as reported in change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Enum)]
pub enum Collection {
    /// Product metadata.
    Catalog,
    /// Prices.
    Prices,
    /// Stock levels.
    Stock,
    /// Orders.
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
    pub(crate) fn to_core(self) -> omnisync_core::domain::Channel {
        match self {
            Channel::Pos => omnisync_core::domain::Channel::Pos,
            Channel::Web => omnisync_core::domain::Channel::Web,
            Channel::App => omnisync_core::domain::Channel::App,
        }
    }

    fn from_core(channel: omnisync_core::domain::Channel) -> Self {
        match channel {
            omnisync_core::domain::Channel::Pos => Channel::Pos,
            omnisync_core::domain::Channel::Web => Channel::Web,
            omnisync_core::domain::Channel::App => Channel::App,
        }
    }
}

impl Money {
    /// Parses into the core's money (checks the currency code).
    pub(crate) fn to_core(&self) -> Result<omnisync_core::domain::Money> {
        Ok(omnisync_core::domain::Money {
            amount_minor: self.amount_minor,
            currency: Currency::new(&self.currency)?,
        })
    }

    pub(crate) fn from_core(money: omnisync_core::domain::Money) -> Self {
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

impl OrderLineInput {
    /// The core's order line, the SKU parsed.
    pub(crate) fn to_core(&self) -> Result<orders::OrderLine> {
        Ok(orders::OrderLine {
            sku: Sku::new(self.sku.as_str())?,
            quantity: self.quantity,
            unit_price_minor: self.unit_price_minor,
        })
    }
}

impl From<orders::OrderSummary> for OrderSummary {
    fn from(order: orders::OrderSummary) -> Self {
        OrderSummary {
            order_id: order.order_id,
            status: order.status,
            version: order.version,
            total: Money::from_core(order.total),
            created_ms: order.created_ms,
            conflicted: order.conflicted,
        }
    }
}

impl From<Option<OpStatus>> for OpState {
    fn from(status: Option<OpStatus>) -> Self {
        match status {
            None => OpState::Unknown,
            Some(OpStatus::Pending) => OpState::Pending,
            Some(OpStatus::Acknowledged { acked_ms }) => OpState::Acknowledged { acked_ms },
            Some(OpStatus::Rejected { code, detail }) => OpState::Rejected { code, detail },
            // A verdict this build does not know yet: treat it as still open.
            Some(_) => OpState::Pending,
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
            last_ack_ms: status.last_ack_ms,
            caught_up: status.caught_up,
            last_error: status.last_error.clone(),
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

impl From<omnisync_core::domain::layout::DocKind> for Collection {
    fn from(kind: omnisync_core::domain::layout::DocKind) -> Self {
        use omnisync_core::domain::layout::DocKind;
        match kind {
            DocKind::Catalog => Collection::Catalog,
            DocKind::Prices => Collection::Prices,
            DocKind::Stock => Collection::Stock,
            DocKind::Orders => Collection::Orders,
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
