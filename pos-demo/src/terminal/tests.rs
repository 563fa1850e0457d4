//! The screen, drawn on ratatui's `TestBackend`, and the app driven by key
//! events against a real embedded hub.

use std::time::{Duration, Instant};

use omnisync_core::client::{Client, Link};
use omnisync_core::db::OpStatus;
use omnisync_core::retail::orders::Compensation;
use omnisync_core::retail::stock::StockView;
use omnisync_core::vocab::goods::Sku;
use omnisync_core::vocab::intent::{
    Decision, LineSource, OfflinePolicy, ShortLine, StockMode, StockPolicy,
};
use omnisync_core::{DeviceId, OpId, ReplicaId, StoreId};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{App, CartLine, CheckoutRow, Focus, Message, Mode, ProductRow, Tone};
use super::{DemoHub, open_till, sync_url, sync_urls, ui};

const WAIT: Duration = Duration::from_secs(20);

/// The screen as text, one line per row.
fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::render(frame, app)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            text.push_str(buffer.cell((x, y)).map_or(" ", |cell| cell.symbol()));
        }
        text.push('\n');
    }
    text
}

fn app() -> App {
    App::new(
        StoreId::new("berlin-01").unwrap(),
        DeviceId::new("till-1").unwrap(),
        "ws://127.0.0.1:7000/v1/sync",
    )
}

fn view(sku: &str, on_hand: u64, mode: StockMode, allowance_left: u64) -> StockView {
    StockView {
        sku: Sku::new(sku).unwrap(),
        on_hand,
        free: on_hand / 2,
        held: on_hand / 4,
        mode,
        policy: StockPolicy {
            strong_at_or_below: 5,
            offline: OfflinePolicy::Block,
        },
        allowance_left,
        recalled: false,
    }
}

