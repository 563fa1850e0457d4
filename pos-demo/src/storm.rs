//! `pos-demo checkout-storm`: many clients checking out one unit of a random
//! SKU each, every SKU in strong mode, so the hub decides every checkout.
//!
//! Clients speak the sync protocol directly (the sans-I/O `ClientSession`
//! over a WebSocket) with a window of checkouts in flight, like a web shop's
//! checkout service would: the benchmark measures the hub deciding, not the
//! load generator's disk. A checkout's latency runs from the moment its
//! intent is handed to the connection to the moment its decision arrives.
//! `oversold` is counted from the data: after the storm a back-office
//! device reads every SKU's stock as the hub published it and compares it
//! with the confirmations the clients received. With `--hub ws://A,ws://B`
//! the clients are spread over the hubs round-robin (a client does not
//! reconnect: a dropped connection fails the run).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::protocol::device_session::{ClientEvent, ClientIdentity, ClientSession};
use omnisync_core::protocol::message::{AckOutcome, Credentials, Op, OpBody};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{
    CheckoutIntent, Decision, Intent, IntentLine, LineSource, OfflinePolicy, Refusal, StockCommand,
    StockPolicy,
};
use omnisync_core::{DeviceId, DocSetId, OpId, Replica, ReplicaId, StoreId, now_ms};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::hubref::HubRef;
use crate::report::percentile;

/// Checkouts one client keeps in flight.
const WINDOW: usize = 256;
/// How long the storm may take before the run is declared stuck.
const STORM_TIMEOUT: Duration = Duration::from_secs(600);
/// Checkouts in the one-commit-per-checkout comparison run (it is slow by
/// design; a smaller run gives the same rate).
const BASELINE_CHECKOUTS_MAX: u32 = 20_000;

