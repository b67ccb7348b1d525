using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

public sealed class SmokeTests : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    [Fact(Timeout = 60_000)]
    public async Task DemoVm_Started_SerialShowsPromptAndCounter()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("smoke");
        await c.ActAsync("smoke", "start");
        await c.WaitForSerialAsync("smoke", "demo# ");
        await c.WaitForSerialAsync("smoke", @"COUNTER 2\r?\n");
        Assert.Equal("running", await c.StateAsync("smoke"));
    }
}
