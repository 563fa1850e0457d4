//! `pos-demo demo`: a short store day on an embedded hub, narrated.
//!
//! Three tills, a shopper's phone and the back office each keep their own
//! SQLite store and sync over real WebSockets to a hub started in this
//! process on `127.0.0.1:0` (or a running one, `--hub`). The day:
//!
//! 1. the back office publishes the catalog and prices and receives stock
//!    (stock commands, decided by the hub);
//! 2. the tills sell online: the hub confirms each checkout with an order
//!    number and grants each till an escrow allowance of what it sells;
//! 3. one till loses its uplink and keeps selling from its allowance, with
//!    no round trip;
//! 4. a low-stock item is decided at the hub while online, and refused
//!    offline by its `block` policy;
//! 5. a provisional offline sale of the last unit, which another till sold
//!    meanwhile, becomes a compensation task the till resolves as a refund;
//! 6. a price change reaches every till, the offline one when it returns;
//! 7. every device reads the same stock as the hub, every op is decided or
//!    stored at the hub, every document equals the hub's copy.
//!
//! The program exits non-zero if any of that does not hold.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use omnisync_core::client::{Client, Link, SyncConfig};
use omnisync_core::db::OpStatus;
use omnisync_core::protocol::message::{AckOutcome, Credentials};
use omnisync_core::retail::RetailError;
use omnisync_core::retail::catalog::{ProductField, ProductUpdate};
use omnisync_core::retail::orders::{CheckoutReceipt, CheckoutRequest, OrderLine};
use omnisync_core::retail::stock::StockView;
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::vocab::intent::{
    Decision, LineSource, OfflinePolicy, StockCommand, StockMode, StockPolicy,
};
use omnisync_core::vocab::record::{AllowanceRecord, Record, is_record_doc, stock_record_doc};
use omnisync_core::{CustomerId, DeviceId, DocId, DocSetId, OpId, Replica, StoreId};
use rand::{Rng, SeedableRng};

use crate::hubref::HubRef;
use crate::report::Timeline;

/// How long the demo waits for sync before declaring failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final checks wait for the last records to arrive.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One product of the demo store.
pub(crate) struct Item {
    /// SKU.
    pub sku: &'static str,
    /// Display name.
    pub name: &'static str,
    /// EAN-13 barcode.
    pub barcode: &'static str,
    /// Category.
    pub category: &'static str,
    /// POS and app price, euro cents.
    pub price_minor: i64,
    /// Units received at the start of the day.
    pub received: u64,
    /// `None`: the default policy (strong at or below 5, block offline).
    pub policy: Option<StockPolicy>,
}

/// The demo store's catalog: eight everyday items sold from allowances, one
/// low-stock item blocked offline and one sold provisionally offline.
pub(crate) const CATALOG: &[Item] = &[
    item(
        "sku-001",
        "Espresso beans 1kg",
        "4006381333931",
        "coffee",
        1899,
    ),
    item("sku-002", "Oat milk 1l", "4006381333948", "dairy", 249),
    item("sku-003", "Croissant", "4006381333955", "bakery", 189),
    item("sku-004", "Ceramic mug", "4006381333962", "homeware", 1200),
    item(
        "sku-005",
        "Filter papers x100",
        "4006381333979",
        "coffee",
        399,
    ),
    item(
        "sku-006",
        "Dark chocolate 100g",
        "4006381333986",
        "sweets",
        299,
    ),
    item("sku-007", "Green tea 50 bags", "4006381333993", "tea", 649),
    item("sku-008", "Honey 500g", "4006381334006", "pantry", 899),
    Item {
        sku: "sku-009",
        name: "Burr grinder",
        barcode: "4006381334013",
        category: "coffee",
        price_minor: 8900,
        received: 3,
        policy: Some(StockPolicy {
            strong_at_or_below: 5,
            offline: OfflinePolicy::Block,
        }),
    },
    Item {
        sku: "sku-010",
        name: "Vintage teapot",
        barcode: "4006381334020",
        category: "tea",
        price_minor: 4500,
        received: 1,
        policy: Some(StockPolicy {
            strong_at_or_below: 5,
            offline: OfflinePolicy::Provisional,
        }),
    },
];
/// Items 0..EVERYDAY are well stocked.
const EVERYDAY: usize = 8;
/// The low-stock item whose policy blocks offline sales.
const GRINDER: usize = 8;
/// The low-stock item sold provisionally offline.
const TEAPOT: usize = 9;
/// The item whose price the back office changes.
const REPRICED: usize = 0;
/// Units received of each everyday item.
const EVERYDAY_STOCK: u64 = 200;

const fn item(
    sku: &'static str,
    name: &'static str,
    barcode: &'static str,
    category: &'static str,
    price_minor: i64,
) -> Item {
    Item {
        sku,
        name,
        barcode,
        category,
        price_minor,
        received: EVERYDAY_STOCK,
        policy: None,
    }
}

