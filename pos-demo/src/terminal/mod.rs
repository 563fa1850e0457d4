//! `pos-demo terminal`: the cashier's terminal, a ratatui screen over one
//! till's local store.
//!
//! Everything on screen is read from the till's SQLite store, so the
//! terminal works the same with the hub down: searches, prices and stock
//! come from the last sync, and checkouts follow the escrow rules (a line
//! the till's allowance covers is sold at once; otherwise online the hub
//! decides, offline the SKU's policy does). The sync task uploads pending
//! checkouts when the hub is back and the screen shows each one's
//! lifecycle.
//!
//! - [`app`]: state and key handling (testable without a terminal);
//! - [`ui`]: drawing, a pure function of the state.

pub mod app;
#[cfg(test)]
mod tests;
pub mod ui;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::{DeviceId, DocSetId, Replica, StoreId};
use omnisync_hub::{Hub, HubConfig};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::demo;
use app::App;

/// How often the screen re-reads the store while no key is pressed.
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// How long start-up waits for the embedded hub's demo data.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Store of the embedded demo.
const DEMO_STORE: &str = "berlin-01";
/// Till of the embedded demo.
const DEMO_DEVICE: &str = "till-1";

/// Options of `pos-demo terminal`.
#[derive(clap::Args)]
#[command(after_help = "\
Keys:
  /          find a product by name, SKU or barcode (typing digits starts a search too;
             Enter on an exact barcode or SKU adds it to the cart, like a scanner)
  Up/Down    move in the focused panel (also k/j)      Tab  next panel (products, cart, tasks)
  a, Enter   add the selected product (in the cart: one more)
  + / -      one more / one less of the selected cart line
  d          remove the cart line                       x    empty the cart
  c          check out (each line shows its source: allowance, hub or provisional)
  o          go offline / back online (the till keeps selling offline)
  r          resolve the selected open compensation task as a refund
  q, Esc     quit

Without --hub, an embedded hub with the demo store is started so you can try the
terminal alone: 10 products (e.g. type `oat`, or the barcode 4006381333948), sku-009
Burr grinder (3 on hand, refused offline) and sku-010 Vintage teapot (1 on hand, sold
at risk offline: sell 2 offline, go back online, and the hub's shortfall becomes a
compensation task to refund).")]
pub struct TerminalArgs {
    /// The hub to sync with: ws://HOST:PORT[/v1/sync]; several separated by
    /// commas are tried in order (the till fails over to the next when its
    /// hub goes away). Without it, an embedded hub with demo data is
    /// started (try the terminal alone).
    #[arg(long, requires_all = ["store", "device"])]
    hub: Option<String>,
    /// The store this till belongs to (required with --hub; default
    /// berlin-01 on the embedded hub).
    #[arg(long, value_parser = parse_store)]
    store: Option<StoreId>,
    /// This till's device id (required with --hub; default till-1 on the
    /// embedded hub).
    #[arg(long, value_parser = parse_device)]
    device: Option<DeviceId>,
    /// Where the till keeps its SQLite store (pending sales survive a
    /// restart). Default with --hub: ./omnisync-terminal/STORE/DEVICE;
    /// on the embedded hub: a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn parse_store(text: &str) -> Result<StoreId, String> {
    StoreId::new(text).map_err(|error| error.to_string())
}

fn parse_device(text: &str) -> Result<DeviceId, String> {
    DeviceId::new(text).map_err(|error| error.to_string())
}

/// `ws://A:PORT,ws://B:PORT/v1/sync` → the sync URLs, in order.
pub fn sync_urls(hubs: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = hubs
        .split(',')
        .map(str::trim)
        .filter(|hub| !hub.is_empty())
        .map(sync_url)
        .collect::<anyhow::Result<_>>()?;
    if urls.is_empty() {
        bail!("--hub {hubs:?}: expected ws://HOST:PORT[/v1/sync][,ws://HOST:PORT…]");
    }
    Ok(urls)
}

