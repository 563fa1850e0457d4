//! Wire messages of the sync protocol and their binary codec.
//!
//! A frame is one WebSocket binary message: the two magic bytes `OS`, one
//! protocol version byte, then the message. Version 2 (this release) encodes
//! the message as MessagePack with named fields (see [`crate::vocab::codec`]);
//! version 1 (the previous release) as positional postcard, still decoded
//! and, for a device that speaks only version 1, still sent. The version
//! byte comes before the body so that a peer can refuse a frame from a
//! future protocol with a clear reason instead of a decode error. The
//! handshake negotiates the version: [`Hello::versions`] names the device's
//! range and the hub answers in the highest version both speak. See
//! `docs/protocol.md` ("Versioning and evolution").

use serde::{Deserialize, Serialize};

use crate::vocab::codec::{self, CodecError, UnknownVariant};
use crate::vocab::ids::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};

/// The newest protocol version this build speaks (and the one it encodes
/// with until a handshake settles on another).
pub const PROTOCOL_VERSION: u8 = 2;
/// The oldest protocol version this build still speaks (the previous
/// release's postcard frames).
pub const PROTOCOL_VERSION_MIN: u8 = 1;
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
/// Most acknowledged ops one `Hello` may probe (see [`Hello::probe`]).
pub const PROBE_OPS_MAX: usize = 16;

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
    /// The protocol versions the device speaks; absent (a version 1 Hello):
    /// only the version of the frame that carried it.
    #[serde(default)]
    pub versions: Option<VersionRange>,
    /// Up to [`PROBE_OPS_MAX`] ops this device saw acknowledged, newest
    /// first, exponentially spaced back (the newest, the 2nd, 4th, 8th
    /// newest, …): the hub says in [`Welcome::probe_known`] which of them it
    /// holds, so that a device notices a hub restored from an older backup.
    /// Absent from a device that sends no probe (or of an older release);
    /// not encoded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Vec<ProbedOp>>,
}

/// One acknowledged op of a device's probe, with the hub sequence number
/// the device places it at (the `hub_seq` of its `Applied` ack; for a
/// decided intent, which carries none, a number at or below where the hub
/// committed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbedOp {
    /// The op.
    pub op: OpId,
    /// Where the device places it in the hub's log.
    pub hub_seq: u64,
}

/// An inclusive range of protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u8,
    /// Newest version spoken.
    pub max: u8,
}

impl VersionRange {
    /// The versions this build speaks.
    pub const SUPPORTED: VersionRange = VersionRange {
        min: PROTOCOL_VERSION_MIN,
        max: PROTOCOL_VERSION,
    };

    /// The highest version both ranges contain, if any.
    pub fn highest_common(&self, other: &VersionRange) -> Option<u8> {
        let high = self.max.min(other.max);
        (high >= self.min.max(other.min)).then_some(high)
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "version {}", self.min)
        } else {
            write!(f, "versions {} to {}", self.min, self.max)
        }
    }
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
    /// The answer to [`Hello::probe`], one flag per probed op in its order:
    /// true when the hub holds an outcome for the op. Absent when the
    /// `Hello` had no probe (or from a hub of an older release); not
    /// encoded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_known: Option<Vec<bool>>,
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
    /// A kind of op (or of intent) from a newer release. Never sent; the hub
    /// answers it with [`RejectCode::Invalid`] instead of dropping the push.
    #[serde(untagged)]
    Unknown(UnknownVariant),
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
    /// An outcome (or a decision) from a newer release. Never sent; the
    /// device leaves the op pending and says so, the other acks of the batch
    /// still apply.
    #[serde(untagged)]
    Unknown(UnknownVariant),
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
    /// A code from a newer release. Never sent.
    #[serde(other)]
    Unknown,
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
            RejectCode::Unknown => "Unknown",
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
            RejectCode::Unknown,
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
    /// A code from a newer release. Never sent.
    #[serde(other)]
    Unknown,
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
            ErrorCode::Unknown => "unknown",
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
    #[error(
        "protocol version {got} is not supported; this side speaks versions {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version in the frame.
        got: u8,
    },
    /// The body does not decode.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// A well-formed message of a kind this build does not know (a newer
    /// release's).
    #[error("unknown message kind `{kind}` (sent by a newer release?)")]
    UnknownKind {
        /// The message's kind (variant name).
        kind: String,
    },
}

/// Why a message cannot be put into a frame of the asked version.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// This build does not speak the version.
    #[error("protocol version {0} is not spoken by this build")]
    UnsupportedVersion(u8),
    /// The message has no form in the version (an unknown variant, which is
    /// never sent, in a version 1 frame).
    #[error("this message has no protocol version {version} form: {what}")]
    NotExpressible {
        /// The version asked for.
        version: u8,
        /// What could not be expressed.
        what: String,
    },
}

