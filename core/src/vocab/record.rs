//! Hub records: what the hub's authority publishes for devices to read.
//!
//! A record is the latest state of one thing only the hub decides — a SKU's
//! stock, a terminal's allowance, an order. It travels in the hub's change
//! log like an automerge change (same cursors, catch-up and fan-out), in a
//! document whose path starts with `rec/`, and a newer record of the same
//! document replaces the older one: the hub is its only writer, so its
//! sequence number orders them and nothing needs merging.
//!
//! Encoding: the two bytes `R2`, then the record as MessagePack with named
//! fields (see [`crate::vocab::codec`]); records of the previous release
//! (`R1`, then postcard) still decode. A record of a kind this build does
//! not know decodes to [`RecordError::UnknownKind`], which readers skip.
//! Anything else that does not decode is an error, never a guess.

use serde::{Deserialize, Serialize};

use crate::vocab::codec;
use crate::vocab::goods::Sku;
use crate::vocab::ids::{DeviceId, DocId, DocSetId, StoreId};
use crate::vocab::intent::{Decision, OfflinePolicy, StockMode, StockPolicy};
use crate::vocab::keys::{OrderId, OrderStatusName, PaymentRef};

/// Magic prefix of an encoded record (format version 2, MessagePack).
pub const RECORD_MAGIC: [u8; 2] = *b"R2";
/// Magic prefix of a record of the previous release (postcard).
pub const RECORD_MAGIC_V1: [u8; 2] = *b"R1";
/// The record kinds this build knows.
pub const RECORD_KINDS: &[&str] = &["Stock", "Allowance", "Order"];
/// Largest encoded record accepted.
pub const RECORD_BYTES_MAX: usize = 256 * 1024;

/// One hub record. Stock records go to the store's set, allowance records
/// to the terminal's own device set, order records to the store's orders set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A SKU's stock.
    Stock(StockRecord),
    /// One terminal's allowance of one SKU.
    Allowance(AllowanceRecord),
    /// A decided order.
    Order(OrderRecord),
}

/// A SKU's stock as the hub's ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRecord {
    /// The product.
    pub sku: Sku,
    /// Units in the store not yet sold.
    pub on_hand: u64,
    /// Units free at the hub (neither reserved nor granted to a terminal).
    pub free: u64,
    /// Units reserved.
    pub reserved: u64,
    /// Units held by terminals as allowances.
    pub held: u64,
    /// Escrow or strong.
    pub mode: StockMode,
    /// The policy in force.
    pub policy: StockPolicy,
    /// The ledger entry's version.
    pub version: u64,
}

/// The document that holds a SKU's stock record in shop `store`.
pub fn stock_record_doc(store: &StoreId, sku: &Sku) -> DocId {
    // A store set id and a SKU are valid segments, and together they stay
    // far below the document id limit (64 + 11 + 64 bytes).
    DocId::new(format!(
        "{}/rec/stock/{sku}",
        DocSetId::store(store).as_str()
    ))
    .expect("a stock record's document id is valid by construction")
}

/// A terminal's allowance of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceRecord {
    /// The terminal.
    pub device: DeviceId,
    /// The product.
    pub sku: Sku,
    /// Units granted, ever.
    pub granted: u64,
    /// Units spent, as applied at the hub.
    pub spent: u64,
    /// Units released, as applied at the hub.
    pub released: u64,
    /// The hub wants the unspent rest back.
    pub recall: bool,
    /// The ledger entry's version.
    pub version: u64,
}

/// One line of a decided order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineRecord {
    /// The product.
    pub sku: Sku,
    /// Units sold.
    pub quantity: u64,
    /// Unit price charged, minor units.
    pub unit_price_minor: i64,
    /// Units of the line the hub could not cover (compensation).
    pub short: u64,
}

/// A decided order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order id chosen by the device.
    pub order_id: OrderId,
    /// The store's order number.
    pub order_no: u64,
    /// The device that sold it.
    pub device: DeviceId,
    /// `confirmed` when decided; later `paid`, `fulfilled`, `returned`, ...
    pub status: OrderStatusName,
    /// Starts at 1 and grows by one per status change.
    pub version: u64,
    /// The lines.
    pub lines: Vec<OrderLineRecord>,
    /// ISO 4217 code.
    pub currency: String,
    /// Sum of the covered lines, minor units.
    pub total_minor: i64,
    /// The payment's reference.
    pub payment_ref: PaymentRef,
    /// When the hub decided it, ms since the epoch.
    pub decided_ms: u64,
    /// True if some units were not covered (a compensation is open).
    pub at_risk: bool,
}