#[derive(clap::Args)]
pub struct StormArgs {
    /// Concurrent checkout clients.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    clients: u32,
    /// Checkout attempts in total.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    checkouts: u32,
    /// SKUs on sale.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    skus: u32,
    /// Units of stock per SKU.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    stock: u32,
    /// Hubs to run against (ws://HOST:PORT, several separated by commas:
    /// clients are spread over them); without it an embedded hub.
    #[arg(long)]
    hub: Option<String>,
    /// Skip the one-commit-per-checkout comparison run.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// What one storm measured.
struct StormResult {
    attempts: u64,
    confirmed: u64,
    rejected: u64,
    other: u64,
    seconds: f64,
    latencies_ms: Vec<f64>,
    oversold: u64,
    /// Σ over SKUs of min(attempts, stock): what must be confirmed.
    expected_confirmed: u64,
}

pub async fn run(args: StormArgs) -> anyhow::Result<bool> {
    let hub = HubRef::open(args.hub.as_deref()).await?;
    println!(
        "checkout storm: {} clients, {} checkouts over {} SKUs with {} units each, against {}",
        args.clients,
        args.checkouts,
        args.skus,
        args.stock,
        hub.describe()
    );
    let result = storm(&hub, &args, args.checkouts).await;
    let hubs = hub.count();
    hub.stop().await?;
    let mut result = result?;
    let rate = result.confirmed.saturating_add(result.rejected) as f64 / result.seconds;
    println!(
        "group commit: {} decided in {:.2} s = {:.0} checkouts/s; {} confirmed, {} rejected (out of stock), oversold {}",
        result.confirmed + result.rejected,
        result.seconds,
        rate,
        result.confirmed,
        result.rejected,
        result.oversold
    );
    let baseline = if args.no_baseline {
        None
    } else {
        let checkouts = args.checkouts.min(BASELINE_CHECKOUTS_MAX);
        let hub = HubRef::open_with_group_ops_max(1).await?;
        let outcome = storm(&hub, &args, checkouts).await;
        hub.stop().await?;
        let outcome = outcome?;
        let rate = outcome.confirmed.saturating_add(outcome.rejected) as f64 / outcome.seconds;
        println!(
            "one commit per checkout (embedded hub, {checkouts} checkouts): {rate:.0} checkouts/s"
        );
        Some(rate)
    };
    let complete =
        result.confirmed == result.expected_confirmed && result.other == 0 && result.oversold == 0;
    let output = json!({
        "clients": args.clients,
        "hubs": hubs,
        "attempts": result.attempts,
        "confirmed": result.confirmed,
        "rejected": result.rejected,
        "checkouts_per_s": rate.round(),
        "p50_ms": round2(percentile(&mut result.latencies_ms, 0.5)),
        "p99_ms": round2(percentile(&mut result.latencies_ms, 0.99)),
        "oversold": result.oversold,
        "skus": args.skus,
        "stock_per_sku": args.stock,
        "one_commit_per_checkout_per_s": baseline.map(f64::round),
        "ratio": baseline.map(|base| (rate / base.max(1.0) * 10.0).round() / 10.0),
    });
    if !complete {
        println!(
            "FAILED: expected {} confirmed (per SKU, its attempts or its stock), got {}; {} undecided or other; oversold {}",
            result.expected_confirmed, result.confirmed, result.other, result.oversold
        );
    }
    if args.json {
        println!("{output}");
    }
    Ok(complete)
}

async fn storm(hub: &HubRef, args: &StormArgs, checkouts: u32) -> anyhow::Result<StormResult> {
    // A store of its own per run, so runs against one external hub never mix.
    let store_id = StoreId::new(format!("storm-{}-{}", std::process::id(), now_ms()))?;
    let skus: Vec<Sku> = (0..args.skus)
        .map(|n| Sku::new(format!("sku-{n:05}")))
        .collect::<Result<_, _>>()?;
    let office_dir = tempfile::tempdir()?;
    let office = back_office(
        &hub.sync_urls_for(0),
        &store_id,
        &office_dir,
        &skus,
        args.stock,
    )
    .await?;

    let bar = crate::report::progress(u64::from(checkouts), "checkouts decided");
    let per_client = checkouts / args.clients;
    let extra = checkouts % args.clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let count = per_client + u32::from(client < extra);
        let url = hub
            .sync_urls_for(client as usize)
            .into_iter()
            .next()
            .context("no hub to connect to")?;
        let store_id = store_id.clone();
        let skus = skus.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            checkout_client(&url, &store_id, client, count, &skus, &bar).await
        }));
    }
    let mut result = StormResult {
        attempts: u64::from(checkouts),
        confirmed: 0,
        rejected: 0,
        other: 0,
        seconds: 0.0,
        latencies_ms: Vec::with_capacity(checkouts as usize),
        oversold: 0,
        expected_confirmed: 0,
    };
    let mut confirmed_by_sku: HashMap<Sku, u64> = HashMap::new();
    let mut attempted_by_sku: HashMap<Sku, u64> = HashMap::new();
    for task in tasks {
        let outcome = tokio::time::timeout(STORM_TIMEOUT, task)
            .await
            .context("the storm did not finish in time")???;
        result.confirmed += outcome.confirmed;
        result.rejected += outcome.rejected;
        result.other += outcome.other;
        result.latencies_ms.extend(outcome.latencies_ms);
        for (sku, units) in outcome.confirmed_by_sku {
            *confirmed_by_sku.entry(sku).or_default() += units;
        }
        for (sku, units) in outcome.attempted_by_sku {
            *attempted_by_sku.entry(sku).or_default() += units;
        }
    }
    result.expected_confirmed = attempted_by_sku
        .values()
        .map(|attempts| (*attempts).min(u64::from(args.stock)))
        .sum();
    result.seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Count oversold units from the stock the hub published.
    office
        .wait_for(Duration::from_secs(60), "the final stock", |status| {
            status.caught_up && status.pending == 0
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut oversold = 0;
        let mut settled = true;
        for sku in &skus {
            let sold = confirmed_by_sku.get(sku).copied().unwrap_or(0);
            oversold += sold.saturating_sub(u64::from(args.stock));
            let on_hand = office
                .replica()
                .stock(&store_id, sku)?
                .map(|view| view.on_hand);
            let expected = u64::from(args.stock).saturating_sub(sold);
            if on_hand != Some(expected) {
                settled = false;
                if sold <= u64::from(args.stock)
                    && on_hand.is_some_and(|on_hand| on_hand < expected)
                {
                    // The hub sold units nobody was told about.
                    oversold += expected - on_hand.unwrap_or(0);
                }
            }
        }
        if settled || Instant::now() > deadline {
            if !settled {
                println!("warning: the published stock does not match the confirmations");
                result.other += 1;
            }
            result.oversold = oversold;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    office.stop().await;
    Ok(result)
}

/// The back office: puts every SKU in strong mode, receives the stock, and
/// follows the store's published stock.
async fn back_office(
    sync_urls: &[String],
    store_id: &StoreId,
    dir: &tempfile::TempDir,
    skus: &[Sku],
    stock: u32,
) -> anyhow::Result<Client> {
    let store = Replica::open(
        &dir.path().join("office.db"),
        DeviceId::new("back-office")?,
        store_id.clone(),
    )?;
    let office = Client::new(store, SyncConfig::with_hubs(sync_urls)?);
    office.subscribe(&DocSetId::store(store_id))?;
    office.start();
    for sku in skus {
        office.write(|db| {
            db.stock_command(
                StockCommand::SetPolicy {
                    sku: sku.clone(),
                    policy: StockPolicy {
                        strong_at_or_below: u64::MAX,
                        offline: OfflinePolicy::Block,
                    },
                },
                now_ms(),
            )?;
            db.stock_command(
                StockCommand::Receive {
                    key: format!("delivery-{sku}").parse()?,
                    sku: sku.clone(),
                    quantity: u64::from(stock),
                },
                now_ms(),
            )
        })?;
    }
    office
        .wait_for(Duration::from_secs(120), "stock received", |status| {
            status.pending == 0
                && status.caught_up
                && status.link == omnisync_core::client::Link::Online
        })
        .await?;
    Ok(office)
}

struct ClientOutcome {
    confirmed: u64,
    rejected: u64,
    other: u64,
    latencies_ms: Vec<f64>,
    confirmed_by_sku: HashMap<Sku, u64>,
    attempted_by_sku: HashMap<Sku, u64>,
}

async fn checkout_client(
    url: &str,
    store_id: &StoreId,
    number: u32,
    count: u32,
    skus: &[Sku],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<ClientOutcome> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("client {number} connecting to {url}"))?;
    let replica = ReplicaId::random();
    let identity = ClientIdentity {
        device: DeviceId::new(format!("web-checkout-{number}"))?,
        store: store_id.clone(),
        replica,
        credentials: Credentials::default(),
        agent: "pos-demo checkout-storm".into(),
    };
    let mut session = ClientSession::new(identity, Vec::new(), None, now_ms());
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(number));
    let currency = Currency::new("EUR")?;
    let mut next_seq = 1u64;
    let mut sent_at: HashMap<u64, (Instant, Sku)> = HashMap::new();
    let mut outcome = ClientOutcome {
        confirmed: 0,
        rejected: 0,
        other: 0,
        latencies_ms: Vec::with_capacity(count as usize),
        confirmed_by_sku: HashMap::new(),
        attempted_by_sku: HashMap::new(),
    };
    let mut decided = 0u32;
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Acks(acks) => {
                    for ack in acks {
                        let Some((at, sku)) = sent_at.remove(&ack.op.seq) else {
                            continue;
                        };
                        decided += 1;
                        bar.inc(1);
                        outcome.latencies_ms.push(at.elapsed().as_secs_f64() * 1e3);
                        match ack.outcome {
                            AckOutcome::Decided(Decision::Confirmed { .. }) => {
                                outcome.confirmed += 1;
                                *outcome.confirmed_by_sku.entry(sku).or_default() += 1;
                            }
                            AckOutcome::Decided(Decision::Refused(Refusal::OutOfStock {
                                ..
                            })) => outcome.rejected += 1,
                            other => {
                                tracing::warn!(?other, "unexpected answer to a checkout");
                                outcome.other += 1;
                            }
                        }
                    }
                }
                ClientEvent::Failed(error) => {
                    bail!(
                        "client {number}: the hub closed the session: {}",
                        error.detail
                    )
                }
                _ => {}
            }
        }
        if decided == count {
            break;
        }
        // Top the window up.
        if session.is_ready() && next_seq <= u64::from(count) && sent_at.len() < WINDOW {
            let room = (WINDOW - sent_at.len()).min((u64::from(count) + 1 - next_seq) as usize);
            let mut ops = Vec::with_capacity(room);
            for _ in 0..room {
                let sku = skus[rng.random_range(0..skus.len())].clone();
                let order_id = format!("c{number}-{next_seq}");
                ops.push(Op {
                    id: OpId {
                        replica,
                        seq: next_seq,
                    },
                    created_ms: now_ms(),
                    body: OpBody::Intent(Intent::Checkout(CheckoutIntent {
                        order_id: order_id.parse()?,
                        idempotency_key: order_id.parse()?,
                        lines: vec![IntentLine {
                            sku: sku.clone(),
                            quantity: 1,
                            unit_price_minor: 999,
                            source: LineSource::Hub,
                        }],
                        currency,
                        payment_ref: format!("psp-{number}-{next_seq}").parse()?,
                        channel: Channel::Web,
                    })),
                });
                *outcome.attempted_by_sku.entry(sku.clone()).or_default() += 1;
                sent_at.insert(next_seq, (Instant::now(), sku));
                next_seq += 1;
            }
            session.handle_local_ops(ops);
        }
        while let Some(frame) = session.poll_transmit() {
            socket.feed(Message::binary(frame)).await?;
        }
        socket.flush().await?;
        match socket.next().await {
            Some(Ok(Message::Binary(frame))) => session.handle_frame(&frame, now_ms())?,
            Some(Ok(Message::Close(frame))) => bail!("client {number}: hub closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("client {number}: {error}"),
            None => bail!("client {number}: connection ended"),
        }
    }
    let _ = socket.close(None).await;
    Ok(outcome)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
