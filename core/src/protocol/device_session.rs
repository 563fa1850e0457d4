//! The device side of the sync protocol as a sans-I/O state machine.
//!
//! The session owns no socket, clock or store. The runtime feeds it frames
//! (`handle_frame`), the current time (`handle_tick`) and ops from the local
//! log (`handle_local_ops`), and after every input drains frames to send
//! (`poll_transmit`) and events to act on (`poll_event`). This keeps the
//! protocol logic deterministic and testable without a network.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::message::{
    self, Ack, ChangeBatch, ClientMessage, Credentials, Hello, HubMessage, Op, ProbedOp,
    ProtocolError, SubscriptionRequest, Welcome,
};
use crate::vocab::ids::{DocSetId, OpId};

/// Most ops a device keeps sent but unacknowledged on one connection.
pub const IN_FLIGHT_OPS_MAX: usize = 1024;
/// Send a ping after this long without hearing from the hub.
pub const PING_AFTER_IDLE_MS: u64 = 10_000;
/// Give the connection up after this long without hearing from the hub.
pub const DEAD_AFTER_SILENCE_MS: u64 = 30_000;
/// Target for the payload bytes of one `Push`; a push stops growing past it.
pub const PUSH_BYTES_TARGET: usize = 2 * 1024 * 1024;

/// What the device says about itself in the handshake.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The device.
    pub device: crate::vocab::ids::DeviceId,
    /// Its store.
    pub store: crate::vocab::ids::StoreId,
    /// Its local database.
    pub replica: crate::vocab::ids::ReplicaId,
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
    /// These followed sets are not readable by this device; not requested.
    SubscriptionsRefused(Vec<DocSetId>),
    /// The hub's change log is not the one the cursors were taken from; the
    /// session restarted every subscription from 0. Persist the new log id
    /// and reset the stored cursors.
    HubLogChanged(String),
    /// The hub lacks acknowledged ops of this device (a hub database restored
    /// from an older backup). The session has already lowered its cursors to
    /// `known_through`; the runtime lowers the stored cursors the same way
    /// and queues the ops the hub may lack for upload again
    /// (`Replica::requeue_for_restored_hub`), before it reads ops to push.
    HubBehind(HubBehind),
}

/// What a probe answer showed: the hub does not hold every op this device
/// saw acknowledged, so it was restored from an older backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubBehind {
    /// K: where the device places the newest probed op the hub still holds
    /// that is older than every probed op it lacks (0 if none). Every change
    /// the hub numbered at or below K is still the same there; numbers above
    /// it may have been given again to other changes.
    pub known_through: u64,
    /// That op's own sequence number (0 if none): every op of this device
    /// above it may be missing at the hub.
    pub known_op_seq: u64,
    /// How many probed ops the hub lacks.
    pub unknown: usize,
}

/// Reads the hub's answer to a probe (`known`, one flag per probed op, in
/// the probe's order: newest first). `None` when the hub holds every probed
/// op, or when the answer does not fit the probe (a hub that did not look).
pub fn probe_verdict(probe: &[ProbedOp], known: &[bool]) -> Option<HubBehind> {
    if probe.len() != known.len() {
        return None;
    }
    let oldest_unknown = known.iter().rposition(|known| !known)?;
    // The newest op the hub holds that is older than every op it lacks:
    // the hub's log is intact at least up to where it sits.
    let anchor = probe[oldest_unknown + 1..]
        .iter()
        .zip(&known[oldest_unknown + 1..])
        .find(|(_, known)| **known)
        .map(|(probed, _)| *probed);
    Some(HubBehind {
        known_through: anchor.map_or(0, |probed| probed.hub_seq),
        known_op_seq: anchor.map_or(0, |probed| probed.op.seq),
        unknown: known.iter().filter(|known| !**known).count(),
    })
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
    known_log_id: Option<String>,
    subscriptions: BTreeMap<DocSetId, u64>,
    in_flight: BTreeMap<OpId, ()>,
    highest_sent_seq: u64,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    last_heard_ms: u64,
    ping_nonce: u64,
    last_ping_ms: u64,
    /// Sets the hub said this device may not read (from `Welcome`).
    refused: std::collections::BTreeSet<DocSetId>,
    /// The protocol version frames are sent in: the newest offered until
    /// the hub's `Welcome` arrives in the version it chose.
    version: u8,
    /// Set when a hub refused the offered versions in an older one.
    fallback: Option<u8>,
    /// The acknowledged ops the `Hello` probed, newest first.
    probe: Vec<ProbedOp>,
}

