//! The hub side of one device connection as a sans-I/O state machine.
//!
//! The session decodes and checks every frame, decides what each pushed op
//! deserves before it reaches storage, and keeps each subscription either in
//! catch-up (pages read from the change log) or live (fed from the commit
//! fan-out), switching between the two without losing or repeating a change.
//! The hub runtime performs the I/O it asks for through `poll_event` and
//! `poll_catch_up`, and sends what `poll_transmit` yields.

use std::collections::{BTreeMap, VecDeque};

pub use crate::authz::Peer;
use crate::authz::{self, AuditEvent, AuditKind};
use omnisync_core::protocol::message::{
    self, Ack, AckOutcome, ChangeBatch, ClientMessage, ErrorCode, Hello, HubMessage, Op, OpBody,
    PROTOCOL_VERSION_MIN, ProtocolError, RejectCode, RemoteChange, SubscriptionRequest,
    VersionRange, Welcome,
};
use omnisync_core::vocab::ids::{DeviceId, DocSetId, OpId, StoreId};

/// Live changes buffered for a subscription that is still catching up; past
/// this the buffer is dropped and the subscription reads the log once more.
pub const CATCH_UP_BUFFER_CHANGES_MAX: usize = 4096;

/// Per-connection limits the session enforces (configurable on the hub).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most ops in one `Push`.
    pub push_ops_max: usize,
    /// Most subscriptions one connection may hold.
    pub subscriptions_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            push_ops_max: message::PUSH_OPS_MAX,
            subscriptions_max: message::SUBSCRIPTIONS_MAX,
        }
    }
}

/// The hub's verdict on an op before storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Store the op's changes.
    Accept,
    /// Record the refusal (so a retry gets the same answer) and store nothing.
    Reject {
        /// Machine-readable reason.
        code: RejectCode,
        /// Human-readable explanation.
        detail: String,
    },
}

/// An op on its way to storage, with the session's verdict.
#[derive(Clone, Debug)]
pub struct IncomingOp {
    /// The op as pushed.
    pub op: Op,
    /// The authenticated device that pushed it.
    pub device: DeviceId,
    /// Its store (intents act on this store's ledger).
    pub store: StoreId,
    /// What the session decided about it.
    pub verdict: Verdict,
}

impl IncomingOp {
    /// The acknowledgement a rejected op gets, or `None` if accepted.
    pub fn rejection(&self) -> Option<AckOutcome> {
        match &self.verdict {
            Verdict::Accept => None,
            Verdict::Reject { code, detail } => Some(AckOutcome::Rejected {
                code: *code,
                detail: detail.clone(),
            }),
        }
    }
}

/// Changes made durable by one group commit, grouped by set, for fan-out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommittedChanges {
    /// Per set, the new changes in ascending hub sequence order.
    pub by_set: BTreeMap<DocSetId, Vec<RemoteChange>>,
    /// The part of the log this broadcast covers, `(after, upto]`, set by
    /// the hub's fan-out (0 and 0 when unknown: not checked). A session
    /// given a range that starts above the end of the previous one missed
    /// a commit and reads the log instead.
    pub after: u64,
    /// See [`after`](Self::after).
    pub upto: u64,
}

/// A page of a set's change log read for a catching-up subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangePage {
    /// Changes after the requested cursor, ascending.
    pub changes: Vec<RemoteChange>,
    /// The cursor after this page: the last change's sequence number, or the
    /// log's head at read time when the page reaches the end.
    pub cursor: u64,
    /// True when the page reaches the head of the log.
    pub caught_up: bool,
    /// Set while a snapshot transfer is under way: the last document sent;
    /// the next read continues after it.
    pub resume: Option<omnisync_core::vocab::ids::DocId>,
}

/// What the runtime must do for the session.
#[derive(Clone, Debug)]
pub enum HubEvent {
    /// Check these credentials, then call `handle_authenticated`.
    Authenticate(Hello),
    /// Store these ops in one durable commit, then pass the acks to `handle_acks`.
    Apply(Vec<IncomingOp>),
    /// Look up whether the log holds an outcome for each of these ops (the
    /// device's probe, all of the authenticated replica), then call
    /// `handle_probe_answer` with one flag per op, in this order. The
    /// `Welcome` waits for the answer.
    Probe(Vec<OpId>),
}

/// What the probes of a session showed, for the hub's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreCounts {
    /// Handshakes whose probe found ops the log lacks (this hub is behind
    /// the device's acknowledgements: restored from an older backup).
    pub behind: u64,
    /// Ops pushed again by such a device: ops at or below the newest it
    /// probed, which it had seen answered.
    pub reuploaded_ops: u64,
}

/// What the runtime must send.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// A binary frame.
    Frame(Vec<u8>),
    /// Close the socket with this code and reason (after the frames before it).
    Close {
        /// Why.
        code: ErrorCode,
        /// Human-readable reason.
        reason: String,
    },
}

#[derive(Debug, PartialEq)]
enum State {
    AwaitingHello,
    Authenticating,
    /// Authenticated; waiting for the probe's answer before the `Welcome`.
    Probing(Peer),
    Ready(Peer),
    Closed,
}

#[derive(Debug)]
struct Subscription {
    cursor: u64,
    mode: Mode,
    /// Snapshot transfer in progress: continue after this document.
    resume: Option<omnisync_core::vocab::ids::DocId>,
    /// The snapshot point of the transfer in progress.
    resume_point: u64,
}

#[derive(Debug)]
enum Mode {
    /// Reading the log; a read is outstanding when `reading` is true.
    CatchingUp {
        reading: bool,
        buffered: Vec<RemoteChange>,
        overflowed: bool,
    },
    /// Fed from commits.
    Live,
}

