//! Scenario (b): a terminal *process* is killed with SIGKILL in the middle of
//! recording sales, without closing anything. Every sale it reported as
//! committed must be in its store file when the file is reopened, and its ops
//! must reach the hub exactly once: pending ones uploaded, acknowledged ones
//! not applied again.
//!
//! The terminal is the `omnisync-test-terminal` binary of this package; it
//! prints `committed <seq> <sale>` after each durable commit, so the test
//! knows which sales the cashier was told about before the kill.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::db::OpStatus;
use omnisync_core::{DeviceId, DocSetId, OpId, Replica, ReplicaId, StoreId, Value};
use omnisync_tests::audit::{self, CommittedOps};
use omnisync_tests::process::ChildGuard;
use omnisync_tests::terminal::{self, TerminalLine};
use omnisync_tests::{SYNC_TIMEOUT, TestHub, device, init_logs};

const STORE: &str = "s1";
const DEVICE: &str = "till-7";
/// More sales than the terminal gets to record before it is killed.
const SALES_UNLIMITED: u64 = 1_000_000;
/// Sales the test sees committed before it kills the terminal.
const COMMITS_BEFORE_KILL: usize = 40;
/// Longest wait for the terminal's next line.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the test learned from a terminal before killing it.
struct Killed {
    replica: ReplicaId,
    /// The ops the terminal printed as committed, in order.
    printed: Vec<OpId>,
}

/// What the reopened store file holds.
struct Reopened {
    store: Replica,
    /// Every op in the log, oldest first; op n is sale n.
    ops: Vec<OpId>,
}

/// Starts the terminal on `db`, optionally syncing with `hub`.
fn spawn_terminal(
    db: &Path,
    hub: Option<&str>,
    sales: u64,
    interval_ms: u64,
) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omnisync-test-terminal"));
    command
        .arg("--db")
        .arg(db)
        .args(["--device", DEVICE, "--store", STORE])
        .args([
            "--sales",
            &sales.to_string(),
            "--interval-ms",
            &interval_ms.to_string(),
        ])
        .env("RUST_LOG", "warn");
    if let Some(url) = hub {
        command.args(["--hub", url]);
    }
    ChildGuard::spawn("terminal", command)
}

/// Reads the terminal's lines until `ready` holds after a commit, then
/// SIGKILLs it mid-stream. `ready` is polled, so it may look at the hub.
async fn run_until_then_kill(
    terminal: &mut ChildGuard,
    mut ready: impl FnMut(&[OpId]) -> anyhow::Result<bool>,
) -> anyhow::Result<Killed> {
    let first = terminal.next_line(LINE_TIMEOUT).await?;
    let Some(TerminalLine::Replica(replica)) = TerminalLine::parse(&first) else {
        anyhow::bail!("the terminal's first line is {first:?}, not `replica <hex>`");
    };
    let mut printed: Vec<OpId> = Vec::new();
    loop {
        let line = terminal.next_line(LINE_TIMEOUT).await?;
        let Some(TerminalLine::Committed { seq, sale }) = TerminalLine::parse(&line) else {
            anyhow::bail!("unexpected terminal line {line:?} before the kill");
        };
        anyhow::ensure!(
            sale == printed.len() as u64 + 1,
            "sale {sale} printed out of order after {printed:?}"
        );
        anyhow::ensure!(
            printed.last().is_none_or(|last| last.seq < seq),
            "op {seq} after {printed:?}"
        );
        printed.push(OpId { replica, seq });
        if ready(&printed)? {
            break;
        }
    }
    let status = terminal.kill()?;
    anyhow::ensure!(
        !status.success(),
        "the terminal finished before it was killed: {status}"
    );
    Ok(Killed { replica, printed })
}

/// Reopens the killed terminal's store file in this process and checks that
/// every printed sale is there, whole (both documents) and readable.
fn reopen_and_check(db: &Path, killed: &Killed) -> anyhow::Result<Reopened> {
    let mut store = Replica::open(db, DeviceId::new(DEVICE)?, StoreId::new(STORE)?)
        .context("reopening the killed terminal's store")?;
    assert_eq!(
        store.replica(),
        killed.replica,
        "the reopened store is the same replica"
    );
    let ops = store.op_ids()?;
    let printed_max = killed.printed.last().map_or(0, |op| op.seq);
    assert!(
        store.last_seq()? >= printed_max,
        "last_seq < last printed commit {printed_max}: a sale was lost"
    );
    // The log starts with the printed ops, in order; the terminal may have
    // committed more than it got to print before the kill.
    assert!(
        ops.len() >= killed.printed.len(),
        "{} ops in the log, {} printed",
        ops.len(),
        killed.printed.len()
    );
    assert_eq!(
        &ops[..killed.printed.len()],
        killed.printed.as_slice(),
        "the printed ops lead the log"
    );
    // Every op in the file is a whole sale that reads back with its amount.
    let sales = terminal::sales_doc(STORE, DEVICE)?;
    for (index, op) in ops.iter().enumerate() {
        let sale = index as u64 + 1;
        let amount = store.get(&sales, &[&terminal::sale_key(sale)])?;
        assert_eq!(
            amount,
            Some(Value::Int(terminal::sale_amount_minor(sale))),
            "sale {sale} (op {op}) after reopening"
        );
    }
    assert_eq!(store.keys(&sales, &[])?.len(), ops.len(), "one sale per op");
    let till = terminal::till_doc(STORE, DEVICE)?;
    let last_sale = store.get(&till, &["last_sale"])?;
    assert_eq!(
        last_sale,
        Some(Value::Int(ops.len() as i64)),
        "the last op changed both documents"
    );
    Ok(Reopened { store, ops })
}

