//! Power-loss tests of the device database: a sale whose `checkout` returned
//! must still be there after the power goes, at any moment.
//!
//! A `kill -9` leaves the operating system's page cache alone, so a crash
//! test passes even when nothing is ever synced. These tests open the
//! [`Replica`] through a VFS shim (`support/power_loss_vfs.rs`, whose header
//! says what it models and what it does not) that keeps, per file, what has
//! reached stable storage, and that can cut the power: right after a call
//! returned, or at a random write, truncate, sync or delete in the middle of
//! one. After each cut the database is reopened from the durable image only
//! and checked:
//!
//! - every promise holds: each sale whose `checkout` returned has its order
//!   and its checkout op, and each `Durability::AppCrash` edit followed by a
//!   returned `Durability::Full` commit is there too (the WAL is synced in
//!   order);
//! - the op log is consistent: `PRAGMA integrity_check` passes, every
//!   checkout op has its order and every order its op (a sale in flight is
//!   all there or not at all), and no op sequence number is ever handed out
//!   twice, across cuts;
//! - a commit that was not promised may be lost, once.
//!
//! The same checker must find broken promises when the commits are not
//! synced: under `synchronous=NORMAL` (the `AppCrash` path, treated as if
//! it were promised), on a disk that ignores every sync (what
//! `synchronous=OFF` amounts to), and on an Apple-like disk where only
//! `F_FULLFSYNC` reaches stable storage unless the build sets `fullfsync`.
//!
//! A last test checks the model itself on plain SQLite: commits made with
//! `synchronous=FULL` survive a cut, those made with `NORMAL` or `OFF` do not.
//!
//! Everything is seeded (`POWER_LOSS_SEED=<n>` explores another schedule);
//! the whole file runs in under ten seconds in debug.

// Shared with the hub's power-loss test, which uses other parts of it.
#[allow(dead_code)]
#[path = "support/power_loss_vfs.rs"]
mod power_loss_vfs;

use std::collections::BTreeSet;
use std::path::Path;

use omnisync_core::retail::hooks::RetailHooks;
use omnisync_core::retail::orders::{CheckoutRequest, Connectivity, OrderLine};
use omnisync_core::vocab::intent::Intent;
use omnisync_core::vocab::keys::{OrderId, OrderStatus};
use omnisync_core::{
    Channel, Currency, DeviceId, DocEdit, DocId, Durability, Edit, Replica, Sku, StoreId, Value,
};
use power_loss_vfs::{Disk, Keep, Rng, SyncModel, VFS_NAME};

/// Seed of the main scenario.
const SEED: u64 = 0x5a1e_5eed_2026_1202;
/// Calls (sales and edits) per scenario.
const STEPS: usize = 150;
/// One step in this many is a cart-like edit (`Durability::AppCrash`).
const EDIT_ONE_IN: u64 = 4;
/// After a call returned, the power goes with probability 1 in this.
const CUT_AFTER_RETURN_ONE_IN: u64 = 6;
/// Before a call, a cut is armed with probability 1 in this...
const CUT_ARMED_ONE_IN: u64 = 3;
/// ...after fewer than this many further changes reach the disk.
const CHANGES_BEFORE_CUT_MAX: u64 = 24;
/// Fewest cuts of each kind the main scenario must make to mean anything.
const CUTS_MIN: usize = 10;
/// Device clock of the scenario, ms.
const NOW_MS: u64 = 1_760_000_000_000;
/// Products sold.
const SKUS: [&str; 3] = ["tea", "cake", "milk"];
/// Most lines in one sale.
const SALE_LINES_MAX: u64 = 3;
/// Most units in one line.
const LINE_UNITS_MAX: u64 = 5;
/// Highest unit price, minor units.
const UNIT_PRICE_MAX: u64 = 2_000;
/// Most orders read back at once.
const ORDERS_READ_MAX: usize = 100_000;

fn device() -> DeviceId {
    DeviceId::new("till-1").expect("device id")
}

fn store() -> StoreId {
    StoreId::new("s1").expect("store id")
}

fn notes_doc() -> DocId {
    DocId::new("store.s1/notes").expect("doc id")
}

