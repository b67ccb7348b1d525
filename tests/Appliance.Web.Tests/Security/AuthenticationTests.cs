using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.RegularExpressions;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Appliance.Web.Tests.Security;

public sealed class AuthenticationTests : IAsyncLifetime
{
    private readonly LoggingFactory _app = new(new Dictionary<string, string?>
    {
        ["Appliance:Security:LoginPermitsPerUserPerMinute"] = "5",
        ["Appliance:Security:LoginFailureDelayMilliseconds"] = "300",
    });

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    [Fact(Timeout = 60_000)]
    public async Task ApiToken_CreatedUsedRevoked_ThenRefused()
    {
        var op = _app.ClientFor("operator");
        var r = await op.PostAsJsonAsync("/api/v1/tokens", new { name = "ci", role = "viewer" });
        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        var created = await r.JsonAsync();
        var token = created.GetProperty("token").GetString()!;
        var id = created.GetProperty("id").GetString()!;
        Assert.StartsWith("apl_", token);

        var ci = _app.WithToken(token);
        var me = await (await ci.GetAsync("/api/v1/auth/me")).JsonAsync();
        Assert.Equal("viewer", me.GetProperty("role").GetString());
        Assert.Equal(HttpStatusCode.OK, (await ci.GetAsync("/api/v1/vms")).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await ci.PostAsJsonAsync("/api/v1/vms", new { name = "x", template = "demo" })).StatusCode);

        var listed = await (await op.GetAsync("/api/v1/tokens")).JsonAsync();
        var entry = Assert.Single(listed.EnumerateArray(), t => t.GetProperty("id").GetString() == id);
        Assert.False(entry.TryGetProperty("token", out _));

