//! The `omnisync-hub` binary: run a regional hub from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use omnisync_hub::{Hub, HubConfig};

/// omnisync regional hub.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sync endpoint, health, metrics and admin reads.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Directory for the hub's database.
        #[arg(long, default_value = "./omnisync-data")]
        data_dir: PathBuf,
        /// Name of this hub in logs and handshakes.
        #[arg(long, default_value = "hub")]
        hub_id: String,
        /// Most ops per durable commit; 1 commits every op on its own.
        #[arg(long, default_value_t = omnisync_hub::committer::GROUP_OPS_MAX as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        group_ops_max: u32,
        /// How far (in basis points, 100 = 1%) a checkout's seen price may be
        /// from the price in force before the hub refuses it.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        price_tolerance_bp: u32,
    },
    /// Import products, prices and stock from a CSV or JSON Lines file into a
    /// store's documents (the hub must not be running on the directory).
    ImportCatalog {
        /// The file (.csv with a header row, or .jsonl).
        file: PathBuf,
        /// The store the catalog belongs to.
        #[arg(long)]
        store: String,
        /// Directory of the hub's database.
        #[arg(long, default_value = "./omnisync-data")]
        data_dir: PathBuf,
        /// Currency for rows that name none.
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                data_dir,
                hub_id,
                group_ops_max,
                price_tolerance_bp,
            } => {
                let config = HubConfig {
                    listen,
                    data_dir,
                    hub_id,
                    group_ops_max: group_ops_max as usize,
                    price_tolerance_bp,
                };
                let hub = Hub::start(config).await?;
                println!(
                    "omnisync-hub listening on {} (sync at {})",
                    hub.address(),
                    hub.sync_url()
                );
                wait_for_signal().await?;
                tracing::info!("shutting down: closing connections and flushing commits");
                hub.stop().await?;
                tracing::info!("hub stopped cleanly");
                Ok(())
            }
            Command::ImportCatalog {
                file,
                store,
                data_dir,
                currency,
            } => {
                let store = omnisync_core::StoreId::new(store).context("--store")?;
                let currency =
                    omnisync_core::domain::Currency::new(&currency).context("--currency")?;
                let started = std::time::Instant::now();
                let report = tokio::task::spawn_blocking(move || {
                    omnisync_hub::import::import_file(&data_dir, &store, &file, None, currency)
                })
                .await??;
                println!(
                    "imported {} products into {} documents in {:.1} s (log head {})",
                    report.products,
                    report.documents,
                    started.elapsed().as_secs_f64(),
                    report.head_seq
                );
                if report.rejected_count > 0 {
                    println!("rejected {} rows:", report.rejected_count);
                    for row in &report.rejected {
                        println!("  line {}: {}", row.line, row.reason);
                    }
                    if report.rejected_count > report.rejected.len() as u64 {
                        println!(
                            "  ... and {} more",
                            report.rejected_count - report.rejected.len() as u64
                        );
                    }
                }
                Ok(())
            }
        }
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
