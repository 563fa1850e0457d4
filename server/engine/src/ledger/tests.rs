//! Escrow, strong mode, checkout intents and compensation end to end: real
//! device stores (in-memory SQLite) against the memory hub log, which runs
//! the same authority code as the SQLite hub.

use crate::hub_session::{IncomingOp, Verdict};
use crate::log::{HubLog, HubLogRead, MemoryHubLog};
use omnisync_core::db::{OpStatus, Replica};
use omnisync_core::protocol::message::ChangeBatch;
use omnisync_core::retail::RetailError;
use omnisync_core::retail::orders::{CheckoutRequest, CompensationState, Connectivity, OrderLine};
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::vocab::ids::{DeviceId, DocSetId, StoreId};
use omnisync_core::vocab::intent::{
    Decision, LineSource, OfflinePolicy, Refusal, StockCommand, StockMode, StockPolicy,
};
use omnisync_core::vocab::keys::OrderStatus;

const NOW: u64 = 1_750_000_000_000;

fn store_id() -> StoreId {
    StoreId::new("s1").unwrap()
}

fn sku(name: &str) -> Sku {
    Sku::new(name).unwrap()
}

fn device(name: &str) -> Replica {
    Replica::open_in_memory(DeviceId::new(name).unwrap(), store_id()).unwrap()
}

struct World {
    hub: MemoryHubLog,
}

impl World {
    fn new() -> Self {
        Self {
            hub: MemoryHubLog::new(),
        }
    }

    /// Uploads a device's pending ops and records the hub's answers.
    fn upload(&mut self, store: &mut Replica) -> Vec<omnisync_core::protocol::message::Ack> {
        let ops = store.pending_ops(0, 10_000).unwrap();
        let incoming = ops
            .into_iter()
            .map(|op| IncomingOp {
                op,
                device: store.device().clone(),
                store: store_id(),
                verdict: Verdict::Accept,
            })
            .collect();
        let applied = self.hub.apply(incoming).unwrap();
        store.record_acks(&applied.acks, NOW).unwrap();
        applied.acks
    }

    /// Delivers the whole store and orders sets to a device.
    fn deliver(&self, store: &mut Replica) {
        for set in [
            DocSetId::store(&store_id()),
            DocSetId::orders(&store_id()),
            DocSetId::device(&store_id(), store.device()).unwrap(),
        ] {
            let page = self
                .hub
                .changes_since(&set, 0, 100_000, usize::MAX)
                .unwrap();
            let batch = ChangeBatch {
                set,
                changes: page.changes,
                cursor: page.cursor,
                caught_up: true,
            };
            store.apply_remote(&batch, NOW).unwrap();
        }
    }

    fn check_ledgers(&self) {
        for ((_, sku), ledger) in self.hub.ledgers() {
            ledger
                .check()
                .unwrap_or_else(|broken| panic!("{sku}: {broken}"));
            assert!(ledger.sold <= ledger.received, "{sku} oversold");
        }
    }
}

fn command(store: &mut Replica, command: StockCommand) {
    store.stock_command(command, NOW).unwrap();
}

fn receive(store: &mut Replica, key: &str, item: &str, quantity: u64) {
    command(
        store,
        StockCommand::Receive {
            key: key.parse().unwrap(),
            sku: sku(item),
            quantity,
        },
    );
}

fn policy(store: &mut Replica, item: &str, threshold: u64, offline: OfflinePolicy) {
    command(
        store,
        StockCommand::SetPolicy {
            sku: sku(item),
            policy: StockPolicy {
                strong_at_or_below: threshold,
                offline,
            },
        },
    );
}

fn sale(order_id: &str, item: &str, quantity: u64) -> CheckoutRequest {
    CheckoutRequest {
        order_id: order_id.parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: sku(item),
            quantity,
            unit_price_minor: 250,
        }],
        currency: Currency::new("EUR").unwrap(),
        payment_ref: format!("card-{order_id}").parse().unwrap(),
        channel: Channel::Pos,
    }
}

fn status(store: &Replica, op: &omnisync_core::OpId) -> OpStatus {
    store.op_status(op).unwrap().unwrap()
}

