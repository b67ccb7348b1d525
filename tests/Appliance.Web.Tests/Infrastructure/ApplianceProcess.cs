using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Appliance.Web.Tests.Infrastructure;

/// <summary>
/// The appliance as a separate OS process, for what an in-process host cannot show: a kill -9 of the
/// appliance itself, a restart on the same data folder, a refused start-up.
/// </summary>
public sealed class ApplianceProcess : IAsyncDisposable
{
    private Process? _process;
    private readonly Dictionary<string, string> _env;
    private readonly List<string> _output = [];
    private readonly bool _ownsDataDir;

    public ApplianceProcess(string? dataDir = null, IDictionary<string, string>? env = null)
    {
        _ownsDataDir = dataDir is null;
        DataDir = dataDir ?? TestPaths.NewDataDir();
        _env = new Dictionary<string, string>
        {
            ["APPLIANCE_DATA_DIR"] = DataDir,
            ["Appliance__DemoGuestDirectory"] = TestPaths.DemoGuest,
            ["Appliance__Accelerator"] = "tcg",
            ["APPLIANCE_ADMIN_PASSWORD"] = AdminPassword,
            ["ASPNETCORE_ENVIRONMENT"] = "Production",
        };
        if (env is not null) foreach (var (k, v) in env) _env[k] = v;
    }

    public const string AdminPassword = "test-admin-password-1";
    public string DataDir { get; }
    public Uri BaseAddress { get; private set; } = null!;
    public int? Pid => _process?.Id;
    public string Output { get { lock (_output) return string.Join('\n', _output); } }

    public static string AppDll
    {
        get
        {
            var config = AppContext.BaseDirectory.Contains("/Release/", StringComparison.Ordinal) ? "Release" : "Debug";
            return Path.Combine(TestPaths.RepoRoot, "src", "Appliance.Web", "bin", config, "net10.0", "Appliance.Web.dll");
        }
    }

    /// <summary>Starts the process; with <paramref name="waitHealthy"/> returns once /healthz answers.</summary>
    public async Task StartAsync(bool waitHealthy = true, TimeSpan? timeout = null)
    {
        var port = FreePort();
        BaseAddress = new Uri($"http://127.0.0.1:{port}");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(AppDll);
        psi.ArgumentList.Add("--urls");
        psi.ArgumentList.Add(BaseAddress.ToString().TrimEnd('/'));
        foreach (var (k, v) in _env) psi.Environment[k] = v;
        _process = Process.Start(psi)!;
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        if (!waitHealthy) return;
        using var http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(2) };
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited) throw new InvalidOperationException($"The appliance exited with {_process.ExitCode}:\n{Output}");
            try
            {
                var r = await http.GetAsync("/healthz");
                if (r.StatusCode is HttpStatusCode.OK or HttpStatusCode.ServiceUnavailable) return;
            }
            catch (HttpRequestException) { }
            catch (TaskCanceledException) { }
            await Task.Delay(100);
        }
        throw new TimeoutException("The appliance did not answer /healthz:\n" + Output);
    }

    /// <summary>Waits for the process to exit by itself (for start-up refusals); returns the exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        await _process!.WaitForExitAsync(cts.Token);
        _process.WaitForExit();
        return _process.ExitCode;
    }

    /// <summary>SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill.</summary>
    public async Task KillAsync()
    {
        _process!.Kill(entireProcessTree: false);
        await _process.WaitForExitAsync();
    }

    public async Task StopAsync()
    {
        if (_process is null || _process.HasExited) return;
        Process.Start("kill", ["-TERM", _process.Id.ToString()])!.WaitForExit();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        try { await _process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { _process.Kill(); }
    }

    /// <summary>An API client with administrator rights (a bearer token from the configured admin password).</summary>
    public HttpClient Api()
    {
        var c = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(90) };
        c.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", AdminToken());
        return c;
    }

    /// <summary>Adds the same administrator credentials to a websocket.</summary>
    public void AuthorizeSocket(System.Net.WebSockets.ClientWebSocket ws) => ws.Options.SetRequestHeader("Authorization", "Bearer " + AdminToken());

    /// <summary>Types a line into the guest's serial console over the serial websocket.</summary>
    public async Task SendSerialAsync(string vm, string line)
    {
        using var ws = new System.Net.WebSockets.ClientWebSocket();
        AuthorizeSocket(ws);
        var uri = new UriBuilder(BaseAddress) { Scheme = "ws", Path = $"/api/v1/vms/{vm}/serial" }.Uri;
        await ws.ConnectAsync(uri, CancellationToken.None);
        await ws.SendAsync(System.Text.Encoding.UTF8.GetBytes(line + "\n"), System.Net.WebSockets.WebSocketMessageType.Binary, true, CancellationToken.None);
        await ws.CloseAsync(System.Net.WebSockets.WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
    }

    private string AdminToken()
    {
        using var c = new HttpClient { BaseAddress = BaseAddress };
        var r = c.PostAsync("/api/v1/auth/token", new StringContent(
            $$"""{"username":"admin","password":"{{AdminPassword}}"}""", System.Text.Encoding.UTF8, "application/json")).GetAwaiter().GetResult();
        r.EnsureSuccessStatusCode();
        return System.Text.Json.JsonDocument.Parse(r.Content.ReadAsStringAsync().GetAwaiter().GetResult()).RootElement.GetProperty("token").GetString()!;
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is { HasExited: false }) await KillAsync();
        _process?.Dispose();
        TestPaths.KillEmulatorsUnder(DataDir);
        if (_ownsDataDir) TestPaths.DeleteDataDir(DataDir);
    }
}