impl ClientSession {
    /// Starts a session on a freshly opened connection: queues the `Hello`,
    /// offering every protocol version this build speaks.
    ///
    /// `subscriptions` are the sets to follow with the cursors persisted in
    /// the local store. Every op still pending in the store is (re)sent once
    /// the session is ready; the hub answers repeats with their stored outcome.
    /// `known_log_id` is the hub log the cursors belong to (`None` if never connected).
    pub fn new(
        identity: ClientIdentity,
        subscriptions: Vec<(DocSetId, u64)>,
        known_log_id: Option<String>,
        now_ms: u64,
    ) -> Self {
        Self::speaking(
            identity,
            subscriptions,
            known_log_id,
            now_ms,
            message::VersionRange::SUPPORTED,
        )
    }

    /// Like [`ClientSession::new`], offering the protocol versions `versions`
    /// (within what this build speaks); the `Hello` goes out in the newest.
    /// A range of version 1 only sends the previous release's `Hello`.
    pub fn speaking(
        identity: ClientIdentity,
        subscriptions: Vec<(DocSetId, u64)>,
        known_log_id: Option<String>,
        now_ms: u64,
        versions: message::VersionRange,
    ) -> Self {
        Self::probing(
            identity,
            subscriptions,
            known_log_id,
            now_ms,
            versions,
            Vec::new(),
        )
    }

