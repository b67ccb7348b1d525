using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// The stream keeper: a small process of the appliance's own executable that holds a duplicate of each
/// background-snapshot stream while it is being saved. QEMU 7.2 never lifts the userfaultfd write protection
/// of a background snapshot whose reader vanished, so a guest whose appliance died mid-save would hang. If
/// the appliance's control connection closes while the keeper holds streams, the keeper reads each to its
/// end (QEMU then completes the migration and lifts the protection), closes them and exits. It writes no
/// files and never talks to QEMU. Messages: 1 byte (H = hold, with the descriptor attached; R = release) and
/// the save's id (16 bytes), one per SOCK_SEQPACKET message.
/// </summary>
public static unsafe partial class StreamKeeper
{
    public const string Argument = "--stream-keeper";
    public const byte Hold = (byte)'H', Release = (byte)'R';
    public const int MessageSize = 17;

    /// <summary>A stream that sends nothing for this long is given up (QEMU stuck for some other reason).</summary>
    public static readonly TimeSpan DrainIdleLimit = TimeSpan.FromMinutes(2);

    public static bool IsCommand(string[] args) => args.Length > 0 && args[0] == Argument;

    public static byte[] Message(byte op, Guid id)
    {
        var m = new byte[MessageSize];
        m[0] = op;
        id.TryWriteBytes(m.AsSpan(1));
        return m;
    }

    /// <summary>The keeper process's entry: <c>--stream-keeper CONTROL_SOCKET</c>.</summary>
    public static int Run(string[] args)
    {
        if (args.Length != 2)
        {
            System.Console.Error.WriteLine($"usage: {Argument} CONTROL_SOCKET");
            return 2;
        }
        using var control = new Socket(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);
        try { control.Connect(new UnixDomainSocketEndPoint(args[1])); }
        catch (SocketException e)
        {
            Log(System.Console.Error, $"cannot connect to {args[1]}: {e.Message}");
            return 1;
        }
        Serve(control.SafeHandle, System.Console.Error, DrainIdleLimit);
        return 0;
    }

    /// <summary>
    /// Holds descriptors until the control connection closes, then drains what it still holds.
    /// Returns the bytes drained per save (empty when the appliance had released everything).
    /// </summary>
    public static IReadOnlyDictionary<Guid, long> Serve(SafeHandle control, TextWriter log, TimeSpan idleLimit)
    {
        var held = new Dictionary<Guid, SafeFileHandle>();
        var buf = new byte[MessageSize + 1];
        while (true)
        {
            int n;
            SafeFileHandle? fd;
            try { n = DescriptorPassing.Receive(control, buf, out fd); }
            catch (IOException e)
            {
                Log(log, "control connection failed: " + e.Message);
                break;
            }
            if (n == 0)
            {
                fd?.Dispose();
                break;
            }
            var id = n == MessageSize ? new Guid(buf.AsSpan(1, 16)) : Guid.Empty;
            if (n == MessageSize && buf[0] == Hold && fd is not null)
            {
                if (held.Remove(id, out var old)) old.Dispose();
                held[id] = fd;
                continue;
            }
            fd?.Dispose();
            if (n == MessageSize && buf[0] == Release && held.Remove(id, out var h)) h.Dispose();
        }
        if (held.Count == 0) return new Dictionary<Guid, long>();

        Log(log, $"the appliance is gone while {held.Count} checkpoint stream(s) were being saved; reading them to their end so the emulators finish");
        var drains = held.ToDictionary(kv => kv.Key, kv => Task.Factory.StartNew(() => Drain(kv.Value, idleLimit),
            CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default));
        Task.WaitAll(drains.Values);
        foreach (var (id, t) in drains) Log(log, $"save {id:N}: discarded {t.Result.Bytes} bytes, {t.Result.End}");
        return drains.ToDictionary(kv => kv.Key, kv => kv.Value.Result.Bytes);
    }

    private static (long Bytes, string End) Drain(SafeFileHandle fd, TimeSpan idleLimit)
    {
        using (fd)
        {
            var buf = new byte[256 << 10];
            long total = 0;
            var raw = (int)fd.DangerousGetHandle();
            while (true)
            {
                // The descriptor may be non-blocking (it shares its flags with the appliance's socket): wait with poll.
                var pfd = new PollFd { Fd = raw, Events = POLLIN };
                var ready = poll(ref pfd, 1, (int)idleLimit.TotalMilliseconds);
                if (ready == 0) return (total, "given up: nothing arrived for " + idleLimit);
                if (ready < 0)
                {
                    if (Marshal.GetLastPInvokeError() == EINTR) continue;
                    return (total, "poll failed: " + Marshal.GetLastPInvokeErrorMessage());
                }
                nint n;
                fixed (byte* p = buf) n = read(fd, p, buf.Length);
                if (n == 0) return (total, "end of stream");
                if (n < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno is EINTR or EAGAIN) continue;
                    return (total, "read failed: " + Marshal.GetPInvokeErrorMessage(errno));
                }
                total += n;
            }
        }
    }

    private static void Log(TextWriter log, string line) => log.WriteLine($"{DateTimeOffset.UtcNow:O} stream keeper {Environment.ProcessId}: {line}");

    private const short POLLIN = 1;
    private const int EINTR = 4, EAGAIN = 11;

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)] private static partial int poll(ref PollFd fds, nuint count, int timeoutMs);
    [LibraryImport("libc", SetLastError = true)] private static partial nint read(SafeFileHandle fd, byte* buf, nint count);
}
