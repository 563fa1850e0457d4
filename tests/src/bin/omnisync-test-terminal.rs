//! A POS terminal as a separate process, for crash scenarios: it opens a
//! store file, records sales one at a time and, after each durable commit,
//! prints `committed <seq> <sale>` and flushes, so a test that has read the line
//! knows the sale was confirmed to the cashier and must survive a SIGKILL.
//!
//! Output (stdout, one line each; see `omnisync_tests::terminal::TerminalLine`):
//! `replica <hex>` first, then `committed <seq> <sale>` after each sale's
//! transaction has committed, then `done` after the last sale (and, with
//! `--hub`, once everything is synced). What a sale writes is
//! `omnisync_tests::terminal::sale_edits`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::{DeviceId, DocSetId, Replica, StoreId};
use omnisync_tests::terminal::{TerminalLine, sale_edits};

/// How long `--hub` mode waits for the final sync before giving up.
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Records sales into a local store, optionally syncing with a hub.
#[derive(Parser, Debug)]
struct Args {
    /// The store file (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// This terminal's device id.
    #[arg(long)]
    device: String,
    /// The shop's store id.
    #[arg(long)]
    store: String,
    /// Sync with this hub (`ws://host:port/v1/sync`) while selling.
    #[arg(long)]
    hub: Option<String>,
    /// How many sales to record.
    #[arg(long)]
    sales: u64,
    /// Pause between sales, in ms.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store_id = StoreId::new(&args.store)?;
    let store = Replica::open(&args.db, DeviceId::new(&args.device)?, store_id.clone())
        .with_context(|| format!("opening {}", args.db.display()))?;
    let mut stdout = std::io::stdout().lock();
    let mut say = |line: TerminalLine| -> anyhow::Result<()> {
        writeln!(stdout, "{}", line.render())?;
        stdout.flush()?;
        Ok(())
    };
    say(TerminalLine::Replica(store.replica()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let _entered = runtime.enter();
    let client = Client::new(store, SyncConfig::new(args.hub.clone().unwrap_or_default()));
    if args.hub.is_some() {
        client.subscribe(&DocSetId::store(&store_id))?;
        client.start();
    }
    // Sale n is the store's n-th op; this process is the store's only writer.
    let sales_before = client.replica().op_ids()?.len() as u64;
    for sale in sales_before + 1..=sales_before + args.sales {
        let op = client
            .commit(&sale_edits(&args.store, &args.device, sale)?)
            .with_context(|| format!("recording sale {sale}"))?;
        say(TerminalLine::Committed { seq: op.seq, sale })?;
        if args.interval_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
    }
    if args.hub.is_some() {
        runtime.block_on(async {
            client.wait_synced(FINAL_SYNC_TIMEOUT).await?;
            client.stop().await;
            anyhow::Ok(())
        })?;
    }
    say(TerminalLine::Done)
}
