using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Appliance.Core.Emulation;

public class QmpException(string message, string? errorClass = null) : Exception(message)
{
    public string? ErrorClass { get; } = errorClass;
}

public sealed class QmpDisconnectedException(string message) : QmpException(message);

public sealed record QmpEvent(string Name, JsonElement? Data, DateTimeOffset At);

/// <summary>
/// QEMU Machine Protocol over a unix socket: greeting, capabilities negotiation, commands matched to
/// replies by id, and asynchronous events. Every command has a timeout and every waiter is released
/// when the socket closes, so a hung or vanished QEMU never hangs a caller.
/// </summary>
public sealed class QmpClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<long, TaskCompletionSource<JsonElement>> _pending = new();
    private readonly CancellationTokenSource _cts = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _readLoop = Task.CompletedTask;
    private long _nextId;

    private QmpClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Raised on the reader task for every event; handlers must not block.</summary>
    public event Action<QmpEvent>? EventReceived;

    /// <summary>Completes when the connection ends, for whatever reason.</summary>
    public Task Closed => _closed.Task;

    public JsonElement Greeting { get; private set; }

    public string? QemuVersion { get; private set; }

    public static async Task<QmpClient> ConnectAsync(string socketPath, TimeSpan timeout, CancellationToken ct = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cts.Token);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var client = new QmpClient(socket);
        try
        {
            var greeting = await client.ReadGreetingAsync(cts.Token);
            client.Greeting = greeting;
            if (greeting.TryGetProperty("QMP", out var qmp) && qmp.TryGetProperty("version", out var v) && v.TryGetProperty("qemu", out var q))
                client.QemuVersion = $"{q.GetProperty("major").GetInt32()}.{q.GetProperty("minor").GetInt32()}.{q.GetProperty("micro").GetInt32()}";
            client._readLoop = Task.Run(client.ReadLoopAsync);
            await client.ExecuteAsync("qmp_capabilities", null, timeout, cts.Token);
            return client;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            await client.DisposeAsync();
            throw new QmpException($"QEMU did not complete the QMP handshake on {socketPath} within {timeout.TotalSeconds:0.#} s.");
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    private byte[] _buf = new byte[64 * 1024];
    private int _bufStart, _bufEnd;

    private async Task<string?> ReadLineAsync(CancellationToken ct)
    {
        while (true)
        {
            var nl = Array.IndexOf(_buf, (byte)'\n', _bufStart, _bufEnd - _bufStart);
            if (nl >= 0)
            {
                var line = Encoding.UTF8.GetString(_buf, _bufStart, nl - _bufStart);
                _bufStart = nl + 1;
                return line;
            }
            if (_bufStart > 0)
            {
                Buffer.BlockCopy(_buf, _bufStart, _buf, 0, _bufEnd - _bufStart);
                _bufEnd -= _bufStart;
                _bufStart = 0;
            }
            if (_bufEnd == _buf.Length) Array.Resize(ref _buf, _buf.Length * 2);
            var n = await _stream.ReadAsync(_buf.AsMemory(_bufEnd), ct);
            if (n == 0) return null;
            _bufEnd += n;
        }
    }

    private async Task<JsonElement> ReadGreetingAsync(CancellationToken ct)
    {
        var line = await ReadLineAsync(ct) ?? throw new QmpDisconnectedException("QEMU closed the QMP socket before its greeting.");
        using var doc = JsonDocument.Parse(line);
        if (!doc.RootElement.TryGetProperty("QMP", out _)) throw new QmpException("Unexpected QMP greeting: " + line);
        return doc.RootElement.Clone();
    }

    private async Task ReadLoopAsync()
    {
        var reason = "QEMU closed the QMP connection";
        try
        {
            while (!_cts.IsCancellationRequested)
            {
                var line = await ReadLineAsync(_cts.Token);
                if (line is null) break;
                if (line.Length == 0) continue;
                JsonElement root;
                try
                {
                    using var doc = JsonDocument.Parse(line);
                    root = doc.RootElement.Clone();
                }
                catch (JsonException) { continue; }
                if (root.TryGetProperty("event", out var ev))
                {
                    JsonElement? data = root.TryGetProperty("data", out var d) ? d : null;
                    var at = DateTimeOffset.UtcNow;
                    if (root.TryGetProperty("timestamp", out var ts) && ts.TryGetProperty("seconds", out var s) && ts.TryGetProperty("microseconds", out var us))
                        at = DateTimeOffset.FromUnixTimeSeconds(s.GetInt64()).AddTicks(us.GetInt64() * 10);
                    try { EventReceived?.Invoke(new QmpEvent(ev.GetString()!, data, at)); }
                    catch (Exception) { /* a faulty handler must not stop the reader */ }
                    continue;
                }
                if (root.TryGetProperty("id", out var idEl) && idEl.TryGetInt64(out var id) && _pending.TryRemove(id, out var tcs))
                {
                    if (root.TryGetProperty("error", out var err))
                        tcs.TrySetException(new QmpException(
                            err.TryGetProperty("desc", out var desc) ? desc.GetString() ?? "QMP error" : "QMP error",
                            err.TryGetProperty("class", out var cls) ? cls.GetString() : null));
                    else
                        tcs.TrySetResult(root.TryGetProperty("return", out var ret) ? ret : default);
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            reason = "QMP connection lost: " + e.Message;
        }
        finally
        {
            foreach (var (_, tcs) in _pending) tcs.TrySetException(new QmpDisconnectedException(reason));
            _pending.Clear();
            _closed.TrySetResult();
        }
    }

    public Task<JsonElement> ExecuteAsync(string command, object? arguments = null, CancellationToken ct = default) =>
        ExecuteAsync(command, arguments, DefaultTimeout, ct);

    public async Task<JsonElement> ExecuteAsync(string command, object? arguments, TimeSpan timeout, CancellationToken ct = default)
    {
        var pending = await SendAsync([(command, arguments)], ct);
        return await AwaitReplyAsync(command, pending[0], timeout, ct);
    }

    /// <summary>
    /// Writes several commands in one write, without waiting between them. QMP runs them in order; this
    /// keeps the gap between, say, <c>stop</c> and <c>cont</c> as small as the emulator allows.
    /// </summary>
    public async Task<IReadOnlyList<Task<JsonElement>>> SendAsync(IReadOnlyList<(string Command, object? Arguments)> commands, CancellationToken ct = default)
    {
        if (_closed.Task.IsCompleted) throw new QmpDisconnectedException("The QMP connection is closed.");
        var sb = new StringBuilder();
        var tasks = new List<Task<JsonElement>>();
        foreach (var (command, arguments) in commands)
        {
            var id = Interlocked.Increment(ref _nextId);
            var tcs = new TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously);
            _pending[id] = tcs;
            tasks.Add(tcs.Task);
            var msg = new JsonObject { ["execute"] = command, ["id"] = id };
            if (arguments is not null) msg["arguments"] = arguments as JsonNode ?? JsonSerializer.SerializeToNode(arguments);
            sb.Append(msg.ToJsonString()).Append('\n');
        }
        var bytes = Encoding.UTF8.GetBytes(sb.ToString());
        await _writeLock.WaitAsync(ct);
        try
        {
            await _stream.WriteAsync(bytes, ct);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            throw new QmpDisconnectedException("Could not write to QMP: " + e.Message);
        }
        finally
        {
            _writeLock.Release();
        }
        return tasks;
    }

    public static async Task<JsonElement> AwaitReplyAsync(string command, Task<JsonElement> reply, TimeSpan timeout, CancellationToken ct = default)
    {
        try
        {
            return await reply.WaitAsync(timeout, ct);
        }
        catch (TimeoutException)
        {
            throw new QmpException($"QEMU did not answer '{command}' within {timeout.TotalSeconds:0.#} s.");
        }
    }

    /// <summary>Runs an HMP command; its errors come back as text, not as a QMP error.</summary>
    public async Task<string> HumanCommandAsync(string commandLine, CancellationToken ct = default)
    {
        var r = await ExecuteAsync("human-monitor-command", new { command_line = commandLine }, ct);
        return r.ValueKind == JsonValueKind.String ? r.GetString() ?? "" : "";
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
        _stream.Dispose();
        try { await _readLoop.WaitAsync(TimeSpan.FromSeconds(2)); } catch (Exception) { }
        _closed.TrySetResult();
        _cts.Dispose();
    }
}
