using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

/// <summary>The VM definitions API against a real host and a real SQLite file.</summary>
public sealed class VmApiTests : IClassFixture<VmApiTests.Fixture>
{
    public sealed class Fixture : IAsyncLifetime
    {
        public ApplianceFactory App { get; } = new();
        public Task InitializeAsync() => Task.CompletedTask;
        public async Task DisposeAsync() => await App.DisposeAsync();
    }

    private readonly ApplianceFactory _app;
    private readonly HttpClient _c;

    public VmApiTests(Fixture f)
    {
        _app = f.App;
        _c = f.App.Api();
    }

    private static StringContent Json(string json, string type = "application/json") => new(json, Encoding.UTF8, type);

    private async Task<string> DatabaseFingerprintAsync()
    {
        var list = await (await _c.GetAsync("/api/v1/vms?limit=500")).JsonAsync();
        return list.GetRawText();
    }

    private static void AssertProblem(JsonElement p, int status, string slug, string? field = null)
    {
        Assert.Equal("urn:appliance:problem:" + slug, p.GetProperty("type").GetString());
        Assert.Equal(status, p.GetProperty("status").GetInt32());
        Assert.False(string.IsNullOrWhiteSpace(p.GetProperty("detail").GetString()));
        Assert.DoesNotContain("   at ", p.GetRawText());
        if (field is not null) Assert.True(p.GetProperty("errors").TryGetProperty(field, out var msgs) && msgs.GetArrayLength() > 0, $"no error for {field}: {p}");
    }

