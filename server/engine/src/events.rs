//! Typed events: what happened at the hub, for the systems around it (ERP,
//! accounting, warehouse, analytics).
//!
//! A group commit drafts its events ([`EventDraft`]) from what it decided and
//! stored: orders confirmed or refused and their later status changes,
//! compensations opened and resolved, stock levels and allowances that
//! moved, prices and product fields written. The shared writer numbers them
//! and stores them in the *outbox* of the hub's own store, in the same
//! transaction as their cause, so a committed change always has its events
//! and a rolled-back one has none. Every event gets
//!
//! - a global sequence number ([`Event::seq`]), dense across the outbox: a
//!   consumer resumes after the last one it handled and misses nothing;
//! - a per-store sequence number ([`Event::store_seq`]), dense within the
//!   store: a consumer of one store can check it saw every one, in order;
//! - the tenant, the store, the commit time and a typed JSON payload.
//!
//! On the way out an event is wrapped in a CloudEvents 1.0 envelope
//! ([`CloudEvent`]); `docs/events.md` lists every type with its payload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::vocab::ids::{DocId, StoreId, TenantId};
use omnisync_core::vocab::intent::{Refusal, ShortLine, StockMode};
use omnisync_core::vocab::layout::{self, DocKind};
use omnisync_core::vocab::record::{OrderRecord, StockRecord};

/// The CloudEvents `type` prefix of every omnisync event.
pub const TYPE_PREFIX: &str = "omnisync.";

/// What kind of thing happened. The wire name (`omnisync.order.confirmed`)
/// is [`EventType::as_str`]; it never changes once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// A checkout became an order (also a provisional one with short lines).
    OrderConfirmed,
    /// A checkout was refused; nothing was sold.
    OrderRefused,
    /// An order moved to a new status (paid, fulfilled, returned, ...).
    OrderStatusChanged,
    /// A SKU's stock in a store changed (on hand, free, reserved, held, mode).
    StockLevelChanged,
    /// A terminal was granted more allowance of a SKU.
    AllowanceGranted,
    /// The hub asked a terminal to give the unspent rest of an allowance back.
    AllowanceRecalled,
    /// A price was written (one register per SKU, channel, effective time).
    PriceChanged,
    /// Product fields were written.
    ProductChanged,
    /// An order was sold provisionally beyond stock: a compensation task is open.
    CompensationOpened,
    /// A compensation task was resolved (refund, substitute, ...).
    CompensationResolved,
}

impl EventType {
    /// Every type, in a stable order.
    pub const ALL: [EventType; 10] = [
        EventType::OrderConfirmed,
        EventType::OrderRefused,
        EventType::OrderStatusChanged,
        EventType::StockLevelChanged,
        EventType::AllowanceGranted,
        EventType::AllowanceRecalled,
        EventType::PriceChanged,
        EventType::ProductChanged,
        EventType::CompensationOpened,
        EventType::CompensationResolved,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderConfirmed => "omnisync.order.confirmed",
            EventType::OrderRefused => "omnisync.order.refused",
            EventType::OrderStatusChanged => "omnisync.order.status_changed",
            EventType::StockLevelChanged => "omnisync.stock.level_changed",
            EventType::AllowanceGranted => "omnisync.allowance.granted",
            EventType::AllowanceRecalled => "omnisync.allowance.recalled",
            EventType::PriceChanged => "omnisync.price.changed",
            EventType::ProductChanged => "omnisync.product.changed",
            EventType::CompensationOpened => "omnisync.compensation.opened",
            EventType::CompensationResolved => "omnisync.compensation.resolved",
        }
    }

    /// The type of a wire name; `None` for a name this release does not know.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(EventType::ALL.iter().map(|kind| kind.as_str())))
            .description(Some("What happened (the CloudEvents `type`)."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EventType {}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        EventType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event type `{name}`")))
    }
}

/// An event a group commit produced, before the writer numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    /// The store it happened in.
    pub store: StoreId,
    /// What happened.
    pub kind: EventType,
    /// The payload, one of the `*Data` types of this module as JSON.
    pub data: serde_json::Value,
}

impl EventDraft {
    /// A draft with a typed payload.
    pub fn new(store: &StoreId, kind: EventType, data: &impl Serialize) -> Self {
        Self {
            store: store.clone(),
            kind,
            // The payload types are plain structs of strings and numbers.
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A stored event of the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Position in the outbox: dense, from 1, in commit order.
    pub seq: u64,
    /// The tenant (retail chain) of the hub that wrote it.
    pub tenant: TenantId,
    /// The store it happened in.
    pub store: StoreId,
    /// Position among the store's events: dense, from 1.
    pub store_seq: u64,
    /// What happened.
    pub kind: EventType,
    /// When the hub committed it, ms since the epoch.
    pub time_ms: u64,
    /// The typed payload.
    pub data: serde_json::Value,
}

/// Which events a reader wants: all when both lists are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these stores (all when empty).
    pub stores: Vec<StoreId>,
    /// Only these types (all when empty).
    pub types: Vec<EventType>,
}

impl EventFilter {
    /// True when `event` passes.
    pub fn admits(&self, event: &Event) -> bool {
        (self.stores.is_empty() || self.stores.contains(&event.store))
            && (self.types.is_empty() || self.types.contains(&event.kind))
    }
}

/// A page of the outbox read after a position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// The events that passed the filter, in order.
    pub events: Vec<Event>,
    /// Where the next read starts: the last outbox position this read
    /// looked at (past events the filter skipped), never lower than `after`.
    pub next: u64,
    /// The outbox's last position when the page was read.
    pub head: u64,
}

