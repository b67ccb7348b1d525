using System.Buffers.Binary;
using System.Net.WebSockets;
using System.Text;

namespace Appliance.Web.Tests.Infrastructure;

/// <summary>A minimal RFB 3.8 client over a websocket: enough to shake hands and read a raw framebuffer.</summary>
public sealed class RfbClient(WebSocket ws)
{
    private readonly byte[] _frame = new byte[1 << 20];
    private int _start, _end;

    public WebSocket Socket => ws;
    public int Width { get; private set; }
    public int Height { get; private set; }
    public string Name { get; private set; } = "";

    public async Task HandshakeAsync(CancellationToken ct)
    {
        var version = Encoding.ASCII.GetString(await ReadAsync(12, ct));
        Assert.Equal("RFB 003.008\n", version);
        await SendAsync(Encoding.ASCII.GetBytes("RFB 003.008\n"), ct);
        var n = (await ReadAsync(1, ct))[0];
        Assert.True(n > 0, "the server offered no security types");
        var types = await ReadAsync(n, ct);
        Assert.Contains((byte)1, types);
        await SendAsync([1], ct);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(4, ct)));
        await SendAsync([1], ct); // ClientInit: shared, so other viewers stay connected
        var init = await ReadAsync(24, ct);
        Width = BinaryPrimitives.ReadUInt16BigEndian(init);
        Height = BinaryPrimitives.ReadUInt16BigEndian(init.AsSpan(2));
        var nameLen = (int)BinaryPrimitives.ReadUInt32BigEndian(init.AsSpan(20));
        Name = Encoding.UTF8.GetString(await ReadAsync(nameLen, ct));
    }

    /// <summary>Asks for the whole screen in 32-bit raw pixels and returns them (BGRX).</summary>
    public async Task<byte[]> ReadFullFrameAsync(CancellationToken ct)
    {
        var pf = new byte[20];
        pf[0] = 0; // SetPixelFormat
        pf[4] = 32; pf[5] = 24; pf[6] = 0; pf[7] = 1;
        BinaryPrimitives.WriteUInt16BigEndian(pf.AsSpan(8), 255);
        BinaryPrimitives.WriteUInt16BigEndian(pf.AsSpan(10), 255);
        BinaryPrimitives.WriteUInt16BigEndian(pf.AsSpan(12), 255);
        pf[14] = 16; pf[15] = 8; pf[16] = 0;
        await SendAsync(pf, ct);
        await SendAsync([2, 0, 0, 1, 0, 0, 0, 0], ct); // SetEncodings: raw only
        var req = new byte[10];
        req[0] = 3; req[1] = 0; // FramebufferUpdateRequest, not incremental
        BinaryPrimitives.WriteUInt16BigEndian(req.AsSpan(6), (ushort)Width);
        BinaryPrimitives.WriteUInt16BigEndian(req.AsSpan(8), (ushort)Height);
        await SendAsync(req, ct);

        var fb = new byte[Width * Height * 4];
        while (true)
        {
            var type = (await ReadAsync(1, ct))[0];
            if (type == 2) continue; // Bell
            if (type == 3)
            {
                var head = await ReadAsync(7, ct);
                await ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(3)), ct);
                continue;
            }
            Assert.Equal(0, type);
            var rects = BinaryPrimitives.ReadUInt16BigEndian(await ReadAsync(3, ct).ContinueWith(t => t.Result.AsSpan(1).ToArray(), ct));
            for (var r = 0; r < rects; r++)
            {
                var h = await ReadAsync(12, ct);
                int x = BinaryPrimitives.ReadUInt16BigEndian(h), y = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(2));
                int w = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(4)), hh = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6));
                Assert.Equal(0, BinaryPrimitives.ReadInt32BigEndian(h.AsSpan(8)));
                var px = await ReadAsync(w * hh * 4, ct);
                for (var row = 0; row < hh; row++)
                    Buffer.BlockCopy(px, row * w * 4, fb, ((y + row) * Width + x) * 4, w * 4);
            }
            return fb;
        }
    }

    public Task SendAsync(byte[] data, CancellationToken ct) =>
        ws.SendAsync(data, WebSocketMessageType.Binary, true, ct);

    public async Task<byte[]> ReadAsync(int n, CancellationToken ct)
    {
        var result = new byte[n];
        var got = 0;
        while (got < n)
        {
            if (_start == _end)
            {
                var r = await ws.ReceiveAsync(_frame, ct);
                if (r.MessageType == WebSocketMessageType.Close)
                    throw new WebSocketException($"closed by the server: {ws.CloseStatus} {ws.CloseStatusDescription}");
                _start = 0;
                _end = r.Count;
                continue;
            }
            var take = Math.Min(n - got, _end - _start);
            Buffer.BlockCopy(_frame, _start, result, got, take);
            _start += take;
            got += take;
        }
        return result;
    }
}
