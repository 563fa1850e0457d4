//! `pos-demo fanout`: how fast a price change from the back office becomes
//! visible on every connected terminal.
//!
//! N terminals (each its own SQLite file and WebSocket) follow the store; the
//! back office changes one price M times, one change at a time. Each
//! terminal's latency is measured from the moment the back office's write
//! returned to the moment the terminal's store announced the applied change
//! (its `RemoteChanges` notice, sent right after the commit that made the
//! new price readable) — not from a later poll. With `--hub ws://A,ws://B`
//! the terminals are spread over the hubs round-robin.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use omnisync_core::client::{Client, Notice, SyncConfig};
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::{DeviceId, DocSetId, Replica, StoreId};
use serde_json::json;

use crate::hubref::HubRef;
use crate::report::percentile;

/// How long one change may take to reach every terminal.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long all terminals may take to connect and catch up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of `pos-demo fanout`.
#[derive(clap::Args)]
pub struct FanoutArgs {
    /// Connected terminals.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    terminals: u32,
    /// Price changes, one after the other.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    changes: u32,
    /// Running hubs (`ws://HOST:PORT`, several separated by commas:
    /// terminals are spread over them) instead of an embedded one.
    #[arg(long)]
    hub: Option<String>,
    /// The store to use (a fresh one per run against a long-lived hub).
    #[arg(long, default_value = "fanout-01")]
    store: String,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// What one terminal saw: (price in minor units, when it became readable).
type Sightings = Arc<Mutex<Vec<(i64, Instant)>>>;

/// Runs the benchmark.
pub async fn run(args: FanoutArgs) -> anyhow::Result<bool> {
    let hub = HubRef::open(args.hub.as_deref()).await?;
    let store_id = StoreId::new(args.store.clone()).context("--store")?;
    let set = DocSetId::store(&store_id);
    let sku = Sku::new("fanout-sku")?;
    let dir = tempfile::tempdir()?;
    let open = |name: &str, n: usize| -> anyhow::Result<Client> {
        let config = SyncConfig::with_hubs(&hub.sync_urls_for(n))?;
        let store = Replica::open(
            &dir.path().join(format!("{name}.db")),
            DeviceId::new(name)?,
            store_id.clone(),
        )?;
        let client = Client::new(store, config);
        client.subscribe(&set)?;
        client.start();
        Ok(client)
    };
    let office = open("back-office", 0)?;
    let base = 100_000 + i64::from(rand::random::<u16>()) * 1_000;
    set_price(&office, &store_id, &sku, base)?;
    office
        .wait_synced(CONNECT_TIMEOUT)
        .await
        .context("back office syncing")?;

    let mut terminals = Vec::with_capacity(args.terminals as usize);
    let mut sightings: Vec<Sightings> = Vec::with_capacity(args.terminals as usize);
    for n in 0..args.terminals {
        let client = open(&format!("till-{n:04}"), n as usize)?;
        let seen: Sightings = Arc::default();
        watch_prices(&client, &store_id, &sku, seen.clone());
        terminals.push(client);
        sightings.push(seen);
    }
    let connected = Instant::now();
    for client in &terminals {
        let left = CONNECT_TIMEOUT.saturating_sub(connected.elapsed());
        client
            .wait_synced(left)
            .await
            .context("terminals connecting")?;
    }
    println!(
        "{} terminals connected and caught up in {:.1} s",
        terminals.len(),
        connected.elapsed().as_secs_f64()
    );

    let mut latencies_ms = Vec::with_capacity((args.terminals * args.changes) as usize);
    for change in 1..=args.changes {
        let price = base + i64::from(change);
        set_price(&office, &store_id, &sku, price)?;
        let written = Instant::now();
        let deadline = written + CHANGE_TIMEOUT;
        for seen in &sightings {
            let at = loop {
                let found = seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter()
                    .find(|(p, _)| *p == price)
                    .map(|(_, at)| *at);
                if let Some(at) = found {
                    break at;
                }
                if Instant::now() > deadline {
                    bail!("change {change} did not reach every terminal within {CHANGE_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            latencies_ms.push(at.saturating_duration_since(written).as_secs_f64() * 1e3);
        }
    }
    let (p50, p99) = (
        percentile(&mut latencies_ms, 0.5),
        percentile(&mut latencies_ms, 0.99),
    );
    println!(
        "{} changes × {} terminals: visible after p50 {:.1} ms, p99 {:.1} ms",
        args.changes, args.terminals, p50, p99
    );
    for client in terminals.iter().chain([&office]) {
        client.stop().await;
    }
    let hubs = hub.count();
    hub.stop().await?;
    if args.json {
        let round = |ms: f64| (ms * 100.0).round() / 100.0;
        println!(
            "{}",
            json!({ "terminals": args.terminals, "hubs": hubs, "changes": args.changes, "p50_ms": round(p50), "p99_ms": round(p99) })
        );
    }
    Ok(true)
}

fn set_price(office: &Client, store: &StoreId, sku: &Sku, amount_minor: i64) -> anyhow::Result<()> {
    let money = Money {
        amount_minor,
        currency: Currency::new("EUR")?,
    };
    office
        .write(|db| db.set_price(store, sku, Channel::Pos, 0, &money, omnisync_core::now_ms()))?;
    Ok(())
}

/// Records, for one terminal, each price the moment its store announces it.
fn watch_prices(client: &Client, store: &StoreId, sku: &Sku, seen: Sightings) {
    let mut notices = client.notices();
    let (client, store, sku) = (client.clone(), store.clone(), sku.clone());
    tokio::spawn(async move {
        loop {
            match notices.recv().await {
                Ok(Notice::RemoteChanges { .. }) => {
                    let at = Instant::now();
                    let price = client.replica().price_in_force(
                        &store,
                        &sku,
                        Channel::Pos,
                        omnisync_core::now_ms(),
                    );
                    if let Ok(Some(price)) = price {
                        seen.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push((price.money.amount_minor, at));
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}
