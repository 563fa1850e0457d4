// The bindings' acceptance scenario on the JVM, against a real hub: a back
// office publishes a product, price and stock; a till sells offline,
// reconnects, and both see the order, stock and price; the till hears the
// hub's verdict through its listener; bad input throws the typed exception.
package dev.omnisync

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

    @Test
    fun `an offline sale reaches the back office`() = runBlocking {
        val office = terminal("office-1")
        val till = terminal("till-2")
        val recorder = Recorder()
        val listenerId = till.addListener(recorder)
        office.startSync()
        till.startSync()

        // The back office publishes a product, its price and its stock.
        office.upsertProducts(listOf(ProductInput(SKU, name = "Espresso beans 1kg", barcode = "4006381333931")))
        office.setPrice(SKU, Channel.POS, Money(1899, "EUR"), 0uL)
        office.publishStockLevel(SKU, 12)
        val synced = office.waitForSync(WAIT_MS.toULong())
        assertEquals(LinkState.ONLINE, synced.link)
        assertEquals(0uL, synced.pending)

        // The till receives them.
        eventually("the catalog on the till") { till.product(SKU) }
        eventually("the stock on the till") { till.stockLevel(SKU)?.takeIf { it == 12L } }
        val price = eventually("the price on the till") { till.priceInForce(SKU, Channel.POS, null) }
        assertEquals(Money(1899, "EUR"), price.money)
        assertEquals(listOf(SKU), till.searchProducts("espresso", 10u).map { it.sku })

        // The till goes offline and sells.
        till.setOnline(false)
        eventually("the till offline") { till.syncStatus().takeIf { it.link == LinkState.OFFLINE } }
        val op = till.createOrder(
            "till-2-0001",
            listOf(OrderLineInput(SKU, 2, price.money.amountMinor)),
            "EUR",
        )
        assertEquals(OpState.Pending, till.opState(op))
        assertEquals(Money(3798, "EUR"), till.order("till-2-0001")?.total)
        assertNull(office.order("till-2-0001"), "the office cannot see an offline sale")

        // Back online: the hub acknowledges, the office sees the sale.
        till.setOnline(true)
        till.waitForSync(WAIT_MS.toULong())
        val verdict = eventually("the verdict") { till.opState(op) as? OpState.Acknowledged }
        assertTrue(verdict.ackedMs > 0uL)
        val order = eventually("the order on the office") { office.order("till-2-0001") }
        assertEquals(Money(3798, "EUR"), order.total)
        assertEquals("completed", order.status)
        assertEquals(12L, office.stockLevel(SKU))
        assertEquals(12L, till.stockLevel(SKU))
        assertEquals(1899L, office.priceInForce(SKU, Channel.POS, null)?.money?.amountMinor)

        // The verdict came through the listener; the office's pull API saw the order arrive.
        eventually("a verdict event") {
            recorder.events.firstOrNull { it is StoreEvent.OpVerdicts && it.acknowledged >= 1uL }
        }
        assertTrue(recorder.events.any { it is StoreEvent.SyncStatusChanged && it.status.link == LinkState.OFFLINE })
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

        // Listeners are removable; shut-down stores refuse calls.
        assertTrue(till.removeListener(listenerId))
        assertFalse(till.removeListener(listenerId))
        office.shutdown()
        till.shutdown()
        assertThrows<OmnisyncException.Closed> { runBlocking { till.stockLevel(SKU) } }
        office.close()
        till.close()
    }

    @Test
    fun `bad input throws the typed exception`() = runBlocking {
        terminal("till-3").use { till ->
            val invalid = assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.setPrice("bad sku", Channel.POS, Money(100, "EUR"), 0uL) }
            }
            assertTrue(invalid.detail.contains("bad sku"), invalid.detail)
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.setPrice("sku-1", Channel.POS, Money(-1, "EUR"), 0uL) }
            }
            assertThrows<OmnisyncException.InvalidInput> {
                runBlocking { till.createOrder("o-1", listOf(OrderLineInput("sku-1", 0, 100)), "EUR") }
            }
            assertThrows<OmnisyncException.NotFound> {
                runBlocking { till.updateOrderStatus("missing-order", 1uL, "paid") }
            }
            till.shutdown()
        }
        assertThrows<OmnisyncException.InvalidInput> {
            runBlocking { openStore(StoreConfig(dir.resolve("x.db").toString(), "bad device", STORE, hub.url)) }
        }
        Unit
    }
}
