//! Scenario: the hub's database is restored from an older backup.
//!
//! A real `omnisync-hub` process on SQLite serves four tills of one shop.
//! Each sale is a checkout (an intent the hub decides against its stock
//! ledger) and a line in the till's sales document (an automerge change). A
//! backup of the hub's database is taken with SQLite's online backup while the
//! hub runs and the tills sell; the tills keep selling until the hub has
//! acknowledged everything; then the hub is killed (SIGKILL), the older copy
//! is put in its place and the hub restarted on the same port. The tills,
//! which reconnect on their own, probe the hub, find it behind their
//! acknowledgements, upload again what it lacks and lower their cursors; they
//! sell some more and finish.
//!
//! Checked from the hub's database afterwards: every op any till saw
//! acknowledged or decided is there exactly once (its outcome, and for a
//! document edit its changes, once in the log), the ledger took every
//! confirmed unit once and sold nothing it did not have, and every till holds
//! the hub's documents.
//!
//! The backup and the restore are two small functions ([`take_backup`],
//! [`restore_backup`]) so that another storage backend can bring its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use omnisync_core::client::Client;
use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{Decision, StockCommand};
use omnisync_core::vocab::record::Record;
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, OpId, StoreId, Value, now_ms};
use omnisync_hub::storage::SqliteReader;
use omnisync_hub_engine::log::HubLogRead;
use omnisync_tests::audit::{self, CommittedOps};
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, device, http, init_logs, terminal, wait_until};

const STORE: &str = "s1";
const TILLS: usize = 4;
const SKUS: u64 = 3;
/// Units of each SKU the back office receives before anyone sells.
const RECEIVED: u64 = 1_000;
/// Sales of each till before the backup, after it, and after the restore.
const SALES_PER_PHASE: u64 = 12;
/// Longest wait for an HTTP answer from the hub.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn sku(n: u64) -> Sku {
    Sku::new(format!("sku-{}", n % SKUS)).expect("valid sku")
}

/// Takes an online backup of the running hub's database into `into` (SQLite's
/// `VACUUM INTO`: a consistent copy from one read transaction, beside the
/// hub's writer).
fn take_backup(data_dir: &Path, into: &Path) -> anyhow::Result<()> {
    let source = rusqlite::Connection::open(data_dir.join("hub.db"))?;
    source.busy_timeout(Duration::from_secs(10))?;
    let target = into
        .to_str()
        .context("the backup path is not UTF-8")?
        .to_owned();
    source
        .execute("VACUUM INTO ?1", [target])
        .context("VACUUM INTO")?;
    Ok(())
}

/// Puts the backup `from` in place of the (stopped) hub's database, dropping
/// the newer write-ahead log so that nothing after the backup survives.
fn restore_backup(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let db = data_dir.join("hub.db");
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        if side.exists() {
            std::fs::remove_file(&side).with_context(|| format!("removing {}", side.display()))?;
        }
    }
    std::fs::copy(from, &db).with_context(|| format!("restoring {}", db.display()))?;
    Ok(())
}

/// The tills of the shop, with what each committed.
struct Shop {
    tills: Vec<Till>,
}

struct Till {
    name: String,
    device: TestDevice,
    /// The document edits (one op each) with the documents they changed.
    edits: CommittedOps,
    /// The checkouts: op sequence number → (SKU, units).
    checkouts: BTreeMap<u64, (Sku, u64)>,
    sales: u64,
}

impl Till {
    fn client(&self) -> &Client {
        &self.device.client
    }

    /// One sale: a checkout of one or two units, and its line in the till's
    /// sales document.
    fn sell(&mut self) -> anyhow::Result<()> {
        self.sales += 1;
        let (item, units) = (sku(self.sales), 1 + self.sales % 2);
        let request = CheckoutRequest {
            order_id: format!("{}-{}", self.name, self.sales).parse()?,
            idempotency_key: None,
            lines: vec![OrderLine {
                sku: item.clone(),
                quantity: units,
                unit_price_minor: 250,
            }],
            currency: Currency::new("EUR")?,
            payment_ref: format!("card-{}-{}", self.name, self.sales).parse()?,
            channel: Channel::Pos,
        };
        let receipt = self
            .client()
            .checkout(&request)
            .with_context(|| format!("{}: checkout {}", self.name, self.sales))?;
        self.checkouts.insert(receipt.op.seq, (item, units));
        let sales_doc = terminal::sales_doc(STORE, &self.name)?;
        let amount = Value::Int(terminal::sale_amount_minor(self.sales));
        let op = self.client().commit(&[DocEdit {
            doc: sales_doc.clone(),
            edits: vec![Edit::put(&[&terminal::sale_key(self.sales)], amount)],
        }])?;
        self.edits.record(op.seq, vec![sales_doc]);
        Ok(())
    }
}