impl DecodeError {
    /// The protocol error code to report for this decode failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::BadMagic | DecodeError::Malformed(_) => ErrorCode::Malformed,
            DecodeError::UnknownKind { .. } => ErrorCode::UnexpectedMessage,
        }
    }
}

/// A top-level wire message ([`ClientMessage`] or [`HubMessage`]): encodable
/// in every protocol version this build speaks.
pub trait WireMessage: Serialize + serde::de::DeserializeOwned + Sized {
    /// The message kinds (variant names) this build knows.
    const KINDS: &'static [&'static str];
    /// Decodes a version 1 (postcard) body.
    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError>;
    /// Encodes the message as a version 1 (postcard) body.
    fn encode_v1(&self) -> Result<Vec<u8>, EncodeError>;
}

/// Encodes a message into a frame of this build's newest version
/// ([`PROTOCOL_VERSION`]).
pub fn encode<M: WireMessage>(message: &M) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.push(PROTOCOL_VERSION);
    frame.extend(codec::to_named(message));
    frame
}

/// Encodes a message into a frame of protocol `version` (the one the
/// handshake settled on).
pub fn encode_version<M: WireMessage>(message: &M, version: u8) -> Result<Vec<u8>, EncodeError> {
    match version {
        PROTOCOL_VERSION => Ok(encode(message)),
        1 => {
            let mut frame = FRAME_MAGIC.to_vec();
            frame.push(1);
            frame.extend(message.encode_v1()?);
            Ok(frame)
        }
        other => Err(EncodeError::UnsupportedVersion(other)),
    }
}

/// Decodes a frame of any version this build speaks. Never panics, whatever
/// the bytes.
pub fn decode<M: WireMessage>(frame: &[u8]) -> Result<M, DecodeError> {
    decode_versioned(frame).map(|(_, message)| message)
}

/// Decodes a frame and says which protocol version it was in.
pub fn decode_versioned<M: WireMessage>(frame: &[u8]) -> Result<(u8, M), DecodeError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge { len: frame.len() });
    }
    if frame.len() < 3 || frame[..2] != FRAME_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let body = &frame[3..];
    let message = match frame[2] {
        PROTOCOL_VERSION => {
            codec::from_named::<M>(body, M::KINDS).map_err(|error| match error {
                CodecError::UnknownKind { kind } => DecodeError::UnknownKind { kind },
                other => DecodeError::Malformed(other.to_string()),
            })?
        }
        1 => M::decode_v1(body)?,
        got => return Err(DecodeError::UnsupportedVersion { got }),
    };
    Ok((frame[2], message))
}

impl WireMessage for ClientMessage {
    const KINDS: &'static [&'static str] = &["Hello", "Subscribe", "Push", "Ping"];

    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_postcard::<v1::ClientMessage>(body)
            .map(Into::into)
            .map_err(|error| DecodeError::Malformed(error.to_string()))
    }

    fn encode_v1(&self) -> Result<Vec<u8>, EncodeError> {
        let old = v1::ClientMessage::try_from(self.clone())?;
        Ok(postcard::to_stdvec(&old).expect("postcard encoding of plain data"))
    }
}

impl WireMessage for HubMessage {
    const KINDS: &'static [&'static str] = &["Welcome", "Acks", "Changes", "Pong", "Error"];

    fn decode_v1(body: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_postcard::<v1::HubMessage>(body)
            .map(Into::into)
            .map_err(|error| DecodeError::Malformed(error.to_string()))
    }

    fn encode_v1(&self) -> Result<Vec<u8>, EncodeError> {
        let old = v1::HubMessage::try_from(self.clone())?;
        Ok(postcard::to_stdvec(&old).expect("postcard encoding of plain data"))
    }
}

impl AckOutcome {
    /// Encodes the outcome for the hub's store (this release's format).
    pub fn encode_stored(&self) -> Vec<u8> {
        codec::encode_stored(self)
    }

    /// Decodes a stored outcome: this release's format or the previous
    /// release's postcard.
    pub fn decode_stored(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_stored_as::<AckOutcome, v1::AckOutcome>(bytes)
    }
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
    /// Encodes the body for the device's op log (this release's format).
    pub fn encode_stored(&self) -> Vec<u8> {
        codec::encode_stored(self)
    }

    /// Decodes a body from the op log: this release's format or the previous
    /// release's postcard.
    pub fn decode_stored(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_stored_as::<OpBody, v1::OpBody>(bytes)
    }

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
            OpBody::Unknown(_) => 0,
        }
    }
}

pub mod v1;

/// Byte vectors as serde bytes (postcard writes them as length + raw bytes
/// instead of one varint per element).
pub(crate) mod serde_bytes_compat {
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
        assert_eq!(&frame[..3], b"OS\x02");
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
            for version in [1, 2] {
                let mut framed = vec![b'O', b'S', version];
                framed.extend_from_slice(&bytes);
                let _ = decode::<ClientMessage>(&framed);
                let _ = decode::<HubMessage>(&framed);
            }
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
