//! Merge-rule scenarios and convergence properties of the retail model.
//!
//! Replicas are real databases (in-memory SQLite) exchanging their changes
//! through a [`Relay`] that numbers them as a hub's log would (the hub's own
//! log and session are tested in `omnisync-hub-engine`), or directly in any
//! order with duplicates.

use proptest::prelude::*;
use rand::{Rng, SeedableRng, seq::SliceRandom};

use super::catalog::{ProductField, ProductUpdate};
use super::orders::OrderLine;
use super::*;
use crate::db::Replica;
use crate::protocol::message::{Ack, AckOutcome, ChangeBatch, OpBody, RemoteChange};
use crate::vocab::goods::{Channel, Currency, Money, Sku};
use crate::vocab::ids::{CustomerId, DeviceId, DocSetId, OpId, StoreId};

/// The changes replicas uploaded, numbered in upload order like a hub's log.
#[derive(Default)]
struct Relay {
    changes: Vec<RemoteChange>,
}

const NOW: u64 = 1_750_000_000_000;

fn store_id() -> StoreId {
    StoreId::new("s1").unwrap()
}

fn customer() -> CustomerId {
    CustomerId::new("c1").unwrap()
}

fn sku(name: &str) -> Sku {
    Sku::new(name).unwrap()
}

fn eur(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: Currency::new("EUR").unwrap(),
    }
}

fn replica(name: &str) -> Replica {
    Replica::open_in_memory(DeviceId::new(name).unwrap(), store_id()).unwrap()
}

/// Uploads every pending op of every replica to the relay and acknowledges it.
fn upload(hub: &mut Relay, replicas: &mut [Replica]) {
    for store in replicas.iter_mut() {
        let ops = store.pending_ops(0, usize::MAX >> 1).unwrap();
        let mut acks = Vec::new();
        for op in ops {
            // Intents wait for a hub to decide them; the merge rules here
            // are about document changes only.
            let OpBody::Changes(changes) = &op.body else {
                continue;
            };
            for change in changes {
                hub.changes.push(RemoteChange {
                    hub_seq: hub.changes.len() as u64 + 1,
                    doc: change.doc.clone(),
                    origin: op.id.replica,
                    bytes: change.bytes.clone(),
                });
            }
            acks.push(Ack {
                op: op.id,
                outcome: AckOutcome::Applied {
                    hub_seq: hub.changes.len() as u64,
                },
            });
        }
        store.record_acks(&acks, NOW).unwrap();
    }
}

fn all_changes(hub: &Relay) -> Vec<RemoteChange> {
    let sets = [
        DocSetId::store(&store_id()),
        DocSetId::customer(&customer()),
    ];
    hub.changes
        .iter()
        .filter(|change| sets.contains(&change.doc.set()))
        .cloned()
        .collect()
}

/// Delivers every change to every replica in hub order.
fn sync(replicas: &mut [Replica]) {
    let mut hub = Relay::default();
    upload(&mut hub, replicas);
    deliver(replicas, all_changes(&hub));
}

fn deliver(replicas: &mut [Replica], changes: Vec<RemoteChange>) {
    for store in replicas.iter_mut() {
        for change in &changes {
            let batch = ChangeBatch {
                set: change.doc.set(),
                changes: vec![change.clone()],
                cursor: 0,
                caught_up: false,
            };
            store.apply_remote(&batch, NOW).unwrap();
        }
    }
}

/// Every projection table, dumped in a fixed order.
fn projections(store: &Replica) -> Vec<String> {
    let tables = [
        ("products", "set_id, sku"),
        ("product_conflicts", "set_id, sku, field, value"),
        ("prices", "set_id, sku, channel, effective_from_ms"),
        ("stock_levels", "set_id, sku"),
        ("cart_lines", "doc_id, line_id"),
        ("wishlist_items", "doc_id, sku"),
        ("profile_fields", "doc_id, field"),
        ("history_entries", "doc_id, at_ms, sku"),
        ("orders", "order_id"),
        ("allowances", "device_id, sku"),
        ("recommendations", "doc_id, position"),
    ];
    let mut rows = Vec::new();
    for (table, order) in tables {
        let mut statement = store
            .db
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|index| format!("{:?}", row.get_ref(index).unwrap()))
                .collect();
            rows.push(format!("{table}: {}", values.join(" | ")));
        }
    }
    rows
}

