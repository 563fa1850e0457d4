//! The client runtime: the only tokio and WebSocket code in core.
//!
//! A [`Client`] owns a device's [`Replica`] and, once started, one background
//! task that keeps a WebSocket to a hub: it connects (`wss://` verified
//! against the public roots or the store's own CA, see [`tls`]) to one of
//! the configured hub addresses, fails over to the next one when a
//! connection drops or an attempt fails, with exponential backoff and
//! jitter ([`hubs`]), uploads pending ops, records acks,
//! applies remote changes, and publishes a [`SyncStatus`] and [`Notice`]s.
//! It keeps the device token in the store and refreshes it three quarters
//! into its life ([`refresh`]). The protocol decisions are made by the
//! sans-I/O [`ClientSession`]; this module only moves bytes and calls the
//! store.

pub mod hubs;
pub mod refresh;
pub mod tls;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{Notify, broadcast, watch};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use crate::db::{DbError, DocEdit, Durability, Replica};
use crate::protocol::device_session::{ClientEvent, ClientIdentity, ClientSession};
use crate::protocol::message::{
    self, AckOutcome, Credentials, ErrorCode, ProtocolError, RejectCode,
};
use crate::vocab::ids::{DocId, OpId};

pub use hubs::{BACKOFF_MAX_MS, BACKOFF_MIN_MS, HubUrl, HubUrlError};

/// Give up a connection attempt (TCP, TLS, WebSocket upgrade) after this long
/// when the device knows a single hub address.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Give up a connection attempt after this long when the device knows
/// several addresses: an unreachable hub machine (no refusal, only silence)
/// must not hold the device back from the others for long.
pub const FAILOVER_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How often the session's clock advances (keep-alive, silence detection).
pub const TICK_MS: u64 = 1_000;
/// Notices buffered for slow listeners before the oldest are dropped.
pub const NOTICE_QUEUE_MAX: usize = 1024;
/// Remote batches of at most this many changes are applied on the sync
/// task itself when the store is free (live fan-out is mostly one change).
pub const QUICK_APPLY_CHANGES_MAX: usize = 4;
/// After a failed token refresh, wait this long before trying again.
pub const REFRESH_RETRY_MS: u64 = 30_000;

/// How to reach the hub.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The hub's addresses, `ws://host:port/v1/sync` or `wss://…`, tried in
    /// this order: the device starts with the first and fails over to the
    /// next when a connection drops or an attempt fails. A host name that
    /// resolves to several addresses stands for each of them. Checked by
    /// [`SyncConfig::hubs`]; [`SyncConfig::with_hubs`] checks when built.
    pub hub_urls: Vec<String>,
    /// Credentials for the handshake.
    pub credentials: Credentials,
    /// Client software name for the hub's logs.
    pub agent: String,
    /// For `wss://`: PEM certificates of the CA that signed the hub's
    /// certificate (a store running its own hub). `None` trusts the public
    /// web roots. With a CA given, only that CA is trusted.
    pub hub_ca_pem: Option<Vec<u8>>,
    /// Refresh the device token at the hub before it expires (on by default).
    pub refresh_tokens: bool,
}

impl SyncConfig {
    /// A config for one hub address without credentials. The address is
    /// checked when the client starts (a bad one shows in
    /// [`SyncStatus::last_error`]); [`SyncConfig::with_hubs`] checks at once.
    pub fn new(hub_url: impl Into<String>) -> Self {
        Self {
            hub_urls: vec![hub_url.into()],
            credentials: Credentials::default(),
            agent: format!("omnisync-core/{}", env!("CARGO_PKG_VERSION")),
            hub_ca_pem: None,
            refresh_tokens: true,
        }
    }

    /// A config for several hub addresses (tried in this order), without
    /// credentials; fails on an empty list, a malformed URL or a scheme other
    /// than `ws://` and `wss://`.
    pub fn with_hubs<S: AsRef<str>>(hub_urls: &[S]) -> Result<Self, HubUrlError> {
        let hubs = hubs::parse_hub_urls(hub_urls)?;
        let mut config = Self::new(String::new());
        config.hub_urls = hubs.iter().map(|hub| hub.as_str().to_owned()).collect();
        Ok(config)
    }

    /// The configured addresses, checked (repeats dropped, order kept).
    pub fn hubs(&self) -> Result<Vec<HubUrl>, HubUrlError> {
        hubs::parse_hub_urls(&self.hub_urls)
    }
}

/// The state of the link to the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
pub enum Link {
    /// Not connected (hub unreachable, or switched offline).
    #[default]
    Offline,
    /// Connecting or waiting for the handshake.
    Connecting,
    /// Handshake done; syncing.
    Online,
}

