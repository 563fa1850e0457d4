//! One device's WebSocket: the I/O shell around a [`HubSession`].
//!
//! The loop feeds the session frames, acks from the committer, commits from
//! the fan-out and pages of catch-up reads, and after every input queues
//! what the session wants sent for a writer task. Protocol decisions are the
//! session's; this shell adds the runtime's: authentication and replica
//! binding, rate limits per device and address, the outbound byte limit (a
//! device that does not read is dropped, not buffered for), the token's
//! expiry and revocations, timeouts, and the audit log of every refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicUsize;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use omnisync_core::protocol::message::{self, ErrorCode, OpBody, RejectCode};
use omnisync_core::vocab::ids::{DocSetId, OpId};
use omnisync_hub_engine::authz::{AuditEvent, AuditKind};
use omnisync_hub_engine::hub_session::{
    ChangePage, HubEvent, HubSession, IncomingOp, Outbound, Verdict,
};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::HubState;
use crate::audit;
use crate::changes::ChangeId;
use crate::committer::CommitRequest;
use crate::devices::{Revocation, revoked_message};
use crate::limits::CATCH_UP_OUTBOUND_BYTES_MAX;

/// A device must complete its handshake within this time.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// A device that sends nothing for this long is disconnected (devices ping
/// after 10 s of silence).
pub const IDLE_TIMEOUT_MS: u64 = 60_000;

/// WebSocket close code for each protocol error.
fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::TooLarge => 1009,
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::Internal => 1011,
        ErrorCode::Unauthenticated | ErrorCode::Forbidden => 1008,
        _ => 1002,
    }
}

type CatchUp = tokio::task::JoinHandle<(DocSetId, Result<ChangePage, String>)>;

/// How the connection loop ended.
enum Ending {
    /// Send what is queued (an error and a close frame), then close.
    Flush(String),
    /// Drop the connection at once: the device is not reading.
    Abort(String),
}

