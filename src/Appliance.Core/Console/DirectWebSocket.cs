using System.IO.Pipelines;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Console;

/// <summary>
/// Accepts a websocket so that a proxy can send the target's bytes without copying them in user space twice.
/// Frames from server to client are not masked, so the payload is the target's bytes as they are: on an
/// HTTP/1.1 upgrade they are received straight into the connection's output buffer behind a frame header
/// (<see cref="WebSocketFrameSink"/>), where the framework's websocket would copy them into its own send buffer
/// and then into the connection's. Everything else (reading and unmasking the client's frames, ping, pong,
/// close) stays with the framework's websocket, whose writes share one gate with the sink so frames never
/// interleave. HTTP/2 websockets and hosts without a connection pipe get the framework's websocket alone.
/// </summary>
public static class DirectWebSocket
{
    private const string AcceptGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

    public static async Task<(WebSocket Socket, WebSocketFrameSink? Sink)> AcceptAsync(HttpContext ctx, string? subProtocol)
    {
        var upgrade = ctx.Features.Get<IHttpUpgradeFeature>();
        var transport = ctx.Features.Get<IConnectionTransportFeature>()?.Transport;
        var key = ctx.Request.Headers.SecWebSocketKey.ToString();
        if (upgrade is not { IsUpgradableRequest: true } || transport is null || !HttpMethods.IsGet(ctx.Request.Method) || !ValidKey(key))
            return (await ctx.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { SubProtocol = subProtocol }), null);

        var keepAlive = ctx.RequestServices.GetService<IOptions<WebSocketOptions>>()?.Value.KeepAliveInterval ?? TimeSpan.FromMinutes(2);
        ctx.Response.Headers.Connection = "Upgrade";
        ctx.Response.Headers.Upgrade = "websocket";
        ctx.Response.Headers.SecWebSocketAccept = Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key + AcceptGuid)));
        if (subProtocol is not null) ctx.Response.Headers.SecWebSocketProtocol = subProtocol;
        var stream = await upgrade.UpgradeAsync();
        var gate = new SemaphoreSlim(1, 1);
        var ws = WebSocket.CreateFromStream(new GatedStream(stream, gate),
            new WebSocketCreationOptions { IsServer = true, SubProtocol = subProtocol, KeepAliveInterval = keepAlive });
        return (ws, new WebSocketFrameSink(transport.Output, gate));
    }

    private static bool ValidKey(string key)
    {
        Span<byte> raw = stackalloc byte[18];
        return key.Length == 24 && Convert.TryFromBase64String(key, raw, out var n) && n == 16;
    }

    /// <summary>The upgraded stream with every write behind the gate the sink also takes.</summary>
    private sealed class GatedStream(Stream inner, SemaphoreSlim gate) : Stream
    {
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(buffer, ct);
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) => inner.ReadAsync(buffer, offset, count, ct);

        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => WriteAsync(buffer.AsMemory(offset, count), ct).AsTask();

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            await gate.WaitAsync(ct);
            try { await inner.WriteAsync(buffer, ct); }
            finally { gate.Release(); }
        }

        public override void Flush() => FlushAsync().GetAwaiter().GetResult();

        public override async Task FlushAsync(CancellationToken ct)
        {
            await gate.WaitAsync(ct);
            try { await inner.FlushAsync(ct); }
            finally { gate.Release(); }
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>
/// Sends what a source socket has ready as binary websocket messages, received straight into the connection's
/// output pipe behind a frame header. Writes share a gate with the websocket's own (control frames).
/// </summary>
public sealed class WebSocketFrameSink(PipeWriter output, SemaphoreSlim gate)
{
    private readonly byte[] _stash = new byte[16 << 10];

    /// <summary>Runs until the source ends (returns), fails or <paramref name="ct"/> fires (throws); <paramref name="sent"/> gets each payload size.</summary>
    public async Task PumpAsync(Socket source, int max, Action<int> sent, CancellationToken ct)
    {
        while (true)
        {
            var n = await SendOneAsync(source, max, ct);
            if (n == 0) return;
            sent(n);
        }
    }

    /// <summary>
    /// Waits until the source has bytes, then sends what it has ready (at most <paramref name="max"/>) as one
    /// message; 0 at the source's end of stream. The flush waits while the client is slower than the source,
    /// so memory stays bounded by the connection's response buffer.
    /// </summary>
    private async ValueTask<int> SendOneAsync(Socket source, int max, CancellationToken ct)
    {
        // A busy display has bytes waiting already; an idle one is waited for with a receive into a small
        // buffer of our own (no output buffer is held while waiting), whose bytes lead the message.
        var ready = source.Available;
        var stashed = 0;
        if (ready == 0)
        {
            stashed = await source.ReceiveAsync(_stash.AsMemory(0, Math.Min(_stash.Length, max)), SocketFlags.None, ct);
            if (stashed == 0) return 0;
            ready = source.Available;
        }
        var n = stashed + Math.Min(ready, max - stashed);
        await gate.WaitAsync(ct);
        try
        {
            var span = output.GetSpan(10 + n);
            var header = WriteHeader(span, n);
            _stash.AsSpan(0, stashed).CopyTo(span[header..]);
            var got = stashed;
            while (got < n)
            {
                var m = source.Receive(span.Slice(header + got, n - got), SocketFlags.None);
                if (m <= 0) throw new SocketException((int)SocketError.ConnectionReset);
                got += m;
            }
            output.Advance(header + n);
            var flush = await output.FlushAsync(ct);
            if (flush.IsCanceled) throw new OperationCanceledException(ct);
            if (flush.IsCompleted) throw new WebSocketException(WebSocketError.ConnectionClosedPrematurely);
        }
        finally { gate.Release(); }
        return n;
    }

    /// <summary>RFC 6455 5.2: FIN + binary, then the length in the fewest bytes; no mask from a server.</summary>
    internal static int WriteHeader(Span<byte> span, int n)
    {
        span[0] = 0x82;
        if (n < 126)
        {
            span[1] = (byte)n;
            return 2;
        }
        if (n <= ushort.MaxValue)
        {
            span[1] = 126;
            span[2] = (byte)(n >> 8);
            span[3] = (byte)n;
            return 4;
        }
        span[1] = 127;
        for (var i = 0; i < 8; i++) span[2 + i] = (byte)((long)n >> (56 - 8 * i));
        return 10;
    }
}