/// What an app shows about sync.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncStatus {
    /// Link state.
    pub link: Link,
    /// Ops not yet acknowledged by the hub.
    pub pending: u64,
    /// Age of the oldest pending op, ms.
    pub oldest_pending_age_ms: u64,
    /// Ops in the dead-letter lane.
    pub rejected: u64,
    /// Open compensation tasks (provisional sales the hub could not cover).
    pub compensations_open: u64,
    /// When the last acknowledgement arrived, ms since the epoch.
    pub last_ack_ms: Option<u64>,
    /// True when every subscription has reached the hub's head since connecting.
    pub caught_up: bool,
    /// The last connection error, if the link is down because of one.
    pub last_error: Option<String>,
    /// The typed code of the hub's refusal that ended the last connection,
    /// if it ended with one (what the reconnect backoff branches on).
    pub last_error_code: Option<ErrorCode>,
    /// Followed sets the hub does not let this device read.
    pub refused_sets: Vec<crate::vocab::ids::DocSetId>,
    /// The hub's last refusal of the whole session, typed (`Unauthenticated`
    /// for a bad, expired or revoked token, `Forbidden`, `LimitExceeded`, …);
    /// cleared by the next successful handshake.
    pub refusal: Option<ProtocolError>,
    /// The hub address of the session while the link is online: the URL,
    /// followed by the resolved socket address in parentheses when the URL
    /// names a host (`ws://hub.local:7878/v1/sync (10.0.0.5:7878)`).
    pub hub: Option<String>,
}

/// A coarse event for listeners (UI refresh, bindings).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A local op was committed.
    LocalCommit {
        /// The op.
        op: OpId,
        /// The documents it changed.
        docs: Vec<DocId>,
    },
    /// Remote changes were applied.
    RemoteChanges {
        /// The documents that changed.
        docs: Vec<DocId>,
    },
    /// Ops were acknowledged or rejected, and intents decided.
    Verdicts {
        /// Newly acknowledged.
        acknowledged: usize,
        /// Newly rejected (dead-letter lane).
        rejected: usize,
        /// Intents newly decided: the op, the hub's decision and what the op
        /// became.
        decided: Vec<(
            OpId,
            crate::vocab::intent::Decision,
            crate::db::DecidedState,
        )>,
        /// Each rejection of this batch with the hub's typed reason.
        rejections: Vec<Rejection>,
    },
    /// A session is up again after a connection that was up dropped (the
    /// hub restarted, or the device failed over to another hub).
    Reconnected {
        /// The hub address now connected (as in [`SyncStatus::hub`]).
        hub: String,
        /// From the moment the dropped connection was noticed to the moment
        /// the new session's hello was answered, ms.
        outage_ms: u64,
    },
}

/// One op the hub refused, with its typed reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The op.
    pub op: OpId,
    /// Why (`Forbidden`, `WrongAuthor`, `TooLarge`, …).
    pub code: RejectCode,
    /// The hub's explanation.
    pub detail: String,
}

/// Why a connection ended: a human reason and, when the hub refused the
/// session, its typed code.
#[derive(Clone, Debug, PartialEq)]
struct LinkDown {
    /// What happened, for logs and status screens.
    reason: String,
    /// The hub's refusal code, if the hub ended the session with one.
    code: Option<ErrorCode>,
}

/// True for a refusal of the whole session that reconnecting at once cannot
/// fix (credentials, protocol version, permissions, a rate limit): the
/// runtime waits the longest backoff before trying again.
fn retrying_cannot_fix(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated
            | ErrorCode::UnsupportedVersion
            | ErrorCode::Forbidden
            | ErrorCode::LimitExceeded
    )
}

impl From<String> for LinkDown {
    fn from(reason: String) -> Self {
        Self { reason, code: None }
    }
}

/// Why the runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The device database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

struct Inner {
    replica: Mutex<Replica>,
    config: SyncConfig,
    wake: Notify,
    notices: broadcast::Sender<Notice>,
    status: watch::Sender<SyncStatus>,
    online: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    subscriptions_changed: std::sync::atomic::AtomicBool,
    /// The credentials presented at the next connection.
    credentials: Mutex<Credentials>,
    /// Bumped whenever the credentials change.
    credentials_generation: std::sync::atomic::AtomicU64,
    /// When the last refresh failed (ms since the epoch), to space retries.
    refresh_failed_ms: std::sync::atomic::AtomicU64,
    /// True while a refresh is under way (one at a time).
    refreshing: std::sync::atomic::AtomicBool,
    /// The newest protocol version offered in the next `Hello`: lowered when
    /// a hub of an older release refuses a newer one.
    version_max: std::sync::atomic::AtomicU8,
    /// The URL of the hub the last session was with (token refreshes go
    /// there); `None` before the first session.
    last_url: Mutex<Option<String>>,
}

/// What the sync task remembers from one connection to the next.
#[derive(Debug, Default)]
struct LinkHistory {
    /// The address of the last session that was up.
    connected_to: Option<String>,
    /// When a session that was up dropped, until the next one is up.
    down_since: Option<std::time::Instant>,
}