#[test]
fn a_till_sells_offline_from_the_allowance_the_hub_granted() {
    let mut world = World::new();
    let mut office = device("office");
    let mut till = device("till-1");
    receive(&mut office, "delivery-1", "tea", 100);
    world.upload(&mut office);
    world.deliver(&mut till);
    let view = till.stock(&store_id(), &sku("tea")).unwrap().unwrap();
    assert_eq!(
        (view.on_hand, view.mode, view.allowance_left),
        (100, StockMode::Escrow, 0)
    );

    // First sale online: the hub decides it and grants an allowance.
    let first = till
        .checkout(&sale("o-1", "tea", 1), Connectivity::Online, NOW)
        .unwrap();
    assert_eq!(first.lines[0].2, LineSource::Hub);
    world.upload(&mut till);
    assert!(matches!(
        status(&till, &first.op),
        OpStatus::Confirmed {
            decision: Decision::Confirmed { order_no: 1 }
        }
    ));
    world.deliver(&mut till);
    let left = till
        .stock(&store_id(), &sku("tea"))
        .unwrap()
        .unwrap()
        .allowance_left;
    assert!(
        left >= crate::ledger::sku_ledger::GRANT_MIN,
        "granted {left}"
    );

    // Offline, the till sells from its allowance with no round trip.
    let mut receipts = Vec::new();
    for n in 0..left {
        let receipt = till
            .checkout(
                &sale(&format!("o-off-{n}"), "tea", 1),
                Connectivity::Offline,
                NOW,
            )
            .unwrap();
        assert_eq!(receipt.lines[0].2, LineSource::Allowance);
        assert!(!receipt.at_risk);
        receipts.push(receipt);
    }
    // Allowance spent and the SKU's policy is block: the next offline sale is refused.
    assert!(matches!(
        till.checkout(&sale("o-blocked", "tea", 1), Connectivity::Offline, NOW),
        Err(RetailError::Blocked(_))
    ));
    assert!(
        till.order("o-blocked").unwrap().is_none(),
        "nothing written"
    );
    world.upload(&mut till);
    world.deliver(&mut till);
    for receipt in &receipts {
        assert!(matches!(
            status(&till, &receipt.op),
            OpStatus::Confirmed { .. }
        ));
    }
    let view = till.stock(&store_id(), &sku("tea")).unwrap().unwrap();
    assert_eq!(view.on_hand, 100 - 1 - left);
    world.check_ledgers();
}

#[test]
fn the_last_unit_is_sold_once_and_a_provisional_loser_gets_a_compensation_task() {
    let mut world = World::new();
    let mut office = device("office");
    receive(&mut office, "delivery-1", "lamp", 1);
    policy(&mut office, "lamp", 5, OfflinePolicy::Provisional);
    world.upload(&mut office);
    let mut tills: Vec<Replica> = (0..4).map(|n| device(&format!("till-{n}"))).collect();
    for till in &mut tills {
        world.deliver(till);
        let view = till.stock(&store_id(), &sku("lamp")).unwrap().unwrap();
        assert_eq!(view.mode, StockMode::Strong);
    }
    // Two tills online (hub decides), two offline (provisional).
    let mut receipts = Vec::new();
    for (n, till) in tills.iter_mut().enumerate() {
        let connectivity = if n < 2 {
            Connectivity::Online
        } else {
            Connectivity::Offline
        };
        let receipt = till
            .checkout(&sale(&format!("lamp-{n}"), "lamp", 1), connectivity, NOW)
            .unwrap();
        assert_eq!(receipt.at_risk, n >= 2);
        receipts.push(receipt);
    }
    for till in &mut tills {
        world.upload(till);
    }
    let statuses: Vec<OpStatus> = tills
        .iter()
        .zip(&receipts)
        .map(|(till, receipt)| status(till, &receipt.op))
        .collect();
    let confirmed = statuses
        .iter()
        .filter(|status| matches!(status, OpStatus::Confirmed { .. }))
        .count();
    assert_eq!(confirmed, 1, "{statuses:?}");
    assert!(matches!(
        statuses[1],
        OpStatus::Refused {
            refusal: Refusal::OutOfStock { .. }
        }
    ));
    for (index, status) in statuses.iter().enumerate().skip(2) {
        assert!(
            matches!(status, OpStatus::Compensation { .. }),
            "provisional sale {index}: {status:?}"
        );
    }
    // The loser resolves its task; the order stands as compensated.
    let till = &mut tills[3];
    let task = till.compensations().unwrap().remove(0);
    assert_eq!(task.state, CompensationState::Open);
    assert_eq!(task.lines[0].quantity, 1);
    world.deliver(till);
    till.resolve_compensation(&task.op, "refund", NOW).unwrap();
    assert!(matches!(
        status(till, &task.op),
        OpStatus::Compensated { .. }
    ));
    world.upload(till);
    world.deliver(till);
    let order = till.order("lamp-3").unwrap().unwrap();
    assert_eq!(order.status.as_str(), "compensated-refund");
    world.check_ledgers();
    let sold: u64 = world.hub.ledgers().map(|(_, ledger)| ledger.sold).sum();
    assert_eq!(sold, 1);
}