#[test]
fn concurrent_product_edits_keep_every_value_until_resolved() {
    let mut replicas = vec![replica("back-office"), replica("store-manager")];
    let update = |name: &str| ProductUpdate {
        sku: sku("sku-1"),
        fields: vec![(ProductField::Name, name.to_owned())],
    };
    replicas[0]
        .upsert_products(&store_id(), &[update("Espresso 1kg")], NOW)
        .unwrap();
    sync(&mut replicas);
    replicas[0]
        .upsert_products(&store_id(), &[update("Espresso beans 1kg")], NOW)
        .unwrap();
    replicas[1]
        .upsert_products(&store_id(), &[update("Espresso (whole bean)")], NOW)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        let product = store.product(&store_id(), &sku("sku-1")).unwrap().unwrap();
        assert_eq!(product.conflicts.len(), 1, "conflict is surfaced");
        assert_eq!(
            product.conflicts[0].values,
            vec![
                "Espresso (whole bean)".to_owned(),
                "Espresso beans 1kg".to_owned()
            ]
        );
    }
    assert_eq!(
        projections(&replicas[0]),
        projections(&replicas[1]),
        "both show the same pick"
    );
    replicas[1]
        .resolve_product_field(
            &store_id(),
            &sku("sku-1"),
            ProductField::Name,
            "Espresso beans 1kg",
            NOW,
        )
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        let product = store.product(&store_id(), &sku("sku-1")).unwrap().unwrap();
        assert!(product.conflicts.is_empty());
        assert_eq!(product.name.as_deref(), Some("Espresso beans 1kg"));
    }
}

#[test]
fn products_are_found_by_sku_barcode_category_and_text() {
    let mut store = replica("back-office");
    let updates: Vec<ProductUpdate> = (0..50)
        .map(|n| ProductUpdate {
            sku: sku(&format!("sku-{n}")),
            fields: vec![
                (ProductField::Name, format!("Café crème {n}")),
                (
                    ProductField::Category,
                    if n % 2 == 0 { "coffee" } else { "tea" }.to_owned(),
                ),
                (ProductField::Barcode, format!("4006381333{n:03}")),
                (ProductField::Brand, "Acme".to_owned()),
            ],
        })
        .collect();
    store.upsert_products(&store_id(), &updates, NOW).unwrap();
    assert_eq!(store.product_count(&store_id()).unwrap(), 50);
    assert_eq!(
        store
            .products_by_barcode(&store_id(), "4006381333007")
            .unwrap()[0]
            .sku,
        "sku-7"
    );
    assert_eq!(
        store
            .products_in_category(&store_id(), "tea", 100)
            .unwrap()
            .len(),
        25
    );
    let found = store
        .search_products(&store_id(), "cafe creme 42", 10)
        .unwrap();
    assert_eq!(
        found[0].sku, "sku-42",
        "diacritics folded, words prefix-matched"
    );
    assert!(
        store
            .search_products(&store_id(), "\" OR sku:*", 10)
            .is_ok(),
        "query syntax is not injectable"
    );
}