    /// Like [`ClientSession::speaking`], with a probe of acknowledged ops in
    /// the `Hello` (see [`Hello::probe`]; at most
    /// [`message::PROBE_OPS_MAX`], newest first; more are cut). When the
    /// hub's answer shows it lacks some of them, the session lowers its
    /// cursors before subscribing and emits [`ClientEvent::HubBehind`].
    pub fn probing(
        identity: ClientIdentity,
        subscriptions: Vec<(DocSetId, u64)>,
        known_log_id: Option<String>,
        now_ms: u64,
        versions: message::VersionRange,
        mut probe: Vec<ProbedOp>,
    ) -> Self {
        probe.truncate(message::PROBE_OPS_MAX);
        let max = versions
            .max
            .clamp(message::PROTOCOL_VERSION_MIN, message::PROTOCOL_VERSION);
        let mut session = Self {
            state: State::AwaitingWelcome,
            known_log_id,
            subscriptions: subscriptions.into_iter().collect(),
            in_flight: BTreeMap::new(),
            highest_sent_seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            last_heard_ms: now_ms,
            ping_nonce: 0,
            last_ping_ms: now_ms,
            refused: std::collections::BTreeSet::new(),
            version: max,
            fallback: None,
            probe: probe.clone(),
        };
        let hello = ClientMessage::Hello(Hello {
            device: identity.device,
            store: identity.store,
            replica: identity.replica,
            credentials: identity.credentials,
            agent: identity.agent,
            versions: Some(message::VersionRange {
                min: versions.min.min(max),
                max,
            }),
            probe: (!probe.is_empty()).then_some(probe),
        });
        let frame = session.frame(&hello);
        session.transmit.push_back(frame);
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

    /// The older protocol version a hub refused this session's `Hello` in,
    /// if it did: the version to offer at most on the next connection.
    pub fn fallback_version(&self) -> Option<u8> {
        self.fallback
    }

    /// The protocol version the session speaks (settled by the `Welcome`).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Encodes a message in the session's protocol version.
    fn frame(&self, message: &ClientMessage) -> Vec<u8> {
        // Everything a device sends exists in every version; an unknown op
        // kind (never read from the local log) would go out in the newest.
        message::encode_version(message, self.version).unwrap_or_else(|_| message::encode(message))
    }

    /// Frames and sends ops read from the local log (in sequence order).
    pub fn handle_local_ops(&mut self, ops: Vec<Op>) {
        if ops.is_empty() || self.state != State::Ready {
            return;
        }
        // Split by count and by size: one push never nears the frame limit
        // (an op is at most OP_BYTES_MAX, well under PUSH_BYTES_TARGET).
        let mut push: Vec<Op> = Vec::new();
        let mut push_bytes = 0;
        for op in ops {
            let op_bytes = op.payload_len();
            if !push.is_empty()
                && (push.len() >= message::PUSH_OPS_MAX
                    || push_bytes + op_bytes > PUSH_BYTES_TARGET)
            {
                self.transmit
                    .push_back(self.frame(&ClientMessage::Push(std::mem::take(&mut push))));
                push_bytes = 0;
            }
            self.in_flight.insert(op.id, ());
            self.highest_sent_seq = self.highest_sent_seq.max(op.id.seq);
            push_bytes += op_bytes;
            push.push(op);
        }
        if !push.is_empty() {
            self.transmit
                .push_back(self.frame(&ClientMessage::Push(push)));
        }
    }

    /// Adds a subscription while connected (or before the handshake completes).
    pub fn subscribe(&mut self, set: DocSetId, cursor: u64) {
        if self.subscriptions.contains_key(&set) {
            return;
        }
        if self.refused.contains(&set) {
            self.events
                .push_back(ClientEvent::SubscriptionsRefused(vec![set]));
            return;
        }
        let is_new = self.subscriptions.insert(set.clone(), cursor).is_none();
        if is_new && self.state == State::Ready {
            self.transmit
                .push_back(
                    self.frame(&ClientMessage::Subscribe(vec![SubscriptionRequest {
                        set,
                        cursor,
                    }])),
                );
        }
    }

    /// Feeds one frame received from the hub.
    pub fn handle_frame(&mut self, frame: &[u8], now_ms: u64) -> Result<(), ClientSessionError> {
        let (version, message): (u8, HubMessage) = message::decode_versioned(frame)?;
        self.last_heard_ms = now_ms;
        match (message, &self.state) {
            (HubMessage::Welcome(welcome), State::AwaitingWelcome) => {
                self.state = State::Ready;
                // The hub answers in the version it chose from our range.
                self.version = version;
                if self.known_log_id.as_deref() != Some(welcome.log_id.as_str()) {
                    if self.known_log_id.is_some() {
                        for cursor in self.subscriptions.values_mut() {
                            *cursor = 0;
                        }
                    }
                    self.known_log_id = Some(welcome.log_id.clone());
                    self.events
                        .push_back(ClientEvent::HubLogChanged(welcome.log_id.clone()));
                } else if let Some(behind) = welcome
                    .probe_known
                    .as_deref()
                    .and_then(|known| probe_verdict(&self.probe, known))
                {
                    // The same log, restored from an older backup: changes
                    // above K may have been numbered again.
                    for cursor in self.subscriptions.values_mut() {
                        *cursor = (*cursor).min(behind.known_through);
                    }
                    self.events.push_back(ClientEvent::HubBehind(behind));
                }
                // Asking for a set the hub refuses would close the session;
                // follow only what this device may read and report the rest.
                let refused: Vec<DocSetId> = self
                    .subscriptions
                    .keys()
                    .filter(|set| !welcome.allowed_sets.contains(set))
                    .cloned()
                    .collect();
                for set in &refused {
                    self.subscriptions.remove(set);
                }
                self.refused = self
                    .subscriptions
                    .keys()
                    .chain(&refused)
                    .filter(|set| !welcome.allowed_sets.contains(set))
                    .cloned()
                    .collect();
                if !refused.is_empty() {
                    self.events
                        .push_back(ClientEvent::SubscriptionsRefused(refused));
                }
                let requests: Vec<SubscriptionRequest> = self
                    .subscriptions
                    .iter()
                    .map(|(set, cursor)| SubscriptionRequest {
                        set: set.clone(),
                        cursor: *cursor,
                    })
                    .collect();
                if !requests.is_empty() {
                    self.transmit
                        .push_back(self.frame(&ClientMessage::Subscribe(requests)));
                }
                self.events.push_back(ClientEvent::Ready(welcome));
            }
            (HubMessage::Error(error), state) => {
                // A hub of an older release refuses our Hello in the version
                // it speaks: offer that one next time.
                if *state == State::AwaitingWelcome
                    && error.code == message::ErrorCode::UnsupportedVersion
                    && version < self.version
                {
                    self.fallback = Some(version);
                }
                self.events.push_back(ClientEvent::Failed(error));
            }
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
        // Ping on a fixed rhythm, not only when the hub is quiet: a device that
        // only listens sends nothing else, and the hub drops silent devices.
        if now_ms.saturating_sub(self.last_ping_ms) >= PING_AFTER_IDLE_MS
            && self.state == State::Ready
        {
            self.ping_nonce += 1;
            self.last_ping_ms = now_ms;
            self.transmit
                .push_back(self.frame(&ClientMessage::Ping(self.ping_nonce)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{DocChange, OpBody, decode, encode};
    use crate::vocab::ids::{DeviceId, DocId, ReplicaId, StoreId};

    fn identity() -> ClientIdentity {
        ClientIdentity {
            device: DeviceId::new("till-1").unwrap(),
            store: StoreId::new("s1").unwrap(),
            replica: ReplicaId([1; 16]),
            credentials: Credentials::default(),
            agent: "test".into(),
        }
    }

    #[test]
    fn a_hub_of_the_previous_release_is_offered_version_1_next_time() {
        let mut session = ClientSession::new(identity(), Vec::new(), None, 0);
        let hello = session.poll_transmit().unwrap();
        assert_eq!(&hello[..3], b"OS\x02");
        // The previous release's hub refuses in version 1.
        let refusal = message::encode_version(
            &HubMessage::Error(message::ProtocolError {
                code: message::ErrorCode::UnsupportedVersion,
                detail: "protocol version 2 is not supported; this side speaks version 1".into(),
            }),
            1,
        )
        .unwrap();
        session.handle_frame(&refusal, 1).unwrap();
        assert!(matches!(session.poll_event(), Some(ClientEvent::Failed(_))));
        assert_eq!(session.fallback_version(), Some(1));

        let versions = message::VersionRange { min: 1, max: 1 };
        let mut session = ClientSession::speaking(identity(), Vec::new(), None, 0, versions);
        let hello = session.poll_transmit().unwrap();
        assert_eq!(&hello[..3], b"OS\x01");
        assert!(matches!(
            decode::<ClientMessage>(&hello),
            Ok(ClientMessage::Hello(Hello { versions: None, .. }))
        ));
        let mut welcome = welcome(&["store.s1"], "log-1");
        welcome = message::encode_version(&decode::<HubMessage>(&welcome).unwrap(), 1).unwrap();
        session.handle_frame(&welcome, 1).unwrap();
        assert_eq!(session.version(), 1);
    }

    fn welcome(allowed: &[&str], log_id: &str) -> Vec<u8> {
        encode(&HubMessage::Welcome(Welcome {
            hub_id: "hub".into(),
            hub_time_ms: 0,
            allowed_sets: allowed
                .iter()
                .map(|set| DocSetId::new(*set).unwrap())
                .collect(),
            log_id: log_id.into(),
            probe_known: None,
        }))
    }

    fn sent(session: &mut ClientSession) -> Vec<ClientMessage> {
        std::iter::from_fn(|| session.poll_transmit())
            .map(|frame| decode(&frame).unwrap())
            .collect()
    }

    #[test]
    fn pushes_stay_far_below_the_frame_limit() {
        let mut session = ClientSession::new(identity(), vec![], Some("log".into()), 0);
        session.handle_frame(&welcome(&[], "log"), 0).unwrap();
        sent(&mut session);
        let op = |seq| Op {
            id: OpId {
                replica: ReplicaId([1; 16]),
                seq,
            },
            created_ms: 0,
            body: OpBody::Changes(vec![DocChange {
                doc: DocId::new("store.s1/a").unwrap(),
                bytes: vec![0; 900 * 1024],
            }]),
        };
        session.handle_local_ops((1..=5).map(op).collect());
        let frames: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit()).collect();
        assert_eq!(frames.len(), 3, "5 ops of 900 KiB go out as 2 + 2 + 1");
        assert!(
            frames
                .iter()
                .all(|frame| frame.len() < message::FRAME_BYTES_MAX / 2)
        );
    }

    #[test]
    fn sets_the_hub_refuses_are_not_requested() {
        let subscriptions = vec![
            (DocSetId::new("store.s1").unwrap(), 5),
            (DocSetId::new("store.s2").unwrap(), 0),
        ];
        let mut session = ClientSession::new(identity(), subscriptions, Some("log".into()), 0);
        sent(&mut session);
        session
            .handle_frame(&welcome(&["store.s1"], "log"), 0)
            .unwrap();
        let messages = sent(&mut session);
        assert_eq!(
            messages,
            vec![ClientMessage::Subscribe(vec![SubscriptionRequest {
                set: DocSetId::new("store.s1").unwrap(),
                cursor: 5
            }])]
        );
        assert!(
            matches!(session.poll_event(), Some(ClientEvent::SubscriptionsRefused(sets)) if sets == vec![DocSetId::new("store.s2").unwrap()])
        );
    }

    #[test]
    fn a_different_hub_log_restarts_cursors_from_zero() {
        let subscriptions = vec![(DocSetId::new("store.s1").unwrap(), 42)];
        let mut session = ClientSession::new(identity(), subscriptions, Some("old-log".into()), 0);
        sent(&mut session);
        session
            .handle_frame(&welcome(&["store.s1"], "new-log"), 0)
            .unwrap();
        assert_eq!(
            sent(&mut session),
            vec![ClientMessage::Subscribe(vec![SubscriptionRequest {
                set: DocSetId::new("store.s1").unwrap(),
                cursor: 0
            }])]
        );
        assert_eq!(
            session.poll_event(),
            Some(ClientEvent::HubLogChanged("new-log".into()))
        );
    }

    fn probed(seq: u64, hub_seq: u64) -> ProbedOp {
        ProbedOp {
            op: OpId {
                replica: ReplicaId([1; 16]),
                seq,
            },
            hub_seq,
        }
    }

    fn welcome_answering(log_id: &str, known: Option<Vec<bool>>) -> Vec<u8> {
        encode(&HubMessage::Welcome(Welcome {
            hub_id: "hub".into(),
            hub_time_ms: 0,
            allowed_sets: vec![DocSetId::new("store.s1").unwrap()],
            log_id: log_id.into(),
            probe_known: known,
        }))
    }

    fn probing_session(log_id: &str) -> ClientSession {
        let subscriptions = vec![(DocSetId::new("store.s1").unwrap(), 500)];
        let probe = vec![
            probed(40, 400),
            probed(39, 390),
            probed(37, 370),
            probed(33, 330),
        ];
        let mut session = ClientSession::probing(
            identity(),
            subscriptions,
            Some(log_id.into()),
            0,
            message::VersionRange::SUPPORTED,
            probe.clone(),
        );
        assert!(matches!(
            sent(&mut session).as_slice(),
            [ClientMessage::Hello(Hello { probe: Some(sent), .. })] if *sent == probe
        ));
        session
    }

    #[test]
    fn a_hub_lacking_probed_ops_lowers_the_cursors_before_subscribing() {
        let mut session = probing_session("log");
        let answer = welcome_answering("log", Some(vec![false, false, true, true]));
        session.handle_frame(&answer, 0).unwrap();
        assert_eq!(
            sent(&mut session),
            vec![ClientMessage::Subscribe(vec![SubscriptionRequest {
                set: DocSetId::new("store.s1").unwrap(),
                cursor: 370
            }])]
        );
        assert_eq!(
            session.poll_event(),
            Some(ClientEvent::HubBehind(HubBehind {
                known_through: 370,
                known_op_seq: 37,
                unknown: 2
            }))
        );
        assert!(matches!(session.poll_event(), Some(ClientEvent::Ready(_))));
    }

    #[test]
    fn a_hub_holding_every_probed_op_or_not_answering_changes_nothing() {
        for answer in [Some(vec![true; 4]), None, Some(vec![false])] {
            let mut session = probing_session("log");
            session
                .handle_frame(&welcome_answering("log", answer), 0)
                .unwrap();
            assert_eq!(
                sent(&mut session),
                vec![ClientMessage::Subscribe(vec![SubscriptionRequest {
                    set: DocSetId::new("store.s1").unwrap(),
                    cursor: 500
                }])]
            );
            assert!(matches!(session.poll_event(), Some(ClientEvent::Ready(_))));
        }
    }

    #[test]
    fn the_anchor_is_older_than_every_op_the_hub_lacks() {
        let probe = [
            probed(40, 400),
            probed(39, 390),
            probed(37, 370),
            probed(33, 330),
        ];
        // The hub holds the newest but lacks an older one: only the op
        // below every gap vouches for the log.
        let behind = probe_verdict(&probe, &[true, false, true, true]).unwrap();
        assert_eq!((behind.known_through, behind.known_op_seq), (370, 37));
        let behind = probe_verdict(&probe, &[true, true, true, false]).unwrap();
        assert_eq!((behind.known_through, behind.known_op_seq), (0, 0));
        assert_eq!(probe_verdict(&probe, &[true; 4]), None);
    }

    #[test]
    fn a_listening_device_pings_even_while_the_hub_talks() {
        let mut session = ClientSession::new(identity(), vec![], None, 0);
        session.handle_frame(&welcome(&[], "log"), 0).unwrap();
        sent(&mut session);
        let mut pings = 0;
        for second in 1..=60u64 {
            let now = second * 1000;
            session
                .handle_frame(&encode(&HubMessage::Pong(0)), now)
                .unwrap();
            session.handle_tick(now).unwrap();
            pings += sent(&mut session)
                .iter()
                .filter(|message| matches!(message, ClientMessage::Ping(_)))
                .count();
        }
        assert!(
            pings >= 5,
            "the hub's idle timer must see traffic ({pings} pings a minute)"
        );
    }

    #[test]
    fn a_silent_hub_is_pinged_then_given_up() {
        let mut session = ClientSession::new(identity(), vec![], None, 0);
        session.handle_frame(&welcome(&[], "log"), 0).unwrap();
        sent(&mut session);
        session.handle_tick(PING_AFTER_IDLE_MS).unwrap();
        assert!(matches!(
            sent(&mut session).as_slice(),
            [ClientMessage::Ping(_)]
        ));
        assert!(session.handle_tick(DEAD_AFTER_SILENCE_MS).is_err());
    }
}
