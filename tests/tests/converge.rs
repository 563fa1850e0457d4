//! Scenario (a): three terminals edit concurrently while one is offline, and
//! all converge through a real hub over real WebSockets.

use omnisync_core::{DocEdit, DocId, Edit, Value};
use omnisync_tests::{SYNC_TIMEOUT, TestHub, device, init_logs, wait_converged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_terminals_converge_after_one_was_offline() -> anyhow::Result<()> {
    init_logs();
    let hub = TestHub::start().await?;
    let tills: Vec<_> = (1..=3)
        .map(|n| device(&hub.url(), &format!("till-{n}"), "s1"))
        .collect::<Result<_, _>>()?;
    let stock = DocId::new("store.s1/stock")?;
    // The back office (till 1 here) creates the counters before anyone sells.
    tills[0].client.commit(&[DocEdit {
        doc: stock.clone(),
        edits: (0..10)
            .map(|n| Edit::put(&[&format!("sku-{n}")], Value::Counter(100)))
            .collect(),
    }])?;
    for till in &tills {
        till.client.wait_synced(SYNC_TIMEOUT).await?;
    }
    wait_converged(
        &tills.iter().map(|t| &t.client).collect::<Vec<_>>(),
        std::slice::from_ref(&stock),
    )
    .await?;

    tills[2].client.set_online(false);
    for round in 0..20 {
        for (index, till) in tills.iter().enumerate() {
            let sku = format!("sku-{}", (round + index) % 10);
            let order = DocId::new(format!(
                "store.s1/orders/{}",
                till.client.replica().device()
            ))?;
            till.client.commit(&[
                DocEdit {
                    doc: stock.clone(),
                    edits: vec![Edit::increment(&[&sku], -1)],
                },
                DocEdit {
                    doc: order,
                    edits: vec![Edit::put(&[&format!("o{round}")], Value::Str(sku.clone()))],
                },
            ])?;
        }
    }
    assert!(
        tills[2].client.status().pending >= 20,
        "offline till keeps its ops pending"
    );
    tills[2].client.set_online(true);
    for till in &tills {
        till.client.wait_synced(SYNC_TIMEOUT).await?;
    }
    let mut docs = vec![stock.clone()];
    for n in 1..=3 {
        docs.push(DocId::new(format!("store.s1/orders/till-{n}"))?);
    }
    wait_converged(&tills.iter().map(|t| &t.client).collect::<Vec<_>>(), &docs).await?;
    // 60 sales of one unit over 10 SKUs: every counter lost exactly 6.
    let mut store = tills[1].client.replica();
    for n in 0..10 {
        assert_eq!(
            store.get(&stock, &[&format!("sku-{n}")])?,
            Some(Value::Counter(94))
        );
    }
    assert_eq!(
        store
            .keys(&DocId::new("store.s1/orders/till-3")?, &[])?
            .len(),
        20
    );
    drop(store);
    // The hub holds the same document.
    let at_hub = omnisync_hub::load_doc(hub.hub.reader().as_ref(), &stock)?;
    let mut at_hub_heads: Vec<String> = at_hub.get_heads().iter().map(|h| h.to_string()).collect();
    at_hub_heads.sort();
    assert_eq!(at_hub_heads, tills[0].client.replica().doc_heads(&stock)?);
    Ok(())
}
