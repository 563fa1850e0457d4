//! Failover between hub processes on one PostgreSQL database: two real
//! `omnisync-hub serve --database` processes, a store's tills selling
//! through both (half given A then B, half B then A) and a back office
//! receiving stock; hub A is SIGKILLed mid-run. The tills of A must be
//! online again (at B) within 3 s, and the database — not the devices —
//! must show no sale lost and none oversold: every checkout any till
//! recorded has its decision stored once, each SKU's published stock is
//! its received units minus the units the stored decisions confirmed, and
//! no SKU confirmed more than it received.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::client::{Client, Link, Notice};
use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{Decision, StockCommand};
use omnisync_core::vocab::record::{Record, stock_record_doc};
use omnisync_core::{OpId, StoreId};
use omnisync_hub::pg_cluster::PgCluster;
use omnisync_hub::storage::postgres::{PgReader, PgUrl};
use omnisync_hub_engine::log::HubLogRead;
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, device_with_hubs, init_logs};
use rand::{Rng, SeedableRng};

const STORE: &str = "pg-failover";
const TILLS: usize = 6;
const SKUS: usize = 12;
/// Every third SKU is low: the tills compete for it at the hub.
const STOCK_LOW: u64 = 6;
const STOCK_HIGH: u64 = 100_000;
/// How long a till may take to be online again after its hub was killed.
const RECONNECT_DEADLINE_MS: u64 = 3_000;
/// Selling before and after the kill.
const SELLING: Duration = Duration::from_millis(2_500);

fn sku(n: usize) -> Sku {
    Sku::new(format!("sku-{n:03}")).expect("a valid SKU")
}

fn initial(n: usize) -> u64 {
    if n.is_multiple_of(3) {
        STOCK_LOW
    } else {
        STOCK_HIGH
    }
}

