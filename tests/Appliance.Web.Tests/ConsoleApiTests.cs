using System.Buffers.Binary;
using System.IO.Compression;
using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

/// <summary>One appliance with one running demo guest shared by the console tests.</summary>
public sealed class ConsoleFixture : IAsyncLifetime
{
    public ApplianceFactory App { get; } = new();
    public HttpClient Api { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Api = App.Api();
        await Api.CreateDemoVmAsync("con");
        await Api.CreateDemoVmAsync("other");
        await Api.ActAsync("con", "start");
        await Api.WaitForSerialAsync("con", "demo# ");
    }

    public async Task DisposeAsync() => await App.DisposeAsync();
}

public sealed class ConsoleApiTests(ConsoleFixture f) : IClassFixture<ConsoleFixture>
{
    private static readonly CancellationToken None = CancellationToken.None;

    private async Task<(string Ticket, string Url)> TicketAsync(string vm, string kind = "vnc")
    {
        var r = await f.Api.PostAsync($"/api/v1/vms/{vm}/console?kind={kind}", null);
        var json = await r.JsonAsync();
        Assert.True(r.IsSuccessStatusCode, json.ToString());
        return (json.GetProperty("ticket").GetString()!, json.GetProperty("url").GetString()!);
    }

    private Uri Ws(string pathAndQuery) => new(new Uri(f.App.BaseAddress.ToString().Replace("http://", "ws://")), pathAndQuery);

    private static ClientWebSocket NewSocket(string? origin = null)
    {
        var ws = new ClientWebSocket();
        ws.Options.AddSubProtocol("binary");
        ws.Options.CollectHttpResponseDetails = true;
        if (origin is not null) ws.Options.SetRequestHeader("Origin", origin);
        return ws;
    }

    private async Task<RfbClient> OpenVncAsync(string vm, CancellationToken ct)
    {
        var (_, url) = await TicketAsync(vm);
        var ws = NewSocket();
        await ws.ConnectAsync(Ws(url), ct);
        Assert.Equal("binary", ws.SubProtocol);
        var rfb = new RfbClient(ws);
        await rfb.HandshakeAsync(ct);
        return rfb;
    }

    private async Task<HttpStatusCode> RefusedStatusAsync(string url, string? origin = null)
    {
        using var ws = NewSocket(origin);
        var e = await Assert.ThrowsAsync<WebSocketException>(() => ws.ConnectAsync(Ws(url), None));
        Assert.NotEqual(HttpStatusCode.SwitchingProtocols, ws.HttpStatusCode);
        return ws.HttpStatusCode;
    }

