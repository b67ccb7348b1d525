using System.Net.Http.Json;
using Appliance.Browser.Tests.Infrastructure;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Appliance.Browser.Tests;

public sealed class DashboardTests : BrowserTest
{
    private async Task<IPage> OpenAsync(string path)
    {
        return await _browser.SignInAsync(_app, path);
    }

    [Fact(Timeout = 150_000)]
    public async Task Dashboard_VmStartedThroughApi_RowTurnsRunningWithoutReload()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("live");
        var page = await OpenAsync("/");
        var state = page.Locator("tr[data-vm='live'] .state");
        await Expect(state).ToHaveTextAsync("stopped");
        await Expect(page.Locator("tr[data-vm='live'] button[data-action='start']")).ToBeEnabledAsync();
        await c.ActAsync("live", "start");
        await Expect(state).ToHaveTextAsync("running");
    }

    [Fact(Timeout = 120_000)]
    public async Task Dashboard_CreateFromFormAndStartByClick_DetailShowsGuestOutput()
    {
        var page = await OpenAsync("/");
        var create = page.Locator("form.create button[type=submit]");
        await Expect(create).ToBeEnabledAsync();
        await page.FillAsync("form.create input[name=name]", "clicked");
        await create.ClickAsync();
        var row = page.Locator("tr[data-vm='clicked']");
        await Expect(row.Locator(".state")).ToHaveTextAsync("stopped");
        await row.Locator("button[data-action='start']").ClickAsync();
        await Expect(row.Locator(".state")).ToHaveTextAsync("running", new() { Timeout = 30_000 });

        await row.Locator("a", new() { HasText = "clicked" }).ClickAsync();
        await Expect(page.Locator("[data-testid=state]")).ToHaveTextAsync("running");
        await Expect(page.Locator("[data-testid=serial]")).ToContainTextAsync("COUNTER 2", new() { Timeout = 30_000 });
        await Expect(page.Locator("[data-testid=thumbnail]")).ToBeVisibleAsync();
        await page.WaitForFunctionAsync("() => { const i = document.querySelector('[data-testid=thumbnail]'); return i && i.complete && i.naturalWidth === 480; }");
        await page.Locator("button[data-action='embed']").ClickAsync();
        var frame = page.FrameLocator("iframe.console-frame");
        await Expect(frame.Locator("body")).ToHaveAttributeAsync("data-state", "connected", new() { Timeout = 30_000 });
        await page.ScreenshotAsync(new() { Path = Path.Combine(TestPaths.RepoRoot, "build", "dashboard-detail.png") });

        await page.Locator("button[data-action='poweroff']").ClickAsync();
        await Expect(page.Locator("[data-testid=state]")).ToHaveTextAsync("stopped", new() { Timeout = 30_000 });
    }

    [Fact(Timeout = 120_000)]
    public async Task Dashboard_InvalidName_ShowsReasonAndCreatesNothing()
    {
        var page = await OpenAsync("/");
        var create = page.Locator("form.create button[type=submit]");
        await Expect(create).ToBeEnabledAsync();
        await page.FillAsync("form.create input[name=name]", "Not Valid!");
        await create.ClickAsync();
        await Expect(page.Locator("form.create .error")).ToContainTextAsync("name");
        Assert.Equal(0, (await (await _app.Api().GetAsync("/api/v1/vms")).JsonAsync()).GetProperty("total").GetInt32());
    }

    [Fact(Timeout = 180_000)]
    public async Task VmPage_SaveCheckpointAndRestoreByClick_GuestRunsAgainFromIt()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("saver");
        await c.ActAsync("saver", "start");
        await c.WaitForSerialAsync("saver", @"COUNTER 2\r?\n");
        var page = await OpenAsync("/vms/saver");
        var save = page.Locator("[data-testid=save-checkpoint] button[type=submit]");
        await Expect(save).ToBeEnabledAsync();
        await page.FillAsync("input[name=checkpoint-name]", "ui-cp");
        await save.ClickAsync();
        var row = page.Locator("tr[data-checkpoint='ui-cp']");
        await Expect(row.Locator(".status")).ToHaveTextAsync("ready", new() { Timeout = 60_000 });
        await row.Locator("button[data-action='restore']").ClickAsync();
        await Expect(page.Locator(".checkpoints [role=status]")).ToContainTextAsync("restore done", new() { Timeout = 60_000 });
        await Expect(page.Locator("[data-testid=state]")).ToHaveTextAsync("running");
        var audit = await (await c.GetAsync("/api/v1/audit?action=dashboard")).JsonAsync();
        Assert.Contains(audit.GetProperty("items").EnumerateArray(), a => a.GetProperty("action").GetString()!.Contains("restore-checkpoint"));
    }

    [Fact(Timeout = 120_000)]
    public async Task Dashboard_Viewer_SeesStateButNoActionsOrCreateForm()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("watched");
        var created = await c.PostAsJsonAsync("/api/v1/users", new { name = "watcher", role = "viewer", password = "viewer-password-1" });
        Assert.True(created.IsSuccessStatusCode, await created.Content.ReadAsStringAsync());
        var page = await _browser.SignInAsync(_app, "/", "watcher", "viewer-password-1");
        await Expect(page.Locator("tr[data-vm='watched'] .state")).ToHaveTextAsync("stopped");
        await page.WaitForFunctionAsync("() => window.Blazor !== undefined");
        await Expect(page.Locator("tr[data-vm='watched'] button")).ToHaveCountAsync(0);
        await Expect(page.Locator("form.create")).ToHaveCountAsync(0);
        await page.GotoAsync(new Uri(_app.BaseAddress, "/vms/watched").ToString());
        await Expect(page.Locator("[data-testid=state]")).ToHaveTextAsync("stopped");
        await Expect(page.Locator("[data-testid=save-checkpoint]")).ToHaveCountAsync(0);
        await Expect(page.Locator("button[data-action]")).ToHaveCountAsync(0);
    }
}
