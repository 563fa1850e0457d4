//! Scenario (d): hostile or broken clients against a real hub. Raw
//! tokio-tungstenite connections send garbage, a frame from a future protocol
//! version, frames over the size limit, broken WebSocket framing, and data
//! before `Hello`. Each must be closed with a WebSocket close frame whose code
//! and reason name the problem — never a hang, never a crash — while two
//! honest terminals on the same hub keep syncing and `/healthz` keeps
//! answering. A client that merely vanishes is not a protocol error.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use omnisync_core::protocol::message::{
    self, ClientMessage, Credentials, ErrorCode, Hello, HubMessage, SubscriptionRequest,
};
use omnisync_core::{DeviceId, DocEdit, DocId, DocSetId, Edit, ReplicaId, StoreId, Value};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, TestHub, device, http, init_logs, wait_until};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// How long the hub may take to answer or close a bad connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Close code for a protocol violation (RFC 6455).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a message too big to process (RFC 6455).
const CLOSE_TOO_BIG: u16 = 1009;

/// How the hub ended a bad connection.
#[derive(Debug)]
struct Closed {
    code: u16,
    reason: String,
    /// The `HubMessage::Error` sent before the close, if any.
    error: Option<ErrorCode>,
    /// Whether a `Welcome` came before the close.
    welcomed: bool,
}

/// What a bad client sends right after the WebSocket handshake.
enum Abuse {
    /// WebSocket messages (or raw frames), sent while the hub's answer is read.
    Messages(Vec<Message>),
    /// Bytes written straight to the TCP stream: framing tungstenite would never produce.
    RawBytes(Vec<u8>),
}

/// One bad client and what the hub must answer.
struct Case {
    name: &'static str,
    abuse: Abuse,
    code: u16,
    /// Text the close reason must contain.
    reason: &'static str,
    /// The protocol error the hub sends before closing, for errors found in
    /// a decoded frame; `None` for transport-level errors, which are
    /// answered by the close frame alone.
    error: Option<ErrorCode>,
    /// Whether the abuse starts with a valid handshake the hub accepts.
    welcomed: bool,
}

/// A WebSocket to the hub with no size limits of its own, so it can send
/// what the hub must refuse; the TCP stream stays reachable for raw bytes.
async fn connect_raw(address: SocketAddr) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let mut config = WebSocketConfig::default();
    config.max_message_size = None;
    config.max_frame_size = None;
    let connect = async {
        let tcp = TcpStream::connect(address).await?;
        let url = format!("ws://{address}/v1/sync");
        anyhow::Ok(
            tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
                .await?
                .0,
        )
    };
    tokio::time::timeout(CLOSE_TIMEOUT, connect)
        .await
        .context("connecting timed out")?
}

/// Reads until the hub's close frame. Fails if the hub goes silent, drops
/// the connection without a close frame, or sends anything but an `Error`.
async fn read_close<S>(socket: &mut S) -> anyhow::Result<Closed>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut error = None;
    let mut welcomed = false;
    let read = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(frame))) => match message::decode::<HubMessage>(&frame)? {
                    HubMessage::Error(protocol_error) => error = Some(protocol_error.code),
                    HubMessage::Welcome(_) if error.is_none() => welcomed = true,
                    other => anyhow::bail!("unexpected message before the close: {other:?}"),
                },
                Some(Ok(Message::Close(Some(frame)))) => {
                    let code = frame.code.into();
                    return Ok(Closed {
                        code,
                        reason: frame.reason.to_string(),
                        error,
                        welcomed,
                    });
                }
                Some(Ok(Message::Close(None))) => {
                    anyhow::bail!("the hub closed without a code or reason")
                }
                Some(Ok(other)) => anyhow::bail!("unexpected {other:?} before the close"),
                Some(Err(transport)) => {
                    anyhow::bail!("connection failed without a close frame: {transport}")
                }
                None => anyhow::bail!("connection ended without a close frame"),
            }
        }
    };
    tokio::time::timeout(CLOSE_TIMEOUT, read)
        .await
        .with_context(|| format!("the hub neither answered nor closed within {CLOSE_TIMEOUT:?}"))?
}

