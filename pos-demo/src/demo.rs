//! `pos-demo demo`: a short store day on an embedded hub, narrated.
//!
//! Three tills and a shopper's phone each keep their own SQLite store and
//! sync over real WebSockets to a hub started in this process on
//! `127.0.0.1:0`. The back office seeds the catalog, the tills sell, one till
//! loses its uplink and keeps selling, the back office changes a price, the
//! till comes back, and everything converges. The program exits non-zero if
//! any replica disagrees or any committed op is missing at the hub.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use omnisync_core::domain::catalog::{ProductField, ProductUpdate};
use omnisync_core::domain::orders::OrderLine;
use omnisync_core::domain::{Channel, Currency, DomainError, Money, Sku};
use omnisync_core::net::{Client, SyncConfig};
use omnisync_core::protocol::message::Credentials;
use omnisync_core::{CustomerId, DeviceId, DocId, DocSetId, Store, StoreId};
use rand::{Rng, SeedableRng};

use crate::hubref::HubRef;
use crate::report::Timeline;

/// How long the demo waits for sync before declaring failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Products in the demo catalog.
const PRODUCTS: &[(&str, &str, i64)] = &[
    ("sku-001", "Espresso beans 1kg", 1899),
    ("sku-002", "Oat milk 1l", 249),
    ("sku-003", "Croissant", 189),
    ("sku-004", "Ceramic mug", 1200),
    ("sku-005", "Filter papers x100", 399),
    ("sku-006", "Dark chocolate 100g", 299),
    ("sku-007", "Green tea 50 bags", 649),
    ("sku-008", "Honey 500g", 899),
];
const INITIAL_STOCK: i64 = 200;