impl Shop {
    async fn open(url: &str) -> anyhow::Result<Shop> {
        let mut tills = Vec::new();
        for n in 1..=TILLS {
            let name = format!("till-{n}");
            tills.push(Till {
                device: device(url, &name, STORE)?,
                name,
                edits: CommittedOps::default(),
                checkouts: BTreeMap::new(),
                sales: 0,
            });
        }
        Ok(Shop { tills })
    }

    fn sell(&mut self, rounds: u64) -> anyhow::Result<()> {
        for _ in 0..rounds {
            for till in &mut self.tills {
                till.sell()?;
            }
        }
        Ok(())
    }

    async fn wait_synced(&self) -> anyhow::Result<()> {
        for till in &self.tills {
            till.client()
                .wait_synced(SYNC_TIMEOUT)
                .await
                .with_context(|| format!("syncing {}", till.name))?;
        }
        Ok(())
    }

    /// Every op id any till has seen answered by the hub.
    fn answered_ops(&self) -> anyhow::Result<Vec<OpId>> {
        let mut answered = Vec::new();
        for till in &self.tills {
            let store = till.client().replica();
            for op in store.op_ids()? {
                let status = store.op_status(&op)?.context("an op of the log")?;
                if status.as_str() != "pending" {
                    answered.push(op);
                }
            }
        }
        Ok(answered)
    }
}

/// The back office receives [`RECEIVED`] units of every SKU.
async fn receive_stock(url: &str) -> anyhow::Result<TestDevice> {
    let office = device(url, "office", STORE)?;
    for n in 0..SKUS {
        let command = StockCommand::Receive {
            key: format!("delivery-{n}").parse()?,
            sku: sku(n),
            quantity: RECEIVED,
        };
        office
            .client
            .write(|store| store.stock_command(command, now_ms()))?;
    }
    office.client.wait_synced(SYNC_TIMEOUT).await?;
    Ok(office)
}

/// Audits the hub's database: the answered ops are there exactly once, the
/// ledger took every confirmed unit once and sold nothing it did not have.
fn audit_hub(reader: &dyn HubLogRead, shop: &Shop, answered: &[OpId]) -> anyhow::Result<()> {
    let missing: Vec<String> = answered
        .iter()
        .filter_map(|op| match reader.outcome(op) {
            Ok(Some(_)) => None,
            Ok(None) => Some(op.to_string()),
            Err(error) => Some(format!("{op}: {error}")),
        })
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "ops the tills saw answered are missing at the hub: {missing:?}"
    );
    let set = DocSetId::store(&StoreId::new(STORE)?);
    // Not gapless: the set's numbers interleave with the orders' and the
    // tills' allowance records.
    let changes = audit::all_changes(reader, &set)?;
    let mut confirmed: BTreeMap<Sku, u64> = BTreeMap::new();
    for till in &shop.tills {
        let (replica, stats) = {
            let store = till.client().replica();
            (store.replica(), store.op_stats(now_ms())?)
        };
        anyhow::ensure!(
            (stats.pending, stats.rejected) == (0, 0),
            "{}: op log after sync: {stats:?}",
            till.name
        );
        audit::assert_exactly_once(reader, &changes, replica, &till.edits)
            .with_context(|| format!("{}'s document edits", till.name))?;
        for (seq, (item, units)) in &till.checkouts {
            let op = OpId { replica, seq: *seq };
            let sold = match reader.outcome(&op)? {
                Some(AckOutcome::Decided(Decision::Confirmed { .. })) => *units,
                Some(AckOutcome::Decided(Decision::Short { lines, .. })) => {
                    units - lines.iter().map(|line| line.quantity).sum::<u64>()
                }
                Some(AckOutcome::Decided(Decision::Refused(_))) => 0,
                other => anyhow::bail!("checkout {op} at the hub: {other:?}"),
            };
            *confirmed.entry(item.clone()).or_default() += sold;
        }
    }
    let oversold: u64 = confirmed
        .values()
        .map(|sold| sold.saturating_sub(RECEIVED))
        .sum();
    anyhow::ensure!(oversold == 0, "oversold {oversold}: {confirmed:?}");
    for n in 0..SKUS {
        let item = sku(n);
        let doc = DocId::new(format!("store.{STORE}/rec/stock/{item}"))?;
        let newest = changes
            .iter()
            .rev()
            .find(|change| change.doc == doc)
            .with_context(|| format!("no stock record of {item} at the hub"))?;
        let Record::Stock(stock) = Record::decode(&newest.bytes)? else {
            anyhow::bail!("{doc} holds another kind of record");
        };
        let sold = confirmed.get(&item).copied().unwrap_or(0);
        anyhow::ensure!(
            stock.on_hand == RECEIVED - sold,
            "{item}: the hub's ledger holds {} on hand, {RECEIVED} received and {sold} confirmed",
            stock.on_hand
        );
    }
    // Every sale the hub confirmed came from the tills' checkouts: no intent
    // was decided twice (its order is numbered once).
    let orders = DocSetId::orders(&StoreId::new(STORE)?);
    let order_changes = audit::all_changes(reader, &orders)?;
    let mut numbered: BTreeMap<String, u64> = BTreeMap::new();
    for change in &order_changes {
        let Ok(Record::Order(order)) = Record::decode(&change.bytes) else {
            continue;
        };
        if let Some(before) = numbered.insert(order.order_id.to_string(), order.order_no) {
            anyhow::ensure!(
                before == order.order_no,
                "order {} numbered {before} and {}",
                order.order_id,
                order.order_no
            );
        }
    }
    Ok(())
}

