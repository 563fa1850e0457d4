//! `pos-demo fleet`: a store's tills selling as fast as they can.
//!
//! Each till is a real device (its own SQLite store, its own connection)
//! recording sales of 1–3 lines over random SKUs with quantity 1–2; each
//! sale is one durable checkout that spends the till's escrow allowance or
//! goes to the hub. 10% of the SKUs start low, so the strong path and
//! refusals happen. Measured:
//!
//! - `sales_per_s`: sales recorded by the whole fleet per second (first
//!   sale to last);
//! - `propagation_*`: from a sale's local commit at a till to the moment the
//!   back office (another device, following the store's orders) holds the
//!   order the hub decided — a notice-driven measurement, not a poll;
//! - `converge_ms`: from the last sale to the moment every till reads, for
//!   every SKU, the stock the hub holds and the hub holds initial stock minus
//!   confirmed sales;
//! - `oversold` and `lost`: counted from the data (confirmed units against
//!   stock; sales without a decision or without an order at the hub);
//! - `reconnects` and `reconnect_*`: sessions that came back after a
//!   connection dropped (a hub restarted or killed, the till failing over to
//!   another hub), timed from the drop to the new session's answered hello.
//!
//! With `--hub ws://A,ws://B` the tills are spread over the hubs round-robin,
//! each given every hub with its own first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use omnisync_core::client::{Client, Link, Notice, SyncConfig};
use omnisync_core::db::OpStatus;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{Decision, StockCommand};
use omnisync_core::{DeviceId, DocSetId, OpId, Replica, StoreId, now_ms};
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::hubref::HubRef;
use crate::report::percentile;

/// Units of a well-stocked SKU.
const STOCK_HIGH: u64 = 2_000;
/// Units of a low-stock SKU (at or below the default strong threshold).
const STOCK_LOW: u64 = 4;
/// How long convergence may take before the run fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct FleetArgs {
    /// Tills selling at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    terminals: u32,
    /// Sales each till records.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    sales_per_terminal: u32,
    /// SKUs on sale (10% of them start low).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    skus: u32,
    /// Hubs to run against (ws://HOST:PORT, several separated by commas:
    /// tills are spread over them and fail over to the others); without it
    /// an embedded hub.
    #[arg(long)]
    hub: Option<String>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

type Sightings = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(args: FleetArgs) -> anyhow::Result<bool> {
    let hub = HubRef::open(args.hub.as_deref()).await?;
    println!(
        "fleet: {} tills × {} sales over {} SKUs, against {}",
        args.terminals,
        args.sales_per_terminal,
        args.skus,
        hub.describe()
    );
    let outcome = fleet(&hub, &args).await;
    hub.stop().await?;
    outcome
}

