//! Checkout and stock-command input, the checkout receipt and the lifecycle
//! of an op, and their conversions from and to the core's ledger types (in
//! this file only). Stock views, orders, order lines, compensations, line
//! sources, stock modes and policies cross the FFI as the core defines them
//! (feature `ffi` of `omnisync-core`), with unsigned counts.
//!
//! Unit counts from the app arrive as `i64` (a Kotlin `Long`, like cart
//! quantities) and are checked here: a negative, zero or too large count is
//! an [`OmnisyncError::InvalidInput`], never a panic or a silent clamp.

use omnisync_core::db::OpStatus;
use omnisync_core::retail::orders::{self, CheckoutRequest};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::ids::OpId;
use omnisync_core::vocab::intent::{
    Decision, KEY_BYTES_MAX, LINE_QUANTITY_MAX, LineSource, OfflinePolicy, Refusal,
    STOCK_QUANTITY_MAX, StockCommand, StockPolicy,
};
use omnisync_core::vocab::record::describe_decision;

use crate::error::{OmnisyncError, Result};

/// One line of a checkout.
///
/// A separate FFI input (like [`CheckoutInput`]): the app's text and signed
/// numbers are checked in `to_core`, so a bad SKU, a zero or negative
/// quantity or a negative price is a typed `InvalidInput`. Crossing as the
/// core's `OrderLine` (a `Sku` and an unsigned quantity), a malformed SKU
/// would fail UniFFI's lift with an untyped internal error instead.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct OrderLineInput {
    /// The product.
    pub sku: String,
    /// Units, 1 to 10,000.
    pub quantity: i64,
    /// Unit price shown to the customer, minor units (not negative). The hub
    /// refuses an online sale whose price differs from the price in force.
    pub unit_price_minor: i64,
}

/// A sale to record at the till (see `OmnisyncStore::checkout`).
///
/// A separate FFI input rather than the core's `CheckoutRequest`: ids,
/// currency and lines arrive as text and signed numbers and are parsed in
/// `to_core` (typed `InvalidInput` errors), and the optional fields have
/// defaults for Kotlin, Swift and Python callers.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CheckoutInput {
    /// The order id, unique in the store, e.g. `till-2-000042`
    /// (`A-Z a-z 0-9 - _ .`).
    pub order_id: String,
    /// What is sold (1 to 200 lines).
    pub lines: Vec<OrderLineInput>,
    /// ISO 4217 code of the prices, e.g. `EUR`.
    pub currency: String,
    /// Where the sale happens (selects the price list the hub checks).
    pub channel: Channel,
    /// The payment's reference (card terminal, wallet); up to 128 bytes.
    #[uniffi(default = "")]
    pub payment_ref: String,
    /// The app's idempotency key (default: the order id). Checking out again
    /// with a used key returns the first receipt with `repeated` set.
    #[uniffi(default = None)]
    pub idempotency_key: Option<String>,
}

/// How one checkout line was covered.
///
/// Exists because the core's receipt lists its lines as `(Sku, u64,
/// LineSource)` tuples, which UniFFI cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ReceiptLine {
    /// The product.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// Allowance, hub or provisional.
    pub source: LineSource,
}

/// What the till may tell the cashier right after checkout.
///
/// A separate FFI type because the core's `CheckoutReceipt` holds its lines
/// as tuples (see [`ReceiptLine`]); converted in one place, `From` below.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CheckoutReceipt {
    /// The op carrying the sale: its `op_state` is the sale's lifecycle
    /// (pending, then confirmed with the order number, refused, or compensation).
    pub op_id: OpId,
    /// The order id.
    pub order_id: String,
    /// How each line was covered.
    pub lines: Vec<ReceiptLine>,
    /// Some line waits for the hub's decision (online, not covered by the allowance).
    pub needs_hub: bool,
    /// Some line was sold provisionally (offline); the hub may not cover it.
    pub at_risk: bool,
    /// This key was checked out before and this is that checkout's receipt.
    pub repeated: bool,
}