/// Every till holds the hub's version of every sales document.
async fn assert_converged_to_hub(reader: &dyn HubLogRead, shop: &Shop) -> anyhow::Result<()> {
    for owner in &shop.tills {
        let doc = terminal::sales_doc(STORE, &owner.name)?;
        let mut hub_heads: Vec<String> = omnisync_hub::load_doc(reader, &doc)?
            .get_heads()
            .iter()
            .map(|head| head.to_string())
            .collect();
        hub_heads.sort();
        for till in &shop.tills {
            wait_until(SYNC_TIMEOUT, "a till to hold the hub's document", || {
                Ok(till.client().replica().doc_heads(&doc)? == hub_heads)
            })
            .await
            .with_context(|| format!("{} at {}", doc, till.name))?;
        }
    }
    Ok(())
}

/// Where the hub keeps its log, with that store's own backup and restore.
trait Storage {
    /// Starts a hub process on the store.
    async fn start_hub(&self, binary: &Path, port: u16) -> anyhow::Result<HubProcess>;
    /// Takes an online backup while the hub runs.
    fn take_backup(&self) -> anyhow::Result<()>;
    /// Puts the backup in place (the hub is stopped).
    fn restore(&self) -> anyhow::Result<()>;
    /// Reads the store as it is now.
    fn reader(&self) -> anyhow::Result<Box<dyn HubLogRead>>;
}

/// A hub on SQLite: `VACUUM INTO`, then the copy put back in place.
struct Sqlite {
    data_dir: tempfile::TempDir,
    backup: PathBuf,
    _backup_dir: tempfile::TempDir,
}

impl Storage for Sqlite {
    async fn start_hub(&self, binary: &Path, port: u16) -> anyhow::Result<HubProcess> {
        HubProcess::start(binary, port, self.data_dir.path()).await
    }
    fn take_backup(&self) -> anyhow::Result<()> {
        take_backup(self.data_dir.path(), &self.backup)
    }
    fn restore(&self) -> anyhow::Result<()> {
        restore_backup(&self.backup, self.data_dir.path())
    }
    fn reader(&self) -> anyhow::Result<Box<dyn HubLogRead>> {
        Ok(Box::new(SqliteReader::new(self.data_dir.path())))
    }
}

/// A hub on PostgreSQL: `pg_dump -Fc` of the live database, then the
/// database dropped, made again and filled by `pg_restore`.
struct Postgres {
    cluster: std::sync::Arc<omnisync_hub::pg_cluster::PgCluster>,
    name: String,
    url: String,
    dump: PathBuf,
    _dump_dir: tempfile::TempDir,
}