fn op(seq: u64) -> OpId {
    OpId {
        replica: ReplicaId([7; 16]),
        seq,
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn press(app: &mut App, till: &Client, keys: &str) {
    for c in keys.chars() {
        app.handle_key(key(KeyCode::Char(c)), till);
    }
}

#[test]
fn the_screen_shows_results_stock_cart_checkouts_and_the_link() {
    let mut app = app();
    app.query = "oat".into();
    app.results = vec![
        ProductRow {
            sku: Sku::new("sku-002").unwrap(),
            name: "Oat milk 1l".into(),
            barcode: Some("4006381333948".into()),
            price_minor: Some(249),
            stock: Some(view("sku-002", 196, StockMode::Escrow, 4)),
        },
        ProductRow {
            sku: Sku::new("sku-009").unwrap(),
            name: "Oat grinder".into(),
            barcode: None,
            price_minor: None,
            stock: Some(view("sku-009", 3, StockMode::Strong, 0)),
        },
    ];
    app.cart = vec![CartLine {
        sku: Sku::new("sku-002").unwrap(),
        name: "Oat milk 1l".into(),
        quantity: 2,
        unit_price_minor: 249,
    }];
    app.checkouts = vec![
        CheckoutRow {
            op: op(3),
            order_id: "till-1-0a0b0c-3".into(),
            lines: vec![(Sku::new("sku-002").unwrap(), 2, LineSource::Allowance)],
            total_minor: 498,
            at_risk: false,
            status: OpStatus::Pending,
        },
        CheckoutRow {
            op: op(2),
            order_id: "till-1-0a0b0c-2".into(),
            lines: vec![(Sku::new("sku-002").unwrap(), 1, LineSource::Hub)],
            total_minor: 249,
            at_risk: false,
            status: OpStatus::Confirmed {
                decision: Decision::Confirmed { order_no: 7 },
            },
        },
    ];
    app.sync.link = Link::Offline;
    app.switched_offline = true;
    app.sync.pending = 1;
    app.sync.oldest_pending_age_ms = 2_500;
    app.sync.last_ack_ms = Some(app.now_ms - 12_000);
    let text = screen(&app, 150, 36);
    for expected in [
        "○ OFFLINE (switched off, o to reconnect)",
        "pending 1",
        "oldest pending 2.5 s",
        "last ack 12 s ago",
        " oat",
        "sku-002",
        "Oat milk 1l",
        "€2.49",
        "escrow · 4 left here",
        "strong · hub decides",
        "no price",
        "this till may sell 4 more on its own",
        "barcode 4006381333948",
        "Cart (1 line)",
        "2×",
        "Total €4.98",
        "2× sku-002 allowance",
        "1× sku-002 hub",
        "pending → confirmed #7",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    // Newest checkout first.
    assert!(text.find("till-1-0a0b0c-3").unwrap() < text.find("till-1-0a0b0c-2").unwrap());
}

#[test]
fn the_screen_shows_search_mode_a_blocked_sale_and_compensation_tasks() {
    let mut app = app();
    app.mode = Mode::Search;
    app.query = "grin".into();
    app.sync.link = Link::Online;
    app.message = Some(Message {
        tone: Tone::Bad,
        text:
            "blocked: sku-009 is low (3 on hand) and is sold only with the hub; the till is offline"
                .into(),
    });
    app.checkouts = vec![CheckoutRow {
        op: op(9),
        order_id: "till-1-0a0b0c-9".into(),
        lines: vec![(Sku::new("sku-010").unwrap(), 2, LineSource::Provisional)],
        total_minor: 9000,
        at_risk: true,
        status: OpStatus::Compensation {
            decision: Decision::Short {
                order_no: 19,
                lines: vec![ShortLine {
                    sku: Sku::new("sku-010").unwrap(),
                    quantity: 1,
                }],
            },
        },
    }];
    app.tasks = vec![Compensation {
        op: op(9),
        order_id: "till-1-0a0b0c-9".parse().unwrap(),
        order_no: Some(19),
        lines: vec![ShortLine {
            sku: Sku::new("sku-010").unwrap(),
            quantity: 1,
        }],
        reason: "out of stock at the hub".into(),
        state: omnisync_core::retail::orders::CompensationState::Open,
        resolution: None,
    }];
    app.sync.compensations_open = 1;
    app.sync.hub = Some("ws://10.0.0.7:7878/v1/sync".into());
    let text = screen(&app, 150, 36);
    for expected in [
        "● ONLINE via ws://10.0.0.7:7878/v1/sync",
        "open tasks 1",
        "Find: name, SKU or barcode",
        " grin_",
        "no product matches",
        "blocked: sku-009 is low (3 on hand)",
        "2× sku-010 provisional",
        "pending → compensation: #19 short by 1",
        "Compensation tasks (1 open)",
        "OPEN till-1-0a0b0c-9 #19",
        "short 1× sku-010 — out of stock at the hub",
        ui::KEYS_SEARCH,
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
}

#[test]
fn the_screen_fits_a_small_terminal() {
    let mut app = app();
    app.results = vec![ProductRow {
        sku: Sku::new("sku-001").unwrap(),
        name: "Espresso beans 1kg".into(),
        barcode: None,
        price_minor: Some(1899),
        stock: None,
    }];
    let text = screen(&app, 80, 24);
    assert!(text.contains("Espresso"), "{text}");
    // Degenerate sizes draw without panicking.
    screen(&app, 20, 5);
}

#[test]
fn hub_urls_are_normalised() {
    assert_eq!(
        sync_url("ws://127.0.0.1:7000").unwrap(),
        "ws://127.0.0.1:7000/v1/sync"
    );
    assert_eq!(
        sync_url("ws://hub.local:7000/v1/sync").unwrap(),
        "ws://hub.local:7000/v1/sync"
    );
    assert!(sync_url("http://127.0.0.1:7000").is_err());
    assert!(sync_url("ws://127.0.0.1").is_err());
    assert_eq!(
        sync_urls("ws://10.0.0.1:7000, ws://10.0.0.2:7000/v1/sync").unwrap(),
        ["ws://10.0.0.1:7000/v1/sync", "ws://10.0.0.2:7000/v1/sync"]
    );
    assert!(sync_urls(" , ").is_err());
    assert!(sync_urls("ws://10.0.0.1:7000,http://10.0.0.2:7000").is_err());
}

/// Refreshes until `condition` holds (the sync task works in the background).
async fn until(app: &mut App, till: &Client, what: &str, condition: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        app.refresh(till).unwrap();
        if condition(app) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}; screen:\n{}",
            screen(app, 150, 36)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stock_of<'a>(app: &'a App, sku: &str) -> Option<&'a StockView> {
    app.results
        .iter()
        .find(|row| row.sku.as_str() == sku)
        .and_then(|row| row.stock.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_drive_a_till_through_online_offline_and_compensation_on_a_real_hub() {
    let store = StoreId::new("berlin-01").unwrap();
    let device = DeviceId::new("till-7").unwrap();
    let demo = DemoHub::start(&store).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let till = open_till(dir.path(), &store, &device, &[demo.hub.sync_url()]).unwrap();
    till.wait_synced(WAIT).await.unwrap();
    let mut app = App::new(store, device, demo.hub.sync_url());
    app.load_history(&till).unwrap();
    app.refresh(&till).unwrap();
    assert_eq!(app.sync.link, Link::Online);

    // Find oat milk by name, browse, add two, check out online: the hub decides.
    press(&mut app, &till, "/oat");
    assert_eq!(app.mode, Mode::Search);
    assert_eq!(app.results.len(), 1, "{:?}", app.results);
    assert!(screen(&app, 150, 36).contains("Oat milk 1l"));
    app.handle_key(key(KeyCode::Enter), &till);
    assert_eq!((app.mode, app.focus), (Mode::Normal, Focus::Products));
    press(&mut app, &till, "aa");
    assert_eq!(app.cart[0].quantity, 2);
    press(&mut app, &till, "c");
    assert!(app.cart.is_empty());
    assert_eq!(app.checkouts[0].lines[0].2, LineSource::Hub);
    until(&mut app, &till, "the hub confirming the sale", |app| {
        matches!(app.checkouts[0].status, OpStatus::Confirmed { .. })
    })
    .await;
    assert!(
        screen(&app, 150, 36).contains("pending → confirmed #1"),
        "{}",
        screen(&app, 150, 36)
    );
    // The hub granted an allowance for oat milk.
    press(&mut app, &till, "/oat");
    until(&mut app, &till, "an allowance", |app| {
        stock_of(app, "sku-002").is_some_and(|view| view.allowance_left > 0)
    })
    .await;
    app.handle_key(key(KeyCode::Esc), &till);
    let allowance = stock_of(&app, "sku-002").unwrap().allowance_left;

    // Offline: the search still works and oat milk sells from the allowance.
    press(&mut app, &till, "o");
    until(&mut app, &till, "the link going down", |app| {
        app.sync.link == Link::Offline
    })
    .await;
    assert!(screen(&app, 150, 36).contains("○ OFFLINE (switched off"));
    press(&mut app, &till, "ac");
    assert_eq!(app.checkouts[0].lines[0].2, LineSource::Allowance);
    app.refresh(&till).unwrap();
    assert_eq!(
        stock_of(&app, "sku-002").unwrap().allowance_left,
        allowance - 1
    );
    assert!(screen(&app, 150, 36).contains("1× sku-002 allowance"));

    // The low-stock grinder is refused offline; the cart keeps it.
    app.handle_key(key(KeyCode::Char('/')), &till);
    app.handle_key(
        KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL),
        &till,
    );
    press(&mut app, &till, "grinder");
    app.handle_key(key(KeyCode::Enter), &till);
    press(&mut app, &till, "ac");
    let message = app.message.clone().unwrap();
    assert_eq!(message.tone, Tone::Bad);
    assert!(
        message.text.starts_with("blocked: sku-009 is low"),
        "{message:?}"
    );
    assert_eq!(app.cart.len(), 1);
    assert!(screen(&app, 150, 36).contains("blocked: sku-009 is low"));
    press(&mut app, &till, "x");

    // Scanning the teapot's barcode twice puts two in the cart; offline they
    // sell provisionally, at risk (one is on hand).
    press(&mut app, &till, "4006381334020");
    assert_eq!(app.mode, Mode::Search);
    app.handle_key(key(KeyCode::Enter), &till);
    press(&mut app, &till, "4006381334020");
    app.handle_key(key(KeyCode::Enter), &till);
    app.handle_key(key(KeyCode::Esc), &till);
    assert_eq!(app.cart.len(), 1);
    assert_eq!(app.cart[0].quantity, 2);
    press(&mut app, &till, "c");
    assert!(app.checkouts[0].at_risk);
    assert_eq!(app.checkouts[0].lines[0].2, LineSource::Provisional);
    assert!(screen(&app, 150, 36).contains("pending (at risk)"));

    // Back online: the allowance sale is confirmed, the teapots are one short.
    press(&mut app, &till, "o");
    until(&mut app, &till, "every sale decided", |app| {
        app.sync.link == Link::Online
            && app.sync.pending == 0
            && app
                .checkouts
                .iter()
                .all(|row| !matches!(row.status, OpStatus::Pending))
    })
    .await;
    assert!(matches!(
        app.checkouts[1].status,
        OpStatus::Confirmed {
            decision: Decision::Confirmed { .. }
        }
    ));
    until(&mut app, &till, "a compensation task", |app| {
        app.tasks
            .iter()
            .any(|task| task.state == omnisync_core::retail::orders::CompensationState::Open)
    })
    .await;
    let text = screen(&app, 150, 36);
    assert!(text.contains("short by 1"), "{text}");
    assert!(text.contains("OPEN"), "{text}");
    assert!(text.contains("● ONLINE"), "{text}");

    // Tab to the tasks and refund.
    app.handle_key(key(KeyCode::Tab), &till);
    app.handle_key(key(KeyCode::Tab), &till);
    assert_eq!(app.focus, Focus::Tasks);
    press(&mut app, &till, "r");
    assert_eq!(
        app.tasks[0].state,
        omnisync_core::retail::orders::CompensationState::Resolved
    );
    assert!(matches!(
        app.checkouts[0].status,
        OpStatus::Compensated { .. }
    ));
    let text = screen(&app, 150, 36);
    assert!(text.contains("resolved (refund)"), "{text}");
    assert!(text.contains("→ compensated #"), "{text}");
    until(&mut app, &till, "the refund reaching the hub", |app| {
        app.sync.pending == 0 && app.sync.compensations_open == 0
    })
    .await;

    // A restart shows the same checkouts from the op log.
    let mut again = App::new(app.store.clone(), app.device.clone(), "");
    again.load_history(&till).unwrap();
    again.refresh(&till).unwrap();
    assert_eq!(again.checkouts, app.checkouts);

    press(&mut app, &till, "q");
    assert!(app.quit);
    till.stop().await;
    demo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hub_down_the_till_reads_locally_sells_from_its_allowance_and_catches_up() {
    let store = StoreId::new("berlin-01").unwrap();
    let device = DeviceId::new("till-8").unwrap();
    let demo = DemoHub::start(&store).await.unwrap();
    let address = demo.hub.address();
    let dir = tempfile::tempdir().unwrap();
    let till = open_till(dir.path(), &store, &device, &[demo.hub.sync_url()]).unwrap();
    till.wait_synced(WAIT).await.unwrap();
    let mut app = App::new(store, device, demo.hub.sync_url());
    app.refresh(&till).unwrap();
    // One online sale earns an allowance of honey.
    press(&mut app, &till, "/honey");
    app.handle_key(key(KeyCode::Enter), &till);
    press(&mut app, &till, "ac");
    until(&mut app, &till, "an allowance of honey", |app| {
        stock_of(app, "sku-008").is_some_and(|view| view.allowance_left > 0)
    })
    .await;

    // The hub goes down (its data stays).
    let DemoHub { hub, _data: data } = demo;
    hub.stop().await.unwrap();
    until(&mut app, &till, "the link going down", |app| {
        app.sync.link != Link::Online
    })
    .await;
    assert!(!app.switched_offline);
    // Reads come from the local store; honey sells from the allowance.
    press(&mut app, &till, "/honey");
    assert_eq!(app.results.len(), 1);
    app.handle_key(key(KeyCode::Enter), &till);
    press(&mut app, &till, "ac");
    assert_eq!(app.checkouts[0].lines[0].2, LineSource::Allowance);
    until(
        &mut app,
        &till,
        "the screen saying the hub is unreachable",
        |app| app.sync.link == Link::Offline,
    )
    .await;
    let text = screen(&app, 150, 36);
    assert!(text.contains("○ OFFLINE (hub unreachable"), "{text}");
    assert!(text.contains("pending 1"), "{text}");

    // The hub comes back on the same address: the sale is uploaded and decided.
    let config = omnisync_hub::HubConfig::new(address, data.path().to_path_buf());
    let hub = omnisync_hub::Hub::start(config).await.unwrap();
    until(&mut app, &till, "catching up", |app| {
        app.sync.link == Link::Online
            && app.sync.pending == 0
            && matches!(app.checkouts[0].status, OpStatus::Confirmed { .. })
    })
    .await;
    assert!(screen(&app, 150, 36).contains("pending → confirmed #2"));
    till.stop().await;
    hub.stop().await.unwrap();
}

#[test]
fn keys_search_and_edit_the_cart_on_the_local_store_alone() {
    use omnisync_core::client::SyncConfig;
    use omnisync_core::retail::catalog::{ProductField, ProductUpdate};
    use omnisync_core::vocab::goods::{Channel, Money};

    let store = StoreId::new("berlin-01").unwrap();
    let device = DeviceId::new("till-9").unwrap();
    let mut local = omnisync_core::Replica::open_in_memory(device.clone(), store.clone()).unwrap();
    let sku = Sku::new("sku-777").unwrap();
    local
        .upsert_products(
            &store,
            &[ProductUpdate {
                sku: sku.clone(),
                fields: vec![
                    (ProductField::Name, "Rye bread".into()),
                    (ProductField::Barcode, "4000000000777".into()),
                ],
            }],
            1,
        )
        .unwrap();
    local
        .set_price(
            &store,
            &sku,
            Channel::Pos,
            0,
            &Money {
                amount_minor: 350,
                currency: crate::demo::eur(),
            },
            1,
        )
        .unwrap();
    // Never started: no hub at all.
    let till = Client::new(local, SyncConfig::new("ws://127.0.0.1:9/v1/sync"));
    let mut app = App::new(store, device, "none");
    app.refresh(&till).unwrap();

    // By SKU, by barcode (a scan adds it at once), by name.
    press(&mut app, &till, "/sku-777");
    assert_eq!(app.results.len(), 1);
    app.handle_key(key(KeyCode::Esc), &till);
    press(&mut app, &till, "4000000000777");
    app.handle_key(key(KeyCode::Enter), &till);
    assert_eq!((app.mode, app.cart.len()), (Mode::Search, 1));
    press(&mut app, &till, "rye");
    assert_eq!(app.results[0].name, "Rye bread");
    // Esc and a quick `a` arrive as Alt+a: a command, not search text.
    app.handle_key(KeyEvent::new(KeyCode::Char('a'), KeyModifiers::ALT), &till);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.cart[0].quantity, 2);
    app.handle_key(key(KeyCode::Tab), &till);
    assert_eq!(app.focus, Focus::Cart);
    press(&mut app, &till, "+");
    assert_eq!(app.cart_total(), 3 * 350);
    press(&mut app, &till, "--");
    assert_eq!(app.cart[0].quantity, 1);
    // No stock was ever published: offline, the sale is refused and kept.
    press(&mut app, &till, "c");
    let message = app.message.clone().unwrap();
    assert!(
        message.text.contains("no stock of sku-777 is known"),
        "{message:?}"
    );
    assert_eq!(app.cart.len(), 1);
    assert!(app.checkouts.is_empty());
    press(&mut app, &till, "d");
    assert!(app.cart.is_empty());
    app.handle_key(key(KeyCode::Esc), &till);
    assert!(app.quit);
}
