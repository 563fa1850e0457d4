//! Scenario: the last unit, sold by ten terminals at once, some offline.
//!
//! A real hub (in-process, SQLite in a temp dir) holds one unit each of two
//! SKUs in strong mode: `lamp` sold provisionally by offline tills, `vase`
//! blocked offline. Ten tills try to sell the last unit at the same moment:
//! six online (three per SKU) and four offline (two per SKU). Then the
//! offline tills reconnect. Exactly one sale per SKU is confirmed; the
//! online losers are refused out of stock; the offline `vase` tills were
//! blocked and wrote nothing; the offline `lamp` tills end with an open
//! compensation task; and every till converges to no stock left.

use std::sync::{Arc, Barrier};

use omnisync_core::client::Link;
use omnisync_core::db::OpStatus;
use omnisync_core::protocol::message::AckOutcome;
use omnisync_core::retail::RetailError;
use omnisync_core::retail::orders::{CheckoutReceipt, CheckoutRequest, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Sku};
use omnisync_core::vocab::intent::{
    Decision, LineSource, OfflinePolicy, Refusal, ShortLine, StockCommand, StockMode, StockPolicy,
};
use omnisync_core::{StoreId, now_ms};
use omnisync_tests::{SYNC_TIMEOUT, TestDevice, TestHub, device, init_logs, wait_until};

const STORE: &str = "s1";
/// Sold provisionally offline.
const LAMP: &str = "lamp";
/// Blocked offline.
const VASE: &str = "vase";
/// At or below this many units on hand a SKU is in strong mode.
const STRONG_AT_OR_BELOW: u64 = 5;

/// One till of the ten: which SKU it sells, and whether it is online.
struct Till {
    name: String,
    sku: &'static str,
    online: bool,
    device: TestDevice,
}

fn sku(name: &str) -> Sku {
    Sku::new(name).expect("valid sku")
}

fn store_id() -> StoreId {
    StoreId::new(STORE).expect("valid store id")
}

