//! One device's WebSocket: the I/O shell around a [`HubSession`].
//!
//! The loop feeds the session frames, acks from the committer, commits from
//! the fan-out and pages of catch-up reads, and after every input sends what
//! the session queued. All decisions are the session's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use omnisync_core::ids::DocSetId;
use omnisync_core::protocol::hub::{ChangePage, HubEvent, HubSession, Outbound};
use omnisync_core::protocol::message::{self, ErrorCode};
use tokio::sync::{broadcast, mpsc};

use crate::HubState;
use crate::committer::CommitRequest;

/// A device must complete its handshake within this time.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// A device that sends nothing for this long is disconnected (devices ping
/// after 10 s of silence).
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// A device that does not take a frame within this time is disconnected
/// instead of being buffered for without end.
pub const SEND_TIMEOUT_MS: u64 = 10_000;

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

/// Serves one connection until it closes.
pub async fn serve(mut socket: WebSocket, hub: Arc<HubState>, address: SocketAddr) {
    hub.metrics.connections.fetch_add(1, Relaxed);
    hub.metrics.connections_total.fetch_add(1, Relaxed);
    let mut session = HubSession::new();
    let mut fanout = hub.fanout.subscribe();
    // Unbounded on purpose: the committer must never wait for one device.
    // It stays small because this connection submits nothing while it is
    // busy sending, and each submit yields exactly one answer.
    let (ack_sender, mut acks) = mpsc::unbounded_channel();
    let opened = Instant::now();
    let mut shutdown = hub.shutdown.subscribe();
    let mut catch_up: Option<CatchUp> = None;
    let mut received = Instant::now();
    let reason = loop {
        // Act on what the session asked for.
        while let Some(event) = session.poll_event() {
            match event {
                HubEvent::Authenticate(hello) => {
                    let result = hub
                        .authenticator
                        .authenticate(&hello, omnisync_core::now_ms());
                    match &result {
                        Ok(peer) => {
                            tracing::info!(device = %peer.device, store = %peer.store, %address, agent = %hello.agent, "device connected")
                        }
                        Err(reason) => {
                            tracing::warn!(device = %hello.device, %address, %reason, "handshake refused")
                        }
                    }
                    session.handle_authenticated(
                        result,
                        &hub.hub_id,
                        &hub.log_id,
                        omnisync_core::now_ms(),
                    );
                }
                HubEvent::Apply(ops) => {
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
        if catch_up.is_none()
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
        // Send what the session queued.
        let mut closing = None;
        while let Some(outbound) = session.poll_transmit() {
            match outbound {
                Outbound::Frame(frame) => {
                    let send = socket.send(Message::Binary(frame.into()));
                    match tokio::time::timeout(Duration::from_millis(SEND_TIMEOUT_MS), send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            closing = Some("send failed".to_owned());
                            break;
                        }
                        Err(_) => {
                            closing = Some(format!("device did not read for {SEND_TIMEOUT_MS} ms"));
                            break;
                        }
                    }
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
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    closing = Some(text);
                    break;
                }
            }
        }
        if let Some(reason) = closing {
            break reason;
        }
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(frame))) => {
                    received = Instant::now();
                    session.handle_frame(&frame);
                }
                Some(Ok(Message::Text(_))) => session.handle_text_frame(),
                Some(Ok(Message::Close(_))) | None => break "device closed".to_owned(),
                Some(Ok(_)) => received = Instant::now(),
                Some(Err(error)) => {
                    let Some((code, detail)) = classify_socket_error(error) else {
                        break "connection dropped".to_owned();
                    };
                    // A frame over the limit or a broken frame: say why, then close.
                    let detail = truncate(&format!("{}: {detail}", code.as_str()), 120);
                    let frame = CloseFrame { code: close_code(code), reason: detail.clone().into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    hub.metrics.protocol_errors.fetch_add(1, Relaxed);
                    break detail;
                }
            },
            Some(answer) = acks.recv() => match answer {
                Ok(acks) => session.handle_acks(acks),
                Err(error) => session.handle_internal_error(error),
            },
            committed = fanout.recv() => match committed {
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
    hub.metrics.connections.fetch_sub(1, Relaxed);
    let device = session
        .peer()
        .map(|peer| peer.device.to_string())
        .unwrap_or_default();
    tracing::info!(%device, %address, %reason, "connection closed");
}

/// Sorts a socket read error: the peer's fault (with a reason to send back)
/// or a dropped connection (`None`: nobody left to tell).
fn classify_socket_error(error: axum::Error) -> Option<(ErrorCode, String)> {
    use tokio_tungstenite::tungstenite::Error;
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(detail)) => Some((
            ErrorCode::TooLarge,
            format!(
                "{detail}; frames are limited to {} bytes",
                message::FRAME_BYTES_MAX
            ),
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
