//! Strong consistency at the hub: the stock ledger, escrow allowances,
//! checkout intents and versioned order status.
//!
//! What must never go wrong — selling the last unit twice, deciding a
//! checkout twice — is not merged as a CRDT. A device records an [`Intent`]
//! in its op log (durable, offline-safe); the hub decides it once, inside the
//! group commit that stores the op's outcome, and answers with a [`Decision`].
//! A retried op gets the stored decision back; a second intent with the same
//! idempotency key is refused as a duplicate.
//!
//! The hub publishes the results as [`Record`](crate::vocab::record::Record)s: stock levels,
//! terminal allowances and orders, written only by the hub and numbered in
//! its change log like any change, so devices read them offline.
//!
//! This module is the vocabulary both sides share: the intents, the
//! decisions and refusals, the stock policies, and the checks an intent must
//! pass before anyone records or decides it. The ledger and the authority
//! that decide are the hub's (`omnisync-hub-engine`).

use serde::{Deserialize, Serialize};

use crate::vocab::goods::{Channel, Currency, Sku};
use crate::vocab::keys::{IdempotencyKey, OrderId, OrderStatusName, PaymentRef, ReservationKey};

pub use crate::vocab::keys::KEY_BYTES_MAX;

/// Most lines in one checkout.
pub const CHECKOUT_LINES_MAX: usize = 200;
/// Largest quantity of one checkout line.
pub const LINE_QUANTITY_MAX: u64 = 10_000;
/// Largest quantity of one stock command.
pub const STOCK_QUANTITY_MAX: u64 = 1_000_000_000;
/// Longest reason of a stock adjustment.
pub const REASON_BYTES_MAX: usize = KEY_BYTES_MAX;

/// Something only the hub can decide. New variants are added at the end only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Intent {
    /// Sell the lines of a cart.
    Checkout(CheckoutIntent),
    /// A back-office stock command.
    Stock(StockCommand),
    /// Move an order to a new status if it is still at `expected_version`.
    OrderStatus(OrderStatusChange),
    /// Set units aside under a key (web checkout, click and collect).
    Reserve {
        /// Names the reservation; a second reservation with the same key is
        /// refused as a duplicate (a retried op gets its original answer).
        key: ReservationKey,
        /// The product.
        sku: Sku,
        /// Units.
        quantity: u64,
    },
    /// Sell the units of an open reservation.
    CommitReservation {
        /// The reservation.
        key: ReservationKey,
    },
    /// Give the units of an open reservation back.
    CancelReservation {
        /// The reservation.
        key: ReservationKey,
    },
    /// Give unspent allowance back to the hub (answering a recall).
    ReleaseAllowance {
        /// The product.
        sku: Sku,
        /// Units given back.
        quantity: u64,
    },
}

impl Intent {
    /// The hub records this intent's decision will change, for change
    /// notices (the op log lists them as the op's documents).
    pub fn affected_docs(
        &self,
        store: &crate::vocab::ids::StoreId,
        device: &crate::vocab::ids::DeviceId,
    ) -> Vec<crate::vocab::ids::DocId> {
        use crate::vocab::ids::{DocId, DocSetId};
        let stock = |sku: &Sku| {
            DocId::new(format!(
                "{}/rec/stock/{sku}",
                DocSetId::store(store).as_str()
            ))
            .ok()
        };
        let allowance = |sku: &Sku| {
            DocSetId::device(store, device)
                .and_then(|set| DocId::new(format!("{}/rec/allowance/{sku}", set.as_str())).ok())
        };
        let order = |id: &OrderId| {
            DocId::new(format!(
                "{}/rec/order/{id}",
                DocSetId::orders(store).as_str()
            ))
            .ok()
        };
        let mut docs: Vec<DocId> = match self {
            Intent::Checkout(checkout) => checkout
                .lines
                .iter()
                .flat_map(|line| [stock(&line.sku), allowance(&line.sku)])
                .chain([order(&checkout.order_id)])
                .flatten()
                .collect(),
            Intent::Stock(
                StockCommand::Receive { sku, .. }
                | StockCommand::StockTake { sku, .. }
                | StockCommand::Adjust { sku, .. }
                | StockCommand::SetPolicy { sku, .. },
            )
            | Intent::Reserve { sku, .. } => stock(sku).into_iter().collect(),
            Intent::ReleaseAllowance { sku, .. } => {
                [stock(sku), allowance(sku)].into_iter().flatten().collect()
            }
            Intent::OrderStatus(change) => order(&change.order_id).into_iter().collect(),
            Intent::CommitReservation { .. } | Intent::CancelReservation { .. } => Vec::new(),
        };
        docs.sort();
        docs.dedup();
        docs
    }