fn open(path: &Path) -> Replica {
    Replica::open_with_vfs(path, VFS_NAME, device(), store(), Box::new(RetailHooks))
        .expect("the database opens after a power cut")
}

/// What a call that returned promised.
#[derive(Debug)]
enum Made {
    Sale { order_id: OrderId },
    Edit { key: String, value: i64 },
}

#[derive(Debug)]
struct Promise {
    made: Made,
    seq: u64,
    /// Must survive every later power cut.
    binding: bool,
}

/// How a scenario commits and what its disk does.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    seed: u64,
    model: SyncModel,
    /// One step in this many is an edit; the rest are sales (`None`: edits only).
    sale_steps: Option<u64>,
    /// Durability of the edits.
    edit_durability: Durability,
    /// Treat edits as promises of their own, whatever their durability.
    edits_bind: bool,
    /// Also cut the power in the middle of calls.
    mid_call_cuts: bool,
    /// Let a random prefix of the unsynced writes reach the disk.
    keep_prefix: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    broken: Vec<String>,
    returned: usize,
    cuts_after_return: usize,
    cuts_mid_call: usize,
    writes_lost: usize,
    writes_kept: usize,
}

fn sale(rng: &mut Rng, step: usize) -> CheckoutRequest {
    let lines = (0..=rng.below(SALE_LINES_MAX))
        .map(|_| OrderLine {
            sku: Sku::new(SKUS[rng.below(SKUS.len() as u64) as usize]).expect("sku"),
            quantity: 1 + rng.below(LINE_UNITS_MAX),
            unit_price_minor: 1 + rng.below(UNIT_PRICE_MAX) as i64,
        })
        .collect();
    CheckoutRequest {
        order_id: format!("till-1-{step:06}").parse().unwrap(),
        idempotency_key: None,
        lines,
        currency: Currency::new("EUR").expect("currency"),
        payment_ref: format!("card-{step}").parse().unwrap(),
        channel: Channel::Pos,
    }
}

fn run(scenario: Scenario) -> Outcome {
    power_loss_vfs::install(false);
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = Disk::attach(dir.path(), scenario.model);
    let path = dir.path().join("till.db");
    let mut rng = Rng::new(power_loss_vfs::seed(scenario.seed));
    let mut replica = open(&path);
    let mut promises: Vec<Promise> = Vec::new();
    let mut outcome = Outcome::default();
    let mut seq_high = 0;
    for step in 0..STEPS {
        if scenario.mid_call_cuts && rng.one_in(CUT_ARMED_ONE_IN) {
            disk.cut_after(rng.below(CHANGES_BEFORE_CUT_MAX));
        }
        let is_edit = scenario.sale_steps.is_none_or(|one_in| rng.one_in(one_in));
        let result = if is_edit {
            let key = format!("n{step}");
            let value = rng.below(1 << 20) as i64;
            let edit = DocEdit {
                doc: notes_doc(),
                edits: vec![Edit::put(&[&key], Value::Int(value))],
            };
            replica
                .commit_with(&[edit], NOW_MS, scenario.edit_durability)
                .map(|op| (Made::Edit { key, value }, op.seq, scenario.edit_durability))
                .map_err(|error| error.to_string())
        } else {
            let request = sale(&mut rng, step);
            replica
                .checkout(&request, Connectivity::Online, NOW_MS)
                .map(|receipt| {
                    let made = Made::Sale {
                        order_id: request.order_id,
                    };
                    (made, receipt.op.seq, Durability::Full)
                })
                .map_err(|error| error.to_string())
        };
        let returned = match result {
            Ok((made, seq, durability)) => {
                if seq <= seq_high {
                    outcome.broken.push(format!(
                        "step {step}: op sequence number {seq} handed out again (had {seq_high})"
                    ));
                }
                seq_high = seq_high.max(seq);
                let binding = durability == Durability::Full || scenario.edits_bind;
                if durability == Durability::Full {
                    // The WAL is synced in order: everything before is durable too.
                    for earlier in &mut promises {
                        earlier.binding = true;
                    }
                }
                promises.push(Promise { made, seq, binding });
                outcome.returned += 1;
                true
            }
            Err(error) => {
                assert!(
                    disk.is_cut(),
                    "step {step}: the call failed with the power on: {error}"
                );
                false
            }
        };
        let cut = disk.is_cut();
        if cut || (returned && rng.one_in(CUT_AFTER_RETURN_ONE_IN)) || step + 1 == STEPS {
            if cut {
                outcome.cuts_mid_call += 1;
            } else {
                outcome.cuts_after_return += 1;
            }
            let keep = if scenario.keep_prefix {
                Keep::RandomPrefix(rng.next_u64())
            } else {
                Keep::Nothing
            };
            let report = disk.cut_power(replica, keep);
            outcome.writes_lost += report.pending - report.kept;
            outcome.writes_kept += report.kept;
            replica = open(&path);
            check(
                &mut replica,
                &path,
                &mut promises,
                step,
                &mut outcome.broken,
            );
        }
    }
    drop(replica);
    drop(disk);
    outcome
}