fn sale(till: &str, item: &str) -> CheckoutRequest {
    CheckoutRequest {
        order_id: format!("{till}-last-{item}").parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: sku(item),
            quantity: 1,
            unit_price_minor: 4_900,
        }],
        currency: Currency::new("EUR").expect("valid currency"),
        payment_ref: format!("card-{till}").parse().unwrap(),
        channel: Channel::Pos,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_unit_is_sold_once_by_ten_terminals_some_offline() -> anyhow::Result<()> {
    init_logs();
    let hub = TestHub::start().await?;

    // The back office: one unit of each SKU, strong mode, one policy each.
    let office = device(&hub.url(), "office", STORE)?;
    for (item, offline) in [
        (LAMP, OfflinePolicy::Provisional),
        (VASE, OfflinePolicy::Block),
    ] {
        let policy = StockPolicy {
            strong_at_or_below: STRONG_AT_OR_BELOW,
            offline,
        };
        let commands = [
            StockCommand::SetPolicy {
                sku: sku(item),
                policy,
            },
            StockCommand::Receive {
                key: format!("delivery-{item}").parse().unwrap(),
                sku: sku(item),
                quantity: 1,
            },
        ];
        for command in commands {
            office
                .client
                .write(|store| store.stock_command(command, now_ms()))?;
        }
    }
    office.client.wait_synced(SYNC_TIMEOUT).await?;

    // Tills 0-2 sell lamps online, 3-5 vases online, 6-7 lamps offline, 8-9 vases offline.
    let mut tills = Vec::new();
    for n in 0..10 {
        let name = format!("till-{n}");
        let item = if n < 3 || (6..8).contains(&n) {
            LAMP
        } else {
            VASE
        };
        let device = device(&hub.url(), &name, STORE)?;
        tills.push(Till {
            name,
            sku: item,
            online: n < 6,
            device,
        });
    }
    for till in &tills {
        wait_until(SYNC_TIMEOUT, "every till to see the last units", || {
            let store = till.device.client.replica();
            for item in [LAMP, VASE] {
                let view = store.stock(&store_id(), &sku(item))?;
                if !view.is_some_and(|v| v.on_hand == 1 && v.mode == StockMode::Strong) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
    }
    for till in tills.iter().filter(|till| !till.online) {
        till.device.client.set_online(false);
        till.device
            .client
            .wait_for(SYNC_TIMEOUT, "offline", |s| s.link == Link::Offline)
            .await?;
    }
    for till in tills.iter().filter(|till| till.online) {
        till.device
            .client
            .wait_for(SYNC_TIMEOUT, "online", |s| s.link == Link::Online)
            .await?;
    }

    // All ten at once.
    let start = Arc::new(Barrier::new(tills.len()));
    let mut attempts = Vec::new();
    for till in &tills {
        let (client, start) = (till.device.client.clone(), start.clone());
        let (request, last_seq) = (sale(&till.name, till.sku), client.replica().last_seq()?);
        attempts.push((
            tokio::task::spawn_blocking(move || {
                start.wait();
                client.checkout(&request)
            }),
            last_seq,
        ));
    }
    let mut receipts: Vec<Option<CheckoutReceipt>> = Vec::new();
    for ((attempt, last_seq), till) in attempts.into_iter().zip(&tills) {
        let result = attempt.await?;
        let name = &till.name;
        match (till.online, till.sku, result) {
            (true, _, Ok(receipt)) => {
                assert_eq!(receipt.lines[0].2, LineSource::Hub, "{name}: {receipt:?}");
                receipts.push(Some(receipt));
            }
            (false, LAMP, Ok(receipt)) => {
                assert_eq!(receipt.lines[0].2, LineSource::Provisional, "{name}");
                assert!(receipt.at_risk, "{name}: a provisional sale is at risk");
                receipts.push(Some(receipt));
            }
            (false, VASE, Err(RetailError::Blocked(why))) => {
                let store = till.device.client.replica();
                assert_eq!(
                    store.last_seq()?,
                    last_seq,
                    "{name} blocked ({why}) but wrote an op"
                );
                assert!(
                    store.order(&format!("{name}-last-{VASE}"))?.is_none(),
                    "{name}"
                );
                receipts.push(None);
            }
            (online, item, result) => {
                panic!("{name} (online {online}) selling {item}: {result:?}")
            }
        }
    }

    // The online tills hear the hub first; then the offline ones reconnect.
    for till in tills.iter().filter(|till| till.online) {
        till.device
            .client
            .wait_for(SYNC_TIMEOUT, "the online decisions", |s| s.pending == 0)
            .await?;
    }
    for till in tills.iter().filter(|till| !till.online) {
        till.device.client.set_online(true);
    }
    for till in &tills {
        till.device
            .client
            .wait_for(SYNC_TIMEOUT, "every decision", |s| {
                s.link == Link::Online && s.pending == 0
            })
            .await?;
    }

    let reader = hub.hub.reader();
    let mut confirmed = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for (till, receipt) in tills.iter().zip(&receipts) {
        let name = till.name.as_str();
        let store = till.device.client.replica();
        let Some(receipt) = receipt else {
            assert!(
                store.op_ids()?.is_empty(),
                "{name} was blocked yet holds ops"
            );
            assert!(store.compensations()?.is_empty(), "{name}");
            continue;
        };
        let status = store.op_status(&receipt.op)?;
        let at_hub = reader.outcome(&receipt.op)?;
        match &status {
            Some(OpStatus::Confirmed { decision }) => {
                assert!(
                    till.online,
                    "{name}: only an online sale can win: {status:?}"
                );
                assert!(matches!(decision, Decision::Confirmed { .. }), "{name}");
                assert_eq!(
                    at_hub,
                    Some(AckOutcome::Decided(decision.clone())),
                    "{name}"
                );
                assert!(store.compensations()?.is_empty(), "{name}");
                confirmed.entry(till.sku).or_default().push(name);
            }
            Some(OpStatus::Refused { refusal }) => {
                assert!(till.online, "{name}: {status:?}");
                assert!(
                    matches!(refusal, Refusal::OutOfStock { sku, available: 0 } if sku == till.sku),
                    "{name}: {refusal:?}"
                );
                let refused = Decision::Refused(refusal.clone());
                assert_eq!(at_hub, Some(AckOutcome::Decided(refused)), "{name}");
                assert!(store.compensations()?.is_empty(), "{name}");
            }
            Some(OpStatus::Compensation { decision }) => {
                assert!(!till.online && till.sku == LAMP, "{name}: {status:?}");
                let short = vec![ShortLine {
                    sku: sku(LAMP),
                    quantity: 1,
                }];
                assert!(
                    matches!(decision, Decision::Short { lines, .. } if *lines == short),
                    "{name}: {decision:?}"
                );
                assert_eq!(
                    at_hub,
                    Some(AckOutcome::Decided(decision.clone())),
                    "{name}"
                );
                let tasks = store.compensations()?;
                assert_eq!(tasks.len(), 1, "{name}: {tasks:?}");
                assert_eq!(
                    (tasks[0].op, tasks[0].state.as_str(), &tasks[0].lines),
                    (receipt.op, "open", &short),
                    "{name}"
                );
            }
            other => panic!("{name}: unexpected status {other:?}"),
        }
    }
    for item in [LAMP, VASE] {
        let winners = confirmed.get(item).cloned().unwrap_or_default();
        assert_eq!(winners.len(), 1, "confirmed sales of {item}: {winners:?}");
    }

    // Everyone converges on an empty shelf.
    for till in tills.iter().map(|till| &till.device).chain([&office]) {
        wait_until(SYNC_TIMEOUT, "every till to see no stock left", || {
            let store = till.client.replica();
            for item in [LAMP, VASE] {
                let view = store.stock(&store_id(), &sku(item))?;
                if !view.is_some_and(|v| v.on_hand == 0 && v.free == 0 && v.held == 0) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
    }
    for till in tills.iter().map(|till| &till.device).chain([&office]) {
        till.client.stop().await;
    }
    Ok(())
}
