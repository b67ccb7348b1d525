using System.Net.Sockets;
using System.Threading.Channels;

namespace Appliance.Core.Supervision;

/// <summary>
/// The appliance's one connection to a VM's serial socket (QEMU's chardev server takes one client),
/// shared by every viewer: output is broadcast, input from any viewer is forwarded. A short backlog
/// lets a new viewer see the current screen's worth of text.
/// </summary>
public sealed class SerialConsole : IAsyncDisposable
{
    private readonly string _socketPath;
    private readonly CancellationTokenSource _cts = new();
    private readonly Lock _lock = new();
    private readonly List<Channel<byte[]>> _subs = [];
    private readonly byte[] _ring = new byte[64 * 1024];
    private long _written;
    private Socket? _socket;
    private readonly Task _loop;

    public SerialConsole(string socketPath)
    {
        _socketPath = socketPath;
        _loop = Task.Run(RunAsync);
    }

    public byte[] Backlog()
    {
        lock (_lock)
        {
            var n = (int)Math.Min(_written, _ring.Length);
            var result = new byte[n];
            var start = (int)((_written - n) % _ring.Length);
            var first = Math.Min(n, _ring.Length - start);
            Array.Copy(_ring, start, result, 0, first);
            Array.Copy(_ring, 0, result, first, n - first);
            return result;
        }
    }

    public ChannelReader<byte[]> Subscribe(out byte[] backlog, out Action unsubscribe)
    {
        var ch = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (_lock)
        {
            backlog = Backlog();
            _subs.Add(ch);
        }
        unsubscribe = () => { lock (_lock) _subs.Remove(ch); ch.Writer.TryComplete(); };
        return ch.Reader;
    }

    public async Task WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        var s = _socket ?? throw new IOException("The serial console is not connected.");
        await s.SendAsync(data, SocketFlags.None, ct);
    }

    public bool Connected => _socket?.Connected == true;

    private async Task RunAsync()
    {
        var buf = new byte[16 * 1024];
        while (!_cts.IsCancellationRequested)
        {
            try
            {
                using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(_socketPath), _cts.Token);
                _socket = s;
                while (true)
                {
                    var n = await s.ReceiveAsync(buf, SocketFlags.None, _cts.Token);
                    if (n == 0) break;
                    var chunk = buf.AsSpan(0, n).ToArray();
                    lock (_lock)
                    {
                        for (var i = 0; i < n; i++) _ring[(_written + i) % _ring.Length] = chunk[i];
                        _written += n;
                        foreach (var sub in _subs) sub.Writer.TryWrite(chunk);
                    }
                }
            }
            catch (OperationCanceledException) { break; }
            catch (SocketException) { }
            catch (IOException) { }
            finally { _socket = null; }
            try { await Task.Delay(200, _cts.Token); } catch (OperationCanceledException) { break; }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cts.CancelAsync();
        try { _socket?.Dispose(); } catch (ObjectDisposedException) { }
        try { await _loop.WaitAsync(TimeSpan.FromSeconds(2)); } catch (Exception) { }
        lock (_lock)
        {
            foreach (var s in _subs) s.Writer.TryComplete();
            _subs.Clear();
        }
        _cts.Dispose();
    }
}
