// Console proxy benchmark. `serve` hosts the unix-socket servers (a bulk stream and an echo), the
// appliance's ByteProxy on Kestrel and a bare Kestrel websocket sender; `measure` is the .NET client
// that drives them, websockify and the unix sockets directly, in one run. Only 127.0.0.1 and unix sockets.
using System.Diagnostics;
using System.Net.Sockets;
using System.Net.WebSockets;
using Appliance.Core.Console;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

var mode = args.Length > 0 ? args[0] : "";
string Arg(string name, string def) { var i = Array.IndexOf(args, "--" + name); return i >= 0 && i + 1 < args.Length ? args[i + 1] : def; }
var dir = Arg("dir", "bench/out");
var streamSock = Path.Combine(dir, "stream.sock");
var echoSock = Path.Combine(dir, "echo.sock");

if (mode == "serve") await Serve(int.Parse(Arg("port", "5199")));
else if (mode == "measure") await Measure(int.Parse(Arg("port", "5199")), int.Parse(Arg("ws-stream", "5198")), int.Parse(Arg("ws-echo", "5197")),
    long.Parse(Arg("bytes", (2L << 30).ToString())), int.Parse(Arg("reps", "5")), int.Parse(Arg("pings", "3000")));
else { Console.Error.WriteLine("usage: ConsoleBench serve|measure [--dir D] [--port P] ..."); return 2; }
return 0;

async Task Serve(int port)
{
    Directory.CreateDirectory(dir);
    foreach (var s in new[] { streamSock, echoSock }) File.Delete(s);
    var chunk = new byte[256 * 1024];
    new Random(1).NextBytes(chunk);
    _ = Listen(streamSock, async c =>
    {
        // An endless stream for as long as the reader wants it, like a VNC server with a busy screen.
        while (true) await c.SendAsync(chunk, SocketFlags.None);
    });
    _ = Listen(echoSock, async c =>
    {
        var buf = new byte[64 * 1024];
        while (true)
        {
            var n = await c.ReceiveAsync(buf, SocketFlags.None);
            if (n == 0) return;
            await c.SendAsync(buf.AsMemory(0, n), SocketFlags.None);
        }
    });

    var b = WebApplication.CreateSlimBuilder();
    b.Logging.ClearProviders();
    b.WebHost.UseUrls($"http://127.0.0.1:{port}");
    var app = b.Build();
    app.UseWebSockets();
    // The appliance's proxy exactly as ConsoleApi runs it, minus the ticket check (done once per connection).
    // `?path=framework`: the fallback path (HTTP/2 websockets, hosts without a connection pipe), the framework's websocket alone.
    app.Map("/proxy/{target}", async (string target, HttpContext ctx) =>
    {
        var sock = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await sock.ConnectAsync(new UnixDomainSocketEndPoint(target == "echo" ? echoSock : streamSock));
        var proto = ctx.WebSockets.WebSocketRequestedProtocols.Contains("binary") ? "binary" : null;
        var want = ctx.Request.Query["path"].ToString() is { Length: > 0 } p ? p : "pipe";
        var (ws, sink) = want == "framework"
            ? (await ctx.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { SubProtocol = proto }), null)
            : await DirectWebSocket.AcceptAsync(ctx, proto);
        if ((sink is null ? "framework" : "pipe") != want) throw new InvalidOperationException($"wanted the {want} path");
        using (ws)
        using (sock)
        {
            var r = await ByteProxy.RunAsync(ws, sock, new ByteProxyOptions(), new TaskCompletionSource<string>().Task, ctx.RequestAborted, sink);
            if (r.End is not ProxyEnd.ClientClosed) Console.Error.WriteLine($"{want}: {r.End} {r.Reason}");
        }
    });
    // The ceiling for any websocket server here: Kestrel sending one prepared buffer over and over.
    app.Map("/bare", async (int size, HttpContext ctx) =>
    {
        var buf = chunk.AsMemory(0, Math.Min(size, chunk.Length));
        var proto = ctx.WebSockets.WebSocketRequestedProtocols.Contains("binary") ? "binary" : null;
        using var ws = await ctx.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { SubProtocol = proto });
        var closing = ws.ReceiveAsync(new byte[16], CancellationToken.None);
        try { while (!closing.IsCompleted) await ws.SendAsync(buf, WebSocketMessageType.Binary, true, ctx.RequestAborted); }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
    });
    Console.WriteLine("ready");
    await app.RunAsync();
}

