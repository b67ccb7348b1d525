using System.ComponentModel;
using System.Runtime.InteropServices;

namespace Appliance.Core.Emulation;

/// <summary>
/// Starts emulators with posix_spawn in a new session, so they outlive the appliance (a restart or a
/// kill -9 of the appliance must never take the guests with it), with stdout and stderr appended
/// straight to the VM's log file (which therefore keeps working while the appliance is down).
/// This is the only place that starts an emulator; arguments are a list, never a shell string.
/// </summary>
public static partial class NativeProcess
{
    private const short POSIX_SPAWN_SETSIGDEF = 0x04;
    private const short POSIX_SPAWN_SETSIGMASK = 0x08;
    private const short POSIX_SPAWN_SETSID = 0x80;
    private const int O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0x40, O_APPEND = 0x400;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int posix_spawn(out int pid, string path, IntPtr fileActions, IntPtr attr, IntPtr argv, IntPtr envp);

    [LibraryImport("libc")] private static partial int posix_spawn_file_actions_init(IntPtr fa);
    [LibraryImport("libc")] private static partial int posix_spawn_file_actions_destroy(IntPtr fa);
    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)] private static partial int posix_spawn_file_actions_addopen(IntPtr fa, int fd, string path, int oflag, int mode);
    [LibraryImport("libc")] private static partial int posix_spawn_file_actions_adddup2(IntPtr fa, int fd, int newfd);
    [LibraryImport("libc")] private static partial int posix_spawnattr_init(IntPtr attr);
    [LibraryImport("libc")] private static partial int posix_spawnattr_destroy(IntPtr attr);
    [LibraryImport("libc")] private static partial int posix_spawnattr_setflags(IntPtr attr, short flags);
    [LibraryImport("libc")] private static partial int posix_spawnattr_setsigmask(IntPtr attr, IntPtr set);
    [LibraryImport("libc")] private static partial int posix_spawnattr_setsigdefault(IntPtr attr, IntPtr set);
    [LibraryImport("libc")] private static partial int sigemptyset(IntPtr set);
    [LibraryImport("libc")] private static partial int sigfillset(IntPtr set);
    [LibraryImport("libc", SetLastError = true)] private static partial int waitpid(int pid, out int status, int options);
    [LibraryImport("libc", SetLastError = true)] private static partial int kill(int pid, int sig);
    [LibraryImport("libc")] public static partial uint geteuid();

    public const int SIGKILL = 9, SIGTERM = 15;

    /// <summary>Spawns <paramref name="argv"/>[0] with the given environment; output is appended to <paramref name="logPath"/>.</summary>
    public static int Spawn(IReadOnlyList<string> argv, IReadOnlyDictionary<string, string> environment, string logPath)
    {
        var fa = Marshal.AllocHGlobal(1024);
        var attr = Marshal.AllocHGlobal(1024);
        var sigs = Marshal.AllocHGlobal(256);
        var pointers = new List<IntPtr>();
        try
        {
            Check(posix_spawn_file_actions_init(fa), "posix_spawn_file_actions_init");
            Check(posix_spawn_file_actions_addopen(fa, 0, "/dev/null", O_RDONLY, 0), "addopen stdin");
            Check(posix_spawn_file_actions_addopen(fa, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, Convert.ToInt32("640", 8)), "addopen log");
            Check(posix_spawn_file_actions_adddup2(fa, 1, 2), "adddup2");
            Check(posix_spawnattr_init(attr), "posix_spawnattr_init");
            // .NET blocks or handles some signals on its threads; the child starts with a clean slate.
            Check(posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF), "setflags");
            sigemptyset(sigs);
            Check(posix_spawnattr_setsigmask(attr, sigs), "setsigmask");
            sigfillset(sigs);
            Check(posix_spawnattr_setsigdefault(attr, sigs), "setsigdefault");

            IntPtr Block(IEnumerable<string> items)
            {
                var list = items.ToList();
                var block = Marshal.AllocHGlobal(IntPtr.Size * (list.Count + 1));
                pointers.Add(block);
                for (var i = 0; i < list.Count; i++)
                {
                    var s = Marshal.StringToCoTaskMemUTF8(list[i]);
                    pointers.Add(s);
                    Marshal.WriteIntPtr(block, i * IntPtr.Size, s);
                }
                Marshal.WriteIntPtr(block, list.Count * IntPtr.Size, IntPtr.Zero);
                return block;
            }

            var argvBlock = Block(argv);
            var envBlock = Block(environment.Select(kv => $"{kv.Key}={kv.Value}"));
            var rc = posix_spawn(out var pid, argv[0], fa, attr, argvBlock, envBlock);
            if (rc != 0) throw new Win32Exception(rc, $"Could not start {argv[0]}: {new Win32Exception(rc).Message}");
            return pid;
        }
        finally
        {
            posix_spawn_file_actions_destroy(fa);
            posix_spawnattr_destroy(attr);
            Marshal.FreeHGlobal(fa);
            Marshal.FreeHGlobal(attr);
            Marshal.FreeHGlobal(sigs);
            foreach (var p in pointers) Marshal.FreeHGlobal(p);
        }
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0) throw new Win32Exception(rc, what);
    }

    /// <summary>Blocks until our child <paramref name="pid"/> exits; returns its exit code, or 128+signal.</summary>
    public static Task<int> WaitForChildAsync(int pid) =>
        Task.Factory.StartNew(() =>
        {
            while (true)
            {
                var r = waitpid(pid, out var status, 0);
                if (r == pid)
                {
                    var sig = status & 0x7f;
                    return sig == 0 ? (status >> 8) & 0xff : 128 + sig;
                }
                if (r < 0 && Marshal.GetLastPInvokeError() != 4 /* EINTR */) return -1;
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    public static bool Signal(int pid, int sig) => kill(pid, sig) == 0;

    public static bool IsAlive(int pid) => pid > 0 && kill(pid, 0) == 0 && !IsZombie(pid);

    private static bool IsZombie(int pid)
    {
        var stat = ReadStat(pid);
        return stat is not null && stat.Value.State == 'Z';
    }

    /// <summary>Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it identifies a process across pid reuse.</summary>
    public static long? StartTicks(int pid) => ReadStat(pid)?.StartTicks;

    private static (char State, long StartTicks)? ReadStat(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (rest[0][0], long.Parse(rest[19], System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    public static IReadOnlyList<string> CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }
}
