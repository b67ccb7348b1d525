using System.Net;
using System.Net.Http.Json;
using Appliance.Core.Emulation;
using Appliance.Web.Security;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests.Security;

public sealed class HardeningTests
{
    [Fact(Timeout = 90_000)]
    public async Task QemuRunAsUser_AsRoot_EmulatorRunsUnprivilegedUnderSeccomp_AndStillServesTheGuest()
    {
        Assert.True(NativeProcess.geteuid() == 0, "this test needs the appliance to run as root, as it does on the appliance and in CI");
        var nobody = QemuUser.Lookup("nobody")!.Value;
        await using var app = new ApplianceFactory(settings: new Dictionary<string, string?> { ["Appliance:QemuRunAsUser"] = "nobody" });
        var c = app.Api();
        var vm = await c.CreateDemoVmAsync("runas");
        await c.ActAsync("runas", "start");
        await c.WaitForSerialAsync("runas", @"COUNTER 1\r?\n");
        var pid = (await (await c.GetAsync("/api/v1/vms/runas")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();
        var status = await File.ReadAllLinesAsync($"/proc/{pid}/status");
        Assert.Equal($"Uid:\t{nobody.Uid}\t{nobody.Uid}\t{nobody.Uid}\t{nobody.Uid}", status.Single(l => l.StartsWith("Uid:")));
        Assert.Equal("Seccomp:\t2", status.Single(l => l.StartsWith("Seccomp:")));
        var runDir = app.Supervisor.RuntimePathsFor(Guid.Parse(vm.GetProperty("id").GetString()!)).RunDir;
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(runDir));
        // QMP still answers the (root) appliance after the drop: pause and resume go through it.
        await c.ActAsync("runas", "pause");
        Assert.Equal("paused", await c.StateAsync("runas"));
        await c.ActAsync("runas", "resume");
        await c.ActAsync("runas", "poweroff");
    }

    [Fact(Timeout = 30_000)]
    public async Task Responses_CarrySecurityHeaders()
    {
        await using var app = new ApplianceFactory();
        using var r = await app.Anonymous().GetAsync("/healthz");
        var csp = string.Join(' ', r.Headers.GetValues("Content-Security-Policy"));
        Assert.Contains("script-src 'self';", csp);
        Assert.Contains("frame-ancestors 'self'", csp);
        Assert.Contains("connect-src 'self' ws: wss:", csp);
        Assert.Equal("nosniff", r.Headers.GetValues("X-Content-Type-Options").Single());
        Assert.Equal("no-referrer", r.Headers.GetValues("Referrer-Policy").Single());
    }

    [Fact]
    public void SelfSignedCertificate_FirstStart_OwnerOnlyAndReusedAfterwards()
    {
        var dir = TestPaths.NewDataDir();
        try
        {
            var path = Path.Combine(dir, TlsSetup.CertificateFile);
            using var first = TlsSetup.LoadOrCreate(path);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            Assert.True(first.HasPrivateKey);
            Assert.Contains("1.3.6.1.5.5.7.3.1", first.Extensions.OfType<System.Security.Cryptography.X509Certificates.X509EnhancedKeyUsageExtension>().Single().EnhancedKeyUsages.Cast<System.Security.Cryptography.Oid>().Select(o => o.Value));
            using var again = TlsSetup.LoadOrCreate(path);
            Assert.Equal(first.Thumbprint, again.Thumbprint);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData("http://127.0.0.1:5080", true)]
    [InlineData("http://localhost:5080", true)]
    [InlineData("http://[::1]:5080", true)]
    [InlineData("http://0.0.0.0:5080", false)]
    [InlineData("http://*:5080", false)]
    [InlineData("http://192.0.2.10:5080", false)]
    [InlineData("https://[::]:5443", false)]
    public void Loopback_ListenUrls_AreRecognised(string url, bool loopback) => Assert.Equal(loopback, TlsSetup.IsLoopback(url));

    [Fact(Timeout = 30_000)]
    public async Task AuditLog_CannotBeChangedThroughTheDatabaseEither()
    {
        await using var app = new ApplianceFactory();
        var c = app.Api();
        Assert.Equal(HttpStatusCode.Created, (await c.PostAsJsonAsync("/api/v1/tokens", new { name = "t", role = "viewer" })).StatusCode);
        var db = new Appliance.Data.Database(Path.Combine(app.DataDir, "appliance.db"));
        await using var conn = await db.OpenAsync();
        var e = await Assert.ThrowsAsync<Microsoft.Data.Sqlite.SqliteException>(() => Dapper.SqlMapper.ExecuteAsync(conn, "DELETE FROM audit_log"));
        Assert.Contains("append-only", e.Message);
        await Assert.ThrowsAsync<Microsoft.Data.Sqlite.SqliteException>(() => Dapper.SqlMapper.ExecuteAsync(conn, "UPDATE audit_log SET status = 200"));
        var audit = await (await c.GetAsync("/api/v1/audit")).JsonAsync();
        Assert.True(audit.GetProperty("total").GetInt32() >= 2);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await c.DeleteAsync("/api/v1/audit")).StatusCode);
    }
}
