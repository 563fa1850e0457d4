//! omnisync-hub: the regional hub. An axum/tokio shell around the sans-I/O
//! hub protocol of `omnisync-core`, with a group-committing SQLite log, live
//! fan-out, health, metrics and an admin read endpoint.
//!
//! Embed it with [`Hub::start`] (the demo and the tests do), or run the
//! `omnisync-hub` binary.

pub mod audit;
pub mod auth;
pub mod changes;
pub mod committer;
pub mod connection;
pub mod devices;
pub mod http;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod storage;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use omnisync_hub_engine::hub_session::CommittedChanges;
use omnisync_hub_engine::log::{HubLogError, HubLogRead};
use tokio::sync::{broadcast, watch};

use crate::auth::{AuthConfig, Authenticator};
use crate::committer::Committer;
use crate::devices::DeviceRegistry;
use crate::limits::{Limits, RateLimiters};
use crate::metrics::Metrics;
use crate::tls::TlsConfig;

/// Serves `app` on `listener` until `shutdown` flips, on a task of its own.
/// A macro because the plain and TLS listeners are different types and
/// axum's connect-info bounds are unwieldy to spell out generically.
macro_rules! spawn_server {
    ($listener:expr, $app:expr, $shutdown:expr) => {{
        let listener = $listener;
        let app = $app;
        let mut shutdown = $shutdown;
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
        })
    }};
}

/// Commits buffered for the fan-out before slow connections fall back to
/// reading the log.
pub const FANOUT_QUEUE_MAX: usize = 1024;

/// How to run a hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Directory for the hub database.
    pub data_dir: PathBuf,
    /// Name shown to devices and in logs.
    pub hub_id: String,
    /// Most ops per durable commit (1 = one commit per op).
    pub group_ops_max: usize,
    /// How far (basis points) a checkout's seen price may be from the price
    /// in force before the hub refuses it.
    pub price_tolerance_bp: u32,
    /// How devices authenticate.
    pub auth: AuthConfig,
    /// Sizes and rates per connection, device and address.
    pub limits: Limits,
    /// Serve `wss://` with this certificate; `None` serves plain `ws://`.
    pub tls: Option<TlsConfig>,
    /// When the change log is compacted into snapshots; `None` keeps every
    /// change forever.
    pub compaction: Option<omnisync_hub_engine::log::CompactPolicy>,
}

impl HubConfig {
    /// Defaults for `data_dir`, listening on `listen`: development
    /// authentication (no tokens), default limits, no TLS. For embedded
    /// hubs in demos and tests; `omnisync-hub serve` asks for a choice.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            hub_id: "hub".into(),
            group_ops_max: committer::GROUP_OPS_MAX,
            price_tolerance_bp: 0,
            auth: AuthConfig::Development,
            limits: Limits::default(),
            tls: None,
            compaction: Some(omnisync_hub_engine::log::CompactPolicy::default()),
        }
    }
}

/// State shared by every connection.
pub struct HubState {
    /// The hub's name.
    pub hub_id: String,
    /// Identity of the hub's change log (devices' cursors are positions in it).
    pub log_id: String,
    /// The group committer.
    pub committer: Committer,
    /// Readers of the log.
    pub reader: Arc<dyn HubLogRead + Send + Sync>,
    /// Commits for live subscriptions.
    pub fanout: broadcast::Sender<Arc<CommittedChanges>>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Sender<bool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Handshake checks.
    pub authenticator: Arc<dyn Authenticator>,
    /// Replica bindings and revocations.
    pub devices: Arc<DeviceRegistry>,
    /// Sizes and rates.
    pub limits: Limits,
    /// Rate limiters shared by all connections.
    pub rates: RateLimiters,
    /// The automerge change behind every (document, actor, seq) accepted.
    pub changes: changes::ChangeIndex,
}