async fn fleet(hub: &HubRef, args: &FleetArgs) -> anyhow::Result<bool> {
    let store_id = StoreId::new(format!("fleet-{}-{}", std::process::id(), now_ms()))?;
    let skus: Vec<Sku> = (0..args.skus)
        .map(|n| Sku::new(format!("sku-{n:06}")))
        .collect::<Result<_, _>>()?;
    let initial: HashMap<Sku, u64> = skus
        .iter()
        .enumerate()
        .map(|(n, sku)| {
            (
                sku.clone(),
                if n % 10 == 0 { STOCK_LOW } else { STOCK_HIGH },
            )
        })
        .collect();
    let dirs = tempfile::tempdir()?;

    // The back office receives the stock and follows the store's orders.
    let office = device(&hub.sync_urls_for(0), &store_id, "back-office", dirs.path())?;
    office.subscribe(&DocSetId::orders(&store_id))?;
    let committed: Sightings = Arc::new(Mutex::new(HashMap::new()));
    let propagation = Arc::new(Mutex::new(Vec::<f64>::new()));
    let watcher = watch_orders(&office, committed.clone(), propagation.clone());
    for chunk in skus.chunks(200) {
        office.write(|db| -> anyhow::Result<()> {
            for sku in chunk {
                db.stock_command(
                    StockCommand::Receive {
                        key: format!("opening-{sku}").parse()?,
                        sku: sku.clone(),
                        quantity: initial[sku],
                    },
                    now_ms(),
                )?;
            }
            Ok(())
        })?;
    }
    office
        .wait_for(Duration::from_secs(120), "stock received", |status| {
            status.link == Link::Online && status.pending == 0 && status.caught_up
        })
        .await?;

    // The tills come online and read the store's stock.
    let mut tills = Vec::new();
    let outages = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut outage_watchers = Vec::new();
    for n in 0..args.terminals {
        let till = device(
            &hub.sync_urls_for(n as usize),
            &store_id,
            &format!("till-{n:03}"),
            dirs.path(),
        )?;
        outage_watchers.push(watch_reconnects(&till, outages.clone()));
        tills.push(till);
    }
    for till in &tills {
        till.wait_for(Duration::from_secs(120), "the store's stock", |status| {
            status.link == Link::Online && status.caught_up
        })
        .await?;
    }
    println!("{} tills online; selling", tills.len());

    // Sell.
    let bar = crate::report::progress(
        u64::from(args.terminals) * u64::from(args.sales_per_terminal),
        "sales recorded",
    );
    let started = Instant::now();
    let mut sellers = Vec::new();
    for (n, till) in tills.iter().enumerate() {
        let till = till.clone();
        let skus = skus.clone();
        let committed = committed.clone();
        let sales = args.sales_per_terminal;
        let bar = bar.clone();
        sellers.push(tokio::task::spawn_blocking(move || {
            sell(&till, n as u64, sales, &skus, &committed, &bar)
        }));
    }
    let mut recorded: Vec<(Client, Vec<(OpId, CheckoutRequest)>)> = Vec::new();
    let mut blocked = 0u64;
    for (till, seller) in tills.iter().zip(sellers) {
        let (sales, refused_locally) = seller.await??;
        blocked += refused_locally;
        recorded.push((till.clone(), sales));
    }
    let selling = started.elapsed();
    bar.finish_and_clear();
    let last_sale = Instant::now();
    let total_sales: usize = recorded.iter().map(|(_, sales)| sales.len()).sum();

    // Every sale decided, and every till reading the hub's stock.
    let mut confirmed_units: HashMap<Sku, u64> = HashMap::new();
    let (mut confirmed, mut refused, mut lost) = (0u64, 0u64, 0u64);
    for (till, sales) in &recorded {
        till.wait_for(CONVERGE_TIMEOUT, "every sale decided", |status| {
            status.pending == 0
        })
        .await
        .context("a till's sales were not all decided")?;
        let store = till.replica();
        for (op, request) in sales {
            match store.op_status(op)? {
                Some(OpStatus::Confirmed {
                    decision: Decision::Confirmed { .. },
                }) => {
                    confirmed += 1;
                    for line in &request.lines {
                        *confirmed_units.entry(line.sku.clone()).or_default() += line.quantity;
                    }
                }
                Some(OpStatus::Refused { .. }) => refused += 1,
                _ => lost += 1,
            }
        }
    }
    let expected: HashMap<&Sku, u64> = skus
        .iter()
        .map(|sku| {
            let sold = confirmed_units.get(sku).copied().unwrap_or(0);
            (sku, initial[sku].saturating_sub(sold))
        })
        .collect();
    let oversold: u64 = skus
        .iter()
        .map(|sku| {
            confirmed_units
                .get(sku)
                .copied()
                .unwrap_or(0)
                .saturating_sub(initial[sku])
        })
        .sum();
    let converge_deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut mismatches;
    loop {
        mismatches = 0usize;
        for device in recorded.iter().map(|(till, _)| till).chain([&office]) {
            let levels = device.replica().stock_levels(&store_id)?;
            for sku in &skus {
                if levels.get(sku.as_str()) != Some(&expected[sku]) {
                    mismatches += 1;
                }
            }
        }
        if mismatches == 0 || Instant::now() > converge_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converge = last_sale.elapsed();
    // Every confirmed sale's order reached the back office.
    let orders_deadline = Instant::now() + Duration::from_secs(30);
    let missing_orders = loop {
        let mut missing = 0u64;
        {
            let store = office.replica();
            for (till, sales) in &recorded {
                let till_store = till.replica();
                for (op, request) in sales {
                    if matches!(till_store.op_status(op)?, Some(OpStatus::Confirmed { .. }))
                        && store
                            .order(request.order_id.as_str())?
                            .is_none_or(|order| order.order_no.is_none())
                    {
                        missing += 1;
                    }
                }
            }
        }
        if missing == 0 || Instant::now() > orders_deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    lost += missing_orders;
    watcher.abort();
    for outage_watcher in &outage_watchers {
        outage_watcher.abort();
    }
    for (till, _) in &recorded {
        till.stop().await;
    }
    office.stop().await;

    let sales_per_s = total_sales as f64 / selling.as_secs_f64();
    let mut propagation = propagation
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let mut outages = outages
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let converge_ms = if mismatches == 0 {
        Some(converge.as_millis() as u64)
    } else {
        None
    };
    println!(
        "{total_sales} sales in {:.2} s = {sales_per_s:.0} sales/s ({confirmed} confirmed, {refused} refused by the hub, {blocked} not offered: SKU out of stock at the till)",
        selling.as_secs_f64()
    );
    println!(
        "sale → back office: p50 {:.1} ms, p99 {:.1} ms over {} orders; converged {}; oversold {oversold}; lost {lost}",
        percentile(&mut propagation.clone(), 0.5),
        percentile(&mut propagation.clone(), 0.99),
        propagation.len(),
        converge_ms.map_or("NO (stock differs)".to_owned(), |ms| format!(
            "{ms} ms after the last sale"
        )),
    );
    if !outages.is_empty() {
        println!(
            "{} reconnects over {} hubs: back online after p50 {:.1} ms, p99 {:.1} ms",
            outages.len(),
            hub.count(),
            percentile(&mut outages.clone(), 0.5),
            percentile(&mut outages.clone(), 0.99),
        );
    }
    let output = json!({
        "terminals": args.terminals,
        "sales": total_sales,
        "skus": args.skus,
        "sales_per_s": sales_per_s.round(),
        "converge_ms": converge_ms,
        "propagation_p50_ms": round1(percentile(&mut propagation, 0.5)),
        "propagation_p99_ms": round1(percentile(&mut propagation, 0.99)),
        "oversold": oversold,
        "lost": lost,
        "confirmed": confirmed,
        "refused": refused,
        "hubs": hub.count(),
        "reconnects": outages.len(),
        "reconnect_p50_ms": round1(percentile(&mut outages, 0.5)),
        "reconnect_p99_ms": round1(percentile(&mut outages, 0.99)),
        "reconnect_samples": outages.len(),
    });
    if args.json {
        println!("{output}");
    }
    Ok(oversold == 0 && lost == 0 && converge_ms.is_some())
}

fn device(
    sync_urls: &[String],
    store_id: &StoreId,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Client> {
    let config = SyncConfig::with_hubs(sync_urls)?;
    let store = Replica::open(
        &dir.join(format!("{name}.db")),
        DeviceId::new(name)?,
        store_id.clone(),
    )?;
    let client = Client::new(store, config);
    client.subscribe(&DocSetId::store(store_id))?;
    client.start();
    Ok(client)
}

/// Notes when each order record reaches the back office.
fn watch_orders(
    office: &Client,
    committed: Sightings,
    propagation: Arc<Mutex<Vec<f64>>>,
) -> tokio::task::JoinHandle<()> {
    let mut notices = office.notices();
    tokio::spawn(async move {
        loop {
            match notices.recv().await {
                Ok(Notice::RemoteChanges { docs }) => {
                    let seen = Instant::now();
                    let committed = committed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let mut latencies = propagation
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    for doc in docs {
                        if let Some((_, order_id)) = doc.as_str().split_once("/rec/order/")
                            && let Some(at) = committed.get(order_id)
                        {
                            latencies.push(seen.saturating_duration_since(*at).as_secs_f64() * 1e3);
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "back office notices lagged; those orders are not timed"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// Notes how long each of a till's outages lasted (drop to answered hello).
fn watch_reconnects(till: &Client, outages: Arc<Mutex<Vec<f64>>>) -> tokio::task::JoinHandle<()> {
    let mut notices = till.notices();
    tokio::spawn(async move {
        loop {
            match notices.recv().await {
                Ok(Notice::Reconnected { outage_ms, .. }) => outages
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(outage_ms as f64),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "till notices lagged; a reconnect may be untimed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// One till's selling loop; returns its recorded sales and how many sales
/// the till refused itself (a SKU it knows to be sold out).
fn sell(
    till: &Client,
    number: u64,
    sales: u32,
    skus: &[Sku],
    committed: &Sightings,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<(OpId, CheckoutRequest)>, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(number);
    let currency = Currency::new("EUR")?;
    let mut recorded = Vec::with_capacity(sales as usize);
    let mut refused_locally = 0;
    let device = till.replica().device().clone();
    for n in 0..sales {
        let count = rng.random_range(1..=3);
        let picked: Vec<&Sku> = skus.choose_multiple(&mut rng, count).collect();
        let request = CheckoutRequest {
            order_id: format!("{device}-{n:06}").parse()?,
            idempotency_key: None,
            lines: picked
                .into_iter()
                .map(|sku| OrderLine {
                    sku: sku.clone(),
                    quantity: rng.random_range(1..=2),
                    unit_price_minor: 499,
                })
                .collect(),
            currency,
            payment_ref: format!("card-{device}-{n}").parse()?,
            channel: Channel::Pos,
        };
        match till.checkout(&request) {
            Ok(receipt) => {
                committed
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(request.order_id.to_string(), Instant::now());
                recorded.push((receipt.op, request));
                bar.inc(1);
            }
            Err(omnisync_core::retail::RetailError::Blocked(_)) => refused_locally += 1,
            Err(error) => bail!("{device}: checkout failed: {error}"),
        }
    }
    Ok((recorded, refused_locally))
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
