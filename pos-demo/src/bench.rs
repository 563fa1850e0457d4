//! Benchmarks of the spine: local write latency, and hub ingest with group
//! commit against one commit per op, measured in the same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::retail::orders::{CheckoutRequest, Connectivity, OrderLine};
use omnisync_core::vocab::goods::{Channel, Sku};
use omnisync_core::{
    DeviceId, DocEdit, DocId, DocSetId, Durability, Edit, Replica, StoreId, Value,
};
use omnisync_hub::{Hub, HubConfig};
use serde_json::json;

use crate::report::{median, percentile};

/// Options of `pos-demo local-writes`.
#[derive(clap::Args)]
pub struct LocalWritesArgs {
    /// Cart edits to time.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    cart_edits: u32,
    /// Durable sales to time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    sales: u32,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Times cart edits (`Durability::AppCrash`) and sales (`Durability::Full`)
/// on a store file in a temporary directory.
pub async fn local_writes(args: LocalWritesArgs) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let mut store = Replica::open(
        &dir.path().join("bench.db"),
        DeviceId::new("bench")?,
        StoreId::new("s1")?,
    )?;
    let cart = DocId::new("customer.c-1/cart")?;
    let skus = 1000;
    let mut cart_ms = Vec::with_capacity(args.cart_edits as usize);
    for n in 0..args.cart_edits {
        let line = format!("line-{}", n % 50);
        let edit = DocEdit {
            doc: cart.clone(),
            edits: vec![Edit::put(
                &[&line, "quantity"],
                Value::Int(i64::from(n) + 1),
            )],
        };
        let started = Instant::now();
        store.commit_with(&[edit], omnisync_core::now_ms(), Durability::AppCrash)?;
        cart_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mut sale_ms = Vec::with_capacity(args.sales as usize);
    let currency = omnisync_core::vocab::goods::Currency::new("EUR")?;
    for n in 0..args.sales {
        // A checkout: the pending order, the intent in the op log and (for
        // lines the till's allowance covers) the allowance spent, in one
        // transaction with synchronous=FULL.
        let request = CheckoutRequest {
            order_id: format!("o-{n}").parse()?,
            idempotency_key: None,
            lines: vec![OrderLine {
                sku: Sku::new(format!("sku-{}", n % skus))?,
                quantity: 1,
                unit_price_minor: 499,
            }],
            currency,
            payment_ref: format!("card-{n}").parse()?,
            channel: Channel::Pos,
        };
        let started = Instant::now();
        store.checkout(&request, Connectivity::Online, omnisync_core::now_ms())?;
        sale_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let result = json!({
        "cart_edits": args.cart_edits,
        "cart_edit_p50_ms": round3(percentile(&mut cart_ms, 0.5)),
        "cart_edit_p99_ms": round3(percentile(&mut cart_ms, 0.99)),
        "sales": args.sales,
        "sale_p50_ms": round3(percentile(&mut sale_ms, 0.5)),
        "sale_p99_ms": round3(percentile(&mut sale_ms, 0.99)),
    });
    println!(
        "cart edit (survives app crash): p50 {} ms, p99 {} ms",
        result["cart_edit_p50_ms"], result["cart_edit_p99_ms"]
    );
    println!(
        "sale (survives power loss):     p50 {} ms, p99 {} ms",
        result["sale_p50_ms"], result["sale_p99_ms"]
    );
    if args.json {
        println!("{result}");
    }
    Ok(true)
}

/// Options of `pos-demo hub-ingest`.
#[derive(clap::Args)]
pub struct HubIngestArgs {
    /// Devices uploading at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    devices: u32,
    /// Ops each device uploads.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    ops_per_device: u32,
    /// Runs of each mode; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Devices record ops offline, then all connect at once; the time until the
/// hub has acknowledged every op gives acknowledged ops/s. Once with group
/// commit, once with one commit per op.
pub async fn hub_ingest(args: HubIngestArgs) -> anyhow::Result<bool> {
    let mut grouped = Vec::new();
    let mut single = Vec::new();
    for run in 0..args.runs {
        grouped.push(ingest_once(&args, omnisync_hub::committer::GROUP_OPS_MAX).await?);
        single.push(ingest_once(&args, 1).await?);
        println!(
            "run {}: group commit {:.0} ops/s, one commit per op {:.0} ops/s",
            run + 1,
            grouped[run as usize],
            single[run as usize]
        );
    }
    let grouped_median = median(&mut grouped);
    let single_median = median(&mut single);
    let result = json!({
        "devices": args.devices,
        "ops": u64::from(args.devices) * u64::from(args.ops_per_device),
        "runs": args.runs,
        "group_commit_ops_per_s": grouped_median.round(),
        "one_commit_per_op_ops_per_s": single_median.round(),
        "ratio": ((grouped_median / single_median.max(1.0)) * 10.0).round() / 10.0,
    });
    println!(
        "median: group commit {:.0} ops/s, one commit per op {:.0} ops/s ({}x)",
        grouped_median, single_median, result["ratio"]
    );
    if args.json {
        println!("{result}");
    }
    Ok(true)
}

async fn ingest_once(args: &HubIngestArgs, group_ops_max: usize) -> anyhow::Result<f64> {
    let data = tempfile::tempdir()?;
    let mut config = HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
    config.group_ops_max = group_ops_max;
    let hub = Hub::start(config).await?;
    let store_id = StoreId::new("s1")?;
    let mut devices = Vec::new();
    for n in 0..args.devices {
        let dir = tempfile::tempdir()?;
        let name = format!("dev-{n}");
        let mut store = Replica::open(
            &dir.path().join("d.db"),
            DeviceId::new(&name)?,
            store_id.clone(),
        )?;
        let doc = DocId::in_set(&DocSetId::store(&store_id), &format!("orders/{name}"))?;
        for op in 0..args.ops_per_device {
            let edit = DocEdit {
                doc: doc.clone(),
                edits: vec![Edit::put(&[&format!("o{op}")], Value::Int(1))],
            };
            // Relaxed durability: this measures the hub, not the device's fsync.
            store.commit_with(&[edit], omnisync_core::now_ms(), Durability::AppCrash)?;
        }
        let client = Client::new(store, SyncConfig::new(hub.sync_url()));
        client.set_online(false);
        client.start();
        devices.push((client, dir));
    }
    let started = Instant::now();
    for (client, _) in &devices {
        client.set_online(true);
    }
    for (client, _) in &devices {
        client
            .wait_for(Duration::from_secs(300), "uploads", |status| {
                status.pending == 0
            })
            .await
            .context("waiting for acknowledgements")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (client, _) in &devices {
        client.stop().await;
    }
    hub.stop().await?;
    Ok(f64::from(args.devices) * f64::from(args.ops_per_device) / elapsed)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
