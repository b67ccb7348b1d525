using System.Net.Sockets;
using System.Security.Cryptography;
using Appliance.Core.Checkpoints;

namespace Appliance.Core.Tests;

/// <summary>The migration-stream sink and feed over real unix sockets and files, across many write-behind windows.</summary>
public sealed class StateStreamTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "appl-ss-" + Guid.NewGuid().ToString("N")[..8]);

    public StateStreamTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Not a multiple of the 8 MiB window or of a page, so every boundary case is crossed.</summary>
    private static byte[] Payload()
    {
        var data = new byte[(37 << 20) + 4321];
        new Random(7).NextBytes(data);
        return data;
    }

    [Fact(Timeout = 30_000)]
    public async Task Receive_StreamInOddSizedWrites_FileAndSha256MatchWhatWasSent()
    {
        var data = Payload();
        var sock = Path.Combine(_dir, "m.sock");
        var file = Path.Combine(_dir, "state");
        using var listener = StateStream.Listen(sock);
        long lastProgress = 0;
        var receive = StateStream.ReceiveAsync(listener, file, n => lastProgress = n, CancellationToken.None);
        using (var peer = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            await peer.ConnectAsync(new UnixDomainSocketEndPoint(sock));
            var rnd = new Random(3);
            for (var off = 0; off < data.Length;)
            {
                var n = Math.Min(rnd.Next(1, 300_000), data.Length - off);
                off += await peer.SendAsync(data.AsMemory(off, n), SocketFlags.None);
            }
            peer.Shutdown(SocketShutdown.Send);
        }
        var got = await receive;
        Assert.Equal(data.Length, got.Size);
        Assert.Equal(data.Length, lastProgress);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(data)), got.Sha256);
        Assert.Equal(data, await File.ReadAllBytesAsync(file));
    }

    [Theory(Timeout = 30_000)]
    [InlineData(20)] // cancelled while bytes are still arriving
    [InlineData(24)] // cancelled while the sink waits for more: the shutdown then reads as an end of stream
    public async Task Receive_CancelledMidStream_ThrowsCancelledAndClosesTheFile(int cancelAtMiB)
    {
        var data = Payload();
        var sock = Path.Combine(_dir, "m.sock");
        var file = Path.Combine(_dir, "state");
        using var listener = StateStream.Listen(sock);
        using var cts = new CancellationTokenSource();
        var twoWindows = new TaskCompletionSource();
        var receive = StateStream.ReceiveAsync(listener, file, n => { if (n >= (long)cancelAtMiB << 20) twoWindows.TrySetResult(); }, cts.Token);
        using var peer = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await peer.ConnectAsync(new UnixDomainSocketEndPoint(sock));
        await peer.SendAsync(data.AsMemory(0, 24 << 20), SocketFlags.None);
        await twoWindows.Task;
        cts.Cancel();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => receive);
        // FileShare.None takes an exclusive lock: this opens only once the sink (and its write-behind) let go.
        using var again = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
        Assert.True(again.Length >= 20 << 20);
    }

    [Fact(Timeout = 30_000)]
    public async Task DigestThenSend_DroppingCacheWhileReading_PeerGetsTheWholeFile()
    {
        var data = Payload();
        var file = Path.Combine(_dir, "state");
        await File.WriteAllBytesAsync(file, data);
        var (size, sha) = await StateStream.DigestFileAsync(file, CancellationToken.None, dropCache: true);
        Assert.Equal(data.Length, size);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(data)), sha);

        var sock = Path.Combine(_dir, "in.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(sock));
        listener.Listen(1);
        var read = Task.Run(async () =>
        {
            using var c = await listener.AcceptAsync();
            using var ms = new MemoryStream();
            await using var ns = new NetworkStream(c);
            await ns.CopyToAsync(ms);
            return ms.ToArray();
        });
        await StateStream.SendAsync(sock, file, _ => { }, TimeSpan.FromSeconds(5), CancellationToken.None);
        Assert.Equal(data, await read);
    }
}
