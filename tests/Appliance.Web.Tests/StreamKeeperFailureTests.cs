using Appliance.Core.Checkpoints;
using Appliance.Core.Emulation;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace Appliance.Web.Tests;

/// <summary>A keeper that cannot start or dies costs only its protection: background-snapshot saves go on.</summary>
public sealed class StreamKeeperFailureTests
{
    [Fact(Timeout = 180_000)]
    public async Task LiveCheckpoint_KeeperCannotStart_SavedWithoutIt()
    {
        // Fault injection: a "keeper" that exits at once without connecting.
        await using var app = new ApplianceFactory(services: s => s.AddSingleton(new StreamKeeperCommand(["/bin/false"])));
        var c = app.Api();
        await StartDemoAsync(c, "nokeeper");

        var cp = await c.SaveCheckpointAsync("nokeeper", "unprotected", "live");
        Assert.Equal("ready", cp.GetProperty("status").GetString());
        Assert.Equal("background-snapshot", cp.GetProperty("method").GetString());
        Assert.Null(app.Services.GetRequiredService<StreamKeeperClient>().Pid);
        Assert.Equal("running", await c.StateAsync("nokeeper"));
    }

    [Fact(Timeout = 180_000)]
    public async Task LiveCheckpoint_KeeperKilledBetweenSaves_NextSaveStartsANewOne()
    {
        await using var app = new ApplianceFactory();
        var c = app.Api();
        await StartDemoAsync(c, "rekeep");
        var keeper = app.Services.GetRequiredService<StreamKeeperClient>();

        Assert.Equal("ready", (await c.SaveCheckpointAsync("rekeep", "one", "live")).GetProperty("status").GetString());
        var first = keeper.Pid ?? throw new InvalidOperationException("no keeper after a background-snapshot save");
        Assert.True(NativeProcess.Signal(first, NativeProcess.SIGKILL));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (keeper.Pid is not null && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Null(keeper.Pid);

        var two = await c.SaveCheckpointAsync("rekeep", "two", "live");
        Assert.Equal("ready", two.GetProperty("status").GetString());
        Assert.Equal("background-snapshot", two.GetProperty("method").GetString());
        Assert.NotNull(keeper.Pid);
        Assert.NotEqual(first, keeper.Pid);
    }

    private static async Task StartDemoAsync(HttpClient c, string name)
    {
        await c.CreateDemoVmAsync(name);
        await c.ActAsync(name, "start");
        await c.WaitForSerialAsync(name, @"COUNTER 2\r?\n", TimeSpan.FromSeconds(60));
    }
}
