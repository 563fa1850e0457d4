//! The README's "Using the core from Rust" example, run against a real hub so
//! the README cannot drift from the API.

use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::db::OpStatus;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::vocab::intent::{Decision, StockCommand};
use omnisync_core::{DeviceId, DocSetId, Replica, StoreId, now_ms};
use omnisync_tests::{SYNC_TIMEOUT, TestHub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_works() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("till-1.db");

    // --- as in README.md ---
    let store_id = StoreId::new("berlin-01")?;
    let store = Replica::open(path.as_ref(), DeviceId::new("till-1")?, store_id.clone())?;
    let client = Client::new(store, SyncConfig::new(hub.url()));
    client.subscribe(&DocSetId::store(&store_id))?;
    client.start();

    let espresso = Sku::new("sku-001")?;
    let money = Money {
        amount_minor: 1899,
        currency: Currency::new("EUR")?,
    };
    client.write(|db| db.set_price(&store_id, &espresso, Channel::Pos, 0, &money, now_ms()))?;
    let price = client
        .replica()
        .price_in_force(&store_id, &espresso, Channel::Pos, now_ms())?;
    let found = client
        .replica()
        .search_products(&store_id, "espresso", 20)?;

    let expected_price = price.as_ref().map(|price| price.money.clone());
    let delivery = StockCommand::Receive {
        key: "delivery-1".parse().unwrap(),
        sku: espresso.clone(),
        quantity: 50,
    };
    client.write(|db| db.stock_command(delivery, now_ms()))?;
    client
        .wait_synced(std::time::Duration::from_secs(5))
        .await?;

    let line = OrderLine {
        sku: espresso,
        quantity: 1,
        unit_price_minor: price.map_or(0, |p| p.money.amount_minor),
    };
    let sale = CheckoutRequest {
        order_id: "till-1-0001".parse().unwrap(),
        idempotency_key: None,
        lines: vec![line],
        currency: Currency::new("EUR")?,
        payment_ref: "card-7731".parse().unwrap(),
        channel: Channel::Pos,
    };
    let receipt = client.checkout(&sale)?;
    let op = receipt.op;
    // --- end of the README's example ---

    assert_eq!(expected_price, Some(money));
    assert!(found.is_empty(), "no catalog was published in this example");
    client
        .wait_for(SYNC_TIMEOUT, "acknowledgement", |status| {
            status.pending == 0
        })
        .await?;
    assert!(matches!(
        client.replica().op_status(&op)?,
        Some(OpStatus::Confirmed {
            decision: Decision::Confirmed { order_no: 1 }
        })
    ));
    let order = client
        .replica()
        .order("till-1-0001")?
        .expect("the order is queryable");
    assert_eq!(order.total.amount_minor, 1899);
    assert_eq!(order.order_no, Some(1));
    client.stop().await;
    Ok(())
}
