//! omnisync-hub: the regional hub. An axum/tokio shell around the sans-I/O
//! hub protocol of `omnisync-core`, with a group-committing SQLite log, live
//! fan-out, health, metrics and an admin read endpoint.
//!
//! Embed it with [`Hub::start`] (the demo and the tests do), or run the
//! `omnisync-hub` binary.

pub mod audit;
pub mod auth;
pub mod changes;
pub mod cluster;
pub mod committer;
pub mod connection;
pub mod devices;
pub mod fanout;
pub mod feed;
pub mod http;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod openapi;
#[cfg(any(test, feature = "pg-cluster"))]
pub mod pg_cluster;
pub mod storage;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use omnisync_hub_engine::log::{HubLogError, HubLogRead};
use tokio::sync::watch;

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
    /// Directory for the hub database (`hub.db`) and the device registry
    /// (`devices.db`); with [`database`](Self::database) set, for the
    /// device registry only.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL: the hub log lives in that database instead of
    /// `data_dir` (several hub processes may share it). `None`: SQLite.
    pub database: Option<String>,
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
    /// Whether group commits write typed events to the outbox (the event
    /// feed and exporters read them); on by default.
    pub events: bool,
    /// How long events are kept, ms (`None`: forever).
    pub events_retention_ms: Option<u64>,
}

/// How long the outbox keeps events by default: 30 days.
pub const EVENTS_RETENTION_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

impl HubConfig {
    /// Defaults for `data_dir`, listening on `listen`: development
    /// authentication (no tokens), default limits, no TLS. For embedded
    /// hubs in demos and tests; `omnisync-hub serve` asks for a choice.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            database: None,
            hub_id: "hub".into(),
            group_ops_max: committer::GROUP_OPS_MAX,
            price_tolerance_bp: 0,
            auth: AuthConfig::Development,
            limits: Limits::default(),
            tls: None,
            compaction: Some(omnisync_hub_engine::log::CompactPolicy::default()),
            events: true,
            events_retention_ms: Some(EVENTS_RETENTION_MS_DEFAULT),
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
    /// Commits for live subscriptions, in log order.
    pub fanout: Arc<fanout::Fanout>,
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
    /// Whether group commits write events (`serve --no-events` turns it off).
    pub events: bool,
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
        let authority = omnisync_hub_engine::ledger::authority::AuthorityConfig {
            price_tolerance_bp: config.price_tolerance_bp,
        };
        let OpenedLog {
            writer,
            reader,
            log_id,
        } = open_log(&config, authority).await?;
        let devices = Arc::new(open_devices(&config).await?);
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
        let fanout = Arc::new(fanout::Fanout::new(
            writer.head_seq().map_err(|source| HubError::Storage {
                dir: config.data_dir.clone(),
                source,
            })?,
            FANOUT_QUEUE_MAX,
            {
                let reader = reader.clone();
                Box::new(move |after, upto| reader.changes_between(after, upto))
            },
        ));
        let (committer, committer_thread) = Committer::start(
            writer,
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
            events: config.events,
            limits,
        });
        if let Some(url) = &config.database {
            let devices = state.devices.clone();
            cluster::spawn(
                url.clone(),
                storage::postgres::NOTIFY_CHANNEL,
                storage::postgres::HEAD_SQL,
                cluster::Listeners {
                    fanout: state.fanout.clone(),
                    on_revocation: Box::new(move |tenant, device| {
                        devices.revoked_elsewhere(tenant, device)
                    }),
                },
                state.shutdown.subscribe(),
            );
        }
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
        let database = config
            .database
            .as_deref()
            .map(storage::postgres::redact)
            .unwrap_or_default();
        tracing::info!(%address, data_dir = %config.data_dir.display(), %database, hub_id = %config.hub_id, tls = tls.is_some(), "hub listening");
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

/// Opens the device registry: `devices.db` in the data directory, or the
/// PostgreSQL database every hub process on it shares.
async fn open_devices(config: &HubConfig) -> Result<DeviceRegistry, HubError> {
    match &config.database {
        None => DeviceRegistry::open(&config.data_dir).map_err(|source| HubError::Devices {
            dir: config.data_dir.clone(),
            source,
        }),
        Some(url) => {
            let url = storage::postgres::PgUrl::parse(url).map_err(HubError::Database)?;
            tokio::task::spawn_blocking(move || {
                storage::pg_registry::PgRegistryRows::open(&url)
                    .and_then(|rows| DeviceRegistry::with_rows(Box::new(rows)))
            })
            .await
            .map_err(|error| HubError::Task(error.to_string()))?
            .map_err(|error| HubError::Database(error.to_string()))
        }
    }
}

/// A hub log opened for serving.
struct OpenedLog {
    writer: Box<dyn omnisync_hub_engine::log::HubLog + Send>,
    reader: Arc<dyn HubLogRead + Send + Sync>,
    log_id: String,
}

/// Opens the log `config` names: SQLite in the data directory, or the
/// PostgreSQL database (waiting for it, see [`open_postgres`]).
async fn open_log(
    config: &HubConfig,
    authority: omnisync_hub_engine::ledger::authority::AuthorityConfig,
) -> Result<OpenedLog, HubError> {
    match &config.database {
        None => {
            let mut writer =
                storage::open(&config.data_dir).map_err(|source| HubError::Storage {
                    dir: config.data_dir.clone(),
                    source,
                })?;
            writer.set_authority_config(authority);
            writer.set_compaction(config.compaction);
            writer.set_events(config.events);
            writer.set_events_retention(config.events_retention_ms);
            writer
                .set_tenant(config.auth.tenant())
                .map_err(|source| HubError::Storage {
                    dir: config.data_dir.clone(),
                    source,
                })?;
            Ok(OpenedLog {
                log_id: writer.log_id().to_owned(),
                writer: Box::new(writer),
                reader: Arc::new(storage::SqliteReader::new(&config.data_dir)),
            })
        }
        Some(url) => {
            let url = storage::postgres::PgUrl::parse(url).map_err(HubError::Database)?;
            let mut writer = open_postgres(&url).await?;
            writer.set_authority_config(authority);
            writer.set_compaction(config.compaction);
            writer.set_events(config.events);
            writer.set_events_retention(config.events_retention_ms);
            writer
                .set_tenant(config.auth.tenant())
                .map_err(|error| HubError::Database(error.to_string()))?;
            Ok(OpenedLog {
                log_id: writer.log_id().to_owned(),
                writer: Box::new(writer),
                reader: Arc::new(storage::postgres::PgReader::new(&url)),
            })
        }
    }
}

/// Opens the PostgreSQL log, waiting for the server: while it is
/// unreachable, one error line per attempt and another attempt after 1 s,
/// doubling to 30 s. Failures that retrying cannot heal (wrong password,
/// missing privileges, a newer schema) end it at once.
pub async fn open_postgres(
    url: &storage::postgres::PgUrl,
) -> Result<storage::postgres::PgHubLog, HubError> {
    let mut delay = storage::postgres::RECONNECT_DELAY_MIN;
    loop {
        let attempt = url.clone();
        let opened = tokio::task::spawn_blocking(move || storage::postgres::open(&attempt))
            .await
            .map_err(|error| HubError::Task(error.to_string()))?;
        match opened {
            Ok(writer) => return Ok(writer),
            Err(error) if error.permanent => return Err(HubError::Database(error.message)),
            Err(error) => {
                tracing::error!("{}; retrying in {} s", error.message, delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(storage::postgres::RECONNECT_DELAY_MAX);
            }
        }
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
    /// The PostgreSQL database refused the hub (one line, password hidden).
    #[error("{0}")]
    Database(String),
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
