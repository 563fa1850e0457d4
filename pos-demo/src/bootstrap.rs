//! `pos-demo bootstrap`: how long a fresh terminal takes to sync a large
//! catalog, and how much memory it needs.
//!
//! The parent imports a generated catalog into an embedded hub (or uses a
//! running hub that already has one), then starts a fresh terminal in a child
//! process, so the peak RSS reported is the terminal's alone. The child
//! syncs, checks that every product is queryable, times local product
//! queries, and prints its figures as JSON.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::vocab::goods::{Currency, Sku};
use omnisync_core::{DeviceId, DocSetId, Replica, StoreId};
use omnisync_hub::import::{CatalogRow, import_rows};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::percentile;

/// Product queries timed after the bootstrap.
const QUERIES: usize = 1500;
/// How long the terminal may take before the run fails.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of `pos-demo bootstrap`.
#[derive(clap::Args)]
pub struct BootstrapArgs {
    /// Products in the catalog.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    products: u32,
    /// A running hub whose store already holds at least `--products` products.
    #[arg(long)]
    hub: Option<String>,
    /// The store to bootstrap.
    #[arg(long, default_value = "bootstrap-01")]
    store: String,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Options of the hidden `pos-demo bootstrap-terminal` (the child process).
#[derive(clap::Args)]
pub struct TerminalArgs {
    #[arg(long)]
    hub: String,
    #[arg(long)]
    store: String,
    #[arg(long)]
    products: u32,
}

/// A generated product row.
pub fn product_row(n: u32) -> CatalogRow {
    const WORDS: [&str; 8] = [
        "espresso",
        "oat",
        "croissant",
        "mug",
        "filter",
        "chocolate",
        "tea",
        "honey",
    ];
    CatalogRow {
        sku: format!("sku-{n:07}"),
        name: format!(
            "{} {} {n}",
            WORDS[(n % 8) as usize],
            WORDS[((n / 8) % 8) as usize]
        ),
        category: Some(format!("cat-{}", n % 200)),
        barcode: Some(format!("40{n:011}")),
        brand: Some(format!("brand-{}", n % 50)),
        description: Some("A product made for the bootstrap benchmark.".into()),
        price_minor: Some(i64::from(100 + n % 5000)),
        currency: None,
        stock: Some(i64::from(n % 300)),
    }
}

/// Runs the benchmark.
pub async fn run(args: BootstrapArgs) -> anyhow::Result<bool> {
    let store = StoreId::new(args.store.clone()).context("--store")?;
    let mut embedded = None;
    let url = match &args.hub {
        Some(url) => url.clone(),
        None => {
            let data = tempfile::tempdir()?;
            let started = Instant::now();
            let rows: Vec<_> = (0..args.products)
                .map(|n| (u64::from(n) + 1, Ok(product_row(n))))
                .collect();
            let data_dir = data.path().to_path_buf();
            let import_store = store.clone();
            let report = tokio::task::spawn_blocking(move || {
                import_rows(
                    &data_dir,
                    &import_store,
                    rows,
                    Currency::new("EUR").expect("EUR"),
                    |_| {},
                )
            })
            .await??;
            println!(
                "hub: imported {} products into {} documents in {:.1} s",
                report.products,
                report.documents,
                started.elapsed().as_secs_f64()
            );
            let config =
                omnisync_hub::HubConfig::new("127.0.0.1:0".parse()?, data.path().to_path_buf());
            let hub = omnisync_hub::Hub::start(config).await?;
            let url = hub.sync_url();
            embedded = Some((hub, data));
            url
        }
    };
    let exe = std::env::current_exe().context("locating pos-demo")?;
    let output = tokio::process::Command::new(exe)
        .args([
            "bootstrap-terminal",
            "--hub",
            &url,
            "--store",
            store.as_str(),
            "--products",
            &args.products.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting the terminal process")?
        .wait_with_output()
        .await
        .context("running the terminal process")?;
    if let Some((hub, _data)) = embedded {
        hub.stop().await?;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the terminal process failed ({}): {stdout}", output.status);
    }
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .context("reading the terminal's figures")?;
    println!(
        "fresh terminal: {} products in {} s, peak RSS {} MB; product query p50 {} ms, p99 {} ms",
        result["products"],
        result["seconds"],
        result["peak_rss_mb"],
        result["query_p50_ms"],
        result["query_p99_ms"]
    );
    if args.json {
        println!("{result}");
    }
    Ok(true)
}

/// The child: a fresh terminal that syncs the catalog and reports.
pub async fn terminal(args: TerminalArgs) -> anyhow::Result<bool> {
    let store_id = StoreId::new(args.store).context("--store")?;
    let dir = tempfile::tempdir()?;
    let store = Replica::open(
        &dir.path().join("terminal.db"),
        DeviceId::new("fresh-till")?,
        store_id.clone(),
    )?;
    let client = Client::new(store, SyncConfig::new(args.hub));
    client.subscribe(&DocSetId::store(&store_id))?;
    let started = Instant::now();
    client.start();
    let deadline = started + BOOTSTRAP_TIMEOUT;
    loop {
        let status = client.status();
        if status.caught_up
            && client.replica().product_count(&store_id)? >= u64::from(args.products)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("bootstrap did not finish within {BOOTSTRAP_TIMEOUT:?} ({status:?})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    client.stop().await;
    if let Some(manifest) = client.replica().catalog_manifest(&store_id)? {
        eprintln!(
            "manifest: {} buckets, {} products in the last import",
            manifest.buckets, manifest.products
        );
    }
    let products = client.replica().product_count(&store_id)?;
    let mut by_kind = time_queries(&client.replica(), &store_id, args.products)?;
    let mut all: Vec<f64> = by_kind.iter().flatten().copied().collect();
    let (p50, p99) = (percentile(&mut all, 0.5), percentile(&mut all, 0.99));
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    let [by_sku, by_barcode, by_text] = &mut by_kind;
    let result = json!({
        "products": products,
        "seconds": (seconds * 100.0).round() / 100.0,
        "peak_rss_mb": peak_rss_mb()?,
        "query_p50_ms": (p50 * 1000.0).round() / 1000.0,
        "query_p99_ms": (p99 * 1000.0).round() / 1000.0,
        "query_by_sku_p99_ms": round(percentile(by_sku, 0.99)),
        "query_by_barcode_p99_ms": round(percentile(by_barcode, 0.99)),
        "query_by_text_p99_ms": round(percentile(by_text, 0.99)),
    });
    println!("{result}");
    Ok(true)
}

/// Times lookups by SKU, by barcode and by text, a third each; the samples
/// in ms, per kind in that order.
fn time_queries(
    store: &Replica,
    store_id: &StoreId,
    products: u32,
) -> anyhow::Result<[Vec<f64>; 3]> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut samples: [Vec<f64>; 3] = Default::default();
    for query in 0..QUERIES {
        let n = rng.random_range(0..products);
        let started = Instant::now();
        let found = match query % 3 {
            0 => store
                .product(store_id, &Sku::new(format!("sku-{n:07}"))?)?
                .is_some(),
            1 => !store
                .products_by_barcode(store_id, &format!("40{n:011}"))?
                .is_empty(),
            _ => !store
                .search_products(store_id, &product_row(n).name, 20)?
                .is_empty(),
        };
        samples[query % 3].push(started.elapsed().as_secs_f64() * 1e3);
        if !found {
            bail!("product {n} is not found by query {}", query % 3);
        }
    }
    Ok(samples)
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mb() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok((kb / 1024.0 * 10.0).round() / 10.0)
}