    [Fact(Timeout = 30_000)]
    public async Task Vm_CreateReadUpdatePatchDelete_RoundTrips()
    {
        var created = await _c.PostAsync("/api/v1/vms", Json("""
            {"name":"crud-1","description":"first","vcpus":1,"memoryMiB":128,"machine":"pc","tags":["web","prod"],
             "disks":[{"name":"root","sizeMiB":32,"bus":"sata"}],"nics":[{"model":"e1000","portForwards":[{"hostPort":18022,"guestPort":22}]}]}
            """));
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        var vm = await created.JsonAsync();
        var id = vm.GetProperty("id").GetString()!;
        Assert.Equal($"/api/v1/vms/{id}", created.Headers.Location!.ToString());
        Assert.Equal("stopped", vm.GetProperty("state").GetString());
        Assert.Equal("pc", vm.GetProperty("machine").GetString());
        Assert.Equal(128, vm.GetProperty("memoryMiB").GetInt32());
        Assert.Equal("\"v1\"", created.Headers.ETag!.Tag);
        Assert.True(File.Exists(Directory.GetFiles(Path.Combine(_app.DataDir, "disks"), "root-*.qcow2", SearchOption.AllDirectories).Single()));

        var byName = await _c.GetAsync("/api/v1/vms/crud-1");
        var byId = await _c.GetAsync($"/api/v1/vms/{id}");
        Assert.Equal((await byName.JsonAsync()).GetProperty("id").GetString(), (await byId.JsonAsync()).GetProperty("id").GetString());

        var put = new HttpRequestMessage(HttpMethod.Put, "/api/v1/vms/crud-1")
        {
            Content = Json("""{"name":"crud-1","description":"second","vcpus":1,"memoryMiB":256,"machine":"q35","tags":["web"],"disks":[{"name":"root","sizeMiB":32,"bus":"sata"}]}"""),
        };
        put.Headers.IfMatch.Add(new EntityTagHeaderValue("\"v1\""));
        var putRes = await _c.SendAsync(put);
        Assert.Equal(HttpStatusCode.OK, putRes.StatusCode);
        var afterPut = await putRes.JsonAsync();
        Assert.Equal(256, afterPut.GetProperty("memoryMiB").GetInt32());
        Assert.Equal(2, afterPut.GetProperty("version").GetInt64());
        Assert.Empty(afterPut.GetProperty("nics").EnumerateArray());

        var patch = await _c.PatchAsync("/api/v1/vms/crud-1", Json("""{"description":null,"memoryMiB":192,"display":{"width":1280}}""", "application/merge-patch+json"));
        Assert.Equal(HttpStatusCode.OK, patch.StatusCode);
        var afterPatch = await patch.JsonAsync();
        Assert.Equal(192, afterPatch.GetProperty("memoryMiB").GetInt32());
        Assert.Equal(JsonValueKind.Null, afterPatch.GetProperty("description").ValueKind);
        Assert.Equal(1280, afterPatch.GetProperty("display").GetProperty("width").GetInt32());
        Assert.Equal(768, afterPatch.GetProperty("display").GetProperty("height").GetInt32());
        Assert.Equal("q35", afterPatch.GetProperty("machine").GetString());

        var del = await _c.DeleteAsync("/api/v1/vms/crud-1");
        Assert.Equal(HttpStatusCode.NoContent, del.StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await _c.GetAsync("/api/v1/vms/crud-1")).StatusCode);
        Assert.Empty(Directory.GetFiles(Path.Combine(_app.DataDir, "disks"), "root-*.qcow2", SearchOption.AllDirectories));
    }

    public static TheoryData<string, string, int, string, string?> BadBodies => new()
    {
        { "unknown field", """{"name":"bad-1","memoryMib":128}""", 400, "validation", "memoryMib" },
        { "wrong type", """{"name":"bad-1","memoryMiB":"lots"}""", 400, "validation", "memoryMiB" },
        { "wrong nested type", """{"name":"bad-1","disks":[{"name":"d","sizeMiB":true}]}""", 400, "validation", "disks[0].sizeMiB" },
        { "number out of range", """{"name":"bad-1","memoryMiB":32}""", 400, "validation", "memoryMiB" },
        { "too many vcpus", """{"name":"bad-1","vcpus":4096}""", 400, "validation", "vcpus" },
        { "bad name", """{"name":"Bad_Name!"}""", 400, "validation", "name" },
        { "bad enum", """{"name":"bad-1","machine":"isapc"}""", 400, "validation", "machine" },
        { "path in image name", """{"name":"bad-1","kernelBoot":{"kernel":"../../etc/passwd"}}""", 400, "validation", "kernelBoot.kernel" },
        { "malformed json", """{"name":"bad-1",""", 400, "malformed-json", null },
        { "unknown template", """{"name":"bad-1","template":"windows"}""", 400, "validation", "template" },
    };

    [Theory(Timeout = 30_000)]
    [MemberData(nameof(BadBodies))]
    public async Task CreateVm_BadInput_ProblemNamesFieldAndChangesNothing(string what, string body, int status, string slug, string? field)
    {
        var before = await DatabaseFingerprintAsync();
        var r = await _c.PostAsync("/api/v1/vms", Json(body));
        Assert.True(status == (int)r.StatusCode, $"{what}: got {(int)r.StatusCode}");
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType!.MediaType);
        AssertProblem(await r.JsonAsync(), status, slug, field);
        Assert.Equal(before, await DatabaseFingerprintAsync());
    }

    [Fact(Timeout = 30_000)]
    public async Task CreateVm_DuplicateName_Conflict409()
    {
        await _c.PostAsync("/api/v1/vms", Json("""{"name":"dup-1","memoryMiB":128}"""));
        var before = await DatabaseFingerprintAsync();
        var r = await _c.PostAsync("/api/v1/vms", Json("""{"name":"dup-1","memoryMiB":256}"""));
        Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
        AssertProblem(await r.JsonAsync(), 409, "duplicate-name", "name");
        Assert.Equal(before, await DatabaseFingerprintAsync());
    }

    [Fact(Timeout = 30_000)]
    public async Task CreateVm_OversizedBody_PayloadTooLarge413()
    {
        var before = await DatabaseFingerprintAsync();
        var huge = "{\"name\":\"big-1\",\"description\":\"" + new string('x', 2 * 1024 * 1024) + "\"}";
        var r = await _c.PostAsync("/api/v1/vms", Json(huge));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode);
        AssertProblem(await r.JsonAsync(), 413, "payload-too-large");
        Assert.Equal(before, await DatabaseFingerprintAsync());
    }

    [Fact(Timeout = 30_000)]
    public async Task CreateVm_WrongContentType_UnsupportedMediaType415()
    {
        var r = await _c.PostAsync("/api/v1/vms", new StringContent("name=x", Encoding.UTF8, "application/x-www-form-urlencoded"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, r.StatusCode);
        AssertProblem(await r.JsonAsync(), 415, "unsupported-media-type");
    }

    [Fact(Timeout = 30_000)]
    public async Task PutVm_StaleETag_PreconditionFailed412AndUnchanged()
    {
        await _c.PostAsync("/api/v1/vms", Json("""{"name":"etag-1","memoryMiB":128}"""));
        await _c.PatchAsync("/api/v1/vms/etag-1", Json("""{"memoryMiB":160}"""));
        var put = new HttpRequestMessage(HttpMethod.Put, "/api/v1/vms/etag-1") { Content = Json("""{"name":"etag-1","memoryMiB":512}""") };
        put.Headers.IfMatch.Add(new EntityTagHeaderValue("\"v1\""));
        var r = await _c.SendAsync(put);
        Assert.Equal(HttpStatusCode.PreconditionFailed, r.StatusCode);
        AssertProblem(await r.JsonAsync(), 412, "precondition-failed");
        Assert.Equal(160, (await (await _c.GetAsync("/api/v1/vms/etag-1")).JsonAsync()).GetProperty("memoryMiB").GetInt32());
    }

    [Fact(Timeout = 60_000)]
    public async Task PutVm_ConcurrentWritesWithSameETag_ExactlyOneWins()
    {
        await _c.PostAsync("/api/v1/vms", Json("""{"name":"race-1","memoryMiB":128}"""));
        var etag = (await _c.GetAsync("/api/v1/vms/race-1")).Headers.ETag!;
        var tasks = Enumerable.Range(0, 8).Select(i =>
        {
            var put = new HttpRequestMessage(HttpMethod.Put, "/api/v1/vms/race-1") { Content = Json($$"""{"name":"race-1","memoryMiB":{{200 + i}}}""") };
            put.Headers.IfMatch.Add(etag);
            return _c.SendAsync(put);
        }).ToList();
        var results = await Task.WhenAll(tasks);
        Assert.Equal(1, results.Count(r => r.StatusCode == HttpStatusCode.OK));
        Assert.Equal(7, results.Count(r => r.StatusCode == HttpStatusCode.PreconditionFailed));
        var winner = await results.Single(r => r.StatusCode == HttpStatusCode.OK).JsonAsync();
        var now = await (await _c.GetAsync("/api/v1/vms/race-1")).JsonAsync();
        Assert.Equal(winner.GetProperty("memoryMiB").GetInt32(), now.GetProperty("memoryMiB").GetInt32());
        Assert.Equal(2, now.GetProperty("version").GetInt64());
    }

    [Fact(Timeout = 30_000)]
    public async Task ListVms_FilterByTagAndStatePaged_ReturnsMatchingPage()
    {
        for (var i = 0; i < 5; i++)
            await _c.PostAsync("/api/v1/vms", Json($$"""{"name":"list-{{i}}","memoryMiB":128,"tags":["{{(i % 2 == 0 ? "even" : "odd")}}"]}"""));
        var page = await (await _c.GetAsync("/api/v1/vms?tag=even&state=stopped&offset=1&limit=1")).JsonAsync();
        Assert.Equal(3, page.GetProperty("total").GetInt32());
        Assert.Equal("list-2", page.GetProperty("items")[0].GetProperty("name").GetString());
        var bad = await _c.GetAsync("/api/v1/vms?state=sleeping&limit=0");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        var p = await bad.JsonAsync();
        AssertProblem(p, 400, "validation", "state");
        Assert.True(p.GetProperty("errors").TryGetProperty("limit", out _));
    }

    [Fact(Timeout = 30_000)]
    public async Task GetVm_Unknown_NotFoundProblem()
    {
        var r = await _c.GetAsync("/api/v1/vms/nope-nope");
        Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
        AssertProblem(await r.JsonAsync(), 404, "not-found");
    }

    [Fact(Timeout = 30_000)]
    public async Task Health_Ready_ReportsDatabaseAndEmulator()
    {
        var h = await (await _c.GetAsync("/healthz")).JsonAsync();
        Assert.Equal("ok", h.GetProperty("database").GetProperty("status").GetString());
        Assert.StartsWith("QEMU ", h.GetProperty("emulator").GetProperty("detail").GetString());
        Assert.Equal("tcg", h.GetProperty("accelerator").GetString());
    }

    [Fact(Timeout = 30_000)]
    public async Task OpenApi_Document_DescribesEveryApiRouteAndProblems()
    {
        var doc = await (await _c.GetAsync("/openapi/v1.json")).JsonAsync();
        var paths = doc.GetProperty("paths");
        foreach (var p in new[] { "/api/v1/vms", "/api/v1/vms/{id}", "/api/v1/vms/{id}/start", "/api/v1/jobs/{jobId}", "/api/v1/images/{name}", "/healthz" })
            Assert.True(paths.TryGetProperty(p, out _), $"{p} missing from the OpenAPI document");
        var post = paths.GetProperty("/api/v1/vms").GetProperty("post");
        Assert.True(post.GetProperty("responses").TryGetProperty("409", out _));
        Assert.True(post.GetProperty("requestBody").GetProperty("content").TryGetProperty("application/json", out _));
        var docs = await _c.GetAsync("/api/docs");
        if (docs.StatusCode == HttpStatusCode.Found) docs = await _c.GetAsync(new Uri(docs.RequestMessage!.RequestUri!, docs.Headers.Location!));
        Assert.Equal(HttpStatusCode.OK, docs.StatusCode);
        Assert.Contains("text/html", docs.Content.Headers.ContentType!.ToString());
    }
}
