//! `pos-demo`: the store demo, the cashier terminal and the benchmarks,
//! written against omnisync-core's public API the way an app would be.

mod bench;
mod bootstrap;
mod demo;
mod fanout;
mod fleet;
mod hubref;
mod report;
mod storm;
mod terminal;
mod week;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// omnisync POS demo and load generator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play a short store day on an embedded hub: three tills and a shopper's
    /// phone, one till offline for a while, a price change, convergence.
    Demo(demo::DemoArgs),
    /// Measure local write latency (cart edits and durable sales).
    LocalWrites(bench::LocalWritesArgs),
    /// Measure hub ingest: acknowledged ops/s with group commit against one
    /// commit per op, in the same run.
    HubIngest(bench::HubIngestArgs),
    /// Measure a fresh terminal's first sync of a large catalog (time, peak RSS,
    /// local query latency).
    Bootstrap(bootstrap::BootstrapArgs),
    /// Measure how fast a back-office price change becomes visible on every
    /// connected terminal.
    Fanout(fanout::FanoutArgs),
    /// Measure a store's fleet of tills selling at once: sales/s, sale to
    /// back-office propagation, convergence, oversold and lost sales.
    Fleet(fleet::FleetArgs),
    /// Measure checkouts decided by the hub per second (every SKU in strong
    /// mode), with one commit per checkout measured in the same run.
    CheckoutStorm(storm::StormArgs),
    /// Measure the hub's storage after a simulated week of a store's
    /// trading, keeping every change against compacting old ones.
    StoreWeek(week::StoreWeekArgs),
    /// The cashier's terminal UI for one till: find products, sell, see
    /// stock, sync and each checkout's lifecycle. Without --hub it starts an
    /// embedded hub with demo data.
    Terminal(terminal::TerminalArgs),
    /// The fresh terminal of `bootstrap`, run as a child process.
    #[command(hide = true)]
    BootstrapTerminal(bootstrap::TerminalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Terminal(args) => terminal::run(args).await,
            Command::LocalWrites(args) => bench::local_writes(args).await,
            Command::HubIngest(args) => bench::hub_ingest(args).await,
            Command::Bootstrap(args) => bootstrap::run(args).await,
            Command::Fanout(args) => fanout::run(args).await,
            Command::BootstrapTerminal(args) => bootstrap::terminal(args).await,
            Command::CheckoutStorm(args) => storm::run(args).await,
            Command::Fleet(args) => fleet::run(args).await,
            Command::StoreWeek(args) => week::run(args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
