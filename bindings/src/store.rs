//! [`OmnisyncStore`]: one device's store and its link to the hub, as the
//! object Kotlin, Swift and Python hold.
//!
//! Threading: every method that reads or writes the database is `async` and
//! runs its work on the bindings' runtime (the blocking pool), never on the
//! caller's thread; the methods that are not `async` only flip flags or read
//! in-memory state. Lifetime: [`OmnisyncStore::shutdown`] stops sync, drops
//! every listener and makes later calls fail with [`OmnisyncError::Closed`];
//! dropping the last reference does the same without waiting.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omnisync_core::client::{Client, SyncConfig};
use omnisync_core::db::encryption::EncryptionKey;
use omnisync_core::ffi::parse_op_id;
use omnisync_core::protocol::message::Credentials;
use omnisync_core::retail::catalog::Product;
use omnisync_core::retail::customer::LINE_QUANTITY_MAX;
use omnisync_core::retail::orders::{Compensation, OrderSummary};
use omnisync_core::retail::prices::Price;
use omnisync_core::retail::stock::StockView;
use omnisync_core::vocab::goods::{Channel, Currency, Money, Sku};
use omnisync_core::vocab::intent::StockCommand;
use omnisync_core::{CustomerId, DeviceId, DocSetId, OpId, Replica, StoreId, now_ms};

use crate::error::{OmnisyncError, Result};
use crate::events::{EventHub, EventListener, StoreEvent, start_dispatcher};
use crate::ledger::{self, CheckoutInput, CheckoutReceipt, OpState};
use crate::runtime;
use crate::types::{Cart, CartLineAdded, ProductInput, StoreConfig, SyncStatus};

/// Longest wait a caller may ask for (`next_event`, `wait_for_sync`): one hour.
pub const WAIT_MS_MAX: u64 = 3_600_000;

/// A device's store: the local database, the retail API over it, and the
/// background sync with the hub. Open it with [`open_store`].
#[derive(uniffi::Object)]
pub struct OmnisyncStore {
    store_id: StoreId,
    events: Arc<EventHub>,
    live: Mutex<Option<Live>>,
}

/// What a store holds until it is shut down.
struct Live {
    client: Client,
    dispatcher: tokio::task::JoinHandle<()>,
}

/// Opens (or creates) a device's store. Sync does not start until
/// [`OmnisyncStore::start_sync`]. The device follows its store's data set
/// and its store's orders.
#[uniffi::export]
pub async fn open_store(config: StoreConfig) -> Result<Arc<OmnisyncStore>> {
    runtime()?
        .spawn_blocking(move || OmnisyncStore::open_blocking(config).map(Arc::new))
        .await?
}

impl OmnisyncStore {
    fn open_blocking(config: StoreConfig) -> Result<Self> {
        // Every input is checked before the database file is created.
        let mut sync_config = SyncConfig::with_hubs(&config.hub_addresses())?;
        let device = DeviceId::new(config.device_id)?;
        let store_id = StoreId::new(config.store_id)?;
        let store = match &config.encryption_key {
            Some(key) => Replica::open_encrypted(
                Path::new(&config.path),
                device,
                store_id.clone(),
                &EncryptionKey::from_bytes(key)?,
            )?,
            None => Replica::open(Path::new(&config.path), device, store_id.clone())?,
        };
        sync_config.credentials = Credentials {
            token: config.credentials_token,
        };
        sync_config.hub_ca_pem = config.hub_ca_pem.map(String::into_bytes);
        sync_config.agent = format!("omnisync-ffi/{}", env!("CARGO_PKG_VERSION"));
        let client = Client::new(store, sync_config);
        client.subscribe(&DocSetId::store(&store_id))?;
        // The store's decided orders (hub records). A hub that does not let
        // this device read them leaves the set out (`SyncStatus::refused_sets`).
        client.subscribe(&DocSetId::orders(&store_id))?;
        let events = EventHub::new();
        let dispatcher =
            start_dispatcher(runtime()?, &client, events.clone()).map_err(|error| {
                OmnisyncError::Internal {
                    detail: format!("could not start the event thread: {error}"),
                }
            })?;
        Ok(OmnisyncStore {
            store_id,
            events,
            live: Mutex::new(Some(Live { client, dispatcher })),
        })
    }

