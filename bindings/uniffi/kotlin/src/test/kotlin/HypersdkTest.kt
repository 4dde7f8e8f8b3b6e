// The uniffi Kotlin bindings against the example VM and qemu-img.

import java.io.File
import java.nio.file.Files
import java.security.MessageDigest
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue
import uniffi.hypersdk_uniffi.Cancel
import uniffi.hypersdk_uniffi.ExportSettings
import uniffi.hypersdk_uniffi.HypersdkException
import uniffi.hypersdk_uniffi.ProgressEvent
import uniffi.hypersdk_uniffi.ProgressListener
import uniffi.hypersdk_uniffi.connectProvider
import uniffi.hypersdk_uniffi.localProvider
import uniffi.hypersdk_uniffi.providerKinds
import uniffi.hypersdk_uniffi.verifyPackage
import uniffi.hypersdk_uniffi.vsphereProvider

class HypersdkTest {
    private val root = File(System.getProperty("hypersdk.root")).canonicalFile
    private val examples = File(root, "examples/vms").path

    // Removed with everything in it when the test JVM exits (deleteOnExit
    // removes only empty directories, and exports are not).
    private fun tmp(): File = Files.createTempDirectory("hypersdk-kotlin-").toFile().also { dir ->
        Runtime.getRuntime().addShutdownHook(Thread { dir.deleteRecursively() })
    }

    private fun run(vararg cmd: String, dir: File? = null): String {
        val p = ProcessBuilder(*cmd).directory(dir).redirectErrorStream(true).start()
        val out = p.inputStream.bufferedReader().readText()
        assertEquals(0, p.waitFor(), "${cmd.joinToString(" ")}: $out")
        return out
    }

    @Test
    fun listsAndExportsTheExampleVmWithProgressThenVerifies() {
        val vms = localProvider(examples)
        assertEquals("local", vms.name())
        val listed = vms.listVms()
        assertEquals(listOf("demo-vm"), listed.map { it.name })
        assertEquals(2uL, listed[0].disks)

        val events = CopyOnWriteArrayList<ProgressEvent>()
        val out = tmp()
        val report = vms.export(
            "demo-vm", out.path, ExportSettings(verify = true),
            object : ProgressListener {
                override fun onProgress(event: ProgressEvent) {
                    events.add(event)
                }
            },
            null,
        )
        val ova = File(report.location)
        assertEquals(File(out, "demo-vm.ova").path, ova.path)
        assertTrue(report.verified)
        assertEquals(ova.length().toULong(), report.size)
        assertTrue(events.isNotEmpty())
        assertEquals("done", events.last().phase)
        val sha = MessageDigest.getInstance("SHA-256").digest(ova.readBytes()).joinToString("") { "%02x".format(it) }
        assertTrue(report.json.contains(sha), "the report names the OVA's SHA-256")

        val summary = verifyPackage(ova.path, null, null)
        assertTrue(summary.verified)
        assertEquals("demo-vm.mf", summary.manifest)
        // Every VMDK in the OVA passes qemu-img check.
        val x = tmp()
        run("tar", "-xf", ova.path, "-C", x.path)
        val disks = x.listFiles()!!.filter { it.name.endsWith(".vmdk") }
        assertEquals(2, disks.size)
        disks.forEach { run("qemu-img", "check", it.path) }
    }

    @Test
    fun failuresAreTypedExceptions() {
        val vms = localProvider(examples)
        val out = tmp()
        val missing = assertFailsWith<HypersdkException.NotFound> {
            vms.export("no-such-vm", out.path, ExportSettings(), null, null)
        }
        assertTrue(missing.detail.contains("no-such-vm"), missing.detail)
        assertFailsWith<HypersdkException.InvalidArgument> {
            vms.export("demo-vm", out.path, ExportSettings(compress = "lz4"), null, null)
        }
        vms.export("demo-vm", out.path, ExportSettings(format = "ovf", digest = "sha512"), null, null)
        assertFailsWith<HypersdkException.AlreadyExists> {
            vms.export("demo-vm", out.path, ExportSettings(format = "ovf"), null, null)
        }
        assertFailsWith<HypersdkException.Format> {
            verifyPackage(File(out, "missing.ova").path, null, null)
        }
    }

    @Test
    fun cancelStopsTheExportAndResumeFinishesIt() {
        val vms = localProvider(examples)
        val out = tmp()
        val cancel = Cancel()
        val settings = ExportSettings(format = "ovf", bwlimit = "16M")
        assertFailsWith<HypersdkException.Cancelled> {
            vms.export(
                "demo-vm", out.path, settings,
                object : ProgressListener {
                    override fun onProgress(event: ProgressEvent) {
                        if (event.phase == "disk" && event.bytesDone >= (24uL shl 20)) cancel.cancel()
                    }
                },
                cancel,
            )
        }
        assertFalse(File(out, "demo-vm").exists())
        val resumed = vms.export("demo-vm", out.path, settings.copy(bwlimit = null, resume = true), null, null)
        assertTrue(verifyPackage(resumed.location, null, null).verified)
    }

    @Test
    fun exportsAVmOfTheVcenterSimulator() {
        val launcher = File(root, "target/peers/vcsim-launcher")
        assertTrue(launcher.exists(), "$launcher is missing: run bash tests/peers/install.sh")
        val sim = ProcessBuilder(launcher.path, "-vm", "ktvm=8,2").redirectError(ProcessBuilder.Redirect.INHERIT).start()
        try {
            val line = sim.inputStream.bufferedReader().readLine()
            fun field(name: String) = Regex("\"$name\":\"([^\"]*)\"").find(line)!!.groupValues[1]
            val url = java.net.URI(field("url"))
            val (user, password) = url.userInfo.split(":", limit = 2)
            val plain = "${url.scheme}://${url.host}:${url.port}${url.path}"
            assertFailsWith<HypersdkException.Provider> {
                // The simulator's certificate is self-signed: refused unless pinned.
                vsphereProvider(plain, user, password, false, null, null)
            }
            val vc = vsphereProvider(plain, user, password, false, field("thumbprint"), null)
            assertEquals("vsphere", vc.name())
            assertTrue(vc.listVms().any { it.name == "ktvm" && it.disks == 2uL })
            val report = vc.export("ktvm", tmp().path, ExportSettings(verify = true), null, null)
            assertEquals("vsphere", report.provider)
            assertTrue(report.verified)
            assertTrue(verifyPackage(report.location, null, null).verified)
            vc.logout()
            // Any provider through the registry, by URL with settings as JSON.
            val viaUrl = connectProvider(
                "vsphere://$user@${url.host}:${url.port}${url.path}",
                "{\"password\": \"$password\", \"thumbprint\": \"${field("thumbprint")}\"}",
            )
            assertTrue(viaUrl.listVms().any { it.name == "ktvm" })
            viaUrl.logout()
            assertEquals(listOf("local", "vsphere", "aws", "azure", "gcp", "kubevirt", "proxmox", "hyperv"), providerKinds())
        } finally {
            sim.outputStream.close()
            sim.waitFor(10, java.util.concurrent.TimeUnit.SECONDS) || sim.destroyForcibly().let { true }
        }
    }
}
