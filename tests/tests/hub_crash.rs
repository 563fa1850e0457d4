//! Scenario (c): the real `omnisync-hub` *process* is killed with SIGKILL
//! while three terminals keep selling, then restarted on the same port and
//! data directory. No op the hub acknowledged before the kill may be lost,
//! none may be applied twice (ops whose ack died with the hub are re-sent by
//! their devices and must be answered from the outcome table), and the
//! terminals, which reconnect on their own, must converge.
//!
//! The hub binary is built from this workspace (see
//! `omnisync_tests::process::hub_binary`); the terminals are in-process
//! clients with their own SQLite files, each fed by a selling thread.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use omnisync_core::client::{Client, Link};
use omnisync_core::db::OpStatus;
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, OpId, StoreId, Value};
use omnisync_hub::storage::SqliteReader;
use omnisync_hub_engine::log::HubLogRead;
use omnisync_tests::audit::{self, CommittedOps};
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::{
    SYNC_TIMEOUT, TestDevice, device, http, init_logs, terminal, wait_converged, wait_until,
};

const STORE: &str = "s1";
const TILLS: usize = 3;
const SKUS: u64 = 5;
const STOCK_START: i64 = 100_000;
/// Pause between two sales of one till: fast enough that ops are always in
/// flight, slow enough that three tills leave the two cores some air.
const SALE_INTERVAL: Duration = Duration::from_millis(2);
/// Acknowledged ops each till must have before the hub is killed.
const ACKED_BEFORE_KILL_MIN: u64 = 20;
/// Sales each till records while the hub is down, and again after it is back.
const SALES_PER_PHASE_MIN: usize = 10;
/// Longest wait for an HTTP answer from the hub.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Three tills of one shop, each with a thread that keeps selling. Dropping
/// the shop stops the threads.
struct Shop {
    sellers: Vec<Seller>,
    stop: Arc<AtomicBool>,
    stock: DocId,
}

