//! Wire messages of the sync protocol and their binary codec.
//!
//! A frame is one WebSocket binary message: the two magic bytes `OS`, one
//! protocol version byte, then the message encoded with postcard. The version
//! byte comes before the body so that a hub can refuse a client from a future
//! protocol with a clear reason instead of a decode error. See
//! `docs/protocol.md` for the full description and a worked transcript.

use serde::{Deserialize, Serialize};

use crate::vocab::ids::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Magic bytes that open every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"OS";
/// Hard limit on the size of one frame, in either direction.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most ops one `Push` may carry.
pub const PUSH_OPS_MAX: usize = 256;
/// Most document changes one op may carry.
pub const OP_DOC_CHANGES_MAX: usize = 32;
/// Most encoded bytes of one op (its changes together).
pub const OP_BYTES_MAX: usize = 1024 * 1024;
/// Most subscriptions one connection may hold.
pub const SUBSCRIPTIONS_MAX: usize = 64;
/// Most changes in one `Changes` message.
pub const CHANGE_BATCH_LEN_MAX: usize = 512;
/// Target for the encoded size of one `Changes` message; a batch stops
/// growing once it passes this, which keeps every batch well under
/// [`FRAME_BYTES_MAX`] even with one op of [`OP_BYTES_MAX`] in it.
pub const CHANGE_BATCH_BYTES_TARGET: usize = 1024 * 1024;
/// Longest free-text detail in an error or rejection.
pub const DETAIL_BYTES_MAX: usize = 512;

/// A message from a device to the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection.
    Hello(Hello),
    /// Start (or resume) receiving the changes of document sets.
    Subscribe(Vec<SubscriptionRequest>),
    /// Upload operations from the device's log.
    Push(Vec<Op>),
    /// Keep-alive; the hub answers with `Pong` carrying the same nonce.
    Ping(u64),
}

/// A message from the hub to a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HubMessage {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// Verdicts for pushed ops, each sent only after the hub's durable commit.
    Acks(Vec<Ack>),
    /// Changes of one subscribed document set.
    Changes(ChangeBatch),
    /// Answer to `Ping`.
    Pong(u64),
    /// A fatal protocol error; the hub closes the connection after sending it.
    Error(ProtocolError),
}

/// Handshake sent by a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The enrolled device.
    pub device: DeviceId,
    /// The store the device belongs to.
    pub store: StoreId,
    /// The local database the device's ops come from.
    pub replica: ReplicaId,
    /// Proof of identity; checked by the hub's authenticator.
    pub credentials: Credentials,
    /// Free text naming the client software, for logs.
    pub agent: String,
}

/// Credentials presented in the handshake.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// A bearer token (a signed device token once the security layer lands).
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets into logs.
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The hub's answer to a successful handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The hub's name, for logs and status screens.
    pub hub_id: String,
    /// The hub's clock at the time of the handshake, in ms since the epoch.
    pub hub_time_ms: u64,
    /// The document sets this device may subscribe to.
    pub allowed_sets: Vec<DocSetId>,
    /// Identity of the hub's change log. Cursors are positions in one log: a
    /// device that finds a different log id (a restored or replaced hub
    /// database) starts its cursors again from 0.
    pub log_id: String,
}

/// Subscribe to a document set from a cursor (0 = from the beginning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRequest {
    /// The set.
    pub set: DocSetId,
    /// The last hub sequence number the device has already applied for this set.
    pub cursor: u64,
}

/// One operation from a device's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Unique id; the hub applies each id once.
    pub id: OpId,
    /// Device wall clock when the op was recorded, ms since the epoch (informational).
    pub created_ms: u64,
    /// What the op does.
    pub body: OpBody,
}

/// The payload of an op. New variants are added at the end only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpBody {
    /// Automerge changes to one or more documents, made atomically on the device.
    Changes(Vec<DocChange>),
    /// Something only the hub decides (checkout, stock command, order
    /// status); answered with [`AckOutcome::Decided`].
    Intent(crate::vocab::intent::Intent),
}

/// One automerge change to one document.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DocChange {
    /// The document changed.
    pub doc: DocId,
    /// The automerge change, in its binary format.
    #[serde(with = "serde_bytes_compat")]
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for DocChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocChange({}, {} bytes)", self.doc, self.bytes.len())
    }
}

