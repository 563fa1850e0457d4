//! Golden vectors and compatibility of this release's formats (protocol
//! version 2, stored format `0xC1 0x02`, records `R2`).
//!
//! - `vectors/v2.json` holds the encoding of every message kind, intent,
//!   decision and record of this release; the current code must decode each
//!   to the same value and encode each value to the same bytes. Regenerate
//!   with `OMNISYNC_WRITE_VECTORS=1 cargo test -p omnisync-core --test formats`
//!   only when a change is meant to be compatible (new optional fields,
//!   variants); review the diff.
//! - `frozen/v2.rs` is a frozen copy of this release's decoder types: it
//!   must keep decoding what the current code sends (a device of this
//!   release talking to a later hub).
//! - The current decoder must take an unknown field and answer an unknown
//!   variant with the typed catch-all or refusal.

#[path = "frozen/v2.rs"]
mod frozen;

use std::collections::BTreeMap;

use omnisync_core::protocol::message::{
    self, Ack, AckOutcome, ChangeBatch, ClientMessage, Credentials, DecodeError, DocChange,
    ErrorCode, Hello, HubMessage, Op, OpBody, ProbedOp, ProtocolError, RejectCode, RemoteChange,
    SubscriptionRequest, VersionRange, Welcome,
};
use omnisync_core::vocab::codec::{self, STORED_MAGIC, UnknownVariant};
use omnisync_core::vocab::intent::{
    CheckoutIntent, Decision, Intent, IntentLine, LineSource, OfflinePolicy, OrderStatusChange,
    Refusal, ShortLine, StockCommand, StockMode, StockPolicy,
};
use omnisync_core::vocab::record::{
    AllowanceRecord, OrderLineRecord, OrderRecord, Record, RecordError, StockRecord,
};
use omnisync_core::{Channel, Currency, DeviceId, DocId, DocSetId, OpId, ReplicaId, Sku, StoreId};
use serde_json::json;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v2.json");

/// One value of this release with its encoding.
#[derive(Debug, Clone, PartialEq)]
enum Sample {
    Client(ClientMessage),
    Hub(HubMessage),
    Intent(Intent),
    Decision(Decision),
    Record(Record),
}

impl Sample {
    fn encode(&self) -> Vec<u8> {
        match self {
            Sample::Client(message) => message::encode(message),
            Sample::Hub(message) => message::encode(message),
            Sample::Intent(intent) => codec::encode_stored(intent),
            Sample::Decision(decision) => codec::encode_stored(decision),
            Sample::Record(record) => record.encode(),
        }
    }

    /// Decodes `bytes` as the same kind of value with the current code.
    fn decode_like(&self, bytes: &[u8]) -> Result<Sample, String> {
        Ok(match self {
            Sample::Client(_) => Sample::Client(message::decode(bytes).map_err(|e| e.to_string())?),
            Sample::Hub(_) => Sample::Hub(message::decode(bytes).map_err(|e| e.to_string())?),
            Sample::Intent(_) => {
                Sample::Intent(codec::decode_stored(bytes).map_err(|e| e.to_string())?)
            }
            Sample::Decision(_) => {
                Sample::Decision(codec::decode_stored(bytes).map_err(|e| e.to_string())?)
            }
            Sample::Record(_) => Sample::Record(Record::decode(bytes).map_err(|e| e.to_string())?),
        })
    }

    /// Decodes `bytes` with the frozen copy of this release's types and
    /// encodes the result again (must give the same body).
    /// The sample without the optional fields added since the frozen
    /// release (the handshake's probe and its answer): what a peer of that
    /// release reads of it.
    fn without_additions(&self) -> Sample {
        let mut sample = self.clone();
        match &mut sample {
            Sample::Client(ClientMessage::Hello(hello)) => hello.probe = None,
            Sample::Hub(HubMessage::Welcome(welcome)) => welcome.probe_known = None,
            _ => {}
        }
        sample
    }