/// A till whose thread records sales until the shop stops it.
struct Seller {
    name: String,
    till: TestDevice,
    committed: Arc<Mutex<CommittedOps>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Shop {
    /// Opens the tills, has till 1 create the stock counters (as the back
    /// office would, before anyone sells), and starts selling once every
    /// till holds them.
    async fn open(url: &str) -> anyhow::Result<Shop> {
        let stock = DocId::new(format!("store.{STORE}/stock"))?;
        let tills: Vec<TestDevice> = (1..=TILLS)
            .map(|n| device(url, &format!("till-{n}"), STORE))
            .collect::<Result<_, _>>()?;
        let counters = (0..SKUS)
            .map(|n| Edit::put(&[&sku(n)], Value::Counter(STOCK_START)))
            .collect();
        let setup = tills[0].client.commit(&[DocEdit {
            doc: stock.clone(),
            edits: counters,
        }])?;
        for till in &tills {
            till.client.wait_synced(SYNC_TIMEOUT).await?;
        }
        // A till that caught up before the counters reached the hub is synced
        // but does not have them yet: wait until every till holds the same stock.
        let clients: Vec<&Client> = tills.iter().map(|till| &till.client).collect();
        wait_converged(&clients, std::slice::from_ref(&stock)).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut sellers = Vec::new();
        for (index, till) in tills.into_iter().enumerate() {
            let mut committed = CommittedOps::default();
            if index == 0 {
                committed.record(setup.seq, vec![stock.clone()]);
            }
            sellers.push(Seller::start(
                till,
                format!("till-{}", index + 1),
                stop.clone(),
                committed,
            )?);
        }
        Ok(Shop {
            sellers,
            stop,
            stock,
        })
    }

    /// Waits until the hub has acknowledged `min` ops of every till.
    async fn wait_acknowledged(&mut self, min: u64) -> anyhow::Result<()> {
        wait_until(SYNC_TIMEOUT, "acks from the hub", || {
            self.check_selling()?;
            for seller in &self.sellers {
                if seller
                    .client()
                    .replica()
                    .op_stats(omnisync_core::now_ms())?
                    .acknowledged
                    < min
                {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }

    /// Waits until every till has recorded `more` sales from now on.
    async fn wait_sales(&mut self, more: usize, what: &str) -> anyhow::Result<()> {
        let since: Vec<usize> = self.sellers.iter().map(Seller::committed_len).collect();
        wait_until(SYNC_TIMEOUT, what, || {
            self.check_selling()?;
            Ok(self
                .sellers
                .iter()
                .zip(&since)
                .all(|(seller, since)| seller.committed_len() >= since + more))
        })
        .await
    }

    /// Fails with a selling thread's error if one stopped on its own.
    fn check_selling(&mut self) -> anyhow::Result<()> {
        for seller in &mut self.sellers {
            if seller
                .thread
                .as_ref()
                .is_some_and(|thread| thread.is_finished())
            {
                seller.join()?;
                anyhow::bail!("{}: selling stopped on its own", seller.name);
            }
        }
        Ok(())
    }

    /// Stops selling and waits until every till has synced and all converged.
    async fn stop_and_sync(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for seller in &mut self.sellers {
            seller.join()?;
        }
        for seller in &self.sellers {
            seller
                .client()
                .wait_synced(SYNC_TIMEOUT)
                .await
                .with_context(|| format!("syncing {}", seller.name))?;
        }
        let mut docs = vec![self.stock.clone()];
        for seller in &self.sellers {
            docs.push(terminal::sales_doc(STORE, &seller.name)?);
        }
        let clients: Vec<&Client> = self.sellers.iter().map(Seller::client).collect();
        wait_converged(&clients, &docs).await
    }

    /// Per till, the seqs its store records as acknowledged.
    fn acknowledged_seqs(&self) -> anyhow::Result<Vec<BTreeSet<u64>>> {
        self.per_op(|store, op| {
            Ok(matches!(
                store.op_status(&op)?,
                Some(OpStatus::Acknowledged { .. })
            ))
        })
    }

    /// Per till, the seqs the hub's log holds an outcome for.
    fn ops_with_outcome(&self, reader: &dyn HubLogRead) -> anyhow::Result<Vec<BTreeSet<u64>>> {
        self.per_op(|_, op| Ok(reader.outcome(&op)?.is_some()))
    }

    /// Per till, the seqs of its ops for which `wanted` holds.
    fn per_op(
        &self,
        wanted: impl Fn(&omnisync_core::Replica, OpId) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Vec<BTreeSet<u64>>> {
        let mut all = Vec::new();
        for seller in &self.sellers {
            let store = seller.client().replica();
            let mut seqs = BTreeSet::new();
            for op in store.op_ids()? {
                if wanted(&store, op)? {
                    seqs.insert(op.seq);
                }
            }
            all.push(seqs);
        }
        Ok(all)
    }

    /// What each till committed.
    fn committed(&self) -> Vec<CommittedOps> {
        self.sellers
            .iter()
            .map(|seller| {
                seller
                    .committed
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            })
            .collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        // A failed assertion must not leave threads selling into the void.
        self.stop.store(true, Ordering::Relaxed);
        for seller in &mut self.sellers {
            let _ = seller.join();
        }
    }
}

impl Seller {
    /// Starts a thread that records a sale on `till` every [`SALE_INTERVAL`]
    /// until `stop` is set: the sale's amount in the till's sales document
    /// and one unit off a shared stock counter.
    fn start(
        till: TestDevice,
        name: String,
        stop: Arc<AtomicBool>,
        committed: CommittedOps,
    ) -> anyhow::Result<Self> {
        let committed = Arc::new(Mutex::new(committed));
        let log = committed.clone();
        let client = till.client.clone();
        let sales = terminal::sales_doc(STORE, &name)?;
        let stock = DocId::new(format!("store.{STORE}/stock"))?;
        let thread_name = name.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let mut sale = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sale += 1;
                let amount = Value::Int(terminal::sale_amount_minor(sale));
                let edits = [
                    DocEdit {
                        doc: sales.clone(),
                        edits: vec![Edit::put(&[&terminal::sale_key(sale)], amount)],
                    },
                    DocEdit {
                        doc: stock.clone(),
                        edits: vec![Edit::increment(&[&sku(sale)], -1)],
                    },
                ];
                let op = client
                    .commit(&edits)
                    .with_context(|| format!("{thread_name}: sale {sale}"))?;
                let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                log.record(op.seq, vec![sales.clone(), stock.clone()]);
                drop(log);
                std::thread::sleep(SALE_INTERVAL);
            }
            Ok(())
        });
        Ok(Seller {
            name,
            till,
            committed,
            thread: Some(thread),
        })
    }

    fn client(&self) -> &Client {
        &self.till.client
    }

    fn committed_len(&self) -> usize {
        self.committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ops
            .len()
    }

    /// Joins the selling thread (once `stop` is set) and returns its result.
    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("{}: selling thread panicked", self.name))?,
            None => Ok(()),
        }
    }
}

