// The bindings' acceptance scenario on the JVM, against a real hub: a back
// office publishes a product and its price, receives stock and marks a scarce
// SKU `block`; a till sells online (the hub confirms the order and numbers
// it, heard through the till's listener), goes offline and sells from the
// allowance the hub granted it, is refused the scarce SKU offline, reconnects,
// and every device sees the orders and the stock; an order status change is
// decided by the hub; bad input throws the typed exception.
package dev.omnisync

import dev.omnisync.core.*
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.fail
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.CopyOnWriteArrayList

private const val STORE = "berlin-01"
private const val SKU = "espresso-beans"
/** Few units, policy `block`: never sold offline. */
private const val SCARCE = "saffron-1g"

/** Generous for a loaded CI machine; every wait polls a condition. */
private const val WAIT_MS = 30_000L

/** Keeps every event a store delivers to its listener. */
private class Recorder : EventListener {
    val events = CopyOnWriteArrayList<StoreEvent>()
    override fun onEvent(event: StoreEvent) {
        events.add(event)
    }
}

/** Polls [condition] until it returns non-null. */
private suspend fun <T : Any> eventually(what: String, condition: suspend () -> T?): T =
    withTimeout(WAIT_MS) {
        while (true) {
            condition()?.let { return@withTimeout it }
            delay(20)
        }
        @Suppress("UNREACHABLE_CODE")
        error("unreachable: $what")
    }

class ScenarioTest {
    private lateinit var hub: TestHub
    private lateinit var dir: Path

    @BeforeEach
    fun startHub() {
        hub = TestHub.start()
        dir = Files.createTempDirectory("omnisync-kotlin-")
    }

    @AfterEach
    fun stopHub() {
        hub.close()
        dir.toFile().deleteRecursively()
    }

    private suspend fun terminal(device: String): OmnisyncStore =
        openStore(StoreConfig(dir.resolve("$device.db").toString(), device, STORE, hub.url))

    private fun sale(orderId: String, sku: String, quantity: Long, unitPriceMinor: Long) =
        CheckoutInput(orderId, listOf(OrderLineInput(sku, quantity, unitPriceMinor)), "EUR", Channel.POS, paymentRef = "card-$orderId")