/// Options of `pos-demo demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Sales per till while every till is online.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sales: u32,
    /// Seed for the random choice of products.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Use a running hub (`ws://HOST:PORT`) instead of an embedded one.
    #[arg(long)]
    hub: Option<String>,
    /// The store to play; use a fresh one per run against a long-lived hub.
    #[arg(long, default_value = "berlin-01", value_parser = parse_store)]
    store: StoreId,
}

fn parse_store(text: &str) -> Result<StoreId, String> {
    StoreId::new(text).map_err(|error| error.to_string())
}

struct Device {
    name: String,
    client: Client,
    _dir: tempfile::TempDir,
}

fn open_device(
    url: &str,
    store: &StoreId,
    name: &str,
    token: Option<&str>,
    sets: &[DocSetId],
) -> anyhow::Result<Device> {
    let dir = tempfile::tempdir().context("creating a device directory")?;
    let store = Replica::open(
        &dir.path().join("device.db"),
        DeviceId::new(name)?,
        store.clone(),
    )?;
    let mut config = SyncConfig::new(url);
    config.credentials = Credentials {
        token: token.map(str::to_owned),
    };
    config.agent = format!("pos-demo/{name}");
    let client = Client::new(store, config);
    for set in sets {
        client.subscribe(set)?;
    }
    client.start();
    Ok(Device {
        name: name.to_owned(),
        client,
        _dir: dir,
    })
}

/// `€12.34`.
pub(crate) fn format_money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}€{}.{:02}", minor / 100, minor % 100)
}

pub(crate) fn eur() -> Currency {
    Currency::new("EUR").expect("EUR is a currency code")
}

/// Where a checkout op is in its lifecycle, in a cashier's words:
/// `pending`, `confirmed #12`, `refused: out of stock ...`,
/// `compensation: #13 short by 1`, `compensated`.
pub(crate) fn lifecycle_text(status: &OpStatus) -> String {
    match status {
        OpStatus::Pending => "pending".to_owned(),
        OpStatus::Acknowledged { .. } => "stored at the hub".to_owned(),
        OpStatus::Rejected { code, detail } => format!("rejected ({code}): {detail}"),
        OpStatus::Confirmed { decision } => match decision {
            Decision::Confirmed { order_no } => format!("confirmed #{order_no}"),
            Decision::Applied { version } => format!("applied (v{version})"),
            other => omnisync_core::vocab::record::describe_decision(other),
        },
        OpStatus::Refused { refusal } => format!("refused: {refusal}"),
        OpStatus::Compensation { decision } => match decision {
            Decision::Short { order_no, lines } => format!(
                "compensation: #{order_no} short by {}",
                lines.iter().map(|line| line.quantity).sum::<u64>()
            ),
            Decision::Refused(refusal) => format!("compensation: {refusal}"),
            other => format!(
                "compensation: {}",
                omnisync_core::vocab::record::describe_decision(other)
            ),
        },
        OpStatus::Compensated { decision } => match decision {
            Decision::Short { order_no, .. } => format!("compensated #{order_no}"),
            _ => "compensated".to_owned(),
        },
        other => other.as_str().to_owned(),
    }
}

/// A SKU's stock in a cashier's words.
pub(crate) fn stock_text(view: &StockView) -> String {
    match view.mode {
        StockMode::Escrow => format!(
            "{} on hand, escrow: {} left in this till's allowance",
            view.on_hand, view.allowance_left
        ),
        StockMode::Strong => format!(
            "{} on hand, strong: the hub decides (offline: {})",
            view.on_hand,
            view.policy.offline.as_str()
        ),
    }
}

/// Publishes the demo catalog from `back_office`: products with barcodes,
/// POS and app prices, stock policies, and the day's deliveries (stock
/// commands keyed `delivery-1-SKU`, so a repeat changes nothing). Returns
/// the stock command ops for the caller to wait on.
pub(crate) fn stock_the_store(back_office: &Client, store: &StoreId) -> anyhow::Result<Vec<OpId>> {
    let now = omnisync_core::now_ms();
    let updates: Vec<ProductUpdate> = CATALOG
        .iter()
        .map(|item| {
            Ok(ProductUpdate {
                sku: Sku::new(item.sku)?,
                fields: vec![
                    (ProductField::Name, item.name.to_owned()),
                    (ProductField::Barcode, item.barcode.to_owned()),
                    (ProductField::Category, item.category.to_owned()),
                    (ProductField::Status, "active".to_owned()),
                ],
            })
        })
        .collect::<anyhow::Result<_>>()?;
    back_office.write(|db| match db.upsert_products(store, &updates, now) {
        Ok(_) | Err(RetailError::Db(omnisync_core::DbError::Unchanged)) => Ok(()),
        Err(error) => Err(error),
    })?;
    let mut ops = Vec::new();
    for item in CATALOG {
        let sku = Sku::new(item.sku)?;
        let money = Money {
            amount_minor: item.price_minor,
            currency: eur(),
        };
        for channel in [Channel::Pos, Channel::App] {
            back_office.write(
                |db| match db.set_price(store, &sku, channel, 0, &money, now) {
                    Ok(_) | Err(RetailError::Db(omnisync_core::DbError::Unchanged)) => Ok(()),
                    Err(error) => Err(error),
                },
            )?;
        }
        if let Some(policy) = item.policy {
            ops.push(back_office.write(|db| {
                db.stock_command(
                    StockCommand::SetPolicy {
                        sku: sku.clone(),
                        policy,
                    },
                    now,
                )
            })?);
        }
        ops.push(back_office.write(|db| {
            db.stock_command(
                StockCommand::Receive {
                    key: format!("delivery-1-{sku}").parse()?,
                    sku: sku.clone(),
                    quantity: item.received,
                },
                now,
            )
        })?);
    }
    Ok(ops)
}

