using System.Runtime.InteropServices;

namespace Appliance.Core.Emulation;

/// <summary>
/// The unprivileged account QEMU drops to with <c>-runas</c> when the appliance runs as root. QEMU opens its disks and
/// sockets as root before it drops privileges, but everything it opens afterwards (overlays created by a disk snapshot,
/// migration sockets in the run directory) must be reachable by that account, so those are handed to it.
/// </summary>
public static partial class QemuUser
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Passwd
    {
        public IntPtr Name, Password;
        public uint Uid, Gid;
        public IntPtr Gecos, Dir, Shell;
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)] private static partial IntPtr getpwnam(string name);
    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)] private static partial int chown(string path, uint uid, uint gid);

    /// <summary>uid and gid of <paramref name="user"/>, or null when no such account exists.</summary>
    public static (uint Uid, uint Gid)? Lookup(string user)
    {
        var p = getpwnam(user);
        if (p == IntPtr.Zero) return null;
        var pw = Marshal.PtrToStructure<Passwd>(p);
        return (pw.Uid, pw.Gid);
    }

    /// <summary>Hands the VM's run directory and its writable disk layers (with their folders) to <paramref name="user"/>.</summary>
    public static void GrantAccess(string user, string runDir, IEnumerable<string> writableFiles)
    {
        var (uid, gid) = Lookup(user) ?? throw new InvalidOperationException($"Appliance:QemuRunAsUser '{user}' is not an account on this host.");
        Chown(runDir, uid, gid);
        foreach (var f in writableFiles)
        {
            Chown(f, uid, gid);
            if (Path.GetDirectoryName(f) is { } dir) Chown(dir, uid, gid);
        }
    }

    public static void Chown(string path, uint uid, uint gid)
    {
        if (chown(path, uid, gid) != 0)
            throw new IOException($"chown {path} to {uid}:{gid} failed (errno {Marshal.GetLastPInvokeError()})");
    }
}
