"""The bindings' acceptance scenario from Python, against a real hub: a back
office publishes a product and its price, receives stock and marks a scarce
SKU `block`; a till sells online (the hub confirms and numbers the order,
heard through the till's listener), goes offline and sells from the
allowance the hub granted it, is refused the scarce SKU offline, reconnects,
and every device sees the orders and the stock; bad input raises the typed
error."""

import asyncio
import socket
import threading
import time

import pytest

# The store, its events and inputs; the core's value types (money, stock
# views, orders, ...) are a module of their own, defined once in the core.
from omnisync_core import (
    Channel,
    DecidedState,
    LineSource,
    Link,
    Money,
    OfflinePolicy,
    OrderLine,
    StockMode,
)
from omnisync_ffi import (
    ChangeOrigin,
    Collection,
    EventListener,
    OmnisyncError,
    CheckoutInput,
    OpState,
    OrderLineInput,
    ProductInput,
    StoreConfig,
    StoreEvent,
    open_store,
)

STORE = "berlin-01"
SKU = "espresso-beans"
# Few units, policy `block`: never sold offline.
SCARCE = "saffron-1g"
# Generous for a loaded CI machine; every wait polls a condition.
WAIT_S = 30
WAIT_MS = WAIT_S * 1000


class Recorder(EventListener):
    """Keeps every event a store delivers to its listener."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def on_event(self, event):
        with self.lock:
            self.events.append(event)

    def snapshot(self):
        with self.lock:
            return list(self.events)


async def eventually(what, condition):
    """Polls an async condition until it returns a truthy value."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def open_terminal(hub, tmp_db_dir, device):
    return open_store(
        StoreConfig(
            path=str(tmp_db_dir / f"{device}.db"),
            device_id=device,
            store_id=STORE,
            hub_url=hub.url,
            credentials_token=None,
        )
    )


def sale(order_id, sku, quantity, unit_price_minor):
    return CheckoutInput(
        order_id=order_id,
        lines=[OrderLineInput(sku=sku, quantity=quantity, unit_price_minor=unit_price_minor)],
        currency="EUR",
        channel=Channel.POS,
        payment_ref=f"card-{order_id}",
    )