/// Where a local op is in its life.
///
/// Plain writes (catalog, prices, carts) go `Pending` → `Acknowledged` (or
/// `Rejected`). Intents the hub decides — checkouts, stock commands, order
/// status changes — go `Pending` → `Confirmed` or `Refused`; a provisional
/// sale the hub could not cover goes to `Compensation` and, once resolved,
/// `Compensated`.
///
/// A separate FFI type: a flat summary of the core's `Option<OpStatus>`
/// (`Unknown` for `None`), which nests the hub's `Decision` and `Refusal`
/// (enums with tuple variants and internal detail) and is `non_exhaustive`;
/// converted in one place, `From` below.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum OpState {
    /// Durable on this device, not yet decided by the hub.
    Pending,
    /// Durable at the hub (plain writes).
    Acknowledged {
        /// When the acknowledgement was recorded, ms since the epoch.
        acked_ms: u64,
    },
    /// Refused by the hub as malformed or forbidden; kept in the dead-letter lane.
    Rejected {
        /// The hub's reason code.
        code: String,
        /// The hub's explanation.
        detail: String,
    },
    /// The hub accepted the intent.
    Confirmed {
        /// A checkout's order number.
        order_no: Option<u64>,
        /// The new version of what a command changed (stock entry, order status).
        version: Option<u64>,
    },
    /// The hub refused the intent for a business reason; nothing was sold or changed.
    Refused {
        /// `out-of-stock`, `price-changed`, `duplicate`, `version-conflict`,
        /// `not-found`, `allowance-exceeded` or `invalid`.
        code: String,
        /// The explanation, for staff.
        detail: String,
    },
    /// A provisional sale the hub could not cover: see `compensations()`.
    Compensation {
        /// The order number, if the order stands.
        order_no: Option<u64>,
        /// The hub's decision, for staff.
        detail: String,
    },
    /// The compensation task was resolved.
    Compensated {
        /// The order number, if the order stands.
        order_no: Option<u64>,
    },
    /// No op with this id exists in this store.
    Unknown,
}

/// A count of units from the app, checked against `min..=max`.
pub(crate) fn units(what: &str, value: i64, min: u64, max: u64) -> Result<u64> {
    u64::try_from(value)
        .ok()
        .filter(|units| (min..=max).contains(units))
        .ok_or_else(|| OmnisyncError::InvalidInput {
            detail: format!("{what} must be {min} to {max}, not {value}"),
        })
}

/// Free text the hub stores as a key (idempotency keys, reasons, payment
/// references): at most 128 bytes, no control characters; empty only if allowed.
pub(crate) fn key_text(what: &str, value: &str, may_be_empty: bool) -> Result<()> {
    if (value.is_empty() && !may_be_empty)
        || value.len() > KEY_BYTES_MAX
        || value.chars().any(char::is_control)
    {
        let least = if may_be_empty { 0 } else { 1 };
        return Err(OmnisyncError::InvalidInput {
            detail: format!(
                "{what} must be {least} to {KEY_BYTES_MAX} bytes without control characters"
            ),
        });
    }
    Ok(())
}

fn parse_sku(sku: &str) -> Result<Sku> {
    Ok(Sku::new(sku)?)
}

/// A goods receipt.
pub(crate) fn receive_command(sku: &str, quantity: i64, key: &str) -> Result<StockCommand> {
    Ok(StockCommand::Receive {
        key: key.parse()?,
        sku: parse_sku(sku)?,
        quantity: units("quantity received", quantity, 1, STOCK_QUANTITY_MAX)?,
    })
}

/// A stock-take.
pub(crate) fn stock_take_command(sku: &str, counted: i64, key: &str) -> Result<StockCommand> {
    Ok(StockCommand::StockTake {
        key: key.parse()?,
        sku: parse_sku(sku)?,
        counted: units("units counted", counted, 0, STOCK_QUANTITY_MAX)?,
    })
}

/// A correction by `delta` units.
pub(crate) fn adjust_command(
    sku: &str,
    delta: i64,
    reason: &str,
    key: &str,
) -> Result<StockCommand> {
    key_text("reason", reason, false)?;
    if delta == 0 || delta.unsigned_abs() > STOCK_QUANTITY_MAX {
        return Err(OmnisyncError::InvalidInput {
            detail: format!(
                "an adjustment must be 1 to {STOCK_QUANTITY_MAX} units either way, not {delta}"
            ),
        });
    }
    Ok(StockCommand::Adjust {
        key: key.parse()?,
        sku: parse_sku(sku)?,
        delta,
        reason: reason.to_owned(),
    })
}