    fn frozen_round_trip(&self, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        fn again<T: serde::Serialize + serde::de::DeserializeOwned>(
            body: &[u8],
        ) -> Result<(Vec<u8>, Vec<u8>), String> {
            let value: T = codec::from_named(body, &[]).map_err(|e| e.to_string())?;
            Ok((body.to_vec(), codec::to_named(&value)))
        }
        match self {
            Sample::Client(_) => again::<frozen::ClientMessage>(&bytes[3..]),
            Sample::Hub(_) => again::<frozen::HubMessage>(&bytes[3..]),
            Sample::Intent(_) => again::<frozen::Intent>(&bytes[2..]),
            Sample::Decision(_) => again::<frozen::Decision>(&bytes[2..]),
            Sample::Record(_) => again::<frozen::Record>(&bytes[2..]),
        }
    }
}

/// Where the body starts in a sample's encoding (after the frame header
/// or the stored prefix).
fn body_start(sample: &Sample) -> usize {
    match sample {
        Sample::Client(_) | Sample::Hub(_) => 3,
        Sample::Intent(_) | Sample::Decision(_) | Sample::Record(_) => 2,
    }
}

fn sku(text: &str) -> Sku {
    Sku::new(text).unwrap()
}

fn op_id(seq: u64) -> OpId {
    OpId {
        replica: ReplicaId([7; 16]),
        seq,
    }
}

fn intents() -> Vec<(&'static str, Intent)> {
    vec![
        (
            "checkout",
            Intent::Checkout(CheckoutIntent {
                order_id: "till-1-0001".parse().unwrap(),
                idempotency_key: "k-1".parse().unwrap(),
                lines: vec![IntentLine {
                    sku: sku("tea"),
                    quantity: 2,
                    unit_price_minor: 450,
                    source: LineSource::Allowance,
                }],
                currency: Currency::new("EUR").unwrap(),
                payment_ref: "card-9".parse().unwrap(),
                channel: Channel::Pos,
            }),
        ),
        (
            "stock-receive",
            Intent::Stock(StockCommand::Receive {
                key: "dn-1".parse().unwrap(),
                sku: sku("tea"),
                quantity: 40,
            }),
        ),
        (
            "stock-take",
            Intent::Stock(StockCommand::StockTake {
                key: "st-1".parse().unwrap(),
                sku: sku("tea"),
                counted: 38,
            }),
        ),
        (
            "stock-adjust",
            Intent::Stock(StockCommand::Adjust {
                key: "adj-1".parse().unwrap(),
                sku: sku("tea"),
                delta: -2,
                reason: "damaged".into(),
            }),
        ),
        (
            "stock-set-policy",
            Intent::Stock(StockCommand::SetPolicy {
                sku: sku("tea"),
                policy: StockPolicy {
                    strong_at_or_below: 3,
                    offline: OfflinePolicy::Provisional,
                },
            }),
        ),
        (
            "order-status",
            Intent::OrderStatus(OrderStatusChange {
                order_id: "till-1-0001".parse().unwrap(),
                expected_version: 1,
                status: "paid".parse().unwrap(),
            }),
        ),
        (
            "reserve",
            Intent::Reserve {
                key: "web-7".parse().unwrap(),
                sku: sku("tea"),
                quantity: 1,
            },
        ),
        (
            "commit-reservation",
            Intent::CommitReservation {
                key: "web-7".parse().unwrap(),
            },
        ),
        (
            "cancel-reservation",
            Intent::CancelReservation {
                key: "web-7".parse().unwrap(),
            },
        ),
        (
            "release-allowance",
            Intent::ReleaseAllowance {
                sku: sku("tea"),
                quantity: 4,
            },
        ),
    ]
}

fn decisions() -> Vec<(&'static str, Decision)> {
    let refusals = vec![
        (
            "refused-out-of-stock",
            Refusal::OutOfStock {
                sku: "tea".into(),
                available: 1,
            },
        ),
        (
            "refused-price-changed",
            Refusal::PriceChanged {
                sku: "tea".into(),
                current_minor: 499,
            },
        ),
        (
            "refused-duplicate",
            Refusal::Duplicate { order_no: Some(12) },
        ),
        (
            "refused-version-conflict",
            Refusal::VersionConflict { current: 3 },
        ),
        (
            "refused-not-found",
            Refusal::NotFound {
                what: "reservation web-7".into(),
            },
        ),
        (
            "refused-allowance-exceeded",
            Refusal::AllowanceExceeded {
                sku: "tea".into(),
                held: 2,
            },
        ),
        (
            "refused-invalid",
            Refusal::Invalid {
                detail: "empty checkout".into(),
            },
        ),
    ];
    let mut decisions = vec![
        ("confirmed", Decision::Confirmed { order_no: 12 }),
        (
            "short",
            Decision::Short {
                order_no: 13,
                lines: vec![ShortLine {
                    sku: sku("teapot"),
                    quantity: 1,
                }],
            },
        ),
        ("applied", Decision::Applied { version: 5 }),
    ];
    decisions.extend(
        refusals
            .into_iter()
            .map(|(name, refusal)| (name, Decision::Refused(refusal))),
    );
    decisions
}

