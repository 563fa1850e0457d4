"""The bindings' acceptance scenario from Python, against a real hub: a back
office publishes a product, price and stock; a till sells offline,
reconnects, and both sides see the order, the stock and the price; the till
hears the hub's verdict through its listener; bad input raises the typed
error."""

import asyncio
import threading
import time

import pytest

from omnisync_ffi import (
    Channel,
    ChangeOrigin,
    Collection,
    EventListener,
    LinkState,
    Money,
    OmnisyncError,
    OpState,
    OrderLineInput,
    ProductInput,
    StoreConfig,
    StoreEvent,
    open_store,
)

STORE = "berlin-01"
SKU = "espresso-beans"
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


async def scenario(hub, tmp_db_dir):
    office = await open_terminal(hub, tmp_db_dir, "office-1")
    till = await open_terminal(hub, tmp_db_dir, "till-2")
    recorder = Recorder()
    listener_id = till.add_listener(recorder)
    office.start_sync()
    till.start_sync()

    # The back office publishes a product, its price and its stock.
    await office.upsert_products(
        [ProductInput(sku=SKU, name="Espresso beans 1kg", barcode="4006381333931", brand="Roastery")]
    )
    await office.set_price(SKU, Channel.POS, Money(amount_minor=1899, currency="EUR"), 0)
    await office.publish_stock_level(SKU, 12)
    status = await office.wait_for_sync(WAIT_MS)
    assert status.link == LinkState.ONLINE and status.pending == 0

    # The till receives them.
    await eventually("the catalog on the till", lambda: till.product(SKU))
    await eventually("the stock on the till", lambda: _equals(till.stock_level(SKU), 12))
    price = await eventually("the price on the till", lambda: till.price_in_force(SKU, Channel.POS, None))
    assert price.money == Money(amount_minor=1899, currency="EUR")
    assert [product.sku for product in await till.search_products("espresso", 10)] == [SKU]
    assert [product.sku for product in await till.products_by_barcode("4006381333931")] == [SKU]

    # The till goes offline and sells.
    till.set_online(False)
    await eventually("the till offline", lambda: _now(till.sync_status().link == LinkState.OFFLINE))
    op = await till.create_order(
        "till-2-0001",
        [OrderLineInput(sku=SKU, quantity=2, unit_price_minor=price.money.amount_minor)],
        "EUR",
    )
    assert await till.op_state(op) == OpState.PENDING()
    assert till.sync_status().pending >= 1
    local = await till.order("till-2-0001")
    assert local.total == Money(amount_minor=3798, currency="EUR")
    assert await office.order("till-2-0001") is None, "the office cannot see an offline sale"

    # Back online: the hub acknowledges, the office sees the sale.
    till.set_online(True)
    await till.wait_for_sync(WAIT_MS)
    state = await eventually("the verdict", lambda: _acknowledged(till.op_state(op)))
    assert state.acked_ms > 0
    order = await eventually("the order on the office", lambda: office.order("till-2-0001"))
    assert order.total == Money(amount_minor=3798, currency="EUR")
    assert order.status == "completed" and order.version == 1
    assert [found.order_id for found in await office.orders_by_status("completed", 10)] == ["till-2-0001"]
    assert await office.stock_level(SKU) == 12
    assert await till.stock_level(SKU) == 12
    assert (await office.price_in_force(SKU, Channel.POS, None)).money.amount_minor == 1899

    # The verdict arrived through the listener, and the pull API saw the
    # office receive the order.
    await eventually(
        "a verdict event",
        lambda: _now(any(_is_ack(event) for event in recorder.snapshot())),
    )
    assert any(
        isinstance(event, StoreEvent.SYNC_STATUS_CHANGED) and event.status.link == LinkState.OFFLINE
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
    await till.publish_stock_level("other-sku", 3)
    await asyncio.sleep(0.2)
    assert len(recorder.snapshot()) == heard

    await office.shutdown()
    await till.shutdown()
    with pytest.raises(OmnisyncError.Closed):
        await till.stock_level(SKU)


async def _equals(awaitable, expected):
    return (await awaitable) == expected


async def _now(value):
    return value


async def _acknowledged(awaitable):
    state = await awaitable
    return state if isinstance(state, OpState.ACKNOWLEDGED) else None


def _is_ack(event):
    return isinstance(event, StoreEvent.OP_VERDICTS) and event.acknowledged >= 1


def _is_remote_orders(event):
    return (
        isinstance(event, StoreEvent.DOCUMENTS_CHANGED)
        and event.origin == ChangeOrigin.REMOTE
        and Collection.ORDERS in event.collections
    )


def test_offline_sale_reaches_the_back_office(hub, tmp_db_dir):
    asyncio.run(scenario(hub, tmp_db_dir))


async def bad_input(hub, tmp_db_dir):
    till = await open_terminal(hub, tmp_db_dir, "till-3")
    euro = Money(amount_minor=100, currency="EUR")
    with pytest.raises(OmnisyncError.InvalidInput) as raised:
        await till.set_price("bad sku", Channel.POS, euro, 0)
    assert "bad sku" in raised.value.detail
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.set_price("sku-1", Channel.POS, Money(amount_minor=-1, currency="EUR"), 0)
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.set_price("sku-1", Channel.POS, Money(amount_minor=100, currency="euro"), 0)
    with pytest.raises(OmnisyncError.InvalidInput):
        await till.create_order("o-1", [OrderLineInput(sku="sku-1", quantity=0, unit_price_minor=100)], "EUR")
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
    # The same file opened as another device is refused, not corrupted.
    with pytest.raises(OmnisyncError.WrongDatabase):
        await open_store(
            StoreConfig(path=str(tmp_db_dir / "till-3.db"), device_id="till-4", store_id=STORE, hub_url=hub.url)
        )


def test_bad_input_raises_the_typed_error(hub, tmp_db_dir):
    asyncio.run(bad_input(hub, tmp_db_dir))
