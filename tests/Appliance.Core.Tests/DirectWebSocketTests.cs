using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Appliance.Core.Console;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Appliance.Core.Tests;

/// <summary>
/// The console proxy's websocket on a real Kestrel server, against a unix-socket source: every byte arrives in
/// order, the framework's control frames never land inside a message, the close reason arrives, a client that
/// stops reading stops the source, and HTTP/2 websockets take the framework's path.
/// </summary>
public sealed class DirectWebSocketTests : IAsyncLifetime
{
    private readonly string _dir = Directory.CreateTempSubdirectory("appliance-ws-").FullName;
    private WebApplication _app = null!;
    private Socket _listener = null!;
    private Uri _h1 = null!, _h2 = null!, _tls = null!;
    private readonly TaskCompletionSource<Socket> _sourceConn = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<(bool Direct, ProxyResult Result)> _proxied = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public async Task InitializeAsync()
    {
        var sock = Path.Combine(_dir, "source.sock");
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(sock));
        _listener.Listen(4);
        _ = Task.Run(async () => _sourceConn.TrySetResult(await _listener.AcceptAsync()));

        var b = WebApplication.CreateSlimBuilder();
        b.Logging.ClearProviders();
        b.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0);
            k.Listen(IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2);
            k.Listen(IPAddress.Loopback, 0, l =>
            {
                l.Protocols = HttpProtocols.Http1;
                l.UseHttps(SelfSigned());
            });
        });
        _app = b.Build();
        _app.UseWebSockets();
        _app.Map("/proxy", async (HttpContext ctx) =>
        {
            var target = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await target.ConnectAsync(new UnixDomainSocketEndPoint(sock));
            var (ws, sink) = await DirectWebSocket.AcceptAsync(ctx, "binary");
            using (ws)
            using (target)
            {
                var o = ctx.Request.Query["idleMs"] is { Count: 1 } idle ? new ByteProxyOptions { IdleTimeout = TimeSpan.FromMilliseconds(int.Parse(idle[0]!)) } : new ByteProxyOptions();
                var r = await ByteProxy.RunAsync(ws, target, o, new TaskCompletionSource<string>().Task, ctx.RequestAborted, sink);
                _proxied.TrySetResult((sink is not null, r));
            }
        });
        await _app.StartAsync();
        // Kestrel lists addresses in listen order: HTTP/1.1, HTTP/2 only, HTTPS.
        var all = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToList();
        _h1 = new Uri($"ws://127.0.0.1:{all[0].Port}/proxy");
        _h2 = new Uri($"ws://127.0.0.1:{all[1].Port}/proxy");
        _tls = new Uri($"wss://127.0.0.1:{all[2].Port}/proxy");
    }

    private static X509Certificate2 SelfSigned()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
    }

    public async Task DisposeAsync()
    {
        await _app.DisposeAsync();
        _listener.Dispose();
        Directory.Delete(_dir, true);
    }

    private static async Task<ClientWebSocket> ConnectAsync(Uri uri, TimeSpan? pingEvery = null, bool http2 = false)
    {
        var ws = new ClientWebSocket();
        ws.Options.AddSubProtocol("binary");
        if (uri.Scheme == "wss") ws.Options.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        if (pingEvery is { } p)
        {
            ws.Options.KeepAliveInterval = p;
            ws.Options.KeepAliveTimeout = TimeSpan.FromSeconds(5);
        }
        if (http2)
        {
            ws.Options.HttpVersion = HttpVersion.Version20;
            ws.Options.HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact;
            ws.Options.CollectHttpResponseDetails = true;
            using var invoker = new HttpMessageInvoker(new SocketsHttpHandler());
            await ws.ConnectAsync(uri, invoker, CancellationToken.None);
            return ws;
        }
        await ws.ConnectAsync(uri, CancellationToken.None);
        return ws;
    }

    /// <summary>The source writes <paramref name="total"/> random bytes in chunks of random size, then closes.</summary>
    private static async Task<byte[]> WriteRandomAsync(Socket source, int total, int seed)
    {
        var data = new byte[total];
        var rng = new Random(seed);
        rng.NextBytes(data);
        for (var at = 0; at < total;)
        {
            var n = Math.Min(total - at, rng.Next(1, 300_000));
            at += await source.SendAsync(data.AsMemory(at, n), SocketFlags.None);
        }
        source.Shutdown(SocketShutdown.Send);
        return SHA256.HashData(data);
    }

    private static async Task<(byte[] Sha256, long Bytes, int Messages, int Largest, WebSocketReceiveResult Close)> ReadAllAsync(ClientWebSocket ws)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = new byte[1 << 20];
        long bytes = 0;
        int messages = 0, largest = 0, current = 0;
        while (true)
        {
            var r = await ws.ReceiveAsync(buf, CancellationToken.None);
            if (r.MessageType == WebSocketMessageType.Close) return (sha.GetHashAndReset(), bytes, messages, largest, r);
            Assert.Equal(WebSocketMessageType.Binary, r.MessageType);
            sha.AppendData(buf, 0, r.Count);
            bytes += r.Count;
            current += r.Count;
            if (r.EndOfMessage)
            {
                messages++;
                largest = Math.Max(largest, current);
                current = 0;
            }
        }
    }

    [Fact(Timeout = 60_000)]
    public async Task Http11Upgrade_SourceStream_EveryByteInOrderAsBinaryMessagesThenCloseReason()
    {
        using var ws = await ConnectAsync(_h1);
        using var source = await _sourceConn.Task;
        var sent = WriteRandomAsync(source, 24 << 20, 1);
        var got = await ReadAllAsync(ws);

        Assert.Equal(await sent, got.Sha256);
        Assert.Equal(24L << 20, got.Bytes);
        Assert.InRange(got.Largest, 1, new ByteProxyOptions().MaxFrameBytes);
        Assert.Equal(WebSocketCloseStatus.EndpointUnavailable, got.Close.CloseStatus);
        Assert.Equal("The VM's display closed the connection.", got.Close.CloseStatusDescription);
        var (direct, result) = await _proxied.Task;
        Assert.True(direct, "an HTTP/1.1 upgrade should take the frame-sink path");
        Assert.Equal((ProxyEnd.TargetClosed, 24L << 20), (result.End, result.BytesToClient));
    }

    [Fact(Timeout = 60_000)]
    public async Task Http11Upgrade_ClientPingsWhileStreaming_PongsNeverLandInsideAMessage()
    {
        // The client pings every 2 ms and fails if a pong is late or a frame is malformed: the server's pongs
        // share the connection with the sink's messages.
        Assert.True(await StreamIntactAsync(_h1, 48 << 20, seed: 2, pingEvery: TimeSpan.FromMilliseconds(2)));
    }

    /// <summary>Streams random bytes from the source to a client; checks they all arrive in order and the close. Returns whether the sink was used.</summary>
    private async Task<bool> StreamIntactAsync(Uri uri, int bytes, int seed, TimeSpan? pingEvery = null, bool http2 = false)
    {
        using var ws = await ConnectAsync(uri, pingEvery, http2);
        if (http2) Assert.Equal(HttpStatusCode.OK, ws.HttpStatusCode); // 200 on an HTTP/2 CONNECT, where HTTP/1.1 says 101
        using var source = await _sourceConn.Task;
        var sent = WriteRandomAsync(source, bytes, seed);
        var got = await ReadAllAsync(ws);
        Assert.Equal(await sent, got.Sha256);
        Assert.Equal(WebSocketCloseStatus.EndpointUnavailable, got.Close.CloseStatus);
        return (await _proxied.Task).Direct;
    }

    [Fact(Timeout = 30_000)]
    public async Task Http11Upgrade_ClientMessages_ReachTheSourceAndClientCloseEndsTheSession()
    {
        using var ws = await ConnectAsync(_h1);
        using var source = await _sourceConn.Task;
        var keys = Enumerable.Range(0, 50).Select(i => (byte)i).ToArray();
        foreach (var k in keys) await ws.SendAsync(new[] { k, (byte)(k ^ 0xff) }, WebSocketMessageType.Binary, true, CancellationToken.None);
        var buf = new byte[100];
        var n = 0;
        while (n < 100) n += await source.ReceiveAsync(buf.AsMemory(n), SocketFlags.None);
        Assert.Equal(keys.SelectMany(k => new[] { k, (byte)(k ^ 0xff) }), buf);

        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
        Assert.Equal(WebSocketState.Closed, ws.State);
        var (_, result) = await _proxied.Task;
        Assert.Equal(ProxyEnd.ClientClosed, result.End);
        Assert.Equal(0, await source.ReceiveAsync(buf, SocketFlags.None)); // the proxy shut the source down
    }

    [Fact(Timeout = 60_000)]
    public async Task Http11Upgrade_ClientStopsReading_SourceIsHeldBackThenResumes()
    {
        using var ws = await ConnectAsync(_h1);
        using var source = await _sourceConn.Task;
        long written = 0;
        var chunk = new byte[64 << 10];
        var writer = Task.Run(async () =>
        {
            try
            {
                while (true) Interlocked.Add(ref written, await source.SendAsync(chunk, SocketFlags.None));
            }
            catch (SocketException) { }
            catch (ObjectDisposedException) { }
        });

        // No reads: the source must stall once the socket and pipe buffers are full, not run on into memory.
        var last = -1L;
        var stableSince = DateTime.UtcNow;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (DateTime.UtcNow - stableSince < TimeSpan.FromMilliseconds(500))
        {
            Assert.True(DateTime.UtcNow < deadline, $"the source never stalled ({Interlocked.Read(ref written)} bytes written)");
            var now = Interlocked.Read(ref written);
            if (now != last) (last, stableSince) = (now, DateTime.UtcNow);
            await Task.Delay(20);
        }
        Assert.InRange(last, 1, 64L << 20);

        // Reading again lets it go on.
        var buf = new byte[1 << 20];
        long read = 0;
        while (read < last + (8 << 20)) read += (await ws.ReceiveAsync(buf, CancellationToken.None)).Count;
        Assert.True(Interlocked.Read(ref written) > last);
        source.Dispose();
        await writer;
    }

    [Fact(Timeout = 30_000)]
    public async Task IdleTimeout_TrafficKeepsTheSessionThenSilenceClosesIt()
    {
        using var ws = await ConnectAsync(new Uri(_h1 + "?idleMs=2000"));
        using var source = await _sourceConn.Task;
        var buf = new byte[64];
        // Input every 250 ms for 3 s, longer than the idle timeout, and the session stays.
        for (var i = 0; i < 12; i++)
        {
            await ws.SendAsync(new byte[] { (byte)i }, WebSocketMessageType.Binary, true, CancellationToken.None);
            var n = await source.ReceiveAsync(buf, SocketFlags.None);
            var proxy = _proxied.Task.IsCompleted ? (await _proxied.Task).Result.ToString() : "running";
            Assert.True(n == 1, $"round {i}: {n} bytes; proxy: {proxy}");
            await Task.Delay(250);
        }
        Assert.Equal(WebSocketState.Open, ws.State);
        Assert.False(_proxied.Task.IsCompleted);

        // Then nothing: closed with the reason.
        var started = DateTime.UtcNow;
        var r = await ws.ReceiveAsync(buf, CancellationToken.None);
        Assert.Equal(WebSocketMessageType.Close, r.MessageType);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, r.CloseStatus);
        Assert.Equal("No console traffic for 2 s.", r.CloseStatusDescription);
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromMilliseconds(1500), TimeSpan.FromSeconds(15));
        Assert.Equal(ProxyEnd.IdleTimeout, (await _proxied.Task).Result.End);
    }

    [Fact(Timeout = 60_000)]
    public async Task TlsUpgrade_SinkWritesThroughTls_EveryByteInOrderWithPings()
    {
        // The sink writes into the connection's pipe above TLS, so its bytes are encrypted like the framework's.
        Assert.True(await StreamIntactAsync(_tls, 16 << 20, seed: 4, pingEvery: TimeSpan.FromMilliseconds(5)));
    }

    [Fact(Timeout = 60_000)]
    public async Task Http2Websocket_TakesTheFrameworkPath_EveryByteInOrder()
    {
        Assert.False(await StreamIntactAsync(_h2, 8 << 20, seed: 3, http2: true));
    }
}
