//! Checkout and orders on the device.
//!
//! A checkout is one local transaction (`synchronous=FULL`): it spends the
//! terminal's escrow allowance for lines it covers, records the order as
//! `pending`, and appends a checkout [`Intent`] to the op log. The hub
//! decides it once; its decision comes back as the op's ack and its order
//! record through the orders set. The lifecycle an app shows:
//!
//! ```text
//! pending -> confirmed | refused                   (the ack is the decision)
//!         -> compensation (provisional sale not covered) -> compensated
//! ```
//!
//! An intent has no separate `acknowledged` step: the hub answers it with
//! its decision, made durable in the same commit.
//!
//! Which lines need the hub: a line the terminal's allowance covers is
//! decided already and safe offline; otherwise, online, the hub decides now;
//! offline, the SKU's policy decides — `block` refuses the sale with the
//! reason, `provisional` accepts it at risk.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, DecidedState, Replica};
use crate::retail::RetailError;
use crate::retail::stock::{add_escrow_use, allowance};
use crate::vocab::goods::{Channel, Currency, Money, Sku};
use crate::vocab::ids::{OpId, check_name};
use crate::vocab::intent::{
    CHECKOUT_LINES_MAX, CheckoutIntent, Decision, Intent, IntentLine, InvalidIntent, LineSource,
    OfflinePolicy, OrderStatusChange, ShortLine, StockMode,
};
use crate::vocab::keys::{IdempotencyKey, OrderId, OrderStatus, OrderStatusName, PaymentRef};
use crate::vocab::record::OrderRecord;

/// Most lines in one order.
pub const ORDER_LINES_MAX: usize = CHECKOUT_LINES_MAX;

/// Whether the device can reach the hub right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connectivity {
    /// Connected: strong-mode lines are decided by the hub at once.
    Online,
    /// Not connected: strong-mode lines follow the SKU's offline policy.
    Offline,
}

/// One line of a checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct OrderLine {
    /// The product.
    pub sku: Sku,
    /// Units.
    pub quantity: u64,
    /// Unit price shown to the customer, minor units.
    pub unit_price_minor: i64,
}

/// What a till asks for at checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// The order id (unique in the store), e.g. `till-3-000042`.
    pub order_id: OrderId,
    /// The app's idempotency key; defaults to the order id. Checking out
    /// again with a used key returns the first checkout's receipt.
    pub idempotency_key: Option<IdempotencyKey>,
    /// What is sold.
    pub lines: Vec<OrderLine>,
    /// Currency of the prices.
    pub currency: Currency,
    /// The payment's reference.
    pub payment_ref: PaymentRef,
    /// Where the sale happens.
    pub channel: Channel,
}

impl CheckoutRequest {
    /// The checkout intent this request asks for, every line still marked
    /// [`LineSource::Hub`] (the device decides how each is covered when it
    /// records the sale), checked by [`CheckoutIntent::validate`] — the one
    /// rule the device, the hub and the bindings apply.
    pub fn to_intent(&self) -> Result<CheckoutIntent, InvalidIntent> {
        let checkout = CheckoutIntent {
            order_id: self.order_id.clone(),
            idempotency_key: self
                .idempotency_key
                .clone()
                .unwrap_or_else(|| IdempotencyKey::from(&self.order_id)),
            lines: self
                .lines
                .iter()
                .map(|line| IntentLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price_minor: line.unit_price_minor,
                    source: LineSource::Hub,
                })
                .collect(),
            currency: self.currency,
            payment_ref: self.payment_ref.clone(),
            channel: self.channel,
        };
        checkout.validate()?;
        Ok(checkout)
    }
}

/// What the till may tell the cashier right after checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutReceipt {
    /// The op carrying the intent (its status is the sale's lifecycle).
    pub op: OpId,
    /// The order id.
    pub order_id: OrderId,
    /// How each line was covered.
    pub lines: Vec<(Sku, u64, LineSource)>,
    /// True when some line waits for the hub's decision (online strong mode).
    pub needs_hub: bool,
    /// True when some line was sold provisionally (offline strong mode).
    pub at_risk: bool,
    /// True when this key was checked out before and this is that receipt.
    pub repeated: bool,
}