/// Connects, commits the abuse and returns how the hub closed. Messages are
/// sent from a separate task while the answer is read: the hub may close as
/// soon as it has read a frame header, long before a big frame is written.
async fn provoke(address: SocketAddr, abuse: Abuse) -> anyhow::Result<Closed> {
    let mut socket = connect_raw(address).await?;
    let messages = match abuse {
        Abuse::Messages(messages) => messages,
        Abuse::RawBytes(bytes) => {
            socket.get_mut().write_all(&bytes).await?;
            Vec::new()
        }
    };
    let (mut sink, mut stream) = socket.split();
    let sending = tokio::spawn(async move {
        for message in messages {
            // The hub may reset the connection before all of it is written.
            if sink.send(message).await.is_err() {
                break;
            }
        }
        sink
    });
    let closed = read_close(&mut stream).await;
    let sink = tokio::time::timeout(CLOSE_TIMEOUT, sending)
        .await
        .context("the bad client's send hung")??;
    drop((sink, stream));
    closed
}

/// A valid `Hello` for a device of store s1.
fn hello(device: &str) -> anyhow::Result<Message> {
    let hello = ClientMessage::Hello(Hello {
        device: DeviceId::new(device)?,
        store: StoreId::new("s1")?,
        replica: ReplicaId::random(),
        credentials: Credentials::default(),
        agent: "bad-frames-test".into(),
        versions: None,
        probe: None,
    });
    Ok(Message::Binary(message::encode(&hello).into()))
}

/// A client WebSocket frame header + mask for a short payload, with the
/// given first byte (FIN, RSV bits, opcode).
fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4]),
    );
    frame
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let Message::Binary(hello_frame) = hello("mallory")? else {
        unreachable!("hello() is binary")
    };
    let mut future_version = hello_frame.to_vec();
    future_version[2] = message::PROTOCOL_VERSION + 1;
    let garbage_body = [
        &message::FRAME_MAGIC[..],
        &[message::PROTOCOL_VERSION],
        &[0xff; 16],
    ]
    .concat();
    let subscribe_first = ClientMessage::Subscribe(vec![SubscriptionRequest {
        set: DocSetId::new("store.s1")?,
        cursor: 0,
    }]);
    let binary = |bytes: Vec<u8>| Abuse::Messages(vec![Message::Binary(bytes.into())]);
    let in_frame = |name, abuse, reason, error| Case {
        name,
        abuse,
        code: CLOSE_PROTOCOL_ERROR,
        reason,
        error: Some(error),
        welcomed: false,
    };
    let fragment = |len, opcode, last| Message::Frame(Frame::message(vec![0u8; len], opcode, last));
    let half_limit = message::FRAME_BYTES_MAX / 2 + 1;
    Ok(vec![
        in_frame(
            "garbage bytes",
            binary(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            "malformed",
            ErrorCode::Malformed,
        ),
        in_frame(
            "an empty frame",
            binary(Vec::new()),
            "malformed",
            ErrorCode::Malformed,
        ),
        in_frame(
            "magic and version with a garbage body",
            binary(garbage_body),
            "malformed",
            ErrorCode::Malformed,
        ),
        in_frame(
            "a text frame",
            Abuse::Messages(vec![Message::Text("{\"hello\": true}".into())]),
            "malformed",
            ErrorCode::Malformed,
        ),
        in_frame(
            "a future protocol version",
            binary(future_version),
            "unsupported-version",
            ErrorCode::UnsupportedVersion,
        ),
        in_frame(
            "a ping before hello",
            binary(message::encode(&ClientMessage::Ping(7))),
            "unexpected-message",
            ErrorCode::UnexpectedMessage,
        ),
        in_frame(
            "a subscribe before hello",
            binary(message::encode(&subscribe_first)),
            "unexpected-message",
            ErrorCode::UnexpectedMessage,
        ),
        Case {
            welcomed: true,
            ..in_frame(
                "a second hello",
                Abuse::Messages(vec![hello("mallory")?, hello("mallory")?]),
                "unexpected-message",
                ErrorCode::UnexpectedMessage,
            )
        },
        Case {
            name: "one frame over the size limit",
            abuse: binary(vec![0u8; message::FRAME_BYTES_MAX + 1]),
            code: CLOSE_TOO_BIG,
            reason: "too-large",
            error: None,
            welcomed: false,
        },
        Case {
            name: "a message over the size limit in two fragments",
            abuse: Abuse::Messages(vec![
                fragment(half_limit, OpCode::Data(Data::Binary), false),
                fragment(half_limit, OpCode::Data(Data::Continue), true),
            ]),
            code: CLOSE_TOO_BIG,
            reason: "too-large",
            error: None,
            welcomed: false,
        },
        Case {
            name: "a frame with reserved bits set",
            abuse: Abuse::RawBytes(masked_frame(0x80 | 0x40 | 0x2, b"OS\x01")),
            code: CLOSE_PROTOCOL_ERROR,
            reason: "malformed",
            error: None,
            welcomed: false,
        },
        Case {
            name: "an unmasked client frame",
            abuse: Abuse::RawBytes(vec![0x82, 3, b'O', b'S', 1]),
            code: CLOSE_PROTOCOL_ERROR,
            reason: "malformed",
            error: None,
            welcomed: false,
        },
    ])
}