    fn client(&self) -> Result<Client> {
        self.lock_live()
            .as_ref()
            .map(|live| live.client.clone())
            .ok_or(OmnisyncError::Closed)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        // Only `Option::take` and clones happen under this lock.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs database work on the runtime's blocking pool and awaits it.
    async fn on_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Client, &StoreId) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = self.client()?;
        let store_id = self.store_id.clone();
        runtime()?
            .spawn_blocking(move || work(&client, &store_id))
            .await?
    }
}

/// Catalog, prices and stock.
#[uniffi::export]
impl OmnisyncStore {
    /// Creates or updates products; returns the ids of the recorded ops.
    pub async fn upsert_products(&self, products: Vec<ProductInput>) -> Result<Vec<OpId>> {
        let updates = products
            .iter()
            .map(ProductInput::to_core)
            .collect::<Result<Vec<_>>>()?;
        self.on_db(move |client, store_id| {
            Ok(client.write(|db| db.upsert_products(store_id, &updates, now_ms()))?)
        })
        .await
    }

    /// One product, if the store has it.
    pub async fn product(&self, sku: String) -> Result<Option<Product>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| Ok(client.replica().product(store_id, &sku)?))
            .await
    }

    /// Full-text search over name, brand and category (the last word is a prefix).
    pub async fn search_products(&self, text: String, limit: u32) -> Result<Vec<Product>> {
        self.on_db(move |client, store_id| {
            Ok(client
                .replica()
                .search_products(store_id, &text, limit as usize)?)
        })
        .await
    }

    /// Products with this barcode.
    pub async fn products_by_barcode(&self, barcode: String) -> Result<Vec<Product>> {
        self.on_db(move |client, store_id| {
            Ok(client.replica().products_by_barcode(store_id, &barcode)?)
        })
        .await
    }

    /// Sets a price of `amount_minor` minor units of `currency` (ISO 4217,
    /// e.g. `EUR`) on a channel from `effective_from_ms` on (0: always). The
    /// amount and currency arrive apart, not as a `Money`, so a malformed
    /// currency is an `InvalidInput` rather than a failed FFI lift.
    pub async fn set_price(
        &self,
        sku: String,
        channel: Channel,
        amount_minor: i64,
        currency: String,
        effective_from_ms: u64,
    ) -> Result<OpId> {
        let sku = Sku::new(sku)?;
        let money = Money {
            amount_minor,
            currency: Currency::new(&currency)?,
        };
        self.on_db(move |client, store_id| {
            Ok(client.write(|db| {
                db.set_price(store_id, &sku, channel, effective_from_ms, &money, now_ms())
            })?)
        })
        .await
    }

    /// The price in force on `channel` at `at_ms` (`None`: now).
    pub async fn price_in_force(
        &self,
        sku: String,
        channel: Channel,
        at_ms: Option<u64>,
    ) -> Result<Option<Price>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| {
            let at_ms = at_ms.unwrap_or_else(now_ms);
            Ok(client
                .replica()
                .price_in_force(store_id, &sku, channel, at_ms)?)
        })
        .await
    }

    /// The on-hand count of a SKU at the hub's last word (see [`OmnisyncStore::stock`]).
    pub async fn stock_level(&self, sku: String) -> Result<Option<i64>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| Ok(client.replica().stock_level(store_id, &sku)?))
            .await
    }

    /// A SKU's stock as this device last heard it from the hub: on hand,
    /// free, mode (escrow or strong), policy, and what this device may still
    /// sell on its own. `None` until the hub has published the SKU.
    pub async fn stock(&self, sku: String) -> Result<Option<StockView>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| Ok(client.replica().stock(store_id, &sku)?))
            .await
    }
}