/// An order as the query tables show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct OrderSummary {
    /// The order id.
    pub order_id: OrderId,
    /// The store's order number, once the hub confirmed it.
    pub order_no: Option<u64>,
    /// The device that sold it.
    pub device: String,
    /// `pending`, `confirmed`, `refused`, then `paid`, `fulfilled`, ...
    pub status: OrderStatus,
    /// Status version (optimistic concurrency), 0 while pending.
    pub version: u64,
    /// Order total.
    pub total: Money,
    /// When it was recorded, ms since the epoch.
    pub created_ms: u64,
    /// True when some units were sold provisionally and are not (yet) covered.
    pub at_risk: bool,
    /// The lines.
    pub lines: Vec<OrderLine>,
}

/// A provisional sale the hub could not cover, for the app to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Compensation {
    /// The checkout op.
    pub op: OpId,
    /// The order.
    pub order_id: OrderId,
    /// The order number, if the order stands.
    pub order_no: Option<u64>,
    /// Units not covered.
    pub lines: Vec<ShortLine>,
    /// Why.
    pub reason: String,
    /// Open, or resolved.
    pub state: CompensationState,
    /// How it was resolved (`refund`, `substitute`, `backorder`).
    pub resolution: Option<String>,
}

/// Where a compensation task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[non_exhaustive]
pub enum CompensationState {
    /// Waiting for the app to resolve it.
    Open,
    /// Resolved (see [`Compensation::resolution`]).
    Resolved,
}

impl CompensationState {
    /// Stable text form, as the query table stores it.
    pub fn as_str(&self) -> &'static str {
        match self {
            CompensationState::Open => "open",
            CompensationState::Resolved => "resolved",
        }
    }

    /// Parses the text form strictly: anything but `open` or `resolved` is
    /// `None`, never a guess.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(CompensationState::Open),
            "resolved" => Some(CompensationState::Resolved),
            _ => None,
        }
    }
}

fn lines_json(lines: &[OrderLine]) -> String {
    serde_json::to_string(lines).unwrap_or_else(|_| "[]".into())
}

/// Applies a hub order record unless the row is newer (a local pending order
/// has version 0; a decided one version 1 until the record with the hub's
/// covered lines replaces it — the same version carries the same content).
pub(crate) fn apply_order_record(
    tx: &Transaction<'_>,
    record: &OrderRecord,
) -> Result<bool, DbError> {
    let lines: Vec<OrderLine> = record
        .lines
        .iter()
        .map(|line| OrderLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_minor: line.unit_price_minor,
        })
        .collect();
    let changed = tx.prepare_cached(
        "INSERT INTO orders (order_id, order_no, device_id, status, version, total_minor, currency, created_ms, at_risk, lines)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (order_id) DO UPDATE SET order_no = ?2, status = ?4, version = ?5, total_minor = ?6,
             currency = ?7, at_risk = ?9, lines = ?10
         WHERE excluded.version >= orders.version",
    )?
    .execute(params![
        record.order_id.as_str(),
        record.order_no as i64,
        record.device.as_str(),
        record.status.as_str(),
        record.version as i64,
        record.total_minor,
        record.currency,
        record.decided_ms as i64,
        record.at_risk as i64,
        lines_json(&lines),
    ])?;
    Ok(changed > 0)
}

