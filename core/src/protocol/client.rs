//! The device side of the sync protocol as a sans-I/O state machine.
//!
//! The session owns no socket, clock or store. The runtime feeds it frames
//! (`handle_frame`), the current time (`handle_tick`) and ops from the local
//! log (`handle_local_ops`), and after every input drains frames to send
//! (`poll_transmit`) and events to act on (`poll_event`). This keeps the
//! protocol logic deterministic and testable without a network.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{DocSetId, OpId};
use crate::protocol::message::{
    self, Ack, ChangeBatch, ClientMessage, Credentials, Hello, HubMessage, Op, ProtocolError,
    SubscriptionRequest, Welcome,
};

/// Most ops a device keeps sent but unacknowledged on one connection.
pub const IN_FLIGHT_OPS_MAX: usize = 1024;
/// Send a ping after this long without hearing from the hub.
pub const PING_AFTER_IDLE_MS: u64 = 10_000;
/// Give the connection up after this long without hearing from the hub.
pub const DEAD_AFTER_SILENCE_MS: u64 = 30_000;

/// What the device says about itself in the handshake.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The device.
    pub device: crate::ids::DeviceId,
    /// Its store.
    pub store: crate::ids::StoreId,
    /// Its local database.
    pub replica: crate::ids::ReplicaId,
    /// Its credentials.
    pub credentials: Credentials,
    /// The client software, for the hub's logs.
    pub agent: String,
}

/// Something the runtime must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The handshake completed; subscriptions were sent.
    Ready(Welcome),
    /// Durable verdicts for ops: record them in the local log.
    Acks(Vec<Ack>),
    /// Remote changes: apply them and store the batch's cursor atomically.
    Changes(ChangeBatch),
    /// The hub closed the session with an error; the runtime disconnects.
    Failed(ProtocolError),
}

