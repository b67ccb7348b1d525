using System.Net.Sockets;
using System.Runtime.InteropServices;
using Appliance.Core.Checkpoints;

namespace Appliance.Core.Tests;

/// <summary>SCM_RIGHTS passing and the keeper's loop over real socket pairs (the process around it is tested in CheckpointsCrashTests).</summary>
public sealed partial class StreamKeeperTests
{
    private const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_SEQPACKET = 5, SOCK_CLOEXEC = 0x80000;

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int socketpair(int domain, int type, int protocol, int* sv);

    private static unsafe (Socket A, Socket B) Pair(int type)
    {
        var sv = stackalloc int[2];
        if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) throw new IOException("socketpair failed: " + Marshal.GetLastPInvokeErrorMessage());
        return (new Socket(new SafeSocketHandle(sv[0], true)), new Socket(new SafeSocketHandle(sv[1], true)));
    }

    private static Socket Adopt(Microsoft.Win32.SafeHandles.SafeFileHandle fd)
    {
        var s = new Socket(new SafeSocketHandle(fd.DangerousGetHandle(), true));
        fd.SetHandleAsInvalid();
        return s;
    }

    [Fact(Timeout = 10_000)]
    public async Task DescriptorPassing_SocketPairSenderClosesItsCopy_ReceiverReadsThroughItsOwn()
    {
        var (sender, receiver) = Pair(SOCK_SEQPACKET);
        var (stream, peer) = Pair(SOCK_STREAM);
        using (sender)
        using (receiver)
        using (peer)
        {
            DescriptorPassing.Send(sender.SafeHandle, "hold"u8, stream.SafeHandle);
            var buf = new byte[16];
            var n = DescriptorPassing.Receive(receiver.SafeHandle, buf, out var fd);
            Assert.Equal("hold", System.Text.Encoding.ASCII.GetString(buf, 0, n));
            Assert.NotNull(fd);
            Assert.NotEqual(stream.SafeHandle.DangerousGetHandle(), fd.DangerousGetHandle());
            // The sender's copy goes away; the received descriptor keeps the socket open on its own.
            stream.Dispose();
            using var got = Adopt(fd);
            await peer.SendAsync("through the passed descriptor"u8.ToArray(), SocketFlags.None);
            var read = new byte[64];
            var m = await got.ReceiveAsync(read, SocketFlags.None);
            Assert.Equal("through the passed descriptor", System.Text.Encoding.ASCII.GetString(read, 0, m));

            DescriptorPassing.Send(sender.SafeHandle, "plain"u8, null);
            Assert.Equal(5, DescriptorPassing.Receive(receiver.SafeHandle, buf, out var none));
            Assert.Null(none);
        }
    }

    [Fact(Timeout = 30_000)]
    public async Task Keeper_ControlClosesWhileHolding_ReadsHeldStreamToItsEndAndLeavesReleasedOnesAlone()
    {
        var (appliance, keeperEnd) = Pair(SOCK_SEQPACKET);
        var (held, writer) = Pair(SOCK_STREAM);
        var (released, releasedPeer) = Pair(SOCK_STREAM);
        var heldId = Guid.NewGuid();
        var releasedId = Guid.NewGuid();
        var log = new StringWriter();
        var serve = Task.Factory.StartNew(() => StreamKeeper.Serve(keeperEnd.SafeHandle, log, TimeSpan.FromSeconds(10)), TaskCreationOptions.LongRunning);

        DescriptorPassing.Send(appliance.SafeHandle, StreamKeeper.Message(StreamKeeper.Hold, heldId), held.SafeHandle);
        DescriptorPassing.Send(appliance.SafeHandle, StreamKeeper.Message(StreamKeeper.Hold, releasedId), released.SafeHandle);
        DescriptorPassing.Send(appliance.SafeHandle, StreamKeeper.Message(StreamKeeper.Release, releasedId), null);
        // The appliance dies: its copies of the streams and its control connection close.
        held.Dispose();
        released.Dispose();
        appliance.Dispose();

        // Far more than the socket buffers hold: the writer finishes only if the keeper reads everything.
        var payload = new byte[16 << 20];
        new Random(5).NextBytes(payload);
        await writer.SendAsync(payload, SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(20));
        writer.Shutdown(SocketShutdown.Send);

        var drained = await serve.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal((long)payload.Length, Assert.Contains(heldId, drained));
        Assert.DoesNotContain(releasedId, drained);
        // Nobody holds the released stream any more: its peer sees the end.
        Assert.Equal(0, await releasedPeer.ReceiveAsync(new byte[8], SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Contains("end of stream", log.ToString(), StringComparison.Ordinal);
        writer.Dispose();
        releasedPeer.Dispose();
        keeperEnd.Dispose();
    }

    [Fact(Timeout = 10_000)]
    public async Task Keeper_ControlClosesHoldingNothing_ReturnsAtOnce()
    {
        var (appliance, keeperEnd) = Pair(SOCK_SEQPACKET);
        using (keeperEnd)
        {
            var serve = Task.Factory.StartNew(() => StreamKeeper.Serve(keeperEnd.SafeHandle, TextWriter.Null, TimeSpan.FromSeconds(10)), TaskCreationOptions.LongRunning);
            appliance.Dispose();
            Assert.Empty(await serve.WaitAsync(TimeSpan.FromSeconds(5)));
        }
    }
}