async def scenario(hub, tmp_db_dir):
    office = await open_terminal(hub, tmp_db_dir, "office-1")
    till = await open_terminal(hub, tmp_db_dir, "till-2")
    recorder = Recorder()
    listener_id = till.add_listener(recorder)
    office.start_sync()
    till.start_sync()

    # The back office publishes the products and prices, receives stock and
    # keeps the scarce SKU for online sales only.
    await office.upsert_products(
        [ProductInput(sku=SKU, name="Espresso beans 1kg", barcode="4006381333931", brand="Roastery")]
    )
    await office.set_price(SKU, Channel.POS, 1899, "EUR", 0)
    await office.set_price(SCARCE, Channel.POS, 4500, "EUR", 0)
    delivery = await office.receive_stock(SKU, 50, "delivery-1")
    await office.receive_stock(SCARCE, 3, "delivery-2")
    await office.set_stock_policy(SCARCE, 5, "block")
    status = await office.wait_for_sync(WAIT_MS)
    assert status.link == Link.ONLINE and status.pending == 0
    received = await office.op_state(delivery)
    assert isinstance(received, OpState.CONFIRMED) and received.version is not None, received

    # The till receives them: the beans are well stocked (escrow), the
    # scarce SKU is strong.
    await eventually("the catalog on the till", lambda: till.product(SKU))
    price = await eventually("the price on the till", lambda: till.price_in_force(SKU, Channel.POS, None))
    assert price.money == Money(amount_minor=1899, currency="EUR")
    assert [product.sku for product in await till.search_products("espresso", 10)] == [SKU]
    assert [product.sku for product in await till.products_by_barcode("4006381333931")] == [SKU]
    stock = await eventually("the stock on the till", lambda: _stock(till, SKU, lambda view: view.on_hand == 50))
    assert stock.mode == StockMode.ESCROW
    assert stock.allowance_left == 0, "no allowance before the first sale"
    scarce = await eventually(
        "the scarce SKU's policy",
        lambda: _stock(till, SCARCE, lambda view: view.policy.offline == OfflinePolicy.BLOCK and view.on_hand == 3),
    )
    assert scarce.mode == StockMode.STRONG

    # Online: the hub decides the sale and numbers the order; the verdict
    # reaches the till's listener.
    await till.wait_for_sync(WAIT_MS)
    online = await till.checkout(sale("till-2-0001", SKU, 2, price.money.amount_minor))
    assert [(line.sku, line.quantity, line.source) for line in online.lines] == [(SKU, 2, LineSource.HUB)]
    assert online.needs_hub and not online.at_risk
    decided = await eventually("the verdict event", lambda: _now(_decided(recorder, online.op_id)))
    assert decided.status == DecidedState.CONFIRMED and decided.order_no is not None, decided
    first_no = decided.order_no
    assert await till.op_state(online.op_id) == OpState.CONFIRMED(order_no=first_no, version=None)
    assert (await till.order("till-2-0001")).order_no == first_no
    # With that sale the hub granted the till an allowance of the SKU.
    granted = await eventually(
        "the till's allowance", lambda: _stock(till, SKU, lambda view: view.allowance_left >= 2)
    )

    # Offline: the till sells from its allowance; the scarce SKU is blocked.
    till.set_online(False)
    await eventually("the till offline", lambda: _now(till.sync_status().link == Link.OFFLINE))
    offline = await till.checkout(sale("till-2-0002", SKU, 2, price.money.amount_minor))
    assert [line.source for line in offline.lines] == [LineSource.ALLOWANCE]
    assert not offline.at_risk and not offline.needs_hub
    assert await till.op_state(offline.op_id) == OpState.PENDING()
    assert till.sync_status().pending >= 1
    assert (await till.stock(SKU)).allowance_left == granted.allowance_left - 2
    local = await till.order("till-2-0002")
    assert local.status == "pending" and local.order_no is None
    assert local.total == Money(amount_minor=3798, currency="EUR")
    assert await office.order("till-2-0002") is None, "the office cannot see an offline sale"
    local_sale = StoreEvent.DOCUMENTS_CHANGED(
        origin=ChangeOrigin.LOCAL, collections=[Collection.ALLOWANCES, Collection.ORDERS]
    )
    await eventually("the local sale event", lambda: _now(local_sale in recorder.snapshot()))
    with pytest.raises(OmnisyncError.Blocked) as blocked:
        await till.checkout(sale("till-2-0003", SCARCE, 1, 4500))
    assert SCARCE in blocked.value.detail
    assert await till.order("till-2-0003") is None, "a blocked sale writes nothing"

    # Back online: the hub confirms the offline sale; everyone sees the
    # orders and the stock.
    till.set_online(True)
    await till.wait_for_sync(WAIT_MS)
    confirmed = await eventually("the offline sale confirmed", lambda: _confirmed(till.op_state(offline.op_id)))
    assert confirmed.order_no is not None and confirmed.order_no > first_no
    order = await eventually("the order on the office", lambda: _numbered(office.order("till-2-0002")))
    assert order.order_no == confirmed.order_no
    assert order.status == "confirmed" and order.version == 1 and order.device == "till-2"
    assert order.total == Money(amount_minor=3798, currency="EUR")
    assert order.lines == [OrderLine(sku=SKU, quantity=2, unit_price_minor=1899)]
    assert not order.at_risk
    assert sorted(found.order_id for found in await office.orders_by_status("confirmed", 10)) == [
        "till-2-0001",
        "till-2-0002",
    ]
    await eventually("the stock on the office", lambda: _stock(office, SKU, lambda view: view.on_hand == 46))
    await eventually("the stock on the till", lambda: _stock(till, SKU, lambda view: view.on_hand == 46))
    assert await office.stock_level(SKU) == 46
    assert (await office.stock(SCARCE)).on_hand == 3
    assert (await office.price_in_force(SKU, Channel.POS, None)).money.amount_minor == 1899
    assert till.sync_status().compensations_open == 0
    assert await till.compensations() == []

    # The till's listener saw it go offline; the office's pull API saw the
    # orders arrive.
    assert any(
        isinstance(event, StoreEvent.SYNC_STATUS_CHANGED) and event.status.link == Link.OFFLINE
        for event in recorder.snapshot()
    )
    seen = []
    while not any(_is_remote_orders(event) for event in seen):
        event = await office.next_event(WAIT_MS)
        assert event is not None, "the office heard no remote order change"
        seen.append(event)

    # Listeners are removable.
    assert till.remove_listener(listener_id)
    assert not till.remove_listener(listener_id)
    heard = len(recorder.snapshot())
    await till.set_price("other-sku", Channel.POS, 300, "EUR", 0)
    await asyncio.sleep(0.2)
    assert len(recorder.snapshot()) == heard

    await office.shutdown()
    await till.shutdown()
    with pytest.raises(OmnisyncError.Closed):
        await till.stock(SKU)


async def _stock(store, sku, condition):
    view = await store.stock(sku)
    return view if view is not None and condition(view) else None