/// The CloudEvents 1.0 envelope (JSON structured mode) of an event, as the
/// feed, the brokers and webhooks carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The event's id, unique within `source`: its outbox position in decimal.
    pub id: String,
    /// The hub's outbox: `/omnisync/<tenant>/hubs/<log id>`.
    pub source: String,
    /// [`EventType::as_str`].
    #[serde(rename = "type")]
    pub kind: EventType,
    /// `store/<store>` (what the event is about, for routing).
    pub subject: String,
    /// The commit time, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// Extension: the tenant.
    pub tenant: String,
    /// Extension: the store.
    pub store: String,
    /// Extension: the outbox position (the same number as `id`).
    pub sequence: u64,
    /// Extension: the position among the store's events.
    pub storesequence: u64,
    /// The typed payload: one of the `*Data` schemas, by `type`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// The envelope of `event` from the outbox of the hub log `log_id`.
    pub fn of(event: &Event, log_id: &str) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: event.seq.to_string(),
            source: format!("/omnisync/{}/hubs/{log_id}", event.tenant),
            kind: event.kind,
            subject: format!("store/{}", event.store),
            time: rfc3339_ms(event.time_ms),
            datacontenttype: "application/json".to_owned(),
            tenant: event.tenant.to_string(),
            store: event.store.to_string(),
            sequence: event.seq,
            storesequence: event.store_seq,
            data: event.data.clone(),
        }
    }
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-02T18:45:38.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------
// Payloads. Field names are the stable JSON schema (`docs/events.md`).

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLineData {
    /// The product.
    pub sku: String,
    /// Units sold.
    pub quantity: u64,
    /// Unit price charged, minor units.
    pub unit_price_minor: i64,
    /// Units the hub could not cover (a compensation is open for them).
    pub short: u64,
}

/// `omnisync.order.confirmed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderConfirmedData {
    /// The order id the selling device chose.
    pub order_id: String,
    /// The store's order number.
    pub order_no: u64,
    /// The device that sold it.
    pub device: String,
    /// The lines.
    pub lines: Vec<OrderLineData>,
    /// ISO 4217 code.
    pub currency: String,
    /// Sum of the covered lines, minor units.
    pub total_minor: i64,
    /// The payment's reference.
    pub payment_ref: String,
    /// True if some units were not covered (see `omnisync.compensation.opened`).
    pub at_risk: bool,
}

impl OrderConfirmedData {
    /// The payload of a newly decided order.
    pub fn of(order: &OrderRecord) -> Self {
        Self {
            order_id: order.order_id.to_string(),
            order_no: order.order_no,
            device: order.device.to_string(),
            lines: order
                .lines
                .iter()
                .map(|line| OrderLineData {
                    sku: line.sku.to_string(),
                    quantity: line.quantity,
                    unit_price_minor: line.unit_price_minor,
                    short: line.short,
                })
                .collect(),
            currency: order.currency.clone(),
            total_minor: order.total_minor,
            payment_ref: order.payment_ref.to_string(),
            at_risk: order.at_risk,
        }
    }
}

/// `omnisync.order.refused`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderRefusedData {
    /// The order id the device chose.
    pub order_id: String,
    /// The device that tried to sell.
    pub device: String,
    /// Why: the typed refusal the device got (`{"OutOfStock": {...}}`, ...).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub reason: Refusal,
}

/// `omnisync.order.status_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderStatusChangedData {
    /// The order.
    pub order_id: String,
    /// The store's order number.
    pub order_no: u64,
    /// The status before.
    pub from: String,
    /// The status now.
    pub status: String,
    /// The order's version now.
    pub version: u64,
}

/// `omnisync.stock.level_changed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLevelData {
    /// The product.
    pub sku: String,
    /// Units in the store not yet sold.
    pub on_hand: u64,
    /// Units free at the hub.
    pub free: u64,
    /// Units reserved.
    pub reserved: u64,
    /// Units held by terminals as allowances.
    pub held: u64,
    /// `escrow` or `strong`.
    pub mode: String,
    /// The ledger entry's version.
    pub version: u64,
}

impl StockLevelData {
    /// The payload of a stock record.
    pub fn of(record: &StockRecord) -> Self {
        Self {
            sku: record.sku.to_string(),
            on_hand: record.on_hand,
            free: record.free,
            reserved: record.reserved,
            held: record.held,
            mode: match record.mode {
                StockMode::Escrow => "escrow",
                StockMode::Strong => "strong",
            }
            .to_owned(),
            version: record.version,
        }
    }
}

