using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Browser.Tests.Infrastructure;

/// <summary>One appliance and one Chromium per test class instance, both disposed after the test.</summary>
public abstract class BrowserTest : IAsyncLifetime
{
    protected readonly ApplianceFactory _app = new();
    protected Browser _browser = null!;

    public async Task InitializeAsync() => _browser = await Browser.LaunchAsync();

    public async Task DisposeAsync()
    {
        await _browser.DisposeAsync();
        await _app.DisposeAsync();
    }
}