/// Back-office stock commands. Stock is the hub's: each command is recorded
/// here (durably, offline too) and decided by the hub, which publishes the
/// new level to every device. Each returns its op id; `op_state` turns
/// `Confirmed` (with the stock entry's new version) or `Refused`.
#[uniffi::export]
impl OmnisyncStore {
    /// Goods received: adds `quantity` (1 to 1,000,000,000) units. `key`
    /// (e.g. the delivery note) makes it idempotent: a repeat changes nothing.
    pub async fn receive_stock(&self, sku: String, quantity: i64, key: String) -> Result<OpId> {
        let command = ledger::receive_command(&sku, quantity, &key)?;
        self.stock_command(command).await
    }

    /// A count of the shelf: `counted` units become the on-hand count.
    pub async fn stock_take(&self, sku: String, counted: i64, key: String) -> Result<OpId> {
        let command = ledger::stock_take_command(&sku, counted, &key)?;
        self.stock_command(command).await
    }

    /// A correction by `delta` units (negative: damaged, stolen), with the reason.
    pub async fn adjust_stock(
        &self,
        sku: String,
        delta: i64,
        reason: String,
        key: String,
    ) -> Result<OpId> {
        let command = ledger::adjust_command(&sku, delta, &reason, &key)?;
        self.stock_command(command).await
    }

    /// When sales of a SKU need the hub: at or below `strong_at_or_below`
    /// units on hand every sale is decided by the hub, and an offline till
    /// follows `offline_policy`: `block` (refuse the sale) or `provisional`
    /// (sell at risk; the hub may open a compensation).
    pub async fn set_stock_policy(
        &self,
        sku: String,
        strong_at_or_below: i64,
        offline_policy: String,
    ) -> Result<OpId> {
        let command = ledger::policy_command(&sku, strong_at_or_below, &offline_policy)?;
        self.stock_command(command).await
    }
}

impl OmnisyncStore {
    async fn stock_command(&self, command: StockCommand) -> Result<OpId> {
        self.on_db(move |client, _| Ok(client.write(|db| db.stock_command(command, now_ms()))?))
            .await
    }
}

/// Carts and wishlists of shoppers.
#[uniffi::export]
impl OmnisyncStore {
    /// Follows a customer's data set (cart, wishlist, ...), kept across
    /// restarts. The hub must grant it (token `customer:ID` on the dev hub).
    pub async fn follow_customer(&self, customer_id: String) -> Result<()> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, _| Ok(client.subscribe(&DocSetId::customer(&customer))?))
            .await
    }

    /// Adds a cart line.
    pub async fn add_to_cart(
        &self,
        customer_id: String,
        sku: String,
        quantity: i64,
    ) -> Result<CartLineAdded> {
        let customer = CustomerId::new(customer_id)?;
        let sku = Sku::new(sku)?;
        self.on_db(move |client, _| {
            let (op, line_id) =
                client.write(|db| db.add_to_cart(&customer, &sku, quantity, now_ms()))?;
            Ok(CartLineAdded { op_id: op, line_id })
        })
        .await
    }

    /// Changes a cart line's quantity by `delta`.
    pub async fn change_cart_quantity(
        &self,
        customer_id: String,
        line_id: String,
        delta: i64,
    ) -> Result<OpId> {
        let customer = CustomerId::new(customer_id)?;
        // The core does not bound `delta` yet, and automerge's counter panics
        // on overflow; no two valid line quantities are further apart than this.
        if delta.unsigned_abs() > LINE_QUANTITY_MAX.unsigned_abs() {
            return Err(OmnisyncError::InvalidInput {
                detail: format!("quantity change {delta} exceeds {LINE_QUANTITY_MAX}"),
            });
        }
        self.on_db(move |client, _| {
            Ok(client.write(|db| db.change_cart_quantity(&customer, &line_id, delta, now_ms()))?)
        })
        .await
    }

    /// Removes a cart line.
    pub async fn remove_cart_line(&self, customer_id: String, line_id: String) -> Result<OpId> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, _| {
            Ok(client.write(|db| db.remove_cart_line(&customer, &line_id, now_ms()))?)
        })
        .await
    }

    /// A cart with names and totals at the prices in force now on `channel`.
    pub async fn cart(&self, customer_id: String, channel: Channel) -> Result<Cart> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, store_id| {
            let cart = client
                .replica()
                .cart(&customer, store_id, channel, now_ms())?;
            Ok(Cart::from(cart))
        })
        .await
    }

    /// Adds a product to a wishlist.
    pub async fn wishlist_add(&self, customer_id: String, sku: String) -> Result<OpId> {
        let customer = CustomerId::new(customer_id)?;
        let sku = Sku::new(sku)?;
        self.on_db(move |client, _| {
            Ok(client.write(|db| db.wishlist_add(&customer, &sku, now_ms()))?)
        })
        .await
    }

    /// Removes a product from a wishlist (a concurrent add elsewhere survives).
    pub async fn wishlist_remove(&self, customer_id: String, sku: String) -> Result<OpId> {
        let customer = CustomerId::new(customer_id)?;
        let sku = Sku::new(sku)?;
        self.on_db(move |client, _| {
            Ok(client.write(|db| db.wishlist_remove(&customer, &sku, now_ms()))?)
        })
        .await
    }

    /// The SKUs on a wishlist, sorted.
    pub async fn wishlist(&self, customer_id: String) -> Result<Vec<String>> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, _| Ok(client.replica().wishlist(&customer)?))
            .await
    }
}

