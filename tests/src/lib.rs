//! Shared helpers for the cross-crate scenarios in `tests/tests/`: an
//! embedded hub on `127.0.0.1:0`, device clients with their own SQLite files,
//! and convergence checks that poll with a deadline instead of sleeping.
//!
//! - [`process`]: child processes (the real hub binary, the test terminal)
//!   that are SIGKILLed when their guard drops;
//! - [`audit`]: exactly-once checks of the hub's change log;
//! - [`events`]: reading a hub's event feed;
//! - [`http`]: a raw HTTP/1.1 GET for `/healthz` and `/metrics`;
//! - [`security`]: keys and tokens from the hub's own `keygen` and `enrol`,
//!   hubs in token mode, and a raw client for hostile devices;
//! - [`terminal`]: what the `omnisync-test-terminal` binary writes and prints.

pub mod audit;
pub mod events;
pub mod http;
pub mod process;
pub mod security;
pub mod terminal;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::{DeviceId, DocId, DocSetId, Replica, StoreId};
use omnisync_hub::{Hub, HubConfig};

/// How long a scenario waits for sync before failing.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a polling loop sleeps between looks at its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A hub on a free loopback port with a temporary data directory.
pub struct TestHub {
    /// The running hub.
    pub hub: Hub,
    /// Its data directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl TestHub {
    /// Starts a hub.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = HubConfig::new("127.0.0.1:0".parse()?, dir.path().to_path_buf());
        let hub = Hub::start(config).await?;
        Ok(Self { hub, dir })
    }

    /// The sync URL.
    pub fn url(&self) -> String {
        self.hub.sync_url()
    }
}

/// A device: its client and the temporary directory holding its store file.
pub struct TestDevice {
    /// The client (store + sync).
    pub client: Client,
    /// The store file's path.
    pub path: PathBuf,
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

/// Opens a device of `store` named `device`, subscribed to its store's set,
/// syncing with `url`, and starts its sync task.
pub fn device(url: &str, device: &str, store: &str) -> anyhow::Result<TestDevice> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{device}.db"));
    let store_id = StoreId::new(store)?;
    let opened = Replica::open(&path, DeviceId::new(device)?, store_id.clone())
        .with_context(|| format!("opening {}", path.display()))?;
    let client = Client::new(opened, SyncConfig::new(url));
    client.subscribe(&DocSetId::store(&store_id))?;
    client.start();
    Ok(TestDevice { client, path, dir })
}

/// Opens a device like [`device`] that knows several hubs (`urls`, tried in
/// this order, failing over to the next when its hub goes away).
pub fn device_with_hubs(urls: &[String], device: &str, store: &str) -> anyhow::Result<TestDevice> {
    let config = SyncConfig::with_hubs(urls)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{device}.db"));
    let store_id = StoreId::new(store)?;
    let opened = Replica::open(&path, DeviceId::new(device)?, store_id.clone())
        .with_context(|| format!("opening {}", path.display()))?;
    let client = Client::new(opened, config);
    client.subscribe(&DocSetId::store(&store_id))?;
    client.start();
    Ok(TestDevice { client, path, dir })
}

/// How a scenario's device connects.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Its token.
    pub token: Option<String>,
    /// Sets to follow besides its store's.
    pub sets: Vec<DocSetId>,
    /// The hub's CA for `wss://`.
    pub hub_ca_pem: Option<Vec<u8>>,
    /// Never refresh the token.
    pub no_refresh: bool,
}

/// Opens a device like [`device`], with a token, more sets or a hub CA.
pub fn device_with(
    url: &str,
    device: &str,
    store: &str,
    options: DeviceOptions,
) -> anyhow::Result<TestDevice> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{device}.db"));
    let store_id = StoreId::new(store)?;
    let opened = Replica::open(&path, DeviceId::new(device)?, store_id.clone())
        .with_context(|| format!("opening {}", path.display()))?;
    let mut config = SyncConfig::new(url);
    config.credentials.token = options.token;
    config.hub_ca_pem = options.hub_ca_pem;
    config.refresh_tokens = !options.no_refresh;
    let client = Client::new(opened, config);
    client.subscribe(&DocSetId::store(&store_id))?;
    for set in &options.sets {
        client.subscribe(set)?;
    }
    client.start();
    Ok(TestDevice { client, path, dir })
}

/// Waits until every client holds the same heads for every listed document.
pub async fn wait_converged(clients: &[&Client], docs: &[DocId]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let heads: Vec<Vec<Vec<String>>> = clients
            .iter()
            .map(|client| {
                let mut store = client.replica();
                docs.iter()
                    .map(|doc| store.doc_heads(doc).unwrap_or_default())
                    .collect()
            })
            .collect();
        if heads.windows(2).all(|pair| pair[0] == pair[1]) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("replicas did not converge within {SYNC_TIMEOUT:?}: {heads:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every few milliseconds until it returns `Ok(true)`,
/// failing with `what` once `timeout` passes (or at once if it errs).
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Installs a test log subscriber once (respecting `RUST_LOG`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scenario waits through `wait_until`; it must give up at its
    /// deadline, or a scenario could pass by never checking.
    #[tokio::test]
    async fn polling_gives_up_at_its_deadline() {
        let started = Instant::now();
        let result = wait_until(Duration::from_millis(50), "nothing", || Ok(false)).await;
        assert!(result.is_err());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            wait_until(Duration::from_millis(50), "errors", || anyhow::bail!(
                "broken"
            ))
            .await
            .is_err()
        );
        assert!(
            wait_until(Duration::from_millis(50), "at once", || Ok(true))
                .await
                .is_ok()
        );
    }
}