#[test]
fn the_latest_price_wins_by_hybrid_clock_and_ties_by_writer() {
    let mut replicas = vec![replica("pricing"), replica("back-office")];
    let item = sku("sku-1");
    replicas[0]
        .set_price(&store_id(), &item, Channel::Pos, 0, &eur(1000), NOW)
        .unwrap();
    replicas[1]
        .set_price(&store_id(), &item, Channel::Pos, 0, &eur(900), NOW + 5)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        let price = store
            .price_in_force(&store_id(), &item, Channel::Pos, NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            price.money,
            eur(900),
            "the later write wins on both replicas"
        );
    }
    // A causally later write wins even from a device whose clock is behind.
    replicas[0]
        .set_price(&store_id(), &item, Channel::Pos, 0, &eur(950), NOW - 60_000)
        .unwrap();
    sync(&mut replicas);
    assert_eq!(
        replicas[1]
            .price_in_force(&store_id(), &item, Channel::Pos, NOW)
            .unwrap()
            .unwrap()
            .money,
        eur(950)
    );
    // Channels and effective-from times are separate registers.
    replicas[1]
        .set_price(&store_id(), &item, Channel::Web, 0, &eur(899), NOW)
        .unwrap();
    replicas[1]
        .set_price(
            &store_id(),
            &item,
            Channel::Pos,
            NOW + 86_400_000,
            &eur(700),
            NOW,
        )
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        assert_eq!(
            store
                .price_in_force(&store_id(), &item, Channel::Web, NOW)
                .unwrap()
                .unwrap()
                .money,
            eur(899)
        );
        assert_eq!(
            store
                .price_in_force(&store_id(), &item, Channel::Pos, NOW)
                .unwrap()
                .unwrap()
                .money,
            eur(950)
        );
        assert_eq!(
            store
                .price_in_force(&store_id(), &item, Channel::Pos, NOW + 86_400_000)
                .unwrap()
                .unwrap()
                .money,
            eur(700)
        );
    }
    assert_eq!(projections(&replicas[0]), projections(&replicas[1]));
}

#[test]
fn a_device_clock_far_in_the_future_does_not_win_after_it_meets_the_hub() {
    let mut replicas = vec![replica("skewed"), replica("honest")];
    let item = sku("sku-1");
    let ten_hours_ms = 36_000_000;
    // The skewed device learns the hub's time at its handshake.
    replicas[0]
        .observe_hub_time(NOW, NOW + ten_hours_ms)
        .unwrap();
    replicas[0]
        .set_price(
            &store_id(),
            &item,
            Channel::Pos,
            0,
            &eur(1),
            NOW + ten_hours_ms,
        )
        .unwrap();
    replicas[1]
        .set_price(&store_id(), &item, Channel::Pos, 0, &eur(1000), NOW + 1_000)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        assert_eq!(
            store
                .price_in_force(&store_id(), &item, Channel::Pos, NOW + 2_000)
                .unwrap()
                .unwrap()
                .money,
            eur(1000)
        );
    }
}

#[test]
fn cart_adds_merge_and_remove_wins_over_a_concurrent_quantity_edit() {
    let mut replicas = vec![replica("phone"), replica("web"), replica("till")];
    let shopper = customer();
    let (_, coffee_line) = replicas[0]
        .add_to_cart(&shopper, &sku("coffee"), 1, NOW)
        .unwrap();
    let (_, tea_line) = replicas[1]
        .add_to_cart(&shopper, &sku("tea"), 2, NOW)
        .unwrap();
    sync(&mut replicas);
    let view = replicas[2]
        .cart(&shopper, &store_id(), Channel::Pos, NOW)
        .unwrap();
    assert_eq!(
        view.lines.len(),
        2,
        "concurrent adds of different items both survive"
    );
    // Concurrent quantity edits merge (counters add up).
    replicas[0]
        .change_cart_quantity(&shopper, &coffee_line, 1, NOW)
        .unwrap();
    replicas[1]
        .change_cart_quantity(&shopper, &coffee_line, 2, NOW)
        .unwrap();
    // Remove vs concurrent edit: remove wins.
    replicas[2]
        .remove_cart_line(&shopper, &tea_line, NOW)
        .unwrap();
    replicas[0]
        .change_cart_quantity(&shopper, &tea_line, 5, NOW)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        let view = store
            .cart(&shopper, &store_id(), Channel::Pos, NOW)
            .unwrap();
        assert_eq!(view.lines.len(), 1, "the removed line stays removed");
        assert_eq!(view.lines[0].sku, "coffee");
        assert_eq!(view.lines[0].quantity, 4);
    }
    assert!(
        replicas[0]
            .change_cart_quantity(&shopper, "nosuchline", 1, NOW)
            .is_err()
    );
}