/// One device connection's protocol state on the hub.
#[derive(Debug)]
pub struct HubSession {
    state: State,
    subscriptions: BTreeMap<DocSetId, Subscription>,
    transmit: VecDeque<Outbound>,
    events: VecDeque<HubEvent>,
    limits: SessionLimits,
    audit: VecDeque<AuditEvent>,
    /// The protocol version frames are sent in: the oldest this build
    /// speaks until the handshake settles on one (so that a refusal before
    /// it reaches a device of any release readably).
    version: u8,
    /// The ops the `Hello` probed, in its order.
    probe: Vec<OpId>,
    /// Set once a probe found ops the log lacks: pushed ops at or below this
    /// sequence number are uploads again.
    reupload_through: Option<u64>,
    /// Counts not yet taken by the runtime.
    restore_counts: RestoreCounts,
    /// The `Welcome` waiting for the probe's answer.
    welcome: Option<Welcome>,
    /// The end of the log range of the last fan-out broadcast received.
    fanout_upto: Option<u64>,
}

impl Default for HubSession {
    fn default() -> Self {
        Self::new()
    }
}

impl HubSession {
    /// A session for a freshly accepted connection, waiting for `Hello`.
    pub fn new() -> Self {
        Self::with_limits(SessionLimits::default())
    }

    /// A session with explicit per-connection limits.
    pub fn with_limits(limits: SessionLimits) -> Self {
        Self {
            state: State::AwaitingHello,
            subscriptions: BTreeMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            limits,
            audit: VecDeque::new(),
            version: message::PROTOCOL_VERSION_MIN,
            probe: Vec::new(),
            reupload_through: None,
            restore_counts: RestoreCounts::default(),
            welcome: None,
            fanout_upto: None,
        }
    }

    /// The authenticated peer, once there is one.
    pub fn peer(&self) -> Option<&Peer> {
        match &self.state {
            State::Ready(peer) => Some(peer),
            _ => None,
        }
    }