/// Why record bytes do not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not a record.
    #[error("malformed hub record: {0}")]
    Malformed(String),
    /// A record of a kind from a newer release; readers skip it.
    #[error("hub record of unknown kind `{kind}` (from a newer release?)")]
    UnknownKind {
        /// The record's kind.
        kind: String,
    },
}

impl Record {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = RECORD_MAGIC.to_vec();
        bytes.extend(codec::to_named(self));
        bytes
    }

    /// Encodes the record in the previous release's format (`R1`, postcard),
    /// for devices that speak only protocol version 1.
    pub fn encode_v1(&self) -> Vec<u8> {
        let mut bytes = RECORD_MAGIC_V1.to_vec();
        // Plain data into a Vec: postcard cannot fail here.
        bytes.extend(postcard::to_stdvec(self).expect("records encode"));
        bytes
    }

    /// Decodes record bytes strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(RecordError::Malformed(format!(
                "{} bytes is too large",
                bytes.len()
            )));
        }
        let decoded = if let Some(body) = bytes.strip_prefix(&RECORD_MAGIC) {
            codec::from_named(body, RECORD_KINDS)
        } else if let Some(body) = bytes.strip_prefix(&RECORD_MAGIC_V1) {
            codec::decode_postcard(body)
        } else {
            return Err(RecordError::Malformed("bad magic bytes".into()));
        };
        decoded.map_err(|error| match error {
            codec::CodecError::UnknownKind { kind } => RecordError::UnknownKind { kind },
            other => RecordError::Malformed(other.to_string()),
        })
    }

    /// The document this record is the state of; `None` for the allowance
    /// of a device whose private set cannot be named (see [`DocSetId::device`]).
    pub fn doc(&self, store: &StoreId) -> Option<DocId> {
        // Store ids, SKUs, device ids and order ids are valid segments, and
        // the ids stay under the document id limit.
        let id = match self {
            Record::Stock(stock) => return Some(stock_record_doc(store, &stock.sku)),
            Record::Allowance(allowance) => format!(
                "{}/rec/allowance/{}",
                DocSetId::device(store, &allowance.device)?.as_str(),
                allowance.sku
            ),
            Record::Order(order) => {
                format!(
                    "{}/rec/order/{}",
                    DocSetId::orders(store).as_str(),
                    order.order_id
                )
            }
        };
        DocId::new(id).ok()
    }
}

/// True for documents that hold hub records (`set/rec/...`).
pub fn is_record_doc(doc: &DocId) -> bool {
    doc.as_str()
        .split('/')
        .nth(1)
        .is_some_and(|segment| segment == "rec")
}

/// What a decision says about an order, for logs and status screens.
pub fn describe_decision(decision: &Decision) -> String {
    match decision {
        Decision::Confirmed { order_no } => format!("confirmed as order #{order_no}"),
        Decision::Short { order_no, lines } => format!(
            "order #{order_no} short by {} units: compensation needed",
            lines.iter().map(|line| line.quantity).sum::<u64>()
        ),
        Decision::Applied { version } => format!("applied (version {version})"),
        Decision::Refused(refusal) => format!("refused: {refusal}"),
    }
}

/// The offline policy's text, for query tables.
pub fn policy_text(policy: &OfflinePolicy) -> &'static str {
    policy.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_round_trip_and_name_their_documents() {
        let store = StoreId::new("berlin-01").unwrap();
        let record = Record::Stock(StockRecord {
            sku: Sku::new("tea").unwrap(),
            on_hand: 12,
            free: 12,
            reserved: 0,
            held: 0,
            mode: StockMode::Escrow,
            policy: StockPolicy::default(),
            version: 1,
        });
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), record);
        let doc = record.doc(&store).unwrap();
        assert_eq!(doc.as_str(), "store.berlin-01/rec/stock/tea");
        assert!(is_record_doc(&doc));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Record::decode(&trailing).is_err());
        assert!(Record::decode(&bytes[2..]).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder (fuzz target for records).
        #[test]
        fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = RECORD_MAGIC.to_vec();
            framed.extend(&bytes);
            let _ = Record::decode(&framed);
            let _ = Record::decode(&bytes);
        }
    }
}