/// A SKU's policy.
pub(crate) fn policy_command(
    sku: &str,
    strong_at_or_below: i64,
    offline_policy: &str,
) -> Result<StockCommand> {
    let offline =
        OfflinePolicy::parse(offline_policy).ok_or_else(|| OmnisyncError::InvalidInput {
            detail: format!("offline policy {offline_policy:?} is not `block` or `provisional`"),
        })?;
    Ok(StockCommand::SetPolicy {
        sku: parse_sku(sku)?,
        policy: StockPolicy {
            strong_at_or_below: units(
                "strong-mode threshold",
                strong_at_or_below,
                0,
                STOCK_QUANTITY_MAX,
            )?,
            offline,
        },
    })
}

impl CheckoutInput {
    /// The core's request, every field checked.
    pub(crate) fn to_core(&self) -> Result<CheckoutRequest> {
        // Ids, keys and references are parsed here; the lines are checked
        // by the core's one checkout rule (`CheckoutRequest::to_intent`).
        let order_id = self.order_id.parse()?;
        let idempotency_key = self
            .idempotency_key
            .as_deref()
            .map(str::parse)
            .transpose()?;
        let payment_ref = self.payment_ref.parse()?;
        let lines = self
            .lines
            .iter()
            .map(OrderLineInput::to_core)
            .collect::<Result<Vec<_>>>()?;
        lines
            .iter()
            .try_fold(0i64, |sum, line| {
                line.unit_price_minor
                    .checked_mul(line.quantity as i64)
                    .and_then(|amount| sum.checked_add(amount))
            })
            .ok_or_else(|| OmnisyncError::InvalidInput {
                detail: "the order total overflows".into(),
            })?;
        let request = CheckoutRequest {
            order_id,
            idempotency_key,
            lines,
            currency: Currency::new(&self.currency)?,
            payment_ref,
            channel: self.channel,
        };
        request
            .to_intent()
            .map_err(|invalid| OmnisyncError::InvalidInput { detail: invalid.0 })?;
        Ok(request)
    }
}

impl OrderLineInput {
    /// The core's line, SKU, quantity and price checked.
    pub(crate) fn to_core(&self) -> Result<orders::OrderLine> {
        let sku = parse_sku(&self.sku)?;
        if self.unit_price_minor < 0 {
            return Err(OmnisyncError::InvalidInput {
                detail: format!(
                    "the unit price of {sku} is negative ({})",
                    self.unit_price_minor
                ),
            });
        }
        Ok(orders::OrderLine {
            quantity: units(
                &format!("the quantity of {sku}"),
                self.quantity,
                1,
                LINE_QUANTITY_MAX,
            )?,
            sku,
            unit_price_minor: self.unit_price_minor,
        })
    }
}

impl From<orders::CheckoutReceipt> for CheckoutReceipt {
    fn from(receipt: orders::CheckoutReceipt) -> Self {
        CheckoutReceipt {
            op_id: receipt.op,
            order_id: receipt.order_id.into(),
            lines: receipt
                .lines
                .into_iter()
                .map(|(sku, quantity, source)| ReceiptLine {
                    sku,
                    quantity,
                    source,
                })
                .collect(),
            needs_hub: receipt.needs_hub,
            at_risk: receipt.at_risk,
            repeated: receipt.repeated,
        }
    }
}

/// The order number a decision gave, if any.
pub(crate) fn order_no_of(decision: &Decision) -> Option<u64> {
    match decision {
        Decision::Confirmed { order_no } | Decision::Short { order_no, .. } => Some(*order_no),
        Decision::Refused(Refusal::Duplicate { order_no }) => *order_no,
        Decision::Applied { .. } | Decision::Refused(_) => None,
    }
}

fn refused(refusal: &Refusal) -> OpState {
    OpState::Refused {
        code: refusal.code().to_owned(),
        detail: refusal.to_string(),
    }
}

impl From<Option<OpStatus>> for OpState {
    fn from(status: Option<OpStatus>) -> Self {
        match status {
            None => OpState::Unknown,
            Some(OpStatus::Pending) => OpState::Pending,
            Some(OpStatus::Acknowledged { acked_ms }) => OpState::Acknowledged { acked_ms },
            Some(OpStatus::Rejected { code, detail }) => OpState::Rejected {
                code: code.as_str().to_owned(),
                detail,
            },
            Some(OpStatus::Refused { refusal }) => refused(&refusal),
            Some(OpStatus::Confirmed { decision }) => match decision {
                Decision::Refused(refusal) => refused(&refusal),
                Decision::Applied { version } => OpState::Confirmed {
                    order_no: None,
                    version: Some(version),
                },
                other => OpState::Confirmed {
                    order_no: order_no_of(&other),
                    version: None,
                },
            },
            Some(OpStatus::Compensation { decision }) => OpState::Compensation {
                order_no: order_no_of(&decision),
                detail: describe_decision(&decision),
            },
            Some(OpStatus::Compensated { decision }) => OpState::Compensated {
                order_no: order_no_of(&decision),
            },
            // A state this build does not know yet: treat it as still open.
            Some(_) => OpState::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(OmnisyncError::InvalidInput { .. }))
    }

