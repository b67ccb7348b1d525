using System.Buffers;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;

namespace Appliance.Core.Console;

public sealed record ByteProxyOptions
{
    /// <summary>Largest websocket message sent to the browser: what the socket has ready is coalesced up to this.</summary>
    public int MaxFrameBytes { get; init; } = 256 * 1024;
    public int ReceiveBufferBytes { get; init; } = 64 * 1024;
    /// <summary>No bytes either way for this long ends the session.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromMinutes(30);
    /// <summary>How long a close handshake may take before the socket is aborted.</summary>
    public TimeSpan CloseTimeout { get; init; } = TimeSpan.FromSeconds(2);
}

public enum ProxyEnd { ClientClosed, TargetClosed, Stopped, IdleTimeout, Failed }

public sealed record ProxyResult(ProxyEnd End, string Reason, long BytesToClient, long BytesToTarget);

/// <summary>
/// Pumps bytes between a websocket and a stream socket, after YARP's StreamCopier: two loops with pooled
/// buffers, each awaiting its write before reading more (so a slow reader slows the writer instead of
/// growing memory), an idle timeout reset by every transfer, and the first side to end or fail ends the other.
/// </summary>
public static class ByteProxy
{
    /// <summary>
    /// Runs until either side ends. With a <paramref name="sink"/> (see <see cref="DirectWebSocket"/>) the target's
    /// bytes go to the client through it; <paramref name="ws"/> then carries only the client's messages and control frames.
    /// </summary>
    public static async Task<ProxyResult> RunAsync(WebSocket ws, Socket target, ByteProxyOptions o, Task<string> stopped, CancellationToken ct,
        WebSocketFrameSink? sink = null)
    {
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(ct);
        using var idleStop = new CancellationTokenSource();
        // A timestamp per transfer, checked by one timer: re-arming a timer for every message costs more.
        var lastTouch = new[] { Environment.TickCount64 };
        var idle = IdleAsync(lastTouch, o.IdleTimeout, idleStop.Token);
        var counters = new long[2];
        void Touch() => Volatile.Write(ref lastTouch[0], Environment.TickCount64);

        var up = sink is null
            ? TargetToClientAsync(ws, target, o.MaxFrameBytes, counters, Touch, abort.Token)
            : TargetToSinkAsync(sink, target, o.MaxFrameBytes, counters, Touch, abort.Token);
        var down = ClientToTargetAsync(ws, target, o.ReceiveBufferBytes, counters, Touch, abort.Token);
        var first = await Task.WhenAny(up, down, stopped, idle);
        await idleStop.CancelAsync();

        if (first == down)
        {
            var end = down.IsCompletedSuccessfully ? ProxyEnd.ClientClosed : ProxyEnd.Failed;
            ShutdownTarget(target);
            await abort.CancelAsync();
            await Quietly(up);
            if (ws.State == WebSocketState.CloseReceived) await CloseAsync(ws, WebSocketCloseStatus.NormalClosure, "", o.CloseTimeout);
            return new ProxyResult(end, end == ProxyEnd.ClientClosed ? "The viewer closed the connection." : Describe(down.Exception), counters[0], counters[1]);
        }

        ProxyEnd how;
        string reason;
        WebSocketCloseStatus status;
        if (first == up)
        {
            how = up.IsCompletedSuccessfully ? ProxyEnd.TargetClosed : ProxyEnd.Failed;
            // The display socket usually closes a moment before the supervisor reports why: give it that moment.
            reason = await Task.WhenAny(stopped, Task.Delay(500, ct)) == stopped && stopped.IsCompletedSuccessfully
                ? stopped.Result
                : how == ProxyEnd.TargetClosed ? "The VM's display closed the connection." : Describe(up.Exception);
            status = how == ProxyEnd.TargetClosed ? WebSocketCloseStatus.EndpointUnavailable : WebSocketCloseStatus.InternalServerError;
        }
        else if (first == stopped)
        {
            how = ProxyEnd.Stopped;
            reason = stopped.IsCompletedSuccessfully ? stopped.Result : "The console was closed.";
            status = WebSocketCloseStatus.EndpointUnavailable;
        }
        else
        {
            how = ProxyEnd.IdleTimeout;
            reason = $"No console traffic for {o.IdleTimeout.TotalSeconds:0} s.";
            status = WebSocketCloseStatus.NormalClosure;
        }

        ShutdownTarget(target);
        // A send still in flight would collide with the close frame: let it finish, or abort if the browser stalls it.
        if (await Task.WhenAny(up, Task.Delay(o.CloseTimeout, CancellationToken.None)) != up) await abort.CancelAsync();
        await Quietly(up);
        await CloseAsync(ws, status, reason, o.CloseTimeout);
        if (await Task.WhenAny(down, Task.Delay(o.CloseTimeout, CancellationToken.None)) != down) await abort.CancelAsync();
        await Quietly(down);
        return new ProxyResult(how, reason, counters[0], counters[1]);
    }

