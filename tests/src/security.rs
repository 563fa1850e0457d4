//! Helpers for the security scenarios: signing keys and device tokens made
//! with the real `omnisync-hub keygen` and `enrol` subcommands, a hub
//! process in token mode, and a raw protocol client that can say anything a
//! hostile device would (any token, any replica, any op).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use automerge::transaction::Transactable as _;
use futures_util::{SinkExt as _, StreamExt as _};
use omnisync_core::protocol::message::{
    self, Ack, ClientMessage, Credentials, DocChange, ErrorCode, Hello, HubMessage, Op, OpBody,
    SubscriptionRequest,
};
use omnisync_core::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process::{HubProcess, hub_binary};

/// Issuer the scenarios' hubs trust.
pub const ISSUER: &str = "https://enrol.omnisync.test";
/// Audience of the scenarios' hubs.
pub const AUDIENCE: &str = "omnisync-hub-test";
/// Tenant of the scenarios' hubs.
pub const TENANT: &str = "acme";
/// How long a raw client waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A signing key pair written by `omnisync-hub keygen`.
pub struct Keys {
    /// The private JWK file.
    pub private: PathBuf,
    /// The public JWKS file.
    pub jwks: PathBuf,
}

/// Runs the hub binary with `args` and returns its stdout.
pub fn run_hub_command(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(hub_binary()?)
        .args(args)
        .output()
        .with_context(|| format!("running omnisync-hub {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "omnisync-hub {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

impl Keys {
    /// `omnisync-hub keygen --alg ALG --kid KID` into `dir`.
    pub fn generate(dir: &Path, alg: &str, kid: &str) -> anyhow::Result<Self> {
        let keys = Self {
            private: dir.join(format!("{kid}.private.jwk")),
            jwks: dir.join(format!("{kid}.jwks")),
        };
        run_hub_command(&[
            "keygen",
            "--alg",
            alg,
            "--kid",
            kid,
            "--private",
            path_str(&keys.private)?,
            "--jwks",
            path_str(&keys.jwks)?,
        ])?;
        Ok(keys)
    }

    /// A token from `omnisync-hub enrol` for `device` of `store` in `role`,
    /// with extra arguments (`--customer`, `--ttl-s`, `--issued-at-s`,
    /// `--audience` overrides …).
    pub fn enrol(
        &self,
        device: &str,
        store: &str,
        role: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "enrol",
            "--signing-key",
            path_str(&self.private)?,
            "--store",
            store,
            "--device",
            device,
            "--role",
            role,
        ];
        for (flag, default) in [
            ("--issuer", ISSUER),
            ("--audience", AUDIENCE),
            ("--tenant", TENANT),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, default]);
            }
        }
        args.extend(extra);
        Ok(run_hub_command(&args)?.trim().to_owned())
    }
}

/// Arguments that put `serve` in token mode with `keys` (refresh enabled,
/// no clock leeway so expiry tests are quick).
pub fn token_mode_args(keys: &Keys) -> anyhow::Result<Vec<String>> {
    Ok([
        "--jwks",
        path_str(&keys.jwks)?,
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--tenant",
        TENANT,
        "--signing-key",
        path_str(&keys.private)?,
        "--token-leeway-s",
        "0",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect())
}

/// Starts a hub process with `args`.
pub async fn start_hub(dir: &Path, args: &[String]) -> anyhow::Result<HubProcess> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.join("hub-data");
    std::fs::create_dir_all(&data)?;
    HubProcess::start_with(&hub_binary()?, crate::process::free_port()?, &data, &args).await
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("non-UTF-8 temporary path")
}

/// A raw protocol client: one WebSocket, full control over every message.
pub struct RawClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The replica it named in its `Hello`.
    pub replica: ReplicaId,
    next_seq: u64,
    /// Its automerge documents, per (document, author), so that its changes
    /// continue each actor's sequence like a real device's.
    docs: std::collections::HashMap<(String, ReplicaId), automerge::Automerge>,
}

/// How the hub ended a raw client's session.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    /// The `Error` code sent before the close, if any.
    pub code: Option<ErrorCode>,
    /// The close frame's code.
    pub close_code: Option<u16>,
    /// The close reason (or the error detail).
    pub reason: String,
}

impl RawClient {
    /// Connects and says `Hello`; `Ok` after `Welcome`, `Err(refusal)` if
    /// the hub refused the handshake.
    pub async fn connect(
        url: &str,
        device: &str,
        store: &str,
        replica: ReplicaId,
        token: Option<&str>,
    ) -> anyhow::Result<Result<Self, Refused>> {
        let tcp = TcpStream::connect(address_of(url)?).await?;
        Self::connect_over(tcp, url, device, store, replica, token).await
    }

