using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

public sealed class CheckpointsCrashTests
{
    [Theory(Timeout = 300_000)]
    [InlineData(false)]
    public async Task ApplianceKilledMidSave_Restarted_NoPartialCheckpointNoStrayFiles(bool backgroundSnapshot)
    {
        await using var app = new ApplianceProcess(env: new Dictionary<string, string> { ["Appliance__Checkpoints__BackgroundSnapshot"] = backgroundSnapshot ? "true" : "false" });
        await app.StartAsync();
        var c = app.Api();
        var vmId = await BootFilledDemoAsync(app, c);
        var folder = Path.Combine(app.DataDir, "checkpoints", vmId.ToString("N"));
        await KillMidSaveAsync(app, c, folder);

        var settled = await QmpAnswersAsync(app.DataDir, TimeSpan.FromSeconds(60));
        await app.StartAsync();
        c = app.Api();
        await AssertNoPartialCheckpointAsync(app, c, folder);
        var vmNow = await (await c.GetAsync("/api/v1/vms/crash")).JsonAsync();
        Assert.True(vmNow.GetProperty("state").GetString() == "running", $"the guest survives the appliance's crash (QMP answered again after {settled}): " + vmNow);

        var again = await c.PostAsJsonAsync("/api/v1/vms/crash/checkpoints?wait=true", new { name = "after-restart", mode = "live" });
        Assert.Equal(HttpStatusCode.Created, again.StatusCode);
        var list = (await (await c.GetAsync("/api/v1/vms/crash/checkpoints")).JsonAsync()).GetProperty("items");
        Assert.Equal("ready", Assert.Single(list.EnumerateArray()).GetProperty("status").GetString());
    }

    /// <summary>
    /// The default live checkpoint is a background snapshot: QEMU 7.2 leaves the guest hung when the stream's reader
    /// vanishes, so the stream keeper reads it to its end after the appliance is killed.
    /// </summary>
    [Fact(Timeout = 300_000)]
    public async Task ApplianceKilledMidBackgroundSnapshot_Restarted_GuestRunsOnAndKeeperExitsAfterDraining()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        var c = app.Api();
        var vmId = await BootFilledDemoAsync(app, c);
        var folder = Path.Combine(app.DataDir, "checkpoints", vmId.ToString("N"));
        var keeper = 0;
        var partial = await KillMidSaveAsync(app, c, folder, whileStreaming: () => keeper = Assert.Single(KeeperPids(app.DataDir)));

        await app.StartAsync();
        c = app.Api();
        Assert.Equal("running", await c.StateAsync("crash"));
        var counter = ApiExtensions.LastCounter(await c.SerialLogAsync("crash"));
        await c.WaitForSerialAsync("crash", @"COUNTER (\d+)\r?\n", TimeSpan.FromSeconds(30),
            log => ApiExtensions.LastCounter(log) >= counter + 3 ? log : "");
        await AssertNoPartialCheckpointAsync(app, c, folder);
        Assert.False(File.Exists(partial));

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (IsRunning(keeper) && DateTime.UtcNow < deadline) await Task.Delay(50);
        var keeperLog = await File.ReadAllTextAsync(Path.Combine(app.DataDir, "logs", "stream-keeper.log"));
        Assert.False(IsRunning(keeper), "the stream keeper did not exit; its log:\n" + keeperLog);
        Assert.Matches(@"discarded [1-9]\d* bytes, end of stream", keeperLog);
        // Nothing of the old keeper is left, and the new appliance starts its own only for its first save.
        Assert.Empty(KeeperPids(app.DataDir));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(app.DataDir, "run", "keeper")));

        var again = await c.PostAsJsonAsync("/api/v1/vms/crash/checkpoints?wait=true", new { name = "after-restart", mode = "live" });
        Assert.Equal(HttpStatusCode.Created, again.StatusCode);
        Assert.Equal("background-snapshot", (await again.JsonAsync()).GetProperty("method").GetString());
        var second = Assert.Single(KeeperPids(app.DataDir));
        Assert.NotEqual(keeper, second);

        // A keeper whose appliance is gone and that holds nothing exits at once.
        await app.KillAsync();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (IsRunning(second) && DateTime.UtcNow < deadline) await Task.Delay(50);
        Assert.False(IsRunning(second), "the idle keeper outlived its appliance");
    }

    private static async Task<Guid> BootFilledDemoAsync(ApplianceProcess app, HttpClient c)
    {
        var vm = await c.CreateDemoVmAsync("crash");
        await c.ActAsync("crash", "start");
        await c.WaitForSerialAsync("crash", "demo# ", TimeSpan.FromSeconds(60));
        // Random data (QEMU sends zero pages as flags, not bytes) in RAM makes the stream long enough (hundreds of MB) to be caught half-written.
        await app.SendSerialAsync("crash", "dd if=/dev/urandom of=/tmp/fill bs=1M count=96 && echo FIL''LED");
        await c.WaitForSerialAsync("crash", @"(?<!')FILLED\r?\n", TimeSpan.FromSeconds(120));
        return vm.GetProperty("id").GetGuid();
    }

    /// <summary>Starts a live checkpoint and kills the appliance (SIGKILL) once part of its state is on disk.</summary>
    private static async Task<string> KillMidSaveAsync(ApplianceProcess app, HttpClient c, string folder, Action? whileStreaming = null)
    {
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
        whileStreaming?.Invoke();
        await app.KillAsync();
        Assert.True(File.Exists(partial), "the kill landed while the state was being written");
        return partial;
    }

    private static async Task AssertNoPartialCheckpointAsync(ApplianceProcess app, HttpClient c, string folder)
    {
        var items = (await (await c.GetAsync("/api/v1/vms/crash/checkpoints")).JsonAsync()).GetProperty("items");
        Assert.Empty(items.EnumerateArray());
        Assert.False(Directory.Exists(folder) && Directory.EnumerateFileSystemEntries(folder).Any(),
            "leftovers: " + (Directory.Exists(folder) ? string.Join(", ", Directory.EnumerateFileSystemEntries(folder)) : ""));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(app.DataDir, "checkpoints"), ".import-*"));
    }

    /// <summary>Stream keepers of the appliance on <paramref name="dataDir"/> (their control socket is under it).</summary>
    private static List<int> KeeperPids(string dataDir)
    {
        var pids = new List<int>();
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out var pid)) continue;
            string[] argv;
            try { argv = File.ReadAllText(Path.Combine(proc, "cmdline")).Split('\0'); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var i = Array.IndexOf(argv, "--stream-keeper");
            if (i >= 0 && i + 1 < argv.Length && argv[i + 1].StartsWith(dataDir + "/", StringComparison.Ordinal) && IsRunning(pid)) pids.Add(pid);
        }
        return pids;
    }

    /// <summary>Alive and not a zombie waiting to be reaped.</summary>
    private static bool IsRunning(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/stat").Split(") ")[^1][0] != 'Z'; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
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
