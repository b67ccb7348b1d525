using System.Net.Http.Json;
using System.Text.Json;
using Appliance.Core.Supervision;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Appliance.Web.Tests.Infrastructure;

/// <summary>
/// One real appliance per fixture: Kestrel on 127.0.0.1 with a random port, a fresh data folder and SQLite file,
/// real QEMU under TCG and the demo guest.
/// </summary>
public class ApplianceFactory : WebApplicationFactory<Program>
{
    public string DataDir { get; }
    private readonly Dictionary<string, string?> _settings;

    private readonly Action<IServiceCollection>? _services;
    private readonly bool _ownsDataDir;

    public ApplianceFactory(string? dataDir = null, IDictionary<string, string?>? settings = null, Action<IServiceCollection>? services = null)
    {
        _services = services;
        _ownsDataDir = dataDir is null;
        DataDir = dataDir ?? TestPaths.NewDataDir();
        _settings = new Dictionary<string, string?>
        {
            ["Appliance:DataDirectory"] = DataDir,
            ["Appliance:DemoGuestDirectory"] = TestPaths.DemoGuest,
            ["Appliance:Accelerator"] = "tcg",
            ["Appliance:HostMemoryReserveMiB"] = "1024",
            ["Appliance:ShutdownTimeoutSeconds"] = "20",
            ["Appliance:Security:AdminPassword"] = AdminPassword,
            ["Appliance:Security:LoginPermitsPerClientPerMinute"] = "1000",
            ["Appliance:Security:LoginPermitsPerUserPerMinute"] = "1000",
            ["Appliance:Security:LoginFailureDelayMilliseconds"] = "50",
        };
        if (settings is not null) foreach (var (k, v) in settings) _settings[k] = v;
        UseKestrel(0);
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Development");
        foreach (var (k, v) in _settings) builder.UseSetting(k, v);
        if (_services is not null) builder.ConfigureServices(_services);
    }

    public Supervisor Supervisor => Services.GetRequiredService<Supervisor>();

    public const string AdminPassword = "test-admin-password";
    private string? _adminToken;
    private int _users;

    /// <summary>A client with no credentials that does not follow redirects.</summary>
    public HttpClient Anonymous()
    {
        StartServer();
        return new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, UseCookies = false }) { BaseAddress = ClientOptions.BaseAddress };
    }

    /// <summary>A client for the API with the default (administrator) credentials: a bearer token from POST /api/v1/auth/token.</summary>
    public virtual HttpClient Api()
    {
        _adminToken ??= TokenFor("admin", AdminPassword);
        return WithToken(_adminToken);
    }

    public HttpClient WithToken(string token)
    {
        var c = Anonymous();
        c.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        return c;
    }

    public string TokenFor(string user, string password)
    {
        using var c = Anonymous();
        var r = c.PostAsJsonAsync("/api/v1/auth/token", new { username = user, password }).GetAwaiter().GetResult();
        var json = r.JsonAsync().GetAwaiter().GetResult();
        if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"token for {user}: {(int)r.StatusCode} {json}");
        return json.GetProperty("token").GetString()!;
    }

    /// <summary>Creates a new user with <paramref name="role"/> (admin, operator, viewer) and returns a client signed in as them.</summary>
    public HttpClient ClientFor(string role)
    {
        var name = $"{role}-{Interlocked.Increment(ref _users)}";
        var password = $"pw-{Guid.NewGuid():N}";
        var r = Api().PostAsJsonAsync("/api/v1/users", new { name, role, password }).GetAwaiter().GetResult();
        if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"create user {name}: {(int)r.StatusCode} {r.Content.ReadAsStringAsync().GetAwaiter().GetResult()}");
        return WithToken(TokenFor(name, password));
    }

    /// <summary>Adds the credentials <see cref="Api"/> uses to a websocket client.</summary>
    public virtual void AuthorizeSocket(System.Net.WebSockets.ClientWebSocket ws)
    {
        _adminToken ??= TokenFor("admin", AdminPassword);
        ws.Options.SetRequestHeader("Authorization", "Bearer " + _adminToken);
    }

    public Uri BaseAddress
    {
        get
        {
            StartServer();
            return ClientOptions.BaseAddress;
        }
    }

    protected override void Dispose(bool disposing)
    {
        try { base.Dispose(disposing); }
        finally { Cleanup(); }
    }

    public override async ValueTask DisposeAsync()
    {
        try { await base.DisposeAsync(); }
        finally { Cleanup(); }
        GC.SuppressFinalize(this);
    }

    private void Cleanup()
    {
        TestPaths.KillEmulatorsUnder(DataDir);
        if (_ownsDataDir) TestPaths.DeleteDataDir(DataDir);
    }
}