def _decided(recorder, op_id):
    for event in recorder.snapshot():
        if isinstance(event, StoreEvent.OP_VERDICTS):
            for decided in event.decided:
                if decided.op_id == op_id:
                    return decided
    return None


async def _confirmed(awaitable):
    state = await awaitable
    return state if isinstance(state, OpState.CONFIRMED) else None


async def _numbered(awaitable):
    order = await awaitable
    return order if order is not None and order.order_no is not None else None


async def _now(value):
    return value


def _is_remote_orders(event):
    return (
        isinstance(event, StoreEvent.DOCUMENTS_CHANGED)
        and event.origin == ChangeOrigin.REMOTE
        and Collection.ORDERS in event.collections
    )


def test_online_and_offline_sales_reach_the_back_office(hub, tmp_db_dir):
    asyncio.run(scenario(hub, tmp_db_dir))


async def bad_input(hub, tmp_db_dir):
    till = await open_terminal(hub, tmp_db_dir, "till-3")
    with pytest.raises(OmnisyncError.InvalidInput) as raised:
        await till.set_price("bad sku", Channel.POS, 100, "EUR", 0)
    assert "bad sku" in raised.value.detail
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.set_price("sku-1", Channel.POS, -1, "EUR", 0)
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.set_price("sku-1", Channel.POS, 100, "euro", 0)
    for quantity in (0, -1, 10_001):
        with pytest.raises(OmnisyncError.InvalidInput):
            await till.checkout(sale("o-1", "sku-1", quantity, 100))
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.checkout(sale("o-1", "sku-1", 1, -100))
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.checkout(CheckoutInput(order_id="o-1", lines=[], currency="EUR", channel=Channel.POS))
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.checkout(sale("bad order", "sku-1", 1, 100))
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.receive_stock("sku-1", 0, "delivery-1")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.receive_stock("sku-1", 2**63 - 1, "delivery-1")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.receive_stock("sku-1", 5, "")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.stock_take("sku-1", -1, "count-1")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.adjust_stock("sku-1", 0, "damaged", "adjust-1")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.set_stock_policy("sku-1", 5, "sometimes")
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.resolve_compensation("not-an-op", "refund")
    # Offline, with no allowance and no stock known, a sale is blocked.
    with pytest.raises(OmnisyncError.Blocked):
        await till.checkout(sale("o-2", "sku-1", 1, 100))
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.add_to_cart("c-1", "sku-1", -5)
    line = await till.add_to_cart("c-1", "sku-1", 5)
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.change_cart_quantity("c-1", line.line_id, 2**63 - 1)
    assert [cart_line.quantity for cart_line in (await till.cart("c-1", Channel.POS)).lines] == [5]
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.op_state("not-an-op")
    with pytest.raises(OmnisyncError.NotFound):
        await till.update_order_status("missing-order", 1, "paid")
    await till.shutdown()
    with pytest.raises(OmnisyncError.InvalidInput):
        await open_store(
            StoreConfig(path=str(tmp_db_dir / "x.db"), device_id="bad device", store_id=STORE, hub_url=hub.url)
        )
    # Hub addresses are checked when the store opens.
    for hub_url, hub_urls in [("", []), ("http://127.0.0.1:9/v1/sync", []), (hub.url, ["ws://"])]:
        with pytest.raises(OmnisyncError.InvalidInput):
            await open_store(
                StoreConfig(
                    path=str(tmp_db_dir / "y.db"),
                    device_id="till-5",
                    store_id=STORE,
                    hub_url=hub_url,
                    hub_urls=hub_urls,
                )
            )
    # The same file opened as another device is refused, not corrupted.
    with pytest.raises(OmnisyncError.WrongDatabase):
        await open_store(
            StoreConfig(path=str(tmp_db_dir / "till-3.db"), device_id="till-4", store_id=STORE, hub_url=hub.url)
        )


def test_bad_input_raises_the_typed_error(hub, tmp_db_dir):
    asyncio.run(bad_input(hub, tmp_db_dir))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def list_of_hubs(hub, tmp_db_dir):
    dead = f"ws://127.0.0.1:{free_port()}/v1/sync"
    till = await open_store(
        StoreConfig(
            path=str(tmp_db_dir / "till-6.db"),
            device_id="till-6",
            store_id=STORE,
            hub_url="",
            hub_urls=[dead, hub.url],
        )
    )
    till.start_sync()
    status = await till.wait_for_sync(WAIT_MS)
    assert status.link == Link.ONLINE
    assert status.hub == hub.url
    await till.shutdown()


def test_a_list_of_hubs_skips_one_that_is_down(hub, tmp_db_dir):
    asyncio.run(list_of_hubs(hub, tmp_db_dir))
