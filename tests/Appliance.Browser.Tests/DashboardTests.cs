using Appliance.Browser.Tests.Infrastructure;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Browser.Tests;

public sealed class DashboardTests : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new();
    private Infrastructure.Browser _browser = null!;

    public async Task InitializeAsync() => _browser = await Infrastructure.Browser.LaunchAsync();

    public async Task DisposeAsync()
    {
        await _browser.DisposeAsync();
        await _app.DisposeAsync();
    }

    [Fact(Timeout = 90_000)]
    public async Task Dashboard_VmStartedThroughApi_RowTurnsRunningWithoutReload()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("live");
        var page = await _browser.SignInAsync(_app);
        var state = page.Locator("tr[data-vm='live'] .state");
        await Microsoft.Playwright.Assertions.Expect(state).ToHaveTextAsync("stopped");
        await page.WaitForFunctionAsync("() => window.Blazor !== undefined");
        await c.ActAsync("live", "start");
        await Microsoft.Playwright.Assertions.Expect(state).ToHaveTextAsync("running");
    }
}