/// Checks the reopened database against the promises; forgets the promises
/// that were not binding and are gone, and binds those that survived.
fn check(
    replica: &mut Replica,
    path: &Path,
    promises: &mut Vec<Promise>,
    step: usize,
    broken: &mut Vec<String>,
) {
    let integrity: String = rusqlite::Connection::open_with_flags_and_vfs(
        path,
        rusqlite::OpenFlags::default(),
        VFS_NAME,
    )
    .and_then(|db| db.query_row("PRAGMA integrity_check", [], |row| row.get(0)))
    .expect("integrity check");
    if integrity != "ok" {
        broken.push(format!("after step {step}: integrity check: {integrity}"));
    }
    let seqs: BTreeSet<u64> = replica
        .op_ids()
        .expect("op ids")
        .into_iter()
        .map(|op| op.seq)
        .collect();
    let mut sold_by_ops = BTreeSet::new();
    for &seq in &seqs {
        if let Some(Intent::Checkout(checkout)) = replica.op_intent(seq).expect("op intent") {
            sold_by_ops.insert(checkout.order_id);
        }
    }
    let orders: BTreeSet<OrderId> = replica
        .orders_by_status(&OrderStatus::Pending, ORDERS_READ_MAX)
        .expect("orders")
        .into_iter()
        .map(|order| order.order_id)
        .collect();
    for order in orders.symmetric_difference(&sold_by_ops) {
        broken.push(format!(
            "after step {step}: order {order} and its checkout op are not both there"
        ));
    }
    promises.retain_mut(|promise| {
        let present = seqs.contains(&promise.seq)
            && match &promise.made {
                Made::Sale { order_id } => {
                    orders.contains(order_id)
                        && matches!(
                            replica.op_intent(promise.seq).expect("op intent"),
                            Some(Intent::Checkout(checkout)) if checkout.order_id == *order_id
                        )
                }
                Made::Edit { key, value } => {
                    replica.get(&notes_doc(), &[key]).expect("read back")
                        == Some(Value::Int(*value))
                }
            };
        if !present && promise.binding {
            broken.push(format!(
                "after step {step}: lost {:?} (op {}), whose call had returned",
                promise.made, promise.seq
            ));
        }
        promise.binding |= present;
        present
    });
}

fn summary(name: &str, outcome: &Outcome) {
    println!(
        "{name}: {} calls returned, {} cuts after a return, {} mid-call, {} unsynced writes lost, {} kept, {} broken promises",
        outcome.returned,
        outcome.cuts_after_return,
        outcome.cuts_mid_call,
        outcome.writes_lost,
        outcome.writes_kept,
        outcome.broken.len()
    );
    for broken in outcome.broken.iter().take(3) {
        println!("  {broken}");
    }
}

/// Sales (`synchronous=FULL`) mixed with cart-like edits (`NORMAL`), power
/// cuts after returns and in the middle of calls, random prefixes of the
/// unsynced writes surviving.
const MAIN: Scenario = Scenario {
    seed: SEED,
    model: SyncModel::Honest,
    sale_steps: Some(EDIT_ONE_IN),
    edit_durability: Durability::AppCrash,
    edits_bind: false,
    mid_call_cuts: true,
    keep_prefix: true,
};

