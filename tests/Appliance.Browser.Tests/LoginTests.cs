using Appliance.Browser.Tests.Infrastructure;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Appliance.Browser.Tests;

public sealed class LoginTests : BrowserTest
{
    [Fact(Timeout = 150_000)]
    public async Task SignIn_DashboardInteractiveUnderCsp_SignOut_ConsolePageRedirectsToLogin()
    {
        await _app.Api().CreateDemoVmAsync("seen");
        var violations = new List<string>();
        _browser.Context.Console += (_, m) => { if (m.Text.Contains("Content Security Policy", StringComparison.OrdinalIgnoreCase)) violations.Add(m.Text); };

        var page = await _browser.SignInAsync(_app);
        await Expect(page.Locator("h1")).ToHaveTextAsync("Virtual machines");
        await Expect(page.Locator("tr[data-vm='seen'] .state")).ToHaveTextAsync("stopped");
        await Expect(page.Locator(".session .who")).ToContainTextAsync("admin");
        // Interactive means the circuit came up under the CSP: a state change arrives without reload.
        await page.WaitForFunctionAsync("() => window.Blazor !== undefined");
        await _app.Api().ActAsync("seen", "start");
        await Expect(page.Locator("tr[data-vm='seen'] .state")).ToHaveTextAsync("running");

        await page.ClickAsync("button.logout");
        await page.WaitForURLAsync("**/login?loggedOut=1");
        await page.GotoAsync(new Uri(_app.BaseAddress, "/vms/seen/console").ToString());
        await page.WaitForURLAsync("**/login?returnUrl=%2Fvms%2Fseen%2Fconsole");
        await Expect(page.Locator("input[name=username]")).ToBeVisibleAsync();
        Assert.Empty(violations);
    }

    [Fact(Timeout = 120_000)]
    public async Task SignIn_WrongPassword_StaysOnLoginWithMessage()
    {
        var page = await _browser.NewPageAsync();
        await page.GotoAsync(new Uri(_app.BaseAddress, "/").ToString());
        await page.FillAsync("input[name=username]", "admin");
        await page.FillAsync("input[name=password]", "not-the-password");
        await page.ClickAsync("button[type=submit]");
        await page.WaitForURLAsync("**/login?error=invalid**");
        await Expect(page.Locator(".login-error")).ToHaveTextAsync("Wrong user name or password.");
    }
}