/// Side effects of the hub's decision on one of this device's intents, in
/// the transaction that records the ack. Returns what the op becomes.
pub(crate) fn on_decision(
    tx: &Transaction<'_>,
    op_seq: u64,
    intent: &Intent,
    decision: &Decision,
    now_ms: u64,
) -> Result<DecidedState, DbError> {
    let Intent::Checkout(checkout) = intent else {
        return Ok(match (intent, decision) {
            (Intent::ReleaseAllowance { sku, quantity }, Decision::Refused(_)) => {
                // The hub holds fewer rights than this device thought: take
                // the release back so the two agree again.
                add_escrow_use(tx, sku, 0, -(*quantity as i64))?;
                DecidedState::Refused
            }
            (_, Decision::Refused(_)) => DecidedState::Refused,
            _ => DecidedState::Confirmed,
        });
    };
    let provisional = checkout
        .lines
        .iter()
        .any(|line| line.source == LineSource::Provisional);
    let (status, order_no, short, reason) = match decision {
        Decision::Confirmed { order_no } => {
            (DecidedState::Confirmed, Some(*order_no), Vec::new(), None)
        }
        Decision::Short { order_no, lines } => (
            DecidedState::Compensation,
            Some(*order_no),
            lines.clone(),
            Some("out of stock at the hub".to_owned()),
        ),
        Decision::Refused(refusal) => {
            // Nothing was sold: the allowance the sale spent is the device's again.
            for line in &checkout.lines {
                if line.source == LineSource::Allowance {
                    add_escrow_use(tx, &line.sku, -(line.quantity as i64), 0)?;
                }
            }
            let short = if provisional {
                checkout
                    .lines
                    .iter()
                    .map(|line| ShortLine {
                        sku: line.sku.clone(),
                        quantity: line.quantity,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let status = if provisional {
                DecidedState::Compensation
            } else {
                DecidedState::Refused
            };
            (status, None, short, Some(refusal.to_string()))
        }
        Decision::Applied { .. } => (DecidedState::Confirmed, None, Vec::new(), None),
    };
    let order_status = match decision {
        Decision::Refused(_) => OrderStatus::Refused,
        _ => OrderStatus::Confirmed,
    };
    tx.prepare_cached(
        "UPDATE orders SET status = ?2, order_no = COALESCE(?3, order_no), version = MAX(version, ?4),
             at_risk = ?5
         WHERE order_id = ?1 AND status = ?6",
    )?
    .execute(params![
        checkout.order_id.as_str(),
        order_status.as_str(),
        order_no.map(|no| no as i64),
        i64::from(order_status == OrderStatus::Confirmed),
        i64::from(!short.is_empty()),
        OrderStatus::Pending.as_str(),
    ])?;
    if status == DecidedState::Compensation {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO compensations (op_seq, order_id, order_no, lines, reason, state, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?6)",
        )?
        .execute(params![
            op_seq as i64,
            checkout.order_id.as_str(),
            order_no.map(|no| no as i64),
            serde_json::to_string(&short).unwrap_or_else(|_| "[]".into()),
            reason.unwrap_or_default(),
            now_ms as i64,
            CompensationState::Open.as_str(),
        ])?;
    }
    Ok(status)
}

/// A hub restored from an older backup decided again a checkout this device
/// had uploaded before, and differently. The first answer stands on the
/// device (the customer was told it); when the two disagree on whether the
/// sale happened — confirmed (or short) first and refused later, or the
/// other way round — the sale and the hub's books disagree, and a
/// compensation task is opened for the app to settle (unless one is open for
/// the op already). A different order number or covered quantity alone
/// opens none: the hub's order record brings its view to the orders table.
pub(crate) fn on_redecision(
    tx: &Transaction<'_>,
    op_seq: u64,
    intent: &Intent,
    first: &Decision,
    later: &Decision,
    now_ms: u64,
) -> Result<(), DbError> {
    let Intent::Checkout(checkout) = intent else {
        return Ok(());
    };
    let sold = |decision: &Decision| !matches!(decision, Decision::Refused(_));
    if sold(first) == sold(later) {
        return Ok(());
    }
    let reason = match later {
        Decision::Refused(refusal) => {
            format!("the restored hub refused this sale it had confirmed: {refusal}")
        }
        _ => "the restored hub confirmed this sale it had refused".to_owned(),
    };
    let lines: Vec<ShortLine> = checkout
        .lines
        .iter()
        .map(|line| ShortLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
        })
        .collect();
    let order_no = match (first, later) {
        (Decision::Confirmed { order_no } | Decision::Short { order_no, .. }, _)
        | (_, Decision::Confirmed { order_no } | Decision::Short { order_no, .. }) => {
            Some(*order_no as i64)
        }
        _ => None,
    };
    tx.prepare_cached(
        "INSERT OR IGNORE INTO compensations (op_seq, order_id, order_no, lines, reason, state, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?6)",
    )?
    .execute(params![
        op_seq as i64,
        checkout.order_id.as_str(),
        order_no,
        serde_json::to_string(&lines).unwrap_or_else(|_| "[]".into()),
        reason,
        now_ms as i64,
        CompensationState::Open.as_str(),
    ])?;
    Ok(())
}

/// Checkout, order queries and compensations.
impl Replica {
    /// Records a sale: spends allowance, records the pending order and the
    /// checkout intent in one durable transaction. Refused (nothing written)
    /// when a line needs the hub, the till is offline and the SKU's policy
    /// is `block`.
    pub fn checkout(
        &mut self,
        request: &CheckoutRequest,
        connectivity: Connectivity,
        now_ms: u64,
    ) -> Result<CheckoutReceipt, RetailError> {
        let mut checkout = request.to_intent()?;
        let key = checkout.idempotency_key.clone();
        if let Some(receipt) = self.receipt_for_key(&key)? {
            return Ok(receipt);
        }
        if self.order(request.order_id.as_str())?.is_some() {
            return Err(RetailError::Invalid(format!(
                "order id {} is taken",
                request.order_id
            )));
        }
        // Decide each line's source; allowance is counted per SKU.
        let store = self.store_id().clone();
        let mut left: std::collections::HashMap<Sku, u64> = std::collections::HashMap::new();
        for line in &mut checkout.lines {
            if !left.contains_key(&line.sku) {
                let allowance = allowance(&self.db, self.device(), &line.sku)?;
                left.insert(line.sku.clone(), allowance.left());
            }
            let available = left.get_mut(&line.sku).expect("inserted above");
            let source = if *available >= line.quantity {
                *available -= line.quantity;
                LineSource::Allowance
            } else if connectivity == Connectivity::Online {
                LineSource::Hub
            } else {
                let view = self.stock(&store, &line.sku)?;
                let policy = view
                    .as_ref()
                    .map(|view| view.policy.offline)
                    .unwrap_or(OfflinePolicy::Block);
                if policy == OfflinePolicy::Block {
                    let why = match view {
                        Some(view) if view.mode == StockMode::Strong => format!(
                            "{} is low ({} on hand) and is sold only with the hub; the till is offline",
                            line.sku, view.on_hand
                        ),
                        Some(_) => format!(
                            "this till's allowance of {} is used up and the till is offline",
                            line.sku
                        ),
                        None => format!("no stock of {} is known to this till yet", line.sku),
                    };
                    return Err(RetailError::Blocked(why));
                }
                LineSource::Provisional
            };
            line.source = source;
        }
        let total = request
            .lines
            .iter()
            .try_fold(0i64, |sum, line| {
                line.unit_price_minor
                    .checked_mul(line.quantity as i64)
                    .and_then(|amount| sum.checked_add(amount))
            })
            .ok_or_else(|| RetailError::Invalid("order total overflows".into()))?;
        let lines = checkout.lines.clone();
        let intent = Intent::Checkout(checkout);
        let at_risk = lines
            .iter()
            .any(|line| line.source == LineSource::Provisional);
        let device = self.device().clone();
        let op = self.commit_intent(&intent, now_ms, |tx, seq| {
            for line in &lines {
                if line.source == LineSource::Allowance {
                    add_escrow_use(tx, &line.sku, line.quantity as i64, 0)?;
                }
            }
            tx.prepare_cached(
                "INSERT INTO orders (order_id, order_no, device_id, status, version, total_minor, currency, created_ms, at_risk, lines, op_seq, idempotency_key)
                 VALUES (?1, NULL, ?2, 'pending', 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                request.order_id.as_str(),
                device.as_str(),
                total,
                request.currency.as_str(),
                now_ms as i64,
                at_risk as i64,
                lines_json(&request.lines),
                seq as i64,
                key.as_str(),
            ])?;
            Ok(())
        })?;
        Ok(CheckoutReceipt {
            op,
            order_id: request.order_id.clone(),
            lines: lines
                .iter()
                .map(|line| (line.sku.clone(), line.quantity, line.source))
                .collect(),
            needs_hub: lines.iter().any(|line| line.source == LineSource::Hub),
            at_risk,
            repeated: false,
        })
    }

    fn receipt_for_key(&self, key: &IdempotencyKey) -> Result<Option<CheckoutReceipt>, DbError> {
        // The order id comes from the recorded intent, typed.
        let Some(Some(seq)) = self
            .db
            .prepare_cached("SELECT op_seq FROM orders WHERE idempotency_key = ?1")?
            .query_row([key.as_str()], |row| row.get::<_, Option<i64>>(0))
            .optional()?
        else {
            return Ok(None);
        };
        let op = OpId {
            replica: self.replica(),
            seq: seq as u64,
        };
        let Some(Intent::Checkout(intent)) = self.op_intent(seq as u64)? else {
            return Ok(None);
        };
        Ok(Some(CheckoutReceipt {
            op,
            order_id: intent.order_id.clone(),
            lines: intent
                .lines
                .iter()
                .map(|line| (line.sku.clone(), line.quantity, line.source))
                .collect(),
            needs_hub: intent
                .lines
                .iter()
                .any(|line| line.source == LineSource::Hub),
            at_risk: intent
                .lines
                .iter()
                .any(|line| line.source == LineSource::Provisional),
            repeated: true,
        }))
    }

    /// Moves an order to a new status if it is still at `expected_version`;
    /// the hub decides (a conflict comes back as a refused op).
    pub fn update_order_status(
        &mut self,
        order_id: &OrderId,
        expected_version: u64,
        status: &OrderStatusName,
        now_ms: u64,
    ) -> Result<OpId, RetailError> {
        let order = self
            .order(order_id.as_str())?
            .ok_or_else(|| RetailError::NotFound(format!("order {order_id}")))?;
        if order.version != expected_version {
            return Err(RetailError::VersionConflict {
                expected: expected_version,
                found: order.version,
            });
        }
        let intent = Intent::OrderStatus(OrderStatusChange {
            order_id: order_id.clone(),
            expected_version,
            status: status.clone(),
        });
        Ok(self.commit_intent(&intent, now_ms, |_, _| Ok(()))?)
    }

    /// Orders with a status, newest first.
    pub fn orders_by_status(
        &self,
        status: &OrderStatus,
        limit: usize,
    ) -> Result<Vec<OrderSummary>, DbError> {
        let mut statement = self.db.prepare_cached(
            "SELECT order_id, order_no, device_id, status, version, total_minor, currency, created_ms, at_risk, lines
             FROM orders WHERE status = ?1 ORDER BY created_ms DESC, order_id LIMIT ?2",
        )?;
        let rows = statement
            .query_map(
                params![status.as_str(), limit.min(10_000) as i64],
                read_summary,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(StoredSummary::parse).collect()
    }

    /// One order.
    pub fn order(&self, order_id: &str) -> Result<Option<OrderSummary>, DbError> {
        let row = self
            .db
            .prepare_cached(
                "SELECT order_id, order_no, device_id, status, version, total_minor, currency, created_ms, at_risk, lines
                 FROM orders WHERE order_id = ?1",
            )?
            .query_row([order_id], read_summary)
            .optional()?;
        row.map(StoredSummary::parse).transpose()
    }

    /// Compensation tasks, open ones first.
    pub fn compensations(&self) -> Result<Vec<Compensation>, DbError> {
        let replica = self.replica();
        let mut statement = self.db.prepare_cached(
            "SELECT op_seq, order_id, order_no, lines, reason, state, resolution FROM compensations
             ORDER BY state <> 'open', op_seq",
        )?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<String>>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(seq, order_id, order_no, lines, reason, state, resolution)| {
                    let corrupt = |detail: String| DbError::Corrupt {
                        doc: format!("compensation of op {seq}"),
                        detail,
                    };
                    Ok(Compensation {
                        op: OpId { replica, seq },
                        order_id: OrderId::new(order_id)
                            .map_err(|error| corrupt(error.to_string()))?,
                        order_no: order_no.map(|no| no as u64),
                        lines: serde_json::from_str(&lines)
                            .map_err(|error| corrupt(format!("lines: {error}")))?,
                        reason,
                        state: CompensationState::parse(&state)
                            .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
                        resolution,
                    })
                },
            )
            .collect()
    }

    /// Resolves an open compensation task (`refund`, `substitute`,
    /// `backorder`, ...): the op becomes `compensated`, and an order that
    /// stands at the hub gets the status `compensated-<resolution>`.
    pub fn resolve_compensation(
        &mut self,
        op: &OpId,
        resolution: &str,
        now_ms: u64,
    ) -> Result<(), RetailError> {
        check_name("resolution", resolution)?;
        let status = OrderStatusName::new(format!("compensated-{resolution}"))?;
        let task = self
            .compensations()?
            .into_iter()
            .find(|task| task.op == *op && task.state == CompensationState::Open)
            .ok_or_else(|| RetailError::NotFound(format!("open compensation for op {op}")))?;
        let order = self.order(task.order_id.as_str())?;
        let resolution = resolution.to_owned();
        let mark = |tx: &Transaction<'_>| -> Result<(), DbError> {
            tx.execute(
                "UPDATE compensations SET state = ?4, resolution = ?2, resolved_ms = ?3 WHERE op_seq = ?1",
                params![
                    op.seq as i64,
                    resolution,
                    now_ms as i64,
                    CompensationState::Resolved.as_str()
                ],
            )?;
            tx.execute(
                "UPDATE ops SET status = 'compensated' WHERE seq = ?1",
                [op.seq as i64],
            )?;
            Ok(())
        };
        match order.filter(|order| order.order_no.is_some() && order.version > 0) {
            Some(order) => {
                let intent = Intent::OrderStatus(OrderStatusChange {
                    order_id: order.order_id.clone(),
                    expected_version: order.version,
                    status,
                });
                self.commit_intent(&intent, now_ms, |tx, _| mark(tx))?;
            }
            None => self.local_transaction(|tx| mark(tx))?,
        }
        Ok(())
    }
}