#[test]
fn cart_totals_use_current_prices() {
    let mut store = replica("till");
    store
        .set_price(
            &store_id(),
            &sku("coffee"),
            Channel::Pos,
            0,
            &eur(1899),
            NOW,
        )
        .unwrap();
    store
        .upsert_products(
            &store_id(),
            &[ProductUpdate {
                sku: sku("coffee"),
                fields: vec![(ProductField::Name, "Coffee".into())],
            }],
            NOW,
        )
        .unwrap();
    store
        .add_to_cart(&customer(), &sku("coffee"), 2, NOW)
        .unwrap();
    store
        .add_to_cart(&customer(), &sku("unpriced"), 1, NOW)
        .unwrap();
    let view = store
        .cart(&customer(), &store_id(), Channel::Pos, NOW)
        .unwrap();
    assert_eq!(view.total, Some(eur(3798)));
    assert_eq!(view.unpriced_lines, 1);
    let coffee = view.lines.iter().find(|line| line.sku == "coffee").unwrap();
    assert_eq!(coffee.name.as_deref(), Some("Coffee"));
    store
        .set_price(
            &store_id(),
            &sku("coffee"),
            Channel::Pos,
            0,
            &eur(1000),
            NOW + 1,
        )
        .unwrap();
    assert_eq!(
        store
            .cart(&customer(), &store_id(), Channel::Pos, NOW)
            .unwrap()
            .total,
        Some(eur(2000))
    );
}

#[test]
fn a_wishlist_add_survives_a_concurrent_remove() {
    let mut replicas = vec![replica("phone"), replica("web")];
    let shopper = customer();
    replicas[0]
        .wishlist_add(&shopper, &sku("mug"), NOW)
        .unwrap();
    sync(&mut replicas);
    replicas[0]
        .wishlist_remove(&shopper, &sku("mug"), NOW)
        .unwrap();
    replicas[1]
        .wishlist_add(&shopper, &sku("mug"), NOW)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        assert_eq!(store.wishlist(&shopper).unwrap(), vec!["mug".to_owned()]);
    }
    replicas[1]
        .wishlist_remove(&shopper, &sku("mug"), NOW)
        .unwrap();
    sync(&mut replicas);
    assert!(replicas[0].wishlist(&shopper).unwrap().is_empty());
}

#[test]
fn profile_fields_are_last_writer_wins_each() {
    let mut replicas = vec![replica("phone"), replica("crm")];
    let shopper = customer();
    replicas[0]
        .set_profile_field(&shopper, "email", "old@example.com", NOW)
        .unwrap();
    replicas[1]
        .set_profile_field(&shopper, "email", "new@example.com", NOW + 10)
        .unwrap();
    replicas[0]
        .set_profile_field(&shopper, "phone", "+49 30 1234", NOW + 20)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        assert_eq!(
            store.profile(&shopper).unwrap(),
            vec![
                ("email".to_owned(), "new@example.com".to_owned()),
                ("phone".to_owned(), "+49 30 1234".to_owned())
            ]
        );
    }
}

#[test]
fn recommendations_are_replaced_whole_by_the_latest_writer() {
    let mut replicas = vec![replica("back-office"), replica("phone")];
    let shopper = customer();
    replicas[0]
        .set_recommendations(&shopper, &[sku("a"), sku("b")], NOW)
        .unwrap();
    replicas[1]
        .set_recommendations(&shopper, &[sku("c")], NOW + 10)
        .unwrap();
    sync(&mut replicas);
    for store in &replicas {
        assert_eq!(
            store.recommendations(&shopper).unwrap(),
            vec!["c".to_owned()]
        );
    }
    let too_many: Vec<Sku> = (0..=customer::RECOMMENDATIONS_LEN_MAX)
        .map(|n| sku(&format!("s{n}")))
        .collect();
    assert!(
        replicas[0]
            .set_recommendations(&shopper, &too_many, NOW)
            .is_err()
    );
}