/// The hub's verdict on one op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The op.
    pub op: OpId,
    /// What happened to it.
    pub outcome: AckOutcome,
}

/// What the hub did with an op. Both `Applied` and `Rejected` are durable
/// answers: a retried op gets the same one back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Stored durably; its changes carry hub sequence numbers up to `hub_seq`.
    Applied {
        /// Highest hub sequence number given to the op's changes.
        hub_seq: u64,
    },
    /// Refused; the device moves the op to its dead-letter lane.
    Rejected {
        /// Machine-readable reason.
        code: RejectCode,
        /// Human-readable explanation.
        detail: String,
    },
    /// An intent was decided (durably, in the same commit as this answer).
    Decided(crate::vocab::intent::Decision),
}

/// Why the hub refused an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectCode {
    /// A change is not a valid automerge change.
    MalformedChange,
    /// A change was made by a different actor than the pushing replica.
    WrongAuthor,
    /// The op touches a document set the device may not write.
    Forbidden,
    /// The op exceeds a size limit.
    TooLarge,
    /// The op is empty or otherwise unusable.
    Invalid,
}

impl RejectCode {
    /// Stable text form, as the device's op log stores it.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectCode::MalformedChange => "MalformedChange",
            RejectCode::WrongAuthor => "WrongAuthor",
            RejectCode::Forbidden => "Forbidden",
            RejectCode::TooLarge => "TooLarge",
            RejectCode::Invalid => "Invalid",
        }
    }

    /// Parses the text form; anything else is `None`, never a guess.
    pub fn parse(text: &str) -> Option<Self> {
        [
            RejectCode::MalformedChange,
            RejectCode::WrongAuthor,
            RejectCode::Forbidden,
            RejectCode::TooLarge,
            RejectCode::Invalid,
        ]
        .into_iter()
        .find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A page of changes of one document set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// The set.
    pub set: DocSetId,
    /// The changes, in ascending hub sequence order.
    pub changes: Vec<RemoteChange>,
    /// The device is now up to date with the set through this sequence number;
    /// it stores it as its cursor in the same transaction that applies the changes.
    pub cursor: u64,
    /// True when this batch reaches the hub's head at the time it was sent:
    /// later batches for the set are live fan-out.
    pub caught_up: bool,
}

/// One change as stored and numbered by the hub.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteChange {
    /// Position in the hub's change log.
    pub hub_seq: u64,
    /// The document.
    pub doc: DocId,
    /// The replica that made the change (the hub for hub-made snapshots).
    pub origin: ReplicaId,
    /// Automerge bytes: a change, or a saved document (snapshot).
    #[serde(with = "serde_bytes_compat")]
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for RemoteChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteChange(#{} {} {} bytes)",
            self.hub_seq,
            self.doc,
            self.bytes.len()
        )
    }
}

/// A fatal protocol error, sent before the hub closes the connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub detail: String,
}

/// Machine-readable protocol error codes; also used as WebSocket close reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed,
    /// The frame is larger than [`FRAME_BYTES_MAX`].
    TooLarge,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// The credentials were refused.
    Unauthenticated,
    /// The device asked for something it may not have.
    Forbidden,
    /// A message arrived that is not valid in the current state.
    UnexpectedMessage,
    /// A limit (subscriptions, ops per push) was exceeded.
    LimitExceeded,
    /// The hub is shutting down; reconnect later.
    ShuttingDown,
    /// A time limit passed (no handshake, or silence).
    Timeout,
    /// The hub failed internally; reconnect later.
    Internal,
}

impl ErrorCode {
    /// Stable text form used in close frames and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnexpectedMessage => "unexpected-message",
            ErrorCode::LimitExceeded => "limit-exceeded",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {FRAME_BYTES_MAX} bytes")]
    TooLarge {
        /// The frame's size.
        len: usize,
    },
    /// Does not start with the magic bytes.
    #[error("not an omnisync frame (bad magic bytes)")]
    BadMagic,
    /// Speaks another protocol version.
    #[error("protocol version {got} is not supported; this side speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The version in the frame.
        got: u8,
    },
    /// The body does not decode.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The protocol error code to report for this decode failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::BadMagic | DecodeError::Malformed(_) => ErrorCode::Malformed,
        }
    }
}