/// A till's selling loop until `stop`: returns its checkouts.
fn sell(
    till: Client,
    number: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(OpId, CheckoutRequest)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(number);
    let currency = Currency::new("EUR")?;
    let device = till.replica().device().clone();
    let mut sales = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let request = CheckoutRequest {
            order_id: format!("{device}-{n:06}").parse()?,
            idempotency_key: None,
            lines: vec![OrderLine {
                sku: sku(rng.random_range(0..SKUS)),
                quantity: rng.random_range(1..=2),
                unit_price_minor: 499,
            }],
            currency,
            payment_ref: format!("card-{device}-{n}").parse()?,
            channel: Channel::Pos,
        };
        match till.checkout(&request) {
            Ok(receipt) => sales.push((receipt.op, request)),
            Err(omnisync_core::retail::RetailError::Blocked(_)) => {}
            Err(error) => anyhow::bail!("{device}: checkout failed: {error}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(sales)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_process_killed_mid_run_loses_and_oversells_nothing() -> anyhow::Result<()> {
    init_logs();
    let binary = hub_binary()?;
    let cluster: Arc<PgCluster> = PgCluster::shared().map_err(anyhow::Error::msg)?;
    let database = cluster
        .create_database("failover")
        .map_err(anyhow::Error::msg)?;
    let mut hub_a = HubProcess::start_postgres(&binary, free_port()?, &database).await?;
    let hub_b = HubProcess::start_postgres(&binary, free_port()?, &database).await?;
    let (url_a, url_b) = (hub_a.sync_url(), hub_b.sync_url());
    let store = StoreId::new(STORE)?;

    // The back office (at B) receives the stock.
    let office = device_with_hubs(&[url_b.clone(), url_a.clone()], "back-office", STORE)?;
    office.client.write(|db| -> anyhow::Result<()> {
        for n in 0..SKUS {
            db.stock_command(
                StockCommand::Receive {
                    key: format!("opening-{n}").parse()?,
                    sku: sku(n),
                    quantity: initial(n),
                },
                omnisync_core::now_ms(),
            )?;
        }
        Ok(())
    })?;
    office.client.wait_synced(SYNC_TIMEOUT).await?;

    // Tills on both hubs, each given the other as its second address.
    let tills: Vec<TestDevice> = (0..TILLS)
        .map(|n| {
            let hubs = if n.is_multiple_of(2) {
                [url_a.clone(), url_b.clone()]
            } else {
                [url_b.clone(), url_a.clone()]
            };
            device_with_hubs(&hubs, &format!("till-{n}"), STORE)
        })
        .collect::<Result<_, _>>()?;
    for till in &tills {
        till.client
            .wait_for(SYNC_TIMEOUT, "the store's stock", |status| {
                status.link == Link::Online && status.caught_up
            })
            .await?;
    }
    let outages = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for till in tills.iter().step_by(2) {
        let mut notices = till.client.notices();
        let outages = outages.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(notice) = notices.recv().await {
                if let Notice::Reconnected { hub, outage_ms } = notice {
                    outages.lock().expect("outages").push((hub, outage_ms));
                }
            }
        }));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sellers: Vec<_> = tills
        .iter()
        .enumerate()
        .map(|(n, till)| {
            let (client, stop) = (till.client.clone(), stop.clone());
            tokio::task::spawn_blocking(move || sell(client, n as u64, stop))
        })
        .collect();
    tokio::time::sleep(SELLING).await;
    hub_a.kill()?;
    let killed = Instant::now();
    tokio::time::sleep(SELLING).await;
    stop.store(true, Ordering::Relaxed);
    let mut recorded = Vec::new();
    for seller in sellers {
        recorded.extend(seller.await??);
    }
    for till in &tills {
        till.client
            .wait_for(SYNC_TIMEOUT, "every sale decided", |status| {
                status.pending == 0
            })
            .await
            .with_context(|| format!("undecided sales: {:?}", till.client.status()))?;
    }

    // Every till of hub A came back, at B, within the deadline.
    let outages = outages.lock().expect("outages").clone();
    assert_eq!(
        outages.len(),
        TILLS.div_ceil(2),
        "one reconnection per till of hub A: {outages:?}"
    );
    for (hub, outage_ms) in &outages {
        assert_eq!(hub, &url_b);
        assert!(
            *outage_ms <= RECONNECT_DEADLINE_MS,
            "a till was offline {outage_ms} ms"
        );
    }
    eprintln!(
        "failover on PostgreSQL: {} sales, outages {:?} ms, all back {:?} after the kill",
        recorded.len(),
        outages.iter().map(|(_, ms)| ms).collect::<Vec<_>>(),
        killed.elapsed()
    );

    // The database's word: every sale decided once, none oversold.
    let reader = PgReader::new(&PgUrl::parse(&database).map_err(anyhow::Error::msg)?);
    let mut confirmed: HashMap<Sku, u64> = HashMap::new();
    let (mut lost, mut refused) = (0usize, 0usize);
    for (op, request) in &recorded {
        match reader.outcome(op)? {
            Some(AckOutcome::Decided(Decision::Confirmed { .. })) => {
                for line in &request.lines {
                    *confirmed.entry(line.sku.clone()).or_default() += line.quantity;
                }
            }
            Some(AckOutcome::Decided(Decision::Refused(_))) => refused += 1,
            other => {
                eprintln!("sale {op}: the database holds {other:?}");
                lost += 1;
            }
        }
    }
    assert_eq!(lost, 0, "sales without a stored decision");
    assert!(recorded.len() > 100, "only {} sales", recorded.len());
    assert!(
        refused > 0,
        "the low SKUs ran out: the strong path was exercised"
    );
    let mut oversold = 0;
    for n in 0..SKUS {
        let sold = confirmed.get(&sku(n)).copied().unwrap_or(0);
        oversold += sold.saturating_sub(initial(n));
        let versions = reader.doc_changes(&stock_record_doc(&store, &sku(n)))?;
        let newest = versions.last().context("a SKU without a stock record")?;
        let Record::Stock(stock) = Record::decode(newest)? else {
            anyhow::bail!("{} does not hold a stock record", sku(n));
        };
        assert_eq!(
            stock.on_hand,
            initial(n) - sold.min(initial(n)),
            "{}: the hub's stock against its confirmed sales",
            sku(n)
        );
    }
    assert_eq!(oversold, 0);
    for watcher in watchers {
        watcher.abort();
    }
    for till in &tills {
        till.client.stop().await;
    }
    office.client.stop().await;
    drop(hub_b);
    Ok(())
}