/// A device's store plus its link to the hub. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Wraps a store. Nothing connects until [`Client::start`].
    ///
    /// The token to present is the newer of the configured one and the one
    /// the device database kept from an earlier run (a refresh writes it there); a
    /// newer configured token replaces the stored one.
    pub fn new(mut replica: Replica, config: SyncConfig) -> Self {
        // The device's own hub records (escrow allowances) are always followed.
        if let Some(own) = crate::vocab::ids::DocSetId::device(replica.store_id(), replica.device())
            && let Err(error) = replica.subscribe(&own)
        {
            tracing::warn!(%error, "could not follow the device's own records");
        }
        let (notices, _) = broadcast::channel(NOTICE_QUEUE_MAX);
        let credentials = Credentials {
            token: choose_token(&mut replica, config.credentials.token.clone()),
        };
        let inner = Inner {
            replica: Mutex::new(replica),
            config,
            wake: Notify::new(),
            notices,
            status: watch::channel(SyncStatus::default()).0,
            online: watch::channel(true).0,
            shutdown: watch::channel(false).0,
            task: Mutex::new(None),
            subscriptions_changed: std::sync::atomic::AtomicBool::new(false),
            credentials: Mutex::new(credentials),
            credentials_generation: std::sync::atomic::AtomicU64::new(0),
            refresh_failed_ms: std::sync::atomic::AtomicU64::new(0),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            version_max: std::sync::atomic::AtomicU8::new(
                crate::protocol::message::PROTOCOL_VERSION,
            ),
            last_url: Mutex::new(None),
        };
        let client = Self {
            inner: Arc::new(inner),
        };
        client.refresh_status(|_| {});
        client
    }

    /// Spawns the sync task on the current tokio runtime (once; later calls
    /// do nothing).
    pub fn start(&self) {
        let mut task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if task.is_none() {
            let client = self.clone();
            *task = Some(tokio::spawn(async move { client.run().await }));
        }
    }

    /// Asks the sync task to close its connection and stop; returns at once.
    /// The store stays usable.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Stops the sync task and waits until it has closed its connection.
    pub async fn stop(&self) {
        self.shutdown();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Records an op durably (see [`Replica::commit`]) and wakes the uploader.
    pub fn commit(&self, edits: &[DocEdit]) -> Result<OpId, DbError> {
        self.commit_with(edits, Durability::Full)
    }

    /// Records an op with an explicit [`Durability`] and wakes the uploader.
    pub fn commit_with(&self, edits: &[DocEdit], durability: Durability) -> Result<OpId, DbError> {
        self.write(|replica| replica.commit_with(edits, crate::now_ms(), durability))
    }

    /// Runs a write against the store (the typed retail API: `add_to_cart`,
    /// `checkout`, ...) and wakes the uploader for the ops it recorded.
    pub fn write<T, E>(&self, write: impl FnOnce(&mut Replica) -> Result<T, E>) -> Result<T, E> {
        let result = {
            let mut store = self.replica();
            let before = store.last_seq().unwrap_or(0);
            let result = write(&mut store);
            let after = store.last_seq().unwrap_or(0);
            if after > before {
                for (op, docs) in store.ops_after(before).unwrap_or_default() {
                    let _ = self.inner.notices.send(Notice::LocalCommit { op, docs });
                }
            }
            result
        };
        self.inner.wake.notify_one();
        self.refresh_status(|_| {});
        result
    }

    /// Records a sale (see [`Replica::checkout`]): online or offline as the
    /// link is now.
    pub fn checkout(
        &self,
        request: &crate::retail::orders::CheckoutRequest,
    ) -> Result<crate::retail::orders::CheckoutReceipt, crate::retail::RetailError> {
        let connectivity = if self.status().link == Link::Online {
            crate::retail::orders::Connectivity::Online
        } else {
            crate::retail::orders::Connectivity::Offline
        };
        self.write(|replica| replica.checkout(request, connectivity, crate::now_ms()))
    }

    /// Locks the device database for reads (and for writes that need no upload wake-up).
    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock leaves SQLite consistent (every write
        // is one transaction), so a poisoned lock is still safe to use.
        self.inner
            .replica
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes the device to a document set (kept across restarts).
    pub fn subscribe(&self, set: &crate::vocab::ids::DocSetId) -> Result<(), DbError> {
        self.replica().subscribe(set)?;
        self.inner
            .subscriptions_changed
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The credentials the next connection presents.
    pub fn credentials(&self) -> Credentials {
        lock(&self.inner.credentials).clone()
    }

    /// Replaces the device's credentials (a re-enrolment): stored in the
    /// database, presented from the next connection on.
    pub fn set_credentials(&self, credentials: Credentials) -> Result<(), DbError> {
        if let Some(token) = &credentials.token {
            self.replica().store_token(token)?;
        } else {
            self.replica().clear_token()?;
        }
        *lock(&self.inner.credentials) = credentials;
        self.inner
            .credentials_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Refreshes the device token at the hub now, whatever its age; on
    /// success the new token is stored and used from the next connection.
    pub async fn refresh_credentials(&self) -> Result<(), refresh::RefreshError> {
        let token = self
            .credentials()
            .token
            .ok_or_else(|| refresh::RefreshError::Transport("no token to refresh".into()))?;
        let hub = self.refresh_hub()?;
        let tls = self
            .tls_config(&hub)
            .map_err(refresh::RefreshError::Transport)?;
        let fresh = refresh::refresh_token(hub.as_str(), &token, tls).await?;
        let stored = fresh.clone();
        self.blocking(move |replica| replica.store_token(&stored))
            .await
            .map_err(refresh::RefreshError::Transport)?
            .map_err(|error| refresh::RefreshError::Transport(error.to_string()))?;
        *lock(&self.inner.credentials) = Credentials { token: Some(fresh) };
        self.inner
            .credentials_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tracing::info!(device = %self.replica().device(), "device token refreshed");
        Ok(())
    }

    /// Refreshes the token if it is due and no refresh failed recently.
    async fn refresh_if_due(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.inner.config.refresh_tokens {
            return;
        }
        let Some(due_s) = self
            .credentials()
            .token
            .as_deref()
            .and_then(refresh::refresh_due_s)
        else {
            return;
        };
        let now_ms = crate::now_ms();
        let failed_ms = self.inner.refresh_failed_ms.load(Relaxed);
        if now_ms / 1000 < due_s
            || now_ms.saturating_sub(failed_ms) < REFRESH_RETRY_MS
            || self
                .inner
                .refreshing
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        if let Err(error) = self.refresh_credentials().await {
            self.inner.refresh_failed_ms.store(now_ms, Relaxed);
            tracing::warn!(%error, "device token refresh failed");
        }
        self.inner
            .refreshing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The hub a token refresh goes to: the one of the last session, else
    /// the first configured.
    fn refresh_hub(&self) -> Result<HubUrl, refresh::RefreshError> {
        let last = lock(&self.inner.last_url).clone();
        let url = match last {
            Some(url) => url,
            None => self
                .inner
                .config
                .hub_urls
                .first()
                .cloned()
                .unwrap_or_default(),
        };
        HubUrl::parse(&url).map_err(|error| refresh::RefreshError::Transport(error.to_string()))
    }

    /// The TLS configuration for a `wss://` hub, `None` for `ws://`.
    fn tls_config(&self, hub: &HubUrl) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        if !hub.is_secure() {
            return Ok(None);
        }
        tls::client_config(self.inner.config.hub_ca_pem.as_deref()).map(Some)
    }

    /// The current sync status.
    pub fn status(&self) -> SyncStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    /// A receiver of coarse notices.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// Switches the link on or off (airplane mode for demos and tests).
    pub fn set_online(&self, online: bool) {
        self.inner.online.send_replace(online);
    }

    /// Waits until `condition` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &'static str,
        condition: impl Fn(&SyncStatus) -> bool,
    ) -> Result<SyncStatus, ClientError> {
        let mut receiver = self.watch_status();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let status = receiver.borrow_and_update().clone();
                if condition(&status) {
                    return status;
                }
                if receiver.changed().await.is_err() {
                    return status;
                }
            }
        })
        .await;
        waited.map_err(|_| ClientError::Timeout(timeout, what))
    }

    /// Waits until online, nothing is pending and every subscription caught up.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<SyncStatus, ClientError> {
        self.wait_for(timeout, "sync", |status| {
            status.link == Link::Online && status.pending == 0 && status.caught_up
        })
        .await
    }

    fn refresh_status(&self, change: impl FnOnce(&mut SyncStatus)) {
        let stats = self.replica().sync_counts(crate::now_ms());
        self.inner.status.send_modify(|status| {
            change(status);
            if let Ok(stats) = stats {
                status.pending = stats.pending;
                status.oldest_pending_age_ms = stats.oldest_pending_age_ms;
                status.rejected = stats.rejected;
                status.compensations_open = stats.compensations_open;
                status.last_ack_ms = stats.last_ack_ms;
            }
        });
    }

    async fn run(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut online = self.inner.online.subscribe();
        let hubs = match self.inner.config.hubs() {
            Ok(hubs) => hubs,
            Err(error) => {
                // A configuration error: nothing to retry until the app
                // configures the client again.
                tracing::error!(%error, "sync not started: bad hub address");
                self.refresh_status(|status| {
                    status.link = Link::Offline;
                    status.last_error = Some(error.to_string());
                });
                let _ = shutdown.wait_for(|stop| *stop).await;
                return;
            }
        };
        let mut ring: Vec<hubs::Endpoint> = Vec::new();
        let mut rotation = hubs::Rotation::new();
        let mut history = LinkHistory::default();
        while !*shutdown.borrow() {
            if !*online.borrow_and_update() {
                self.refresh_status(|status| status.link = Link::Offline);
                tokio::select! {
                    _ = online.changed() => continue,
                    _ = shutdown.changed() => break,
                }
            }
            self.refresh_status(|status| status.link = Link::Connecting);
            self.refresh_if_due().await;
            let generation = self
                .inner
                .credentials_generation
                .load(std::sync::atomic::Ordering::Acquire);
            let offered = self
                .inner
                .version_max
                .load(std::sync::atomic::Ordering::Relaxed);
            // Names are resolved again at the start of every round.
            let mut unresolved = None;
            if ring.is_empty() || rotation.position() == 0 {
                ring = match resolve(&hubs).await {
                    Ok(resolved) => resolved,
                    Err(error) => {
                        unresolved = Some(error);
                        Vec::new()
                    }
                };
            }
            let mut was_ready = false;
            let reason = match ring.get(rotation.position()) {
                Some(endpoint) => {
                    let attempt = Attempt {
                        endpoint,
                        connect_timeout_ms: if ring.len() > 1 {
                            FAILOVER_CONNECT_TIMEOUT_MS
                        } else {
                            CONNECT_TIMEOUT_MS
                        },
                    };
                    self.connect_and_sync(
                        &attempt,
                        &mut was_ready,
                        &mut history,
                        &mut shutdown,
                        &mut online,
                    )
                    .await
                }
                None => LinkDown::from(
                    unresolved.unwrap_or_else(|| "no hub address to connect to".to_owned()),
                ),
            };
            if *shutdown.borrow() {
                break;
            }
            // Switching offline is no outage: nothing to time.
            let deliberate = !*online.borrow();
            if deliberate {
                history.down_since = None;
            } else if was_ready {
                history.down_since = Some(std::time::Instant::now());
            }
            tracing::debug!(device = %self.replica().device(), reason = %reason.reason, "sync link down");
            self.refresh_status(|status| {
                status.link = Link::Offline;
                status.caught_up = false;
                status.last_error = Some(reason.reason.clone());
                status.last_error_code = reason.code;
                status.hub = None;
            });
            // New credentials or an older hub's version refusal: retry the
            // same hub at once. A refusal that retrying cannot fix
            // (credentials, version, a rate limit): wait long.
            let credentials_changed = generation
                != self
                    .inner
                    .credentials_generation
                    .load(std::sync::atomic::Ordering::Acquire);
            let version_lowered = self
                .inner
                .version_max
                .load(std::sync::atomic::Ordering::Relaxed)
                < offered;
            let end = if credentials_changed || version_lowered || deliberate {
                hubs::AttemptEnd::RetryNow
            } else if reason.code.is_some_and(retrying_cannot_fix) {
                hubs::AttemptEnd::Refused
            } else if was_ready {
                hubs::AttemptEnd::Lost
            } else {
                hubs::AttemptEnd::Failed
            };
            let retry = rotation.next(ring.len(), end, |max| rand::rng().random_range(0..=max));
            if ring.len() > 1
                && let Some(next) = ring.get(retry.position)
            {
                tracing::debug!(next = %next, delay_ms = retry.delay_ms, "next hub to try");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(retry.delay_ms)) => {}
                _ = shutdown.changed() => break,
                _ = online.changed() => {}
            }
        }
        self.refresh_status(|status| {
            status.link = Link::Offline;
            status.hub = None;
        });
    }

    /// One connection's life; returns why it ended. Sets `was_ready` once
    /// the handshake completes, so the schedule knows a session was up.
    async fn connect_and_sync(
        &self,
        attempt: &Attempt<'_>,
        was_ready: &mut bool,
        history: &mut LinkHistory,
        shutdown: &mut watch::Receiver<bool>,
        online: &mut watch::Receiver<bool>,
    ) -> LinkDown {
        match self
            .sync_once(attempt, was_ready, history, shutdown, online)
            .await
        {
            Ok(never) => match never {},
            Err(reason) => reason,
        }
    }

    /// Notes a session that is up: a switch to another hub is logged, and a
    /// reconnection after a drop is announced with how long the device was
    /// without a session. Returns the hub's name for the status.
    fn session_up(&self, endpoint: &hubs::Endpoint, history: &mut LinkHistory) -> String {
        let hub = endpoint.to_string();
        *lock(&self.inner.last_url) = Some(endpoint.hub.as_str().to_owned());
        match history.connected_to.replace(hub.clone()) {
            Some(previous) if previous != hub => {
                tracing::info!(device = %self.replica().device(), from = %previous, to = %hub, "switched to another hub");
            }
            Some(_) => tracing::debug!(hub = %hub, "reconnected to the same hub"),
            None => tracing::debug!(hub = %hub, "connected to the hub"),
        }
        if let Some(since) = history.down_since.take() {
            let outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            let _ = self.inner.notices.send(Notice::Reconnected {
                hub: hub.clone(),
                outage_ms,
            });
        }
        hub
    }

    async fn sync_once(
        &self,
        attempt: &Attempt<'_>,
        was_ready: &mut bool,
        history: &mut LinkHistory,
        shutdown: &mut watch::Receiver<bool>,
        online: &mut watch::Receiver<bool>,
    ) -> Result<std::convert::Infallible, LinkDown> {
        let endpoint = attempt.endpoint;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(message::FRAME_BYTES_MAX);
        ws_config.max_frame_size = Some(message::FRAME_BYTES_MAX);
        let connector = match self.tls_config(&endpoint.hub)? {
            Some(config) => tokio_tungstenite::Connector::Rustls(config),
            None => tokio_tungstenite::Connector::Plain,
        };
        // TCP to the resolved address; TLS (SNI) and the upgrade's `Host`
        // header use the URL's host name.
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(endpoint.addr)
                .await
                .map_err(|error| format!("connect to {endpoint}: {error}"))?;
            let _ = tcp.set_nodelay(true);
            tokio_tungstenite::client_async_tls_with_config(
                endpoint.hub.as_str(),
                tcp,
                Some(ws_config),
                Some(connector),
            )
            .await
            .map_err(|error| format!("connect to {endpoint}: {error}"))
        };
        let connect =
            tokio::time::timeout(Duration::from_millis(attempt.connect_timeout_ms), connect);
        let connected = tokio::select! {
            connected = connect => connected,
            _ = shutdown.changed() => return Err(LinkDown::from("shut down".to_owned())),
            _ = wait_offline(online) => return Err(LinkDown::from("switched offline".to_owned())),
        };
        let (mut socket, _) =
            connected.map_err(|_| format!("connect to {endpoint} timed out"))??;
        let (identity, subscriptions, log_id) = {
            let store = self.replica();
            let identity = ClientIdentity {
                device: store.device().clone(),
                store: store.store_id().clone(),
                replica: store.replica(),
                credentials: self.credentials(),
                agent: self.inner.config.agent.clone(),
            };
            let subscriptions = store.subscriptions().map_err(|error| error.to_string())?;
            let log_id = store.hub_log_id().map_err(|error| error.to_string())?;
            (identity, subscriptions, log_id)
        };
        let probe = self.restore_probe()?;
        let mut caught_up: std::collections::BTreeMap<_, bool> = subscriptions
            .iter()
            .map(|(set, _)| (set.clone(), false))
            .collect();
        let versions = crate::protocol::message::VersionRange {
            min: crate::protocol::message::PROTOCOL_VERSION_MIN,
            max: self
                .inner
                .version_max
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let mut session = ClientSession::probing(
            identity,
            subscriptions,
            log_id,
            crate::now_ms(),
            versions,
            probe,
        );
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        loop {
            while let Some(frame) = session.poll_transmit() {
                socket
                    .feed(Message::Binary(frame.into()))
                    .await
                    .map_err(|error| format!("send: {error}"))?;
            }
            socket
                .flush()
                .await
                .map_err(|error| format!("send: {error}"))?;
            tokio::select! {
                incoming = socket.next() => {
                    let frame = match incoming {
                        Some(Ok(Message::Binary(frame))) => frame,
                        Some(Ok(Message::Close(close))) => {
                            let reason = close.map(|close| close.reason.to_string()).unwrap_or_default();
                            return Err(LinkDown::from(format!("hub closed the connection: {reason}")));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Err(LinkDown::from(format!("receive: {error}"))),
                        None => return Err(LinkDown::from("connection closed".to_owned())),
                    };
                    session.handle_frame(&frame, crate::now_ms()).map_err(|error| error.to_string())?;
                }
                _ = self.inner.wake.notified() => {
                    if self.inner.subscriptions_changed.swap(false, std::sync::atomic::Ordering::AcqRel) {
                        let followed = self.replica().subscriptions().map_err(|error| error.to_string())?;
                        for (set, cursor) in followed {
                            if !caught_up.contains_key(&set) {
                                caught_up.insert(set.clone(), false);
                                self.refresh_status(|status| status.caught_up = false);
                            }
                            session.subscribe(set, cursor);
                        }
                    }
                }
                _ = tick.tick() => {
                    session.handle_tick(crate::now_ms()).map_err(|error| error.to_string())?;
                    self.refresh_status(|_| {});
                    // Refresh in the background; the next connection uses it.
                    if self.token_refresh_due() {
                        let client = self.clone();
                        tokio::spawn(async move { client.refresh_if_due().await });
                    }
                }
                _ = shutdown.changed() => {
                    let _ = socket.close(None).await;
                    return Err(LinkDown::from("shut down".to_owned()));
                }
                _ = wait_offline(online) => {
                    let _ = socket.close(None).await;
                    return Err(LinkDown::from("switched offline".to_owned()));
                }
            }
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::Ready(welcome) => {
                        *was_ready = true;
                        if let Err(error) = self
                            .replica()
                            .observe_hub_time(welcome.hub_time_ms, crate::now_ms())
                        {
                            tracing::warn!(%error, "could not record the hub's clock");
                        }
                        tracing::debug!(hub = %welcome.hub_id, "sync session ready");
                        // A recall seen before a restart is answered now.
                        let released = self
                            .blocking(move |replica| replica.answer_recalls(crate::now_ms()))
                            .await?
                            .map_err(|error| format!("answering a recall: {error}"))?;
                        if !released.is_empty() {
                            self.inner.wake.notify_one();
                        }
                        let all_caught_up = caught_up.is_empty();
                        let hub = self.session_up(endpoint, history);
                        self.refresh_status(|status| {
                            status.hub = Some(hub);
                            status.link = Link::Online;
                            status.last_error = None;
                            status.refusal = None;
                            status.caught_up = all_caught_up;
                        });
                    }
                    ClientEvent::Acks(acks) => {
                        let rejections: Vec<Rejection> = acks
                            .iter()
                            .filter_map(|ack| match &ack.outcome {
                                AckOutcome::Rejected { code, detail } => Some(Rejection {
                                    op: ack.op,
                                    code: *code,
                                    detail: detail.clone(),
                                }),
                                _ => None,
                            })
                            .collect();
                        for rejection in &rejections {
                            tracing::warn!(op = %rejection.op, code = ?rejection.code, detail = %rejection.detail, "the hub rejected an op");
                        }
                        let summary = self
                            .blocking(move |replica| replica.record_acks(&acks, crate::now_ms()))
                            .await?
                            .map_err(|error| format!("recording acks: {error}"))?;
                        let _ = self.inner.notices.send(Notice::Verdicts {
                            acknowledged: summary.acknowledged,
                            rejected: summary.rejected,
                            decided: summary.decided,
                            rejections,
                        });
                        self.refresh_status(|_| {});
                    }
                    ClientEvent::Changes(batch) => {
                        let (set, batch_caught_up) = (batch.set.clone(), batch.caught_up);
                        let small = batch.changes.len() <= QUICK_APPLY_CHANGES_MAX;
                        let apply = move |replica: &mut Replica| {
                            replica.apply_remote(&batch, crate::now_ms())
                        };
                        let docs = if small {
                            self.quick(apply).await?
                        } else {
                            self.blocking(apply).await?
                        }
                        .map_err(|error| format!("applying remote changes: {error}"))?;
                        let recall_seen = docs.iter().any(|doc| {
                            crate::vocab::layout::record_kind(doc)
                                == Some(crate::vocab::layout::RecordKind::Allowance)
                        });
                        if !docs.is_empty() {
                            let _ = self.inner.notices.send(Notice::RemoteChanges { docs });
                        }
                        if recall_seen {
                            // The hub may want allowance back: answer at once.
                            let released = self
                                .blocking(move |replica| replica.answer_recalls(crate::now_ms()))
                                .await?
                                .map_err(|error| format!("answering a recall: {error}"))?;
                            if !released.is_empty() {
                                self.inner.wake.notify_one();
                            }
                        }
                        if batch_caught_up && caught_up.insert(set, true) != Some(true) {
                            // Remote changes leave the op log alone: no need
                            // to recount it, only the caught-up flag moves.
                            let all = caught_up.values().all(|done| *done);
                            self.inner.status.send_if_modified(|status| {
                                let changed = status.caught_up != all;
                                status.caught_up = all;
                                changed
                            });
                        }
                    }
                    ClientEvent::Failed(error) => {
                        if let Some(version) = session.fallback_version() {
                            // A hub of an older release: offer only what it
                            // speaks on the next connection.
                            self.inner
                                .version_max
                                .store(version, std::sync::atomic::Ordering::Relaxed);
                        }
                        let refusal = error.clone();
                        self.refresh_status(|status| status.refusal = Some(refusal));
                        return Err(LinkDown {
                            reason: format!(
                                "hub refused: {} ({})",
                                error.detail,
                                error.code.as_str()
                            ),
                            code: Some(error.code),
                        });
                    }
                    ClientEvent::SubscriptionsRefused(sets) => {
                        tracing::warn!(
                            ?sets,
                            "the hub does not let this device read these sets; not following them"
                        );
                        for set in &sets {
                            caught_up.remove(set);
                        }
                        let all = caught_up.values().all(|done| *done);
                        self.refresh_status(|status| {
                            status.caught_up = all;
                            status.refused_sets = sets;
                        });
                    }
                    ClientEvent::HubBehind(behind) => self.answer_restored_hub(behind).await?,
                    ClientEvent::HubLogChanged(log_id) => {
                        self.replica()
                            .set_hub_log_id(&log_id)
                            .map_err(|error| error.to_string())?;
                    }
                }
            }
            if let Some((after_seq, room)) = session.wants_ops() {
                let ops = self
                    .blocking(move |replica| replica.pending_ops(after_seq, room))
                    .await?
                    .map_err(|error| error.to_string())?;
                session.handle_local_ops(ops);
            }
        }
    }

    /// The answered ops this connect probes the hub with (see
    /// `Hello::probe`).
    fn restore_probe(&self) -> Result<Vec<crate::protocol::message::ProbedOp>, LinkDown> {
        self.replica()
            .restore_probe()
            .map_err(|error| LinkDown::from(format!("reading the probe: {error}")))
    }

    /// The hub lacks ops this device saw acknowledged: it was restored from
    /// an older backup. Lowers the stored cursors and queues the ops it may
    /// lack for upload again, before this connection reads ops to push.
    async fn answer_restored_hub(
        &self,
        behind: crate::protocol::device_session::HubBehind,
    ) -> Result<(), LinkDown> {
        let flagged = self
            .blocking(move |replica| replica.requeue_for_restored_hub(&behind))
            .await?
            .map_err(|error| format!("answering a restored hub: {error}"))?;
        tracing::warn!(
            ops = flagged,
            unknown_probed = behind.unknown,
            known_through = behind.known_through,
            "hub is behind this device's acknowledgements: re-uploading {flagged} ops"
        );
        self.refresh_status(|_| {});
        Ok(())
    }

    /// Runs SQLite work on tokio's blocking pool, so a slow fsync or a large
    /// batch never stalls the runtime's workers (or an app's other tasks).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> Result<T, String> {
        let client = self.clone();
        tokio::task::spawn_blocking(move || work(&mut client.replica()))
            .await
            .map_err(|error| format!("store task failed: {error}"))
    }

    /// [`Client::blocking`] for work known to be short (a few remote changes,
    /// a few acks): done right here when the store is free, which saves the
    /// hop to the blocking pool (most of the cost of a small live change on a
    /// busy device); on the pool when the app holds the store.
    async fn quick<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> Result<T, String> {
        {
            match self.inner.replica.try_lock() {
                Ok(mut store) => return Ok(work(&mut store)),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    return Ok(work(&mut poisoned.into_inner()));
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.blocking(work).await
    }
}

impl Client {
    fn token_refresh_due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now_ms = crate::now_ms();
        self.inner.config.refresh_tokens
            && !self.inner.refreshing.load(Relaxed)
            && now_ms.saturating_sub(self.inner.refresh_failed_ms.load(Relaxed)) >= REFRESH_RETRY_MS
            && self
                .credentials()
                .token
                .as_deref()
                .and_then(refresh::refresh_due_s)
                .is_some_and(|due_s| now_ms / 1000 >= due_s)
    }
}

