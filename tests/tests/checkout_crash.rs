//! Scenario: the hub process dies between committing a checkout's decision
//! and replying to the till. The decision is durable but nobody heard of it;
//! the till still holds the sale as pending. After a restart the till's retry
//! must get the ORIGINAL decision (same order number) from the hub's outcome
//! table, and the ledger must show the unit sold once, not decided again.
//!
//! The crash is the committer's failpoint (`OMNISYNC_FAILPOINT=crash-after-commit`,
//! see `server/src/committer.rs`): the real `omnisync-hub` binary aborts
//! right after the first group commit holding an intent returned Ok.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use omnisync_core::client::Link;
use omnisync_core::db::OpStatus;
use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::retail::orders::{CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{Decision, LineSource, StockCommand};
use omnisync_core::{StoreId, now_ms};
use omnisync_hub::committer::FAILPOINT_ENV;
use omnisync_hub::storage::SqliteReader;
use omnisync_hub_engine::log::HubLogRead as _;
use omnisync_tests::process::{HubProcess, free_port, hub_binary};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, device, http, init_logs, wait_until};

const STORE: &str = "s1";
const SKU: &str = "lamp";
/// Units received before the sale (escrow mode: the sale needs no policy).
const STOCK: u64 = 10;
/// How long the failpoint hub may take to abort after the sale.
const ABORT_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGABRT: what `std::process::abort()` ends a process with.
const SIGABRT: i32 = 6;

fn on_hand(device: &TestDevice) -> anyhow::Result<Option<u64>> {
    let store_id = StoreId::new(STORE)?;
    let view = device.client.replica().stock(&store_id, &Sku::new(SKU)?)?;
    Ok(view.map(|view| view.on_hand))
}

async fn wait_on_hand(device: &TestDevice, units: u64, what: &str) -> anyhow::Result<()> {
    wait_until(SYNC_TIMEOUT, what, || Ok(on_hand(device)? == Some(units))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_decided_just_before_the_hub_died_keeps_its_decision() -> anyhow::Result<()> {
    init_logs();
    let binary = hub_binary()?;
    let data = tempfile::tempdir()?;
    let port = free_port()?;

    // A hub without the failpoint: the back office receives the stock, and
    // both devices see it.
    let mut hub = HubProcess::start(&binary, port, data.path()).await?;
    let office = device(&hub.sync_url(), "office", STORE)?;
    let till = device(&hub.sync_url(), "till-1", STORE)?;
    let delivery = StockCommand::Receive {
        key: "delivery-1".parse().unwrap(),
        sku: Sku::new(SKU)?,
        quantity: STOCK,
    };
    let received = office
        .client
        .write(|store| store.stock_command(delivery, now_ms()))?;
    office
        .client
        .wait_for(SYNC_TIMEOUT, "the receipt's decision", |s| s.pending == 0)
        .await?;
    assert!(matches!(
        office.client.replica().op_status(&received)?,
        Some(OpStatus::Confirmed {
            decision: Decision::Applied { .. }
        })
    ));
    wait_on_hand(&till, STOCK, "the till to see the stock").await?;
    wait_on_hand(&office, STOCK, "the office to see the stock").await?;
    hub.kill()?;

    // The same data directory under a hub that dies after its next intent's commit.
    let mut hub = HubProcess::start_with_env(
        &binary,
        port,
        data.path(),
        &[(FAILPOINT_ENV, "crash-after-commit")],
    )
    .await?;
    till.client
        .wait_for(SYNC_TIMEOUT, "the till online again", |s| {
            s.link == Link::Online
        })
        .await?;
    let sale = CheckoutRequest {
        order_id: "till-1-0001".parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: Sku::new(SKU)?,
            quantity: 1,
            unit_price_minor: 250,
        }],
        currency: Currency::new("EUR")?,
        payment_ref: "card-0001".parse().unwrap(),
        channel: Channel::Pos,
    };
    let receipt = till.client.checkout(&sale)?;
    assert_eq!(receipt.lines[0].2, LineSource::Hub, "decided by the hub");
    let exit = hub.wait_exit(ABORT_TIMEOUT).await?;
    assert_eq!(
        exit.signal(),
        Some(SIGABRT),
        "the failpoint hub should abort after committing the sale: {exit:?}"
    );
    assert_eq!(
        till.client.replica().op_status(&receipt.op)?,
        Some(OpStatus::Pending),
        "the till never heard the decision"
    );

    // The decision is durable: read it from the dead hub's database.
    let stored = SqliteReader::new(data.path()).outcome(&receipt.op)?;
    let Some(AckOutcome::Decided(Decision::Confirmed { order_no })) = stored else {
        panic!("the hub died before its commit, or decided otherwise: {stored:?}");
    };

    // Restarted without the failpoint: the till reconnects and retries.
    let hub = HubProcess::start(&binary, port, data.path()).await?;
    till.client
        .wait_for(SYNC_TIMEOUT, "the retried sale's decision", |s| {
            s.link == Link::Online && s.pending == 0
        })
        .await?;
    assert_eq!(
        till.client.replica().op_status(&receipt.op)?,
        Some(OpStatus::Confirmed {
            decision: Decision::Confirmed { order_no }
        }),
        "the retry must get the original decision"
    );
    let order = till.client.replica().order("till-1-0001")?;
    assert_eq!(order.and_then(|order| order.order_no), Some(order_no));

    // Sold once: the other device's view, the admin read and the metrics agree.
    wait_on_hand(&office, STOCK - 1, "the office to see one unit sold").await?;
    let path = format!("/v1/admin/ops/{}/{}", receipt.op.replica, receipt.op.seq);
    let answer = http::get(hub.address, &path, SYNC_TIMEOUT).await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: serde_json::Value = serde_json::from_str(&answer.body)?;
    assert_eq!(body["outcome"], "decided", "{body}");
    assert_eq!(body["detail"]["Confirmed"]["order_no"], order_no, "{body}");
    let metrics = http::get(hub.address, "/metrics", SYNC_TIMEOUT).await?.body;
    let value = |name: &str| http::metric_value(&metrics, name);
    assert_eq!(
        value("omnisync_intents_decided_total"),
        Some(0.0),
        "the restarted hub decided the sale again:\n{metrics}"
    );
    assert!(
        value("omnisync_ops_duplicate_total").is_some_and(|n| n >= 1.0),
        "the retry was not answered from the outcome table:\n{metrics}"
    );
    wait_on_hand(&till, STOCK - 1, "the till to see one unit sold").await?;
    till.client.stop().await;
    office.client.stop().await;
    Ok(())
}
