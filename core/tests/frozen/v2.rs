//! A frozen copy of this release's (protocol version 2) decoder types: plain
//! serde structs copied from the definitions of the release, with ids as
//! the strings and arrays they encode as. Never change them: they stand for
//! a device of this release reading what later releases send.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};

pub(crate) type ReplicaId = [u8; 16];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpId {
    pub(crate) replica: ReplicaId,
    pub(crate) seq: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ClientMessage {
    Hello(Hello),
    Subscribe(Vec<SubscriptionRequest>),
    Push(Vec<Op>),
    Ping(u64),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum HubMessage {
    Welcome(Welcome),
    Acks(Vec<Ack>),
    Changes(ChangeBatch),
    Pong(u64),
    Error(ProtocolError),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) device: String,
    pub(crate) store: String,
    pub(crate) replica: ReplicaId,
    pub(crate) credentials: Credentials,
    pub(crate) agent: String,
    #[serde(default)]
    pub(crate) versions: Option<VersionRange>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct VersionRange {
    pub(crate) min: u8,
    pub(crate) max: u8,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Credentials {
    pub(crate) token: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) hub_id: String,
    pub(crate) hub_time_ms: u64,
    pub(crate) allowed_sets: Vec<String>,
    pub(crate) log_id: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SubscriptionRequest {
    pub(crate) set: String,
    pub(crate) cursor: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Op {
    pub(crate) id: OpId,
    pub(crate) created_ms: u64,
    pub(crate) body: OpBody,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum OpBody {
    Changes(Vec<DocChange>),
    Intent(Intent),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DocChange {
    pub(crate) doc: String,
    #[serde(with = "serde_bytes")]
    pub(crate) bytes: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ack {
    pub(crate) op: OpId,
    pub(crate) outcome: AckOutcome,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum AckOutcome {
    Applied { hub_seq: u64 },
    Rejected { code: RejectCode, detail: String },
    Decided(Decision),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum RejectCode {
    MalformedChange,
    WrongAuthor,
    Forbidden,
    TooLarge,
    Invalid,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChangeBatch {
    pub(crate) set: String,
    pub(crate) changes: Vec<RemoteChange>,
    pub(crate) cursor: u64,
    pub(crate) caught_up: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RemoteChange {
    pub(crate) hub_seq: u64,
    pub(crate) doc: String,
    pub(crate) origin: ReplicaId,
    #[serde(with = "serde_bytes")]
    pub(crate) bytes: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProtocolError {
    pub(crate) code: ErrorCode,
    pub(crate) detail: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ErrorCode {
    Malformed,
    TooLarge,
    UnsupportedVersion,
    Unauthenticated,
    Forbidden,
    UnexpectedMessage,
    LimitExceeded,
    ShuttingDown,
    Timeout,
    Internal,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Intent {
    Checkout(CheckoutIntent),
    Stock(StockCommand),
    OrderStatus(OrderStatusChange),
    Reserve {
        key: String,
        sku: String,
        quantity: u64,
    },
    CommitReservation {
        key: String,
    },
    CancelReservation {
        key: String,
    },
    ReleaseAllowance {
        sku: String,
        quantity: u64,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CheckoutIntent {
    pub(crate) order_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) lines: Vec<IntentLine>,
    pub(crate) currency: String,
    pub(crate) payment_ref: String,
    pub(crate) channel: Channel,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Channel {
    Pos,
    Web,
    App,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IntentLine {
    pub(crate) sku: String,
    pub(crate) quantity: u64,
    pub(crate) unit_price_minor: i64,
    pub(crate) source: LineSource,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum LineSource {
    Allowance,
    Hub,
    Provisional,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum StockCommand {
    Receive {
        key: String,
        sku: String,
        quantity: u64,
    },
    StockTake {
        key: String,
        sku: String,
        counted: u64,
    },
    Adjust {
        key: String,
        sku: String,
        delta: i64,
        reason: String,
    },
    SetPolicy {
        sku: String,
        policy: StockPolicy,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StockPolicy {
    pub(crate) strong_at_or_below: u64,
    pub(crate) offline: OfflinePolicy,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum OfflinePolicy {
    Block,
    Provisional,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum StockMode {
    Escrow,
    Strong,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderStatusChange {
    pub(crate) order_id: String,
    pub(crate) expected_version: u64,
    pub(crate) status: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Decision {
    Confirmed {
        order_no: u64,
    },
    Short {
        order_no: u64,
        lines: Vec<ShortLine>,
    },
    Applied {
        version: u64,
    },
    Refused(Refusal),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShortLine {
    pub(crate) sku: String,
    pub(crate) quantity: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    OutOfStock { sku: String, available: u64 },
    PriceChanged { sku: String, current_minor: i64 },
    Duplicate { order_no: Option<u64> },
    VersionConflict { current: u64 },
    NotFound { what: String },
    AllowanceExceeded { sku: String, held: u64 },
    Invalid { detail: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Record {
    Stock(StockRecord),
    Allowance(AllowanceRecord),
    Order(OrderRecord),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StockRecord {
    pub(crate) sku: String,
    pub(crate) on_hand: u64,
    pub(crate) free: u64,
    pub(crate) reserved: u64,
    pub(crate) held: u64,
    pub(crate) mode: StockMode,
    pub(crate) policy: StockPolicy,
    pub(crate) version: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AllowanceRecord {
    pub(crate) device: String,
    pub(crate) sku: String,
    pub(crate) granted: u64,
    pub(crate) spent: u64,
    pub(crate) released: u64,
    pub(crate) recall: bool,
    pub(crate) version: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderLineRecord {
    pub(crate) sku: String,
    pub(crate) quantity: u64,
    pub(crate) unit_price_minor: i64,
    pub(crate) short: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderRecord {
    pub(crate) order_id: String,
    pub(crate) order_no: u64,
    pub(crate) device: String,
    pub(crate) status: String,
    pub(crate) version: u64,
    pub(crate) lines: Vec<OrderLineRecord>,
    pub(crate) currency: String,
    pub(crate) total_minor: i64,
    pub(crate) payment_ref: String,
    pub(crate) decided_ms: u64,
    pub(crate) at_risk: bool,
}

/// Byte fields as MessagePack `bin`, as this release writes them.
mod serde_bytes {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}