/// `ws://HOST:PORT` or `ws://HOST:PORT/v1/sync` → the sync URL.
pub fn sync_url(hub: &str) -> anyhow::Result<String> {
    let rest = hub
        .strip_prefix("ws://")
        .with_context(|| format!("--hub {hub:?}: expected ws://HOST:PORT[/v1/sync]"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || !authority.contains(':') || !(path.is_empty() || path == "v1/sync") {
        bail!("--hub {hub:?}: expected ws://HOST:PORT[/v1/sync]");
    }
    Ok(format!("ws://{authority}/v1/sync"))
}

/// An embedded hub holding the demo store (catalog, prices, stock).
pub struct DemoHub {
    /// The hub.
    pub hub: Hub,
    _data: tempfile::TempDir,
}

impl DemoHub {
    /// Starts a hub on 127.0.0.1 with a temporary data directory and has a
    /// back-office device publish the demo store into it.
    pub async fn start(store: &StoreId) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("creating the hub's data directory")?;
        let config = HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
        let hub = Hub::start(config).await?;
        let office_dir = tempfile::tempdir().context("creating the back office's directory")?;
        let office = Client::new(
            Replica::open(
                &office_dir.path().join("office.db"),
                DeviceId::new("back-office")?,
                store.clone(),
            )?,
            SyncConfig::new(hub.sync_url()),
        );
        office.subscribe(&DocSetId::store(store))?;
        office.start();
        let seeded = async {
            for op in demo::stock_the_store(&office, store)? {
                demo::decided(&office, op).await?;
            }
            office.wait_synced(SETUP_TIMEOUT).await?;
            anyhow::Ok(())
        }
        .await;
        office.stop().await;
        seeded.context("publishing the demo store")?;
        Ok(Self { hub, _data: data })
    }

    /// Stops the hub.
    pub async fn stop(self) -> anyhow::Result<()> {
        Ok(self.hub.stop().await?)
    }
}

/// Opens a till's store in `dir` and starts its sync task with the hubs at
/// `urls` (tried in order).
pub fn open_till(
    dir: &std::path::Path,
    store: &StoreId,
    device: &DeviceId,
    urls: &[String],
) -> anyhow::Result<Client> {
    let mut config = SyncConfig::with_hubs(urls).context("--hub")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("till.db");
    let local = Replica::open(&path, device.clone(), store.clone())
        .with_context(|| format!("opening the till's store {}", path.display()))?;
    config.agent = format!("pos-demo-terminal/{device}");
    let client = Client::new(local, config);
    client.subscribe(&DocSetId::store(store))?;
    client.start();
    Ok(client)
}

/// Runs the terminal until the cashier quits.
pub async fn run(args: TerminalArgs) -> anyhow::Result<bool> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "pos-demo terminal is an interactive screen, but stdout is not a terminal; \
             run it in a terminal or tmux (for a scripted store day, use `pos-demo demo`)"
        );
    }
    let store = match &args.store {
        Some(store) => store.clone(),
        None => StoreId::new(DEMO_STORE)?,
    };
    let device = match &args.device {
        Some(device) => device.clone(),
        None => DeviceId::new(DEMO_DEVICE)?,
    };
    let (demo_hub, urls) = match &args.hub {
        Some(hub) => (None, sync_urls(hub)?),
        None => {
            eprintln!("starting an embedded hub with the demo store {store} …");
            let demo_hub = DemoHub::start(&store).await?;
            let url = demo_hub.hub.sync_url();
            (Some(demo_hub), vec![url])
        }
    };
    let url = urls.join(", ");
    let mut scratch = None;
    let dir = match (&args.data_dir, &demo_hub) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => scratch
            .insert(tempfile::tempdir().context("creating the till's directory")?)
            .path()
            .to_path_buf(),
        (None, None) => PathBuf::from("omnisync-terminal")
            .join(store.as_str())
            .join(device.as_str()),
    };
    let till = open_till(&dir, &store, &device, &urls)?;
    if demo_hub.is_some() {
        till.wait_synced(SETUP_TIMEOUT)
            .await
            .context("the till syncing the demo store")?;
    }
    let label = match &demo_hub {
        Some(_) => format!("{url} (embedded, demo data)"),
        None => url.clone(),
    };
    let app = App::new(store, device, label);
    let ui_till = till.clone();
    let outcome = tokio::task::spawn_blocking(move || ui_loop(app, &ui_till)).await;
    till.stop().await;
    if let Some(demo_hub) = demo_hub {
        demo_hub.stop().await?;
    }
    drop(scratch);
    match outcome {
        Ok(result) => result.map(|()| true),
        Err(error) => bail!("the terminal screen failed: {error}"),
    }
}

/// Leaves raw mode and the alternate screen when dropped (also on an early
/// return); ratatui's panic hook does the same on a panic.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn ui_loop(mut app: App, till: &Client) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    app.load_history(till)?;
    app.refresh(till)?;
    while !app.quit {
        terminal.draw(|frame| ui::render(frame, &app))?;
        if event::poll(REFRESH_EVERY)? {
            if let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                app.handle_key(key, till);
            }
        } else if let Err(error) = app.refresh(till) {
            app.message = Some(app::Message {
                tone: app::Tone::Bad,
                text: format!("reading the local store: {error:#}"),
            });
        }
    }
    Ok(())
}
