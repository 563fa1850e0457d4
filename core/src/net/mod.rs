//! The client runtime: the only tokio and WebSocket code in core.
//!
//! A [`Client`] owns a device's [`Store`] and, once started, one background
//! task that keeps a WebSocket to the hub: it connects, reconnects with
//! exponential backoff and jitter, uploads pending ops, records acks, applies
//! remote changes, and publishes a [`SyncStatus`] and [`Notice`]s. The
//! protocol decisions are made by the sans-I/O [`ClientSession`]; this module
//! only moves bytes and calls the store.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{Notify, broadcast, watch};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use crate::ids::{DocId, OpId};
use crate::protocol::client::{ClientEvent, ClientIdentity, ClientSession};
use crate::protocol::message::{self, Credentials};
use crate::store::{DocEdit, Durability, Store, StoreError};

/// First reconnect delay.
pub const BACKOFF_MIN_MS: u64 = 100;
/// Longest reconnect delay.
pub const BACKOFF_MAX_MS: u64 = 10_000;
/// Give up a connection attempt after this long.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How often the session's clock advances (keep-alive, silence detection).
pub const TICK_MS: u64 = 1_000;
/// Notices buffered for slow listeners before the oldest are dropped.
pub const NOTICE_QUEUE_MAX: usize = 1024;
/// Remote batches of at most this many changes are applied on the sync
/// task itself when the store is free (live fan-out is mostly one change).
pub const QUICK_APPLY_CHANGES_MAX: usize = 4;

/// How to reach the hub.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// `ws://host:port/v1/sync`.
    pub hub_url: String,
    /// Credentials for the handshake.
    pub credentials: Credentials,
    /// Client software name for the hub's logs.
    pub agent: String,
}