    /// A short description for op lists and logs.
    pub fn describe(&self) -> String {
        match self {
            Intent::Checkout(checkout) => format!("checkout {}", checkout.order_id),
            Intent::Stock(StockCommand::Receive { sku, quantity, .. }) => {
                format!("receive {quantity} x {sku}")
            }
            Intent::Stock(StockCommand::StockTake { sku, counted, .. }) => {
                format!("stock-take {sku} = {counted}")
            }
            Intent::Stock(StockCommand::Adjust { sku, delta, .. }) => {
                format!("adjust {sku} by {delta}")
            }
            Intent::Stock(StockCommand::SetPolicy { sku, .. }) => format!("policy {sku}"),
            Intent::OrderStatus(change) => {
                format!("order {} -> {}", change.order_id, change.status)
            }
            Intent::Reserve { key, .. } => format!("reserve {key}"),
            Intent::CommitReservation { key } => format!("commit {key}"),
            Intent::CancelReservation { key } => format!("cancel {key}"),
            Intent::ReleaseAllowance { sku, quantity } => format!("release {quantity} x {sku}"),
        }
    }
}

/// A checkout as the till or app saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckoutIntent {
    /// The order this checkout creates (unique in the store).
    pub order_id: OrderId,
    /// The app's idempotency key: a second intent with it is a duplicate.
    pub idempotency_key: IdempotencyKey,
    /// What is sold.
    pub lines: Vec<IntentLine>,
    /// Currency of the prices seen.
    pub currency: Currency,
    /// The payment's reference (card terminal, wallet).
    pub payment_ref: PaymentRef,
    /// Where the sale happens (selects the price list checked).
    pub channel: Channel,
}

/// One line of a checkout intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentLine {
    /// The product.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// The unit price the customer was shown, minor units.
    pub unit_price_minor: i64,
    /// How the device covered the line when it recorded the sale.
    pub source: LineSource,
}

/// How a device covered a checkout line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum LineSource {
    /// From the terminal's own escrow allowance: already decided, safe offline.
    Allowance,
    /// Online, for the hub to decide now.
    Hub,
    /// Offline under a `provisional` policy: at risk until the hub decides.
    Provisional,
}

impl LineSource {
    /// Stable text form.
    pub fn as_str(&self) -> &'static str {
        match self {
            LineSource::Allowance => "allowance",
            LineSource::Hub => "hub",
            LineSource::Provisional => "provisional",
        }
    }
}

/// Back-office stock commands. `key` makes each one idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockCommand {
    /// Goods received.
    Receive {
        /// Idempotency key (e.g. the delivery note).
        key: IdempotencyKey,
        /// The product.
        sku: Sku,
        /// Units received.
        quantity: u64,
    },
    /// A count of the shelf: the counted units become the on-hand count.
    StockTake {
        /// Idempotency key.
        key: IdempotencyKey,
        /// The product.
        sku: Sku,
        /// Units counted.
        counted: u64,
    },
    /// A correction by `delta` units (negative: damaged, stolen).
    Adjust {
        /// Idempotency key.
        key: IdempotencyKey,
        /// The product.
        sku: Sku,
        /// Units added (positive) or written off (negative).
        delta: i64,
        /// Why.
        reason: String,
    },
    /// When sales of the SKU need the hub, and what a till does offline then.
    SetPolicy {
        /// The product.
        sku: Sku,
        /// The policy.
        policy: StockPolicy,
    },
}