#[test]
fn every_returned_sale_survives_power_cuts() {
    let outcome = run(MAIN);
    summary("synchronous=FULL sales", &outcome);
    assert!(
        outcome.broken.is_empty(),
        "broken promises: {:#?}",
        outcome.broken
    );
    assert!(
        outcome.cuts_after_return >= CUTS_MIN && outcome.cuts_mid_call >= CUTS_MIN,
        "too few cuts to mean anything: {outcome:?}"
    );
    assert!(
        outcome.writes_lost > 0,
        "no cut ever lost a write: {outcome:?}"
    );
}

/// The checker bites: the same commits made with `synchronous=NORMAL` (the
/// `AppCrash` path) and held to the promise of a sale are lost, and found
/// lost; made with `FULL` they are not.
#[test]
fn commits_under_synchronous_normal_are_found_lost() {
    let scenario = Scenario {
        sale_steps: None,
        edit_durability: Durability::AppCrash,
        edits_bind: true,
        mid_call_cuts: false,
        keep_prefix: false,
        ..MAIN
    };
    let normal = run(scenario);
    summary("synchronous=NORMAL commits", &normal);
    assert!(
        normal.broken.iter().any(|broken| broken.contains("lost")),
        "the checker missed commits synchronous=NORMAL lost: {normal:?}"
    );
    let full = run(Scenario {
        edit_durability: Durability::Full,
        ..scenario
    });
    summary("synchronous=FULL commits", &full);
    assert!(
        full.broken.is_empty(),
        "broken promises: {:#?}",
        full.broken
    );
}

/// The checker bites: on a disk that acknowledges syncs without doing them
/// (what `synchronous=OFF` amounts to), returned sales are lost, and found.
#[test]
fn sales_on_a_disk_that_ignores_syncs_are_found_lost() {
    let outcome = run(Scenario {
        model: SyncModel::Ignored,
        mid_call_cuts: false,
        ..MAIN
    });
    summary("sales, syncs ignored", &outcome);
    assert!(
        outcome.broken.iter().any(|broken| broken.contains("lost")),
        "the checker missed lost sales: {outcome:?}"
    );
}

/// On Apple platforms `fsync` leaves the data in the drive's cache; only
/// `F_FULLFSYNC` makes it durable. Sales survive such a disk exactly when
/// the build sets `PRAGMA fullfsync` (which the core does on Apple targets).
#[test]
fn sales_survive_a_full_fsync_disk_only_with_fullfsync() {
    let outcome = run(Scenario {
        model: SyncModel::FullFsyncOnly,
        ..MAIN
    });
    summary("sales, only F_FULLFSYNC durable", &outcome);
    assert_eq!(
        outcome.broken.is_empty(),
        cfg!(target_vendor = "apple"),
        "sales survive a full-fsync disk iff fullfsync is set: {outcome:?}"
    );
}

/// The model itself, on plain SQLite with the device's pragmas: rows
/// committed with `synchronous=FULL` survive a cut, rows committed with
/// `NORMAL` or `OFF` (never synced) do not.
#[test]
fn the_shim_keeps_synced_commits_and_drops_the_rest() {
    /// Rows committed (one transaction each) before the cut.
    const ROWS: i64 = 20;
    power_loss_vfs::install(false);
    for (level, survivors) in [("FULL", ROWS), ("NORMAL", 0), ("OFF", 0)] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let disk = Disk::attach(dir.path(), SyncModel::Honest);
        let path = dir.path().join("plain.db");
        let open = || {
            rusqlite::Connection::open_with_flags_and_vfs(
                &path,
                rusqlite::OpenFlags::default(),
                VFS_NAME,
            )
            .expect("open")
        };
        let db = open();
        db.pragma_update(None, "journal_mode", "WAL").expect("WAL");
        db.execute_batch("CREATE TABLE sales (id INTEGER PRIMARY KEY)")
            .expect("schema");
        db.pragma_update(None, "synchronous", level)
            .expect("synchronous");
        for id in 0..ROWS {
            db.execute("INSERT INTO sales (id) VALUES (?1)", [id])
                .expect("insert");
        }
        let report = disk.cut_power(db, Keep::Nothing);
        let count: i64 = open()
            .query_row("SELECT COUNT(*) FROM sales", [], |row| row.get(0))
            .expect("count");
        println!("plain SQLite, synchronous={level}: {count} of {ROWS} rows survive, {report:?}");
        assert_eq!(count, survivors, "synchronous={level}");
    }
}
