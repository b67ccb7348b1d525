using Appliance.Web.Tests.Infrastructure;
using Microsoft.Playwright;

namespace Appliance.Browser.Tests.Infrastructure;

public static class Login
{
    /// <summary>Signs in through the login page as a person would, landing on <paramref name="path"/>.</summary>
    public static async Task<IPage> SignInAsync(this Browser browser, ApplianceFactory app, string path = "/",
        string user = "admin", string password = ApplianceFactory.AdminPassword)
    {
        var page = await browser.NewPageAsync();
        await page.GotoAsync(new Uri(app.BaseAddress, path).ToString());
        await page.WaitForURLAsync("**/login?returnUrl=**");
        await page.FillAsync("input[name=username]", user);
        await page.FillAsync("input[name=password]", password);
        await page.ClickAsync("button[type=submit]");
        await page.WaitForURLAsync(new Uri(app.BaseAddress, path).ToString());
        return page;
    }
}