/// When sales need the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct StockPolicy {
    /// At or below this many units on hand the SKU is in strong mode.
    pub strong_at_or_below: u64,
    /// What a till does in strong mode while offline.
    pub offline: OfflinePolicy,
}

/// Default strong-mode threshold for a SKU without a policy.
pub const DEFAULT_STRONG_AT_OR_BELOW: u64 = 5;

impl Default for StockPolicy {
    fn default() -> Self {
        Self {
            strong_at_or_below: DEFAULT_STRONG_AT_OR_BELOW,
            offline: OfflinePolicy::Block,
        }
    }
}

/// What a till does with a strong-mode SKU while offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum OfflinePolicy {
    /// Refuse the sale and say why.
    Block,
    /// Accept the sale, flag it at risk, let the hub decide on reconnect.
    Provisional,
}

impl OfflinePolicy {
    /// Stable text form.
    pub fn as_str(&self) -> &'static str {
        match self {
            OfflinePolicy::Block => "block",
            OfflinePolicy::Provisional => "provisional",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "block" => Some(OfflinePolicy::Block),
            "provisional" => Some(OfflinePolicy::Provisional),
            _ => None,
        }
    }
}

/// Whether a SKU is sold from allowances or decided at the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum StockMode {
    /// Well stocked: terminals sell from their allowances.
    Escrow,
    /// Low: every sale needs the hub.
    Strong,
}

impl StockMode {
    /// Stable text form.
    pub fn as_str(&self) -> &'static str {
        match self {
            StockMode::Escrow => "escrow",
            StockMode::Strong => "strong",
        }
    }

    /// Parses the text form strictly: anything but `escrow` or `strong` is
    /// `None`, never a guess.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "escrow" => Some(StockMode::Escrow),
            "strong" => Some(StockMode::Strong),
            _ => None,
        }
    }
}

/// A versioned order status change (optimistic concurrency).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusChange {
    /// The order.
    pub order_id: OrderId,
    /// The version the change is based on.
    pub expected_version: u64,
    /// The new status (`paid`, `fulfilled`, `returned`, ...).
    pub status: OrderStatusName,
}

/// The hub's decision on an intent; durable, and repeated to a retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The checkout is an order now.
    Confirmed {
        /// The store's order number.
        order_no: u64,
    },
    /// A provisional sale: the order stands, but these lines were not
    /// covered by stock. The device opens a compensation task for them.
    Short {
        /// The store's order number.
        order_no: u64,
        /// The lines (or parts of lines) not covered.
        lines: Vec<ShortLine>,
    },
    /// A command took effect; `version` is the new version of what it changed.
    Applied {
        /// New version of the ledger entry or order.
        version: u64,
    },
    /// Refused; nothing changed.
    Refused(Refusal),
}

/// Units of a line the hub could not cover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct ShortLine {
    /// The product.
    pub sku: Sku,
    /// Units not covered.
    pub quantity: u64,
}

/// Why the hub refused an intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Not enough free stock.
    OutOfStock {
        /// The SKU that ran out (empty inside the ledger arithmetic).
        sku: String,
        /// Units that were free.
        available: u64,
    },
    /// The price the customer saw differs from the price in force by more
    /// than the tolerance.
    PriceChanged {
        /// The SKU.
        sku: String,
        /// The price in force, minor units.
        current_minor: i64,
    },
    /// The idempotency key or order id was used by an earlier intent.
    Duplicate {
        /// The earlier order's number, if it became one.
        order_no: Option<u64>,
    },
    /// The order moved on since the version the change was based on.
    VersionConflict {
        /// The order's version now.
        current: u64,
    },
    /// The order or reservation does not exist (or is no longer open).
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A terminal gave back or spent more allowance than it holds.
    AllowanceExceeded {
        /// The SKU (empty inside the ledger arithmetic).
        sku: String,
        /// Units it holds.
        held: u64,
    },
    /// The intent breaks a rule (bad quantity, empty checkout, ...).
    Invalid {
        /// Why.
        detail: String,
    },
}