    #[test]
    fn stock_commands_check_every_field() {
        assert!(receive_command("sku-1", 5, "delivery-1").is_ok());
        assert!(invalid(receive_command("bad sku", 5, "delivery-1")));
        assert!(invalid(receive_command("sku-1", 0, "delivery-1")));
        assert!(invalid(receive_command("sku-1", -5, "delivery-1")));
        assert!(invalid(receive_command("sku-1", i64::MAX, "delivery-1")));
        assert!(invalid(receive_command("sku-1", 5, "")));
        assert!(invalid(receive_command("sku-1", 5, &"k".repeat(129))));
        assert!(invalid(receive_command("sku-1", 5, "line\nbreak")));
        assert!(stock_take_command("sku-1", 0, "count-1").is_ok());
        assert!(invalid(stock_take_command("sku-1", -1, "count-1")));
        assert!(adjust_command("sku-1", -2, "damaged", "adj-1").is_ok());
        for delta in [0, i64::MIN, i64::MAX] {
            assert!(invalid(adjust_command("sku-1", delta, "damaged", "adj-1")));
        }
        assert!(invalid(adjust_command("sku-1", -2, "", "adj-1")));
        assert!(policy_command("sku-1", 3, "block").is_ok());
        assert!(policy_command("sku-1", 0, "provisional").is_ok());
        assert!(invalid(policy_command("sku-1", 3, "Block")));
        assert!(invalid(policy_command("sku-1", -1, "block")));
    }

    #[test]
    fn checkouts_check_every_field() {
        let line = |quantity, unit_price_minor| OrderLineInput {
            sku: "sku-1".into(),
            quantity,
            unit_price_minor,
        };
        let input = CheckoutInput {
            order_id: "till-1-0001".into(),
            lines: vec![line(2, 150)],
            currency: "EUR".into(),
            channel: Channel::Pos,
            payment_ref: "card-1".into(),
            idempotency_key: None,
        };
        let request = input.to_core().unwrap();
        assert_eq!(request.lines[0].quantity, 2);
        for bad in [
            CheckoutInput {
                order_id: "bad id".into(),
                ..input.clone()
            },
            CheckoutInput {
                lines: Vec::new(),
                ..input.clone()
            },
            CheckoutInput {
                lines: vec![line(0, 150)],
                ..input.clone()
            },
            CheckoutInput {
                lines: vec![line(-1, 150)],
                ..input.clone()
            },
            CheckoutInput {
                lines: vec![line(10_001, 150)],
                ..input.clone()
            },
            CheckoutInput {
                lines: vec![line(2, -1)],
                ..input.clone()
            },
            CheckoutInput {
                lines: vec![line(10_000, i64::MAX / 2)],
                ..input.clone()
            },
            CheckoutInput {
                currency: "euro".into(),
                ..input.clone()
            },
            CheckoutInput {
                payment_ref: "p".repeat(129),
                ..input.clone()
            },
            CheckoutInput {
                idempotency_key: Some(String::new()),
                ..input.clone()
            },
        ] {
            assert!(invalid(bad.to_core()), "{bad:?}");
        }
    }

    #[test]
    fn op_states_are_flat() {
        let confirmed = OpState::from(Some(OpStatus::Confirmed {
            decision: Decision::Confirmed { order_no: 7 },
        }));
        assert_eq!(
            confirmed,
            OpState::Confirmed {
                order_no: Some(7),
                version: None
            }
        );
        let refused = OpState::from(Some(OpStatus::Refused {
            refusal: Refusal::OutOfStock {
                sku: "sku-1".into(),
                available: 0,
            },
        }));
        assert!(matches!(refused, OpState::Refused { code, .. } if code == "out-of-stock"));
        assert_eq!(OpState::from(None), OpState::Unknown);
    }
}
