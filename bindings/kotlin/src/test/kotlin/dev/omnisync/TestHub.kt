// A real omnisync-hub process for the JVM tests: started on a free port in a
// temporary data directory, stopped (killed) when closed.
package dev.omnisync

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** A running hub; [url] is its WebSocket sync URL. */
class TestHub private constructor(private val process: Process, val url: String, private val dataDir: File) :
    AutoCloseable {

    override fun close() {
        process.destroyForcibly()
        process.waitFor(10, TimeUnit.SECONDS)
        dataDir.deleteRecursively()
    }

    companion object {
        /** How long the hub may take to print its address. */
        private const val START_TIMEOUT_S = 30L
        private val ADDRESS = Regex("""sync at (ws://\S+)\)""")

        /** Starts `omnisync-hub serve` and waits for its address line. */
        fun start(): TestHub {
            val binary = File(System.getProperty("omnisync.hub.binary") ?: "../../target/debug/omnisync-hub")
            check(binary.canExecute()) { "$binary is missing: run `cargo build -p omnisync-hub` first" }
            val dataDir = Files.createTempDirectory("omnisync-hub-").toFile()
            val process = ProcessBuilder(
                binary.path, "serve", "--dev-auth", "--listen", "127.0.0.1:0", "--data-dir", dataDir.path,
            ).redirectError(ProcessBuilder.Redirect.DISCARD).start()
            val lines = LinkedBlockingQueue<String>()
            Thread {
                process.inputStream.bufferedReader().forEachLine { lines.put(it) }
            }.apply { isDaemon = true }.start()
            while (true) {
                val line = lines.poll(START_TIMEOUT_S, TimeUnit.SECONDS)
                if (line == null) {
                    process.destroyForcibly()
                    error("omnisync-hub did not print its address within $START_TIMEOUT_S s")
                }
                val match = ADDRESS.find(line) ?: continue
                return TestHub(process, match.groupValues[1], dataDir)
            }
        }
    }
}