#[test]
fn history_is_bounded() {
    let mut store = replica("phone");
    for n in 0..(customer::HISTORY_LEN_MAX as u64 + 20) {
        store
            .record_view(&customer(), &sku(&format!("sku-{n}")), NOW + n)
            .unwrap();
    }
    let history = store.history(&customer()).unwrap();
    assert_eq!(history.len(), customer::HISTORY_LEN_MAX);
    assert_eq!(
        history[0],
        format!("sku-{}", customer::HISTORY_LEN_MAX + 19),
        "newest first"
    );
}

#[test]
fn an_order_total_that_overflows_is_refused() {
    let mut store = replica("till-1");
    let request = super::orders::CheckoutRequest {
        order_id: "o-1".parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: sku("a"),
            quantity: 3,
            unit_price_minor: i64::MAX / 2,
        }],
        currency: Currency::new("EUR").unwrap(),
        payment_ref: "card-1".parse().unwrap(),
        channel: Channel::Pos,
    };
    assert!(matches!(
        store.checkout(&request, super::orders::Connectivity::Online, NOW),
        Err(RetailError::Invalid(_))
    ));
    assert_eq!(
        store.pending_ops(0, 10).unwrap().len(),
        0,
        "nothing written"
    );
}

#[test]
fn out_of_order_changes_are_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.db");
    let mut writer = replica("writer");
    for n in 0..5 {
        writer
            .set_price(
                &store_id(),
                &sku("a"),
                Channel::Pos,
                0,
                &eur(100 + n),
                NOW + n as u64,
            )
            .unwrap();
    }
    let mut hub = Relay::default();
    upload(&mut hub, std::slice::from_mut(&mut writer));
    let mut changes = all_changes(&hub);
    changes.reverse(); // Every change arrives before the ones it depends on.
    {
        let mut late = Replica::open(&path, DeviceId::new("late").unwrap(), store_id()).unwrap();
        deliver(std::slice::from_mut(&mut late), changes);
    }
    let late = Replica::open(&path, DeviceId::new("late").unwrap(), store_id()).unwrap();
    assert_eq!(
        late.price_in_force(&store_id(), &sku("a"), Channel::Pos, NOW)
            .unwrap()
            .unwrap()
            .money,
        eur(104)
    );
}