/// The token to present: the newer (later `exp`) of the configured and the
/// stored one; a configured token that wins is stored.
fn choose_token(replica: &mut Replica, configured: Option<String>) -> Option<String> {
    let stored = match replica.stored_token() {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%error, "could not read the stored device token");
            None
        }
    };
    let configured = configured.filter(|token| !token.is_empty());
    let expiry = |token: &str| refresh::token_times(token).map(|(_, exp)| exp);
    match (configured, stored) {
        (Some(configured), Some(stored))
            if expiry(&stored).is_some_and(|stored_exp| {
                expiry(&configured).is_none_or(|configured_exp| stored_exp > configured_exp)
            }) =>
        {
            Some(stored)
        }
        (Some(configured), stored) => {
            if stored.as_deref() != Some(configured.as_str())
                && let Err(error) = replica.store_token(&configured)
            {
                tracing::warn!(%error, "could not store the device token");
            }
            Some(configured)
        }
        (None, stored) => stored,
    }
}

/// One connection attempt: where to, and how long the connect may take.
struct Attempt<'a> {
    endpoint: &'a hubs::Endpoint,
    connect_timeout_ms: u64,
}

/// Longest wait for one host name's addresses.
pub const RESOLVE_TIMEOUT_MS: u64 = 2_000;