/// Serves one connection until it closes.
pub async fn serve(socket: WebSocket, hub: Arc<HubState>, address: SocketAddr) {
    hub.metrics.connections.fetch_add(1, Relaxed);
    hub.metrics.connections_total.fetch_add(1, Relaxed);
    let mut session = HubSession::with_limits(hub.limits.session());
    let mut fanout = hub.fanout.subscribe();
    let mut revocations = hub.devices.revocations();
    // Unbounded on purpose: the committer must never wait for one device.
    // It stays small because each submit yields exactly one answer, and the
    // answers count against the outbound limit once queued for the socket.
    let (ack_sender, mut acks) = mpsc::unbounded_channel();
    let (sink, mut stream) = socket.split();
    let mut outbox = Outbox::start(sink, hub.limits.send_timeout_ms);
    let opened = Instant::now();
    let opened_ms = omnisync_core::now_ms();
    let mut shutdown = hub.shutdown.subscribe();
    let mut catch_up: Option<CatchUp> = None;
    let mut received = Instant::now();
    let mut subject = audit::Subject::address(address);
    let mut expires_at: Option<tokio::time::Instant> = None;
    let ending = loop {
        // Act on what the session asked for.
        while let Some(event) = session.poll_event() {
            match event {
                HubEvent::Authenticate(hello) => {
                    subject.device = hello.device.to_string();
                    subject.store = hello.store.to_string();
                    authenticate(&hub, &mut session, &hello, address, &mut subject);
                    expires_at =
                        session
                            .peer()
                            .and_then(|peer| peer.expires_ms)
                            .map(|expires_ms| {
                                let left = expires_ms.saturating_sub(omnisync_core::now_ms());
                                tokio::time::Instant::now() + Duration::from_millis(left)
                            });
                }
                HubEvent::Probe(ops) => match probe_outcomes(&hub, ops).await {
                    Ok(known) => session.handle_probe_answer(known),
                    Err(error) => session.handle_internal_error(error),
                },
                HubEvent::Apply(mut ops) => {
                    match refuse_conflicting_changes(&hub, &mut ops).await {
                        Ok(refusals) => {
                            for event in &refusals {
                                audit::record_session_event(&hub.metrics, &subject, event);
                            }
                        }
                        Err(error) => {
                            session.handle_internal_error(error);
                            continue;
                        }
                    }
                    let request = CommitRequest {
                        ops,
                        reply: ack_sender.clone(),
                        received,
                    };
                    if let Err(error) = hub.committer.submit(request).await {
                        session.handle_internal_error(error);
                    }
                }
            }
        }
        while let Some(event) = session.poll_audit() {
            audit::record_session_event(&hub.metrics, &subject, &event);
        }
        count_restore(&hub, &mut session, &subject);
        // Read the log only as fast as the device takes what was read.
        if catch_up.is_none()
            && outbox.pending() < CATCH_UP_OUTBOUND_BYTES_MAX
            && let Some((set, cursor)) = session.poll_catch_up()
        {
            let reader = hub.reader.clone();
            let resume = session.catch_up_resume(&set).cloned();
            catch_up = Some(tokio::task::spawn_blocking(move || {
                let page = reader
                    .catch_up_page(
                        &set,
                        cursor,
                        resume.as_ref(),
                        message::CHANGE_BATCH_LEN_MAX,
                        message::CHANGE_BATCH_BYTES_TARGET,
                    )
                    .map_err(|error| error.to_string());
                (set, page)
            }));
        }
        // Queue what the session wants sent.
        if let Some(ending) = queue_outbound(&hub, &mut session, &mut outbox, &subject) {
            break ending;
        }
        let throttled = outbox.pending() >= CATCH_UP_OUTBOUND_BYTES_MAX;
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(incoming)) => {
                    received = Instant::now();
                    if let Err(refusal) = admit_message(&hub, session.peer(), address, received) {
                        session.handle_refused(ErrorCode::LimitExceeded, refusal);
                        continue;
                    }
                    match incoming {
                        Message::Binary(frame) => session.handle_frame(&frame),
                        Message::Text(_) => session.handle_text_frame(),
                        Message::Close(_) => break Ending::Flush("device closed".to_owned()),
                        // WebSocket pings and pongs: the socket answers pings itself.
                        _ => {}
                    }
                }
                None => break Ending::Flush("device closed".to_owned()),
                Some(Err(error)) => {
                    let Some((code, detail)) = classify_socket_error(error, hub.limits.frame_bytes_max) else {
                        break Ending::Abort("connection dropped".to_owned());
                    };
                    // A frame over the limit or a broken frame: say why, then close.
                    let detail = truncate(&format!("{}: {detail}", code.as_str()), 120);
                    let frame = CloseFrame { code: close_code(code), reason: detail.clone().into() };
                    outbox.push(Message::Close(Some(frame)));
                    hub.metrics.protocol_errors.fetch_add(1, Relaxed);
                    audit::record(&hub.metrics, &subject, code.as_str(), &detail, None);
                    break Ending::Flush(detail);
                }
            },
            Some(answer) = acks.recv() => match answer {
                Ok(acks) => session.handle_acks(acks),
                Err(error) => session.handle_internal_error(error),
            },
            committed = fanout.recv() => match committed {
                // A device behind on reading gets this commit from the log
                // later, at its own pace, instead of from a growing queue.
                Ok(committed) if outbox.pending() >= CATCH_UP_OUTBOUND_BYTES_MAX
                    || outbox.pending() + commit_bytes(&committed) > hub.limits.outbound_bytes_max / 2 =>
                {
                    session.handle_fanout_lagged();
                }
                Ok(committed) => session.handle_committed(&committed),
                Err(broadcast::error::RecvError::Lagged(_)) => session.handle_fanout_lagged(),
                Err(broadcast::error::RecvError::Closed) => session.handle_shutdown(),
            },
            Some(page) = async { match catch_up.as_mut() { Some(handle) => Some(handle.await), None => None } } => {
                catch_up = None;
                match page {
                    Ok((set, Ok(page))) => {
                        hub.metrics.changes_sent.fetch_add(page.changes.len() as u64, Relaxed);
                        session.handle_catch_up_page(&set, page);
                    }
                    Ok((_, Err(error))) => session.handle_internal_error(error),
                    Err(error) => session.handle_internal_error(error.to_string()),
                }
            }
            revoked = revocations.recv() => {
                if let Some(reason) = revocation_for(&hub, session.peer(), revoked, opened_ms) {
                    session.handle_refused(ErrorCode::Unauthenticated, reason);
                }
            }
            _ = async { match expires_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                expires_at = None;
                session.handle_refused(
                    ErrorCode::Unauthenticated,
                    "the device token expired; refresh it and reconnect".to_owned(),
                );
            }
            _ = outbox.drained.notified(), if throttled => {}
            ended = &mut outbox.task => {
                let reason = match ended {
                    Ok(WriterEnd::NotReading(reason)) => {
                        hub.metrics.protocol_errors.fetch_add(1, Relaxed);
                        audit::record(&hub.metrics, &subject, ErrorCode::LimitExceeded.as_str(), &reason, None);
                        reason
                    }
                    Ok(WriterEnd::Done(reason)) => reason,
                    Err(error) => format!("writer failed: {error}"),
                };
                break Ending::Abort(reason);
            }
            _ = shutdown.changed() => session.handle_shutdown(),
            _ = tokio::time::sleep_until(deadline(&session, opened, received)) => {
                if session.peer().is_none() {
                    session.handle_timeout(format!("no handshake within {HELLO_TIMEOUT_MS} ms"));
                } else {
                    session.handle_timeout(format!("nothing received for {IDLE_TIMEOUT_MS} ms"));
                }
            }
        }
    };
    // Log what the session refused last (a close it asked for).
    while let Some(event) = session.poll_audit() {
        audit::record_session_event(&hub.metrics, &subject, &event);
    }
    let reason = match ending {
        Ending::Flush(reason) => {
            outbox.finish().await;
            reason
        }
        Ending::Abort(reason) => {
            outbox.task.abort();
            reason
        }
    };
    hub.metrics.connections.fetch_sub(1, Relaxed);
    tracing::info!(device = %subject.device, %address, %reason, "connection closed");
}