    /// <summary>Completes once nothing moved for <paramref name="timeout"/>; canceled when the session ends another way.</summary>
    private static async Task IdleAsync(long[] lastTouch, TimeSpan timeout, CancellationToken ct)
    {
        while (true)
        {
            var quiet = TimeSpan.FromMilliseconds(Environment.TickCount64 - Volatile.Read(ref lastTouch[0]));
            if (quiet >= timeout) return;
            await Task.Delay(timeout - quiet, ct);
        }
    }

    private static async Task TargetToClientAsync(WebSocket ws, Socket target, int max, long[] counters, Action touch, CancellationToken ct)
    {
        var buf = ArrayPool<byte>.Shared.Rent(max);
        try
        {
            while (true)
            {
                var n = await target.ReceiveAsync(buf.AsMemory(0, max), SocketFlags.None, ct);
                if (n == 0) return;
                // Coalesce what is already waiting into one larger message: fewer, bigger frames move more bytes per second.
                while (n < max && target.Available > 0)
                {
                    var m = target.Receive(buf, n, max - n, SocketFlags.None);
                    if (m <= 0) break;
                    n += m;
                }
                await ws.SendAsync(buf.AsMemory(0, n), WebSocketMessageType.Binary, true, ct);
                Interlocked.Add(ref counters[0], n);
                touch();
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private static Task TargetToSinkAsync(WebSocketFrameSink sink, Socket target, int max, long[] counters, Action touch, CancellationToken ct) =>
        sink.PumpAsync(target, max, n =>
        {
            Interlocked.Add(ref counters[0], n);
            touch();
        }, ct);

    private static async Task ClientToTargetAsync(WebSocket ws, Socket target, int size, long[] counters, Action touch, CancellationToken ct)
    {
        var buf = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            while (true)
            {
                var r = await ws.ReceiveAsync(buf.AsMemory(0, size), ct);
                if (r.MessageType == WebSocketMessageType.Close) return;
                if (r.Count == 0) continue;
                await target.SendAsync(buf.AsMemory(0, r.Count), SocketFlags.None, ct);
                Interlocked.Add(ref counters[1], r.Count);
                touch();
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private static void ShutdownTarget(Socket s)
    {
        try { s.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    private static async Task CloseAsync(WebSocket ws, WebSocketCloseStatus status, string reason, TimeSpan timeout)
    {
        if (ws.State is not (WebSocketState.Open or WebSocketState.CloseReceived)) return;
        using var cts = new CancellationTokenSource(timeout);
        try { await ws.CloseOutputAsync(status, Truncate(reason), cts.Token); }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException or ObjectDisposedException) { }
    }

    /// <summary>A close reason may carry at most 123 bytes of UTF-8.</summary>
    public static string Truncate(string reason)
    {
        if (Encoding.UTF8.GetByteCount(reason) <= 123) return reason;
        var s = reason;
        while (Encoding.UTF8.GetByteCount(s) > 120) s = s[..^1];
        return s + "...";
    }

    private static async Task Quietly(Task t)
    {
        try { await t; }
        catch (Exception e) when (e is WebSocketException or SocketException or OperationCanceledException or IOException or ObjectDisposedException) { }
    }

    private static string Describe(Exception? e) => (e?.GetBaseException().Message ?? "The connection failed.");
}