#[test]
fn retries_get_the_original_answer_and_duplicates_are_refused() {
    let mut world = World::new();
    let mut till = device("till-1");
    receive(&mut till, "delivery-1", "tea", 10);
    world.upload(&mut till);
    let receipt = till
        .checkout(&sale("o-1", "tea", 2), Connectivity::Online, NOW)
        .unwrap();
    // The same key again on the device: the first receipt, no second intent.
    let again = till
        .checkout(&sale("o-1", "tea", 2), Connectivity::Online, NOW)
        .unwrap();
    assert!(again.repeated);
    assert_eq!(again.op, receipt.op);
    let ops = till.pending_ops(0, 100).unwrap();
    let first = world.upload(&mut till);
    // A retry of the same op after a lost ack: the same decision.
    let retried = world
        .hub
        .apply(
            ops.into_iter()
                .map(|op| IncomingOp {
                    op,
                    device: till.device().clone(),
                    store: store_id(),
                    verdict: Verdict::Accept,
                })
                .collect(),
        )
        .unwrap();
    assert_eq!(retried.acks, first);
    assert_eq!(retried.duplicates, first.len());
    // Another device reusing the key is refused as a duplicate of the order.
    let mut other = device("till-2");
    let mut copy = sale("o-2", "tea", 1);
    copy.idempotency_key = Some("o-1".parse().unwrap());
    let op = other.checkout(&copy, Connectivity::Online, NOW).unwrap().op;
    world.upload(&mut other);
    assert_eq!(
        status(&other, &op),
        OpStatus::Refused {
            refusal: Refusal::Duplicate { order_no: Some(1) }
        }
    );
    let sold: u64 = world.hub.ledgers().map(|(_, ledger)| ledger.sold).sum();
    assert_eq!(sold, 2, "applied once");
}

#[test]
fn order_status_changes_use_optimistic_concurrency_at_the_hub() {
    let mut world = World::new();
    let mut till = device("till-1");
    let mut office = device("office");
    receive(&mut office, "delivery-1", "tea", 10);
    world.upload(&mut office);
    till.checkout(&sale("o-1", "tea", 1), Connectivity::Online, NOW)
        .unwrap();
    world.upload(&mut till);
    world.deliver(&mut till);
    world.deliver(&mut office);
    assert_eq!(office.order("o-1").unwrap().unwrap().version, 1);
    // Both move version 1 concurrently; the hub takes the first and refuses the second.
    let paid = till
        .update_order_status(&"o-1".parse().unwrap(), 1, &"paid".parse().unwrap(), NOW)
        .unwrap();
    let returned = office
        .update_order_status(
            &"o-1".parse().unwrap(),
            1,
            &"returned".parse().unwrap(),
            NOW,
        )
        .unwrap();
    world.upload(&mut till);
    world.upload(&mut office);
    assert!(matches!(
        status(&till, &paid),
        OpStatus::Confirmed {
            decision: Decision::Applied { version: 2 }
        }
    ));
    assert_eq!(
        status(&office, &returned),
        OpStatus::Refused {
            refusal: Refusal::VersionConflict { current: 2 }
        }
    );
    world.deliver(&mut office);
    let order = office.order("o-1").unwrap().unwrap();
    assert_eq!((order.status.as_str(), order.version), ("paid", 2));
    assert!(matches!(
        office.update_order_status(
            &"o-1".parse().unwrap(),
            1,
            &"returned".parse().unwrap(),
            NOW
        ),
        Err(RetailError::VersionConflict {
            expected: 1,
            found: 2
        })
    ));
}

