using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Appliance.Web.Tests.Infrastructure;

/// <summary>
/// The appliance as a separate OS process (the built Appliance.Web.dll), for tests that must kill it with
/// SIGKILL mid-operation and start it again on the same data folder, as a crash or a power cut would.
/// Guests it started survive the kill, as they would in production; <see cref="DisposeAsync"/> removes them.
/// </summary>
public sealed class ApplianceProcess : IAsyncDisposable
{
    public const string AdminPassword = "test-admin-password";

    private readonly IDictionary<string, string?> _settings;
    private readonly StringBuilder _output = new();
    private Process? _process;

    public ApplianceProcess(string? dataDir = null, IDictionary<string, string?>? settings = null)
    {
        DataDir = dataDir ?? TestPaths.NewDataDir();
        _settings = settings ?? new Dictionary<string, string?>();
    }

    public string DataDir { get; }
    public Uri BaseAddress { get; private set; } = new("http://127.0.0.1/");
    public int? Pid => _process is { HasExited: false } p ? p.Id : null;

    /// <summary>What the process wrote to stdout and stderr, for failure messages.</summary>
    public string Output { get { lock (_output) return _output.ToString(); } }

    public static string WebDll
    {
        get
        {
            // Same configuration as the test assembly (bin/<Configuration>/net10.0).
            var config = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/')).Parent?.Name ?? "Debug";
            return Path.Combine(TestPaths.RepoRoot, "src", "Appliance.Web", "bin", config, "net10.0", "Appliance.Web.dll");
        }
    }

    /// <summary>Starts the appliance (again) on <see cref="DataDir"/> with a fresh port and waits until /healthz answers.</summary>
    public async Task StartAsync(TimeSpan? timeout = null)
    {
        if (_process is { HasExited: false }) throw new InvalidOperationException("The appliance is already running.");
        var port = FreePort();
        BaseAddress = new Uri($"http://127.0.0.1:{port}/");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = TestPaths.RepoRoot };
        foreach (var a in new[] { WebDll, "--urls", BaseAddress.ToString().TrimEnd('/') }) psi.ArgumentList.Add(a);
        psi.Environment["APPLIANCE_DATA_DIR"] = DataDir;
        psi.Environment["APPLIANCE_ADMIN_PASSWORD"] = AdminPassword;
        psi.Environment["Appliance__DemoGuestDirectory"] = TestPaths.DemoGuest;
        psi.Environment["Appliance__Accelerator"] = "tcg";
        psi.Environment["Appliance__HostMemoryReserveMiB"] = "1024";
        psi.Environment["ASPNETCORE_ENVIRONMENT"] = "Development";
        foreach (var (k, v) in _settings) psi.Environment[k.Replace(":", "__", StringComparison.Ordinal)] = v;
        var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _process = p;

        using var http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(5) };
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            if (p.HasExited) throw new InvalidOperationException($"The appliance exited with {p.ExitCode} during start-up:\n{Output}");
            try
            {
                if ((await http.GetAsync("/healthz")).StatusCode == HttpStatusCode.OK) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"The appliance did not answer /healthz within the deadline:\n{Output}");
            await Task.Delay(100);
        }
    }

    /// <summary>A client for the API. (With authentication it will carry the administrator's credentials.)</summary>
    public HttpClient Api() => new() { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(90) };

    /// <summary>SIGKILL: no shutdown code runs, exactly like a crash.</summary>
    public void Kill()
    {
        var p = _process ?? throw new InvalidOperationException("Not started.");
        if (!p.HasExited) p.Kill(entireProcessTree: false);
        p.WaitForExit(10_000);
    }

    public async Task RestartAsync()
    {
        Kill();
        await StartAsync();
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is { } p)
        {
            try { if (!p.HasExited) { p.Kill(); await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10)); } }
            catch (Exception) { }
            p.Dispose();
        }
        TestPaths.KillEmulatorsUnder(DataDir);
        try { Directory.Delete(DataDir, recursive: true); } catch (Exception) { }
    }
}