    @Test
    fun `a till sells online and offline and the back office sees it all`() = runBlocking {
        val office = terminal("office-1")
        val till = terminal("till-2")
        val recorder = Recorder()
        val listenerId = till.addListener(recorder)
        office.startSync()
        till.startSync()

        // The back office publishes the products and prices, receives stock
        // and keeps the scarce SKU for online sales only.
        office.upsertProducts(listOf(ProductInput(SKU, name = "Espresso beans 1kg", barcode = "4006381333931")))
        office.setPrice(SKU, Channel.POS, 1899, "EUR", 0uL)
        office.setPrice(SCARCE, Channel.POS, 4500, "EUR", 0uL)
        val delivery = office.receiveStock(SKU, 50, "delivery-1")
        office.receiveStock(SCARCE, 3, "delivery-2")
        office.setStockPolicy(SCARCE, 5, "block")
        val synced = office.waitForSync(WAIT_MS.toULong())
        assertEquals(Link.ONLINE, synced.link)
        assertEquals(0uL, synced.pending)
        val received = office.opState(delivery)
        assertTrue(received is OpState.Confirmed && received.version != null, "$received")

        // The till receives them: stock is well stocked (escrow), the scarce SKU strong.
        eventually("the catalog on the till") { till.product(SKU) }
        val price = eventually("the price on the till") { till.priceInForce(SKU, Channel.POS, null) }
        assertEquals(Money(1899, "EUR"), price.money)
        assertEquals(listOf(SKU), till.searchProducts("espresso", 10u).map { it.sku })
        val stock = eventually("the stock on the till") { till.stock(SKU)?.takeIf { it.onHand == 50uL } }
        assertEquals(StockMode.ESCROW, stock.mode)
        assertEquals(0uL, stock.allowanceLeft, "no allowance before the first sale")
        val scarce = eventually("the scarce SKU's policy") {
            till.stock(SCARCE)?.takeIf { it.policy.offline == OfflinePolicy.BLOCK && it.onHand == 3uL }
        }
        assertEquals(StockMode.STRONG, scarce.mode)

        // Online: the hub decides the sale and numbers the order; the verdict
        // reaches the till's listener.
        till.waitForSync(WAIT_MS.toULong())
        val online = till.checkout(sale("till-2-0001", SKU, 2, price.money.amountMinor))
        assertEquals(listOf(ReceiptLine(SKU, 2uL, LineSource.HUB)), online.lines)
        assertTrue(online.needsHub)
        val decided = eventually("the verdict event") {
            recorder.events.filterIsInstance<StoreEvent.OpVerdicts>().flatMap { it.decided }
                .firstOrNull { it.opId == online.opId }
        }
        assertEquals(DecidedState.CONFIRMED, decided.status)
        val firstNo = decided.orderNo ?: fail("the verdict has no order number: $decided")
        assertEquals(OpState.Confirmed(firstNo, null), till.opState(online.opId))
        assertEquals(firstNo, till.order("till-2-0001")?.orderNo)
        // With that sale the hub granted the till an allowance of the SKU.
        val granted = eventually("the till's allowance") { till.stock(SKU)?.takeIf { it.allowanceLeft >= 2uL } }

        // Offline: the till sells from its allowance; the scarce SKU is blocked.
        till.setOnline(false)
        eventually("the till offline") { till.syncStatus().takeIf { it.link == Link.OFFLINE } }
        val offline = till.checkout(sale("till-2-0002", SKU, 2, price.money.amountMinor))
        assertEquals(listOf(LineSource.ALLOWANCE), offline.lines.map { it.source })
        assertFalse(offline.atRisk)
        assertEquals(OpState.Pending, till.opState(offline.opId))
        assertEquals(granted.allowanceLeft - 2uL, till.stock(SKU)?.allowanceLeft)
        val pending = till.order("till-2-0002") ?: fail("the offline sale is not recorded")
        assertEquals("pending", pending.status)
        assertEquals(Money(3798, "EUR"), pending.total)
        assertNull(office.order("till-2-0002"), "the office cannot see an offline sale")
        eventually("the local sale event") {
            recorder.events.firstOrNull {
                it is StoreEvent.DocumentsChanged && it.origin == ChangeOrigin.LOCAL &&
                    it.collections == listOf(Collection.ALLOWANCES, Collection.ORDERS)
            }
        }
        val blocked = assertThrows<OmnisyncException.Blocked> {
            runBlocking { till.checkout(sale("till-2-0003", SCARCE, 1, 4500)) }
        }
        assertTrue(blocked.detail.contains(SCARCE), blocked.detail)
        assertNull(till.order("till-2-0003"), "a blocked sale writes nothing")

        // Back online: the hub confirms the offline sale; everyone sees the
        // orders and the stock.
        till.setOnline(true)
        till.waitForSync(WAIT_MS.toULong())
        val confirmed = eventually("the offline sale confirmed") { till.opState(offline.opId) as? OpState.Confirmed }
        val secondNo = confirmed.orderNo ?: fail("the confirmation has no order number: $confirmed")
        assertTrue(secondNo > firstNo, "order numbers grow: $firstNo then $secondNo")
        val order = eventually("the order on the office") { office.order("till-2-0002")?.takeIf { it.orderNo != null } }
        assertEquals(secondNo, order.orderNo)
        assertEquals("confirmed", order.status)
        assertEquals("till-2", order.device)
        assertEquals(Money(3798, "EUR"), order.total)
        assertEquals(listOf(OrderLine(SKU, 2uL, 1899)), order.lines)
        assertFalse(order.atRisk)
        assertEquals(
            listOf("till-2-0001", "till-2-0002"),
            office.ordersByStatus("confirmed", 10u).map { it.orderId }.sorted(),
        )
        eventually("the stock on the office") { office.stock(SKU)?.takeIf { it.onHand == 46uL } }
        eventually("the stock on the till") { till.stock(SKU)?.takeIf { it.onHand == 46uL } }
        assertEquals(46L, office.stockLevel(SKU))
        assertEquals(3uL, office.stock(SCARCE)?.onHand)
        assertEquals(1899L, office.priceInForce(SKU, Channel.POS, null)?.money?.amountMinor)
        assertEquals(0uL, till.syncStatus().compensationsOpen)
        assertTrue(till.compensations().isEmpty())

        // The office's pull API saw the orders arrive; the till's listener saw it go offline.
        assertTrue(recorder.events.any { it is StoreEvent.SyncStatusChanged && it.status.link == Link.OFFLINE })
        val seen = mutableListOf<StoreEvent>()
        while (true) {
            val event = office.nextEvent(WAIT_MS.toULong()) ?: fail("the office heard no remote order; it heard $seen")
            seen.add(event)
            if (event is StoreEvent.DocumentsChanged && event.origin == ChangeOrigin.REMOTE &&
                Collection.ORDERS in event.collections
            ) {
                break
            }
        }

        // Order status changes are decided by the hub, with optimistic versions.
        val paid = office.updateOrderStatus("till-2-0002", order.version, "paid")
        val applied = eventually("the status change decided") { office.opState(paid) as? OpState.Confirmed }
        assertEquals(order.version + 1uL, applied.version)
        eventually("the new status on the till") { till.order("till-2-0002")?.takeIf { it.status == "paid" } }
        eventually("the new version on the office") {
            office.order("till-2-0002")?.takeIf { it.version == order.version + 1uL }
        }
        val stale = assertThrows<OmnisyncException.VersionConflict> {
            runBlocking { office.updateOrderStatus("till-2-0002", order.version, "returned") }
        }
        assertEquals(order.version + 1uL, stale.found)

        // Listeners are removable; shut-down stores refuse calls.
        assertTrue(till.removeListener(listenerId))
        assertFalse(till.removeListener(listenerId))
        office.shutdown()
        till.shutdown()
        assertThrows<OmnisyncException.Closed> { runBlocking { till.stock(SKU) } }
        office.close()
        till.close()
    }

