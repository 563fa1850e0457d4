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

use omnisync_core::domain::customer::LINE_QUANTITY_MAX;
use omnisync_core::domain::{Currency, Sku};
use omnisync_core::net::{Client, SyncConfig};
use omnisync_core::protocol::message::Credentials;
use omnisync_core::store::encryption::EncryptionKey;
use omnisync_core::{CustomerId, DeviceId, DocSetId, Store, StoreId, now_ms};

use crate::error::{OmnisyncError, Result};
use crate::events::{EventHub, EventListener, StoreEvent, start_dispatcher};
use crate::runtime;
use crate::types::{
    Cart, CartLineAdded, Channel, Money, OpState, OrderLineInput, OrderSummary, Price, Product,
    ProductInput, StoreConfig, SyncStatus, op_id_text, parse_op_id,
};

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
/// [`OmnisyncStore::start_sync`]. The device follows its store's data set.
#[uniffi::export]
pub async fn open_store(config: StoreConfig) -> Result<Arc<OmnisyncStore>> {
    runtime()?
        .spawn_blocking(move || OmnisyncStore::open_blocking(config).map(Arc::new))
        .await?
}

impl OmnisyncStore {
    fn open_blocking(config: StoreConfig) -> Result<Self> {
        let device = DeviceId::new(config.device_id)?;
        let store_id = StoreId::new(config.store_id)?;
        let store = match &config.encryption_key {
            Some(key) => Store::open_encrypted(
                Path::new(&config.path),
                device,
                store_id.clone(),
                &EncryptionKey::from_bytes(key)?,
            )?,
            None => Store::open(Path::new(&config.path), device, store_id.clone())?,
        };
        let mut sync_config = SyncConfig::new(config.hub_url);
        sync_config.credentials = Credentials {
            token: config.credentials_token,
        };
        sync_config.hub_ca_pem = config.hub_ca_pem.map(String::into_bytes);
        sync_config.agent = format!("omnisync-ffi/{}", env!("CARGO_PKG_VERSION"));
        let client = Client::new(store, sync_config);
        client.subscribe(&DocSetId::store(&store_id))?;
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
    pub async fn upsert_products(&self, products: Vec<ProductInput>) -> Result<Vec<String>> {
        let updates = products
            .iter()
            .map(ProductInput::to_core)
            .collect::<Result<Vec<_>>>()?;
        self.on_db(move |client, store_id| {
            let ops = client.write(|db| db.upsert_products(store_id, &updates, now_ms()))?;
            Ok(ops.iter().map(op_id_text).collect())
        })
        .await
    }

    /// One product, if the store has it.
    pub async fn product(&self, sku: String) -> Result<Option<Product>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| {
            Ok(client.store().product(store_id, &sku)?.map(Product::from))
        })
        .await
    }

    /// Full-text search over name, brand and category (the last word is a prefix).
    pub async fn search_products(&self, text: String, limit: u32) -> Result<Vec<Product>> {
        self.on_db(move |client, store_id| {
            let found = client
                .store()
                .search_products(store_id, &text, limit as usize)?;
            Ok(found.into_iter().map(Product::from).collect())
        })
        .await
    }

    /// Products with this barcode.
    pub async fn products_by_barcode(&self, barcode: String) -> Result<Vec<Product>> {
        self.on_db(move |client, store_id| {
            let found = client.store().products_by_barcode(store_id, &barcode)?;
            Ok(found.into_iter().map(Product::from).collect())
        })
        .await
    }

    /// Sets a price on a channel from `effective_from_ms` on (0: always).
    pub async fn set_price(
        &self,
        sku: String,
        channel: Channel,
        money: Money,
        effective_from_ms: u64,
    ) -> Result<String> {
        let sku = Sku::new(sku)?;
        let money = money.to_core()?;
        self.on_db(move |client, store_id| {
            let op = client.write(|db| {
                db.set_price(
                    store_id,
                    &sku,
                    channel.to_core(),
                    effective_from_ms,
                    &money,
                    now_ms(),
                )
            })?;
            Ok(op_id_text(&op))
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
            let price = client
                .store()
                .price_in_force(store_id, &sku, channel.to_core(), at_ms)?;
            Ok(price.map(Price::from))
        })
        .await
    }

    /// Publishes the on-hand count of a SKU (the store's stock authority only).
    pub async fn publish_stock_level(&self, sku: String, on_hand: i64) -> Result<String> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| {
            let op =
                client.write(|db| db.publish_stock_level(store_id, &sku, on_hand, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// The last published on-hand count of a SKU.
    pub async fn stock_level(&self, sku: String) -> Result<Option<i64>> {
        let sku = Sku::new(sku)?;
        self.on_db(move |client, store_id| Ok(client.store().stock_level(store_id, &sku)?))
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
            Ok(CartLineAdded {
                op_id: op_id_text(&op),
                line_id,
            })
        })
        .await
    }

    /// Changes a cart line's quantity by `delta`.
    pub async fn change_cart_quantity(
        &self,
        customer_id: String,
        line_id: String,
        delta: i64,
    ) -> Result<String> {
        let customer = CustomerId::new(customer_id)?;
        // The core does not bound `delta` yet, and automerge's counter panics
        // on overflow; no two valid line quantities are further apart than this.
        if delta.unsigned_abs() > LINE_QUANTITY_MAX.unsigned_abs() {
            return Err(OmnisyncError::InvalidInput {
                detail: format!("quantity change {delta} exceeds {LINE_QUANTITY_MAX}"),
            });
        }
        self.on_db(move |client, _| {
            let op =
                client.write(|db| db.change_cart_quantity(&customer, &line_id, delta, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// Removes a cart line.
    pub async fn remove_cart_line(&self, customer_id: String, line_id: String) -> Result<String> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, _| {
            let op = client.write(|db| db.remove_cart_line(&customer, &line_id, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// A cart with names and totals at the prices in force now on `channel`.
    pub async fn cart(&self, customer_id: String, channel: Channel) -> Result<Cart> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, store_id| {
            let cart = client
                .store()
                .cart(&customer, store_id, channel.to_core(), now_ms())?;
            Ok(Cart::from(cart))
        })
        .await
    }

    /// Adds a product to a wishlist.
    pub async fn wishlist_add(&self, customer_id: String, sku: String) -> Result<String> {
        let customer = CustomerId::new(customer_id)?;
        let sku = Sku::new(sku)?;
        self.on_db(move |client, _| {
            let op = client.write(|db| db.wishlist_add(&customer, &sku, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// Removes a product from a wishlist (a concurrent add elsewhere survives).
    pub async fn wishlist_remove(&self, customer_id: String, sku: String) -> Result<String> {
        let customer = CustomerId::new(customer_id)?;
        let sku = Sku::new(sku)?;
        self.on_db(move |client, _| {
            let op = client.write(|db| db.wishlist_remove(&customer, &sku, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// The SKUs on a wishlist, sorted.
    pub async fn wishlist(&self, customer_id: String) -> Result<Vec<String>> {
        let customer = CustomerId::new(customer_id)?;
        self.on_db(move |client, _| Ok(client.store().wishlist(&customer)?))
            .await
    }
}

/// Orders and the hub's verdicts on local ops.
#[uniffi::export]
impl OmnisyncStore {
    /// Records a completed sale (works offline); returns the op id, whose
    /// verdict arrives as an [`StoreEvent::OpVerdicts`] event and in
    /// [`OmnisyncStore::op_state`].
    pub async fn create_order(
        &self,
        order_id: String,
        lines: Vec<OrderLineInput>,
        currency: String,
    ) -> Result<String> {
        let lines = lines
            .iter()
            .map(OrderLineInput::to_core)
            .collect::<Result<Vec<_>>>()?;
        let currency = Currency::new(&currency)?;
        self.on_db(move |client, _| {
            let op = client.write(|db| db.create_order(&order_id, &lines, currency, now_ms()))?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// One order of the store (made on any of its devices), once synced here.
    pub async fn order(&self, order_id: String) -> Result<Option<OrderSummary>> {
        self.on_db(move |client, store_id| {
            Ok(client
                .store()
                .order(store_id, &order_id)?
                .map(OrderSummary::from))
        })
        .await
    }

    /// Orders with a status, newest first.
    pub async fn orders_by_status(&self, status: String, limit: u32) -> Result<Vec<OrderSummary>> {
        self.on_db(move |client, store_id| {
            let found = client
                .store()
                .orders_by_status(store_id, &status, limit as usize)?;
            Ok(found.into_iter().map(OrderSummary::from).collect())
        })
        .await
    }

    /// Moves an order to `status` if it is still at `expected_version`.
    pub async fn update_order_status(
        &self,
        order_id: String,
        expected_version: u64,
        status: String,
    ) -> Result<String> {
        self.on_db(move |client, store_id| {
            let op = client.write(|db| {
                db.update_order_status(store_id, &order_id, expected_version, &status, now_ms())
            })?;
            Ok(op_id_text(&op))
        })
        .await
    }

    /// Where a local op is: pending, acknowledged or rejected by the hub.
    pub async fn op_state(&self, op_id: String) -> Result<OpState> {
        let op = parse_op_id(&op_id)?;
        self.on_db(move |client, _| Ok(OpState::from(client.store().op_status(&op)?)))
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
        };
        runtime().unwrap().block_on(open_store(config)).unwrap()
    }

    fn euro(amount_minor: i64) -> Money {
        Money {
            amount_minor,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn bad_input_is_a_typed_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "till-1");
        let rt = runtime().unwrap();
        let bad_sku = rt.block_on(store.set_price("bad sku".into(), Channel::Pos, euro(100), 0));
        assert!(matches!(bad_sku, Err(OmnisyncError::InvalidInput { .. })));
        let negative = rt.block_on(store.set_price("sku-1".into(), Channel::Pos, euro(-1), 0));
        assert!(matches!(negative, Err(OmnisyncError::InvalidInput { .. })));
        let quantity = rt.block_on(store.add_to_cart("c-1".into(), "sku-1".into(), 0));
        assert!(matches!(quantity, Err(OmnisyncError::InvalidInput { .. })));
        let stock = rt.block_on(store.publish_stock_level("sku-1".into(), -3));
        assert!(matches!(stock, Err(OmnisyncError::InvalidInput { .. })));
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
            .block_on(store.set_price("sku-1".into(), Channel::Pos, euro(250), 0))
            .unwrap();
        assert_eq!(rt.block_on(store.op_state(op)).unwrap(), OpState::Pending);
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
        };
        assert!(matches!(
            rt.block_on(open_store(config)),
            Err(OmnisyncError::WrongDatabase { .. })
        ));
    }
}