impl Postgres {
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let output = std::process::Command::new(self.cluster.bin().join(program))
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Storage for Postgres {
    async fn start_hub(&self, binary: &Path, port: u16) -> anyhow::Result<HubProcess> {
        HubProcess::start_postgres(binary, port, &self.url).await
    }
    fn take_backup(&self) -> anyhow::Result<()> {
        self.run(
            "pg_dump",
            &[
                "-Fc".as_ref(),
                "-f".as_ref(),
                self.dump.as_os_str(),
                "-d".as_ref(),
                self.url.as_ref(),
            ],
        )
    }
    fn restore(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.cluster
            .execute("postgres", &format!("DROP DATABASE {name} WITH (FORCE)"))
            .map_err(anyhow::Error::msg)?;
        self.cluster
            .create_database(name)
            .map_err(anyhow::Error::msg)?;
        self.run(
            "pg_restore",
            &["-d".as_ref(), self.url.as_ref(), self.dump.as_os_str()],
        )
    }
    fn reader(&self) -> anyhow::Result<Box<dyn HubLogRead>> {
        let url =
            omnisync_hub::storage::postgres::PgUrl::parse(&self.url).map_err(anyhow::Error::msg)?;
        Ok(Box::new(omnisync_hub::storage::postgres::PgReader::new(
            &url,
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_from_an_older_backup_gets_back_every_acknowledged_op() -> anyhow::Result<()>
{
    let backup_dir = tempfile::tempdir()?;
    let storage = Sqlite {
        data_dir: tempfile::tempdir()?,
        backup: backup_dir.path().join("hub-backup.db"),
        _backup_dir: backup_dir,
    };
    restored_hub_scenario(&storage).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_hub_restored_from_an_older_dump_gets_back_every_acknowledged_op()
-> anyhow::Result<()> {
    let cluster = tokio::task::spawn_blocking(omnisync_hub::pg_cluster::PgCluster::shared)
        .await?
        .map_err(anyhow::Error::msg)?;
    let name = "restored".to_owned();
    let url = cluster.create_database(&name).map_err(anyhow::Error::msg)?;
    let dump_dir = tempfile::tempdir()?;
    let storage = Postgres {
        dump: dump_dir.path().join("hub.dump"),
        _dump_dir: dump_dir,
        cluster,
        name,
        url,
    };
    restored_hub_scenario(&storage).await
}

/// One scenario at a time: each runs a hub, a back office and four tills
/// on the two cores, and their timing assumptions are for one.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The scenario on any storage: sell, back up under way, sell on, kill the
/// hub, restore the older backup, restart, sell; then audit the hub's store.
async fn restored_hub_scenario(storage: &impl Storage) -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    init_logs();
    let binary = tokio::task::spawn_blocking(hub_binary).await??;
    let port = free_port()?;
    let mut hub = storage.start_hub(&binary, port).await?;
    let url = hub.sync_url();
    let _office = receive_stock(&url).await?;
    let mut shop = Shop::open(&url).await?;

    // Sell, take the backup while the tills' uploads are under way, sell on
    // until the hub has answered everything.
    let started = std::time::Instant::now();
    shop.sell(SALES_PER_PHASE)?;
    tokio::task::block_in_place(|| storage.take_backup())?;
    shop.sell(SALES_PER_PHASE)?;
    shop.wait_synced().await?;
    let answered = shop.answered_ops()?;
    tracing::info!(elapsed = ?started.elapsed(), "before the restore");

    // The hub dies; its database comes back from the older backup.
    hub.kill()?;
    tokio::task::block_in_place(|| storage.restore())?;
    let hub = storage.start_hub(&binary, port).await?;

    shop.sell(SALES_PER_PHASE)?;
    shop.wait_synced().await?;
    tracing::info!(elapsed = ?started.elapsed(), "synced after the restore");
    let reader = storage.reader()?;
    tokio::task::block_in_place(|| audit_hub(&*reader, &shop, &answered))?;
    assert_converged_to_hub(&*reader, &shop).await?;

    let metrics = http::get(hub.address, "/metrics", HTTP_TIMEOUT).await?.body;
    let ahead = http::metric_value(&metrics, "omnisync_devices_ahead_total").unwrap_or(0.0);
    let reuploaded =
        http::metric_value(&metrics, "omnisync_devices_reuploaded_ops_total").unwrap_or(0.0);
    anyhow::ensure!(
        ahead >= 1.0 && reuploaded >= 1.0,
        "the restored hub counted {ahead} devices ahead and {reuploaded} ops uploaded again"
    );
    let compensations: usize = shop
        .tills
        .iter()
        .map(|till| {
            till.client()
                .replica()
                .compensations()
                .map(|tasks| tasks.len())
        })
        .sum::<Result<usize, _>>()?;
    tracing::info!(
        ahead,
        reuploaded,
        compensations,
        answered = answered.len(),
        "restored hub caught up"
    );
    Ok(())
}
