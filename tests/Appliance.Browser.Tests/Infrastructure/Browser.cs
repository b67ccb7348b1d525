using Microsoft.Playwright;

namespace Appliance.Browser.Tests.Infrastructure;

/// <summary>Debian's Chromium driven by Playwright; never a downloaded browser.</summary>
public sealed class Browser : IAsyncDisposable
{
    private readonly string _profile = Path.Combine(Path.GetTempPath(), "appl-chromium-" + Guid.NewGuid().ToString("N")[..8]);
    private IPlaywright? _pw;
    public IBrowserContext Context { get; private set; } = null!;

    public static async Task<Browser> LaunchAsync()
    {
        var b = new Browser();
        b._pw = await Playwright.CreateAsync();
        b.Context = await b._pw.Chromium.LaunchPersistentContextAsync(b._profile, new BrowserTypeLaunchPersistentContextOptions
        {
            ExecutablePath = "/usr/bin/chromium",
            Headless = true,
            ViewportSize = new ViewportSize { Width = 1280, Height = 900 },
            Args =
            [
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
            ],
        });
        b.Context.SetDefaultTimeout(30_000);
        // Assertions poll until this deadline (5 s by default): the suite runs beside QEMU guests on two cores.
        Assertions.SetDefaultExpectTimeout(20_000);
        return b;
    }

    public async Task<IPage> NewPageAsync() => await Context.NewPageAsync();

    public async ValueTask DisposeAsync()
    {
        await Context.CloseAsync();
        _pw?.Dispose();
        try { Directory.Delete(_profile, recursive: true); } catch (IOException) { }
    }
}
