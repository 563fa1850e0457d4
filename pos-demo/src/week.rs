//! `pos-demo store-week`: a week of a store's trading pushed through the
//! hub's writer on SQLite (embedded, no sockets: this measures storage),
//! once keeping every change and once with compaction, on a simulated clock
//! that also dates the log for compaction. Reports each database's size,
//! the changes kept and what a new till downloads to catch up, and checks
//! that the new till sees the same stock and orders both ways.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use automerge::transaction::Transactable as _;
use omnisync_core::protocol::message::{
    AckOutcome, CHANGE_BATCH_BYTES_TARGET, CHANGE_BATCH_LEN_MAX, DocChange, Op, OpBody,
};
use omnisync_core::retail::prices::{PriceValue, price_key};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::hlc::{Hlc, Stamped};
use omnisync_core::vocab::ids::{DeviceId, DocId, DocSetId, OpId, ReplicaId, StoreId};
use omnisync_core::vocab::intent::{
    CheckoutIntent, Decision, Intent, IntentLine, LineSource, OfflinePolicy, StockCommand,
    StockPolicy,
};
use omnisync_core::vocab::layout;
use omnisync_core::vocab::record::{Record, is_record_doc};
use omnisync_hub::storage::{self, SqliteReader};
use omnisync_hub_engine::hub_session::{IncomingOp, Verdict};
use omnisync_hub_engine::log::{CompactPolicy, HubLog, HubLogRead, ReadBackend};
use rand::{Rng, SeedableRng};
use serde_json::json;

const DAY_MS: u64 = 86_400_000;
/// Checkouts per group commit (the committer groups what waits).
const GROUP_OPS: usize = 200;

