// The README's "Use from Kotlin" example (README.md and bindings/README.md),
// compiled and run against a real hub so the README cannot drift from the
// generated API.
package dev.omnisync

import dev.omnisync.core.*
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import java.nio.file.Files

// --- as in the README ---
suspend fun sellOneCoffee(dbPath: String, hubUrl: String) {
    val till = openStore(StoreConfig(dbPath, deviceId = "till-2", storeId = "berlin-01", hubUrl = hubUrl))
    val listenerId = till.addListener(object : EventListener {
        override fun onEvent(event: StoreEvent) {
            if (event is StoreEvent.OpVerdicts) event.decided.forEach { println("hub: ${it.decision}") }
        }
    })
    till.startSync()
    till.waitForSync(30_000uL) // online: the hub decides what this till's allowance does not cover
    val price = till.priceInForce("espresso-beans", Channel.POS, null) ?: error("not priced")
    val lines = listOf(OrderLineInput("espresso-beans", 2, price.money.amountMinor))
    try {
        val receipt = till.checkout(CheckoutInput("till-2-0001", lines, "EUR", Channel.POS, paymentRef = "card-7731"))
        till.waitForSync(30_000uL)
        println("sale ${till.opState(receipt.opId)}, stock ${till.stock("espresso-beans")}")
    } catch (e: OmnisyncException.Blocked) {
        println("cannot sell now: ${e.detail}") // offline, and the SKU's policy is `block`
    }
    try {
        till.setPrice("bad sku", Channel.POS, 100, "EUR", 0uL)
    } catch (e: OmnisyncException.InvalidInput) {
        println("refused: ${e.detail}")
    }
    till.removeListener(listenerId)
    till.shutdown()   // stop sync, drop listeners
    till.close()      // free the Rust object (or use `till.use { ... }`)
}
// --- end of the README's example ---

class ReadmeExampleTest {
    @Test
    fun `the README example sells and syncs`() = runBlocking {
        TestHub.start().use { hub ->
            val dir = Files.createTempDirectory("omnisync-readme-")
            try {
                // The back office has priced and received the beans.
                openStore(StoreConfig(dir.resolve("office-1.db").toString(), "office-1", "berlin-01", hub.url)).use {
                    office ->
                    office.startSync()
                    office.setPrice("espresso-beans", Channel.POS, 1899, "EUR", 0uL)
                    office.receiveStock("espresso-beans", 50, "delivery-1")
                    office.waitForSync(30_000uL)
                    office.shutdown()
                }
                val tillPath = dir.resolve("till-2.db").toString()
                sellOneCoffee(tillPath, hub.url)
                openStore(StoreConfig(tillPath, "till-2", "berlin-01", hub.url)).use { till ->
                    assertEquals(0uL, till.syncStatus().pending, "the sale was decided")
                    val order = till.order("till-2-0001")
                    assertEquals(Money(3798, "EUR"), order?.total)
                    assertEquals("confirmed", order?.status)
                    assertEquals(1uL, order?.orderNo)
                    till.shutdown()
                }
                openStore(StoreConfig(dir.resolve("office-1.db").toString(), "office-1", "berlin-01", hub.url)).use {
                    office ->
                    office.startSync()
                    office.waitForSync(30_000uL)
                    val order = office.order("till-2-0001")
                    assertEquals(Money(3798, "EUR"), order?.total)
                    assertEquals(1uL, order?.orderNo)
                    assertEquals(48uL, office.stock("espresso-beans")?.onHand)
                    office.shutdown()
                }
            } finally {
                dir.toFile().deleteRecursively()
            }
        }
    }
}