fn records() -> Vec<(&'static str, Record)> {
    vec![
        (
            "stock",
            Record::Stock(StockRecord {
                sku: sku("tea"),
                on_hand: 40,
                free: 20,
                reserved: 1,
                held: 19,
                mode: StockMode::Escrow,
                policy: StockPolicy::default(),
                version: 9,
            }),
        ),
        (
            "allowance",
            Record::Allowance(AllowanceRecord {
                device: DeviceId::new("till-1").unwrap(),
                sku: sku("tea"),
                granted: 10,
                spent: 3,
                released: 0,
                recall: true,
                version: 4,
            }),
        ),
        (
            "order",
            Record::Order(OrderRecord {
                order_id: "till-1-0001".parse().unwrap(),
                order_no: 12,
                device: DeviceId::new("till-1").unwrap(),
                status: "confirmed".parse().unwrap(),
                version: 1,
                lines: vec![OrderLineRecord {
                    sku: sku("tea"),
                    quantity: 2,
                    unit_price_minor: 450,
                    short: 0,
                }],
                currency: "EUR".into(),
                total_minor: 900,
                payment_ref: "card-9".parse().unwrap(),
                decided_ms: 1_700_000_000_123,
                at_risk: false,
            }),
        ),
    ]
}

fn samples() -> Vec<(String, Sample)> {
    let store = StoreId::new("berlin-01").unwrap();
    let set = DocSetId::store(&store);
    let doc = DocId::new("store.berlin-01/catalog/tea").unwrap();
    let mut out: Vec<(String, Sample)> = vec![
        (
            "client-hello".into(),
            Sample::Client(ClientMessage::Hello(Hello {
                device: DeviceId::new("till-1").unwrap(),
                store: store.clone(),
                replica: ReplicaId([7; 16]),
                credentials: Credentials {
                    token: Some("token".into()),
                },
                agent: "omnisync-core/0.1.0".into(),
                versions: Some(VersionRange::SUPPORTED),
                probe: None,
            })),
        ),
        (
            "client-hello-probe".into(),
            Sample::Client(ClientMessage::Hello(Hello {
                device: DeviceId::new("till-1").unwrap(),
                store: store.clone(),
                replica: ReplicaId([7; 16]),
                credentials: Credentials {
                    token: Some("token".into()),
                },
                agent: "omnisync-core/0.1.0".into(),
                versions: Some(VersionRange::SUPPORTED),
                probe: Some(vec![
                    ProbedOp {
                        op: op_id(8),
                        hub_seq: 120,
                    },
                    ProbedOp {
                        op: op_id(7),
                        hub_seq: 117,
                    },
                ]),
            })),
        ),
        (
            "client-subscribe".into(),
            Sample::Client(ClientMessage::Subscribe(vec![SubscriptionRequest {
                set: set.clone(),
                cursor: 17,
            }])),
        ),
        (
            "client-push-changes".into(),
            Sample::Client(ClientMessage::Push(vec![Op {
                id: op_id(1),
                created_ms: 1_700_000_000_000,
                body: OpBody::Changes(vec![DocChange {
                    doc: doc.clone(),
                    bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
                }]),
            }])),
        ),
        ("client-ping".into(), Sample::Client(ClientMessage::Ping(9))),
        (
            "hub-welcome".into(),
            Sample::Hub(HubMessage::Welcome(Welcome {
                hub_id: "hub-berlin".into(),
                hub_time_ms: 1_700_000_000_456,
                allowed_sets: vec![set.clone()],
                log_id: "13936a8b0806c3fcab209ce3d1eae382".into(),
                probe_known: None,
            })),
        ),
        (
            "hub-welcome-probe".into(),
            Sample::Hub(HubMessage::Welcome(Welcome {
                hub_id: "hub-berlin".into(),
                hub_time_ms: 1_700_000_000_456,
                allowed_sets: vec![set.clone()],
                log_id: "13936a8b0806c3fcab209ce3d1eae382".into(),
                probe_known: Some(vec![false, true]),
            })),
        ),
        (
            "hub-acks".into(),
            Sample::Hub(HubMessage::Acks(vec![
                Ack {
                    op: op_id(1),
                    outcome: AckOutcome::Applied { hub_seq: 99 },
                },
                Ack {
                    op: op_id(2),
                    outcome: AckOutcome::Rejected {
                        code: RejectCode::Forbidden,
                        detail: "not yours".into(),
                    },
                },
                Ack {
                    op: op_id(3),
                    outcome: AckOutcome::Decided(Decision::Confirmed { order_no: 12 }),
                },
            ])),
        ),
        (
            "hub-changes".into(),
            Sample::Hub(HubMessage::Changes(ChangeBatch {
                set: set.clone(),
                changes: vec![RemoteChange {
                    hub_seq: 99,
                    doc: doc.clone(),
                    origin: ReplicaId([7; 16]),
                    bytes: vec![0x85, 0x6f, 0x4a, 0x83, 4, 5, 6],
                }],
                cursor: 99,
                caught_up: true,
            })),
        ),
        ("hub-pong".into(), Sample::Hub(HubMessage::Pong(9))),
        (
            "hub-error".into(),
            Sample::Hub(HubMessage::Error(ProtocolError {
                code: ErrorCode::UnsupportedVersion,
                detail: "the device speaks protocol version 1".into(),
            })),
        ),
    ];
    for code in [
        RejectCode::MalformedChange,
        RejectCode::WrongAuthor,
        RejectCode::TooLarge,
        RejectCode::Invalid,
    ] {
        out.push((
            format!("hub-ack-rejected-{code:?}"),
            Sample::Hub(HubMessage::Acks(vec![Ack {
                op: op_id(4),
                outcome: AckOutcome::Rejected {
                    code,
                    detail: String::new(),
                },
            }])),
        ));
    }
    for code in [
        ErrorCode::Malformed,
        ErrorCode::TooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::UnexpectedMessage,
        ErrorCode::LimitExceeded,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ] {
        out.push((
            format!("hub-error-{}", code.as_str()),
            Sample::Hub(HubMessage::Error(ProtocolError {
                code,
                detail: String::new(),
            })),
        ));
    }
    for (name, intent) in intents() {
        out.push((
            format!("client-push-intent-{name}"),
            Sample::Client(ClientMessage::Push(vec![Op {
                id: op_id(5),
                created_ms: 1_700_000_000_000,
                body: OpBody::Intent(intent.clone()),
            }])),
        ));
        out.push((format!("intent-{name}"), Sample::Intent(intent)));
    }
    for (name, decision) in decisions() {
        out.push((
            format!("hub-ack-decided-{name}"),
            Sample::Hub(HubMessage::Acks(vec![Ack {
                op: op_id(6),
                outcome: AckOutcome::Decided(decision.clone()),
            }])),
        ));
        out.push((format!("decision-{name}"), Sample::Decision(decision)));
    }
    for (name, record) in records() {
        out.push((format!("record-{name}"), Sample::Record(record)));
    }
    out
}