    /// True once the session has asked for the socket to be closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds one frame from the device. Bad input closes the session with a
    /// reason; it never panics.
    pub fn handle_frame(&mut self, frame: &[u8]) {
        if self.is_closed() {
            return;
        }
        let (version, message): (u8, ClientMessage) = match message::decode_versioned(frame) {
            Ok(decoded) => decoded,
            Err(error) => return self.fail(error.code(), error.to_string()),
        };
        match (message, &self.state) {
            (ClientMessage::Hello(hello), State::AwaitingHello) => {
                // A Hello without a range (version 1) speaks its frame's version.
                let theirs = hello.versions.unwrap_or(VersionRange {
                    min: version,
                    max: version,
                });
                let Some(chosen) = VersionRange::SUPPORTED.highest_common(&theirs) else {
                    return self.fail(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "the device speaks protocol {theirs}, this hub speaks {}: update the {}",
                            VersionRange::SUPPORTED,
                            if theirs.max < PROTOCOL_VERSION_MIN { "device" } else { "hub" }
                        ),
                    );
                };
                self.version = chosen;
                let probe = hello.probe.as_deref().unwrap_or_default();
                if probe.len() > message::PROBE_OPS_MAX {
                    return self.fail(
                        ErrorCode::LimitExceeded,
                        format!(
                            "the Hello probes {} ops; the limit is {}",
                            probe.len(),
                            message::PROBE_OPS_MAX
                        ),
                    );
                }
                self.probe = probe.iter().map(|probed| probed.op).collect();
                self.state = State::Authenticating;
                self.events.push_back(HubEvent::Authenticate(hello));
            }
            (ClientMessage::Hello(_), _) => {
                self.fail(ErrorCode::UnexpectedMessage, "a second Hello".into());
            }
            (_, State::AwaitingHello | State::Authenticating | State::Probing(_)) => {
                self.fail(
                    ErrorCode::UnexpectedMessage,
                    "the first message must be Hello".into(),
                );
            }
            (ClientMessage::Ping(nonce), State::Ready(_)) => {
                self.send(&HubMessage::Pong(nonce));
            }
            (ClientMessage::Subscribe(requests), State::Ready(_)) => self.subscribe(requests),
            (ClientMessage::Push(ops), State::Ready(peer)) => {
                if ops.len() > self.limits.push_ops_max {
                    return self.fail(
                        ErrorCode::LimitExceeded,
                        format!(
                            "{} ops in one push; the limit is {}",
                            ops.len(),
                            self.limits.push_ops_max
                        ),
                    );
                }
                if ops.is_empty() {
                    return;
                }
                if let Some(through) = self.reupload_through {
                    self.restore_counts.reuploaded_ops +=
                        ops.iter().filter(|op| op.id.seq <= through).count() as u64;
                }
                // An op claiming another replica's id is answered but never
                // stored: storing the refusal would poison that id for its
                // real owner.
                let (own, forged): (Vec<Op>, Vec<Op>) = ops
                    .into_iter()
                    .partition(|op| op.id.replica == peer.replica);
                let refusals: Vec<Ack> = forged
                    .into_iter()
                    .map(|op| Ack {
                        op: op.id,
                        outcome: AckOutcome::Rejected {
                            code: RejectCode::WrongAuthor,
                            detail: format!(
                                "op {} was not made by this connection's replica",
                                op.id
                            ),
                        },
                    })
                    .collect();
                let incoming: Vec<IncomingOp> = own
                    .into_iter()
                    .map(|op| {
                        let verdict = judge_op(peer, &op);
                        IncomingOp {
                            op,
                            device: peer.device.clone(),
                            store: peer.store.clone(),
                            verdict,
                        }
                    })
                    .collect();
                self.audit.extend(op_rejections(&refusals, &incoming));
                if !incoming.is_empty() {
                    self.events.push_back(HubEvent::Apply(incoming));
                }
                if !refusals.is_empty() {
                    self.send(&HubMessage::Acks(refusals));
                }
            }
            (_, State::Closed) => {}
        }
    }

    /// The authenticator's answer to `HubEvent::Authenticate`.
    pub fn handle_authenticated(
        &mut self,
        result: Result<Peer, String>,
        hub_id: &str,
        log_id: &str,
        now_ms: u64,
    ) {
        if self.state != State::Authenticating {
            return;
        }
        match result {
            Ok(peer) => {
                self.welcome = Some(Welcome {
                    hub_id: hub_id.to_owned(),
                    hub_time_ms: now_ms,
                    allowed_sets: peer.readable.clone(),
                    log_id: log_id.to_owned(),
                    probe_known: None,
                });
                if self.probe.is_empty() {
                    self.send_welcome(peer, None);
                } else {
                    // Only the connection's own ops are looked up; an op of
                    // another replica is not this device's to ask about.
                    let own: Vec<OpId> = self
                        .probe
                        .iter()
                        .filter(|op| op.replica == peer.replica)
                        .copied()
                        .collect();
                    self.state = State::Probing(peer);
                    self.events.push_back(HubEvent::Probe(own));
                }
            }
            Err(reason) => self.fail(ErrorCode::Unauthenticated, reason),
        }
    }

    /// The runtime's answer to `HubEvent::Probe`: for each op it named, in
    /// order, whether the log holds its outcome. Sends the `Welcome` with
    /// the answer to the whole probe.
    pub fn handle_probe_answer(&mut self, known: Vec<bool>) {
        if !matches!(self.state, State::Probing(_)) {
            return;
        }
        let State::Probing(peer) = std::mem::replace(&mut self.state, State::Authenticating) else {
            return;
        };
        let mut answers = known.into_iter();
        let probe_known: Vec<bool> = self
            .probe
            .iter()
            .map(|op| op.replica == peer.replica && answers.next().unwrap_or(false))
            .collect();
        if probe_known.iter().any(|known| !known) {
            self.restore_counts.behind += 1;
            self.reupload_through = self.probe.iter().map(|op| op.seq).max();
        }
        self.send_welcome(peer, Some(probe_known));
    }

    /// Takes the counts of what probes showed since the last call.
    pub fn take_restore_counts(&mut self) -> RestoreCounts {
        std::mem::take(&mut self.restore_counts)
    }

    fn send_welcome(&mut self, peer: Peer, probe_known: Option<Vec<bool>>) {
        let Some(mut welcome) = self.welcome.take() else {
            return;
        };
        welcome.probe_known = probe_known;
        self.state = State::Ready(peer);
        self.send(&HubMessage::Welcome(welcome));
    }

    /// Durable verdicts from storage for ops of this session.
    pub fn handle_acks(&mut self, acks: Vec<Ack>) {
        if !acks.is_empty() && !self.is_closed() {
            self.send(&HubMessage::Acks(acks));
        }
    }

    /// Changes just committed by the hub (from any connection).
    pub fn handle_committed(&mut self, committed: &CommittedChanges) {
        if committed.upto != 0 {
            if self
                .fanout_upto
                .is_some_and(|previous| committed.after > previous)
            {
                // A commit between the two was not broadcast to us.
                self.handle_fanout_lagged();
            }
            self.fanout_upto = Some(committed.upto);
        }
        let (own, peer) = match &self.state {
            State::Ready(peer) => (peer.replica, peer),
            _ => return,
        };
        let mut batches = Vec::new();
        for (set, subscription) in self.subscriptions.iter_mut() {
            let Some(changes) = committed.by_set.get(set) else {
                continue;
            };
            let fresh = changes
                .iter()
                .filter(|change| change.hub_seq > subscription.cursor);
            match &mut subscription.mode {
                Mode::Live => {
                    let Some(last) = changes.last() else { continue };
                    if last.hub_seq <= subscription.cursor {
                        continue;
                    }
                    let outgoing: Vec<RemoteChange> = fresh
                        .filter(|change| {
                            change.origin != own && authz::may_read_doc(peer, &change.doc)
                        })
                        .cloned()
                        .collect();
                    let previous = subscription.cursor;
                    subscription.cursor = last.hub_seq;
                    if !outgoing.is_empty() {
                        batches.push((set.clone(), outgoing, previous, subscription.cursor));
                    }
                }
                Mode::CatchingUp {
                    buffered,
                    overflowed,
                    ..
                } => {
                    if *overflowed {
                        continue;
                    }
                    buffered.extend(
                        fresh
                            .filter(|change| authz::may_read_doc(peer, &change.doc))
                            .cloned(),
                    );
                    if buffered.len() > CATCH_UP_BUFFER_CHANGES_MAX {
                        buffered.clear();
                        *overflowed = true;
                    }
                }
            }
        }
        for (set, changes, previous, cursor) in batches {
            for batch in into_batches(&set, changes, previous, cursor, true) {
                self.send(&HubMessage::Changes(batch));
            }
        }
    }

    /// The fan-out dropped commits for this session (it fell behind): every
    /// live subscription goes back to reading the log from its cursor.
    pub fn handle_fanout_lagged(&mut self) {
        for subscription in self.subscriptions.values_mut() {
            match &mut subscription.mode {
                Mode::Live => {
                    subscription.mode = Mode::CatchingUp {
                        reading: false,
                        buffered: Vec::new(),
                        overflowed: false,
                    };
                }
                // The buffer missed the dropped commits: read the log again
                // after the read in progress instead of trusting it.
                Mode::CatchingUp {
                    buffered,
                    overflowed,
                    ..
                } => {
                    buffered.clear();
                    *overflowed = true;
                }
            }
        }
    }

    /// The next log read to perform: `(set, cursor)`. At most one read per
    /// set is outstanding.
    pub fn poll_catch_up(&mut self) -> Option<(DocSetId, u64)> {
        for (set, subscription) in self.subscriptions.iter_mut() {
            if let Mode::CatchingUp { reading, .. } = &mut subscription.mode
                && !*reading
            {
                *reading = true;
                return Some((set.clone(), subscription.cursor));
            }
        }
        None
    }

    /// Where a snapshot transfer for `set` continues (pass to the read).
    pub fn catch_up_resume(&self, set: &DocSetId) -> Option<&omnisync_core::vocab::ids::DocId> {
        self.subscriptions
            .get(set)
            .and_then(|subscription| subscription.resume.as_ref())
    }

    /// The result of a log read asked for by `poll_catch_up`.
    pub fn handle_catch_up_page(&mut self, set: &DocSetId, page: ChangePage) {
        let (own, peer) = match &self.state {
            State::Ready(peer) => (peer.replica, peer),
            _ => return,
        };
        let Some(subscription) = self.subscriptions.get_mut(set) else {
            return;
        };
        let Mode::CatchingUp {
            buffered,
            overflowed,
            ..
        } = &mut subscription.mode
        else {
            return;
        };
        // Snapshots carry their point as sequence number; the last page of a
        // transfer, if empty, carries it as cursor.
        let point = page
            .changes
            .first()
            .map_or(page.cursor, |change| change.hub_seq);
        if subscription.resume.is_some() && point != subscription.resume_point {
            // The set was compacted again between two pages of a transfer:
            // the documents sent at the old point miss changes now deleted.
            // Start the transfer over at the new point.
            subscription.resume = None;
            subscription.mode = Mode::CatchingUp {
                reading: false,
                buffered: Vec::new(),
                overflowed: false,
            };
            return;
        }
        if subscription.resume.is_none() && page.resume.is_some() {
            subscription.resume_point = point;
        }
        let mut outgoing: Vec<RemoteChange> = page
            .changes
            .into_iter()
            .filter(|change| {
                change.hub_seq > subscription.cursor
                    && change.origin != own
                    && authz::may_read_doc(peer, &change.doc)
            })
            .collect();
        let previous = subscription.cursor;
        let mut cursor = subscription.cursor.max(page.cursor);
        let mut caught_up = false;
        subscription.resume = page.resume.clone();
        if page.caught_up && page.resume.is_none() && !*overflowed {
            // Commits that landed after the read: the buffer holds them.
            let after: Vec<RemoteChange> = std::mem::take(buffered)
                .into_iter()
                .filter(|change| change.hub_seq > cursor)
                .collect();
            if let Some(last) = after.last() {
                cursor = last.hub_seq;
            }
            outgoing.extend(after.into_iter().filter(|change| change.origin != own));
            caught_up = true;
        }
        subscription.cursor = cursor;
        subscription.mode = if caught_up {
            Mode::Live
        } else {
            // Read again from the new cursor; drop what was buffered, the log has it.
            Mode::CatchingUp {
                reading: false,
                buffered: Vec::new(),
                overflowed: false,
            }
        };
        for batch in into_batches(set, outgoing, previous, cursor, caught_up) {
            self.send(&HubMessage::Changes(batch));
        }
    }

    /// The device broke a time limit (handshake or idle): close with the reason.
    pub fn handle_timeout(&mut self, detail: String) {
        self.fail(ErrorCode::Timeout, detail);
    }

    /// The device sent a text frame: the protocol is binary only.
    pub fn handle_text_frame(&mut self) {
        self.fail(
            ErrorCode::Malformed,
            "text frames are not part of the protocol; send binary frames".into(),
        );
    }

    /// The hub is shutting down: say so and close.
    pub fn handle_shutdown(&mut self) {
        self.fail(
            ErrorCode::ShuttingDown,
            "hub is shutting down; reconnect later".into(),
        );
    }

    /// The runtime failed in a way the device should hear about.
    pub fn handle_internal_error(&mut self, detail: String) {
        self.fail(ErrorCode::Internal, detail);
    }

    /// The runtime refused the device: its credentials expired or were
    /// revoked (`Unauthenticated`), or it broke a rate or buffer limit
    /// (`LimitExceeded`). Says why and closes.
    pub fn handle_refused(&mut self, code: ErrorCode, detail: String) {
        self.fail(code, detail);
    }

    /// Next security-relevant refusal to write to the audit log, if any.
    pub fn poll_audit(&mut self) -> Option<AuditEvent> {
        self.audit.pop_front()
    }

    /// Next thing to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Outbound> {
        self.transmit.pop_front()
    }

    /// Next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    fn subscribe(&mut self, requests: Vec<SubscriptionRequest>) {
        let State::Ready(peer) = &self.state else {
            return;
        };
        let new_sets = requests
            .iter()
            .map(|request| &request.set)
            .filter(|set| !self.subscriptions.contains_key(*set))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if self.subscriptions.len() + new_sets > self.limits.subscriptions_max {
            return self.fail(
                ErrorCode::LimitExceeded,
                format!("more than {} subscriptions", self.limits.subscriptions_max),
            );
        }
        if let Some(detail) = requests
            .iter()
            .find_map(|request| authz::authorize_subscribe(peer, &request.set).err())
        {
            return self.fail(ErrorCode::Forbidden, detail);
        }
        for request in requests {
            self.subscriptions
                .entry(request.set)
                .or_insert(Subscription {
                    cursor: request.cursor,
                    resume: None,
                    resume_point: 0,
                    mode: Mode::CatchingUp {
                        reading: false,
                        buffered: Vec::new(),
                        overflowed: false,
                    },
                });
        }
    }

    /// The protocol version the session speaks (settled by the Hello).
    pub fn version(&self) -> u8 {
        self.version
    }

    fn send(&mut self, message: &HubMessage) {
        // The hub sends no unknown variants, so every message has a form in
        // every version; should one not, the device hears it in the newest.
        let frame = message::encode_version(message, self.version)
            .unwrap_or_else(|_| message::encode(message));
        self.transmit.push_back(Outbound::Frame(frame));
    }

    fn fail(&mut self, code: ErrorCode, detail: String) {
        if self.is_closed() {
            return;
        }
        let detail = message::clamp_detail(detail);
        if !matches!(code, ErrorCode::ShuttingDown | ErrorCode::Internal) {
            self.audit.push_back(AuditEvent {
                kind: AuditKind::SessionClosed { code },
                detail: detail.clone(),
            });
        }
        self.send(&HubMessage::Error(ProtocolError {
            code,
            detail: detail.clone(),
        }));
        self.transmit.push_back(Outbound::Close {
            code,
            reason: detail,
        });
        self.state = State::Closed;
        self.events.clear();
    }
}

