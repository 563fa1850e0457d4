//! Failover between hub processes: a device given the addresses of two real
//! `omnisync-hub` processes syncs with the first; when that process is
//! SIGKILLed, the device must be connected to the second within 3 s, and the
//! ops it records from then on must be acknowledged by the second hub, each
//! stored there exactly once — none lost, none applied twice, none of the
//! ops the first hub already acknowledged sent again.
//!
//! Each hub has a data directory of its own (SQLite), so each hub's
//! database is audited for the ops that were its to store. A second
//! scenario gives the device an address nobody listens on first: the
//! failed connect must move it on to the live hub at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::client::{Link, Notice, SyncStatus};
use omnisync_core::db::OpStatus;
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, OpId, StoreId, Value};
use omnisync_hub::storage::SqliteReader;
use omnisync_tests::audit::{self, CommittedOps};
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, device_with_hubs, init_logs};

const STORE: &str = "s1";
/// How long a device may take to be online at the surviving hub after its
/// hub process was SIGKILLed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(3);
/// Ops recorded (and acknowledged by the first hub) before the kill.
const OPS_BEFORE_KILL: u64 = 20;
/// Ops recorded right after the kill, while the device is between hubs.
const OPS_BETWEEN_HUBS: u64 = 5;
/// Ops recorded once the device is at the second hub.
const OPS_AFTER_FAILOVER: u64 = 20;

/// Records `count` sales on `till`, each one op changing `doc`, and notes
/// them in `committed`.
fn sell(
    till: &TestDevice,
    doc: &DocId,
    first: u64,
    count: u64,
    committed: &mut CommittedOps,
) -> anyhow::Result<()> {
    for sale in first..first + count {
        let op = till.client.commit(&[DocEdit {
            doc: doc.clone(),
            edits: vec![Edit::put(&[&format!("sale-{sale:04}")], Value::Int(499))],
        }])?;
        committed.record(op.seq, vec![doc.clone()]);
    }
    Ok(())
}

/// Waits until the device's session is up at `url`.
async fn online_at(till: &TestDevice, url: &str, timeout: Duration) -> anyhow::Result<SyncStatus> {
    let status = till
        .client
        .wait_for(timeout, "a session at the expected hub", |status| {
            status.link == Link::Online && status.hub.as_deref() == Some(url)
        })
        .await
        .with_context(|| {
            format!(
                "not online at {url} within {timeout:?}; status {:?}",
                till.client.status()
            )
        })?;
    Ok(status)
}

/// Audits one hub's database: it holds each op of `committed` exactly once
/// (applied, its changes in the log once) and no other change of the device.
fn audit_hub(
    data_dir: &std::path::Path,
    till: &TestDevice,
    committed: &CommittedOps,
) -> anyhow::Result<()> {
    let reader = SqliteReader::new(data_dir);
    let changes = audit::all_changes(&reader, &DocSetId::store(&StoreId::new(STORE)?))?;
    let replica = till.client.replica().replica();
    audit::assert_exactly_once(&reader, &changes, replica, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_fails_over_to_the_second_hub_within_three_seconds_and_loses_no_op()
-> anyhow::Result<()> {
    init_logs();
    let binary = hub_binary()?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut hub_a = HubProcess::start(&binary, free_port()?, dir_a.path()).await?;
    let hub_b = HubProcess::start(&binary, free_port()?, dir_b.path()).await?;
    let (url_a, url_b) = (hub_a.sync_url(), hub_b.sync_url());
    let till = device_with_hubs(&[url_a.clone(), url_b.clone()], "till-1", STORE)?;
    online_at(&till, &url_a, SYNC_TIMEOUT).await?;

    // Sales acknowledged by hub A.
    let before = DocId::new(format!("store.{STORE}/sales/before"))?;
    let mut at_a = CommittedOps::default();
    sell(&till, &before, 1, OPS_BEFORE_KILL, &mut at_a)?;
    till.client
        .wait_synced(SYNC_TIMEOUT)
        .await
        .context("hub A acknowledging the first sales")?;

    // Hub A dies; the till keeps selling.
    let mut notices = till.client.notices();
    hub_a.kill()?;
    let killed = Instant::now();
    let after = DocId::new(format!("store.{STORE}/sales/after"))?;
    let mut at_b = CommittedOps::default();
    sell(&till, &after, 1, OPS_BETWEEN_HUBS, &mut at_b)?;
    online_at(&till, &url_b, FAILOVER_DEADLINE).await?;
    let failover = killed.elapsed();
    assert!(
        failover <= FAILOVER_DEADLINE,
        "online at hub B {failover:?} after hub A was killed"
    );
    let outage_ms = loop {
        let notice = tokio::time::timeout(SYNC_TIMEOUT, notices.recv())
            .await
            .context("no Reconnected notice")??;
        if let Notice::Reconnected { hub, outage_ms } = notice {
            assert_eq!(hub, url_b, "the notice names the new hub");
            break outage_ms;
        }
    };
    assert!(
        outage_ms <= FAILOVER_DEADLINE.as_millis() as u64,
        "the device counted an outage of {outage_ms} ms"
    );
    eprintln!("failover: online at hub B {failover:?} after the kill; outage {outage_ms} ms");

    // Sales at hub B, acknowledged by it.
    sell(
        &till,
        &after,
        OPS_BETWEEN_HUBS + 1,
        OPS_AFTER_FAILOVER,
        &mut at_b,
    )?;
    till.client
        .wait_synced(SYNC_TIMEOUT)
        .await
        .context("hub B acknowledging the sales")?;
    let status = till.client.status();
    assert_eq!(status.hub.as_deref(), Some(url_b.as_str()));
    assert_eq!((status.pending, status.rejected), (0, 0), "{status:?}");
    {
        let store = till.client.replica();
        let replica = store.replica();
        for seq in at_a.ops.keys().chain(at_b.ops.keys()) {
            let op = OpId { replica, seq: *seq };
            assert!(
                matches!(store.op_status(&op)?, Some(OpStatus::Acknowledged { .. })),
                "op {op}: {:?}",
                store.op_status(&op)?
            );
        }
    }

    // Each hub stored exactly the ops that were its own, once: hub B every
    // op recorded after the kill and none of those hub A acknowledged.
    audit_hub(dir_b.path(), &till, &at_b).context("hub B's database")?;
    audit_hub(dir_a.path(), &till, &at_a).context("hub A's database")?;
    till.client.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_nobody_listens_on_is_skipped_at_once() -> anyhow::Result<()> {
    init_logs();
    let binary = hub_binary()?;
    let dir = tempfile::tempdir()?;
    let hub = HubProcess::start(&binary, free_port()?, dir.path()).await?;
    let dead = format!("ws://127.0.0.1:{}/v1/sync", free_port()?);
    let started = Instant::now();
    let till = device_with_hubs(&[dead, hub.sync_url()], "till-2", STORE)?;
    online_at(&till, &hub.sync_url(), FAILOVER_DEADLINE).await?;
    eprintln!("online at the second address after {:?}", started.elapsed());
    till.client.stop().await;
    Ok(())
}