/// Checkout, orders, compensations and the hub's verdicts on local ops.
#[uniffi::export]
impl OmnisyncStore {
    /// Records a sale in one durable transaction, online or offline. Lines
    /// this till's allowance covers are decided at once; online, the rest
    /// goes to the hub; offline, the SKU's policy decides: `provisional`
    /// sells at risk, `block` throws [`OmnisyncError::Blocked`] (nothing is
    /// written). The sale's lifecycle is `op_state(receipt.op_id)`; the hub's
    /// decision (with the order number) also arrives as an
    /// [`StoreEvent::OpVerdicts`] event.
    pub async fn checkout(&self, input: CheckoutInput) -> Result<CheckoutReceipt> {
        let request = input.to_core()?;
        self.on_db(move |client, _| Ok(CheckoutReceipt::from(client.checkout(&request)?)))
            .await
    }

    /// One order: this device's own sales from the moment they are recorded,
    /// and the store's orders the hub has decided, once synced here.
    pub async fn order(&self, order_id: String) -> Result<Option<OrderSummary>> {
        self.on_db(move |client, _| Ok(client.replica().order(&order_id)?))
            .await
    }

    /// Orders with a status (`pending`, `confirmed`, `paid`, ...), newest first.
    pub async fn orders_by_status(&self, status: String, limit: u32) -> Result<Vec<OrderSummary>> {
        let status = omnisync_core::vocab::keys::OrderStatus::parse(&status)?;
        self.on_db(move |client, _| {
            Ok(client.replica().orders_by_status(&status, limit as usize)?)
        })
        .await
    }

    /// Asks the hub to move an order to `status` if it is still at
    /// `expected_version` (from [`OrderSummary::version`]). Throws
    /// `VersionConflict` if this device already knows a newer version; the
    /// hub's decision is the op's state (`Confirmed` with the new version,
    /// or `Refused` with `version-conflict`).
    pub async fn update_order_status(
        &self,
        order_id: String,
        expected_version: u64,
        status: String,
    ) -> Result<OpId> {
        let order_id: omnisync_core::vocab::keys::OrderId = order_id.parse()?;
        let status: omnisync_core::vocab::keys::OrderStatusName = status.parse()?;
        self.on_db(move |client, _| {
            Ok(client.write(|db| {
                db.update_order_status(&order_id, expected_version, &status, now_ms())
            })?)
        })
        .await
    }

    /// Compensation tasks — provisional sales the hub could not cover —
    /// open ones first.
    pub async fn compensations(&self) -> Result<Vec<Compensation>> {
        self.on_db(move |client, _| Ok(client.replica().compensations()?))
            .await
    }