fn stored_vectors() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(VECTORS).expect("tests/vectors/v2.json");
    serde_json::from_str(&text).expect("vectors are a JSON object of hex strings")
}

#[test]
fn golden_vectors_decode_to_this_release_and_encode_the_same() {
    let samples = samples();
    let current: BTreeMap<String, String> = samples
        .iter()
        .map(|(name, sample)| (name.clone(), hex::encode(sample.encode())))
        .collect();
    if std::env::var_os("OMNISYNC_WRITE_VECTORS").is_some() {
        // Write then rename: the other tests read the file meanwhile.
        let text = serde_json::to_string_pretty(&current).unwrap() + "\n";
        let fresh = format!("{VECTORS}.new");
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, VECTORS).unwrap();
    }
    let stored = stored_vectors();
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        current.keys().collect::<Vec<_>>(),
        "the vector file names exactly this release's samples"
    );
    let mut failures = Vec::new();
    for (name, sample) in &samples {
        let bytes = hex::decode(&stored[name]).unwrap();
        match sample.decode_like(&bytes) {
            Ok(decoded) if &decoded == sample => {}
            Ok(decoded) => failures.push(format!("{name}: decodes to {decoded:?}")),
            Err(error) => failures.push(format!("{name}: does not decode: {error}")),
        }
        if current[name] != stored[name] {
            failures.push(format!(
                "{name}: encodes as {} instead of {}",
                current[name], stored[name]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden vectors broken:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_frozen_decoder_of_this_release_reads_what_the_current_code_sends() {
    for (name, sample) in samples() {
        let bytes = sample.encode();
        let (_, again) = sample
            .frozen_round_trip(&bytes)
            .unwrap_or_else(|error| panic!("{name}: the frozen v2 decoder fails: {error}"));
        // Fields added since are skipped by the frozen reader, nothing else.
        let body = sample.without_additions().encode()[body_start(&sample)..].to_vec();
        assert_eq!(
            hex::encode(again),
            hex::encode(body),
            "{name}: frozen v2 reads it differently"
        );
    }
}

/// A frame of protocol version 2 holding any MessagePack value.
fn frame_of(value: &serde_json::Value) -> Vec<u8> {
    let mut frame = b"OS\x02".to_vec();
    frame.extend(rmp_serde::to_vec_named(value).unwrap());
    frame
}

fn replica_json() -> serde_json::Value {
    json!([7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7])
}

#[test]
fn unknown_fields_are_ignored_and_unknown_variants_are_typed() {
    // A later Hello with a field this release does not know.
    let hello = frame_of(&json!({"Hello": {
        "device": "till-1", "store": "berlin-01", "replica": replica_json(),
        "credentials": {"token": null}, "agent": "omnisync-core/9.0",
        "versions": {"min": 2, "max": 5}, "locale": "de-DE"
    }}));
    let ClientMessage::Hello(decoded) = message::decode::<ClientMessage>(&hello).unwrap() else {
        panic!("not a Hello");
    };
    assert_eq!(decoded.versions, Some(VersionRange { min: 2, max: 5 }));

    // A message kind from a later release: a typed refusal.
    let notice = frame_of(&json!({"Notice": {"text": "maintenance at 22:00"}}));
    assert_eq!(
        message::decode::<HubMessage>(&notice),
        Err(DecodeError::UnknownKind {
            kind: "Notice".into()
        })
    );

    // Acks with a later outcome, a later decision and a later reject code:
    // the batch still decodes and the known ack is kept.
    let acks = frame_of(&json!({"Acks": [
        {"op": {"replica": replica_json(), "seq": 1}, "outcome": {"Applied": {"hub_seq": 5, "lane": 2}}},
        {"op": {"replica": replica_json(), "seq": 2}, "outcome": {"Deferred": {"until_ms": 5}}},
        {"op": {"replica": replica_json(), "seq": 3}, "outcome": {"Decided": {"Queued": {"position": 4}}}},
        {"op": {"replica": replica_json(), "seq": 4}, "outcome": {"Rejected": {"code": "Throttled", "detail": ""}}}
    ]}));
    let HubMessage::Acks(acks) = message::decode::<HubMessage>(&acks).unwrap() else {
        panic!("not Acks");
    };
    assert_eq!(acks[0].outcome, AckOutcome::Applied { hub_seq: 5 });
    assert_eq!(
        acks[1].outcome,
        AckOutcome::Unknown(UnknownVariant {
            kind: "Deferred".into()
        })
    );
    assert_eq!(
        acks[2].outcome,
        AckOutcome::Unknown(UnknownVariant {
            kind: "Decided".into()
        })
    );
    assert_eq!(
        acks[3].outcome,
        AckOutcome::Rejected {
            code: RejectCode::Unknown,
            detail: String::new()
        }
    );

    // An error code from a later release.
    let error = frame_of(&json!({"Error": {"code": "Throttled", "detail": "slow down"}}));
    assert!(matches!(
        message::decode::<HubMessage>(&error).unwrap(),
        HubMessage::Error(ProtocolError {
            code: ErrorCode::Unknown,
            ..
        })
    ));

    // A push with a later intent kind next to a known op.
    let push = frame_of(&json!({"Push": [
        {"id": {"replica": replica_json(), "seq": 1}, "created_ms": 1,
         "body": {"Intent": {"GiftCard": {"card": "g-1", "amount_minor": 500}}}},
        {"id": {"replica": replica_json(), "seq": 2}, "created_ms": 1,
         "body": {"Intent": {"CancelReservation": {"key": "web-7"}}}}
    ]}));
    let ClientMessage::Push(ops) = message::decode::<ClientMessage>(&push).unwrap() else {
        panic!("not a Push");
    };
    assert!(matches!(&ops[0].body, OpBody::Unknown(unknown) if unknown.kind == "Intent"));
    assert_eq!(
        ops[1].body,
        OpBody::Intent(Intent::CancelReservation {
            key: "web-7".parse().unwrap()
        })
    );

    // A record kind from a later release.
    let mut voucher = b"R2".to_vec();
    voucher.extend(rmp_serde::to_vec_named(&json!({"Voucher": {"code": "v-1"}})).unwrap());
    assert_eq!(
        Record::decode(&voucher),
        Err(RecordError::UnknownKind {
            kind: "Voucher".into()
        })
    );
}

#[test]
fn previous_release_frames_and_blobs_still_decode() {
    for (name, sample) in samples() {
        let (v1, current) = match &sample {
            Sample::Client(message) => (
                message::encode_version(message, 1).unwrap(),
                Sample::Client(message.clone()),
            ),
            Sample::Hub(message) => (
                message::encode_version(message, 1).unwrap(),
                Sample::Hub(message.clone()),
            ),
            Sample::Intent(intent) => (postcard::to_stdvec(intent).unwrap(), sample.clone()),
            Sample::Decision(decision) => (postcard::to_stdvec(decision).unwrap(), sample.clone()),
            Sample::Record(record) => {
                let mut bytes = b"R1".to_vec();
                bytes.extend(postcard::to_stdvec(record).unwrap());
                (bytes, sample.clone())
            }
        };
        // Version 1 carries none of the fields added since.
        let mut expected = current.without_additions();
        // A version 1 Hello carries no range.
        if let Sample::Client(ClientMessage::Hello(hello)) = &mut expected {
            hello.versions = None;
        }
        assert_eq!(
            sample.decode_like(&v1).unwrap(),
            expected,
            "{name}: version 1 form"
        );
    }
    assert!(STORED_MAGIC[0] == 0xC1);
}

#[test]
fn versions_are_negotiated_to_the_highest_common() {
    let ours = VersionRange::SUPPORTED;
    assert_eq!(
        ours.highest_common(&VersionRange { min: 1, max: 1 }),
        Some(1)
    );
    assert_eq!(
        ours.highest_common(&VersionRange { min: 1, max: 9 }),
        Some(2)
    );
    assert_eq!(ours.highest_common(&VersionRange { min: 3, max: 9 }), None);
    let frame = b"OS\x03\x00".to_vec();
    assert_eq!(
        message::decode::<ClientMessage>(&frame),
        Err(DecodeError::UnsupportedVersion { got: 3 })
    );
}

#[test]
fn a_version_1_device_gets_hub_records_in_the_previous_format() {
    let (_, record) = records().remove(0);
    let batch = HubMessage::Changes(ChangeBatch {
        set: DocSetId::new("store.berlin-01").unwrap(),
        changes: vec![RemoteChange {
            hub_seq: 5,
            doc: DocId::new("store.berlin-01/rec/stock/tea").unwrap(),
            origin: ReplicaId([1; 16]),
            bytes: record.encode(),
        }],
        cursor: 5,
        caught_up: true,
    });
    let frame = message::encode_version(&batch, 1).unwrap();
    let HubMessage::Changes(sent) = message::decode::<HubMessage>(&frame).unwrap() else {
        panic!("not Changes");
    };
    let bytes = &sent.changes[0].bytes;
    assert_eq!(&bytes[..2], b"R1");
    let mut v1 = b"R1".to_vec();
    v1.extend(postcard::to_stdvec(&record).unwrap());
    assert_eq!(bytes, &v1);
}
