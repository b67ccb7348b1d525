using System.Buffers;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// The appliance's end of a migration stream: a unix socket QEMU connects to (save) or that the
/// appliance connects to (restore). No shell, no intermediate process; SHA-256 and progress are
/// computed on the bytes as they pass.
/// </summary>
public static partial class StateStream
{
    private const int BufferSize = 1 << 20;

    public sealed record Received(long Size, string Sha256);

    public static Socket Listen(string socketPath)
    {
        if (File.Exists(socketPath)) File.Delete(socketPath);
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(socketPath));
            s.Listen(1);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>Accepts one connection and writes everything it sends to <paramref name="path"/>, flushed to disk.</summary>
    public static async Task<Received> ReceiveAsync(Socket listener, string path, Action<long> progress, CancellationToken ct)
    {
        using var conn = await listener.AcceptAsync(ct);
        await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.None);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
        long total = 0;
        try
        {
            while (true)
            {
                var n = await conn.ReceiveAsync(buf.AsMemory(0, BufferSize), SocketFlags.None, ct);
                if (n == 0) break;
                sha.AppendData(buf, 0, n);
                await file.WriteAsync(buf.AsMemory(0, n), ct);
                total += n;
                progress(total);
            }
            file.Flush(flushToDisk: true);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
        return new Received(total, Convert.ToHexStringLower(sha.GetHashAndReset()));
    }

    /// <summary>Connects to <paramref name="socketPath"/> (waiting for it to appear) and sends the file.</summary>
    public static async Task SendAsync(string socketPath, string path, Action<long> progress, TimeSpan connectTimeout, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + connectTimeout;
        Socket? s = null;
        while (s is null)
        {
            var attempt = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await attempt.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                s = attempt;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                attempt.Dispose();
                await Task.Delay(10, ct);
            }
            catch
            {
                attempt.Dispose();
                throw;
            }
        }
        using (s)
        {
            await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
            long total = 0;
            try
            {
                while (true)
                {
                    var n = await file.ReadAsync(buf.AsMemory(0, BufferSize), ct);
                    if (n == 0) break;
                    var sent = 0;
                    while (sent < n) sent += await s.SendAsync(buf.AsMemory(sent, n - sent), SocketFlags.None, ct);
                    total += n;
                    progress(total);
                }
                s.Shutdown(SocketShutdown.Send);
            }
            finally { ArrayPool<byte>.Shared.Return(buf); }
        }
    }

    public static async Task<(long Size, string Sha256)> DigestFileAsync(string path, CancellationToken ct)
    {
        await using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        var hash = await SHA256.HashDataAsync(f, ct);
        return (f.Length, Convert.ToHexStringLower(hash));
    }

    /// <summary>fsync on a directory, so a rename or a new entry in it survives a power cut.</summary>
    public static void FsyncDirectory(string dir)
    {
        var fd = Open(dir, 0 /* O_RDONLY */);
        if (fd < 0) return;
        try { _ = Fsync(fd); } finally { _ = Close(fd); }
    }

    public static void FsyncFile(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        f.Flush(flushToDisk: true);
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