impl Refusal {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::OutOfStock { .. } => "out-of-stock",
            Refusal::PriceChanged { .. } => "price-changed",
            Refusal::Duplicate { .. } => "duplicate",
            Refusal::VersionConflict { .. } => "version-conflict",
            Refusal::NotFound { .. } => "not-found",
            Refusal::AllowanceExceeded { .. } => "allowance-exceeded",
            Refusal::Invalid { .. } => "invalid",
        }
    }

    /// The refusal as it applies to one line of a checkout (`sku`).
    pub fn for_sku(self, sku: &Sku) -> Self {
        match self {
            Refusal::OutOfStock { available, .. } => Refusal::OutOfStock {
                sku: sku.to_string(),
                available,
            },
            Refusal::AllowanceExceeded { held, .. } => Refusal::AllowanceExceeded {
                sku: sku.to_string(),
                held,
            },
            other => other,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::OutOfStock { sku, available } => {
                write!(f, "out of stock: {sku} has {available} free")
            }
            Refusal::PriceChanged { sku, current_minor } => {
                write!(f, "price of {sku} changed to {current_minor}")
            }
            Refusal::Duplicate { order_no: Some(no) } => write!(f, "duplicate of order #{no}"),
            Refusal::Duplicate { order_no: None } => write!(f, "duplicate"),
            Refusal::VersionConflict { current } => {
                write!(f, "version conflict: the order is at version {current}")
            }
            Refusal::NotFound { what } => write!(f, "{what} not found"),
            Refusal::AllowanceExceeded { sku, held } => {
                write!(f, "allowance of {sku} exceeded: {held} held")
            }
            Refusal::Invalid { detail } => write!(f, "invalid: {detail}"),
        }
    }
}

/// Why an intent breaks a rule no identifier type can express (an empty
/// checkout, a quantity out of range, ...). The hub refuses such an intent
/// as [`Refusal::Invalid`]; a device records nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIntent(pub String);

impl From<InvalidIntent> for Refusal {
    fn from(invalid: InvalidIntent) -> Self {
        Refusal::Invalid { detail: invalid.0 }
    }
}

impl CheckoutIntent {
    /// The checks a checkout must pass before anyone records or decides it:
    /// the one function the device (before recording), the hub (before
    /// deciding bytes from the wire) and the bindings rely on. Its ids,
    /// keys and references are typed and valid already.
    pub fn validate(&self) -> Result<(), InvalidIntent> {
        if self.lines.is_empty() || self.lines.len() > CHECKOUT_LINES_MAX {
            return Err(InvalidIntent(format!(
                "a checkout has 1 to {CHECKOUT_LINES_MAX} lines"
            )));
        }
        for line in &self.lines {
            if line.quantity == 0 || line.quantity > LINE_QUANTITY_MAX {
                return Err(InvalidIntent(format!(
                    "line for {} has quantity {}; 1 to {LINE_QUANTITY_MAX} allowed",
                    line.sku, line.quantity
                )));
            }
            if line.unit_price_minor < 0 {
                return Err(InvalidIntent(format!(
                    "line for {} has a negative price",
                    line.sku
                )));
            }
        }
        Ok(())
    }
}

impl StockCommand {
    /// The checks of a stock command that need no state; the device (before
    /// recording) and the hub (before deciding) both call this one function.
    pub fn validate(&self) -> Result<(), InvalidIntent> {
        let units = match self {
            StockCommand::Receive { quantity, .. } => *quantity,
            StockCommand::StockTake { counted, .. } => *counted,
            StockCommand::Adjust { delta, reason, .. } => {
                if reason.len() > REASON_BYTES_MAX || reason.chars().any(char::is_control) {
                    return Err(InvalidIntent(format!(
                        "an adjustment's reason is at most {REASON_BYTES_MAX} bytes without control characters"
                    )));
                }
                delta.unsigned_abs()
            }
            StockCommand::SetPolicy { .. } => return Ok(()),
        };
        if units > STOCK_QUANTITY_MAX {
            return Err(InvalidIntent(format!(
                "{units} units is more than {STOCK_QUANTITY_MAX}"
            )));
        }
        Ok(())
    }
}

