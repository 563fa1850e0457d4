//! Several hub processes on one PostgreSQL database: a change committed
//! through one hub reaches devices connected to the other (LISTEN/NOTIFY
//! and the fan-out's gap reads), the log stays gapless with every op once,
//! and a revocation made through one hub closes the device's session on
//! the other. The two hubs are embedded here (each its own runtime tasks,
//! committer thread and database connections, as two processes would
//! have); `pg_failover.rs` kills real processes.

use std::sync::Arc;

use omnisync_core::client::Client;
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, StoreId, Value};
use omnisync_hub::pg_cluster::PgCluster;
use omnisync_hub::{Hub, HubConfig};
use omnisync_tests::{SYNC_TIMEOUT, audit, device, init_logs, wait_converged};

/// A hub on the cluster's database `name`, on a free loopback port.
async fn hub_on(database: &str, dir: &std::path::Path) -> anyhow::Result<Hub> {
    let mut config = HubConfig::new("127.0.0.1:0".parse()?, dir.to_path_buf());
    config.database = Some(database.to_owned());
    Ok(Hub::start(config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_hub_reach_devices_of_the_other() -> anyhow::Result<()> {
    init_logs();
    let cluster: Arc<PgCluster> = PgCluster::shared().map_err(anyhow::Error::msg)?;
    let database = cluster
        .create_database("two_hubs")
        .map_err(anyhow::Error::msg)?;
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = hub_on(&database, dirs.0.path()).await?;
    let second = hub_on(&database, dirs.1.path()).await?;
    let tills = [
        device(&first.sync_url(), "till-1", "s1")?,
        device(&second.sync_url(), "till-2", "s1")?,
        device(&second.sync_url(), "till-3", "s1")?,
    ];
    let doc = DocId::new("store.s1/notes")?;
    // Edits through both hubs, interleaved, so each hub's commits fall
    // between the other's and its fan-out must read the gaps.
    for round in 0..20i64 {
        for (index, till) in tills.iter().enumerate() {
            till.client.commit(&[DocEdit {
                doc: doc.clone(),
                edits: vec![Edit::put(
                    &[&format!("till-{index}-{round}")],
                    Value::Int(round),
                )],
            }])?;
        }
    }
    let clients: Vec<&Client> = tills.iter().map(|till| &till.client).collect();
    for client in &clients {
        client.wait_synced(SYNC_TIMEOUT).await?;
    }
    wait_converged(&clients, std::slice::from_ref(&doc)).await?;
    let merged = tills[0].client.replica().doc_json(&doc)?.to_string();
    for index in 0..tills.len() {
        assert!(
            merged.contains(&format!("till-{index}-19")),
            "till-1 (on the first hub) lacks edits made through the second: {merged}"
        );
    }
    // The listening connections are cut (a database restart, a proxy):
    // the hubs listen again and catch up on what was committed meanwhile.
    cluster
        .execute(
            "two_hubs",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'two_hubs' AND application_name = 'omnisync-hub-listener'",
        )
        .map_err(anyhow::Error::msg)?;
    let late = DocId::new("store.s1/after-the-cut")?;
    tills[1].client.commit(&[DocEdit {
        doc: late.clone(),
        edits: vec![Edit::put(&["seen"], Value::Bool(true))],
    }])?;
    tills[1].client.wait_synced(SYNC_TIMEOUT).await?;
    wait_converged(&clients, std::slice::from_ref(&late)).await?;
    assert!(
        tills[0]
            .client
            .replica()
            .doc_json(&late)?
            .to_string()
            .contains("seen"),
        "a change made through the second hub after the cut reached the first hub's till"
    );

    // One log: gapless, each change once, whichever hub stored it.
    let changes = audit::all_changes(&*first.reader(), &DocSetId::store(&StoreId::new("s1")?))?;
    audit::assert_gapless(&changes)?;
    assert_eq!(changes.len(), 61, "61 edits, each stored once");
    for till in tills {
        till.client.stop().await;
    }
    second.stop().await?;
    first.stop().await?;
    Ok(())
}
