//! Compaction end to end: terminals edit through a real hub; the hub is
//! restarted with compaction that takes everything, its committer compacts
//! the store's set into snapshots and deletes the changes; then a fresh
//! terminal, one whose cursor stopped in the deleted range and one that
//! followed everything converge over real WebSockets, also on a compacted
//! document changed again afterwards.

use std::time::Duration;

use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, Replica, StoreId, Value};
use omnisync_hub::{Hub, HubConfig};
use omnisync_hub_engine::log::{CompactPolicy, HubLogError};
use omnisync_tests::{
    SYNC_TIMEOUT, TestDevice, device, http, init_logs, wait_converged, wait_until,
};

/// Reopens a stopped device's store file against another hub address.
async fn reconnect(device: TestDevice, url: &str) -> anyhow::Result<TestDevice> {
    device.client.stop().await;
    let TestDevice { client, path, dir } = device;
    let (name, store) = {
        let replica = client.replica();
        (replica.device().clone(), replica.store_id().clone())
    };
    drop(client);
    let opened = Replica::open(&path, name, store.clone())?;
    let client = Client::new(opened, SyncConfig::new(url));
    client.subscribe(&DocSetId::store(&store))?;
    client.start();
    Ok(TestDevice { client, path, dir })
}

fn put(doc: &DocId, key: &str, value: i64) -> DocEdit {
    DocEdit {
        doc: doc.clone(),
        edits: vec![Edit::put(&[key], Value::Int(value))],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_converge_after_the_hub_compacted_their_set() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let mut config = HubConfig::new("127.0.0.1:0".parse()?, dir.path().to_path_buf());
    config.compaction = None;
    let hub = Hub::start(config.clone()).await?;
    let till1 = device(&hub.sync_url(), "till-1", "s1")?;
    let till2 = device(&hub.sync_url(), "till-2", "s1")?;
    let docs: Vec<DocId> = (0..3)
        .map(|n| DocId::new(format!("store.s1/doc-{n}")))
        .collect::<Result<_, _>>()?;
    for round in 0..5 {
        for doc in &docs {
            till1.client.commit(&[put(doc, "one", round)])?;
        }
    }
    till1.client.wait_synced(SYNC_TIMEOUT).await?;
    wait_converged(&[&till1.client, &till2.client], &docs).await?;
    // till-2 stops here: its cursor will be in the deleted range.
    till2.client.set_online(false);
    for round in 0..5 {
        for doc in &docs {
            till1.client.commit(&[put(doc, "two", round)])?;
        }
    }
    till1.client.wait_synced(SYNC_TIMEOUT).await?;
    hub.stop().await?;

    // The same data directory, compacting everything at once.
    config.compaction = Some(CompactPolicy {
        after_age_ms: 0,
        min_changes: 1,
        min_bytes: u64::MAX,
    });
    let hub = Hub::start(config).await?;
    let set = DocSetId::store(&StoreId::new("s1")?);
    let reader = hub.reader();
    wait_until(
        Duration::from_secs(20),
        "the committer's compaction",
        || match reader.changes_since(&set, 0, 10, 1 << 20) {
            Err(HubLogError::Compacted { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(error) => Err(error.into()),
        },
    )
    .await?;
    for doc in &docs {
        assert_eq!(
            reader.doc_changes(doc)?.len(),
            1,
            "only the snapshot of {doc} is left"
        );
    }
    // The committer deletes in the steps after the snapshots, and counts it.
    let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
    loop {
        let metrics = http::get(hub.address(), "/metrics", Duration::from_secs(5)).await?;
        let count = |name| http::metric_value(&metrics.body, name).unwrap_or(0.0);
        let deleted = count("omnisync_compacted_changes_total");
        if deleted >= 30.0 {
            assert_eq!(count("omnisync_compacted_snapshots_total"), 3.0);
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {deleted} changes deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let till1 = reconnect(till1, &hub.sync_url()).await?;
    let till2 = reconnect(till2, &hub.sync_url()).await?;
    till2.client.set_online(true);
    let till3 = device(&hub.sync_url(), "till-3", "s1")?;
    // A compacted document changes again.
    till1.client.commit(&[put(&docs[0], "three", 1)])?;
    till1.client.wait_synced(SYNC_TIMEOUT).await?;
    let clients = [&till1.client, &till2.client, &till3.client];
    wait_converged(&clients, &docs).await?;
    let heads = {
        let mut store = till3.client.replica();
        assert_eq!(store.get(&docs[0], &["three"])?, Some(Value::Int(1)));
        assert_eq!(store.get(&docs[2], &["two"])?, Some(Value::Int(4)));
        store.doc_heads(&docs[0])?
    };
    let at_hub = omnisync_hub::load_doc(reader.as_ref(), &docs[0])?;
    let mut at_hub: Vec<String> = at_hub.get_heads().iter().map(|h| h.to_string()).collect();
    at_hub.sort();
    assert_eq!(at_hub, heads, "the hub's document is the devices'");
    hub.stop().await?;
    Ok(())
}
