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
    private const long WriteBehindWindow = 8L << 20;

    /// <summary>What arrived, and what it cost the sink (receives, time in each step, the thread's CPU), for the log.</summary>
    public sealed record Received(long Size, string Sha256, string Cost);

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

    /// <summary>
    /// Accepts one connection and writes everything it sends to <paramref name="path"/>, flushed to disk.
    /// <paramref name="accepted"/> sees the connection before the first byte is read; what it returns is
    /// disposed when the receive ends, whether it completed or was cancelled.
    /// </summary>
    public static async Task<Received> ReceiveAsync(Socket listener, string path, Action<long> progress, CancellationToken ct,
        Func<Socket, IDisposable?>? accepted = null)
    {
        var conn = await listener.AcceptAsync(ct);
        // QEMU writes a few KiB at a time; without a low-water mark each receive wakes for one small write
        // (measured: 32 000 receives for 180 MB). Must stay well below QEMU's socket send buffer (208 KiB by
        // default) or both ends would wait for each other.
        conn.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReceiveLowWater, ReceiveLowWater);
        IDisposable? lease;
        try { lease = accepted?.Invoke(conn); }
        catch
        {
            conn.Dispose();
            throw;
        }
        return await OnOwnThreadAsync(conn, () => Receive(conn, path, progress), ct, lease);
    }

    /// <summary>
    /// Blocking calls on a dedicated thread: on a loaded host every await in a per-chunk loop waits for a
    /// thread-pool turn, and while the sink waits QEMU's migration thread blocks on a full socket
    /// (measured: 3-6 s instead of 1.3 s for a 180 MB stream with a load average of 16 on two cores).
    /// </summary>
    private static Task<T> OnOwnThreadAsync<T>(Socket conn, Func<T> work, CancellationToken ct, IDisposable? lease = null) =>
        Task.Factory.StartNew(() =>
        {
            // Shutting the socket down is the only way to interrupt a blocking receive or send; a shutdown (unlike
            // a close) also ends the stream for QEMU when another process holds a duplicate of the descriptor.
            using var stop = ct.Register(() =>
            {
                try { conn.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
                conn.Dispose();
            });
            try
            {
                var result = work();
                // A receive that the shutdown interrupts sees an ordinary end of stream: the bytes so far are not the stream.
                ct.ThrowIfCancellationRequested();
                return result;
            }
            catch (Exception e) when (ct.IsCancellationRequested && e is SocketException or ObjectDisposedException)
            {
                throw new OperationCanceledException(ct);
            }
            finally
            {
                lease?.Dispose();
                conn.Dispose();
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static Received Receive(Socket conn, string path, Action<long> progress)
    {
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0, FileOptions.None);
        // Declared after the file, so disposed (its thread joined) before the file is closed.
        using var behind = new WriteBehind(file.SafeFileHandle);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = ArrayPool<byte>.Shared.Rent(BufferSize);
        long total = 0, receives = 0, tRecv = 0, tSha = 0, tWrite = 0, tBehind = 0, tSync = 0;
        var cpu0 = ThreadCpu.Now();
        try
        {
            while (true)
            {
                var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                var n = conn.Receive(buf, 0, BufferSize, SocketFlags.None);
                var t1 = System.Diagnostics.Stopwatch.GetTimestamp();
                if (n == 0) break;
                receives++;
                sha.AppendData(buf, 0, n);
                var t2 = System.Diagnostics.Stopwatch.GetTimestamp();
                RandomAccess.Write(file.SafeFileHandle, buf.AsSpan(0, n), total);
                total += n;
                var t3 = System.Diagnostics.Stopwatch.GetTimestamp();
                behind.Written(total);
                var t4 = System.Diagnostics.Stopwatch.GetTimestamp();
                tRecv += t1 - t0; tSha += t2 - t1; tWrite += t3 - t2; tBehind += t4 - t3;
                progress(total);
            }
            var s0 = System.Diagnostics.Stopwatch.GetTimestamp();
            behind.Stop();
            file.Flush(flushToDisk: true);
            behind.DropAll();
            tSync = System.Diagnostics.Stopwatch.GetTimestamp() - s0;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
        static double Ms(long ticks) => ticks * 1000.0 / System.Diagnostics.Stopwatch.Frequency;
        var cpu = ThreadCpu.Now() - cpu0;
        var cost = FormattableString.Invariant($"sink {receives} receives, recv {Ms(tRecv):0} ms, sha {Ms(tSha):0} ms, write {Ms(tWrite):0} ms, write-behind {Ms(tBehind):0} ms, fsync {Ms(tSync):0} ms, CPU user {cpu.UserMs:0} ms sys {cpu.SystemMs:0} ms; {behind.Cost}");
        return new Received(total, Convert.ToHexStringLower(sha.GetHashAndReset()), cost);
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
        var behind = new ReadBehind(file.SafeFileHandle);
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
                behind.Consumed(total);
                progress(total);
            }
            s.Shutdown(SocketShutdown.Send);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
        return true;
    }

    /// <summary>
    /// Size and SHA-256 of a file, read on a thread of its own. <paramref name="dropCache"/> for a checkpoint's
    /// state, read once for the check and once more to feed it: pages already hashed leave the cache (see
    /// <see cref="WriteBehind"/>). Not for disk layers, which a running guest may be reading through.
    /// </summary>
    public static Task<(long Size, string Sha256)> DigestFileAsync(string path, CancellationToken ct, bool dropCache = false) =>
        Task.Factory.StartNew(() =>
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 0, FileOptions.SequentialScan);
            var behind = dropCache ? new ReadBehind(f.SafeFileHandle) : null;
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
                    behind?.Consumed(total);
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

    /// <summary>
    /// Keeps a stream being written from piling up in the page cache: each full window is handed to
    /// writeback at once, and the window before it, written out by then, is dropped from the cache. A
    /// checkpoint is read again only on restore, while holding every saved stream in memory meant that
    /// each save needed hundreds of MB of fresh pages: on a virtual machine that returns free memory to
    /// its host (virtio-balloon free page reporting) those cost a host fault each (measured: writing
    /// 600 MB took 1.6-1.9 s of system time instead of 0.2 s once a few GB were cached), and QEMU lost
    /// that CPU. Recycling a few windows of pages avoids it, and leaves the final fsync little to do.
    /// The receiving thread only starts writeback (does not wait); waiting for a window to be written
    /// and dropping it happen on a thread of their own, so the thread that drains QEMU's socket never
    /// sleeps on the disk. Advice only: the fsync at the end is what makes the file durable.
    /// </summary>
    private sealed class WriteBehind : IDisposable
    {
        private const uint WaitBefore = 1, Write = 2, WaitAfter = 4;
        public const int DontNeed = 4;
        private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _file;
        private readonly Thread? _retirer;
        private readonly object _gate = new();
        private long _started;     // receiving thread: start of the newest window handed to writeback
        private long _retireUpTo;  // under _gate: everything before this may be waited for and dropped
        private bool _stopping;    // under _gate
        private long _retired, _retires, _tWait;  // retiring thread; read after it is joined
        private ThreadCpu _cpu;

        public WriteBehind(Microsoft.Win32.SafeHandles.SafeFileHandle file)
        {
            _file = file;
            if (!OperatingSystem.IsLinux()) return;
            _retirer = new Thread(Retire) { IsBackground = true, Name = "checkpoint write-behind" };
            _retirer.Start();
        }

        public string Cost => FormattableString.Invariant($"write-behind thread {_retires} waits, {_tWait * 1000.0 / System.Diagnostics.Stopwatch.Frequency:0} ms, CPU user {_cpu.UserMs:0} ms sys {_cpu.SystemMs:0} ms");

        public void Written(long total)
        {
            if (_retirer is null || total - _started < WriteBehindWindow) return;
            var end = total / WriteBehindWindow * WriteBehindWindow;
            _ = SyncFileRange(_file, _started, end - _started, Write);
            // The windows before this one started writeback at least one window ago.
            lock (_gate)
            {
                _retireUpTo = _started;
                Monitor.Pulse(_gate);
            }
            _started = end;
        }

        private void Retire()
        {
            var cpu0 = ThreadCpu.Now();
            while (true)
            {
                long upTo;
                lock (_gate)
                {
                    while (!_stopping && _retireUpTo <= _retired) Monitor.Wait(_gate);
                    if (_stopping) break;
                    upTo = _retireUpTo;
                }
                var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                _ = SyncFileRange(_file, _retired, upTo - _retired, WaitBefore | Write | WaitAfter);
                _ = Fadvise(_file, _retired, upTo - _retired, DontNeed);
                _tWait += System.Diagnostics.Stopwatch.GetTimestamp() - t0;
                _retires++;
                _retired = upTo;
            }
            _cpu = ThreadCpu.Now() - cpu0;
        }

        /// <summary>Ends the retiring thread (what it has not reached is left to the fsync and <see cref="DropAll"/>).</summary>
        public void Stop()
        {
            if (_retirer is null) return;
            lock (_gate)
            {
                _stopping = true;
                Monitor.Pulse(_gate);
            }
            _retirer.Join();
        }

        /// <summary>After the fsync every page is clean and can go.</summary>
        public void DropAll()
        {
            if (_retirer is not null) _ = Fadvise(_file, 0, 0, DontNeed);
        }

        public void Dispose() => Stop();
    }

    /// <summary>Drops from the page cache what a sequential reader is done with, one window behind it.</summary>
    private sealed class ReadBehind(Microsoft.Win32.SafeHandles.SafeFileHandle file)
    {
        private readonly bool _enabled = OperatingSystem.IsLinux();
        private long _dropped;

        public void Consumed(long total)
        {
            var upTo = (total / WriteBehindWindow - 1) * WriteBehindWindow;
            if (!_enabled || upTo <= _dropped) return;
            _ = Fadvise(file, _dropped, upTo - _dropped, WriteBehind.DontNeed);
            _dropped = upTo;
        }
    }

    /// <summary>The calling thread's CPU time (Linux: /proc/thread-self/stat); zero where unavailable.</summary>
    private readonly record struct ThreadCpu(double UserMs, double SystemMs)
    {
        public static ThreadCpu Now()
        {
            try
            {
                var stat = File.ReadAllText("/proc/thread-self/stat");
                var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                // Fields 14 and 15 (utime, stime) in clock ticks, 100 per second on Linux.
                return new ThreadCpu(long.Parse(f[11], System.Globalization.CultureInfo.InvariantCulture) * 10.0, long.Parse(f[12], System.Globalization.CultureInfo.InvariantCulture) * 10.0);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException) { return default; }
        }

        public static ThreadCpu operator -(ThreadCpu a, ThreadCpu b) => new(a.UserMs - b.UserMs, a.SystemMs - b.SystemMs);
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "sync_file_range")]
    private static partial int SyncFileRange(Microsoft.Win32.SafeHandles.SafeFileHandle fd, long offset, long count, uint flags);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int Fadvise(Microsoft.Win32.SafeHandles.SafeFileHandle fd, long offset, long length, int advice);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