/// The ring of addresses to try: every configured URL's resolved addresses,
/// in the configured order (a name's addresses in the resolver's order).
/// Fails only if no URL resolved; names that failed are logged.
async fn resolve(hubs: &[HubUrl]) -> Result<Vec<hubs::Endpoint>, String> {
    let mut ring: Vec<hubs::Endpoint> = Vec::new();
    let mut errors = Vec::new();
    for hub in hubs {
        let lookup = tokio::net::lookup_host((hub.host(), hub.port()));
        match tokio::time::timeout(Duration::from_millis(RESOLVE_TIMEOUT_MS), lookup).await {
            Ok(Ok(addrs)) => {
                for addr in addrs {
                    let endpoint = hubs::Endpoint {
                        hub: hub.clone(),
                        addr,
                    };
                    if !ring.contains(&endpoint) {
                        ring.push(endpoint);
                    }
                }
            }
            Ok(Err(error)) => errors.push(format!("resolving {}: {error}", hub.host())),
            Err(_) => errors.push(format!(
                "resolving {}: no answer within {RESOLVE_TIMEOUT_MS} ms",
                hub.host()
            )),
        }
    }
    if ring.is_empty() {
        return Err(if errors.is_empty() {
            "no hub address resolved".to_owned()
        } else {
            errors.join("; ")
        });
    }
    for error in &errors {
        tracing::debug!(%error, "a hub address did not resolve; trying the others");
    }
    Ok(ring)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here replaces a value whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn wait_offline(online: &mut watch::Receiver<bool>) {
    while *online.borrow_and_update() {
        if online.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_branches_on_the_typed_refusal_not_its_text() {
        for code in [
            ErrorCode::Unauthenticated,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Forbidden,
            ErrorCode::LimitExceeded,
        ] {
            assert!(retrying_cannot_fix(code), "{code:?}");
        }
        for code in [
            ErrorCode::ShuttingDown,
            ErrorCode::Timeout,
            ErrorCode::Internal,
            ErrorCode::Malformed,
        ] {
            assert!(!retrying_cannot_fix(code), "{code:?}");
        }
        // A transport failure whose text merely mentions a code is no refusal.
        let down = LinkDown::from("receive: proxy said (unauthenticated)".to_owned());
        assert_eq!(down.code, None);
    }

    fn replica(dir: &tempfile::TempDir) -> Replica {
        Replica::open(
            &dir.path().join("till.db"),
            crate::DeviceId::new("till-1").unwrap(),
            crate::StoreId::new("s1").unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_bad_hub_address_is_reported_and_never_dialled() {
        assert!(matches!(
            SyncConfig::with_hubs::<&str>(&[]),
            Err(HubUrlError::Empty)
        ));
        assert!(SyncConfig::with_hubs(&["ws://127.0.0.1:9/v1/sync", "tcp://x"]).is_err());
        let config =
            SyncConfig::with_hubs(&["ws://127.0.0.1:9/v1/sync", "ws://127.0.0.1:9/v1/sync"]);
        assert_eq!(config.unwrap().hub_urls.len(), 1, "repeats are dropped");

        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(replica(&dir), SyncConfig::new("http://127.0.0.1:9/v1/sync"));
        client.start();
        let status = client
            .wait_for(
                Duration::from_secs(5),
                "the configuration error",
                |status| status.last_error.is_some(),
            )
            .await
            .unwrap();
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("ws:// or wss://"), "{error}");
        assert_eq!((status.link, status.hub), (Link::Offline, None));
        tokio::time::timeout(Duration::from_secs(5), client.stop())
            .await
            .expect("the sync task stops");
    }

    #[tokio::test]
    async fn names_resolve_to_endpoints_that_keep_the_name() {
        let hubs = hubs::parse_hub_urls(&["ws://localhost:7/v1/sync", "ws://127.0.0.2:8/v1/sync"])
            .unwrap();
        let ring = resolve(&hubs).await.unwrap();
        let (named, literal): (Vec<_>, Vec<_>) = ring
            .iter()
            .partition(|endpoint| endpoint.hub.host() == "localhost");
        assert!(!named.is_empty());
        assert!(
            named
                .iter()
                .all(|endpoint| endpoint.addr.port() == 7 && endpoint.addr.ip().is_loopback())
        );
        assert_eq!(literal.len(), 1);
        assert_eq!(literal[0].addr, "127.0.0.2:8".parse().unwrap());
        // The configured order is kept: the name's addresses come first.
        assert_eq!(
            ring.last().map(|endpoint| endpoint.hub.host()),
            Some("127.0.0.2")
        );
        let unknown = hubs::parse_hub_urls(&["ws://no-such-hub.invalid:7/v1/sync"]).unwrap();
        let error = resolve(&unknown).await.unwrap_err();
        assert!(error.contains("no-such-hub.invalid"), "{error}");
    }
}