impl SyncConfig {
    /// A config for `hub_url` without credentials.
    pub fn new(hub_url: impl Into<String>) -> Self {
        Self {
            hub_url: hub_url.into(),
            credentials: Credentials::default(),
            agent: format!("omnisync-core/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The state of the link to the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Followed sets the hub does not let this device read.
    pub refused_sets: Vec<crate::ids::DocSetId>,
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
        /// Intents newly decided: the op, the hub's decision and the op's
        /// new status (`confirmed`, `refused`, `compensation`).
        decided: Vec<(OpId, crate::ledger::Decision, String)>,
    },
}

/// Why the runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

struct Inner {
    store: Mutex<Store>,
    config: SyncConfig,
    wake: Notify,
    notices: broadcast::Sender<Notice>,
    status: watch::Sender<SyncStatus>,
    online: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    subscriptions_changed: std::sync::atomic::AtomicBool,
}

/// A device's store plus its link to the hub. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Wraps a store. Nothing connects until [`Client::start`].
    pub fn new(mut store: Store, config: SyncConfig) -> Self {
        // The device's own hub records (escrow allowances) are always followed.
        if let Some(own) = crate::ids::DocSetId::device(store.store_id(), store.device())
            && let Err(error) = store.subscribe(&own)
        {
            tracing::warn!(%error, "could not follow the device's own records");
        }
        let (notices, _) = broadcast::channel(NOTICE_QUEUE_MAX);
        let inner = Inner {
            store: Mutex::new(store),
            config,
            wake: Notify::new(),
            notices,
            status: watch::channel(SyncStatus::default()).0,
            online: watch::channel(true).0,
            shutdown: watch::channel(false).0,
            task: Mutex::new(None),
            subscriptions_changed: std::sync::atomic::AtomicBool::new(false),
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

    /// Records an op durably (see [`Store::commit`]) and wakes the uploader.
    pub fn commit(&self, edits: &[DocEdit]) -> Result<OpId, StoreError> {
        self.commit_with(edits, Durability::Full)
    }

    /// Records an op with an explicit [`Durability`] and wakes the uploader.
    pub fn commit_with(
        &self,
        edits: &[DocEdit],
        durability: Durability,
    ) -> Result<OpId, StoreError> {
        self.write(|store| store.commit_with(edits, crate::now_ms(), durability))
    }

    /// Runs a write against the store (the typed retail API: `add_to_cart`,
    /// `checkout`, ...) and wakes the uploader for the ops it recorded.
    pub fn write<T, E>(&self, write: impl FnOnce(&mut Store) -> Result<T, E>) -> Result<T, E> {
        let result = {
            let mut store = self.store();
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

    /// Records a sale (see [`Store::checkout`]): online or offline as the
    /// link is now.
    pub fn checkout(
        &self,
        request: &crate::domain::orders::CheckoutRequest,
    ) -> Result<crate::domain::orders::CheckoutReceipt, crate::domain::DomainError> {
        let connectivity = if self.status().link == Link::Online {
            crate::domain::orders::Connectivity::Online
        } else {
            crate::domain::orders::Connectivity::Offline
        };
        self.write(|store| store.checkout(request, connectivity, crate::now_ms()))
    }

    /// Locks the store for reads (and for writes that need no upload wake-up).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (every write
        // is one transaction), so a poisoned lock is still safe to use.
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes the device to a document set (kept across restarts).
    pub fn subscribe(&self, set: &crate::ids::DocSetId) -> Result<(), StoreError> {
        self.store().subscribe(set)?;
        self.inner
            .subscriptions_changed
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.wake.notify_one();
        Ok(())
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
        let stats = self.store().sync_counts(crate::now_ms());
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
        let mut backoff_ms = BACKOFF_MIN_MS;
        while !*shutdown.borrow() {
            if !*online.borrow_and_update() {
                self.refresh_status(|status| status.link = Link::Offline);
                tokio::select! {
                    _ = online.changed() => continue,
                    _ = shutdown.changed() => break,
                }
            }
            self.refresh_status(|status| status.link = Link::Connecting);
            let mut was_ready = false;
            let reason = self
                .connect_and_sync(&mut was_ready, &mut shutdown, &mut online)
                .await;
            if *shutdown.borrow() {
                break;
            }
            tracing::debug!(device = %self.store().device(), %reason, "sync link down");
            self.refresh_status(|status| {
                status.link = Link::Offline;
                status.caught_up = false;
                status.last_error = Some(reason.clone());
            });
            if was_ready {
                backoff_ms = BACKOFF_MIN_MS;
            }
            // A refusal that retrying cannot fix (credentials, version): wait long.
            if ["unauthenticated", "unsupported-version", "forbidden"]
                .iter()
                .any(|code| reason.contains(&format!("({code})")))
            {
                backoff_ms = BACKOFF_MAX_MS;
            }
            let jitter = rand::rng().random_range(0..=backoff_ms / 2);
            let delay = Duration::from_millis(backoff_ms / 2 + jitter);
            backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => break,
                _ = online.changed() => {}
            }
        }
        self.refresh_status(|status| status.link = Link::Offline);
    }

    /// One connection's life; returns why it ended. Sets `was_ready` once
    /// the handshake completes, so backoff restarts from the minimum.
    async fn connect_and_sync(
        &self,
        was_ready: &mut bool,
        shutdown: &mut watch::Receiver<bool>,
        online: &mut watch::Receiver<bool>,
    ) -> String {
        match self.sync_once(was_ready, shutdown, online).await {
            Ok(never) => match never {},
            Err(reason) => reason,
        }
    }

    async fn sync_once(
        &self,
        was_ready: &mut bool,
        shutdown: &mut watch::Receiver<bool>,
        online: &mut watch::Receiver<bool>,
    ) -> Result<std::convert::Infallible, String> {
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(message::FRAME_BYTES_MAX);
        ws_config.max_frame_size = Some(message::FRAME_BYTES_MAX);
        let connect = tokio_tungstenite::connect_async_with_config(
            self.inner.config.hub_url.as_str(),
            Some(ws_config),
            true,
        );
        let connect = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect);
        let connected = tokio::select! {
            connected = connect => connected,
            _ = shutdown.changed() => return Err("shut down".to_owned()),
            _ = wait_offline(online) => return Err("switched offline".to_owned()),
        };
        let (mut socket, _) = connected
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|error| format!("connect: {error}"))?;
        let (identity, subscriptions, log_id) = {
            let store = self.store();
            let identity = ClientIdentity {
                device: store.device().clone(),
                store: store.store_id().clone(),
                replica: store.replica(),
                credentials: self.inner.config.credentials.clone(),
                agent: self.inner.config.agent.clone(),
            };
            let subscriptions = store.subscriptions().map_err(|error| error.to_string())?;
            let log_id = store.hub_log_id().map_err(|error| error.to_string())?;
            (identity, subscriptions, log_id)
        };
        let mut caught_up: std::collections::BTreeMap<_, bool> = subscriptions
            .iter()
            .map(|(set, _)| (set.clone(), false))
            .collect();
        let mut session = ClientSession::new(identity, subscriptions, log_id, crate::now_ms());
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
                            return Err(format!("hub closed the connection: {reason}"));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Err(format!("receive: {error}")),
                        None => return Err("connection closed".to_owned()),
                    };
                    session.handle_frame(&frame, crate::now_ms()).map_err(|error| error.to_string())?;
                }
                _ = self.inner.wake.notified() => {
                    if self.inner.subscriptions_changed.swap(false, std::sync::atomic::Ordering::AcqRel) {
                        let followed = self.store().subscriptions().map_err(|error| error.to_string())?;
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
                }
                _ = shutdown.changed() => {
                    let _ = socket.close(None).await;
                    return Err("shut down".to_owned());
                }
                _ = wait_offline(online) => {
                    let _ = socket.close(None).await;
                    return Err("switched offline".to_owned());
                }
            }
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::Ready(welcome) => {
                        *was_ready = true;
                        if let Err(error) = self
                            .store()
                            .observe_hub_time(welcome.hub_time_ms, crate::now_ms())
                        {
                            tracing::warn!(%error, "could not record the hub's clock");
                        }
                        tracing::debug!(hub = %welcome.hub_id, "sync session ready");
                        // A recall seen before a restart is answered now.
                        let released = self
                            .blocking(move |store| store.answer_recalls(crate::now_ms()))
                            .await?
                            .map_err(|error| format!("answering a recall: {error}"))?;
                        if !released.is_empty() {
                            self.inner.wake.notify_one();
                        }
                        let all_caught_up = caught_up.is_empty();
                        self.refresh_status(|status| {
                            status.link = Link::Online;
                            status.last_error = None;
                            status.caught_up = all_caught_up;
                        });
                    }
                    ClientEvent::Acks(acks) => {
                        let summary = self
                            .blocking(move |store| store.record_acks(&acks, crate::now_ms()))
                            .await?
                            .map_err(|error| format!("recording acks: {error}"))?;
                        let _ = self.inner.notices.send(Notice::Verdicts {
                            acknowledged: summary.acknowledged,
                            rejected: summary.rejected,
                            decided: summary
                                .decided
                                .into_iter()
                                .map(|(op, decision, status)| (op, decision, status.to_owned()))
                                .collect(),
                        });
                        self.refresh_status(|_| {});
                    }
                    ClientEvent::Changes(batch) => {
                        let (set, batch_caught_up) = (batch.set.clone(), batch.caught_up);
                        let small = batch.changes.len() <= QUICK_APPLY_CHANGES_MAX;
                        let apply = move |store: &mut Store| store.apply_remote(&batch, crate::now_ms());
                        let docs = if small {
                            self.quick(apply).await?
                        } else {
                            self.blocking(apply).await?
                        }
                            .map_err(|error| format!("applying remote changes: {error}"))?;
                        let recall_seen = docs
                            .iter()
                            .any(|doc| doc.as_str().contains("/rec/allowance/"));
                        if !docs.is_empty() {
                            let _ = self.inner.notices.send(Notice::RemoteChanges { docs });
                        }
                        if recall_seen {
                            // The hub may want allowance back: answer at once.
                            let released = self
                                .blocking(move |store| store.answer_recalls(crate::now_ms()))
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
                        return Err(format!(
                            "hub refused: {} ({})",
                            error.detail,
                            error.code.as_str()
                        ));
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
                    ClientEvent::HubLogChanged(log_id) => {
                        self.store()
                            .set_hub_log_id(&log_id)
                            .map_err(|error| error.to_string())?;
                    }
                }
            }
            if let Some((after_seq, room)) = session.wants_ops() {
                let ops = self
                    .blocking(move |store| store.pending_ops(after_seq, room))
                    .await?
                    .map_err(|error| error.to_string())?;
                session.handle_local_ops(ops);
            }
        }
    }

    /// Runs SQLite work on tokio's blocking pool, so a slow fsync or a large
    /// batch never stalls the runtime's workers (or an app's other tasks).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T, String> {
        let client = self.clone();
        tokio::task::spawn_blocking(move || work(&mut client.store()))
            .await
            .map_err(|error| format!("store task failed: {error}"))
    }

    /// [`Client::blocking`] for work known to be short (a few remote changes,
    /// a few acks): done right here when the store is free, which saves the
    /// hop to the blocking pool (most of the cost of a small live change on a
    /// busy device); on the pool when the app holds the store.
    async fn quick<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T, String> {
        {
            match self.inner.store.try_lock() {
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

async fn wait_offline(online: &mut watch::Receiver<bool>) {
    while *online.borrow_and_update() {
        if online.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