    /// Like [`RawClient::connect`] over an already connected TCP stream
    /// (one with a small receive window, say).
    pub async fn connect_over(
        tcp: TcpStream,
        url: &str,
        device: &str,
        store: &str,
        replica: ReplicaId,
        token: Option<&str>,
    ) -> anyhow::Result<Result<Self, Refused>> {
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        // No limit of its own: it must be able to send what the hub refuses.
        config.max_message_size = None;
        config.max_frame_size = None;
        let (socket, _) = tokio::time::timeout(
            ANSWER_TIMEOUT,
            tokio_tungstenite::client_async_with_config(
                url,
                MaybeTlsStream::Plain(tcp),
                Some(config),
            ),
        )
        .await
        .context("connect timed out")??;
        let mut client = Self {
            socket,
            replica,
            next_seq: 1,
            docs: std::collections::HashMap::new(),
        };
        client
            .send(&ClientMessage::Hello(Hello {
                device: DeviceId::new(device)?,
                store: StoreId::new(store)?,
                replica,
                credentials: Credentials {
                    token: token.map(str::to_owned),
                },
                agent: "omnisync-tests hostile client".into(),
                versions: None,
                probe: None,
            }))
            .await?;
        match client.next_message().await? {
            Ok(HubMessage::Welcome(_)) => Ok(Ok(client)),
            Ok(other) => anyhow::bail!("expected Welcome, got {other:?}"),
            Err(refused) => Ok(Err(refused)),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        self.send_raw(message::encode(message)).await
    }

    /// Sends raw bytes as one binary message.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.socket.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next hub message, or how the hub closed the session.
    pub async fn next_message(&mut self) -> anyhow::Result<Result<HubMessage, Refused>> {
        let read = async {
            let mut error: Option<(ErrorCode, String)> = None;
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(frame))) => {
                        match message::decode::<HubMessage>(&frame)? {
                            HubMessage::Error(protocol_error) => {
                                error = Some((protocol_error.code, protocol_error.detail));
                            }
                            other if error.is_none() => return Ok(Ok(other)),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(Err(Refused {
                            code: error.as_ref().map(|(code, _)| *code),
                            close_code: frame.as_ref().map(|frame| frame.code.into()),
                            reason: frame
                                .map(|frame| frame.reason.to_string())
                                .or(error.map(|(_, detail)| detail))
                                .unwrap_or_default(),
                        }));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(transport)) => {
                        return Ok(Err(Refused {
                            code: error.as_ref().map(|(code, _)| *code),
                            close_code: None,
                            reason: error
                                .map(|(_, detail)| detail)
                                .unwrap_or_else(|| transport.to_string()),
                        }));
                    }
                    None => {
                        return Ok(Err(Refused {
                            code: error.as_ref().map(|(code, _)| *code),
                            close_code: None,
                            reason: error.map(|(_, detail)| detail).unwrap_or_default(),
                        }));
                    }
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, read)
            .await
            .context("the hub neither answered nor closed")?
    }

    /// Reads until an `Acks` (skipping changes and pongs).
    pub async fn next_acks(&mut self) -> anyhow::Result<Result<Vec<Ack>, Refused>> {
        loop {
            match self.next_message().await? {
                Ok(HubMessage::Acks(acks)) => return Ok(Ok(acks)),
                Ok(_) => continue,
                Err(refused) => return Ok(Err(refused)),
            }
        }
    }

    /// Subscribes to `set` from the beginning.
    pub async fn subscribe(&mut self, set: &str) -> anyhow::Result<()> {
        self.send(&ClientMessage::Subscribe(vec![SubscriptionRequest {
            set: DocSetId::new(set)?,
            cursor: 0,
        }]))
        .await
    }

    /// An op of this client's replica changing `doc` (key `key` set to 1),
    /// authored by `author`'s actor, continuing that actor's changes.
    pub fn op(&mut self, doc: &str, key: &str, author: ReplicaId) -> anyhow::Result<Op> {
        let local = self
            .docs
            .entry((doc.to_owned(), author))
            .or_insert_with(|| {
                let mut local = automerge::Automerge::new();
                local.set_actor(author.actor(1));
                local
            });
        let mut tx = local.transaction();
        tx.put(automerge::ROOT, key, 1)?;
        tx.commit();
        let bytes = local
            .get_last_local_change()
            .context("a change was just made")?
            .raw_bytes()
            .to_vec();
        self.op_with(doc, bytes)
    }

    /// An op of this client's replica carrying `bytes` as its change to `doc`.
    pub fn op_with(&mut self, doc: &str, bytes: Vec<u8>) -> anyhow::Result<Op> {
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Op {
            id: OpId {
                replica: self.replica,
                seq,
            },
            created_ms: omnisync_core::now_ms(),
            body: OpBody::Changes(vec![DocChange {
                doc: DocId::new(doc)?,
                bytes,
            }]),
        })
    }

    /// Pushes `ops` and returns the acks of the push.
    pub async fn push(&mut self, ops: Vec<Op>) -> anyhow::Result<Result<Vec<Ack>, Refused>> {
        self.send(&ClientMessage::Push(ops)).await?;
        self.next_acks().await
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// The underlying socket (for floods and silence).
    pub fn socket(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.socket
    }
}

/// An automerge change by `author` (epoch 1) setting `key` to `value`.
pub fn change_bytes(author: ReplicaId, key: &str, value: i64) -> anyhow::Result<Vec<u8>> {
    let mut doc = automerge::Automerge::new();
    doc.set_actor(author.actor(1));
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, key, value)?;
    tx.commit();
    Ok(doc
        .get_last_local_change()
        .context("a change was just made")?
        .raw_bytes()
        .to_vec())
}

/// The address part of a `ws://HOST:PORT/...` URL.
pub fn address_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .context("no scheme")?;
    Ok(rest.split('/').next().unwrap_or_default().parse()?)
}
