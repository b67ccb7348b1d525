using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Security.Cryptography;
using Appliance.Core.Emulation;
using Appliance.Core.Host;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Tests;

public sealed class StorageAndAdmissionTests : IAsyncLifetime
{
    private static readonly long HostMiB = new LinuxHostInfo().TotalMemoryMiB;

    // The reserve leaves room for exactly one 256 MiB demo guest.
    private readonly ApplianceFactory _app = new(settings: new Dictionary<string, string?>
    {
        ["Appliance:HostMemoryReserveMiB"] = (HostMiB - 400).ToString(),
        ["Appliance:MaxUploadBytes"] = (4 * 1024 * 1024).ToString(),
    });
    private HttpClient _c = null!;

    public Task InitializeAsync()
    {
        _c = _app.Api();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _app.DisposeAsync();

    private static ByteArrayContent Bytes(byte[] b)
    {
        var c = new ByteArrayContent(b);
        c.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        return c;
    }

    [Fact(Timeout = 30_000)]
    public async Task UploadImage_Streamed_ListedWithSizeAndChecksum()
    {
        var data = RandomNumberGenerator.GetBytes(1_500_000);
        var r = await _c.PutAsync("/api/v1/images/tools.iso", Bytes(data));
        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        var list = await (await _c.GetAsync("/api/v1/images")).JsonAsync();
        var img = list.GetProperty("items").EnumerateArray().Single(i => i.GetProperty("name").GetString() == "tools.iso");
        Assert.Equal(data.Length, img.GetProperty("sizeBytes").GetInt64());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(data)), img.GetProperty("sha256").GetString());
        Assert.Equal("iso", img.GetProperty("kind").GetString());
        Assert.Equal(data, await File.ReadAllBytesAsync(Path.Combine(_app.DataDir, "images", "tools.iso")));
    }

    [Fact(Timeout = 30_000)]
    public async Task UploadImage_OverLimit_413AndNoFileLeft()
    {
        var r = await _c.PutAsync("/api/v1/images/big.iso", Bytes(new byte[5 * 1024 * 1024]));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode);
        Assert.Equal("urn:appliance:problem:payload-too-large", (await r.JsonAsync()).GetProperty("type").GetString());
        Assert.DoesNotContain(Directory.GetFiles(Path.Combine(_app.DataDir, "images")), f => f.Contains("big") || Path.GetFileName(f).StartsWith(".upload"));
    }

    [Theory(Timeout = 30_000)]
    [InlineData("..%2F..%2Fappliance.db")]
    [InlineData("..%2Fdisks%2Fx.qcow2")]
    [InlineData(".hidden")]
    [InlineData("x%2F..%2F..%2Fy")]
    public async Task ImageName_PathTraversal_Refused400(string name)
    {
        var r = await _c.PutAsync($"/api/v1/images/{name}", Bytes([1, 2, 3]));
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        var p = await r.JsonAsync();
        Assert.Equal("urn:appliance:problem:validation", p.GetProperty("type").GetString());
        Assert.True(p.GetProperty("errors").TryGetProperty("name", out _));
        Assert.False(File.Exists(Path.Combine(_app.DataDir, "x.qcow2")));
        Assert.Equal(HttpStatusCode.BadRequest, (await _c.DeleteAsync($"/api/v1/images/{name}")).StatusCode);
    }

    [Fact(Timeout = 30_000)]
    public async Task DeleteImage_UsedByVm_Conflict409NamingTheVm()
    {
        await _c.PutAsync("/api/v1/images/install.iso", Bytes([1, 2, 3, 4]));
        await _c.PostAsJsonAsync("/api/v1/vms", new { name = "installer", memoryMiB = 128, cdrom = "install.iso" });
        var r = await _c.DeleteAsync("/api/v1/images/install.iso");
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        var p = await r.JsonAsync();
        Assert.Equal("urn:appliance:problem:image-in-use", p.GetProperty("type").GetString());
        Assert.Equal("installer", p.GetProperty("usedBy")[0].GetString());
        await _c.DeleteAsync("/api/v1/vms/installer");
        Assert.Equal(HttpStatusCode.NoContent, (await _c.DeleteAsync("/api/v1/images/install.iso")).StatusCode);
        Assert.False(File.Exists(Path.Combine(_app.DataDir, "images", "install.iso")));
    }

    [Fact(Timeout = 90_000)]
    public async Task Start_MemoryOverCommitted_Conflict409WithNumbers()
    {
        await _c.CreateDemoVmAsync("first");
        await _c.CreateDemoVmAsync("second");
        await _c.ActAsync("first", "start");
        var r = await _c.PostAsync("/api/v1/vms/second/start?wait=true", null);
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        var p = await r.JsonAsync();
        Assert.Equal("urn:appliance:problem:insufficient-memory", p.GetProperty("type").GetString());
        Assert.Contains("256 MiB", p.GetProperty("detail").GetString());
        Assert.Equal("stopped", await _c.StateAsync("second"));
        await _c.ActAsync("first", "poweroff");
        await _c.ActAsync("second", "start");
    }

    [Fact(Timeout = 60_000)]
    public async Task Action_DriverLacksCapability_501Unsupported()
    {
        await using var app = new ApplianceFactory(services: s =>
            s.AddSingleton<IEmulatorDriver>(sp => new NoPauseDriver(new QemuDriver(sp.GetRequiredService<IOptions<Appliance.Core.ApplianceOptions>>()))));
        var c = app.Api();
        await c.CreateDemoVmAsync("nopause");
        var r = await c.PostAsync("/api/v1/vms/nopause/pause", null);
        Assert.Equal(HttpStatusCode.NotImplemented, r.StatusCode);
        var p = await r.JsonAsync();
        Assert.Equal("urn:appliance:problem:unsupported-operation", p.GetProperty("type").GetString());
        Assert.Contains("pause", p.GetProperty("detail").GetString());
    }

    /// <summary>Fault injection: a driver that declares no pause support.</summary>
    private sealed class NoPauseDriver(IEmulatorDriver inner) : IEmulatorDriver
    {
        public string Name => "limited";
        public IReadOnlySet<EmulatorCapability> Capabilities { get; } = inner.Capabilities.Where(c => c != EmulatorCapability.Pause).ToHashSet();
        public LaunchPlan BuildLaunch(LaunchContext ctx) => inner.BuildLaunch(ctx);
        public Task<string> GetVersionAsync(CancellationToken ct = default) => inner.GetVersionAsync(ct);
    }
}
