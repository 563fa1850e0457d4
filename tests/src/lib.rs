//! Shared helpers for the cross-crate scenarios in `tests/tests/`: an
//! embedded hub on `127.0.0.1:0`, device clients with their own SQLite files,
//! and convergence checks that poll with a deadline instead of sleeping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::net::{Client, SyncConfig};
use omnisync_core::{DeviceId, DocId, DocSetId, Store, StoreId};
use omnisync_hub::{Hub, HubConfig};

/// How long a scenario waits for sync before failing.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

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
    let opened = Store::open(&path, DeviceId::new(device)?, store_id.clone())
        .with_context(|| format!("opening {}", path.display()))?;
    let client = Client::new(opened, SyncConfig::new(url));
    client.subscribe(&DocSetId::store(&store_id))?;
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
                let mut store = client.store();
                docs.iter().map(|doc| store.doc_heads(doc).unwrap_or_default()).collect()
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

/// Installs a test log subscriber once (respecting `RUST_LOG`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