#[test]
fn falling_stock_recalls_allowances_and_released_units_return_to_the_hub() {
    let mut world = World::new();
    let mut office = device("office");
    let mut till = device("till-1");
    receive(&mut office, "delivery-1", "tea", 40);
    world.upload(&mut office);
    world.deliver(&mut till);
    till.checkout(&sale("o-1", "tea", 1), Connectivity::Online, NOW)
        .unwrap();
    world.upload(&mut till);
    world.deliver(&mut till);
    let granted = till
        .stock(&store_id(), &sku("tea"))
        .unwrap()
        .unwrap()
        .allowance_left;
    assert!(granted > 0);
    // A stock-take finds most of it gone: strong mode, allowances recalled.
    command(
        &mut office,
        StockCommand::StockTake {
            key: "count-1".parse().unwrap(),
            sku: sku("tea"),
            counted: 4,
        },
    );
    world.upload(&mut office);
    world.deliver(&mut till);
    let view = till.stock(&store_id(), &sku("tea")).unwrap().unwrap();
    assert_eq!(view.mode, StockMode::Strong);
    assert!(view.recalled);
    let released = till.answer_recalls(NOW).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(
        till.stock(&store_id(), &sku("tea"))
            .unwrap()
            .unwrap()
            .allowance_left,
        0,
        "released units are not sold offline any more"
    );
    world.upload(&mut till);
    world.deliver(&mut till);
    world.check_ledgers();
    let ledger = world.hub.ledgers().next().unwrap().1;
    assert_eq!(ledger.held(), 0);
    assert_eq!(ledger.deficit, 0);
    assert_eq!(ledger.pool + ledger.reserved, ledger.on_hand);
    assert!(
        till.answer_recalls(NOW).unwrap().is_empty(),
        "nothing left to release"
    );
}

#[test]
fn a_price_changed_beyond_tolerance_refuses_an_online_checkout() {
    let mut world = World::new();
    let mut office = device("office");
    let mut till = device("till-1");
    receive(&mut office, "delivery-1", "tea", 10);
    office
        .set_price(
            &store_id(),
            &sku("tea"),
            Channel::Pos,
            0,
            &Money {
                amount_minor: 300,
                currency: Currency::new("EUR").unwrap(),
            },
            NOW,
        )
        .unwrap();
    world.upload(&mut office);
    // The till still shows 2.50.
    let op = till
        .checkout(&sale("o-1", "tea", 1), Connectivity::Online, NOW)
        .unwrap()
        .op;
    world.upload(&mut till);
    assert_eq!(
        status(&till, &op),
        OpStatus::Refused {
            refusal: Refusal::PriceChanged {
                sku: "tea".into(),
                current_minor: 300
            }
        }
    );
    assert_eq!(
        till.order("o-1").unwrap().unwrap().status,
        OrderStatus::Refused
    );
}

#[test]
fn the_hub_checks_a_checkout_from_the_wire_with_the_devices_rule() {
    use omnisync_core::protocol::message::{AckOutcome, Op, OpBody};
    use omnisync_core::vocab::ids::{OpId, ReplicaId};
    use omnisync_core::vocab::intent::{CheckoutIntent, Intent, IntentLine};
    let mut world = World::new();
    // A device that skipped `Replica::checkout`: an empty checkout and one
    // line with quantity 0, straight into ops.
    let replica = ReplicaId::random();
    let intent = |seq: u64, lines: Vec<IntentLine>| IncomingOp {
        op: Op {
            id: OpId { replica, seq },
            created_ms: NOW,
            body: OpBody::Intent(Intent::Checkout(CheckoutIntent {
                order_id: format!("o-{seq}").parse().unwrap(),
                idempotency_key: format!("k-{seq}").parse().unwrap(),
                lines,
                currency: Currency::new("EUR").unwrap(),
                payment_ref: "card".parse().unwrap(),
                channel: Channel::Pos,
            })),
        },
        device: DeviceId::new("till-x").unwrap(),
        store: store_id(),
        verdict: Verdict::Accept,
    };
    let zero = IntentLine {
        sku: sku("tea"),
        quantity: 0,
        unit_price_minor: 100,
        source: LineSource::Hub,
    };
    let applied = world
        .hub
        .apply(vec![intent(1, Vec::new()), intent(2, vec![zero])])
        .unwrap();
    assert_eq!(applied.acks.len(), 2);
    for ack in &applied.acks {
        assert!(
            matches!(
                &ack.outcome,
                AckOutcome::Decided(Decision::Refused(Refusal::Invalid { .. }))
            ),
            "{ack:?}"
        );
    }
    world.check_ledgers();
}