/// Splits changes into batches within the protocol's limits, each with a
/// cursor it can truthfully claim once applied: the last change's sequence
/// number when every later change has a greater one, else `before` (the
/// snapshots of a set share one sequence number, and a device that stopped
/// half-way through them must not skip the rest). The last batch claims
/// `after`.
fn into_batches(
    set: &DocSetId,
    changes: Vec<RemoteChange>,
    before: u64,
    after: u64,
    caught_up: bool,
) -> Vec<ChangeBatch> {
    let chunks = split_batch(changes);
    let next_firsts: Vec<u64> = chunks
        .iter()
        .skip(1)
        .map(|chunk| chunk.first().map_or(u64::MAX, |change| change.hub_seq))
        .collect();
    let last_index = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            let is_last = index == last_index;
            let cursor = match chunk.last() {
                _ if is_last => after,
                Some(last) if last.hub_seq < next_firsts[index] => last.hub_seq.max(before),
                _ => before,
            };
            ChangeBatch {
                set: set.clone(),
                changes: chunk,
                cursor,
                caught_up: caught_up && is_last,
            }
        })
        .collect()
}

/// Splits changes into batches within the protocol's batch limits.
fn split_batch(changes: Vec<RemoteChange>) -> Vec<Vec<RemoteChange>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0;
    for change in changes {
        let current = batches.last_mut().expect("batches starts non-empty");
        if !current.is_empty()
            && (current.len() >= message::CHANGE_BATCH_LEN_MAX
                || bytes + change.bytes.len() > message::CHANGE_BATCH_BYTES_TARGET)
        {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += change.bytes.len();
        batches
            .last_mut()
            .expect("batches is non-empty")
            .push(change);
    }
    batches
}

