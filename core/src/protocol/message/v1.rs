//! Protocol version 1 (the previous release): the message types whose
//! positional postcard layout differs from this release's types, frozen as
//! they were, with conversions. Version 1 frames and the previous release's
//! stored op bodies and outcomes decode through these.
//!
//! Do not change these types: they are the previous release's format.

use serde::{Deserialize, Serialize};

use super::{
    ChangeBatch, Credentials, DocChange, EncodeError, ProtocolError, RejectCode,
    SubscriptionRequest,
};
use crate::vocab::ids::{DeviceId, DocSetId, OpId, ReplicaId, StoreId};
use crate::vocab::intent::{Decision, Intent};
use crate::vocab::record::{RECORD_MAGIC, Record, is_record_doc};

/// Version 1 `ClientMessage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection.
    Hello(Hello),
    /// Subscriptions.
    Subscribe(Vec<SubscriptionRequest>),
    /// Ops.
    Push(Vec<Op>),
    /// Keep-alive.
    Ping(u64),
}

/// Version 1 `HubMessage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HubMessage {
    /// The handshake succeeded.
    Welcome(Welcome),
    /// Verdicts.
    Acks(Vec<Ack>),
    /// Changes.
    Changes(ChangeBatch),
    /// Answer to `Ping`.
    Pong(u64),
    /// A fatal protocol error.
    Error(ProtocolError),
}

/// Version 1 `Hello` (no version range).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The enrolled device.
    pub device: DeviceId,
    /// The store.
    pub store: StoreId,
    /// The local database.
    pub replica: ReplicaId,
    /// Proof of identity.
    pub credentials: Credentials,
    /// Client software.
    pub agent: String,
}

/// Version 1 `Welcome` (no probe answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The hub's name.
    pub hub_id: String,
    /// The hub's clock, ms since the epoch.
    pub hub_time_ms: u64,
    /// The sets the device may subscribe to.
    pub allowed_sets: Vec<DocSetId>,
    /// Identity of the hub's change log.
    pub log_id: String,
}

/// Version 1 `Op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Unique id.
    pub id: OpId,
    /// Device wall clock, ms.
    pub created_ms: u64,
    /// What the op does.
    pub body: OpBody,
}

/// Version 1 `OpBody`; also the previous release's stored op bodies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpBody {
    /// Automerge changes.
    Changes(Vec<DocChange>),
    /// An intent.
    Intent(Intent),
}

/// Version 1 `Ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The op.
    pub op: OpId,
    /// What happened to it.
    pub outcome: AckOutcome,
}

/// Version 1 `AckOutcome`; also the previous release's stored outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Stored durably.
    Applied {
        /// Highest hub sequence number.
        hub_seq: u64,
    },
    /// Refused.
    Rejected {
        /// Reason.
        code: RejectCode,
        /// Explanation.
        detail: String,
    },
    /// An intent was decided.
    Decided(Decision),
}

fn inexpressible(what: String) -> EncodeError {
    EncodeError::NotExpressible { version: 1, what }
}

impl From<OpBody> for super::OpBody {
    fn from(body: OpBody) -> Self {
        match body {
            OpBody::Changes(changes) => super::OpBody::Changes(changes),
            OpBody::Intent(intent) => super::OpBody::Intent(intent),
        }
    }
}

impl TryFrom<super::OpBody> for OpBody {
    type Error = EncodeError;
    fn try_from(body: super::OpBody) -> Result<Self, EncodeError> {
        Ok(match body {
            super::OpBody::Changes(changes) => OpBody::Changes(changes),
            super::OpBody::Intent(intent) => OpBody::Intent(intent),
            super::OpBody::Unknown(unknown) => {
                return Err(inexpressible(format!("op kind {}", unknown.kind)));
            }
        })
    }
}

impl From<AckOutcome> for super::AckOutcome {
    fn from(outcome: AckOutcome) -> Self {
        match outcome {
            AckOutcome::Applied { hub_seq } => super::AckOutcome::Applied { hub_seq },
            AckOutcome::Rejected { code, detail } => super::AckOutcome::Rejected { code, detail },
            AckOutcome::Decided(decision) => super::AckOutcome::Decided(decision),
        }
    }
}

impl TryFrom<super::AckOutcome> for AckOutcome {
    type Error = EncodeError;
    fn try_from(outcome: super::AckOutcome) -> Result<Self, EncodeError> {
        Ok(match outcome {
            super::AckOutcome::Applied { hub_seq } => AckOutcome::Applied { hub_seq },
            super::AckOutcome::Rejected { code, detail } => AckOutcome::Rejected { code, detail },
            super::AckOutcome::Decided(decision) => AckOutcome::Decided(decision),
            super::AckOutcome::Unknown(unknown) => {
                return Err(inexpressible(format!("outcome {}", unknown.kind)));
            }
        })
    }
}