/// One random retail operation by one replica.
fn random_op(store: &mut Replica, rng: &mut impl Rng, step: u64) {
    let item = sku(&format!("sku-{}", rng.random_range(0..4)));
    let now = NOW + step * 7;
    let shopper = customer();
    let _ = match rng.random_range(0..8) {
        0 => store
            .upsert_products(
                &store_id(),
                &[ProductUpdate {
                    sku: item,
                    fields: vec![(
                        ProductField::Name,
                        format!("name {}", rng.random_range(0..3)),
                    )],
                }],
                now,
            )
            .map(|_| ()),
        1 => store
            .set_price(
                &store_id(),
                &item,
                Channel::Pos,
                0,
                &eur(rng.random_range(1..500)),
                now,
            )
            .map(|_| ()),
        2 => store
            .add_to_cart(&shopper, &item, rng.random_range(1..3), now)
            .map(|_| ()),
        3 => {
            let line = store
                .cart(&shopper, &store_id(), Channel::Pos, now)
                .ok()
                .and_then(|view| view.lines.first().map(|l| l.line_id.clone()));
            match line {
                Some(line) if rng.random_bool(0.5) => {
                    store.remove_cart_line(&shopper, &line, now).map(|_| ())
                }
                Some(line) => store
                    .change_cart_quantity(&shopper, &line, 1, now)
                    .map(|_| ()),
                None => Ok(()),
            }
        }
        4 => store.wishlist_add(&shopper, &item, now).map(|_| ()),
        5 => store.wishlist_remove(&shopper, &item, now).map(|_| ()),
        6 => store
            .set_profile_field(
                &shopper,
                "email",
                &format!("e{}@x", rng.random_range(0..9)),
                now,
            )
            .map(|_| ()),
        _ => store
            .stock_command(
                crate::vocab::intent::StockCommand::Receive {
                    key: format!("delivery-{step}").parse().expect("a valid key"),
                    sku: item.clone(),
                    quantity: rng.random_range(1..50),
                },
                now,
            )
            .map(|_| ()),
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random operations on 3–5 replicas, delivered in random order with
    /// duplicates and delays, always converge to identical projections.
    #[test]
    fn replicas_converge_whatever_the_delivery_order(seed in any::<u64>(), replica_count in 3usize..=5, rounds in 1usize..4) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut replicas: Vec<Replica> = (0..replica_count).map(|n| replica(&format!("r{n}"))).collect();
        let mut hub = Relay::default();
        let mut step = 0;
        for _ in 0..rounds {
            for _ in 0..12 {
                step += 1;
                let index = rng.random_range(0..replica_count);
                random_op(&mut replicas[index], &mut rng, step);
            }
            upload(&mut hub, &mut replicas);
            // Each replica gets a random subset now (delays), in random order, some twice.
            let changes = all_changes(&hub);
            for store in replicas.iter_mut() {
                let mut mine: Vec<RemoteChange> = changes.iter().filter(|_| rng.random_bool(0.6)).cloned().collect();
                let duplicates: Vec<RemoteChange> = mine.iter().filter(|_| rng.random_bool(0.2)).cloned().collect();
                mine.extend(duplicates);
                mine.shuffle(&mut rng);
                deliver(std::slice::from_mut(store), mine);
            }
        }
        // Finally everything arrives, in yet another order.
        let mut changes = all_changes(&hub);
        changes.shuffle(&mut rng);
        deliver(&mut replicas, changes);
        let expected = projections(&replicas[0]);
        for store in &replicas[1..] {
            prop_assert_eq!(&projections(store), &expected);
        }
    }
}

#[test]
fn a_checkout_breaking_the_shared_rules_is_refused_before_anything_is_written() {
    let mut store = replica("till-1");
    let request = |quantity: u64, lines: usize| super::orders::CheckoutRequest {
        order_id: "o-1".parse().unwrap(),
        idempotency_key: None,
        lines: (0..lines)
            .map(|_| OrderLine {
                sku: sku("a"),
                quantity,
                unit_price_minor: 100,
            })
            .collect(),
        currency: Currency::new("EUR").unwrap(),
        payment_ref: "card-1".parse().unwrap(),
        channel: Channel::Pos,
    };
    for (quantity, lines) in [
        (0, 1),
        (crate::vocab::intent::LINE_QUANTITY_MAX + 1, 1),
        (1, 0),
        (1, crate::vocab::intent::CHECKOUT_LINES_MAX + 1),
    ] {
        assert!(matches!(
            store.checkout(
                &request(quantity, lines),
                super::orders::Connectivity::Online,
                NOW
            ),
            Err(RetailError::Invalid(_))
        ));
    }
    assert_eq!(store.pending_ops(0, 10).unwrap().len(), 0);
}

