using System.Net;
using System.Net.Http.Json;

namespace Appliance.Web.Tests.Security;

public sealed class FirstStartTests : IAsyncLifetime
{
    private readonly LoggingFactory _app = new(configureAdminPassword: false);

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    [Fact(Timeout = 60_000)]
    public async Task NoConfiguredPassword_GeneratedOnceToOwnerOnlyFileAndLog_AndWorks()
    {
        var anon = _app.Anonymous();
        var file = Path.Combine(_app.DataDir, "initial-admin-password");
        Assert.True(File.Exists(file));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
        var password = (await File.ReadAllTextAsync(file)).Trim();
        Assert.True(password.Length >= 20);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(_app.Logs(), System.Text.RegularExpressions.Regex.Escape(password)));
        var r = await anon.PostAsJsonAsync("/api/v1/auth/token", new { username = "admin", password });
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }
}
