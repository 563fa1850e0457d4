//! Moving a hub to PostgreSQL: a real `omnisync-hub` process on SQLite
//! serves the store demo (`pos-demo demo --hub`), is stopped, and
//! `omnisync-hub migrate --from DIR --to postgres://…` copies it into a
//! private PostgreSQL. The copy holds the same log, change for change (seq,
//! document, origin, bytes) and every op outcome (migrate checks each
//! table's rows against its source before it commits); a hub process
//! serving the database gives a fresh till the same documents the SQLite
//! hub held, and takes new changes after the copied head.

use std::process::Command;
use std::sync::Arc;

use anyhow::Context as _;
use omnisync_core::client::Client;
use omnisync_core::{DocEdit, DocId, DocSetId, Edit, StoreId, Value};
use omnisync_hub::pg_cluster::PgCluster;
use omnisync_hub::storage::SqliteReader;
use omnisync_hub::storage::postgres::{PgReader, PgUrl};
use omnisync_hub_engine::log::HubLogRead;
use omnisync_tests::process::{HubProcess, free_port, hub_binary, pos_demo_binary};
use omnisync_tests::{SYNC_TIMEOUT, device, init_logs, wait_converged};

const STORE: &str = "migrated-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_served_the_demo_serves_the_same_documents_from_postgres() -> anyhow::Result<()>
{
    init_logs();
    let hub_bin = hub_binary()?;
    let demo_bin = pos_demo_binary()?;
    let dir = tempfile::tempdir()?;
    // The store day on a SQLite hub process.
    let mut sqlite_hub = HubProcess::start(&hub_bin, free_port()?, dir.path()).await?;
    let demo = Command::new(&demo_bin)
        .args(["demo", "--hub", &sqlite_hub.sync_url(), "--store", STORE])
        .output()
        .context("running pos-demo demo")?;
    anyhow::ensure!(
        demo.status.success(),
        "the demo failed on the SQLite hub:\n{}{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );
    sqlite_hub.kill()?;
    drop(sqlite_hub);

    let cluster: Arc<PgCluster> = PgCluster::shared().map_err(anyhow::Error::msg)?;
    let database = cluster
        .create_database("migrated")
        .map_err(anyhow::Error::msg)?;
    let migrate = Command::new(&hub_bin)
        .arg("migrate")
        .arg("--from")
        .arg(dir.path())
        .args(["--to", &database])
        .output()
        .context("running omnisync-hub migrate")?;
    let said = String::from_utf8_lossy(&migrate.stdout).into_owned();
    anyhow::ensure!(
        migrate.status.success(),
        "migrate failed:\n{said}{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(said.contains("migrated: log "), "{said}");

    // The same log, change for change, and the same outcomes.
    let sqlite = SqliteReader::new(dir.path());
    let postgres = PgReader::new(&PgUrl::parse(&database).map_err(anyhow::Error::msg)?);
    let before = sqlite.changes_between(0, u64::MAX >> 1)?;
    let after = postgres.changes_between(0, u64::MAX >> 1)?;
    let count = before.by_set.values().map(Vec::len).sum::<usize>();
    assert!(count > 50, "the demo left {count} changes");
    assert_eq!(before.by_set, after.by_set, "the copied log differs");
    let outcomes = said
        .lines()
        .find_map(|line| line.strip_prefix("op_outcomes: "))
        .and_then(|rest| rest.strip_suffix(" rows"))
        .and_then(|rows| rows.parse::<u64>().ok())
        .context("migrate did not say how many outcomes it copied")?;
    assert!(outcomes > 10, "{said}");

    // A second run of migrate refuses a database that holds a log.
    let again = Command::new(&hub_bin)
        .arg("migrate")
        .arg("--from")
        .arg(dir.path())
        .args(["--to", &database])
        .output()?;
    assert!(!again.status.success());
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(refused.contains("already holds a hub log"), "{refused}");

    // A hub process on PostgreSQL serves a fresh till the same documents.
    let pg_hub = HubProcess::start_postgres(&hub_bin, free_port()?, &database).await?;
    let store = StoreId::new(STORE)?;
    let set = DocSetId::store(&store);
    let docs: Vec<DocId> = before
        .by_set
        .get(&set)
        .context("the demo wrote no store documents")?
        .iter()
        // Records (stock, allowances) are not automerge documents: the
        // log comparison above covers them.
        .filter(|change| !omnisync_core::vocab::record::is_record_doc(&change.doc))
        .map(|change| change.doc.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(docs.len() >= 3, "documents to compare: {docs:?}");
    let fresh = device(&pg_hub.sync_url(), "till-new", STORE)?;
    fresh.client.wait_synced(SYNC_TIMEOUT).await?;
    for doc in &docs {
        let held = omnisync_hub::load_doc(&sqlite, doc)?;
        let mut heads: Vec<String> = held.get_heads().iter().map(|h| h.to_string()).collect();
        heads.sort();
        let mut got = fresh.client.replica().doc_heads(doc)?;
        got.sort();
        assert_eq!(got, heads, "{doc} differs on the PostgreSQL hub");
    }
    // New changes are numbered after the copied head and reach other tills.
    let other = device(&pg_hub.sync_url(), "till-other", STORE)?;
    let note = DocId::new(format!("store.{STORE}/after-migration"))?;
    fresh.client.commit(&[DocEdit {
        doc: note.clone(),
        edits: vec![Edit::put(&["moved"], Value::Bool(true))],
    }])?;
    let clients: Vec<&Client> = vec![&fresh.client, &other.client];
    for client in &clients {
        client.wait_synced(SYNC_TIMEOUT).await?;
    }
    wait_converged(&clients, std::slice::from_ref(&note)).await?;
    let head_before = before
        .by_set
        .values()
        .flatten()
        .map(|change| change.hub_seq)
        .max()
        .unwrap_or(0);
    let new = postgres.changes_between(head_before, u64::MAX >> 1)?;
    assert_eq!(
        new.by_set
            .values()
            .flatten()
            .next()
            .map(|change| change.hub_seq),
        Some(head_before + 1),
        "numbering continues after the copied head"
    );
    fresh.client.stop().await;
    other.client.stop().await;
    Ok(())
}