    @Test
    fun `bad input throws the typed exception`() = runBlocking {
        terminal("till-3").use { till ->
            val invalid = assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.setPrice("bad sku", Channel.POS, 100, "EUR", 0uL) }
            }
            assertTrue(invalid.detail.contains("bad sku"), invalid.detail)
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.setPrice("sku-1", Channel.POS, -1, "EUR", 0uL) }
            }
            for (quantity in listOf(0L, -1L, 10_001L)) {
                assertThrows<OmnisyncException.InvalidInput> {
                    runBlocking { till.checkout(sale("o-1", "sku-1", quantity, 100)) }
                }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.checkout(sale("o-1", "sku-1", 1, -100)) }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.checkout(CheckoutInput("o-1", emptyList(), "EUR", Channel.POS)) }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.receiveStock("sku-1", 0, "delivery-1") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.receiveStock("sku-1", Long.MAX_VALUE, "delivery-1") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.receiveStock("bad sku", 5, "delivery-1") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.stockTake("sku-1", -1, "count-1") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.adjustStock("sku-1", 0, "damaged", "adjust-1") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.setStockPolicy("sku-1", 5, "sometimes") }
            }
            assertThrows<OmnisyncException.NotFound> {
                runBlocking { till.updateOrderStatus("missing-order", 1uL, "paid") }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.resolveCompensation("not-an-op", "refund") }
            }
            till.shutdown()
        }
        assertThrows<OmnisyncException.InvalidInput> {
            runBlocking { openStore(StoreConfig(dir.resolve("x.db").toString(), "bad device", STORE, hub.url)) }
        }
        assertThrows<OmnisyncException.InvalidInput> {
            runBlocking { openStore(StoreConfig(dir.resolve("y.db").toString(), "till-5", STORE, "", hubUrls = listOf())) }
        }
        assertThrows<OmnisyncException.InvalidInput> {
            runBlocking {
                openStore(StoreConfig(dir.resolve("y.db").toString(), "till-5", STORE, hub.url, hubUrls = listOf("http://127.0.0.1:9")))
            }
        }
        Unit
    }

    @Test
    fun aListOfHubsSkipsOneThatIsDown() = runBlocking {
        val dead = java.net.ServerSocket(0).use { "ws://127.0.0.1:${it.localPort}/v1/sync" }
        val till = openStore(StoreConfig(dir.resolve("till-6.db").toString(), "till-6", STORE, "", hubUrls = listOf(dead, hub.url)))
        till.startSync()
        val status = till.waitForSync(WAIT_MS.toULong())
        assertEquals(Link.ONLINE, status.link)
        assertEquals(hub.url, status.hub)
        till.shutdown()
    }
}
