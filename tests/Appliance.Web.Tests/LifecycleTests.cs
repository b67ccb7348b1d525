using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Appliance.Core.Supervision;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace Appliance.Web.Tests;

/// <summary>Real QEMU (TCG) running the demo guest through the lifecycle API.</summary>
public sealed class LifecycleTests : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new(settings: new Dictionary<string, string?> { ["Appliance:ShutdownTimeoutSeconds"] = "30" });
    private HttpClient _c = null!;

    public Task InitializeAsync()
    {
        _c = _app.Api();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _app.DisposeAsync();

    private async Task<string> BootAsync(string name, object? extra = null)
    {
        await _c.CreateDemoVmAsync(name, extra);
        await _c.ActAsync(name, "start");
        await _c.WaitForSerialAsync(name, "demo# ");
        return name;
    }

    private async Task<int> CounterAsync(string vm) => ApiExtensions.LastCounter(await _c.SerialLogAsync(vm));

    [Fact(Timeout = 90_000)]
    public async Task PauseResume_RunningGuest_CounterStopsThenContinues()
    {
        var vm = await BootAsync("pr");
        await _c.WaitForSerialAsync(vm, @"COUNTER 1\r?\n");
        await _c.ActAsync(vm, "pause");
        Assert.Equal("paused", await _c.StateAsync(vm));
        var atPause = await CounterAsync(vm);
        // Paused vCPUs print nothing: poll a while and see the counter stand still.
        var deadline = DateTime.UtcNow.AddSeconds(2.5);
        while (DateTime.UtcNow < deadline)
        {
            Assert.True(await CounterAsync(vm) <= atPause + 1, "counter advanced while paused");
            await Task.Delay(250);
        }
        var frozen = await CounterAsync(vm);
        await _c.ActAsync(vm, "resume");
        Assert.Equal("running", await _c.StateAsync(vm));
        await _c.WaitForSerialAsync(vm, $@"COUNTER {frozen + 2}\r?\n");
    }

    [Fact(Timeout = 90_000)]
    public async Task Reset_RunningGuest_RebootsAndCountsFromZeroAgain()
    {
        var vm = await BootAsync("rst");
        await _c.WaitForSerialAsync(vm, @"COUNTER 3\r?\n");
        var before = (await _c.SerialLogAsync(vm)).Length;
        var pidBefore = (await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();
        await _c.ActAsync(vm, "reset");
        await _c.WaitForSerialAsync(vm, @"COUNTER 0\r?\n", select: log => log[before..]);
        var after = await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        Assert.Equal("running", after.GetProperty("state").GetString());
        Assert.Equal(pidBefore, after.GetProperty("runtime").GetProperty("pid").GetInt32());
    }

    [Fact(Timeout = 90_000)]
    public async Task Shutdown_GuestHandlesAcpi_StopsCleanlyBeforeTimeout()
    {
        var vm = await BootAsync("acpi");
        var started = DateTime.UtcNow;
        var job = await _c.ActAsync(vm, "shutdown", "&timeoutSeconds=60");
        Assert.Equal("succeeded", job.GetProperty("status").GetString());
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(30), "the guest should power off on ACPI, not by timeout");
        var v = await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        Assert.Equal("stopped", v.GetProperty("state").GetString());
        Assert.Equal(JsonValueKind.Null, v.GetProperty("runtime").GetProperty("lastError").ValueKind);
        Assert.Contains("reboot: Power down", await _c.SerialLogAsync(vm));
    }

    [Fact(Timeout = 90_000)]
    public async Task Shutdown_GuestIgnoresAcpi_ForcedOffAfterTimeout()
    {
        var vm = await BootAsync("deaf", new { kernelBoot = new { kernel = "demo-vmlinuz", initrd = "demo-initrd.img", cmdline = "console=tty0 console=ttyS0 no_timer_check demo.noacpi" } });
        var started = DateTime.UtcNow;
        var job = await _c.ActAsync(vm, "shutdown", "&timeoutSeconds=3");
        var took = DateTime.UtcNow - started;
        Assert.Equal("succeeded", job.GetProperty("status").GetString());
        Assert.True(took >= TimeSpan.FromSeconds(3), $"forced off before the timeout ({took})");
        Assert.Equal("stopped", await _c.StateAsync(vm));
        Assert.DoesNotContain("reboot: Power down", await _c.SerialLogAsync(vm));
    }

    [Fact(Timeout = 90_000)]
    public async Task Poweroff_RunningGuest_StopsAtOnceAndCanStartAgain()
    {
        var vm = await BootAsync("pull");
        var id = (await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync()).GetProperty("id").GetString();
        var log = await File.ReadAllLinesAsync(Path.Combine(_app.DataDir, "logs", $"{id}.log"));
        Assert.StartsWith("=== ", log[0]);
        Assert.Contains("/usr/bin/qemu-system-x86_64 -nodefaults", log[0]);
        Assert.Contains($"-uuid {id}", log[0]);
        await _c.ActAsync(vm, "poweroff");
        Assert.Equal("stopped", await _c.StateAsync(vm));
        Assert.Empty(Directory.GetFiles(Path.Combine(_app.DataDir, "run"), "*", SearchOption.AllDirectories));
        await _c.ActAsync(vm, "start");
        await _c.WaitForSerialAsync(vm, "demo# .*\n?(.|\n)*demo# ");
    }

    [Fact(Timeout = 90_000)]
    public async Task KillEmulator_Sigkill_CrashedWithin2sWithEvent()
    {
        var vm = await BootAsync("victim");
        var info = await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        var pid = info.GetProperty("runtime").GetProperty("pid").GetInt32();
        var id = Guid.Parse(info.GetProperty("id").GetString()!);
        using var sub = _app.Supervisor.Bus.Subscribe();
        var killedAt = DateTime.UtcNow;
        System.Diagnostics.Process.GetProcessById(pid).Kill();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        VmSnapshot? crashed = null;
        await foreach (var e in sub.Reader.ReadAllAsync(cts.Token))
            if (e is VmChanged c && c.Snapshot.VmId == id && c.Snapshot.State == Appliance.Core.Vms.VmState.Crashed) { crashed = c.Snapshot; break; }
        Assert.NotNull(crashed);
        Assert.True(DateTime.UtcNow - killedAt < TimeSpan.FromSeconds(2));
        Assert.Contains("signal 9", crashed!.LastError);
        var v = await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        Assert.Equal("crashed", v.GetProperty("state").GetString());
        Assert.Equal(137, v.GetProperty("runtime").GetProperty("exitCode").GetInt32());
    }

    [Fact(Timeout = 120_000)]
    public async Task RestartPolicyOnCrash_EmulatorKilled_StartsAgainByItself()
    {
        var vm = await BootAsync("phoenix", new { restartPolicy = "on-crash" });
        var pid = (await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();
        var before = (await _c.SerialLogAsync(vm)).Length;
        System.Diagnostics.Process.GetProcessById(pid).Kill();
        await _c.WaitForSerialAsync(vm, "demo# ", TimeSpan.FromSeconds(40), select: log => log[before..]);
        var v = await (await _c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        Assert.Equal("running", v.GetProperty("state").GetString());
        Assert.NotEqual(pid, v.GetProperty("runtime").GetProperty("pid").GetInt32());
    }

    [Fact(Timeout = 90_000)]
    public async Task Actions_WrongState_Conflict409WithCurrentState()
    {
        await _c.CreateDemoVmAsync("idle");
        var r = await _c.PostAsync("/api/v1/vms/idle/pause", null);
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        var p = await r.JsonAsync();
        Assert.Equal("urn:appliance:problem:invalid-state", p.GetProperty("type").GetString());
        Assert.Equal("stopped", p.GetProperty("state").GetString());
        await _c.ActAsync("idle", "start");
        var again = await _c.PostAsync("/api/v1/vms/idle/start", null);
        Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
        Assert.Equal("running", (await again.JsonAsync()).GetProperty("state").GetString());
        var del = await _c.DeleteAsync("/api/v1/vms/idle");
        Assert.Equal(HttpStatusCode.Conflict, del.StatusCode);
    }

    [Fact(Timeout = 90_000)]
    public async Task Start_Accepted_JobReportsProgressToCompletion()
    {
        await _c.CreateDemoVmAsync("jobs");
        var r = await _c.PostAsync("/api/v1/vms/jobs/start", null);
        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        var job = await r.JsonAsync();
        var location = r.Headers.Location!.ToString();
        Assert.Equal($"/api/v1/jobs/{job.GetProperty("id").GetString()}", location);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        JsonElement j;
        do
        {
            j = await (await _c.GetAsync(location)).JsonAsync();
            if (j.GetProperty("status").GetString() is "succeeded" or "failed") break;
            await Task.Delay(50);
        } while (DateTime.UtcNow < deadline);
        Assert.Equal("succeeded", j.GetProperty("status").GetString());
        Assert.Equal("running", j.GetProperty("result").GetProperty("state").GetString());
    }

    [Fact(Timeout = 90_000)]
    public async Task SerialWebSocket_CommandTyped_OutputComesBack()
    {
        var vm = await BootAsync("typist");
        await _app.SendSerialAsync(vm, "echo $((6*7))-marker");
        await _c.WaitForSerialAsync(vm, @"\n42-marker");
    }

    [Fact(Timeout = 120_000)]
    public async Task FeatureMatrix_SataDiskNicsVirtioDisplayPcMachine_QemuAcceptsAndRuns()
    {
        var r = await _c.PostAsJsonAsync("/api/v1/vms", new
        {
            name = "matrix", template = "demo", machine = "pc",
            disks = new object[] { new { name = "root", sizeMiB = 16, bus = "sata" }, new { name = "data", sizeMiB = 16, bus = "virtio" } },
            nics = new object[] { new { model = "virtio", portForwards = new[] { new { protocol = "tcp", hostAddress = "127.0.0.1", hostPort = FreePort(), guestPort = 22 } } }, new { model = "e1000" } },
            display = new { type = "virtio", width = 1280, height = 800 },
        });
        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        await _c.ActAsync("matrix", "start");
        await _c.WaitForSerialAsync("matrix", "demo# ");
        Assert.Equal("running", await _c.StateAsync("matrix"));
        await _c.ActAsync("matrix", "poweroff");
    }

    private static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