async Task Listen(string path, Func<Socket, Task> handle)
{
    using var l = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    l.Bind(new UnixDomainSocketEndPoint(path));
    l.Listen(64);
    while (true)
    {
        var c = await l.AcceptAsync();
        _ = Task.Run(async () =>
        {
            try { await handle(c); }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException) { }
            finally { c.Dispose(); }
        });
    }
}

async Task Measure(int port, int wsStream, int wsEcho, long bytes, int reps, int pings)
{
    var proxyStream = new Uri($"ws://127.0.0.1:{port}/proxy/stream");
    var proxyEcho = new Uri($"ws://127.0.0.1:{port}/proxy/echo");
    var wsfStream = new Uri($"ws://127.0.0.1:{wsStream}/");
    var wsfEcho = new Uri($"ws://127.0.0.1:{wsEcho}/");

    Console.WriteLine($"| throughput ({bytes >> 20} MiB per run, median of {reps}, interleaved) | GB/s | vs websockify | vs bare Kestrel 256 KiB | avg message |");
    Console.WriteLine("|---|---:|---:|---:|---:|");
    // Interleaved rounds (each variant once per round) so drift on a shared machine hits all of them alike.
    var variants = new (string Name, Func<Task<(double, double)>> Run)[]
    {
        ("direct", () => UnixRead(streamSock, bytes)),
        ("proxy", () => WsRead(proxyStream, bytes)),
        ("framework", () => WsRead(new Uri(proxyStream + "?path=framework"), bytes)),
        ("websockify", () => WsRead(wsfStream, bytes)),
        ("bare64", () => WsRead(new Uri($"ws://127.0.0.1:{port}/bare?size=65536"), bytes)),
        ("bare256", () => WsRead(new Uri($"ws://127.0.0.1:{port}/bare?size=262144"), bytes)),
    };
    foreach (var v in variants) await v.Run(); // warm-up
    var results = variants.ToDictionary(v => v.Name, _ => new List<(double, double)>());
    for (var i = 0; i < reps; i++)
        foreach (var v in variants) results[v.Name].Add(await v.Run());
    (double Gbs, double AvgMsg) Med(string name) => results[name].OrderBy(x => x.Item1).ElementAt(reps / 2);
    var (direct, proxy, wsf, bare64, bare256) = (Med("direct"), Med("proxy"), Med("websockify"), Med("bare64"), Med("bare256"));
    void Row(string name, (double Gbs, double AvgMsg) r) =>
        Console.WriteLine($"| {name} | {r.Gbs:0.00} | {r.Gbs / wsf.Gbs:0.00}x | {r.Gbs / bare256.Gbs:P0} | {(r.AvgMsg > 0 ? $"{r.AvgMsg / 1024:0} KiB" : "-")} |");
    Row("direct unix-socket read (ceiling)", direct);
    Row("appliance proxy (ByteProxy + WebSocketFrameSink on Kestrel)", proxy);
    Row("appliance proxy, framework websocket only (HTTP/2 fallback)", Med("framework"));
    Row("websockify 0.10 (Debian)", wsf);
    Row("bare Kestrel sender, 64 KiB messages", bare64);
    Row("bare Kestrel sender, 256 KiB messages", bare256);

    Console.WriteLine();
    Console.WriteLine($"| 20 concurrent viewers ({bytes >> 20} MiB in total, median of {reps}, interleaved) | aggregate GB/s | slowest viewer GB/s |");
    Console.WriteLine("|---|---:|---:|");
    var many = new Dictionary<string, List<(double, double)>> { ["appliance proxy"] = [], ["websockify"] = [] };
    for (var i = 0; i < reps; i++)
    {
        many["appliance proxy"].Add(await Concurrent(proxyStream, 20, bytes / 20));
        many["websockify"].Add(await Concurrent(wsfStream, 20, bytes / 20));
    }
    foreach (var (name, list) in many)
    {
        var r = list.OrderBy(x => x.Item1).ElementAt(reps / 2);
        Console.WriteLine($"| {name} | {r.Item1:0.00} | {r.Item2:0.00} |");
    }

    Console.WriteLine();
    Console.WriteLine($"| round trip, 16-byte messages ({pings} per run) | median µs | p99 µs | added vs direct (median) |");
    Console.WriteLine("|---|---:|---:|---:|");
    var d = await UnixPing(echoSock, pings);
    var p = await WsPing(proxyEcho, pings);
    var w = await WsPing(wsfEcho, pings);
    Console.WriteLine($"| direct unix socket | {d.Median:0} | {d.P99:0} | - |");
    Console.WriteLine($"| appliance proxy | {p.Median:0} | {p.P99:0} | {p.Median - d.Median:0} µs |");
    Console.WriteLine($"| websockify | {w.Median:0} | {w.P99:0} | {w.Median - d.Median:0} µs |");
}