/// Decides whether an op from `peer` may be stored. Pure: no I/O.
pub fn judge_op(peer: &Peer, op: &Op) -> Verdict {
    let reject = |code, detail: String| Verdict::Reject {
        code,
        detail: message::clamp_detail(detail),
    };
    if op.id.replica != peer.replica {
        return reject(
            RejectCode::WrongAuthor,
            format!("op {} was not made by this connection's replica", op.id),
        );
    }
    if op.id.seq == 0 {
        return reject(RejectCode::Invalid, "op sequence numbers start at 1".into());
    }
    if op.payload_len() > message::OP_BYTES_MAX {
        return reject(
            RejectCode::TooLarge,
            format!("op exceeds {} bytes", message::OP_BYTES_MAX),
        );
    }
    let changes = match &op.body {
        OpBody::Changes(changes) => changes,
        OpBody::Unknown(unknown) => {
            return reject(
                RejectCode::Invalid,
                format!(
                    "this hub does not know ops of kind `{}` (or the intent inside): update the hub",
                    unknown.kind
                ),
            );
        }
        OpBody::Intent(intent) => {
            if let Err((code, detail)) = authz::authorize_intent(peer, intent) {
                return reject(code, detail);
            }
            return Verdict::Accept;
        }
    };
    if changes.is_empty() {
        return reject(RejectCode::Invalid, "op carries no changes".into());
    }
    if changes.len() > message::OP_DOC_CHANGES_MAX {
        return reject(
            RejectCode::TooLarge,
            format!(
                "op changes {} documents; the limit is {}",
                changes.len(),
                message::OP_DOC_CHANGES_MAX
            ),
        );
    }
    for change in changes {
        if let Err((code, detail)) = authz::authorize_change(peer, &change.doc) {
            return reject(code, detail);
        }
        match automerge::Change::from_bytes(change.bytes.clone()) {
            Ok(parsed) if peer.replica.owns_actor(parsed.actor_id()) => {}
            Ok(_) => {
                return reject(
                    RejectCode::WrongAuthor,
                    format!("a change to {} was made by another actor", change.doc),
                );
            }
            Err(error) => {
                return reject(
                    RejectCode::MalformedChange,
                    format!("change to {} does not decode: {error}", change.doc),
                );
            }
        }
    }
    Verdict::Accept
}