/// The stock counter a sale takes its unit from.
fn sku(sale: u64) -> String {
    format!("sku-{}", sale % SKUS)
}

/// Audits the hub's database file with a fresh reader: a gapless change log
/// holding every op of every till exactly once and nothing else, every op
/// acknowledged before the crash, and stock counters that took each sale once.
fn audit_hub_file(
    data_dir: &Path,
    shop: &Shop,
    acked_before_kill: &[BTreeSet<u64>],
) -> anyhow::Result<()> {
    let reader = SqliteReader::new(data_dir);
    let changes = audit::all_changes(&reader, &DocSetId::store(&StoreId::new(STORE)?))?;
    audit::assert_gapless(&changes)?;
    let mut sold_per_sku = vec![0i64; SKUS as usize];
    let mut change_total = 0;
    for ((seller, committed), acked) in shop
        .sellers
        .iter()
        .zip(shop.committed())
        .zip(acked_before_kill)
    {
        let (replica, ops, stats) = {
            let store = seller.client().replica();
            (
                store.replica(),
                store.op_ids()?,
                store.op_stats(omnisync_core::now_ms())?,
            )
        };
        let recorded: Vec<u64> = committed.ops.keys().copied().collect();
        let in_log: Vec<u64> = ops.iter().map(|op| op.seq).collect();
        assert_eq!(
            recorded, in_log,
            "{}: every op of the till was recorded",
            seller.name
        );
        assert_eq!(
            (stats.pending, stats.rejected),
            (0, 0),
            "{}: op log after sync: {stats:?}",
            seller.name
        );
        audit::assert_all_applied(&reader, replica, acked)?;
        audit::assert_exactly_once(&reader, &changes, replica, &committed)?;
        change_total += committed.change_count();
        let sales = committed
            .ops
            .values()
            .filter(|docs| docs.len() == 2)
            .count() as u64;
        for sale in 1..=sales {
            sold_per_sku[(sale % SKUS) as usize] += 1;
        }
    }
    assert_eq!(
        changes.len(),
        change_total,
        "the hub holds only the tills' changes"
    );

    // Every unit sold came off the stock exactly once, on every till and at the hub.
    let at_hub = omnisync_hub::load_doc(&reader, &shop.stock)?;
    let mut hub_heads: Vec<String> = at_hub
        .get_heads()
        .iter()
        .map(|head| head.to_string())
        .collect();
    hub_heads.sort();
    for seller in &shop.sellers {
        let mut store = seller.client().replica();
        assert_eq!(
            store.doc_heads(&shop.stock)?,
            hub_heads,
            "stock at {} and at the hub",
            seller.name
        );
        for (n, sold) in sold_per_sku.iter().enumerate() {
            let counter = store.get(&shop.stock, &[&sku(n as u64)])?;
            assert_eq!(
                counter,
                Some(Value::Counter(STOCK_START - sold)),
                "{} at {}",
                sku(n as u64),
                seller.name
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_mid_stream_loses_no_acknowledged_op_and_applies_none_twice()
-> anyhow::Result<()> {
    init_logs();
    let binary = tokio::task::spawn_blocking(hub_binary).await??;
    let data_dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut hub = HubProcess::start(&binary, port, data_dir.path()).await?;
    let mut shop = Shop::open(&hub.sync_url()).await?;

    // Sell until the hub has acknowledged a fair number of ops from every
    // till, then kill it while the tills keep selling; those sales stay pending.
    shop.wait_acknowledged(ACKED_BEFORE_KILL_MIN).await?;
    hub.kill()?;
    shop.wait_sales(SALES_PER_PHASE_MIN, "sales while the hub is down")
        .await?;
    // Taken while no hub runs, on purpose: every ack a till has recorded by
    // now came from the killed process (including acks that were still in
    // the till's socket buffer at the kill), and this is the largest such set.
    let acked_before_kill = shop.acknowledged_seqs()?;
    for seller in &shop.sellers {
        let stats = seller
            .client()
            .replica()
            .op_stats(omnisync_core::now_ms())?;
        assert!(
            stats.pending >= SALES_PER_PHASE_MIN as u64,
            "sales while the hub is down stay pending: {stats:?}"
        );
    }
    // What the killed hub left on disk: every acknowledged op, plus perhaps
    // some whose acks died with it.
    let durable_at_kill = shop.ops_with_outcome(&SqliteReader::new(data_dir.path()))?;
    for ((seller, acked), durable) in shop
        .sellers
        .iter()
        .zip(&acked_before_kill)
        .zip(&durable_at_kill)
    {
        let missing: Vec<_> = acked.difference(durable).collect();
        assert!(
            missing.is_empty(),
            "{}: acknowledged, then lost in the crash: {missing:?}",
            seller.name
        );
    }
    tracing::info!(
        acked = ?acked_before_kill.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        durable = ?durable_at_kill.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        "hub killed; sales went on"
    );

    // Same port, same data directory; the tills reconnect by themselves.
    let mut hub = HubProcess::start(&binary, port, data_dir.path())
        .await
        .context("restarting the hub")?;
    let health = http::get(hub.address, "/healthz", HTTP_TIMEOUT).await?;
    assert_eq!(health.status, 200, "/healthz after the restart: {health:?}");
    wait_until(SYNC_TIMEOUT, "the tills to reconnect", || {
        Ok(shop
            .sellers
            .iter()
            .all(|seller| seller.client().status().link == Link::Online))
    })
    .await?;
    shop.wait_sales(SALES_PER_PHASE_MIN, "sales after the restart")
        .await?;
    shop.stop_and_sync().await?;

    // The restarted hub stored exactly the ops that were not yet durable,
    // and answered the re-sent durable ones from its outcome table.
    let metrics = http::get(hub.address, "/metrics", HTTP_TIMEOUT).await?;
    let applied = http::metric_value(&metrics.body, "omnisync_ops_applied_total")
        .context("applied metric")?;
    let duplicates = http::metric_value(&metrics.body, "omnisync_ops_duplicate_total")
        .context("duplicates metric")?;
    let total_ops: usize = shop
        .committed()
        .iter()
        .map(|committed| committed.ops.len())
        .sum();
    let durable_ops: usize = durable_at_kill.iter().map(BTreeSet::len).sum();
    tracing::info!(
        total_ops,
        durable_ops,
        applied,
        duplicates,
        "after the restart"
    );
    assert_eq!(
        applied as usize,
        total_ops - durable_ops,
        "ops stored by the restarted hub"
    );

    // Crash the hub once more and audit its file with a fresh reader: what
    // it acknowledged must be durable without any clean shutdown.
    hub.kill()?;
    audit_hub_file(data_dir.path(), &shop, &acked_before_kill)
}