/// The checks of a reservation's quantity; the device and the hub both call
/// this one function.
pub fn validate_reservation(quantity: u64) -> Result<(), InvalidIntent> {
    if quantity == 0 || quantity > LINE_QUANTITY_MAX {
        return Err(InvalidIntent(format!(
            "a reservation is of 1 to {LINE_QUANTITY_MAX} units"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(lines: Vec<IntentLine>) -> CheckoutIntent {
        CheckoutIntent {
            order_id: OrderId::new("o-1").unwrap(),
            idempotency_key: IdempotencyKey::new("o-1").unwrap(),
            lines,
            currency: Currency::new("EUR").unwrap(),
            payment_ref: PaymentRef::new("card-1").unwrap(),
            channel: Channel::Pos,
        }
    }

    fn line(quantity: u64, unit_price_minor: i64) -> IntentLine {
        IntentLine {
            sku: Sku::new("tea").unwrap(),
            quantity,
            unit_price_minor,
            source: LineSource::Hub,
        }
    }

    #[test]
    fn a_checkout_is_validated_by_one_function() {
        assert!(checkout(vec![line(1, 100)]).validate().is_ok());
        let empty = checkout(Vec::new()).validate().unwrap_err();
        assert!(empty.to_string().contains("1 to 200 lines"), "{empty}");
        assert!(checkout(vec![line(0, 100)]).validate().is_err());
        assert!(
            checkout(vec![line(LINE_QUANTITY_MAX + 1, 100)])
                .validate()
                .is_err()
        );
        let negative = checkout(vec![line(1, -1)]).validate().unwrap_err();
        assert!(
            negative.to_string().contains("negative price"),
            "{negative}"
        );
        assert!(
            checkout(vec![line(1, 1); CHECKOUT_LINES_MAX + 1])
                .validate()
                .is_err()
        );
        assert_eq!(
            Refusal::from(InvalidIntent("why".into())),
            Refusal::Invalid {
                detail: "why".into()
            }
        );
    }

    #[test]
    fn stock_commands_and_reservations_are_validated_by_one_function() {
        let key = IdempotencyKey::new("delivery-1").unwrap();
        let sku = Sku::new("tea").unwrap();
        let receive = |quantity| StockCommand::Receive {
            key: key.clone(),
            sku: sku.clone(),
            quantity,
        };
        assert!(receive(STOCK_QUANTITY_MAX).validate().is_ok());
        assert!(receive(STOCK_QUANTITY_MAX + 1).validate().is_err());
        let adjust = |reason: &str| StockCommand::Adjust {
            key: key.clone(),
            sku: sku.clone(),
            delta: -1,
            reason: reason.to_owned(),
        };
        assert!(adjust("damaged").validate().is_ok());
        assert!(adjust("damaged\n").validate().is_err());
        assert!(
            adjust(&"x".repeat(REASON_BYTES_MAX + 1))
                .validate()
                .is_err()
        );
        assert!(validate_reservation(1).is_ok());
        assert!(validate_reservation(0).is_err());
        assert!(validate_reservation(LINE_QUANTITY_MAX + 1).is_err());
    }

    #[test]
    fn an_intent_with_a_bad_key_does_not_decode() {
        let intent = Intent::Reserve {
            key: ReservationKey::new("web-1").unwrap(),
            sku: Sku::new("tea").unwrap(),
            quantity: 1,
        };
        let bytes = postcard::to_stdvec(&intent).unwrap();
        assert_eq!(postcard::from_bytes::<Intent>(&bytes).unwrap(), intent);
        // The same intent with an empty key, as a hostile device could send it.
        #[derive(Serialize)]
        enum RawIntent {
            _Checkout,
            _Stock,
            _OrderStatus,
            Reserve {
                key: String,
                sku: String,
                quantity: u64,
            },
        }
        let raw = postcard::to_stdvec(&RawIntent::Reserve {
            key: String::new(),
            sku: "tea".into(),
            quantity: 1,
        })
        .unwrap();
        assert!(postcard::from_bytes::<Intent>(&raw).is_err());
    }
}