#[test]
fn stored_modes_policies_and_states_parse_strictly() {
    let store = replica("till-1");
    let store_id = store.store_id().clone();
    store
        .db
        .execute(
            "INSERT INTO stock_levels (set_id, sku, on_hand, free, reserved, held, mode, strong_at_or_below, offline_policy, version)
             VALUES (?1, 'a', 10, 10, 0, 0, 'escrow', 5, 'block', 1)",
            [DocSetId::store(&store_id).as_str()],
        )
        .unwrap();
    assert!(store.stock(&store_id, &sku("a")).unwrap().is_some());
    store
        .db
        .execute("UPDATE stock_levels SET mode = 'Escrow'", [])
        .unwrap();
    assert!(
        matches!(
            store.stock(&store_id, &sku("a")),
            Err(crate::db::DbError::Corrupt { .. })
        ),
        "a mode that is not exactly escrow or strong is corrupt, not strong"
    );
    store
        .db
        .execute(
            "UPDATE stock_levels SET mode = 'strong', offline_policy = 'maybe'",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.stock(&store_id, &sku("a")),
        Err(crate::db::DbError::Corrupt { .. })
    ));
    assert_eq!(
        crate::vocab::intent::StockMode::parse("strong"),
        Some(crate::vocab::intent::StockMode::Strong)
    );
    assert_eq!(crate::vocab::intent::StockMode::parse("Strong"), None);
    assert_eq!(crate::vocab::intent::StockMode::parse(""), None);
    use super::orders::CompensationState;
    for state in [CompensationState::Open, CompensationState::Resolved] {
        assert_eq!(CompensationState::parse(state.as_str()), Some(state));
    }
    assert_eq!(CompensationState::parse("closed"), None);
}

#[test]
fn a_restored_hub_deciding_a_sale_differently_opens_a_compensation_task() {
    use crate::db::OpStatus;
    use crate::protocol::device_session::probe_verdict;
    use crate::vocab::intent::{Decision, Refusal};
    let mut store = replica("till-1");
    let request = |order: &str| super::orders::CheckoutRequest {
        order_id: order.parse().unwrap(),
        idempotency_key: None,
        lines: vec![OrderLine {
            sku: sku("a"),
            quantity: 2,
            unit_price_minor: 100,
        }],
        currency: Currency::new("EUR").unwrap(),
        payment_ref: "card-1".parse().unwrap(),
        channel: Channel::Pos,
    };
    let online = super::orders::Connectivity::Online;
    let kept = store.checkout(&request("o-1"), online, NOW).unwrap().op;
    let changed = store.checkout(&request("o-2"), online, NOW).unwrap().op;
    let confirmed = |order_no| Decision::Confirmed { order_no };
    let decide = |store: &mut Replica, answers: [(OpId, Decision); 2]| {
        let acks: Vec<Ack> = answers
            .into_iter()
            .map(|(op, decision)| Ack {
                op,
                outcome: AckOutcome::Decided(decision),
            })
            .collect();
        store.record_acks(&acks, NOW).unwrap()
    };
    decide(&mut store, [(kept, confirmed(1)), (changed, confirmed(2))]);
    let probe = store.restore_probe().unwrap();
    let behind = probe_verdict(&probe, &vec![false; probe.len()]).unwrap();
    assert_eq!(store.requeue_for_restored_hub(&behind).unwrap(), 2);
    let pushed = store.pending_ops(0, 10).unwrap();
    assert_eq!(
        pushed.iter().map(|op| op.id).collect::<Vec<_>>(),
        vec![kept, changed],
        "the same op ids, the same intents"
    );
    // The restored hub decides them again: the first as before, the second
    // is refused now (its stock was sold again after the backup).
    let refused = Decision::Refused(Refusal::OutOfStock {
        sku: "a".into(),
        available: 0,
    });
    let summary = decide(&mut store, [(kept, confirmed(1)), (changed, refused)]);
    assert!(summary.decided.is_empty(), "no decision applied twice");
    assert_eq!(
        store.op_status(&changed).unwrap(),
        Some(OpStatus::Confirmed {
            decision: confirmed(2)
        }),
        "the first answer stands"
    );
    let tasks = store.compensations().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!((tasks[0].op, tasks[0].order_no), (changed, Some(2)));
    assert!(
        tasks[0]
            .reason
            .contains("refused this sale it had confirmed")
    );
    assert!(store.pending_ops(0, 10).unwrap().is_empty());
    let order = store.order("o-2").unwrap().unwrap();
    assert_eq!(order.order_no, Some(2));
}
