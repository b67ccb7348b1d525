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
    private const int ReceiveLowWater = 64 << 10;

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
        var conn = await listener.AcceptAsync(ct);
        // QEMU writes a few KiB at a time; without a low-water mark each receive wakes for one small write
        // (measured: 32 000 receives for 180 MB). Must stay well below QEMU's socket send buffer (208 KiB by
        // default) or both ends would wait for each other.
        conn.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReceiveLowWater, ReceiveLowWater);
        return await OnOwnThreadAsync(conn, () => Receive(conn, path, progress), ct);
    }

    /// <summary>
    /// Blocking calls on a dedicated thread: on a loaded host every await in a per-chunk loop waits for a
    /// thread-pool turn, and while the sink waits QEMU's migration thread blocks on a full socket
    /// (measured: 3-6 s instead of 1.3 s for a 180 MB stream with a load average of 16 on two cores).
    /// </summary>
    private static Task<T> OnOwnThreadAsync<T>(Socket conn, Func<T> work, CancellationToken ct) =>
        Task.Factory.StartNew(() =>
        {
            // Closing the socket is the only way to interrupt a blocking receive or send.
            using var stop = ct.Register(conn.Dispose);
            try { return work(); }
            catch (Exception e) when (ct.IsCancellationRequested && e is SocketException or ObjectDisposedException)
            {
                throw new OperationCanceledException(ct);
            }
            finally { conn.Dispose(); }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static Received Receive(Socket conn, string path, Action<long> progress)
    {
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0, FileOptions.None);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
        long total = 0;
        try
        {
            while (true)
            {
                var n = conn.Receive(buf, 0, BufferSize, SocketFlags.None);
                if (n == 0) break;
                sha.AppendData(buf, 0, n);
                RandomAccess.Write(file.SafeFileHandle, buf.AsSpan(0, n), total);
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
        await OnOwnThreadAsync(s, () => Send(s, path, progress), ct);
    }

    private static bool Send(Socket s, string path, Action<long> progress)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 0, FileOptions.SequentialScan);
        var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
        long total = 0;
        try
        {
            while (true)
            {
                var n = RandomAccess.Read(file.SafeFileHandle, buf.AsSpan(0, BufferSize), total);
                if (n == 0) break;
                var sent = 0;
                while (sent < n) sent += s.Send(buf, sent, n - sent, SocketFlags.None);
                total += n;
                progress(total);
            }
            s.Shutdown(SocketShutdown.Send);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
        return true;
    }

    public static Task<(long Size, string Sha256)> DigestFileAsync(string path, CancellationToken ct) =>
        Task.Factory.StartNew(() =>
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 0, FileOptions.SequentialScan);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
            long total = 0;
            try
            {
                int n;
                while ((n = RandomAccess.Read(f.SafeFileHandle, buf.AsSpan(0, BufferSize), total)) > 0)
                {
                    ct.ThrowIfCancellationRequested();
                    sha.AppendData(buf, 0, n);
                    total += n;
                }
            }
            finally { ArrayPool<byte>.Shared.Return(buf); }
            return (total, Convert.ToHexStringLower(sha.GetHashAndReset()));
        }, ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);

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
