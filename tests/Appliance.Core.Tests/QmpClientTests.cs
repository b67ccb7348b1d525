using System.Net.Sockets;
using System.Text;
using Appliance.Core.Emulation;

namespace Appliance.Core.Tests;

/// <summary>Fault injection with a scripted QMP peer: QEMU that hangs, vanishes, or errors.</summary>
public sealed class QmpClientTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "appl-qmp-" + Guid.NewGuid().ToString("N")[..8]);
    private string Sock => Path.Combine(_dir, "qmp.sock");

    public QmpClientTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private const string Greeting = """{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}""";

    /// <summary>A peer that greets, accepts capabilities, then runs <paramref name="script"/> on each later command line.</summary>
    private Task Serve(Func<string, StreamWriter, Socket, Task<bool>> script)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(Sock));
        listener.Listen(1);
        return Task.Run(async () =>
        {
            using var s = await listener.AcceptAsync();
            listener.Dispose();
            await using var ns = new NetworkStream(s);
            using var r = new StreamReader(ns, Encoding.UTF8);
            await using var w = new StreamWriter(ns, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
            await w.WriteLineAsync(Greeting);
            var caps = await r.ReadLineAsync();
            var id = System.Text.Json.JsonDocument.Parse(caps!).RootElement.GetProperty("id").GetInt64();
            await w.WriteLineAsync($$"""{"return": {}, "id": {{id}}}""");
            while (await r.ReadLineAsync() is { } line)
                if (!await script(line, w, s)) break;
        });
    }

    private static long IdOf(string line) => System.Text.Json.JsonDocument.Parse(line).RootElement.GetProperty("id").GetInt64();

    [Fact(Timeout = 10_000)]
    public async Task Connect_Greeting_ReportsQemuVersion()
    {
        var peer = Serve((_, _, _) => Task.FromResult(false));
        await using var c = await QmpClient.ConnectAsync(Sock, TimeSpan.FromSeconds(5));
        Assert.Equal("7.2.22", c.QemuVersion);
    }

    [Fact(Timeout = 10_000)]
    public async Task Execute_PeerNeverAnswers_TimesOutWithClearMessage()
    {
        var peer = Serve((_, _, _) => Task.FromResult(true));
        await using var c = await QmpClient.ConnectAsync(Sock, TimeSpan.FromSeconds(5));
        var e = await Assert.ThrowsAsync<QmpException>(() => c.ExecuteAsync("query-status", null, TimeSpan.FromMilliseconds(300)));
        Assert.Contains("did not answer 'query-status'", e.Message);
    }

    [Fact(Timeout = 10_000)]
    public async Task Execute_PeerVanishesMidCommand_WaiterReleasedAsDisconnected()
    {
        var peer = Serve((_, _, s) => { s.Close(); return Task.FromResult(false); });
        await using var c = await QmpClient.ConnectAsync(Sock, TimeSpan.FromSeconds(5));
        await Assert.ThrowsAsync<QmpDisconnectedException>(() => c.ExecuteAsync("query-status", null, TimeSpan.FromSeconds(30)));
        await c.Closed.WaitAsync(TimeSpan.FromSeconds(2));
    }

    [Fact(Timeout = 10_000)]
    public async Task Execute_ErrorReply_ThrowsWithClassAndDescription()
    {
        var peer = Serve(async (line, w, _) =>
        {
            await w.WriteLineAsync($$"""{"error": {"class": "GenericError", "desc": "Background-snapshot is not supported by host kernel"}, "id": {{IdOf(line)}}}""");
            return true;
        });
        await using var c = await QmpClient.ConnectAsync(Sock, TimeSpan.FromSeconds(5));
        var e = await Assert.ThrowsAsync<QmpException>(() => c.ExecuteAsync("migrate-set-capabilities"));
        Assert.Equal("GenericError", e.ErrorClass);
        Assert.Contains("not supported by host kernel", e.Message);
    }

    [Fact(Timeout = 10_000)]
    public async Task Events_InterleavedWithReplies_DeliveredAndRepliesMatchedById()
    {
        var peer = Serve(async (line, w, _) =>
        {
            await w.WriteLineAsync("""{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}""");
            await w.WriteLineAsync($$"""{"return": {"status": "paused", "running": false}, "id": {{IdOf(line)}}}""");
            return true;
        });
        await using var c = await QmpClient.ConnectAsync(Sock, TimeSpan.FromSeconds(5));
        var events = new List<string>();
        c.EventReceived += e => { lock (events) events.Add(e.Name); };
        var r = await c.ExecuteAsync("query-status");
        Assert.Equal("paused", r.GetProperty("status").GetString());
        Assert.Equal(["STOP"], events);
    }

    [Fact(Timeout = 10_000)]
    public async Task Connect_NoGreeting_FailsWithinTimeout()
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(Sock));
        listener.Listen(1);
        var e = await Assert.ThrowsAsync<QmpException>(() => QmpClient.ConnectAsync(Sock, TimeSpan.FromMilliseconds(300)));
        Assert.Contains("handshake", e.Message);
        listener.Dispose();
    }
}