    /// Resolves an open compensation task (`refund`, `substitute`,
    /// `backorder`, ...): its op becomes `Compensated` and an order that
    /// stands gets the status `compensated-<resolution>` at the hub.
    pub async fn resolve_compensation(&self, op_id: String, resolution: String) -> Result<()> {
        let op = parse_op_id(&op_id)?;
        // The resolution is checked once, by `Replica::resolve_compensation`.
        self.on_db(move |client, _| {
            Ok(client.write(|db| db.resolve_compensation(&op, &resolution, now_ms()))?)
        })
        .await
    }

    /// Where a local op is: pending, acknowledged, rejected, or — for
    /// checkouts and commands — confirmed, refused, compensation, compensated.
    pub async fn op_state(&self, op_id: String) -> Result<OpState> {
        let op = parse_op_id(&op_id)?;
        self.on_db(move |client, _| Ok(OpState::from(client.replica().op_status(&op)?)))
            .await
    }
}

/// Sync control, events and lifetime.
#[uniffi::export]
impl OmnisyncStore {
    /// Starts syncing in the background (later calls do nothing).
    pub fn start_sync(&self) -> Result<()> {
        let client = self.client()?;
        let _context = runtime()?.enter();
        client.start();
        Ok(())
    }

    /// Stops syncing and waits until the connection is closed. The store
    /// stays usable offline.
    pub async fn stop_sync(&self) -> Result<()> {
        let client = self.client()?;
        runtime()?.spawn(async move { client.stop().await }).await?;
        Ok(())
    }

    /// Switches the link on or off (airplane mode).
    pub fn set_online(&self, online: bool) -> Result<()> {
        self.client()?.set_online(online);
        Ok(())
    }

    /// The current sync status (in memory; never touches the database).
    pub fn sync_status(&self) -> Result<SyncStatus> {
        Ok(SyncStatus::from(&self.client()?.status()))
    }

    /// Waits until online, nothing is pending and every followed set caught
    /// up; fails with [`OmnisyncError::Timeout`] after `timeout_ms`.
    pub async fn wait_for_sync(&self, timeout_ms: u64) -> Result<SyncStatus> {
        let client = self.client()?;
        let timeout = Duration::from_millis(timeout_ms.min(WAIT_MS_MAX));
        let status = runtime()?
            .spawn(async move { client.wait_synced(timeout).await })
            .await??;
        Ok(SyncStatus::from(&status))
    }

    /// Registers a listener; returns the id to remove it with.
    pub fn add_listener(&self, listener: Arc<dyn EventListener>) -> Result<u64> {
        self.client()?;
        Ok(self.events.add_listener(listener))
    }

    /// Removes a listener; false if no listener has that id.
    pub fn remove_listener(&self, listener_id: u64) -> bool {
        self.events.remove_listener(listener_id)
    }

    /// Takes every queued event without waiting (the pull API).
    pub fn poll_events(&self) -> Vec<StoreEvent> {
        self.events.drain()
    }

    /// Waits up to `timeout_ms` for the next event (the pull API); `None`
    /// when none came in time.
    pub async fn next_event(&self, timeout_ms: u64) -> Result<Option<StoreEvent>> {
        self.client()?;
        let events = self.events.clone();
        let timeout = Duration::from_millis(timeout_ms.min(WAIT_MS_MAX));
        let waited = runtime()?.spawn(async move {
            tokio::time::timeout(timeout, async {
                loop {
                    let queued = events.queued().notified();
                    tokio::pin!(queued);
                    queued.as_mut().enable();
                    if let Some(event) = events.pop() {
                        return event;
                    }
                    queued.await;
                }
            })
            .await
            .ok()
        });
        Ok(waited.await?)
    }