/// Encodes a message into a frame.
pub fn encode<M: Serialize>(message: &M) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.push(PROTOCOL_VERSION);
    // Serializing plain data into a Vec cannot fail: postcard only errors on
    // unsupported serde features, which our message types do not use.
    postcard::to_io(message, &mut frame).expect("postcard encoding of protocol message");
    frame
}

/// Decodes a frame. Never panics, whatever the bytes.
pub fn decode<M: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<M, DecodeError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge { len: frame.len() });
    }
    if frame.len() < 3 || frame[..2] != FRAME_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if frame[2] != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { got: frame[2] });
    }
    let (message, rest) = postcard::take_from_bytes::<M>(&frame[3..])
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(message)
}

/// Truncates free text from a peer or for a peer to [`DETAIL_BYTES_MAX`].
pub fn clamp_detail(mut detail: String) -> String {
    if detail.len() > DETAIL_BYTES_MAX {
        let mut end = DETAIL_BYTES_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

impl Op {
    /// Approximate encoded size of the op's payload (see [`OpBody::payload_len`]).
    pub fn payload_len(&self) -> usize {
        self.body.payload_len()
    }
}

impl OpBody {
    /// Approximate encoded size: change bytes plus document ids. The one
    /// measure [`OP_BYTES_MAX`] is checked against, on devices and hub alike.
    pub fn payload_len(&self) -> usize {
        match self {
            OpBody::Changes(changes) => changes
                .iter()
                .map(|change| change.bytes.len() + change.doc.as_str().len())
                .sum(),
            OpBody::Intent(intent) => {
                postcard::to_stdvec(intent).map_or(usize::MAX, |bytes| bytes.len())
            }
        }
    }
}

/// Byte vectors as serde bytes (postcard writes them as length + raw bytes
/// instead of one varint per element).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_push() -> ClientMessage {
        ClientMessage::Push(vec![Op {
            id: OpId {
                replica: ReplicaId([7; 16]),
                seq: 42,
            },
            created_ms: 1_700_000_000_000,
            body: OpBody::Changes(vec![DocChange {
                doc: DocId::new("store.s1/stock/001").unwrap(),
                bytes: vec![1, 2, 3],
            }]),
        }])
    }

    #[test]
    fn frames_round_trip() {
        let message = sample_push();
        let frame = encode(&message);
        assert_eq!(&frame[..3], b"OS\x01");
        assert_eq!(decode::<ClientMessage>(&frame).unwrap(), message);
    }

    #[test]
    fn wrong_version_is_reported_before_the_body_is_read() {
        let mut frame = encode(&sample_push());
        frame[2] = 9;
        assert_eq!(
            decode::<ClientMessage>(&frame),
            Err(DecodeError::UnsupportedVersion { got: 9 })
        );
    }

    #[test]
    fn invalid_ids_inside_a_frame_are_malformed() {
        let frame = encode(&ClientMessage::Subscribe(vec![SubscriptionRequest {
            set: DocSetId::store(&StoreId::new("s1").unwrap()),
            cursor: 0,
        }]));
        // Corrupt the set id's text into something with a slash.
        let text_at = frame.windows(2).position(|w| w == b"s1").unwrap();
        let mut bad = frame.clone();
        bad[text_at] = b'/';
        assert!(matches!(
            decode::<ClientMessage>(&bad),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn detail_is_clamped_on_a_char_boundary() {
        let long = "é".repeat(DETAIL_BYTES_MAX);
        let clamped = clamp_detail(long);
        assert!(clamped.len() <= DETAIL_BYTES_MAX);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ClientMessage>(&bytes);
            let _ = decode::<HubMessage>(&bytes);
            let mut framed = b"OS\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode::<ClientMessage>(&framed);
            let _ = decode::<HubMessage>(&framed);
        }

        #[test]
        fn acks_round_trip(seq in any::<u64>(), hub_seq in any::<u64>(), detail in ".{0,40}") {
            let message = HubMessage::Acks(vec![
                Ack { op: OpId { replica: ReplicaId([1; 16]), seq }, outcome: AckOutcome::Applied { hub_seq } },
                Ack { op: OpId { replica: ReplicaId([2; 16]), seq }, outcome: AckOutcome::Rejected { code: RejectCode::Forbidden, detail } },
            ]);
            prop_assert_eq!(decode::<HubMessage>(&encode(&message)).unwrap(), message);
        }
    }
}