static async Task<(double, double)> UnixRead(string path, long bytes)
{
    using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    await s.ConnectAsync(new UnixDomainSocketEndPoint(path));
    var buf = new byte[1 << 20];
    long got = 0, reads = 0;
    var sw = Stopwatch.StartNew();
    using var cap = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    while (got < bytes && !cap.IsCancellationRequested) { got += await s.ReceiveAsync(buf, SocketFlags.None); reads++; }
    return (got / sw.Elapsed.TotalSeconds / 1e9, 0);
}

static async Task<(double, double)> WsRead(Uri uri, long bytes)
{
    using var ws = new ClientWebSocket();
    ws.Options.AddSubProtocol("binary");
    await ws.ConnectAsync(uri, CancellationToken.None);
    var buf = new byte[1 << 20];
    long got = 0, messages = 0;
    var sw = Stopwatch.StartNew();
    using var cap = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    while (got < bytes)
    {
        var r = await ws.ReceiveAsync(buf.AsMemory(), cap.Token);
        got += r.Count;
        if (r.EndOfMessage) messages++;
    }
    var gbs = got / sw.Elapsed.TotalSeconds / 1e9;
    await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
    return (gbs, (double)got / Math.Max(1, messages));
}

static async Task<(double, double)> Concurrent(Uri uri, int viewers, long each)
{
    var sw = Stopwatch.StartNew();
    var rates = await Task.WhenAll(Enumerable.Range(0, viewers).Select(_ => Task.Run(() => WsRead(uri, each))));
    return (viewers * each / sw.Elapsed.TotalSeconds / 1e9, rates.Min(r => r.Item1));
}

static async Task<(double Median, double P99)> UnixPing(string path, int n)
{
    using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    await s.ConnectAsync(new UnixDomainSocketEndPoint(path));
    var msg = new byte[16];
    var back = new byte[16];
    return await Ping(n, async () =>
    {
        await s.SendAsync(msg, SocketFlags.None);
        var got = 0;
        while (got < 16) got += await s.ReceiveAsync(back.AsMemory(got), SocketFlags.None);
    });
}

static async Task<(double Median, double P99)> WsPing(Uri uri, int n)
{
    using var ws = new ClientWebSocket();
    ws.Options.AddSubProtocol("binary");
    await ws.ConnectAsync(uri, CancellationToken.None);
    var msg = new byte[16];
    var back = new byte[1024];
    var r = await Ping(n, async () =>
    {
        await ws.SendAsync(msg, WebSocketMessageType.Binary, true, CancellationToken.None);
        var got = 0;
        while (got < 16) got += (await ws.ReceiveAsync(back.AsMemory(got), CancellationToken.None)).Count;
    });
    await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);
    return r;
}

static async Task<(double Median, double P99)> Ping(int n, Func<Task> once)
{
    for (var i = 0; i < 200; i++) await once();
    var us = new double[n];
    using var cap = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    var done = 0;
    for (; done < n && !cap.IsCancellationRequested; done++)
    {
        var t = Stopwatch.GetTimestamp();
        await once();
        us[done] = Stopwatch.GetElapsedTime(t).TotalMicroseconds;
    }
    var sorted = us.Take(done).Order().ToArray();
    return (sorted[sorted.Length / 2], sorted[(int)(sorted.Length * 0.99)]);
}