/// Options of `pos-demo demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Sales per till in each selling phase.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=10_000))]
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
    let store = Store::open(
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

fn format_money(minor: i64) -> String {
    format!("€{}.{:02}", minor / 100, minor % 100)
}

/// Records one sale as an order at the prices in force on the till; returns
/// the line to print and the quantities sold per SKU.
fn sell(
    till: &Device,
    rng: &mut impl Rng,
    number: u32,
) -> anyhow::Result<(String, Vec<(usize, i64)>)> {
    let line_count = rng.random_range(1..=3);
    let order_id = format!("{}-{number:04}", till.name);
    let picks = rand::seq::index::sample(rng, PRODUCTS.len(), line_count);
    let mut lines = Vec::new();
    let mut sold = Vec::new();
    let mut described = Vec::new();
    let mut total = 0;
    for pick in picks {
        let (sku, name, _) = PRODUCTS[pick];
        let sku = Sku::new(sku)?;
        let quantity = rng.random_range(1..=2);
        let price = {
            let store = till.client.store();
            let store_id = store.store_id().clone();
            store.price_in_force(&store_id, &sku, Channel::Pos, omnisync_core::now_ms())?
        };
        let unit_price_minor = price.map_or(0, |price| price.money.amount_minor);
        total += unit_price_minor * quantity;
        described.push(format!("{quantity}× {name}"));
        lines.push(OrderLine {
            sku,
            quantity,
            unit_price_minor,
        });
        sold.push((pick, quantity));
    }
    till.client
        .write(|store| store.create_order(&order_id, &lines, eur(), omnisync_core::now_ms()))?;
    Ok((
        format!(
            "sale {order_id}: {} = {}",
            described.join(", "),
            format_money(total)
        ),
        sold,
    ))
}

/// One sale on every till, counted into `sold` and narrated.
fn sell_round(
    tills: &[Device],
    rng: &mut impl Rng,
    sale_number: &mut u32,
    sold: &mut [i64; PRODUCTS.len()],
    timeline: &Timeline,
) -> anyhow::Result<()> {
    for till in tills {
        *sale_number += 1;
        let (line, quantities) = sell(till, rng, *sale_number)?;
        for (pick, quantity) in quantities {
            sold[pick] += quantity;
        }
        timeline.say(&till.name, line);
    }
    Ok(())
}

fn eur() -> Currency {
    Currency::new("EUR").expect("EUR is a currency code")
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
    let customer_set = DocSetId::customer(&customer);
    let back_office = open_device(
        &url,
        store,
        "back-office",
        None,
        std::slice::from_ref(&store_set),
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
        &[store_set.clone(), customer_set.clone()],
    )?;

    // The back office publishes catalog, prices and stock levels. Against a
    // long-lived hub the store may exist already: start from its state.
    back_office
        .client
        .wait_synced(SYNC_TIMEOUT)
        .await
        .context("back office syncing")?;
    let now = omnisync_core::now_ms();
    let updates: Vec<ProductUpdate> = PRODUCTS
        .iter()
        .map(|(sku, name, _)| {
            Ok(ProductUpdate {
                sku: Sku::new(*sku)?,
                fields: vec![(ProductField::Name, (*name).to_owned())],
            })
        })
        .collect::<anyhow::Result<_>>()?;
    back_office
        .client
        .write(|db| match db.upsert_products(store, &updates, now) {
            Ok(_) | Err(DomainError::Store(omnisync_core::StoreError::Unchanged)) => Ok(()),
            Err(error) => Err(error),
        })?;
    for (sku, _, price) in PRODUCTS {
        let sku = Sku::new(*sku)?;
        let money = Money {
            amount_minor: *price,
            currency: eur(),
        };
        back_office
            .client
            .write(|db| db.set_price(store, &sku, Channel::Pos, 0, &money, now))?;
        back_office
            .client
            .write(|db| db.set_price(store, &sku, Channel::App, 0, &money, now))?;
        back_office
            .client
            .write(|db| db.publish_stock_level(store, &sku, INITIAL_STOCK, now))?;
    }
    timeline.say(
        "back-office",
        format!(
            "published {} products with prices and stock {INITIAL_STOCK} each",
            PRODUCTS.len()
        ),
    );
    for device in tills.iter().chain([&phone, &back_office]) {
        device
            .client
            .wait_synced(SYNC_TIMEOUT)
            .await
            .with_context(|| format!("{} syncing the catalog", device.name))?;
    }
    timeline.say("all", "every till and the phone have the catalog locally");

    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut sale_number = 0;
    let mut sold = [0i64; PRODUCTS.len()];
    for _ in 0..args.sales {
        sell_round(&tills, &mut rng, &mut sale_number, &mut sold, &timeline)?;
    }

    // The phone fills the shopper's cart: every add is a line with a unique id.
    for (sku, name, _) in PRODUCTS.iter().take(2) {
        let sku = Sku::new(*sku)?;
        phone
            .client
            .write(|db| db.add_to_cart(&customer, &sku, 1, omnisync_core::now_ms()))?;
        timeline.say(&phone.name, format!("added {name} to the cart"));
    }
    let cart =
        phone
            .client
            .store()
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

    tills[2].client.set_online(false);
    timeline.say(&tills[2].name, "uplink lost — keeps selling offline");
    for _ in 0..args.sales {
        sell_round(&tills, &mut rng, &mut sale_number, &mut sold, &timeline)?;
    }
    let offline = tills[2].client.status();
    timeline.say(
        &tills[2].name,
        format!(
            "offline with {} sales pending, all durable on the till",
            offline.pending
        ),
    );

    // A price change from the back office, timed to each online device.
    let (sku, name, old_price) = PRODUCTS[0];
    let new_price = old_price - 200;
    let changed_at = Instant::now();
    let price_sku = Sku::new(sku)?;
    let money = Money {
        amount_minor: new_price,
        currency: eur(),
    };
    back_office.client.write(|db| {
        db.set_price(
            store,
            &price_sku,
            Channel::Pos,
            0,
            &money,
            omnisync_core::now_ms(),
        )
    })?;
    timeline.say(
        "back-office",
        format!(
            "price of {name}: {} → {}",
            format_money(old_price),
            format_money(new_price)
        ),
    );
    for device in [&tills[0], &tills[1], &phone] {
        let seen = wait_for_price(&device.client, sku, new_price).await?;
        timeline.say(
            &device.name,
            format!(
                "sees the new price after {:.1} ms",
                seen.duration_since(changed_at).as_secs_f64() * 1e3
            ),
        );
    }

    tills[2].client.set_online(true);
    timeline.say(&tills[2].name, "uplink back — uploading");
    let all: Vec<&Device> = tills.iter().chain([&phone, &back_office]).collect();
    for device in &all {
        device
            .client
            .wait_synced(SYNC_TIMEOUT)
            .await
            .with_context(|| format!("{} catching up", device.name))?;
    }
    timeline.say(
        &tills[2].name,
        format!(
            "caught up; price of {name} is now {}",
            format_money(new_price)
        ),
    );

    // The back office, which now sees every order, publishes the stock left.
    let mut published = Vec::new();
    for (index, (sku, _, _)) in PRODUCTS.iter().enumerate() {
        let sku = Sku::new(*sku)?;
        let on_hand = INITIAL_STOCK - sold[index];
        back_office.client.write(|db| {
            match db.publish_stock_level(store, &sku, on_hand, omnisync_core::now_ms()) {
                Ok(_) | Err(DomainError::Store(omnisync_core::StoreError::Unchanged)) => Ok(()),
                Err(error) => Err(error),
            }
        })?;
        published.push(format!("{sku} {on_hand}"));
    }
    timeline.say(
        "back-office",
        format!("stock after the day: {}", published.join(", ")),
    );
    for device in &all {
        device
            .client
            .wait_synced(SYNC_TIMEOUT)
            .await
            .with_context(|| format!("{} syncing stock", device.name))?;
    }
    let orders_seen = back_office
        .client
        .store()
        .orders_by_status(store, "completed", 10_000)?
        .len();
    timeline.say(
        "back-office",
        format!("{orders_seen} completed orders from all tills"),
    );

    let summary = check(&hub, &all).await?;
    println!();
    println!("summary");
    println!("  devices        {}", all.len());
    println!("  ops committed  {}", summary.committed);
    println!("  acknowledged   {}", summary.acknowledged);
    println!("  lost           {}", summary.lost);
    println!("  documents      {}", summary.documents);
    println!(
        "  converged      {}",
        if summary.converged { "yes" } else { "NO" }
    );
    println!("  elapsed        {:.2} s", timeline.elapsed().as_secs_f64());
    for device in &all {
        device.client.stop().await;
    }
    hub.stop().await?;
    Ok(summary.converged && summary.lost == 0)
}

async fn wait_for_price(client: &Client, sku: &str, price: i64) -> anyhow::Result<Instant> {
    let sku = Sku::new(sku)?;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let seen = {
            let store = client.store();
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

struct Summary {
    committed: u64,
    acknowledged: u64,
    lost: u64,
    documents: usize,
    converged: bool,
}

/// Counts ops against the hub's own records and compares every replica of
/// every document with the hub's copy.
async fn check(hub: &HubRef, devices: &[&Device]) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        committed: 0,
        acknowledged: 0,
        lost: 0,
        documents: 0,
        converged: true,
    };
    for device in devices {
        let (ops, stats) = {
            let store = device.client.store();
            (store.op_ids()?, store.op_stats(omnisync_core::now_ms())?)
        };
        summary.committed += ops.len() as u64;
        summary.acknowledged += stats.acknowledged;
        for op in ops {
            if !hub.has_applied(op).await? {
                summary.lost += 1;
                eprintln!("{}: op {op} is not stored at the hub", device.name);
            }
        }
    }
    let mut docs: Vec<DocId> = Vec::new();
    for device in devices {
        docs.extend(device.client.store().doc_ids()?);
    }
    docs.sort();
    docs.dedup();
    summary.documents = docs.len();
    for doc in &docs {
        let hub_heads = hub.doc_heads(doc).await?;
        for device in devices {
            let follows = device
                .client
                .store()
                .subscriptions()?
                .iter()
                .any(|(set, _)| *set == doc.set());
            if !follows {
                continue;
            }
            let heads = device.client.store().doc_heads(doc)?;
            if heads != hub_heads {
                summary.converged = false;
                eprintln!("{}: {doc} differs from the hub", device.name);
            }
        }
    }
    Ok(summary)
}
