using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// One message plus at most one file descriptor over a unix socket (<c>SCM_RIGHTS</c>). .NET has no API for
/// ancillary data, so this calls <c>sendmsg</c>/<c>recvmsg</c> itself. Layouts are those of 64-bit Linux.
/// </summary>
public static unsafe partial class DescriptorPassing
{
    private const int SOL_SOCKET = 1, SCM_RIGHTS = 1;
    private const int MSG_CTRUNC = 0x8, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
    private const int EINTR = 4;

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Len;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct CmsgHdr
    {
        public nuint Len;
        public int Level;
        public int Type;
    }

    // CMSG_LEN(sizeof(int)) and CMSG_SPACE(sizeof(int)): the header, one int, padded to 8 bytes.
    private static readonly int CmsgLen = sizeof(CmsgHdr) + sizeof(int);
    private static readonly int CmsgSpace = sizeof(CmsgHdr) + 8;

    [LibraryImport("libc", SetLastError = true)] private static partial nint sendmsg(int fd, MsgHdr* msg, int flags);
    [LibraryImport("libc", SetLastError = true)] private static partial nint recvmsg(int fd, MsgHdr* msg, int flags);

    /// <summary>
    /// Sends <paramref name="data"/> as one message with a duplicate of <paramref name="descriptor"/> (if any)
    /// attached: the receiver gets its own descriptor for the same open socket or file.
    /// </summary>
    public static void Send(SafeHandle socket, ReadOnlySpan<byte> data, SafeHandle? descriptor)
    {
        bool socketRef = false, descRef = false;
        try
        {
            socket.DangerousAddRef(ref socketRef);
            descriptor?.DangerousAddRef(ref descRef);
            var control = stackalloc byte[CmsgSpace];
            new Span<byte>(control, CmsgSpace).Clear();
            fixed (byte* p = data)
            {
                var iov = new IoVec { Base = p, Len = (nuint)data.Length };
                var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
                if (descriptor is not null)
                {
                    var h = (CmsgHdr*)control;
                    h->Len = (nuint)CmsgLen;
                    h->Level = SOL_SOCKET;
                    h->Type = SCM_RIGHTS;
                    *(int*)(control + sizeof(CmsgHdr)) = (int)descriptor.DangerousGetHandle();
                    msg.Control = control;
                    msg.ControlLen = (nuint)CmsgSpace;
                }
                nint n;
                do n = sendmsg((int)socket.DangerousGetHandle(), &msg, MSG_NOSIGNAL);
                while (n < 0 && Marshal.GetLastPInvokeError() == EINTR);
                if (n < 0) throw Error("sendmsg");
                if (n != data.Length) throw new IOException($"sendmsg sent {n} of {data.Length} bytes.");
            }
        }
        finally
        {
            if (descRef) descriptor!.DangerousRelease();
            if (socketRef) socket.DangerousRelease();
        }
    }

    /// <summary>
    /// Receives one message into <paramref name="buffer"/> (0 = the peer closed); a descriptor that came with it
    /// is returned, close-on-exec, owned by the caller.
    /// </summary>
    public static int Receive(SafeHandle socket, Span<byte> buffer, out SafeFileHandle? descriptor)
    {
        descriptor = null;
        var added = false;
        try
        {
            socket.DangerousAddRef(ref added);
            // Room for a few descriptors, so an unexpected extra one is received (and closed) rather than leaked.
            const int room = 64;
            var control = stackalloc byte[room];
            new Span<byte>(control, room).Clear();
            fixed (byte* p = buffer)
            {
                var iov = new IoVec { Base = p, Len = (nuint)buffer.Length };
                var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = room };
                nint n;
                do n = recvmsg((int)socket.DangerousGetHandle(), &msg, MSG_CMSG_CLOEXEC);
                while (n < 0 && Marshal.GetLastPInvokeError() == EINTR);
                if (n < 0) throw Error("recvmsg");
                for (var off = 0; off + sizeof(CmsgHdr) <= (int)msg.ControlLen;)
                {
                    var h = (CmsgHdr*)(control + off);
                    if ((int)h->Len < sizeof(CmsgHdr)) break;
                    if (h->Level == SOL_SOCKET && h->Type == SCM_RIGHTS)
                    {
                        var count = ((int)h->Len - sizeof(CmsgHdr)) / sizeof(int);
                        for (var i = 0; i < count; i++)
                        {
                            var fd = ((int*)(control + off + sizeof(CmsgHdr)))[i];
                            var handle = new SafeFileHandle(fd, ownsHandle: true);
                            if (descriptor is null) descriptor = handle;
                            else handle.Dispose();
                        }
                    }
                    off += ((int)h->Len + 7) & ~7;
                }
                if ((msg.Flags & MSG_CTRUNC) != 0 && descriptor is null) throw new IOException("recvmsg: the descriptor did not fit (MSG_CTRUNC).");
                return (int)n;
            }
        }
        finally
        {
            if (added) socket.DangerousRelease();
        }
    }

    private static IOException Error(string call)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{call}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
    }
}
