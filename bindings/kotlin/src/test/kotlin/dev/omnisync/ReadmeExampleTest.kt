// bindings/README.md's "Use from Kotlin" example, compiled and run against a
// real hub so the README cannot drift from the generated API.
package dev.omnisync

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import java.nio.file.Files

// --- as in bindings/README.md ---
suspend fun sellOneCoffee(dbPath: String, hubUrl: String) {
    val till = openStore(StoreConfig(dbPath, deviceId = "till-2", storeId = "berlin-01", hubUrl = hubUrl))
    val listenerId = till.addListener(object : EventListener {
        override fun onEvent(event: StoreEvent) {
            if (event is StoreEvent.OpVerdicts) println("hub acknowledged ${event.acknowledged} ops")
        }
    })
    till.startSync()
    val price = till.priceInForce("espresso-beans", Channel.POS, null) ?: error("not priced")
    val op = till.createOrder("till-2-0001", listOf(OrderLineInput("espresso-beans", 2, price.money.amountMinor)), "EUR")
    try {
        till.setPrice("bad sku", Channel.POS, Money(100, "EUR"), 0uL)
    } catch (e: OmnisyncException.InvalidInput) {
        println("refused: ${e.detail}")
    }
    till.waitForSync(30_000uL)
    println("order ${till.opState(op)}, stock ${till.stockLevel("espresso-beans")}")
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
                val tillPath = dir.resolve("till-2.db").toString()
                // The till's database already holds the price (as after an earlier sync).
                openStore(StoreConfig(tillPath, "till-2", "berlin-01", hub.url)).use { till ->
                    till.setPrice("espresso-beans", Channel.POS, Money(1899, "EUR"), 0uL)
                    till.shutdown()
                }
                sellOneCoffee(tillPath, hub.url)
                openStore(StoreConfig(dir.resolve("office-1.db").toString(), "office-1", "berlin-01", hub.url)).use {
                    office ->
                    office.startSync()
                    office.waitForSync(30_000uL)
                    val order = office.order("till-2-0001")
                    assertEquals(Money(3798, "EUR"), order?.total)
                    office.shutdown()
                }
                openStore(StoreConfig(tillPath, "till-2", "berlin-01", hub.url)).use { till ->
                    assertEquals(0uL, till.syncStatus().pending, "the sale was acknowledged")
                    till.shutdown()
                }
            } finally {
                dir.toFile().deleteRecursively()
            }
        }
    }
}