/// A running hub.
pub struct Hub {
    address: SocketAddr,
    tls: bool,
    state: Arc<HubState>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Opens the storage, binds the listener and starts serving.
    pub async fn start(config: HubConfig) -> Result<Hub, HubError> {
        let mut writer = storage::open(&config.data_dir).map_err(|source| HubError::Storage {
            dir: config.data_dir.clone(),
            source,
        })?;
        writer.set_authority_config(omnisync_hub_engine::ledger::authority::AuthorityConfig {
            price_tolerance_bp: config.price_tolerance_bp,
        });
        writer.set_compaction(config.compaction);
        let log_id = writer.log_id().to_owned();
        let devices = Arc::new(DeviceRegistry::open(&config.data_dir).map_err(|source| {
            HubError::Devices {
                dir: config.data_dir.clone(),
                source,
            }
        })?);
        let authenticator: Arc<dyn Authenticator> = match &config.auth {
            AuthConfig::Development => Arc::new(auth::DevAuthenticator),
            AuthConfig::Tokens(tokens) => Arc::new(auth::TokenAuthenticator::new(
                (**tokens).clone(),
                devices.clone(),
            )),
        };
        let limits = config.limits.clamped();
        let tls = match &config.tls {
            Some(tls) => Some(tls.server_config().map_err(HubError::Tls)?),
            None => None,
        };
        let reader = Arc::new(storage::SqliteReader::new(&config.data_dir));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                address: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| HubError::Bind {
            address: config.listen,
            source,
        })?;
        let metrics = Arc::new(Metrics::default());
        let (fanout, _) = broadcast::channel(FANOUT_QUEUE_MAX);
        let (committer, committer_thread) = Committer::start(
            Box::new(writer),
            fanout.clone(),
            metrics.clone(),
            config.group_ops_max,
        );
        let state = Arc::new(HubState {
            hub_id: config.hub_id.clone(),
            log_id,
            committer,
            reader,
            fanout,
            shutdown: watch::channel(false).0,
            metrics,
            authenticator,
            devices,
            rates: RateLimiters::new(&limits),
            changes: changes::ChangeIndex::default(),
            limits,
        });
        let ticker = state.committer.clone();
        let mut ticker_shutdown = state.shutdown.subscribe();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(committer::MAINTAIN_EVERY);
            loop {
                tokio::select! {
                    _ = interval.tick() => ticker.tick(),
                    _ = ticker_shutdown.changed() => break,
                }
            }
        });
        let app = http::router(state.clone());
        let shutdown = state.shutdown.subscribe();
        let server = match tls.clone() {
            None => {
                // Small frames must leave at once: Nagle plus delayed ACKs adds ~40 ms.
                let listener = axum::serve::ListenerExt::tap_io(
                    listener,
                    |tcp: &mut tokio::net::TcpStream| {
                        if let Err(error) = tcp.set_nodelay(true) {
                            tracing::warn!(%error, "could not set TCP_NODELAY");
                        }
                    },
                );
                spawn_server!(listener, app, shutdown)
            }
            Some(tls) => {
                let listener =
                    tls::TlsListener::new(listener, tls).map_err(|source| HubError::Bind {
                        address: config.listen,
                        source,
                    })?;
                // The no-op tap gives axum the connect info (peer address).
                let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
                spawn_server!(listener, app, shutdown)
            }
        };
        tracing::info!(%address, data_dir = %config.data_dir.display(), hub_id = %config.hub_id, tls = tls.is_some(), "hub listening");
        Ok(Hub {
            address,
            tls: tls.is_some(),
            state,
            server,
            committer: Some(committer_thread),
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The WebSocket URL devices use (`wss://` when serving TLS).
    pub fn sync_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/sync", self.address)
    }

    /// The device registry (replica bindings, revocations).
    pub fn devices(&self) -> Arc<DeviceRegistry> {
        self.state.devices.clone()
    }

    /// Read access to the stored log (admin, demo checks).
    pub fn reader(&self) -> Arc<dyn HubLogRead + Send + Sync> {
        self.state.reader.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Graceful shutdown: stop accepting, tell every device why, let the
    /// committer finish what it has, and return once it is all durable.
    pub async fn stop(self) -> Result<(), HubError> {
        self.state.shutdown.send_replace(true);
        match self.server.await {
            Ok(result) => result.map_err(HubError::Serve)?,
            Err(error) => return Err(HubError::Task(error.to_string())),
        }
        let Hub {
            state, committer, ..
        } = self;
        // Connections hold clones of the state; once they are gone the
        // committer's queue closes and its thread drains and exits.
        drop(state);
        if let Some(thread) = committer {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|error| HubError::Task(error.to_string()))?
                .map_err(|_| HubError::Task("the committer thread panicked".into()))?;
        }
        Ok(())
    }
}

/// Why the hub could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The storage in the data directory could not be opened.
    #[error("opening hub storage in {}: {source}", dir.display())]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: HubLogError,
    },
    /// The listen address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// A hub task or thread failed.
    #[error("hub task failed: {0}")]
    Task(String),
    /// The device registry could not be opened.
    #[error("opening the device registry in {}: {source}", dir.display())]
    Devices {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: devices::RegistryError,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(tls::TlsError),
}

/// Builds an automerge document from what the log stores of `doc`: its
/// snapshot, if any, then the changes after it.
pub fn load_doc(
    reader: &dyn HubLogRead,
    doc: &omnisync_core::DocId,
) -> Result<automerge::Automerge, HubLogError> {
    let mut loaded = automerge::Automerge::new();
    for bytes in reader.doc_changes(doc)? {
        loaded
            .load_incremental(&bytes)
            .map_err(|error| HubLogError::Storage(format!("stored change of {doc}: {error}")))?;
    }
    Ok(loaded)
}