/// Waits until the hub has decided `op` (the op leaves `pending`).
pub(crate) async fn decided(client: &Client, op: OpId) -> anyhow::Result<OpStatus> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let status = client
            .replica()
            .op_status(&op)?
            .with_context(|| format!("op {op} is not in the op log"))?;
        if !matches!(status, OpStatus::Pending) {
            return Ok(status);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hub did not decide op {op} within {SYNC_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `condition` holds for the stock `device` reads of `item`.
async fn wait_for_stock(
    device: &Device,
    store: &StoreId,
    item: usize,
    what: &str,
    condition: impl Fn(&StockView) -> bool,
) -> anyhow::Result<StockView> {
    let sku = Sku::new(CATALOG[item].sku)?;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let view = device.client.replica().stock(store, &sku)?;
        if let Some(view) = view.filter(|view| condition(view)) {
            return Ok(view);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: {what} ({sku}) did not happen within {SYNC_TIMEOUT:?}",
            device.name
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn stock_of(device: &Device, store: &StoreId, item: usize) -> anyhow::Result<Option<StockView>> {
    Ok(device
        .client
        .replica()
        .stock(store, &Sku::new(CATALOG[item].sku)?)?)
}

/// The catalog name of a SKU (the SKU itself if it is not in the catalog).
fn name_of(sku: &str) -> &str {
    CATALOG
        .iter()
        .find(|item| item.sku == sku)
        .map_or(sku, |item| item.name)
}

/// A recorded checkout: the receipt and what to print about it.
struct Sale {
    receipt: CheckoutReceipt,
    text: String,
}

/// Checks out `picks` (catalog index, units) on `till` at the POS prices the
/// till shows, online or offline as its link is now.
fn checkout(till: &Device, order_id: &str, picks: &[(usize, u64)]) -> Result<Sale, RetailError> {
    let mut lines = Vec::with_capacity(picks.len());
    let mut total = 0;
    {
        let store = till.client.replica();
        let store_id = store.store_id().clone();
        for &(index, quantity) in picks {
            let sku = Sku::new(CATALOG[index].sku)
                .map_err(|error| RetailError::Invalid(error.to_string()))?;
            let price = store
                .price_in_force(&store_id, &sku, Channel::Pos, omnisync_core::now_ms())?
                .ok_or_else(|| RetailError::Invalid(format!("{sku} has no POS price")))?;
            total += price.money.amount_minor * quantity as i64;
            lines.push(OrderLine {
                sku,
                quantity,
                unit_price_minor: price.money.amount_minor,
            });
        }
    }
    let receipt = till.client.checkout(&CheckoutRequest {
        order_id: order_id.to_owned().parse()?,
        idempotency_key: None,
        lines,
        currency: eur(),
        payment_ref: format!("card-{order_id}").parse()?,
        channel: Channel::Pos,
    })?;
    let described: Vec<String> = receipt
        .lines
        .iter()
        .map(|(sku, quantity, source)| {
            format!(
                "{quantity}× {} [{}]",
                name_of(sku.as_str()),
                source.as_str()
            )
        })
        .collect();
    Ok(Sale {
        text: format!(
            "{order_id}: {} = {}",
            described.join(" + "),
            format_money(total)
        ),
        receipt,
    })
}

/// What the day recorded, for the final checks.
#[derive(Default)]
struct Day {
    /// Every checkout: (till index, op).
    checkouts: Vec<(usize, OpId)>,
    /// Offline sales the block policy refused.
    blocked: u64,
    /// Compensation tasks resolved.
    resolved: u64,
    /// Things that went wrong along the way.
    problems: Vec<String>,
}

/// Runs the demo; `Ok(false)` when replicas disagree or an op is lost.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let timeline = Timeline::new();
    let hub = HubRef::open(args.hub.as_deref()).await?;
    let url = hub.sync_url();
    timeline.say("hub", hub.describe());
    let store = &args.store;
    let store_set = DocSetId::store(store);
    let customer = CustomerId::new("c-42")?;
    let back_office = open_device(
        &url,
        store,
        "back-office",
        None,
        &[store_set.clone(), DocSetId::orders(store)],
    )?;
    let tills: Vec<Device> = (1..=3)
        .map(|n| {
            open_device(
                &url,
                store,
                &format!("till-{n}"),
                None,
                std::slice::from_ref(&store_set),
            )
        })
        .collect::<Result<_, _>>()?;
    let phone = open_device(
        &url,
        store,
        "phone-c42",
        Some("customer:c-42"),
        &[store_set.clone(), DocSetId::customer(&customer)],
    )?;
    let all: Vec<&Device> = tills.iter().chain([&phone, &back_office]).collect();
    let mut day = Day::default();

    // 1. The back office: catalog, prices, policies and the morning delivery.
    back_office
        .client
        .wait_synced(SYNC_TIMEOUT)
        .await
        .context("back office syncing")?;
    let commands = stock_the_store(&back_office.client, store)?;
    timeline.say(
        "back-office",
        format!(
            "published {} products (names, barcodes, POS and app prices)",
            CATALOG.len()
        ),
    );
    for op in &commands {
        let status = decided(&back_office.client, *op).await?;
        if !matches!(
            status,
            OpStatus::Confirmed {
                decision: Decision::Applied { .. }
            }
        ) {
            day.problems
                .push(format!("stock command {op}: {}", lifecycle_text(&status)));
        }
    }
    timeline.say(
        "back-office",
        format!(
            "received {EVERYDAY_STOCK} units of each of {EVERYDAY} everyday items; the hub applied {} stock commands",
            commands.len()
        ),
    );
    for index in [GRINDER, TEAPOT] {
        let view = wait_for_stock(&back_office, store, index, "stock published", |_| true).await?;
        timeline.say(
            "back-office",
            format!(
                "received {} × {}: at or below {} → strong, offline policy {}",
                CATALOG[index].received,
                CATALOG[index].name,
                view.policy.strong_at_or_below,
                view.policy.offline.as_str()
            ),
        );
    }
    for device in &all {
        device
            .client
            .wait_synced(SYNC_TIMEOUT)
            .await
            .with_context(|| format!("{} syncing the catalog", device.name))?;
        for index in 0..CATALOG.len() {
            wait_for_stock(device, store, index, "stock arriving", |_| true).await?;
        }
    }
    timeline.say(
        "all",
        "every till and the phone hold catalog, prices and stock locally",
    );

    // 2. Online sales: the hub decides, confirms and grants allowances.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut sale_number = 0u32;
    let mut next_order = |till: &Device| {
        sale_number += 1;
        format!("{}-{sale_number:04}", till.name)
    };
    for _ in 0..args.sales {
        for (index, till) in tills.iter().enumerate() {
            let line_count = rng.random_range(1..=3);
            let picks: Vec<(usize, u64)> = rand::seq::index::sample(&mut rng, EVERYDAY, line_count)
                .into_iter()
                .map(|pick| (pick, rng.random_range(1..=2)))
                .collect();
            let order_id = next_order(till);
            let sale = checkout(till, &order_id, &picks)?;
            let status = decided(&till.client, sale.receipt.op).await?;
            timeline.say(
                &till.name,
                format!("{} → {}", sale.text, lifecycle_text(&status)),
            );
            day.checkouts.push((index, sale.receipt.op));
        }
    }
    let probe = wait_for_stock(&tills[2], store, 1, "stock arriving", |_| true).await?;
    timeline.say(
        "till-3",
        format!("{}: {}", CATALOG[1].name, stock_text(&probe)),
    );

    // The phone fills the shopper's cart at app prices.
    for item in CATALOG.iter().take(2) {
        let sku = Sku::new(item.sku)?;
        phone
            .client
            .write(|db| db.add_to_cart(&customer, &sku, 1, omnisync_core::now_ms()))?;
    }
    let cart =
        phone
            .client
            .replica()
            .cart(&customer, store, Channel::App, omnisync_core::now_ms())?;
    let cart_total = cart.total.as_ref().map_or_else(
        || "unpriced".to_owned(),
        |money| format_money(money.amount_minor),
    );
    timeline.say(
        &phone.name,
        format!(
            "cart: {} lines, {cart_total} at app prices",
            cart.lines.len()
        ),
    );

    // 3. Till 3 loses its uplink and sells from its allowance.
    let offline_till = &tills[2];
    let mut allowance = allowances(offline_till, store)?;
    if allowance.is_empty() {
        // The random sales gave till 3 nothing it may sell offline: one more
        // online sale of oat milk earns it an allowance.
        let order_id = next_order(offline_till);
        let sale = checkout(offline_till, &order_id, &[(1, 1)])?;
        let status = decided(&offline_till.client, sale.receipt.op).await?;
        timeline.say(
            &offline_till.name,
            format!("{} → {}", sale.text, lifecycle_text(&status)),
        );
        day.checkouts.push((2, sale.receipt.op));
        wait_for_stock(offline_till, store, 1, "an allowance", |view| {
            view.allowance_left > 0
        })
        .await?;
        allowance = allowances(offline_till, store)?;
    }
    offline_till.client.set_online(false);
    offline_till
        .client
        .wait_for(SYNC_TIMEOUT, "the link to go down", |status| {
            status.link == Link::Offline
        })
        .await?;
    let held: Vec<String> = allowance
        .iter()
        .map(|(index, left)| format!("{} {left}", CATALOG[*index].name))
        .collect();
    timeline.say(
        &offline_till.name,
        format!("uplink lost; allowances held: {}", held.join(", ")),
    );
    let mut offline_sales = Vec::new();
    for _ in 0..args.sales.min(6) {
        let Some((&index, _)) = allowance.iter().find(|(_, left)| **left > 0) else {
            break;
        };
        let order_id = next_order(offline_till);
        let sale = checkout(offline_till, &order_id, &[(index, 1)])?;
        if sale
            .receipt
            .lines
            .iter()
            .any(|(_, _, source)| *source != LineSource::Allowance)
        {
            day.problems
                .push(format!("{order_id} was not sold from the allowance"));
        }
        allowance = allowances(offline_till, store)?;
        let left = allowance.get(&index).copied().unwrap_or(0);
        timeline.say(
            &offline_till.name,
            format!(
                "{} → recorded offline, no round trip; {} allowance left: {left}",
                sale.text, CATALOG[index].name
            ),
        );
        day.checkouts.push((2, sale.receipt.op));
        offline_sales.push((order_id, sale.receipt.op));
    }
    if offline_sales.is_empty() {
        day.problems
            .push("till-3 made no offline sale from its allowance".to_owned());
    }

    // 4. A low-stock item: the hub decides online, the policy blocks offline.
    let grinder = stock_of(&tills[0], store, GRINDER)?.context("grinder stock")?;
    timeline.say(
        &tills[0].name,
        format!("{}: {}", CATALOG[GRINDER].name, stock_text(&grinder)),
    );
    let order_id = next_order(&tills[0]);
    let sale = checkout(&tills[0], &order_id, &[(GRINDER, 1)])?;
    let status = decided(&tills[0].client, sale.receipt.op).await?;
    timeline.say(
        &tills[0].name,
        format!("{} → {}", sale.text, lifecycle_text(&status)),
    );
    day.checkouts.push((0, sale.receipt.op));
    let order_id = next_order(offline_till);
    match checkout(offline_till, &order_id, &[(GRINDER, 1)]) {
        Err(RetailError::Blocked(reason)) => {
            day.blocked += 1;
            timeline.say(
                &offline_till.name,
                format!(
                    "{order_id}: 1× {} → blocked: {reason}",
                    CATALOG[GRINDER].name
                ),
            );
        }
        Err(error) => return Err(error.into()),
        Ok(sale) => {
            day.checkouts.push((2, sale.receipt.op));
            day.problems.push(format!(
                "{order_id}: an offline sale of a blocked low-stock item was accepted"
            ));
        }
    }

    // 5. The last teapot: sold provisionally offline, and online elsewhere.
    let order_id = next_order(offline_till);
    let provisional = checkout(offline_till, &order_id, &[(TEAPOT, 1)])?;
    timeline.say(
        &offline_till.name,
        format!(
            "{} → {}; the customer leaves with it, the hub decides on reconnect",
            provisional.text,
            if provisional.receipt.at_risk {
                "accepted at risk"
            } else {
                "accepted"
            }
        ),
    );
    day.checkouts.push((2, provisional.receipt.op));
    let order_id = next_order(&tills[1]);
    let sale = checkout(&tills[1], &order_id, &[(TEAPOT, 1)])?;
    let status = decided(&tills[1].client, sale.receipt.op).await?;
    timeline.say(
        &tills[1].name,
        format!("{} → {} (the last one)", sale.text, lifecycle_text(&status)),
    );
    day.checkouts.push((1, sale.receipt.op));

    // 6. A price change, timed to each online device.
    let repriced = &CATALOG[REPRICED];
    let new_price = repriced.price_minor - 200;
    let changed_at = Instant::now();
    let repriced_sku = Sku::new(repriced.sku)?;
    let money = Money {
        amount_minor: new_price,
        currency: eur(),
    };
    back_office.client.write(|db| {
        db.set_price(
            store,
            &repriced_sku,
            Channel::Pos,
            0,
            &money,
            omnisync_core::now_ms(),
        )
    })?;
    timeline.say(
        "back-office",
        format!(
            "price of {}: {} → {}",
            repriced.name,
            format_money(repriced.price_minor),
            format_money(new_price)
        ),
    );
    for device in [&tills[0], &tills[1], &phone] {
        let seen = wait_for_price(&device.client, repriced.sku, new_price).await?;
        timeline.say(
            &device.name,
            format!(
                "sees the new price after {:.1} ms",
                seen.duration_since(changed_at).as_secs_f64() * 1e3
            ),
        );
    }

    // Till 3 comes back: its offline sales are decided.
    offline_till.client.set_online(true);
    timeline.say(&offline_till.name, "uplink back — uploading");
    for (order_id, op) in &offline_sales {
        let status = decided(&offline_till.client, *op).await?;
        timeline.say(
            &offline_till.name,
            format!("{order_id}: pending → {}", lifecycle_text(&status)),
        );
    }
    let status = decided(&offline_till.client, provisional.receipt.op).await?;
    timeline.say(
        &offline_till.name,
        format!(
            "{}: pending → {}",
            provisional.receipt.order_id,
            lifecycle_text(&status)
        ),
    );
    wait_for_price(&offline_till.client, repriced.sku, new_price).await?;
    timeline.say(
        &offline_till.name,
        format!(
            "caught up; price of {} is now {}",
            repriced.name,
            format_money(new_price)
        ),
    );

    // The compensation task, resolved as a refund.
    let task = offline_till
        .client
        .replica()
        .compensations()?
        .into_iter()
        .find(|task| {
            task.op == provisional.receipt.op
                && task.state == omnisync_core::retail::orders::CompensationState::Open
        });
    match task {
        None => day.problems.push(format!(
            "no compensation task for {} ({})",
            provisional.receipt.order_id,
            lifecycle_text(&status)
        )),
        Some(task) => {
            let short: Vec<String> = task
                .lines
                .iter()
                .map(|line| format!("{}× {}", line.quantity, name_of(line.sku.as_str())))
                .collect();
            timeline.say(
                &offline_till.name,
                format!(
                    "compensation task: order {}{} short {} ({})",
                    task.order_id,
                    task.order_no
                        .map(|no| format!(" #{no}"))
                        .unwrap_or_default(),
                    short.join(", "),
                    task.reason
                ),
            );
            offline_till
                .client
                .write(|db| db.resolve_compensation(&task.op, "refund", omnisync_core::now_ms()))?;
            day.resolved += 1;
            let status = offline_till.client.replica().op_status(&task.op)?;
            timeline.say(
                &offline_till.name,
                format!(
                    "cashier refunds the customer → {}",
                    status
                        .as_ref()
                        .map_or_else(|| "?".to_owned(), lifecycle_text)
                ),
            );
            if task.order_no.is_some() {
                let order = wait_for_order_status(
                    &back_office,
                    task.order_id.as_str(),
                    "compensated-refund",
                )
                .await?;
                timeline.say(
                    "back-office",
                    format!(
                        "order {} is {} (version {})",
                        task.order_id, order.0, order.1
                    ),
                );
            }
        }
    }

    // 7. Everything settles; check it against the hub.
    for device in &all {
        device
            .client
            .wait_synced(SYNC_TIMEOUT)
            .await
            .with_context(|| format!("{} catching up", device.name))?;
    }
    let auditor = match &hub {
        HubRef::Embedded { .. } => None,
        HubRef::External { .. } => {
            // An external hub's ledger is read the way any device reads it:
            // a fresh device that follows the store.
            let auditor = open_device(
                &url,
                store,
                "auditor",
                None,
                std::slice::from_ref(&store_set),
            )?;
            auditor.client.wait_synced(SYNC_TIMEOUT).await?;
            Some(auditor)
        }
    };
    let summary = check(&hub, auditor.as_ref(), store, &tills, &all, &day).await?;
    for problem in &day.problems {
        eprintln!("problem: {problem}");
    }
    let ok = summary.ok() && day.problems.is_empty();
    timeline.say(
        "all",
        format!(
            "{} on hand of {}, {} of {} — nothing sold twice",
            summary.hub_on_hand(TEAPOT),
            CATALOG[TEAPOT].name,
            summary.hub_on_hand(GRINDER),
            CATALOG[GRINDER].name,
        ),
    );

    println!();
    println!("summary");
    println!(
        "  sales          {} confirmed, {} blocked offline, {} compensated ({} refunded)",
        summary.confirmed, day.blocked, summary.compensated, day.resolved
    );
    println!(
        "  ops            {} committed by {} devices, {} decided or stored at the hub, {} lost",
        summary.committed,
        all.len(),
        summary.at_hub,
        summary.lost
    );
    println!(
        "  stock          {} SKUs: {}; books {}",
        CATALOG.len(),
        if summary.stock_equal {
            "every device reads the hub's level"
        } else {
            "DEVICES DIFFER FROM THE HUB"
        },
        if summary.books_balance {
            "balance"
        } else {
            "DO NOT BALANCE"
        }
    );
    println!(
        "  allowances     {}",
        match summary.allowances_equal {
            Some(true) => "every till's allowance matches the hub's",
            Some(false) => "A TILL'S ALLOWANCE DIFFERS FROM THE HUB'S",
            None => "not compared (external hub)",
        }
    );
    println!(
        "  documents      {}, {}",
        summary.documents,
        if summary.docs_equal {
            "every replica equal to the hub's"
        } else {
            "REPLICAS DIFFER"
        }
    );
    println!("  converged      {}", if ok { "yes" } else { "NO" });
    println!("  elapsed        {:.2} s", timeline.elapsed().as_secs_f64());
    for device in all.iter().copied().chain(auditor.as_ref()) {
        device.client.stop().await;
    }
    hub.stop().await?;
    Ok(ok)
}

/// This till's unspent allowances of the everyday items: catalog index → units.
fn allowances(till: &Device, store: &StoreId) -> anyhow::Result<BTreeMap<usize, u64>> {
    let mut held = BTreeMap::new();
    for index in 0..EVERYDAY {
        if index == REPRICED {
            // Kept out of the offline sales: its price changes meanwhile.
            continue;
        }
        if let Some(view) = stock_of(till, store, index)?
            && view.allowance_left > 0
        {
            held.insert(index, view.allowance_left);
        }
    }
    Ok(held)
}

async fn wait_for_price(client: &Client, sku: &str, price: i64) -> anyhow::Result<Instant> {
    let sku = Sku::new(sku)?;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let seen = {
            let store = client.replica();
            let store_id = store.store_id().clone();
            store.price_in_force(&store_id, &sku, Channel::Pos, omnisync_core::now_ms())?
        };
        if seen.is_some_and(|seen| seen.money.amount_minor == price) {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "price change did not arrive within {SYNC_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `device` sees `order_id` with `status`: (status, version).
async fn wait_for_order_status(
    device: &Device,
    order_id: &str,
    status: &str,
) -> anyhow::Result<(String, u64)> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        if let Some(order) = device.client.replica().order(order_id)?
            && order.status.as_str() == status
        {
            return Ok((order.status.into(), order.version));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not see order {order_id} become {status} within {SYNC_TIMEOUT:?}",
            device.name
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A SKU's level as the hub publishes it (the fields every device shares).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Level {
    on_hand: u64,
    free: u64,
    held: u64,
    mode: StockMode,
    policy: StockPolicy,
}

impl From<&StockView> for Level {
    fn from(view: &StockView) -> Self {
        Self {
            on_hand: view.on_hand,
            free: view.free,
            held: view.held,
            mode: view.mode,
            policy: view.policy,
        }
    }
}

/// The newest record the hub stored for a record document.
fn hub_record(hub: &omnisync_hub::Hub, doc: &DocId) -> anyhow::Result<Option<Record>> {
    let changes = hub.reader().doc_changes(doc)?;
    Ok(changes
        .last()
        .map(|bytes| Record::decode(bytes))
        .transpose()?)
}

/// The hub's level of every catalog item: from its stored records when
/// embedded, else as a fresh device following the store reads it.
fn hub_levels(
    hub: &HubRef,
    auditor: Option<&Device>,
    store: &StoreId,
) -> anyhow::Result<Vec<Option<Level>>> {
    let mut levels = Vec::with_capacity(CATALOG.len());
    for item in CATALOG {
        let level = match (hub, auditor) {
            (HubRef::Embedded { hub, .. }, _) => {
                let sku = Sku::new(item.sku)?;
                let doc = stock_record_doc(store, &sku);
                match hub_record(hub, &doc)? {
                    Some(Record::Stock(record)) => Some(Level {
                        on_hand: record.on_hand,
                        free: record.free,
                        held: record.held,
                        mode: record.mode,
                        policy: record.policy,
                    }),
                    Some(other) => bail!("{doc} holds {other:?}"),
                    None => None,
                }
            }
            (HubRef::External { .. }, Some(auditor)) => auditor
                .client
                .replica()
                .stock(store, &Sku::new(item.sku)?)?
                .as_ref()
                .map(Level::from),
            (HubRef::External { .. }, None) => bail!("an external hub needs an auditor device"),
        };
        levels.push(level);
    }
    Ok(levels)
}

/// The hub's record of a till's allowance: units it may still sell.
fn hub_allowance(
    hub: &omnisync_hub::Hub,
    store: &StoreId,
    device: &str,
    sku: &str,
) -> anyhow::Result<u64> {
    let doc = Record::Allowance(AllowanceRecord {
        device: DeviceId::new(device)?,
        sku: Sku::new(sku)?,
        granted: 0,
        spent: 0,
        released: 0,
        recall: false,
        version: 0,
    })
    .doc(store)
    .context("an allowance record's document id")?;
    Ok(match hub_record(hub, &doc)? {
        Some(Record::Allowance(record)) => record
            .granted
            .saturating_sub(record.spent + record.released),
        Some(other) => bail!("{doc} holds {other:?}"),
        None => 0,
    })
}

struct Summary {
    committed: u64,
    at_hub: u64,
    lost: u64,
    confirmed: u64,
    compensated: u64,
    documents: usize,
    docs_equal: bool,
    stock_equal: bool,
    allowances_equal: Option<bool>,
    books_balance: bool,
    hub_levels: Vec<Option<Level>>,
}

impl Summary {
    fn ok(&self) -> bool {
        self.lost == 0
            && self.docs_equal
            && self.stock_equal
            && self.allowances_equal != Some(false)
            && self.books_balance
    }

    fn hub_on_hand(&self, item: usize) -> String {
        self.hub_levels[item]
            .as_ref()
            .map_or_else(|| "?".to_owned(), |level| level.on_hand.to_string())
    }
}

/// Units each catalog item sold, as the back office's orders (the hub's
/// order records) say.
fn sold_per_item(back_office: &Device) -> anyhow::Result<Vec<u64>> {
    let mut sold = vec![0u64; CATALOG.len()];
    let store = back_office.client.replica();
    for status in ["confirmed", "compensated-refund"] {
        let status = omnisync_core::vocab::keys::OrderStatus::parse(status)?;
        for order in store.orders_by_status(&status, 10_000)? {
            for line in order.lines {
                if let Some(index) = CATALOG
                    .iter()
                    .position(|item| item.sku == line.sku.as_str())
                {
                    sold[index] += line.quantity;
                }
            }
        }
    }
    Ok(sold)
}

/// Compares every device's stock, allowances and documents with the hub,
/// checks the books (received − sold = on hand) and that every op is
/// decided or stored at the hub. Records still in flight get
/// [`SETTLE_TIMEOUT`] to arrive.
async fn check(
    hub: &HubRef,
    auditor: Option<&Device>,
    store: &StoreId,
    tills: &[Device],
    devices: &[&Device],
    day: &Day,
) -> anyhow::Result<Summary> {
    let back_office = devices
        .iter()
        .find(|device| device.name == "back-office")
        .context("no back office")?;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (levels, mut stock_problems) = loop {
        let levels = hub_levels(hub, auditor, store)?;
        let mut problems = Vec::new();
        for device in devices {
            for (index, item) in CATALOG.iter().enumerate() {
                let seen = stock_of(device, store, index)?;
                let seen = seen.as_ref().map(Level::from);
                if seen != levels[index] {
                    problems.push(format!(
                        "{} reads {} as {seen:?}, the hub as {:?}",
                        device.name, item.sku, levels[index]
                    ));
                }
            }
        }
        if let HubRef::Embedded { hub, .. } = hub {
            for till in tills {
                for (index, item) in CATALOG.iter().enumerate() {
                    let here = stock_of(till, store, index)?.map_or(0, |view| view.allowance_left);
                    let there = hub_allowance(hub, store, &till.name, item.sku)?;
                    if here != there {
                        problems.push(format!(
                            "allowance: {} holds {here} of {}, the hub says {there}",
                            till.name, item.sku
                        ));
                    }
                }
            }
        }
        let sold = sold_per_item(back_office)?;
        for (index, item) in CATALOG.iter().enumerate() {
            let on_hand = levels[index].as_ref().map_or(0, |level| level.on_hand);
            if item.received.checked_sub(sold[index]) != Some(on_hand) {
                problems.push(format!(
                    "books: {} received {}, sold {}, but {on_hand} on hand",
                    item.sku, item.received, sold[index]
                ));
            }
        }
        if problems.is_empty() || Instant::now() >= deadline {
            break (levels, problems);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stock_equal = !stock_problems
        .iter()
        .any(|problem| !problem.starts_with("allowance:") && !problem.starts_with("books:"));
    let allowances_equal = match hub {
        HubRef::Embedded { .. } => Some(
            !stock_problems
                .iter()
                .any(|problem| problem.starts_with("allowance:")),
        ),
        HubRef::External { .. } => None,
    };
    let books_balance = !stock_problems
        .iter()
        .any(|problem| problem.starts_with("books:"));
    for problem in stock_problems.drain(..) {
        eprintln!("{problem}");
    }

    let mut summary = Summary {
        committed: 0,
        at_hub: 0,
        lost: 0,
        confirmed: 0,
        compensated: 0,
        documents: 0,
        docs_equal: true,
        stock_equal,
        allowances_equal,
        books_balance,
        hub_levels: levels,
    };
    for (till, op) in &day.checkouts {
        match tills[*till].client.replica().op_status(op)? {
            Some(OpStatus::Confirmed { .. }) => summary.confirmed += 1,
            Some(OpStatus::Compensated { .. }) => summary.compensated += 1,
            _ => {}
        }
    }
    for device in devices {
        let ops = device.client.replica().op_ids()?;
        summary.committed += ops.len() as u64;
        for op in ops {
            let stored = match hub {
                HubRef::Embedded { hub, .. } => matches!(
                    hub.reader().outcome(&op)?,
                    Some(AckOutcome::Applied { .. } | AckOutcome::Decided(_))
                ),
                HubRef::External { .. } => {
                    // The admin endpoint answers `applied` for changes; an
                    // intent's decision is what the hub acked to the device.
                    hub.has_applied(op).await?
                        || device
                            .client
                            .replica()
                            .op_status(&op)?
                            .is_some_and(|status| {
                                !matches!(status, OpStatus::Pending | OpStatus::Rejected { .. })
                            })
                }
            };
            if stored {
                summary.at_hub += 1;
            } else {
                summary.lost += 1;
                eprintln!("{}: op {op} is not stored at the hub", device.name);
            }
        }
    }
    let mut docs: Vec<DocId> = Vec::new();
    for device in devices {
        docs.extend(device.client.replica().doc_ids()?);
    }
    docs.retain(|doc| !is_record_doc(doc));
    docs.sort();
    docs.dedup();
    summary.documents = docs.len();
    for doc in &docs {
        let hub_heads = hub.doc_heads(doc).await?;
        for device in devices {
            let follows = device
                .client
                .replica()
                .subscriptions()?
                .iter()
                .any(|(set, _)| *set == doc.set());
            if !follows {
                continue;
            }
            let heads = device.client.replica().doc_heads(doc)?;
            if heads != hub_heads {
                summary.docs_equal = false;
                eprintln!("{}: {doc} differs from the hub", device.name);
            }
        }
    }
    Ok(summary)
}