    /// Stops sync, drops every listener and closes the store; later calls
    /// fail with [`OmnisyncError::Closed`]. Calling it again does nothing.
    pub async fn shutdown(&self) -> Result<()> {
        let live = self.lock_live().take();
        self.events.clear_listeners();
        if let Some(live) = live {
            live.dispatcher.abort();
            runtime()?
                .spawn(async move { live.client.stop().await })
                .await?;
        }
        Ok(())
    }

    /// True once [`OmnisyncStore::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock_live().is_none()
    }
}

impl Drop for OmnisyncStore {
    fn drop(&mut self) {
        self.events.clear_listeners();
        if let Some(live) = self.lock_live().take() {
            live.dispatcher.abort();
            // Signal only: the sync task closes its connection and ends on
            // its own, and the database closes with the last reference.
            live.client.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ChangeOrigin;
    use crate::types::Collection;
    use omnisync_core::ffi::op_id_text;

    fn open(dir: &tempfile::TempDir, device: &str) -> Arc<OmnisyncStore> {
        let config = StoreConfig {
            path: dir
                .path()
                .join(format!("{device}.db"))
                .display()
                .to_string(),
            device_id: device.into(),
            store_id: "berlin-01".into(),
            // Never started in these tests: no hub needed.
            hub_url: "ws://127.0.0.1:9/v1/sync".into(),
            credentials_token: None,
            encryption_key: None,
            hub_ca_pem: None,
            hub_urls: Vec::new(),
        };
        runtime().unwrap().block_on(open_store(config)).unwrap()
    }

    fn euro(amount_minor: i64) -> Money {
        Money {
            amount_minor,
            currency: Currency::new("EUR").unwrap(),
        }
    }

    #[test]
    fn bad_input_is_a_typed_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "till-1");
        let rt = runtime().unwrap();
        let bad_sku =
            rt.block_on(store.set_price("bad sku".into(), Channel::Pos, 100, "EUR".into(), 0));
        assert!(matches!(bad_sku, Err(OmnisyncError::InvalidInput { .. })));
        let negative =
            rt.block_on(store.set_price("sku-1".into(), Channel::Pos, -1, "EUR".into(), 0));
        assert!(matches!(negative, Err(OmnisyncError::InvalidInput { .. })));
        let currency =
            rt.block_on(store.set_price("sku-1".into(), Channel::Pos, 100, "euro".into(), 0));
        assert!(matches!(currency, Err(OmnisyncError::InvalidInput { .. })));
        let quantity = rt.block_on(store.add_to_cart("c-1".into(), "sku-1".into(), 0));
        assert!(matches!(quantity, Err(OmnisyncError::InvalidInput { .. })));
        let invalid =
            |result: Result<OpId>| matches!(result, Err(OmnisyncError::InvalidInput { .. }));
        assert!(invalid(rt.block_on(store.receive_stock(
            "sku-1".into(),
            0,
            "d-1".into()
        ))));
        assert!(invalid(rt.block_on(store.receive_stock(
            "sku-1".into(),
            -3,
            "d-1".into()
        ))));
        assert!(invalid(rt.block_on(store.receive_stock(
            "sku-1".into(),
            i64::MAX,
            "d-1".into()
        ))));
        assert!(invalid(rt.block_on(store.receive_stock(
            "bad sku".into(),
            3,
            "d-1".into()
        ))));
        assert!(invalid(rt.block_on(store.receive_stock(
            "sku-1".into(),
            3,
            String::new()
        ))));
        assert!(invalid(rt.block_on(store.stock_take(
            "sku-1".into(),
            -1,
            "c-1".into()
        ))));
        assert!(invalid(rt.block_on(store.adjust_stock(
            "sku-1".into(),
            0,
            "damaged".into(),
            "a-1".into()
        ))));
        assert!(invalid(rt.block_on(store.adjust_stock(
            "sku-1".into(),
            i64::MIN,
            "damaged".into(),
            "a-1".into()
        ))));
        assert!(invalid(rt.block_on(store.set_stock_policy(
            "sku-1".into(),
            5,
            "sometimes".into()
        ))));
        assert!(invalid(rt.block_on(store.set_stock_policy(
            "sku-1".into(),
            -5,
            "block".into()
        ))));
        let sale = |sku: &str, quantity: i64| CheckoutInput {
            order_id: "till-1-0001".into(),
            lines: vec![crate::ledger::OrderLineInput {
                sku: sku.into(),
                quantity,
                unit_price_minor: 250,
            }],
            currency: "EUR".into(),
            channel: Channel::Pos,
            payment_ref: String::new(),
            idempotency_key: None,
        };
        for bad in [
            sale("sku-1", 0),
            sale("sku-1", -1),
            sale("sku-1", 10_001),
            sale("bad sku", 1),
        ] {
            let refused = rt.block_on(store.checkout(bad));
            assert!(
                matches!(refused, Err(OmnisyncError::InvalidInput { .. })),
                "{refused:?}"
            );
        }
        // Offline (sync never started), with no allowance and no stock known:
        // the sale is blocked and nothing is written.
        let blocked = rt.block_on(store.checkout(sale("sku-1", 1)));
        assert!(
            matches!(blocked, Err(OmnisyncError::Blocked { .. })),
            "{blocked:?}"
        );
        assert_eq!(
            rt.block_on(store.order("till-1-0001".into())).unwrap(),
            None
        );
        let bad_op = rt.block_on(store.resolve_compensation("nope".into(), "refund".into()));
        assert!(matches!(bad_op, Err(OmnisyncError::InvalidInput { .. })));
        let op = "07070707070707070707070707070707:1".to_owned();
        let bad_resolution = rt.block_on(store.resolve_compensation(op.clone(), "a refund".into()));
        assert!(matches!(
            bad_resolution,
            Err(OmnisyncError::InvalidInput { .. })
        ));
        let no_task = rt.block_on(store.resolve_compensation(op, "refund".into()));
        assert!(matches!(no_task, Err(OmnisyncError::NotFound { .. })));
        let line = rt
            .block_on(store.add_to_cart("c-1".into(), "sku-1".into(), 5))
            .unwrap();
        for delta in [i64::MAX, i64::MIN, LINE_QUANTITY_MAX + 1] {
            let huge =
                rt.block_on(store.change_cart_quantity("c-1".into(), line.line_id.clone(), delta));
            assert!(
                matches!(huge, Err(OmnisyncError::InvalidInput { .. })),
                "{delta}: {huge:?}"
            );
        }
        let cart = rt.block_on(store.cart("c-1".into(), Channel::Pos)).unwrap();
        assert_eq!(cart.lines[0].quantity, 5);
        let missing = rt.block_on(store.update_order_status("nope".into(), 1, "paid".into()));
        assert!(matches!(missing, Err(OmnisyncError::NotFound { .. })));
        rt.block_on(store.shutdown()).unwrap();
    }