        Assert.Equal(HttpStatusCode.NoContent, (await op.DeleteAsync($"/api/v1/tokens/{id}")).StatusCode);
        var after = await ci.GetAsync("/api/v1/vms");
        Assert.Equal(HttpStatusCode.Unauthorized, after.StatusCode);
        Assert.Equal("urn:appliance:problem:unauthenticated", (await after.JsonAsync()).GetProperty("type").GetString());
    }

    [Fact(Timeout = 60_000)]
    public async Task ApiToken_RoleAboveCreator_Refused_OthersTokenNotFound()
    {
        var op = _app.ClientFor("operator");
        var r = await op.PostAsJsonAsync("/api/v1/tokens", new { name = "too-high", role = "admin" });
        Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
        Assert.Equal("urn:appliance:problem:role-too-high", (await r.JsonAsync()).GetProperty("type").GetString());

        var adminTok = await (await _app.Api().PostAsJsonAsync("/api/v1/tokens", new { name = "admins", role = "operator" })).JsonAsync();
        Assert.Equal(HttpStatusCode.NotFound, (await op.DeleteAsync($"/api/v1/tokens/{adminTok.GetProperty("id").GetString()}")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await _app.WithToken(adminTok.GetProperty("token").GetString()!).GetAsync("/api/v1/vms")).StatusCode);
    }

    [Fact(Timeout = 60_000)]
    public async Task ApiToken_PastExpiry_Refused()
    {
        var expires = DateTimeOffset.UtcNow.AddSeconds(8);
        var created = await (await _app.Api().PostAsJsonAsync("/api/v1/tokens", new { name = "short", role = "viewer", expiresAt = expires })).JsonAsync();
        var c = _app.WithToken(created.GetProperty("token").GetString()!);
        Assert.Equal(HttpStatusCode.OK, (await c.GetAsync("/api/v1/vms")).StatusCode);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        var status = HttpStatusCode.OK;
        while (DateTime.UtcNow < deadline && status == HttpStatusCode.OK)
        {
            await Task.Delay(200);
            status = (await c.GetAsync("/api/v1/vms")).StatusCode;
        }
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        Assert.True(DateTimeOffset.UtcNow >= expires);

        var past = await _app.Api().PostAsJsonAsync("/api/v1/tokens", new { name = "past", role = "viewer", expiresAt = DateTimeOffset.UtcNow.AddMinutes(-1) });
        Assert.Equal(HttpStatusCode.BadRequest, past.StatusCode);
    }

    [Fact(Timeout = 60_000)]
    public async Task Password_StoredHashedAndNeverLogged()
    {
        const string secret = "correct-horse-battery-staple";
        Assert.Equal(HttpStatusCode.Created, (await _app.Api().PostAsJsonAsync("/api/v1/users", new { name = "alice", role = "operator", password = secret })).StatusCode);
        var ok = _app.WithToken(_app.TokenFor("alice", secret));
        Assert.Equal(HttpStatusCode.OK, (await ok.GetAsync("/api/v1/auth/me")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await _app.Anonymous().PostAsJsonAsync("/api/v1/auth/token", new { username = "alice", password = "wrong-password-1" })).StatusCode);

        var db = Path.Combine(_app.DataDir, "appliance.db");
        foreach (var f in new[] { db, db + "-wal" }.Where(File.Exists))
        {
            var bytes = await ReadSharedAsync(f);
            Assert.DoesNotContain(secret, Encoding.UTF8.GetString(bytes));
            Assert.DoesNotContain(ApplianceFactory.AdminPassword, Encoding.UTF8.GetString(bytes));
        }
        var logs = _app.Logs();
        Assert.Contains("alice", string.Join('\n', (await (await _app.Api().GetAsync("/api/v1/audit?user=alice")).JsonAsync()).GetProperty("items").EnumerateArray().Select(i => i.GetProperty("userName").GetString())));
        Assert.DoesNotContain(secret, logs);
        Assert.DoesNotContain(ApplianceFactory.AdminPassword, logs);
    }

    [Fact(Timeout = 60_000)]
    public async Task Login_RepeatedFailures_DelayedThenThrottled()
    {
        await _app.Api().PostAsJsonAsync("/api/v1/users", new { name = "bob", role = "viewer", password = "bobs-real-password" });
        var anon = _app.Anonymous();
        var statuses = new List<HttpStatusCode>();
        var sw = Stopwatch.StartNew();
        for (var i = 0; i < 5; i++)
        {
            var t = Stopwatch.StartNew();
            statuses.Add((await anon.PostAsJsonAsync("/api/v1/auth/token", new { username = "bob", password = $"guess-number-{i}" })).StatusCode);
            Assert.True(t.ElapsedMilliseconds >= 300, $"failure answered after {t.ElapsedMilliseconds} ms");
        }
        Assert.All(statuses, s => Assert.Equal(HttpStatusCode.Unauthorized, s));
        var throttled = await anon.PostAsJsonAsync("/api/v1/auth/token", new { username = "bob", password = "bobs-real-password" });
        Assert.Equal(HttpStatusCode.TooManyRequests, throttled.StatusCode);
        Assert.Equal("urn:appliance:problem:too-many-attempts", (await throttled.JsonAsync()).GetProperty("type").GetString());
        // Another account from the same client is not locked out by bob's guesses.
        Assert.Equal(HttpStatusCode.OK, (await anon.PostAsJsonAsync("/api/v1/auth/token", new { username = "admin", password = ApplianceFactory.AdminPassword })).StatusCode);
        var audit = await (await _app.Api().GetAsync("/api/v1/audit?action=auth/token&target=bob")).JsonAsync();
        Assert.Equal(6, audit.GetProperty("total").GetInt32());
    }

    [Fact(Timeout = 60_000)]
    public async Task CookieSession_UnsafeApiCallWithoutCsrfToken_Refused_WithToken_Accepted()
    {
        var jar = new CookieContainer();
        var browser = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, CookieContainer = jar }) { BaseAddress = _app.BaseAddress };
        var page = await browser.GetStringAsync("/login");
        var af = Regex.Match(page, "name=\"__RequestVerificationToken\" value=\"([^\"]+)\"").Groups[1].Value;
        Assert.NotEmpty(af);
        var login = await browser.PostAsync("/auth/login", new FormUrlEncodedContent(new Dictionary<string, string>
        {
            ["username"] = "admin", ["password"] = ApplianceFactory.AdminPassword, ["returnUrl"] = "/", ["__RequestVerificationToken"] = af,
        }));
        Assert.Equal(HttpStatusCode.Redirect, login.StatusCode);
        Assert.Equal("/", login.Headers.Location?.OriginalString);
        var cookie = login.Headers.GetValues("Set-Cookie").Single(c => c.StartsWith("appliance.session=", StringComparison.Ordinal));
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);

        Assert.Equal("cookie", (await (await browser.GetAsync("/api/v1/auth/me")).JsonAsync()).GetProperty("authMethod").GetString());
        var forged = await browser.PostAsJsonAsync("/api/v1/vms", new { name = "csrf", template = "demo" });
        Assert.Equal(HttpStatusCode.Forbidden, forged.StatusCode);
        Assert.Equal("urn:appliance:problem:csrf-token-invalid", (await forged.JsonAsync()).GetProperty("type").GetString());
        Assert.Equal(HttpStatusCode.NotFound, (await _app.Api().GetAsync("/api/v1/vms/csrf")).StatusCode);

        var csrf = await (await browser.GetAsync("/api/v1/auth/csrf")).JsonAsync();
        using var req = new HttpRequestMessage(HttpMethod.Post, "/api/v1/vms") { Content = JsonContent.Create(new { name = "csrf", template = "demo" }) };
        req.Headers.Add(csrf.GetProperty("headerName").GetString()!, csrf.GetProperty("token").GetString());
        Assert.Equal(HttpStatusCode.Created, (await browser.SendAsync(req)).StatusCode);

        var logout = await browser.PostAsync("/auth/logout", new FormUrlEncodedContent(new Dictionary<string, string>()));
        Assert.Equal(HttpStatusCode.Redirect, logout.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await browser.GetAsync("/api/v1/auth/me")).StatusCode);
    }

    [Fact(Timeout = 60_000)]
    public async Task DisabledUser_TokensStopWorking()
    {
        await _app.Api().PostAsJsonAsync("/api/v1/users", new { name = "carol", role = "operator", password = "carols-password" });
        var carol = _app.WithToken(_app.TokenFor("carol", "carols-password"));
        Assert.Equal(HttpStatusCode.OK, (await carol.GetAsync("/api/v1/vms")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await _app.Api().PatchAsJsonAsync("/api/v1/users/carol", new { disabled = true })).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await carol.GetAsync("/api/v1/vms")).StatusCode);
    }

    private static async Task<byte[]> ReadSharedAsync(string path)
    {
        await using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var ms = new MemoryStream();
        await fs.CopyToAsync(ms);
        return ms.ToArray();
    }
}

/// <summary>The fixture plus every log line the app writes, to prove what it does not log.</summary>
public sealed class LoggingFactory(IDictionary<string, string?>? settings = null, bool configureAdminPassword = true)
    : ApplianceFactory(settings: Settings(settings, configureAdminPassword))
{
    private readonly List<string> _lines = [];

    private static IDictionary<string, string?> Settings(IDictionary<string, string?>? s, bool admin)
    {
        var d = new Dictionary<string, string?>(s ?? new Dictionary<string, string?>());
        if (!admin) d["Appliance:Security:AdminPassword"] = "";
        return d;
    }

    public string Logs() { lock (_lines) return string.Join('\n', _lines); }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        base.ConfigureWebHost(builder);
        builder.ConfigureServices(s => s.AddLogging(l => l.SetMinimumLevel(LogLevel.Trace).AddProvider(new Sink(this))));
    }

    private sealed class Sink(LoggingFactory f) : ILoggerProvider, ILogger
    {
        public ILogger CreateLogger(string categoryName) => this;
        public void Dispose() { }
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (f._lines) f._lines.Add(formatter(state, exception) + (exception is null ? "" : " " + exception));
        }
    }
}