public static class ApiExtensions
{
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public static async Task<JsonElement> JsonAsync(this HttpResponseMessage r)
    {
        var text = await r.Content.ReadAsStringAsync();
        return JsonDocument.Parse(text.Length == 0 ? "null" : text).RootElement.Clone();
    }

    public static async Task<JsonElement> CreateDemoVmAsync(this HttpClient c, string name, object? extra = null)
    {
        var body = new Dictionary<string, object?> { ["name"] = name, ["template"] = "demo" };
        if (extra is not null)
            foreach (var p in JsonSerializer.SerializeToElement(extra, Json).EnumerateObject()) body[p.Name] = p.Value;
        var r = await c.PostAsJsonAsync("/api/v1/vms", body);
        var json = await r.JsonAsync();
        if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"create {name}: {(int)r.StatusCode} {json}");
        return json;
    }

    /// <summary>Runs a lifecycle action and waits for its job; returns the final job.</summary>
    public static async Task<JsonElement> ActAsync(this HttpClient c, string vm, string action, string query = "")
    {
        var r = await c.PostAsync($"/api/v1/vms/{vm}/{action}?wait=true{query}", null);
        var json = await r.JsonAsync();
        if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"{action} {vm}: {(int)r.StatusCode} {json}");
        return json;
    }

    public static async Task<string> StateAsync(this HttpClient c, string vm) =>
        (await (await c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync()).GetProperty("state").GetString()!;

    public static async Task<string> SerialLogAsync(this HttpClient c, string vm) =>
        await c.GetStringAsync($"/api/v1/vms/{vm}/serial/log?bytes=1048576");

    /// <summary>Polls the serial log until <paramref name="pattern"/> matches or the deadline passes.</summary>
    public static async Task<System.Text.RegularExpressions.Match> WaitForSerialAsync(this HttpClient c, string vm, string pattern,
        TimeSpan? timeout = null, Func<string, string>? select = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        var rx = new System.Text.RegularExpressions.Regex(pattern);
        string log = "";
        while (DateTime.UtcNow < deadline)
        {
            log = await c.SerialLogAsync(vm);
            var m = rx.Match(select is null ? log : select(log));
            if (m.Success) return m;
            await Task.Delay(100);
        }
        throw new TimeoutException($"'{pattern}' did not appear on {vm}'s serial console; last output:\n{log[Math.Max(0, log.Length - 2000)..]}");
    }

    /// <summary>Polls until the VM reaches <paramref name="state"/>.</summary>
    public static async Task WaitForStateAsync(this HttpClient c, string vm, string state, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(30));
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            last = await c.StateAsync(vm);
            if (last == state) return;
            await Task.Delay(50);
        }
        throw new TimeoutException($"{vm} stayed {last}, expected {state}");
    }

    /// <summary>The highest COUNTER value the guest has printed so far.</summary>
    public static int LastCounter(string log)
    {
        var ms = System.Text.RegularExpressions.Regex.Matches(log, @"COUNTER (\d+)\r?\n");
        return ms.Count == 0 ? -1 : int.Parse(ms[^1].Groups[1].Value);
    }

    /// <summary>Sends a line to the guest's serial shell over the serial websocket.</summary>
    public static async Task SendSerialAsync(this ApplianceFactory f, string vm, string line)
    {
        using var ws = new System.Net.WebSockets.ClientWebSocket();
        f.ConfigureSocket(ws);
        var uri = new UriBuilder(f.BaseAddress) { Scheme = "ws", Path = $"/api/v1/vms/{vm}/serial" }.Uri;
        await ws.ConnectAsync(uri, CancellationToken.None);
        await ws.SendAsync(System.Text.Encoding.UTF8.GetBytes(line + "\n"), System.Net.WebSockets.WebSocketMessageType.Binary, true, CancellationToken.None);
        await ws.CloseAsync(System.Net.WebSockets.WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
    }

    /// <summary>Adds whatever credentials the fixture's API client uses to a raw websocket.</summary>
    public static void ConfigureSocket(this ApplianceFactory f, System.Net.WebSockets.ClientWebSocket ws) => f.AuthorizeSocket(ws);
}