/// Looks up whether the log holds an outcome for each probed op (one read
/// each, on the blocking pool: at most `PROBE_OPS_MAX` per handshake).
async fn probe_outcomes(hub: &Arc<HubState>, ops: Vec<OpId>) -> Result<Vec<bool>, String> {
    let reader = hub.reader.clone();
    tokio::task::spawn_blocking(move || {
        ops.iter()
            .map(|op| reader.outcome(op).map(|outcome| outcome.is_some()))
            .collect::<Result<Vec<bool>, _>>()
    })
    .await
    .map_err(|error| error.to_string())?
    .map_err(|error| format!("probing op outcomes: {error}"))
}

/// Counts what the session's probe showed: a device ahead of this hub (logged
/// at warn) and the ops it uploads again.
fn count_restore(hub: &HubState, session: &mut HubSession, subject: &audit::Subject) {
    let counts = session.take_restore_counts();
    if counts.behind > 0 {
        hub.metrics.devices_ahead.fetch_add(counts.behind, Relaxed);
        tracing::warn!(device = %subject.device, "this hub lacks ops the device saw acknowledged (restored from an older backup?); the device uploads them again");
    }
    if counts.reuploaded_ops > 0 {
        hub.metrics
            .devices_reuploaded_ops
            .fetch_add(counts.reuploaded_ops, Relaxed);
    }
}