/// `omnisync.allowance.granted` and `omnisync.allowance.recalled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllowanceData {
    /// The terminal.
    pub device: String,
    /// The product.
    pub sku: String,
    /// Units granted by this event (0 for a recall).
    pub units: u64,
    /// Units the terminal holds now (granted − spent − released).
    pub held: u64,
}

/// `omnisync.price.changed`: one price register written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceChangedData {
    /// The product.
    pub sku: String,
    /// The channel (`pos`, `web`, `app`).
    pub channel: String,
    /// From when the price holds, ms since the epoch.
    pub effective_from_ms: u64,
    /// The amount written, minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// `omnisync.product.changed`: the fields one change wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductChangedData {
    /// The product.
    pub sku: String,
    /// Field name to the value written (`name`, `category`, `barcode`, ...).
    /// Concurrent writes of a field keep every value until one is resolved;
    /// devices show them under the product's conflicts.
    pub fields: BTreeMap<String, String>,
}

/// `omnisync.compensation.opened`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompensationOpenedData {
    /// The order sold beyond stock.
    pub order_id: String,
    /// The store's order number.
    pub order_no: u64,
    /// The device that sold it.
    pub device: String,
    /// The units not covered, per SKU.
    pub lines: Vec<ShortLineData>,
}

/// Units of a SKU not covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShortLineData {
    /// The product.
    pub sku: String,
    /// Units not covered.
    pub quantity: u64,
}

impl ShortLineData {
    /// From the decision's short line.
    pub fn of(line: &ShortLine) -> Self {
        Self {
            sku: line.sku.to_string(),
            quantity: line.quantity,
        }
    }
}

/// `omnisync.compensation.resolved`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompensationResolvedData {
    /// The order.
    pub order_id: String,
    /// The store's order number.
    pub order_no: u64,
    /// How it was resolved (`refund`, `substitute`, `backorder`, ...).
    pub resolution: String,
}

/// The status prefix a resolved compensation gives its order.
pub const COMPENSATED_PREFIX: &str = "compensated-";

/// The events of an automerge change to a catalog or prices document:
/// one `omnisync.product.changed` per SKU whose fields it wrote, one
/// `omnisync.price.changed` per price register it wrote. Other documents
/// (carts, profiles, records) have none. A change that does not decode
/// (the hub judged it before storing it) has none either.
pub fn from_document_change(doc: &DocId, bytes: &[u8]) -> Vec<EventDraft> {
    let kind = layout::kind_of(doc);
    if kind != DocKind::Catalog && kind != DocKind::Prices {
        return Vec::new();
    }
    let Some(store) = layout::store_of(doc) else {
        return Vec::new();
    };
    let Ok(change) = automerge::Change::from_bytes(bytes.to_vec()) else {
        return Vec::new();
    };
    let mut products: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut drafts = Vec::new();
    for op in change.decode().operations {
        let (automerge::legacy::Key::Map(key), automerge::legacy::OpType::Put(value)) =
            (&op.key, &op.action)
        else {
            continue;
        };
        if op.obj != automerge::legacy::ObjectId::Root {
            continue;
        }
        if kind == DocKind::Prices {
            if let Some(price) = price_of(key, value) {
                drafts.push(EventDraft::new(&store, EventType::PriceChanged, &price));
            }
        } else if let (Some((sku, field)), automerge::ScalarValue::Str(text)) =
            (key.split_once('/'), value)
        {
            products
                .entry(sku.to_owned())
                .or_default()
                .insert(field.to_owned(), text.to_string());
        }
    }
    for (sku, fields) in products {
        drafts.push(EventDraft::new(
            &store,
            EventType::ProductChanged,
            &ProductChangedData { sku, fields },
        ));
    }
    drafts
}

/// A price register's key (`sku/channel/effective-from`) and stamped value.
fn price_of(key: &str, value: &automerge::ScalarValue) -> Option<PriceChangedData> {
    let mut parts = key.split('/');
    let (Some(sku), Some(channel), Some(from), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let channel = Channel::parse(channel)?;
    Sku::new(sku).ok()?;
    let automerge::ScalarValue::Bytes(bytes) = value else {
        return None;
    };
    let stamped = omnisync_core::vocab::hlc::Stamped::<PriceValueWire>::decode(bytes)?;
    Some(PriceChangedData {
        sku: sku.to_owned(),
        channel: channel.as_str().to_owned(),
        effective_from_ms: from.parse().ok()?,
        amount_minor: stamped.value.amount_minor,
        currency: stamped.value.currency,
    })
}

/// The value of a price register as devices write it.
#[derive(Deserialize)]
struct PriceValueWire {
    amount_minor: i64,
    currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_887_938_123), "2026-11-28T17:45:38.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn every_type_round_trips_through_its_wire_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), kind);
        }
        assert_eq!(EventType::parse("omnisync.order.eaten"), None);
    }
}