/// Why an input was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSessionError {
    /// The hub sent bytes that do not decode.
    #[error("hub sent an undecodable frame: {0}")]
    Decode(#[from] message::DecodeError),
    /// The hub sent a message that makes no sense in the current state.
    #[error("hub sent {0} before the handshake completed")]
    Unexpected(&'static str),
    /// The hub has been silent too long.
    #[error("no word from the hub for {0} ms")]
    Silent(u64),
}

#[derive(Debug, PartialEq)]
enum State {
    AwaitingWelcome,
    Ready,
}

/// One connection's worth of protocol state on the device.
#[derive(Debug)]
pub struct ClientSession {
    state: State,
    subscriptions: BTreeMap<DocSetId, u64>,
    in_flight: BTreeMap<OpId, ()>,
    highest_sent_seq: u64,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    last_heard_ms: u64,
    ping_nonce: u64,
    ping_outstanding: bool,
}

impl ClientSession {
    /// Starts a session on a freshly opened connection: queues the `Hello`.
    ///
    /// `subscriptions` are the sets to follow with the cursors persisted in
    /// the local store; `acked_through_seq` is the highest op sequence the
    /// store knows is already acknowledged, so ops are never re-sent needlessly.
    pub fn new(
        identity: ClientIdentity,
        subscriptions: Vec<(DocSetId, u64)>,
        now_ms: u64,
    ) -> Self {
        let mut session = Self {
            state: State::AwaitingWelcome,
            subscriptions: subscriptions.into_iter().collect(),
            in_flight: BTreeMap::new(),
            highest_sent_seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            last_heard_ms: now_ms,
            ping_nonce: 0,
            ping_outstanding: false,
        };
        session.transmit.push_back(message::encode(&ClientMessage::Hello(Hello {
            device: identity.device,
            store: identity.store,
            replica: identity.replica,
            credentials: identity.credentials,
            agent: identity.agent,
        })));
        session
    }

    /// True once the hub has welcomed the device.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// How many more ops the session will accept right now, and the sequence
    /// number after which the runtime should read them from the log.
    /// `None` before the handshake.
    pub fn wants_ops(&self) -> Option<(u64, usize)> {
        if self.state != State::Ready {
            return None;
        }
        let room = IN_FLIGHT_OPS_MAX.saturating_sub(self.in_flight.len());
        (room > 0).then_some((self.highest_sent_seq, room.min(message::PUSH_OPS_MAX)))
    }

    /// Number of ops sent and not yet acknowledged on this connection.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Frames and sends ops read from the local log (in sequence order).
    pub fn handle_local_ops(&mut self, ops: Vec<Op>) {
        if ops.is_empty() || self.state != State::Ready {
            return;
        }
        for chunk in ops.chunks(message::PUSH_OPS_MAX) {
            for op in chunk {
                self.in_flight.insert(op.id, ());
                self.highest_sent_seq = self.highest_sent_seq.max(op.id.seq);
            }
            self.transmit.push_back(message::encode(&ClientMessage::Push(chunk.to_vec())));
        }
    }

    /// Adds a subscription while connected (or before the handshake completes).
    pub fn subscribe(&mut self, set: DocSetId, cursor: u64) {
        let is_new = self.subscriptions.insert(set.clone(), cursor).is_none();
        if is_new && self.state == State::Ready {
            self.transmit.push_back(message::encode(&ClientMessage::Subscribe(vec![
                SubscriptionRequest { set, cursor },
            ])));
        }
    }

    /// Feeds one frame received from the hub.
    pub fn handle_frame(&mut self, frame: &[u8], now_ms: u64) -> Result<(), ClientSessionError> {
        let message: HubMessage = message::decode(frame)?;
        self.last_heard_ms = now_ms;
        self.ping_outstanding = false;
        match (message, &self.state) {
            (HubMessage::Welcome(welcome), State::AwaitingWelcome) => {
                self.state = State::Ready;
                let requests: Vec<SubscriptionRequest> = self
                    .subscriptions
                    .iter()
                    .map(|(set, cursor)| SubscriptionRequest { set: set.clone(), cursor: *cursor })
                    .collect();
                if !requests.is_empty() {
                    self.transmit.push_back(message::encode(&ClientMessage::Subscribe(requests)));
                }
                self.events.push_back(ClientEvent::Ready(welcome));
            }
            (HubMessage::Error(error), _) => self.events.push_back(ClientEvent::Failed(error)),
            (_, State::AwaitingWelcome) => return Err(ClientSessionError::Unexpected("data")),
            (HubMessage::Welcome(_), State::Ready) => {
                return Err(ClientSessionError::Unexpected("a second welcome"));
            }
            (HubMessage::Acks(acks), State::Ready) => {
                for ack in &acks {
                    self.in_flight.remove(&ack.op);
                }
                self.events.push_back(ClientEvent::Acks(acks));
            }
            (HubMessage::Changes(batch), State::Ready) => {
                if let Some(cursor) = self.subscriptions.get_mut(&batch.set) {
                    *cursor = (*cursor).max(batch.cursor);
                }
                self.events.push_back(ClientEvent::Changes(batch));
            }
            (HubMessage::Pong(_), State::Ready) => {}
        }
        Ok(())
    }

    /// Advances time: sends keep-alive pings and detects a silent hub.
    pub fn handle_tick(&mut self, now_ms: u64) -> Result<(), ClientSessionError> {
        let silent_ms = now_ms.saturating_sub(self.last_heard_ms);
        if silent_ms >= DEAD_AFTER_SILENCE_MS {
            return Err(ClientSessionError::Silent(silent_ms));
        }
        if silent_ms >= PING_AFTER_IDLE_MS && !self.ping_outstanding && self.state == State::Ready {
            self.ping_nonce += 1;
            self.ping_outstanding = true;
            self.transmit.push_back(message::encode(&ClientMessage::Ping(self.ping_nonce)));
        }
        Ok(())
    }

    /// Next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}
