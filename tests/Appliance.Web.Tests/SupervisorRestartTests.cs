using System.Net;
using System.Net.Http.Json;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

/// <summary>The appliance as a real OS process: killed, restarted, refused.</summary>
public sealed class SupervisorRestartTests
{
    private static int CountEmulatorsFor(string vmId) =>
        Directory.EnumerateDirectories("/proc").Count(p =>
        {
            try { return File.ReadAllText(Path.Combine(p, "cmdline")).Contains(vmId, StringComparison.Ordinal) && File.ReadAllText(Path.Combine(p, "cmdline")).Contains("qemu-system", StringComparison.Ordinal); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
        });

    [Fact(Timeout = 180_000)]
    public async Task KillAppliance_VmRunning_RestartReattachesSamePidStillCountingNoDuplicate()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        var c = app.Api();
        var vm = await c.CreateDemoVmAsync("survivor");
        var id = vm.GetProperty("id").GetString()!;
        await c.ActAsync("survivor", "start");
        await c.WaitForSerialAsync("survivor", @"COUNTER 2\r?\n");
        var pid = (await (await c.GetAsync("/api/v1/vms/survivor")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();

        await app.KillAsync();
        Assert.True(Directory.Exists($"/proc/{pid}"), "the guest died with the appliance");
        var counterWhileDown = ApiExtensions.LastCounter(await File.ReadAllTextAsync(Directory.GetFiles(Path.Combine(app.DataDir, "logs"), "*-serial.log").Single()));

        await app.StartAsync();
        c = app.Api();
        var after = await (await c.GetAsync("/api/v1/vms/survivor")).JsonAsync();
        Assert.Equal("running", after.GetProperty("state").GetString());
        Assert.Equal(pid, after.GetProperty("runtime").GetProperty("pid").GetInt32());
        Assert.Equal(1, CountEmulatorsFor(id));
        await c.WaitForSerialAsync("survivor", $@"COUNTER {counterWhileDown + 2}\r?\n");

        // Re-attached means controllable: the serial console and lifecycle work on the adopted process.
        await c.ActAsync("survivor", "pause");
        await c.ActAsync("survivor", "resume");
        var start = await c.PostAsync("/api/v1/vms/survivor/start", null);
        Assert.Equal(HttpStatusCode.Conflict, start.StatusCode);
        Assert.Equal(1, CountEmulatorsFor(id));
        await c.ActAsync("survivor", "shutdown");
        Assert.Equal("stopped", await c.StateAsync("survivor"));
        Assert.Equal(0, CountEmulatorsFor(id));
    }

    [Fact(Timeout = 180_000)]
    public async Task KillAppliance_EmulatorDiesWhileDown_MarkedCrashedOnRestart()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        var c = app.Api();
        await c.CreateDemoVmAsync("orphan");
        await c.ActAsync("orphan", "start");
        var pid = (await (await c.GetAsync("/api/v1/vms/orphan")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();
        await app.KillAsync();
        System.Diagnostics.Process.GetProcessById(pid).Kill();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Directory.Exists($"/proc/{pid}") && DateTime.UtcNow < deadline) await Task.Delay(50);

        await app.StartAsync();
        var v = await (await app.Api().GetAsync("/api/v1/vms/orphan")).JsonAsync();
        Assert.Equal("crashed", v.GetProperty("state").GetString());
        Assert.Contains("gone", v.GetProperty("runtime").GetProperty("lastError").GetString());
        Assert.Empty(Directory.GetFiles(Path.Combine(app.DataDir, "run"), "*", SearchOption.AllDirectories));
    }

    [Fact(Timeout = 120_000)]
    public async Task Restart_ExistingDatabase_KeepsDataAndRunsNoScriptAgain()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        await app.Api().CreateDemoVmAsync("kept");
        await app.StopAsync();
        await app.StartAsync();
        Assert.Equal(HttpStatusCode.OK, (await app.Api().GetAsync("/api/v1/vms/kept")).StatusCode);
        Assert.DoesNotContain("Applied migrations", app.Output.Split("Now listening")[^1]);
        var health = await (await app.Api().GetAsync("/healthz")).JsonAsync();
        Assert.Equal("ok", health.GetProperty("database").GetProperty("status").GetString());
    }

    [Theory(Timeout = 60_000)]
    [InlineData("Appliance__Accelerator", "warp", "Accelerator")]
    [InlineData("Appliance__QemuPath", "qemu-system-x86_64", "QemuPath")]
    [InlineData("Appliance__ShutdownTimeoutSeconds", "0", "ShutdownTimeoutSeconds")]
    public async Task Start_BadSetting_ExitsWithOneLineReason(string key, string value, string named)
    {
        await using var app = new ApplianceProcess(env: new Dictionary<string, string> { [key] = value });
        await app.StartAsync(waitHealthy: false);
        var code = await app.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(2, code);
        var line = Assert.Single(app.Output.Split('\n'), l => l.StartsWith("appliance: invalid configuration:", StringComparison.Ordinal));
        Assert.Contains(named, line);
        Assert.DoesNotContain("   at ", app.Output);
    }

    [Fact(Timeout = 60_000)]
    public async Task Start_DatabaseFromNewerVersion_RefusesWithOneLine()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        await app.StopAsync();
        var db = new Appliance.Data.Database(Path.Combine(app.DataDir, "appliance.db"));
        await using (var conn = await db.OpenAsync())
        {
            using var cmd = conn.CreateCommand();
            cmd.CommandText = "INSERT INTO schema_migrations(name, sha256, applied_at) VALUES ('9999_future.sql', 'x', '2030-01-01')";
            await cmd.ExecuteNonQueryAsync();
        }
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        await app.StartAsync(waitHealthy: false);
        Assert.Equal(3, await app.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        var line = Assert.Single(app.Output.Split('\n'), l => l.StartsWith("appliance: database migration refused:", StringComparison.Ordinal));
        Assert.Contains("9999_future.sql", line);
        Assert.DoesNotContain("   at ", app.Output);
    }
}