/// Turns every accepted op that brings a different automerge change under
/// a (document, actor, seq) the hub already holds into a rejection (see
/// `crate::changes`), and returns the audit events of those rejections.
/// Documents not indexed yet are loaded from the log first.
async fn refuse_conflicting_changes(
    hub: &Arc<HubState>,
    ops: &mut [IncomingOp],
) -> Result<Vec<AuditEvent>, String> {
    let mut identities: Vec<Option<Vec<ChangeId>>> = Vec::with_capacity(ops.len());
    for op in ops.iter() {
        let ids = match (&op.verdict, &op.op.body) {
            (Verdict::Accept, OpBody::Changes(changes)) => changes
                .iter()
                .map(|change| {
                    automerge::Change::from_bytes(change.bytes.clone())
                        .ok()
                        .map(|parsed| ChangeId::of(&change.doc, &parsed))
                })
                .collect::<Option<Vec<_>>>(),
            _ => None,
        };
        identities.push(ids);
    }
    let missing = hub
        .changes
        .missing(identities.iter().flatten().flatten().map(|id| &id.doc));
    if !missing.is_empty() {
        let reader = hub.reader.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                .map(|doc| reader.doc_changes(&doc).map(|stored| (doc, stored)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        for (doc, stored) in loaded {
            hub.changes.load(&doc, &stored);
        }
    }
    let mut refusals = Vec::new();
    for (op, ids) in ops.iter_mut().zip(identities) {
        let Some(ids) = ids else { continue };
        if let Err(detail) = hub.changes.reserve(&ids) {
            let detail = message::clamp_detail(detail);
            refusals.push(AuditEvent {
                kind: AuditKind::OpRejected {
                    op: op.op.id,
                    code: RejectCode::Invalid,
                },
                detail: detail.clone(),
            });
            op.verdict = Verdict::Reject {
                code: RejectCode::Invalid,
                detail,
            };
        }
    }
    Ok(refusals)
}

/// Runs the authenticator, binds the replica and checks the device's
/// connection rate; tells the session the outcome.
fn authenticate(
    hub: &HubState,
    session: &mut HubSession,
    hello: &omnisync_core::protocol::message::Hello,
    address: SocketAddr,
    subject: &mut audit::Subject,
) {
    let now_ms = omnisync_core::now_ms();
    let result = hub
        .authenticator
        .authenticate(hello, now_ms)
        .and_then(|peer| hub.devices.bind_replica(&peer, now_ms).map(|()| peer));
    let peer = match result {
        Ok(peer) => peer,
        Err(reason) => {
            // The session records the refusal for the audit log.
            session.handle_authenticated(Err(reason), &hub.hub_id, &hub.log_id, now_ms);
            return;
        }
    };
    *subject = audit::Subject::peer(&peer, address);
    let key = (peer.tenant.clone(), peer.device.clone());
    if let Err(exceeded) = hub.rates.device_connections.check(&key, Instant::now()) {
        session.handle_refused(
            ErrorCode::LimitExceeded,
            format!(
                "too many connections from device {}: {exceeded}",
                peer.device
            ),
        );
        return;
    }
    tracing::info!(device = %peer.device, store = %peer.store, role = %peer.role, %address, agent = %hello.agent, "device connected");
    session.handle_authenticated(Ok(peer), &hub.hub_id, &hub.log_id, now_ms);
}

/// Takes one message from the device's and the address's rate budgets.
fn admit_message(
    hub: &HubState,
    peer: Option<&omnisync_hub_engine::hub_session::Peer>,
    address: SocketAddr,
    now: Instant,
) -> Result<(), String> {
    if let Err(exceeded) = hub.rates.address_messages.check(&address.ip(), now) {
        return Err(format!(
            "too many messages from {}: {exceeded}",
            address.ip()
        ));
    }
    if let Some(peer) = peer {
        let key = (peer.tenant.clone(), peer.device.clone());
        if let Err(exceeded) = hub.rates.device_messages.check(&key, now) {
            return Err(format!(
                "too many messages from device {}: {exceeded}",
                peer.device
            ));
        }
    }
    Ok(())
}

/// The reason to close this session for a revocation, if it concerns the
/// session's device. A lagging receiver looks the device up instead.
fn revocation_for(
    hub: &HubState,
    peer: Option<&omnisync_hub_engine::hub_session::Peer>,
    received: Result<Revocation, broadcast::error::RecvError>,
    opened_ms: u64,
) -> Option<String> {
    let peer = peer?;
    let revocation = match received {
        Ok(revocation) => revocation,
        Err(broadcast::error::RecvError::Lagged(_)) => {
            hub.devices.revocation(&peer.tenant, &peer.device)?
        }
        // The registry lives as long as the hub's state, which this task holds.
        Err(broadcast::error::RecvError::Closed) => return None,
    };
    (revocation.tenant == peer.tenant
        && revocation.device == peer.device
        && revocation.revoked_ms >= opened_ms)
        .then(|| revoked_message(&revocation))
}

/// Moves the session's outbound frames to the socket writer. Returns how
/// the connection ends if it must: the session closed it, or the device
/// stopped reading and its queue passed the limit.
fn queue_outbound(
    hub: &HubState,
    session: &mut HubSession,
    outbox: &mut Outbox,
    subject: &audit::Subject,
) -> Option<Ending> {
    while let Some(outbound) = session.poll_transmit() {
        match outbound {
            Outbound::Frame(frame) => {
                if outbox.pending() + frame.len() > hub.limits.outbound_bytes_max {
                    let detail = format!(
                        "device is not reading: more than {} bytes wait for it",
                        hub.limits.outbound_bytes_max
                    );
                    hub.metrics.protocol_errors.fetch_add(1, Relaxed);
                    audit::record(
                        &hub.metrics,
                        subject,
                        ErrorCode::LimitExceeded.as_str(),
                        &detail,
                        None,
                    );
                    return Some(Ending::Abort(detail));
                }
                outbox.push(Message::Binary(frame.into()));
            }
            Outbound::Close { code, reason } => {
                if !matches!(code, ErrorCode::ShuttingDown) {
                    hub.metrics.protocol_errors.fetch_add(1, Relaxed);
                }
                let text = message::clamp_detail(format!("{}: {reason}", code.as_str()));
                // Close reasons must fit in a control frame (123 bytes).
                let text = truncate(&text, 120);
                let frame = CloseFrame {
                    code: close_code(code),
                    reason: text.clone().into(),
                };
                outbox.push(Message::Close(Some(frame)));
                return Some(Ending::Flush(text));
            }
        }
    }
    None
}

/// Bytes of change data in a commit (an upper bound of what one session
/// gets from it).
fn commit_bytes(committed: &omnisync_hub_engine::hub_session::CommittedChanges) -> usize {
    committed
        .by_set
        .values()
        .flatten()
        .map(|change| change.bytes.len())
        .sum()
}

/// Why the socket writer stopped.
enum WriterEnd {
    /// The queue closed or a close frame went out, or the socket failed.
    Done(String),
    /// The device took nothing within the send timeout.
    NotReading(String),
}

/// The socket's writer: a task that sends queued messages in batches, each
/// batch within the send timeout, and counts the bytes still queued.
struct Outbox {
    queue: mpsc::UnboundedSender<Message>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    task: tokio::task::JoinHandle<WriterEnd>,
}

impl Outbox {
    fn start(sink: SplitSink<WebSocket, Message>, send_timeout_ms: u64) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(write_loop(
            sink,
            receiver,
            pending.clone(),
            drained.clone(),
            send_timeout_ms,
        ));
        Self {
            queue,
            pending,
            drained,
            task,
        }
    }

    /// Bytes queued and not yet written to the socket.
    fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    fn push(&self, message: Message) {
        self.pending.fetch_add(message_len(&message), Relaxed);
        // A closed queue means the writer ended; the loop sees that next.
        let _ = self.queue.send(message);
    }

    /// Lets the writer send what is queued, then waits for it (bounded by
    /// its own send timeout).
    async fn finish(self) {
        let Outbox { queue, task, .. } = self;
        drop(queue);
        let _ = task.await;
    }
}

/// Most bytes one writer batch gathers before it flushes.
const WRITE_BATCH_BYTES_MAX: usize = 1024 * 1024;

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::UnboundedReceiver<Message>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    send_timeout_ms: u64,
) -> WriterEnd {
    loop {
        let Some(first) = queue.recv().await else {
            let _ = sink.close().await;
            return WriterEnd::Done("closed".to_owned());
        };
        let mut batch_bytes = 0;
        let mut closing = false;
        let write = async {
            let mut next = Some(first);
            while let Some(message) = next.take() {
                closing |= matches!(message, Message::Close(_));
                batch_bytes += message_len(&message);
                sink.feed(message).await?;
                if closing || batch_bytes >= WRITE_BATCH_BYTES_MAX {
                    break;
                }
                next = queue.try_recv().ok();
            }
            sink.flush().await
        };
        match tokio::time::timeout(Duration::from_millis(send_timeout_ms), write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return WriterEnd::Done("send failed".to_owned()),
            Err(_) => {
                return WriterEnd::NotReading(format!(
                    "device is not reading: nothing taken for {send_timeout_ms} ms"
                ));
            }
        }
        pending.fetch_sub(batch_bytes, Relaxed);
        drained.notify_one();
        if closing {
            return WriterEnd::Done("closed".to_owned());
        }
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Binary(bytes) => bytes.len(),
        Message::Text(text) => text.len(),
        Message::Close(Some(frame)) => frame.reason.len() + 2,
        _ => 2,
    }
}

/// Sorts a socket read error: the peer's fault (with a reason to send back)
/// or a dropped connection (`None`: nobody left to tell).
fn classify_socket_error(
    error: axum::Error,
    frame_bytes_max: usize,
) -> Option<(ErrorCode, String)> {
    use tokio_tungstenite::tungstenite::Error;
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(detail)) => Some((
            ErrorCode::TooLarge,
            format!("{detail}; frames are limited to {frame_bytes_max} bytes"),
        )),
        Some(Error::Protocol(detail))
            if !matches!(
                detail,
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            ) =>
        {
            Some((ErrorCode::Malformed, detail.to_string()))
        }
        Some(Error::Utf8(detail)) => Some((ErrorCode::Malformed, detail.clone())),
        _ => None,
    }
}

/// When the connection times out: the handshake deadline until the device is
/// known, then the idle deadline from the last frame received.
fn deadline(session: &HubSession, opened: Instant, received: Instant) -> tokio::time::Instant {
    let at = if session.peer().is_none() {
        opened + Duration::from_millis(HELLO_TIMEOUT_MS)
    } else {
        received + Duration::from_millis(IDLE_TIMEOUT_MS)
    };
    tokio::time::Instant::from_std(at)
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