/// The ops the store records as acknowledged by the hub.
fn acknowledged_seqs(reopened: &Reopened) -> anyhow::Result<BTreeSet<u64>> {
    let mut acknowledged = BTreeSet::new();
    for op in &reopened.ops {
        if let Some(OpStatus::Acknowledged { .. }) = reopened.store.op_status(op)? {
            acknowledged.insert(op.seq);
        }
    }
    Ok(acknowledged)
}

/// What the terminal committed: each op a sale of two documents.
fn committed_sales(ops: &[OpId]) -> anyhow::Result<CommittedOps> {
    let mut committed = CommittedOps::default();
    for op in ops {
        committed.record(
            op.seq,
            vec![
                terminal::sales_doc(STORE, DEVICE)?,
                terminal::till_doc(STORE, DEVICE)?,
            ],
        );
    }
    Ok(committed)
}

/// Checks the hub's log against `ops`: each op stored exactly once.
fn audit_hub(hub: &TestHub, replica: ReplicaId, ops: &[OpId]) -> anyhow::Result<()> {
    let reader = hub.hub.reader();
    let changes = audit::all_changes(reader.as_ref(), &DocSetId::store(&StoreId::new(STORE)?))?;
    audit::assert_exactly_once(reader.as_ref(), &changes, replica, &committed_sales(ops)?)
}

/// Connects the reopened store to the hub, waits until it synced, and checks
/// that the hub holds each of its ops exactly once.
async fn sync_and_audit(hub: &TestHub, reopened: Reopened) -> anyhow::Result<Client> {
    let Reopened { store, ops } = reopened;
    let replica = store.replica();
    let client = Client::new(store, SyncConfig::new(hub.url()));
    client.subscribe(&DocSetId::store(&StoreId::new(STORE)?))?;
    client.start();
    client
        .wait_synced(SYNC_TIMEOUT)
        .await
        .context("the reopened terminal syncing")?;
    let stats = client.replica().op_stats(omnisync_core::now_ms())?;
    assert_eq!(
        (stats.pending, stats.acknowledged, stats.rejected),
        (0, ops.len() as u64, 0),
        "op log after sync"
    );
    audit_hub(hub, replica, &ops)?;
    Ok(client)
}

/// A fresh device of the same store sees every sale.
async fn second_device_sees_all(hub: &TestHub, sales: usize) -> anyhow::Result<()> {
    let other = device(&hub.url(), "till-8", STORE)?;
    other.client.wait_synced(SYNC_TIMEOUT).await?;
    let doc = terminal::sales_doc(STORE, DEVICE)?;
    omnisync_tests::wait_until(SYNC_TIMEOUT, "every sale at another device", || {
        Ok(other.client.replica().keys(&doc, &[])?.len() == sales)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_terminal_killed_mid_sale_keeps_every_sale_and_uploads_each_once()
-> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("terminal.db");
    let mut process = spawn_terminal(&db, None, SALES_UNLIMITED, 0)?;
    let killed = run_until_then_kill(&mut process, |printed| {
        Ok(printed.len() >= COMMITS_BEFORE_KILL)
    })
    .await?;

    let reopened = reopen_and_check(&db, &killed)?;
    let sales = reopened.ops.len();
    assert!(
        acknowledged_seqs(&reopened)?.is_empty(),
        "an offline terminal has no acks"
    );
    assert_eq!(
        reopened.store.op_stats(omnisync_core::now_ms())?.pending,
        sales as u64,
        "every op is pending"
    );

    let hub = TestHub::start().await?;
    let client = sync_and_audit(&hub, reopened).await?;
    second_device_sees_all(&hub, sales).await?;

    // The terminal program itself starts again on the same file, continues
    // the sales and syncs; nothing is uploaded twice.
    client.stop().await;
    drop(client);
    let more = 5;
    let mut restarted = spawn_terminal(&db, Some(&hub.url()), more, 0)?;
    restarted
        .wait_for_line(SYNC_TIMEOUT, |line| line == "done")
        .await?;
    let status = restarted.wait_exit(LINE_TIMEOUT).await?;
    assert!(status.success(), "restarted terminal: {status}");
    let reopened = Replica::open(&db, DeviceId::new(DEVICE)?, StoreId::new(STORE)?)?;
    let ops = reopened.op_ids()?;
    assert_eq!(ops.len(), sales + more as usize, "sales after the restart");
    audit_hub(&hub, killed.replica, &ops)?;
    second_device_sees_all(&hub, ops.len()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_killed_while_uploading_gets_every_op_to_the_hub_exactly_once()
-> anyhow::Result<()> {
    init_logs();
    let hub = TestHub::start().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("terminal.db");
    let mut process = spawn_terminal(&db, Some(&hub.url()), SALES_UNLIMITED, 1)?;
    // Kill only once the hub has applied some of the terminal's ops, so the
    // kill lands while ops are flowing: some acked, some in flight or pending.
    let reader = hub.hub.reader();
    let killed = run_until_then_kill(&mut process, |printed| {
        let applied = reader.outcome(&printed[0])?.is_some();
        Ok(applied && printed.len() >= COMMITS_BEFORE_KILL)
    })
    .await?;

    let reopened = reopen_and_check(&db, &killed)?;
    let sales = reopened.ops.len();
    // An ack recorded on the device means the op is durable at the hub.
    let acknowledged = acknowledged_seqs(&reopened)?;
    assert!(
        !acknowledged.is_empty(),
        "the terminal recorded acks before the kill"
    );
    audit::assert_all_applied(reader.as_ref(), killed.replica, &acknowledged)?;
    tracing::info!(sales, acknowledged = acknowledged.len(), "terminal killed");

    let _client = sync_and_audit(&hub, reopened).await?;
    second_device_sees_all(&hub, sales).await?;
    Ok(())
}