/// An order row as stored, parsed into an [`OrderSummary`] outside the
/// row callback so a value that does not parse is a [`DbError::Corrupt`].
struct StoredSummary {
    order_id: String,
    order_no: Option<i64>,
    device: String,
    status: String,
    version: i64,
    total_minor: i64,
    currency: String,
    created_ms: i64,
    at_risk: i64,
    lines: String,
}

impl StoredSummary {
    fn parse(self) -> Result<OrderSummary, DbError> {
        let corrupt = |detail: String| DbError::Corrupt {
            doc: format!("order {}", self.order_id),
            detail,
        };
        Ok(OrderSummary {
            order_id: OrderId::new(self.order_id.as_str())
                .map_err(|error| corrupt(error.to_string()))?,
            order_no: self.order_no.map(|no| no as u64),
            device: self.device.clone(),
            status: OrderStatus::parse(&self.status).map_err(|error| corrupt(error.to_string()))?,
            version: self.version as u64,
            total: Money {
                amount_minor: self.total_minor,
                currency: Currency::new(&self.currency)
                    .map_err(|error| corrupt(format!("currency: {error}")))?,
            },
            created_ms: self.created_ms as u64,
            at_risk: self.at_risk != 0,
            lines: serde_json::from_str(&self.lines)
                .map_err(|error| corrupt(format!("lines: {error}")))?,
        })
    }
}

fn read_summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSummary> {
    Ok(StoredSummary {
        order_id: row.get(0)?,
        order_no: row.get(1)?,
        device: row.get(2)?,
        status: row.get(3)?,
        version: row.get(4)?,
        total_minor: row.get(5)?,
        currency: row.get(6)?,
        created_ms: row.get(7)?,
        at_risk: row.get(8)?,
        lines: row.get(9)?,
    })
}