/// Options of `pos-demo store-week`.
#[derive(clap::Args)]
pub struct StoreWeekArgs {
    /// Tills selling.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    tills: u32,
    /// Days of trading.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
    days: u32,
    /// Sales per till and day.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sales_per_day: u32,
    /// Products in the store.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    products: u32,
    /// Price changes per day (back office).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    price_changes_per_day: u32,
    /// Compaction in the compacted run: age of the changes compacted, in
    /// hours of simulated time.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    compact_after_hours: u64,
    /// Compaction in the compacted run: old changes that make a set worth
    /// compacting.
    #[arg(long, default_value_t = omnisync_hub_engine::log::compact::COMPACT_MIN_CHANGES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    compact_min_changes: u64,
    /// Seed of the sales mix.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// What one run left behind.
struct RunResult {
    /// Database file size after a WAL checkpoint, bytes.
    bytes: u64,
    /// The same after `VACUUM`.
    vacuumed_bytes: u64,
    /// Changes still in the log.
    changes_kept: u64,
    /// The log's head: every change and record ever numbered.
    head: u64,
    /// What a new till downloads for the store and orders sets.
    catch_up_bytes: u64,
    catch_up_items: u64,
    /// Stock on hand per SKU and orders, as that new till sees them.
    stock: BTreeMap<String, u64>,
    orders: usize,
    confirmed: u64,
    seconds: f64,
}

/// Runs the week twice (without and with compaction) and prints the sizes.
pub async fn run(args: StoreWeekArgs) -> anyhow::Result<bool> {
    let policy = CompactPolicy {
        after_age_ms: args.compact_after_hours * 3_600_000,
        min_changes: args.compact_min_changes,
        ..CompactPolicy::default()
    };
    let args = std::sync::Arc::new(args);
    let plain_args = args.clone();
    let plain = tokio::task::spawn_blocking(move || week(&plain_args, None)).await??;
    print_run("uncompacted", &plain);
    let compact_args = args.clone();
    let compacted =
        tokio::task::spawn_blocking(move || week(&compact_args, Some(policy))).await??;
    print_run("compacted", &compacted);
    let same = plain.stock == compacted.stock
        && plain.orders == compacted.orders
        && plain.confirmed == compacted.confirmed;
    println!(
        "a new till sees the same stock and orders both ways: {}",
        if same { "yes" } else { "NO" }
    );
    if args.json {
        let run_json = |run: &RunResult| {
            json!({
                "db_bytes": run.bytes,
                "db_bytes_vacuumed": run.vacuumed_bytes,
                "changes_kept": run.changes_kept,
                "head_seq": run.head,
                "new_till_catch_up_bytes": run.catch_up_bytes,
                "new_till_catch_up_items": run.catch_up_items,
                "orders": run.orders,
                "seconds": (run.seconds * 10.0).round() / 10.0,
            })
        };
        println!(
            "{}",
            json!({
                "tills": args.tills,
                "days": args.days,
                "sales_per_till_day": args.sales_per_day,
                "products": args.products,
                "price_changes_per_day": args.price_changes_per_day,
                "compact_after_hours": args.compact_after_hours,
                "compact_min_changes": args.compact_min_changes,
                "confirmed_sales": plain.confirmed,
                "uncompacted": run_json(&plain),
                "compacted": run_json(&compacted),
                "same_view": same,
            })
        );
    }
    Ok(same)
}

fn print_run(name: &str, run: &RunResult) {
    println!(
        "{name:<12} db {:>6.1} MiB ({:>6.1} MiB after VACUUM), {} changes kept of {}, a new till downloads {:.1} MiB in {} items; {} orders; {:.1}s",
        mib(run.bytes),
        mib(run.vacuumed_bytes),
        run.changes_kept,
        run.head,
        mib(run.catch_up_bytes),
        run.catch_up_items,
        run.orders,
        run.seconds,
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The store's trading of one week on a fresh database.
fn week(args: &StoreWeekArgs, policy: Option<CompactPolicy>) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut log = storage::open(dir.path()).context("opening the hub database")?;
    log.set_compaction(policy);
    let mut trade = Trade::new(args)?;
    let sales_per_day = u64::from(args.tills) * u64::from(args.sales_per_day);
    let mut confirmed = 0;
    for day in 0..u64::from(args.days) {
        let opening = day * DAY_MS;
        log.apply(trade.morning(opening)?)?;
        let mut sold = 0;
        while sold < sales_per_day {
            let group = (GROUP_OPS as u64).min(sales_per_day - sold);
            let now_ms = opening + (sold * DAY_MS) / sales_per_day;
            let applied = log.apply(trade.sales(group, now_ms)?)?;
            confirmed += applied
                .acks
                .iter()
                .filter(|ack| {
                    matches!(ack.outcome, AckOutcome::Decided(Decision::Confirmed { .. }))
                })
                .count() as u64;
            sold += group;
            if policy.is_some() {
                while log.compact(now_ms)?.more {}
            }
        }
    }
    let head = log.head_seq()?;
    log.backend_mut().checkpoint(false)?;
    let bytes = file_len(dir.path())?;
    let reader = SqliteReader::new(dir.path());
    let changes_kept = reader.read(|rows| {
        let mut kept = 0;
        for set in rows.change_sets()? {
            kept += rows.count_changes(&set, 0, u64::MAX)?.0;
        }
        Ok(kept)
    })?;
    let mut till = NewTill::default();
    for set in [
        DocSetId::store(&trade.store),
        DocSetId::orders(&trade.store),
    ] {
        till.catch_up(&reader, &set)?;
    }
    log.backend_mut().checkpoint(true)?;
    let vacuumed_bytes = file_len(dir.path())?;
    Ok(RunResult {
        bytes,
        vacuumed_bytes,
        changes_kept,
        head,
        catch_up_bytes: till.bytes,
        catch_up_items: till.items,
        stock: till.stock()?,
        orders: till.orders()?,
        confirmed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn file_len(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join(storage::DB_FILE_NAME);
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len())
}

/// The ops of the store's week: deliveries and price changes from the back
/// office each morning, checkouts from the tills.
struct Trade {
    store: StoreId,
    skus: Vec<Sku>,
    prices: BTreeMap<Sku, i64>,
    price_docs: BTreeMap<DocId, automerge::Automerge>,
    tills: Vec<(DeviceId, ReplicaId, u64)>,
    back_office: (DeviceId, ReplicaId, u64),
    rng: rand::rngs::StdRng,
    price_changes_per_day: u32,
    daily_units_per_sku: u64,
    orders: u64,
    hlc: u32,
}

impl Trade {
    fn new(args: &StoreWeekArgs) -> anyhow::Result<Self> {
        let store = StoreId::new("s1")?;
        let skus = (0..args.products)
            .map(|n| Sku::new(format!("sku-{n:05}")))
            .collect::<Result<Vec<_>, _>>()?;
        let tills = (0..args.tills)
            .map(|n| {
                let mut replica = [0u8; 16];
                replica[..4].copy_from_slice(&n.to_be_bytes());
                replica[15] = 1;
                Ok((DeviceId::new(format!("till-{n}"))?, ReplicaId(replica), 0))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sales = u64::from(args.tills) * u64::from(args.sales_per_day);
        Ok(Self {
            prices: skus.iter().map(|sku| (sku.clone(), 250)).collect(),
            skus,
            store,
            tills,
            back_office: (DeviceId::new("back-office")?, ReplicaId([0xb0; 16]), 0),
            rng: rand::rngs::StdRng::seed_from_u64(args.seed),
            price_changes_per_day: args.price_changes_per_day,
            // Four units a sale on average (two lines of two), with room
            // to spare: a few refusals are still possible, as in a store.
            daily_units_per_sku: (sales * 12 / u64::from(args.products)).max(12),
            price_docs: BTreeMap::new(),
            orders: 0,
            hlc: 0,
        })
    }

    /// The back office's morning: a delivery of every product and the
    /// day's price changes (the first morning also puts every product in
    /// strong mode and prices it).
    fn morning(&mut self, now_ms: u64) -> anyhow::Result<Vec<IncomingOp>> {
        let mut ops = Vec::new();
        if now_ms == 0 {
            // Every sale decided by the hub (strong mode): the most records.
            for sku in self.skus.clone() {
                let policy = Intent::Stock(StockCommand::SetPolicy {
                    sku,
                    policy: StockPolicy {
                        strong_at_or_below: u64::MAX,
                        offline: OfflinePolicy::Block,
                    },
                });
                ops.push(self.back_office_op(OpBody::Intent(policy), now_ms));
            }
        }
        for sku in self.skus.clone() {
            let key = format!("delivery-{now_ms}-{sku}").parse()?;
            let receive = Intent::Stock(StockCommand::Receive {
                key,
                sku,
                quantity: self.daily_units_per_sku,
            });
            ops.push(self.back_office_op(OpBody::Intent(receive), now_ms));
        }
        let changed: Vec<Sku> = if now_ms == 0 {
            self.skus.clone()
        } else {
            (0..self.price_changes_per_day)
                .map(|_| self.skus[self.rng.random_range(0..self.skus.len())].clone())
                .collect()
        };
        for sku in changed {
            let amount = self.rng.random_range(100..1_000);
            self.prices.insert(sku.clone(), amount);
            let change = self.price_change(&sku, amount, now_ms)?;
            ops.push(self.back_office_op(OpBody::Changes(vec![change]), now_ms));
        }
        Ok(ops)
    }

    fn price_change(
        &mut self,
        sku: &Sku,
        amount_minor: i64,
        now_ms: u64,
    ) -> anyhow::Result<DocChange> {
        self.hlc += 1;
        let doc_id = layout::prices_doc(&self.store, sku);
        let stamped = Stamped {
            hlc: Hlc {
                wall_ms: now_ms,
                counter: self.hlc,
            },
            writer: [0xb0; 16],
            value: PriceValue {
                amount_minor,
                currency: "EUR".into(),
            },
        };
        let doc = self.price_docs.entry(doc_id.clone()).or_insert_with(|| {
            let mut doc = automerge::Automerge::new();
            doc.set_actor(automerge::ActorId::from(vec![0xb0; 16]));
            doc
        });
        let mut tx = doc.transaction();
        tx.put(
            automerge::ROOT,
            price_key(sku, Channel::Pos, 0),
            automerge::ScalarValue::Bytes(stamped.encode()),
        )?;
        tx.commit();
        let bytes = doc
            .get_last_local_change()
            .context("the price change was made")?
            .raw_bytes()
            .to_vec();
        Ok(DocChange { doc: doc_id, bytes })
    }

    /// `count` checkouts of one to three lines, spread over the tills.
    fn sales(&mut self, count: u64, now_ms: u64) -> anyhow::Result<Vec<IncomingOp>> {
        let mut ops = Vec::with_capacity(count as usize);
        for _ in 0..count {
            self.orders += 1;
            let lines = (0..self.rng.random_range(1..=3))
                .map(|_| {
                    let sku = self.skus[self.rng.random_range(0..self.skus.len())].clone();
                    IntentLine {
                        unit_price_minor: self.prices[&sku],
                        sku,
                        quantity: self.rng.random_range(1..=3),
                        source: LineSource::Hub,
                    }
                })
                .collect();
            let name = format!("order-{}", self.orders);
            let checkout = Intent::Checkout(CheckoutIntent {
                order_id: name.parse()?,
                idempotency_key: name.parse()?,
                lines,
                currency: Currency::new("EUR")?,
                payment_ref: "card".parse()?,
                channel: Channel::Pos,
            });
            let till = self.rng.random_range(0..self.tills.len());
            let (device, replica, seq) = &mut self.tills[till];
            *seq += 1;
            ops.push(incoming(
                &self.store,
                device,
                *replica,
                *seq,
                OpBody::Intent(checkout),
                now_ms,
            ));
        }
        Ok(ops)
    }

    fn back_office_op(&mut self, body: OpBody, now_ms: u64) -> IncomingOp {
        let (device, replica, seq) = &mut self.back_office;
        *seq += 1;
        incoming(&self.store, device, *replica, *seq, body, now_ms)
    }
}

fn incoming(
    store: &StoreId,
    device: &DeviceId,
    replica: ReplicaId,
    seq: u64,
    body: OpBody,
    now_ms: u64,
) -> IncomingOp {
    IncomingOp {
        op: Op {
            id: OpId { replica, seq },
            created_ms: now_ms,
            body,
        },
        device: device.clone(),
        store: store.clone(),
        verdict: Verdict::Accept,
    }
}

/// A new till's first sync of the store and orders sets, as the hub's
/// catch-up serves it: what it downloads and the records it ends with.
#[derive(Default)]
struct NewTill {
    bytes: u64,
    items: u64,
    records: BTreeMap<DocId, Vec<u8>>,
}

impl NewTill {
    fn catch_up(&mut self, reader: &SqliteReader, set: &DocSetId) -> anyhow::Result<()> {
        let mut cursor = 0;
        let mut resume = None;
        loop {
            let page = reader.catch_up_page(
                set,
                cursor,
                resume.as_ref(),
                CHANGE_BATCH_LEN_MAX,
                CHANGE_BATCH_BYTES_TARGET,
            )?;
            for change in page.changes.iter().filter(|change| change.hub_seq > cursor) {
                self.bytes += change.bytes.len() as u64;
                self.items += 1;
                if is_record_doc(&change.doc) {
                    // In log order, a record's later version is its newer one.
                    self.records
                        .insert(change.doc.clone(), change.bytes.clone());
                }
            }
            cursor = cursor.max(page.cursor);
            resume = page.resume;
            if page.caught_up && resume.is_none() {
                return Ok(());
            }
        }
    }

    fn stock(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut stock = BTreeMap::new();
        for bytes in self.records.values() {
            if let Record::Stock(record) = Record::decode(bytes)? {
                stock.insert(record.sku.to_string(), record.on_hand);
            }
        }
        Ok(stock)
    }

    fn orders(&self) -> anyhow::Result<usize> {
        let mut orders = 0;
        for bytes in self.records.values() {
            orders += matches!(Record::decode(bytes)?, Record::Order(_)) as usize;
        }
        Ok(orders)
    }
}