/// Commits a sale on `from` and waits until `to` holds it.
async fn round_trip(from: &TestDevice, to: &TestDevice, sale: &str) -> anyhow::Result<()> {
    let doc = DocId::new("store.s1/sales/honest")?;
    from.client.commit(&[DocEdit {
        doc: doc.clone(),
        edits: vec![Edit::put(&[sale], Value::Int(100))],
    }])?;
    wait_until(
        SYNC_TIMEOUT,
        "an honest sale to reach the other till",
        || Ok(to.client.replica().get(&doc, &[sale])? == Some(Value::Int(100))),
    )
    .await
    .with_context(|| format!("honest clients stopped syncing at {sale}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_closed_with_a_reason_while_honest_clients_sync() -> anyhow::Result<()> {
    init_logs();
    let hub = TestHub::start().await?;
    let address = hub.hub.address();
    let honest = [
        device(&hub.url(), "till-1", "s1")?,
        device(&hub.url(), "till-2", "s1")?,
    ];
    for till in &honest {
        till.client.wait_synced(SYNC_TIMEOUT).await?;
    }
    round_trip(&honest[0], &honest[1], "before").await?;

    let cases = cases()?;
    let case_count = cases.len() as u64;
    for (index, case) in cases.into_iter().enumerate() {
        let name = case.name;
        let closed = provoke(address, case.abuse)
            .await
            .with_context(|| format!("case: {name}"))?;
        assert_eq!(closed.code, case.code, "{name}: close code ({closed:?})");
        assert!(
            closed.reason.contains(case.reason),
            "{name}: close reason should name {:?}: {closed:?}",
            case.reason
        );
        assert_eq!(
            closed.error, case.error,
            "{name}: the Error message before the close ({closed:?})"
        );
        assert_eq!(
            closed.welcomed, case.welcomed,
            "{name}: handshake ({closed:?})"
        );
        // The honest tills still sync, taking turns to sell.
        let (from, to) = if index % 2 == 0 {
            (&honest[0], &honest[1])
        } else {
            (&honest[1], &honest[0])
        };
        round_trip(from, to, &format!("after-{index}")).await?;
    }

    // A device that vanishes after its handshake (power cut, pulled cable)
    // is not a protocol violation.
    let mut vanishing = connect_raw(address).await?;
    vanishing.send(hello("vanishing")?).await?;
    let welcome = tokio::time::timeout(CLOSE_TIMEOUT, vanishing.next())
        .await?
        .context("no welcome")??;
    let Message::Binary(welcome) = welcome else {
        anyhow::bail!("expected a welcome, got {welcome:?}")
    };
    assert!(matches!(
        message::decode::<HubMessage>(&welcome)?,
        HubMessage::Welcome(_)
    ));
    // Close with a TCP reset and no close frame.
    vanishing.get_ref().set_zero_linger()?;
    drop(vanishing);
    let metrics = hub.hub.metrics();
    wait_until(SYNC_TIMEOUT, "the hub to drop the vanished device", || {
        Ok(metrics.connections.load(Relaxed) == 2)
    })
    .await?;

    // The hub is healthy, counted every bad connection as a protocol error
    // (and the vanished one not), and the honest tills never had to reconnect.
    let health = http::get(address, "/healthz", CLOSE_TIMEOUT).await?;
    assert_eq!(health.status, 200, "/healthz: {health:?}");
    assert_eq!(
        metrics.protocol_errors.load(Relaxed),
        case_count,
        "protocol errors counted"
    );
    assert_eq!(
        metrics.connections_total.load(Relaxed),
        case_count + 1 + 2,
        "connections accepted"
    );
    round_trip(&honest[1], &honest[0], "at-the-end").await?;
    Ok(())
}