    [Fact(Timeout = 60_000)]
    public async Task VncSocket_WithTicket_CompletesRfbHandshakeAndShowsGuestText()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(40));
        var rfb = await OpenVncAsync("con", cts.Token);
        Assert.StartsWith("QEMU", rfb.Name);
        Assert.True(rfb.Width >= 320 && rfb.Height >= 200, $"{rfb.Width}x{rfb.Height}");

        var fb = await rfb.ReadFullFrameAsync(cts.Token);
        var colours = new HashSet<uint>();
        for (var i = 0; i < fb.Length; i += 4) colours.Add(BinaryPrimitives.ReadUInt32LittleEndian(fb.AsSpan(i)) & 0xFFFFFF);
        Assert.True(colours.Count > 1, "the framebuffer is blank");
        var lit = 0;
        for (var i = 0; i < fb.Length; i += 4) if ((BinaryPrimitives.ReadUInt32LittleEndian(fb.AsSpan(i)) & 0xFFFFFF) != 0) lit++;
        Assert.True(lit > 500, $"only {lit} non-black pixels: no text on the guest's screen");
        await rfb.Socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
    }

    [Fact(Timeout = 60_000)]
    public async Task VncSocket_ThreeViewersAtOnce_EachGetsServerInitAndFrames()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(40));
        var viewers = await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => OpenVncAsync("con", cts.Token)));
        var frames = await Task.WhenAll(viewers.Select(v => v.ReadFullFrameAsync(cts.Token)));
        Assert.All(viewers, v => Assert.Equal(viewers[0].Width, v.Width));
        Assert.All(frames, fr => Assert.Equal(viewers[0].Width * viewers[0].Height * 4, fr.Length));
        foreach (var v in viewers) await v.Socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);
    }

    [Fact(Timeout = 90_000)]
    public async Task VncSocket_VmPoweredOff_ClosedWithReasonNamingTheState()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await f.Api.CreateDemoVmAsync("stopme");
        await f.Api.ActAsync("stopme", "start");
        var rfb = await OpenVncAsync("stopme", cts.Token);
        var closed = Task.Run(async () =>
        {
            var buf = new byte[65536];
            while (true)
            {
                var r = await rfb.Socket.ReceiveAsync(buf, cts.Token);
                if (r.MessageType == WebSocketMessageType.Close) return;
            }
        }, cts.Token);
        await f.Api.ActAsync("stopme", "poweroff");
        await closed;
        Assert.Equal(WebSocketCloseStatus.EndpointUnavailable, rfb.Socket.CloseStatus);
        Assert.Matches("VM 'stopme' is (stopping|stopped)", rfb.Socket.CloseStatusDescription);
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_TicketUsedTwice_SecondRefusedWith401()
    {
        var (_, url) = await TicketAsync("con");
        using (var ws = NewSocket())
        {
            await ws.ConnectAsync(Ws(url), None);
            await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", None);
        }
        Assert.Equal(HttpStatusCode.Unauthorized, await RefusedStatusAsync(url));
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_AnotherUsersTicket_RefusedWith403BeforeAnyByte()
    {
        var (_, url) = await TicketAsync("con");
        var other = f.App.ClientFor("operator").DefaultRequestHeaders.Authorization!.ToString();
        using var ws = NewSocket();
        ws.Options.SetRequestHeader("Authorization", other);
        await Assert.ThrowsAsync<WebSocketException>(() => ws.ConnectAsync(Ws(url), None));
        Assert.Equal(HttpStatusCode.Forbidden, ws.HttpStatusCode);
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_TicketForAnotherVm_RefusedWith403()
    {
        var (ticket, _) = await TicketAsync("con");
        Assert.Equal(HttpStatusCode.Forbidden, await RefusedStatusAsync($"/api/v1/vms/other/console/vnc?ticket={ticket}"));
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_SerialTicket_RefusedWith403()
    {
        var (ticket, _) = await TicketAsync("con", "serial");
        Assert.Equal(HttpStatusCode.Forbidden, await RefusedStatusAsync($"/api/v1/vms/con/console/vnc?ticket={ticket}"));
    }

    [Theory(Timeout = 30_000)]
    [InlineData("")]
    [InlineData("?ticket=")]
    [InlineData("?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    public async Task VncSocket_MissingOrUnknownTicket_RefusedWith401(string query)
    {
        Assert.Equal(HttpStatusCode.Unauthorized, await RefusedStatusAsync("/api/v1/vms/con/console/vnc" + query));
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_UnknownVm_RefusedWith401NotFound()
    {
        var (ticket, _) = await TicketAsync("con");
        Assert.Equal(HttpStatusCode.Unauthorized, await RefusedStatusAsync($"/api/v1/vms/nosuchvm/console/vnc?ticket={ticket}"));
    }

    [Fact(Timeout = 30_000)]
    public async Task VncSocket_ForeignOrigin_RefusedWith403AndTicketStillUnused()
    {
        var (_, url) = await TicketAsync("con");
        Assert.Equal(HttpStatusCode.Forbidden, await RefusedStatusAsync(url, "http://evil.example"));
        using var ws = NewSocket(f.App.BaseAddress.GetLeftPart(UriPartial.Authority));
        await ws.ConnectAsync(Ws(url), None);
        Assert.Equal(WebSocketState.Open, ws.State);
        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", None);
    }

    [Fact(Timeout = 30_000)]
    public async Task Ticket_StoppedVm_Conflict()
    {
        var r = await f.Api.PostAsync("/api/v1/vms/other/console", null);
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        Assert.Equal("urn:appliance:problem:not-running", (await r.JsonAsync()).GetProperty("type").GetString());
    }

    [Fact(Timeout = 30_000)]
    public async Task Ticket_UnknownKind_ValidationProblem()
    {
        var r = await f.Api.PostAsync("/api/v1/vms/con/console?kind=spice", null);
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Equal("urn:appliance:problem:validation", (await r.JsonAsync()).GetProperty("type").GetString());
    }

    [Fact(Timeout = 60_000)]
    public async Task SerialSocket_WithSerialTicket_ForwardsInputToGuest()
    {
        var (_, url) = await TicketAsync("con", "serial");
        var marker = "ser" + Random.Shared.Next(100000, 999999);
        using var ws = NewSocket(f.App.BaseAddress.GetLeftPart(UriPartial.Authority));
        await ws.ConnectAsync(Ws(url), None);
        await ws.SendAsync(System.Text.Encoding.ASCII.GetBytes($"echo {marker}x\n"), WebSocketMessageType.Binary, true, None);
        await f.Api.WaitForSerialAsync("con", marker + "x\r?\n");
        await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", None);
        Assert.Equal(HttpStatusCode.Unauthorized, await RefusedStatusAsync(url));
    }

    [Fact(Timeout = 30_000)]
    public async Task Screenshot_RunningVm_ValidPngOfTheScreenSize()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var rfb = await OpenVncAsync("con", cts.Token);
        await rfb.Socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", cts.Token);

        var full = await f.Api.GetAsync("/api/v1/vms/con/screenshot");
        Assert.Equal(HttpStatusCode.OK, full.StatusCode);
        Assert.Equal("image/png", full.Content.Headers.ContentType?.MediaType);
        var (w, h, rgb) = DecodePng(await full.Content.ReadAsByteArrayAsync());
        Assert.Equal((rfb.Width, rfb.Height), (w, h));
        Assert.True(rgb.Distinct().Count() > 1, "the screenshot is blank");

        var thumb = DecodePng(await f.Api.GetByteArrayAsync("/api/v1/vms/con/screenshot?width=180"));
        Assert.Equal(180, thumb.W);
        Assert.Equal((int)Math.Round((double)rfb.Height * 180 / rfb.Width), thumb.H);
    }

    [Theory(Timeout = 30_000)]
    [InlineData("con", "?width=0", 400)]
    [InlineData("other", "", 409)]
    [InlineData("nosuchvm", "", 404)]
    public async Task Screenshot_BadRequest_Problem(string vm, string query, int status)
    {
        var r = await f.Api.GetAsync($"/api/v1/vms/{vm}/screenshot{query}");
        Assert.Equal(status, (int)r.StatusCode);
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType?.MediaType);
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            crc ^= b;
            for (var k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (uint)-(int)(crc & 1));
        }
        return ~crc;
    }

    /// <summary>Checks every chunk's CRC and inflates the image data, so a malformed PNG fails here.</summary>
    private static (int W, int H, byte[] Raw) DecodePng(byte[] png)
    {
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        int pos = 8, w = 0, h = 0;
        using var idat = new MemoryStream();
        while (pos < png.Length)
        {
            var len = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(pos));
            var type = System.Text.Encoding.ASCII.GetString(png, pos + 4, 4);
            var data = png.AsSpan(pos + 8, len);
            Assert.Equal(Crc32(png.AsSpan(pos + 4, len + 4)), BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(pos + 8 + len)));
            if (type == "IHDR") { w = BinaryPrimitives.ReadInt32BigEndian(data); h = BinaryPrimitives.ReadInt32BigEndian(data[4..]); }
            if (type == "IDAT") idat.Write(data);
            pos += 12 + len;
        }
        idat.Position = 0;
        using var z = new ZLibStream(idat, CompressionMode.Decompress);
        using var raw = new MemoryStream();
        z.CopyTo(raw);
        Assert.Equal(h * (1 + 3 * w), raw.Length);
        return (w, h, raw.ToArray());
    }
}
