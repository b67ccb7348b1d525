using System.Buffers.Binary;
using Appliance.Browser.Tests.Infrastructure;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Appliance.Browser.Tests;

public sealed class ConsoleBrowserFixture : IAsyncLifetime
{
    public ApplianceFactory App { get; } = new();
    public HttpClient Api { get; private set; } = null!;
    public Infrastructure.Browser Browser { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Api = App.Api();
        Browser = await Infrastructure.Browser.LaunchAsync();
        // One sign-in for the browser profile; every page opened later carries the session cookie.
        await (await Browser.SignInAsync(App)).CloseAsync();
        await Api.CreateDemoVmAsync("web");
        await Api.ActAsync("web", "start");
        await Api.WaitForSerialAsync("web", "demo# ");
    }

    public async Task DisposeAsync()
    {
        await Browser.DisposeAsync();
        await App.DisposeAsync();
    }
}

public sealed class ConsoleTests(ConsoleBrowserFixture f) : IClassFixture<ConsoleBrowserFixture>
{
    private string Url(string path) => new Uri(f.App.BaseAddress, path).ToString();

    private async Task<(int W, int H)> ScreenSizeAsync(string vm)
    {
        var png = await f.Api.GetByteArrayAsync($"/api/v1/vms/{vm}/screenshot");
        return (BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)));
    }

    private const string DistinctColours = """
        () => {
            const c = document.querySelector('#screen canvas');
            if (!c || c.width === 0) return 0;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length && seen.size < 50; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            return seen.size;
        }
        """;

    [Fact(Timeout = 120_000)]
    public async Task ConsolePage_VmRunning_ShowsGuestScreenAndKeyboardReachesGuest()
    {
        var (w, h) = await ScreenSizeAsync("web");
        var page = await f.Browser.NewPageAsync();
        await page.GotoAsync(Url("/vms/web/console"));
        await Expect(page.Locator("body")).ToHaveAttributeAsync("data-state", "connected");
        var canvas = page.Locator("#screen canvas");
        await Expect(canvas).ToBeVisibleAsync();

        var size = await canvas.EvaluateAsync<int[]>("c => [c.width, c.height]");
        Assert.Equal(new[] { w, h }, size);
        await page.WaitForFunctionAsync($"() => ({DistinctColours})() > 1");

        var marker = "kbd" + Random.Shared.Next(100000, 999999);
        await canvas.ClickAsync();
        await page.Keyboard.TypeAsync($"echo {marker} ");
        await page.Keyboard.PressAsync("Shift+Period");
        await page.Keyboard.TypeAsync(" /dev/tty");
        await page.Keyboard.PressAsync("Shift+KeyS");
        await page.Keyboard.TypeAsync("0");
        await page.Keyboard.PressAsync("Enter");
        await f.Api.WaitForSerialAsync("web", marker + @"\r?\n");
        await page.CloseAsync();
    }

    [Fact(Timeout = 120_000)]
    public async Task ConsolePage_PasteAsTyping_TypesClipboardTextIntoGuest()
    {
        var page = await f.Browser.NewPageAsync();
        await page.GotoAsync(Url("/vms/web/console"));
        await Expect(page.Locator("body")).ToHaveAttributeAsync("data-state", "connected");
        var marker = "Paste" + Random.Shared.Next(100000, 999999);
        await page.ClickAsync("#paste");
        await page.FillAsync("#paste-text", $"echo \"{marker}\" > /dev/ttyS0\n");
        await page.ClickAsync("#paste-go");
        await f.Api.WaitForSerialAsync("web", marker + @"\r?\n");
        await page.CloseAsync();
    }

    [Fact(Timeout = 120_000)]
    public async Task SerialPage_Typing_ShowsGuestOutputInTerminal()
    {
        var page = await f.Browser.NewPageAsync();
        await page.GotoAsync(Url("/vms/web/serial"));
        await Expect(page.Locator("body")).ToHaveAttributeAsync("data-state", "connected");
        await page.Locator(".xterm").ClickAsync();
        await page.Keyboard.TypeAsync("echo term$((6*7))x");
        await page.Keyboard.PressAsync("Enter");
        await Expect(page.Locator(".xterm-rows")).ToContainTextAsync("term42x");
        await f.Api.WaitForSerialAsync("web", @"term42x\r?\n");
        await page.CloseAsync();
    }

    [Fact(Timeout = 150_000)]
    public async Task ConsolePage_VmPowerCycled_ReconnectsWithFreshTicket()
    {
        await f.Api.CreateDemoVmAsync("cycle");
        await f.Api.ActAsync("cycle", "start");
        var page = await f.Browser.NewPageAsync();
        var tickets = 0;
        page.Request += (_, r) => { if (r.Method == "POST" && r.Url.Contains("/console")) Interlocked.Increment(ref tickets); };
        await page.GotoAsync(Url("/vms/cycle/console"));
        var body = page.Locator("body");
        await Expect(body).ToHaveAttributeAsync("data-state", "connected");

        await f.Api.ActAsync("cycle", "poweroff");
        await Expect(body).ToHaveAttributeAsync("data-state", "waiting");
        await Expect(page.Locator("#status")).ToContainTextAsync("stopped");
        await f.Api.ActAsync("cycle", "start");
        await Expect(body).ToHaveAttributeAsync("data-state", "connected", new() { Timeout = 40_000 });
        Assert.True(tickets >= 2, $"{tickets} tickets requested");
        await page.WaitForFunctionAsync($"() => ({DistinctColours})() > 1");
        await page.CloseAsync();
    }
}