/// Audit events for the rejected ops of one push: those answered at once
/// (`refusals`) and those judged before storage (`judged`).
pub fn op_rejections(refusals: &[Ack], judged: &[IncomingOp]) -> Vec<AuditEvent> {
    let answered = refusals.iter().filter_map(|ack| match &ack.outcome {
        AckOutcome::Rejected { code, detail } => Some((ack.op, *code, detail.clone())),
        _ => None,
    });
    let judged = judged
        .iter()
        .filter_map(|incoming| match &incoming.verdict {
            Verdict::Reject { code, detail } => Some((incoming.op.id, *code, detail.clone())),
            Verdict::Accept => None,
        });
    answered
        .chain(judged)
        .map(|(op, code, detail)| AuditEvent {
            kind: AuditKind::OpRejected { op, code },
            detail,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Role;
    use omnisync_core::protocol::message::{Credentials, PROTOCOL_VERSION, decode, encode};
    use omnisync_core::vocab::ids::{DocId, OpId};
    use omnisync_core::vocab::ids::{ReplicaId, TenantId};

    fn peer() -> Peer {
        let set = DocSetId::new("store.s1").unwrap();
        Peer {
            device: DeviceId::new("till-1").unwrap(),
            store: StoreId::new("s1").unwrap(),
            tenant: TenantId::new("dev").unwrap(),
            role: Role::Development,
            customer: None,
            expires_ms: None,
            replica: ReplicaId([1; 16]),
            readable: vec![set.clone()],
            writable: vec![set],
        }
    }

    fn ready_session() -> HubSession {
        let mut session = HubSession::new();
        session.handle_frame(&encode(&ClientMessage::Hello(Hello {
            device: peer().device,
            store: peer().store,
            replica: peer().replica,
            credentials: Credentials::default(),
            agent: "test".into(),
            versions: None,
            probe: None,
        })));
        assert!(matches!(
            session.poll_event(),
            Some(HubEvent::Authenticate(_))
        ));
        session.handle_authenticated(Ok(peer()), "hub", "log-1", 0);
        assert!(matches!(session.poll_transmit(), Some(Outbound::Frame(_))));
        session
    }

    fn hello(versions: Option<VersionRange>) -> ClientMessage {
        ClientMessage::Hello(Hello {
            device: peer().device,
            store: peer().store,
            replica: peer().replica,
            credentials: Credentials::default(),
            agent: "test".into(),
            versions,
            probe: None,
        })
    }

    #[test]
    fn a_previous_release_device_is_answered_in_version_1() {
        let mut session = HubSession::new();
        session.handle_frame(&message::encode_version(&hello(None), 1).unwrap());
        assert!(matches!(
            session.poll_event(),
            Some(HubEvent::Authenticate(_))
        ));
        session.handle_authenticated(Ok(peer()), "hub", "log-1", 0);
        let Some(Outbound::Frame(welcome)) = session.poll_transmit() else {
            panic!("no welcome");
        };
        assert_eq!(&welcome[..3], b"OS\x01");
        assert!(matches!(decode(&welcome), Ok(HubMessage::Welcome(_))));
        session.handle_frame(&message::encode_version(&ClientMessage::Ping(4), 1).unwrap());
        let Some(Outbound::Frame(pong)) = session.poll_transmit() else {
            panic!("no pong");
        };
        assert_eq!(&pong[..3], b"OS\x01");
        assert_eq!(session.version(), 1);
    }

    #[test]
    fn the_highest_common_version_is_chosen_and_none_is_a_typed_refusal() {
        let mut session = HubSession::new();
        session.handle_frame(&encode(&hello(Some(VersionRange { min: 1, max: 7 }))));
        assert_eq!(session.version(), PROTOCOL_VERSION);

        let mut session = HubSession::new();
        session.handle_frame(&encode(&hello(Some(VersionRange { min: 3, max: 7 }))));
        let Some(Outbound::Frame(frame)) = session.poll_transmit() else {
            panic!("no refusal");
        };
        let Ok(HubMessage::Error(error)) = decode::<HubMessage>(&frame) else {
            panic!("not an error");
        };
        assert_eq!(error.code, ErrorCode::UnsupportedVersion);
        assert_eq!(
            error.detail,
            "the device speaks protocol versions 3 to 7, this hub speaks versions 1 to 2: update the hub"
        );
        assert!(session.is_closed());
    }

    fn probing_hello(ops: &[(u8, u64)]) -> Vec<u8> {
        let probe = ops
            .iter()
            .map(|(replica, seq)| message::ProbedOp {
                op: OpId {
                    replica: ReplicaId([*replica; 16]),
                    seq: *seq,
                },
                hub_seq: 10 * seq,
            })
            .collect();
        let ClientMessage::Hello(mut hello) = hello(None) else {
            unreachable!("hello() builds a Hello");
        };
        hello.probe = Some(probe);
        encode(&ClientMessage::Hello(hello))
    }

    fn welcome_of(session: &mut HubSession) -> Welcome {
        match session.poll_transmit() {
            Some(Outbound::Frame(frame)) => match decode::<HubMessage>(&frame) {
                Ok(HubMessage::Welcome(welcome)) => welcome,
                other => panic!("not a welcome: {other:?}"),
            },
            other => panic!("no welcome: {other:?}"),
        }
    }

    #[test]
    fn the_welcome_waits_for_the_probe_and_answers_only_for_the_own_replica() {
        let mut session = HubSession::new();
        // Op 9 names another replica: not looked up, answered false.
        session.handle_frame(&probing_hello(&[(1, 40), (2, 9), (1, 33)]));
        assert!(matches!(
            session.poll_event(),
            Some(HubEvent::Authenticate(_))
        ));
        session.handle_authenticated(Ok(peer()), "hub", "log-1", 0);
        assert_eq!(
            session.poll_transmit(),
            None,
            "no welcome before the answer"
        );
        let Some(HubEvent::Probe(ops)) = session.poll_event() else {
            panic!("no probe lookup");
        };
        assert_eq!(
            ops.iter().map(|op| op.seq).collect::<Vec<_>>(),
            vec![40, 33]
        );
        session.handle_probe_answer(vec![false, true]);
        let welcome = welcome_of(&mut session);
        assert_eq!(welcome.probe_known, Some(vec![false, false, true]));
        assert_eq!(session.take_restore_counts().behind, 1);
        // Ops up to the newest probed one are uploads again.
        let op = |seq| Op {
            id: OpId {
                replica: peer().replica,
                seq,
            },
            created_ms: 0,
            body: OpBody::Changes(Vec::new()),
        };
        session.handle_frame(&encode(&ClientMessage::Push(vec![op(35), op(40), op(41)])));
        assert_eq!(
            session.take_restore_counts(),
            RestoreCounts {
                behind: 0,
                reuploaded_ops: 2
            }
        );
    }

    #[test]
    fn a_hub_holding_every_probed_op_counts_nothing_and_too_long_a_probe_is_refused() {
        let mut session = HubSession::new();
        session.handle_frame(&probing_hello(&[(1, 40), (1, 39)]));
        session.poll_event();
        session.handle_authenticated(Ok(peer()), "hub", "log-1", 0);
        session.poll_event();
        session.handle_probe_answer(vec![true, true]);
        assert_eq!(welcome_of(&mut session).probe_known, Some(vec![true, true]));
        assert_eq!(session.take_restore_counts(), RestoreCounts::default());

        let mut session = HubSession::new();
        let too_many: Vec<(u8, u64)> = (1..=message::PROBE_OPS_MAX as u64 + 1)
            .map(|seq| (1, seq))
            .collect();
        session.handle_frame(&probing_hello(&too_many));
        assert!(session.is_closed());
        let Some(Outbound::Frame(frame)) = session.poll_transmit() else {
            panic!("no refusal");
        };
        let Ok(HubMessage::Error(error)) = decode::<HubMessage>(&frame) else {
            panic!("not an error");
        };
        assert_eq!(error.code, ErrorCode::LimitExceeded);
        assert_eq!(error.detail, "the Hello probes 17 ops; the limit is 16");
    }

    fn change(seq: u64, origin: u8) -> RemoteChange {
        RemoteChange {
            hub_seq: seq,
            doc: DocId::new("store.s1/x").unwrap(),
            origin: ReplicaId([origin; 16]),
            bytes: vec![seq as u8],
        }
    }

    fn sent_batches(session: &mut HubSession) -> Vec<ChangeBatch> {
        let mut batches = Vec::new();
        while let Some(outbound) = session.poll_transmit() {
            if let Outbound::Frame(frame) = outbound
                && let Ok(HubMessage::Changes(batch)) = decode(&frame)
            {
                batches.push(batch);
            }
        }
        batches
    }

    #[test]
    fn data_before_hello_closes_with_a_reason() {
        let mut session = HubSession::new();
        session.handle_frame(&encode(&ClientMessage::Ping(1)));
        assert!(session.is_closed());
        let frames: Vec<_> = std::iter::from_fn(|| session.poll_transmit()).collect();
        assert!(matches!(
            frames.last(),
            Some(Outbound::Close {
                code: ErrorCode::UnexpectedMessage,
                ..
            })
        ));
    }

    #[test]
    fn commits_during_catch_up_are_neither_lost_nor_repeated() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert_eq!(session.poll_catch_up(), Some((set.clone(), 0)));
        assert_eq!(session.poll_catch_up(), None, "one read at a time");
        // Commits 3 and 4 happen while the read is outstanding; the read saw up to 3.
        let mut committed = CommittedChanges::default();
        committed
            .by_set
            .insert(set.clone(), vec![change(3, 9), change(4, 9)]);
        session.handle_committed(&committed);
        assert!(
            sent_batches(&mut session).is_empty(),
            "nothing live before catch-up ends"
        );
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![change(1, 9), change(2, 1), change(3, 9)],
                cursor: 3,
                caught_up: true,
                resume: None,
            },
        );
        let batches = sent_batches(&mut session);
        let seqs: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.changes.iter().map(|c| c.hub_seq))
            .collect();
        assert_eq!(
            seqs,
            vec![1, 3, 4],
            "own change 2 skipped, 3 once, 4 from the buffer"
        );
        assert_eq!(batches.last().unwrap().cursor, 4);
        assert!(batches.last().unwrap().caught_up);
        // Now live.
        let mut committed = CommittedChanges::default();
        committed
            .by_set
            .insert(set.clone(), vec![change(4, 9), change(5, 9)]);
        session.handle_committed(&committed);
        let seqs: Vec<u64> = sent_batches(&mut session)
            .iter()
            .flat_map(|b| b.changes.iter().map(|c| c.hub_seq))
            .collect();
        assert_eq!(seqs, vec![5]);
    }

    #[test]
    fn a_fan_out_range_that_skips_a_commit_sends_the_session_back_to_the_log() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![change(1, 9)],
                cursor: 1,
                caught_up: true,
                resume: None,
            },
        );
        sent_batches(&mut session);
        let broadcast = |after: u64, upto: u64| {
            let mut committed = CommittedChanges::default();
            committed.by_set.insert(
                set.clone(),
                (after + 1..=upto).map(|seq| change(seq, 9)).collect(),
            );
            committed.after = after;
            committed.upto = upto;
            committed
        };
        session.handle_committed(&broadcast(1, 2));
        assert_eq!(sent_batches(&mut session).len(), 1, "live");
        assert_eq!(session.poll_catch_up(), None);
        // 3..=4 never reached this session: the next range starts at 4.
        session.handle_committed(&broadcast(4, 5));
        assert!(sent_batches(&mut session).is_empty(), "not trusted live");
        assert_eq!(
            session.poll_catch_up(),
            Some((set.clone(), 2)),
            "the log is read again from the last change given"
        );
    }

    #[test]
    fn a_set_whose_last_change_is_below_the_head_still_catches_up() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        // The set's only change is #2; other sets moved the head to #9.
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![change(2, 9)],
                cursor: 9,
                caught_up: true,
                resume: None,
            },
        );
        let batches = sent_batches(&mut session);
        assert_eq!(batches.len(), 1);
        assert!(batches[0].caught_up, "the only batch reaches the head");
        assert_eq!(batches[0].cursor, 9);
    }

    #[test]
    fn a_fanout_lag_during_catch_up_forces_another_read() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        let mut committed = CommittedChanges::default();
        committed.by_set.insert(set.clone(), vec![change(3, 9)]);
        session.handle_committed(&committed);
        session.handle_fanout_lagged(); // Commit #4 was dropped for this session.
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![change(1, 9), change(2, 9)],
                cursor: 2,
                caught_up: true,
                resume: None,
            },
        );
        let batches = sent_batches(&mut session);
        assert!(
            batches.iter().all(|batch| !batch.caught_up),
            "must not go live on a buffer with a hole"
        );
        assert_eq!(
            session.poll_catch_up(),
            Some((set, 2)),
            "reads the log again from its cursor"
        );
    }

    #[test]
    fn ops_claiming_another_replica_are_answered_but_never_stored() {
        let mut session = ready_session();
        let forged = Op {
            id: OpId {
                replica: ReplicaId([7; 16]),
                seq: 1,
            },
            created_ms: 0,
            body: OpBody::Changes(vec![omnisync_core::protocol::message::DocChange {
                doc: DocId::new("store.s1/x").unwrap(),
                bytes: vec![1],
            }]),
        };
        session.handle_frame(&encode(&ClientMessage::Push(vec![forged])));
        assert!(session.poll_event().is_none(), "nothing goes to storage");
        let Some(Outbound::Frame(frame)) = session.poll_transmit() else {
            panic!("an answer is sent")
        };
        let Ok(HubMessage::Acks(acks)) = decode::<HubMessage>(&frame) else {
            panic!("acks")
        };
        assert!(matches!(
            acks[0].outcome,
            AckOutcome::Rejected {
                code: RejectCode::WrongAuthor,
                ..
            }
        ));
    }

    #[test]
    fn big_live_commits_are_split_into_batches_within_limits() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![],
                cursor: 0,
                caught_up: true,
                resume: None,
            },
        );
        sent_batches(&mut session);
        let mut committed = CommittedChanges::default();
        let count = message::CHANGE_BATCH_LEN_MAX as u64 * 2 + 3;
        committed
            .by_set
            .insert(set.clone(), (1..=count).map(|seq| change(seq, 9)).collect());
        session.handle_committed(&committed);
        let batches = sent_batches(&mut session);
        assert_eq!(batches.len(), 3);
        assert!(
            batches
                .iter()
                .all(|batch| batch.changes.len() <= message::CHANGE_BATCH_LEN_MAX)
        );
        assert_eq!(batches.last().unwrap().cursor, count);
        assert_eq!(batches[0].cursor, message::CHANGE_BATCH_LEN_MAX as u64);
    }

    #[test]
    fn a_split_snapshot_page_moves_the_cursor_only_with_its_last_batch() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        // Three snapshots of ~600 KiB each, all covering #50: two batches.
        let snapshots: Vec<RemoteChange> = (0..3)
            .map(|n| RemoteChange {
                hub_seq: 50,
                doc: DocId::new(format!("store.s1/d{n}")).unwrap(),
                origin: ReplicaId([9; 16]),
                bytes: vec![0; 600 * 1024],
            })
            .collect();
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: snapshots,
                cursor: 50,
                caught_up: false,
                resume: None,
            },
        );
        let batches = sent_batches(&mut session);
        assert!(batches.len() >= 2);
        assert!(
            batches[..batches.len() - 1]
                .iter()
                .all(|batch| batch.cursor == 0),
            "{:?}",
            batches.iter().map(|b| b.cursor).collect::<Vec<_>>()
        );
        assert_eq!(batches.last().unwrap().cursor, 50);
    }

    #[test]
    fn a_snapshot_transfer_whose_point_moves_starts_over() {
        let mut session = ready_session();
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        let snapshot = |doc: &str, covers: u64| RemoteChange {
            hub_seq: covers,
            doc: DocId::new(doc).unwrap(),
            origin: ReplicaId([9; 16]),
            bytes: vec![1],
        };
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![snapshot("store.s1/a", 50)],
                cursor: 0,
                caught_up: false,
                resume: Some(DocId::new("store.s1/a").unwrap()),
            },
        );
        sent_batches(&mut session);
        assert!(session.catch_up_resume(&set).is_some());
        assert_eq!(session.poll_catch_up(), Some((set.clone(), 0)));
        // Compacted again to #80 between two pages: `a` as sent misses
        // changes up to #80 that are now deleted.
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![snapshot("store.s1/b", 80)],
                cursor: 80,
                caught_up: false,
                resume: None,
            },
        );
        assert!(
            sent_batches(&mut session).is_empty(),
            "nothing of the mixed transfer"
        );
        assert!(
            session.catch_up_resume(&set).is_none(),
            "from the first document"
        );
        assert_eq!(session.poll_catch_up(), Some((set, 0)), "the cursor stayed");
    }

    #[test]
    fn forbidden_subscription_closes() {
        let mut session = ready_session();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: DocSetId::new("store.other").unwrap(),
                cursor: 0,
            },
        ])));
        assert!(session.is_closed());
    }

    #[test]
    fn ops_are_judged_before_storage() {
        let peer = peer();
        let mut doc = automerge::Automerge::new();
        doc.set_actor(peer.replica.actor(1));
        let mut tx = doc.transaction();
        automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "a", 1).unwrap();
        tx.commit();
        let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let op = |doc: &str, bytes: Vec<u8>, replica| Op {
            id: OpId { replica, seq: 1 },
            created_ms: 0,
            body: OpBody::Changes(vec![omnisync_core::protocol::message::DocChange {
                doc: DocId::new(doc).unwrap(),
                bytes,
            }]),
        };
        assert_eq!(
            judge_op(&peer, &op("store.s1/a", bytes.clone(), peer.replica)),
            Verdict::Accept
        );
        let code = |verdict| match verdict {
            Verdict::Reject { code, .. } => Some(code),
            Verdict::Accept => None,
        };
        assert_eq!(
            code(judge_op(
                &peer,
                &op("store.s2/a", bytes.clone(), peer.replica)
            )),
            Some(RejectCode::Forbidden)
        );
        assert_eq!(
            code(judge_op(
                &peer,
                &op("store.s1/a", vec![1, 2, 3], peer.replica)
            )),
            Some(RejectCode::MalformedChange)
        );
        assert_eq!(
            code(judge_op(
                &peer,
                &op("store.s1/a", bytes, ReplicaId([2; 16]))
            )),
            Some(RejectCode::WrongAuthor)
        );
    }
}