    #[test]
    fn writes_are_queryable_and_announced_on_the_pull_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "till-1");
        let rt = runtime().unwrap();
        let op = rt
            .block_on(store.set_price("sku-1".into(), Channel::Pos, 250, "EUR".into(), 0))
            .unwrap();
        assert_eq!(
            rt.block_on(store.op_state(op_id_text(&op))).unwrap(),
            OpState::Pending
        );
        let price = rt
            .block_on(store.price_in_force("sku-1".into(), Channel::Pos, None))
            .unwrap()
            .expect("the price is in force");
        assert_eq!(price.money, euro(250));
        // The write announces its documents and the new pending count, in
        // either order (two sources feed the queue).
        let mut events = Vec::new();
        while events.len() < 2 {
            let event = rt.block_on(store.next_event(5_000)).unwrap();
            events.push(event.expect("an event within 5 s"));
        }
        assert!(events.contains(&StoreEvent::DocumentsChanged {
            origin: ChangeOrigin::Local,
            collections: vec![Collection::Prices],
        }));
        assert!(events.iter().any(|event| matches!(
            event,
            StoreEvent::SyncStatusChanged { status } if status.pending == 1
        )));
        assert_eq!(rt.block_on(store.next_event(10)).unwrap(), None);
        // A stock command changes nothing here until the hub decides it:
        // only the pending count moves.
        let op = rt
            .block_on(store.receive_stock("sku-1".into(), 12, "delivery-1".into()))
            .unwrap();
        assert_eq!(
            rt.block_on(store.op_state(op_id_text(&op))).unwrap(),
            OpState::Pending
        );
        let event = rt.block_on(store.next_event(5_000)).unwrap();
        assert!(
            matches!(&event, Some(StoreEvent::SyncStatusChanged { status }) if status.pending == 2),
            "{event:?}"
        );
        assert_eq!(rt.block_on(store.next_event(10)).unwrap(), None);
        assert_eq!(rt.block_on(store.stock("sku-1".into())).unwrap(), None);
        assert!(rt.block_on(store.compensations()).unwrap().is_empty());
        rt.block_on(store.shutdown()).unwrap();
    }

    #[test]
    fn a_shut_down_store_refuses_calls_and_frees_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "till-1");
        let rt = runtime().unwrap();
        rt.block_on(store.shutdown()).unwrap();
        rt.block_on(store.shutdown()).unwrap();
        assert!(store.is_shut_down());
        assert!(matches!(
            rt.block_on(store.stock_level("sku-1".into())),
            Err(OmnisyncError::Closed)
        ));
        assert!(matches!(store.sync_status(), Err(OmnisyncError::Closed)));
        // The same device can open its file again; another device cannot.
        let again = open(&dir, "till-1");
        rt.block_on(again.shutdown()).unwrap();
        let config = StoreConfig {
            path: dir.path().join("till-1.db").display().to_string(),
            device_id: "till-2".into(),
            store_id: "berlin-01".into(),
            hub_url: "ws://127.0.0.1:9/v1/sync".into(),
            credentials_token: None,
            encryption_key: None,
            hub_ca_pem: None,
            hub_urls: Vec::new(),
        };
        assert!(matches!(
            rt.block_on(open_store(config)),
            Err(OmnisyncError::WrongDatabase { .. })
        ));
    }

    #[test]
    fn hub_addresses_are_checked_when_the_store_opens() {
        let rt = runtime().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = |hub_url: &str, hub_urls: &[&str]| StoreConfig {
            path: dir.path().join("till-1.db").display().to_string(),
            device_id: "till-1".into(),
            store_id: "berlin-01".into(),
            hub_url: hub_url.into(),
            credentials_token: None,
            encryption_key: None,
            hub_ca_pem: None,
            hub_urls: hub_urls.iter().map(|url| (*url).to_owned()).collect(),
        };
        for (hub_url, hub_urls) in [
            ("", &[][..]),
            ("http://127.0.0.1:9/v1/sync", &[][..]),
            ("ws://127.0.0.1:9/v1/sync", &["127.0.0.1:10"][..]),
            ("", &["ws://127.0.0.1:9/v1/sync", "ws://"][..]),
        ] {
            let opened = rt.block_on(open_store(config(hub_url, hub_urls)));
            assert!(
                matches!(opened, Err(OmnisyncError::InvalidInput { .. })),
                "{hub_url:?} {hub_urls:?}"
            );
        }
        assert!(
            !dir.path().join("till-1.db").exists(),
            "a refused configuration creates no database"
        );
        // The old form, the list alone, and both together.
        for (hub_url, hub_urls) in [
            ("ws://127.0.0.1:9/v1/sync", &[][..]),
            (
                "",
                &["ws://127.0.0.1:9/v1/sync", "ws://127.0.0.1:10/v1/sync"][..],
            ),
            (
                "ws://127.0.0.1:9/v1/sync",
                &["ws://127.0.0.1:10/v1/sync"][..],
            ),
        ] {
            let store = rt
                .block_on(open_store(config(hub_url, hub_urls)))
                .unwrap_or_else(|error| panic!("{hub_url:?} {hub_urls:?}: {error}"));
            rt.block_on(store.shutdown()).unwrap();
        }
    }
}
