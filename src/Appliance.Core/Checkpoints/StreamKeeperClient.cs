using System.Diagnostics;
using System.Net.Sockets;
using Appliance.Core.Emulation;
using Appliance.Core.Supervision;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Checkpoints;

/// <summary>How to start the appliance's own executable: the host and, for <c>dotnet app.dll</c>, the app.</summary>
public sealed record StreamKeeperCommand(IReadOnlyList<string> Prefix)
{
    /// <summary>
    /// The app's own apphost when that is what runs; otherwise the <c>dotnet</c> muxer with <paramref name="appDll"/>
    /// (also when the host is another program, such as a test host).
    /// </summary>
    public static StreamKeeperCommand ForApp(string appDll)
    {
        var host = Environment.ProcessPath ?? "";
        if (Path.GetFileNameWithoutExtension(host) == Path.GetFileNameWithoutExtension(appDll)) return new([host]);
        if (Path.GetFileNameWithoutExtension(host) != "dotnet") host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "/usr/bin/dotnet";
        return new([host, appDll]);
    }
}

/// <summary>
/// The appliance's side of the <see cref="StreamKeeper"/>: starts one keeper per appliance (lazily, before the
/// first background-snapshot save), hands it a duplicate of each save's migration connection and takes it back
/// when the save ends. Any failure here only costs the protection: it is logged and the save goes on without it.
/// </summary>
public sealed class StreamKeeperClient(
    Supervisor sup,
    StreamKeeperCommand command,
    IOptions<CheckpointOptions> options,
    ILogger<StreamKeeperClient> log) : IDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan RetryAfterFailure = TimeSpan.FromMinutes(1);

    private sealed record Keeper(int Pid, Socket Control, Task<int> Exited);

    private readonly SemaphoreSlim _gate = new(1, 1);
    private Keeper? _current;
    private DateTime _retryAt;
    private bool _disposed;

    /// <summary>The running keeper's process id, if any.</summary>
    public int? Pid => _current is { Exited.IsCompleted: false } k ? k.Pid : null;

    /// <summary>Where the control socket lives while the keeper connects: short enough for a unix socket path.</summary>
    private string SocketDir => Path.Combine(RuntimePaths.RootFor(sup.DataDir), "keeper");

    /// <summary>True when a keeper is running (started now if needed); false, logged, when none can be had.</summary>
    public async Task<bool> EnsureStartedAsync(CancellationToken ct)
    {
        if (!options.Value.StreamKeeper || _disposed) return false;
        if (_current is { Exited.IsCompleted: false }) return true;
        await _gate.WaitAsync(ct);
        try
        {
            if (_current is { Exited.IsCompleted: false }) return true;
            if (_current is { } dead)
            {
                log.LogWarning("The stream keeper (pid {Pid}) has exited with {Code}; starting a new one", dead.Pid, dead.Exited.Result);
                dead.Control.Dispose();
                _current = null;
            }
            if (DateTime.UtcNow < _retryAt) return false;
            try
            {
                _current = await StartAsync(ct);
                return true;
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                _retryAt = DateTime.UtcNow + RetryAfterFailure;
                log.LogWarning("Could not start the stream keeper ({Error}); background-snapshot checkpoints are saved without it, so an appliance crash during one would hang the guest", e.Message);
                return false;
            }
        }
        finally { _gate.Release(); }
    }

    private async Task<Keeper> StartAsync(CancellationToken ct)
    {
        var dir = SocketDir;
        Directory.CreateDirectory(dir);
        File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        // Every name here is a per-start socket of an appliance that is no longer starting a keeper.
        foreach (var stale in Directory.EnumerateFiles(dir, "*.sock")) File.Delete(stale);
        var path = Path.Combine(dir, Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4)) + ".sock");
        var sw = Stopwatch.StartNew();
        using var listener = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(path));
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            listener.Listen(1);
            Directory.CreateDirectory(sup.LogsDir);
            var env = new Dictionary<string, string>
            {
                ["PATH"] = Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin",
                ["LC_ALL"] = "C",
                // A loop of blocking calls: the workstation GC and no ICU keep it small (measured: 31 MB resident instead of 38).
                ["DOTNET_gcServer"] = "0",
                ["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1",
            };
            foreach (var name in (string[])["HOME", "DOTNET_ROOT"])
                if (Environment.GetEnvironmentVariable(name) is { Length: > 0 } v) env[name] = v;
            var pid = NativeProcess.Spawn([.. command.Prefix, StreamKeeper.Argument, path], env, Path.Combine(sup.LogsDir, "stream-keeper.log"));
            var exited = NativeProcess.WaitForChildAsync(pid);
            try
            {
                var control = await AcceptFromAsync(listener, pid, exited, ct);
                var rss = ResidentKiB(pid);
                log.LogInformation("Stream keeper pid {Pid} ready in {Ms} ms ({Rss} KiB resident)", pid, sw.ElapsedMilliseconds, rss);
                return new Keeper(pid, control, exited);
            }
            catch
            {
                if (!exited.IsCompleted) NativeProcess.Signal(pid, NativeProcess.SIGKILL);
                throw;
            }
        }
        finally
        {
            try { File.Delete(path); } catch (IOException) { }
        }
    }

    /// <summary>The keeper's connection, checked by the peer's pid so that nothing else can pose as it.</summary>
    private static async Task<Socket> AcceptFromAsync(Socket listener, int pid, Task<int> exited, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(StartTimeout);
        while (true)
        {
            var accept = listener.AcceptAsync(cts.Token).AsTask();
            if (await Task.WhenAny(accept, exited) == exited)
            {
                cts.Cancel();
                throw new IOException($"it exited with code {exited.Result} before connecting");
            }
            Socket conn;
            try { conn = await accept; }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new TimeoutException($"it did not connect within {StartTimeout.TotalSeconds:0} s");
            }
            if (PeerPid(conn) == pid)
            {
                conn.Blocking = true;
                // A keeper that stopped reading must not stall a save.
                conn.SendTimeout = 2000;
                return conn;
            }
            conn.Dispose();
        }
    }

    private static int PeerPid(Socket s)
    {
        Span<byte> cred = stackalloc byte[12]; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        return s.GetRawSocketOption(1 /* SOL_SOCKET */, 17 /* SO_PEERCRED */, cred) >= 4 ? BitConverter.ToInt32(cred) : -1;
    }

    private static long? ResidentKiB(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
            return line is null ? null : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>
    /// Gives the keeper a duplicate of <paramref name="stream"/> (one message, no per-chunk cost). The lease
    /// takes it back when disposed; null when no keeper is running.
    /// </summary>
    public IDisposable? Hold(Guid saveId, Socket stream)
    {
        var k = _current;
        if (k is null || k.Exited.IsCompleted) return null;
        if (!Send(k, StreamKeeper.Hold, saveId, stream)) return null;
        return new Lease(this, k, saveId);
    }

    private bool Send(Keeper k, byte op, Guid saveId, Socket? stream)
    {
        try
        {
            DescriptorPassing.Send(k.Control.SafeHandle, StreamKeeper.Message(op, saveId), stream?.SafeHandle);
            return true;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            log.LogWarning("The stream keeper (pid {Pid}) did not take a message ({Error}); the save goes on without it", k.Pid, e.Message);
            Retire(k);
            return false;
        }
    }

    /// <summary>
    /// A keeper that fails a message is killed before its control socket closes: closed first, it would start
    /// reading streams the appliance is still saving.
    /// </summary>
    private void Retire(Keeper k)
    {
        if (!k.Exited.IsCompleted) NativeProcess.Signal(k.Pid, NativeProcess.SIGKILL);
        k.Control.Dispose();
        Interlocked.CompareExchange(ref _current, null, k);
    }

    private sealed class Lease(StreamKeeperClient owner, Keeper k, Guid saveId) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0 && !k.Exited.IsCompleted && owner._current == k)
                owner.Send(k, StreamKeeper.Release, saveId, null);
        }
    }

    /// <summary>Closing the control connection lets the keeper exit (after draining what it still holds).</summary>
    public void Dispose()
    {
        _disposed = true;
        _current?.Control.Dispose();
        _current = null;
    }
}