impl From<ClientMessage> for super::ClientMessage {
    fn from(message: ClientMessage) -> Self {
        match message {
            ClientMessage::Hello(hello) => super::ClientMessage::Hello(super::Hello {
                device: hello.device,
                store: hello.store,
                replica: hello.replica,
                credentials: hello.credentials,
                agent: hello.agent,
                versions: None,
                probe: None,
            }),
            ClientMessage::Subscribe(requests) => super::ClientMessage::Subscribe(requests),
            ClientMessage::Push(ops) => super::ClientMessage::Push(
                ops.into_iter()
                    .map(|op| super::Op {
                        id: op.id,
                        created_ms: op.created_ms,
                        body: op.body.into(),
                    })
                    .collect(),
            ),
            ClientMessage::Ping(nonce) => super::ClientMessage::Ping(nonce),
        }
    }
}

impl TryFrom<super::ClientMessage> for ClientMessage {
    type Error = EncodeError;
    fn try_from(message: super::ClientMessage) -> Result<Self, EncodeError> {
        Ok(match message {
            super::ClientMessage::Hello(hello) => ClientMessage::Hello(Hello {
                device: hello.device,
                store: hello.store,
                replica: hello.replica,
                credentials: hello.credentials,
                agent: hello.agent,
            }),
            super::ClientMessage::Subscribe(requests) => ClientMessage::Subscribe(requests),
            super::ClientMessage::Push(ops) => ClientMessage::Push(
                ops.into_iter()
                    .map(|op| {
                        Ok(Op {
                            id: op.id,
                            created_ms: op.created_ms,
                            body: op.body.try_into()?,
                        })
                    })
                    .collect::<Result<_, EncodeError>>()?,
            ),
            super::ClientMessage::Ping(nonce) => ClientMessage::Ping(nonce),
        })
    }
}

impl From<HubMessage> for super::HubMessage {
    fn from(message: HubMessage) -> Self {
        match message {
            HubMessage::Welcome(welcome) => super::HubMessage::Welcome(super::Welcome {
                hub_id: welcome.hub_id,
                hub_time_ms: welcome.hub_time_ms,
                allowed_sets: welcome.allowed_sets,
                log_id: welcome.log_id,
                probe_known: None,
            }),
            HubMessage::Acks(acks) => super::HubMessage::Acks(
                acks.into_iter()
                    .map(|ack| super::Ack {
                        op: ack.op,
                        outcome: ack.outcome.into(),
                    })
                    .collect(),
            ),
            HubMessage::Changes(batch) => super::HubMessage::Changes(batch),
            HubMessage::Pong(nonce) => super::HubMessage::Pong(nonce),
            HubMessage::Error(error) => super::HubMessage::Error(error),
        }
    }
}

impl TryFrom<super::HubMessage> for HubMessage {
    type Error = EncodeError;
    fn try_from(message: super::HubMessage) -> Result<Self, EncodeError> {
        Ok(match message {
            super::HubMessage::Welcome(welcome) => HubMessage::Welcome(Welcome {
                hub_id: welcome.hub_id,
                hub_time_ms: welcome.hub_time_ms,
                allowed_sets: welcome.allowed_sets,
                log_id: welcome.log_id,
            }),
            super::HubMessage::Acks(acks) => HubMessage::Acks(
                acks.into_iter()
                    .map(|ack| {
                        Ok(Ack {
                            op: ack.op,
                            outcome: ack.outcome.try_into()?,
                        })
                    })
                    .collect::<Result<_, EncodeError>>()?,
            ),
            super::HubMessage::Changes(batch) => HubMessage::Changes(records_as_v1(batch)),
            super::HubMessage::Pong(nonce) => HubMessage::Pong(nonce),
            super::HubMessage::Error(error) => HubMessage::Error(error),
        })
    }
}

/// A batch with its hub records in the previous release's format (`R1`):
/// a version 1 device reads only those. Bytes that are not a record of this
/// release are left as they are.
fn records_as_v1(mut batch: ChangeBatch) -> ChangeBatch {
    for change in &mut batch.changes {
        if change.bytes.starts_with(&RECORD_MAGIC)
            && is_record_doc(&change.doc)
            && let Ok(record) = Record::decode(&change.bytes)
        {
            change.bytes = record.encode_v1();
        }
    }
    batch
}
