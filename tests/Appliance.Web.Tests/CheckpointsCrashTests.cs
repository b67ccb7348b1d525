using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

public sealed class CheckpointsCrashTests
{
    [Theory(Timeout = 300_000)]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ApplianceKilledMidSave_Restarted_NoPartialCheckpointNoStrayFiles(bool backgroundSnapshot)
    {
        await using var app = new ApplianceProcess(env: new Dictionary<string, string> { ["Appliance__Checkpoints__BackgroundSnapshot"] = backgroundSnapshot ? "true" : "false" });
        await app.StartAsync();
        var c = app.Api();
        var vm = await c.CreateDemoVmAsync("crash");
        var vmId = vm.GetProperty("id").GetGuid();
        await c.ActAsync("crash", "start");
        await c.WaitForSerialAsync("crash", "demo# ", TimeSpan.FromSeconds(60));
        // Random data (QEMU sends zero pages as flags, not bytes) in RAM makes the stream long enough (hundreds of MB) to be caught half-written.
        await app.SendSerialAsync("crash", "dd if=/dev/urandom of=/tmp/fill bs=1M count=96 && echo FIL''LED");
        await c.WaitForSerialAsync("crash", @"(?<!')FILLED\r?\n", TimeSpan.FromSeconds(120));

        var folder = Path.Combine(app.DataDir, "checkpoints", vmId.ToString("N"));
        var r = await c.PostAsJsonAsync("/api/v1/vms/crash/checkpoints", new { name = "interrupted", mode = "live" });
        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        string? partial = null;
        while (partial is null && DateTime.UtcNow < deadline)
        {
            partial = Directory.Exists(folder)
                ? Directory.EnumerateFiles(folder, "state", SearchOption.AllDirectories).FirstOrDefault(f => f.Contains("/.tmp-", StringComparison.Ordinal) && new FileInfo(f).Length > 0)
                : null;
            if (partial is null) await Task.Delay(2);
        }
        Assert.True(partial is not null, "no half-written state seen; appliance output:\n" + app.Output[Math.Max(0, app.Output.Length - 4000)..]);
        await app.KillAsync();
        Assert.True(File.Exists(partial), "the kill landed while the state was being written");

        var settled = await QmpAnswersAsync(app.DataDir, TimeSpan.FromSeconds(60));
        await app.StartAsync();
        c = app.Api();
        var items = (await (await c.GetAsync("/api/v1/vms/crash/checkpoints")).JsonAsync()).GetProperty("items");
        Assert.Empty(items.EnumerateArray());
        Assert.False(Directory.Exists(folder) && Directory.EnumerateFileSystemEntries(folder).Any(),
            "leftovers: " + (Directory.Exists(folder) ? string.Join(", ", Directory.EnumerateFileSystemEntries(folder)) : ""));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(app.DataDir, "checkpoints"), ".import-*"));
        var vmNow = await (await c.GetAsync("/api/v1/vms/crash")).JsonAsync();
        // QEMU 7.2 measured here: when the reader of a *background snapshot* vanishes mid-stream, the
        // emulator's main loop stays blocked (userfaultfd write-protection is never lifted), so the guest
        // cannot be re-attached. A live-migration save leaves it running. See README, Checkpoints.
        if (backgroundSnapshot) return;
        Assert.True(vmNow.GetProperty("state").GetString() == "running", $"the guest survives the appliance's crash (QMP answered again after {settled}): " + vmNow);

        var again = await c.PostAsJsonAsync("/api/v1/vms/crash/checkpoints?wait=true", new { name = "after-restart", mode = "live" });
        Assert.Equal(HttpStatusCode.Created, again.StatusCode);
        var list = (await (await c.GetAsync("/api/v1/vms/crash/checkpoints")).JsonAsync()).GetProperty("items");
        Assert.Equal("ready", Assert.Single(list.EnumerateArray()).GetProperty("status").GetString());
    }

    /// <summary>How long the orphaned emulator took to greet a new QMP client after its client was killed.</summary>
    private static async Task<TimeSpan> QmpAnswersAsync(string dataDir, TimeSpan timeout)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var sock = Directory.EnumerateFiles(Path.Combine(dataDir, "run"), "qmp.sock", SearchOption.AllDirectories).Single();
        while (sw.Elapsed < timeout)
        {
            using var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            try
            {
                await s.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(sock));
                var buf = new byte[16];
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                if (await s.ReceiveAsync(buf, System.Net.Sockets.SocketFlags.None, cts.Token) > 0) return sw.Elapsed;
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or OperationCanceledException) { }
            await Task.Delay(100);
        }
        return sw.Elapsed;
    }

}
