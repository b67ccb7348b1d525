using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

public sealed class CheckpointsTests : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    [Fact(Timeout = 240_000)]
    public async Task LiveCheckpoint_CounterRunning_RestoreResumesCounterAndDiskAsSaved()
    {
        var c = _app.Api();
        await StartDemoAsync(c, "live1");
        await _app.SendSerialAsync("live1", "diskw BEFORE 10");
        await c.WaitForSerialAsync("live1", @"DISKW OK 10");
        var beforeSave = ApiExtensions.LastCounter(await c.SerialLogAsync("live1"));

        var cp = await c.SaveCheckpointAsync("live1", "first", "live");
        var afterSave = ApiExtensions.LastCounter(await c.SerialLogAsync("live1"));
        Assert.Equal("ready", cp.GetProperty("status").GetString());
        Assert.True(cp.GetProperty("guestPauseMs").GetDouble() > 0);
        Assert.True(cp.GetProperty("sizeBytes").GetInt64() > 1_000_000);
        Assert.Contains(cp.GetProperty("method").GetString(), new[] { "background-snapshot", "live-migration" });

        // Still running after a live save: the counter moves on and the guest can write after the save.
        await c.WaitForSerialAsync("live1", $@"COUNTER {afterSave + 3}\r?\n");
        Assert.Equal("running", await c.StateAsync("live1"));
        await _app.SendSerialAsync("live1", "diskw AFTER 11; diskw CHANGED 10");
        await c.WaitForSerialAsync("live1", @"DISKW OK 11");
        var lastBeforeRestore = ApiExtensions.LastCounter(await c.SerialLogAsync("live1"));

        var offset = (await c.SerialLogAsync("live1")).Length;
        var r = await c.PostAsync($"/api/v1/checkpoints/{cp.GetProperty("id").GetString()}/restore?force=true&wait=true", null);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("running", await c.StateAsync("live1"));

        var resumed = int.Parse((await c.WaitForSerialAsync("live1", @"COUNTER (\d+)\r?\n", select: s => s[Math.Min(offset, s.Length)..])).Groups[1].Value);
        Assert.InRange(resumed, beforeSave, afterSave + 1);
        Assert.True(resumed < lastBeforeRestore, $"counter {resumed} should be below {lastBeforeRestore}");

        await _app.SendSerialAsync("live1", "sync; echo 3 > /proc/sys/vm/drop_caches; diskr 10; diskr 11");
        var d11 = await c.WaitForSerialAsync("live1", @"DISK 11 ([^\r\n]*)", select: s => s[Math.Min(offset, s.Length)..]);
        var d10 = await c.WaitForSerialAsync("live1", @"DISK 10 ([^\r\n]*)", select: s => s[Math.Min(offset, s.Length)..]);
        Assert.StartsWith("BEFORE", d10.Groups[1].Value.Trim());
        Assert.DoesNotContain("AFTER", d11.Groups[1].Value);
    }

    [Fact(Timeout = 240_000)]
    public async Task SuspendCheckpoint_Saved_VmStopsAndRestoreBringsItBack()
    {
        var c = _app.Api();
        await StartDemoAsync(c, "susp");
        var beforeSave = ApiExtensions.LastCounter(await c.SerialLogAsync("susp"));

        var cp = await c.SaveCheckpointAsync("susp", "suspended", "suspend");
        Assert.Equal("stopped", await c.StateAsync("susp"));
        Assert.Equal("suspend", cp.GetProperty("mode").GetString());
        var atSave = ApiExtensions.LastCounter(await c.SerialLogAsync("susp"));

        var offset = (await c.SerialLogAsync("susp")).Length;
        var r = await c.PostAsync($"/api/v1/checkpoints/{cp.GetProperty("id").GetString()}/restore?wait=true", null);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("running", await c.StateAsync("susp"));
        var resumed = int.Parse((await c.WaitForSerialAsync("susp", @"COUNTER (\d+)\r?\n", select: s => s[Math.Min(offset, s.Length)..])).Groups[1].Value);
        Assert.InRange(resumed, Math.Max(beforeSave, 1), atSave + 1);
    }

    [Fact(Timeout = 240_000)]
    public async Task Restore_MemoryAndDeviceChangedOrStateDamaged_RefusedAndVmUntouched()
    {
        var c = _app.Api();
        var vm = await StartDemoAsync(c, "cmp");
        var cp = await c.SaveCheckpointAsync("cmp", "base", "live");
        var cpId = cp.GetProperty("id").GetString()!;
        var pid = (await (await c.GetAsync("/api/v1/vms/cmp")).JsonAsync()).GetProperty("runtime").GetProperty("pid").GetInt32();

        var patch = new StringContent("""{"memoryMiB":320,"disks":[{"name":"disk0","sizeMiB":64,"bus":"virtio"},{"name":"disk1","sizeMiB":16,"bus":"virtio"}]}""",
            System.Text.Encoding.UTF8, "application/merge-patch+json");
        Assert.True((await c.PatchAsync("/api/v1/vms/cmp", patch)).IsSuccessStatusCode);

        var refused = await c.PostAsync($"/api/v1/checkpoints/{cpId}/restore?force=true&wait=true", null);
        var problem = await refused.JsonAsync();
        Assert.Equal(HttpStatusCode.Conflict, refused.StatusCode);
        Assert.Equal("urn:appliance:problem:checkpoint-incompatible", problem.GetProperty("type").GetString());
        var fields = problem.GetProperty("differences").EnumerateArray().Select(d => d.GetProperty("field").GetString()).ToList();
        Assert.Contains("machine.memoryMiB", fields);
        Assert.Contains("devices.disk1", fields);
        Assert.Contains("disks.disk1", fields);
        Assert.Contains("launchArgs", fields);
        await AssertUntouchedAsync(c, "cmp", pid);

        var undo = new StringContent("""{"memoryMiB":256,"disks":[{"name":"disk0","sizeMiB":64,"bus":"virtio"}]}""", System.Text.Encoding.UTF8, "application/merge-patch+json");
        Assert.True((await c.PatchAsync("/api/v1/vms/cmp", undo)).IsSuccessStatusCode);

        var state = Path.Combine(_app.DataDir, "checkpoints", vm.GetProperty("id").GetGuid().ToString("N"), Guid.Parse(cpId).ToString("N"), "state");
        var original = await File.ReadAllBytesAsync(state);
        await File.WriteAllBytesAsync(state, original[..(original.Length / 2)]);
        var truncated = await c.PostAsync($"/api/v1/checkpoints/{cpId}/restore?force=true&wait=true", null);
        Assert.Equal((HttpStatusCode)422, truncated.StatusCode);
        Assert.Equal("urn:appliance:problem:checkpoint-corrupt", (await truncated.JsonAsync()).GetProperty("type").GetString());
        await AssertUntouchedAsync(c, "cmp", pid);

        var altered = (byte[])original.Clone();
        altered[altered.Length / 2] ^= 0xFF;
        await File.WriteAllBytesAsync(state, altered);
        var flipped = await c.PostAsync($"/api/v1/checkpoints/{cpId}/restore?force=true&wait=true", null);
        Assert.Equal((HttpStatusCode)422, flipped.StatusCode);
        await AssertUntouchedAsync(c, "cmp", pid);

        await File.WriteAllBytesAsync(state, original);
        var ok = await c.PostAsync($"/api/v1/checkpoints/{cpId}/restore?force=true&wait=true", null);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact(Timeout = 300_000)]
    public async Task Delete_LayersSharedOrExclusive_OnlyUnneededRemoved_ThenExportImportRestore()
    {
        var c = _app.Api();
        await StartDemoAsync(c, "chain");
        // The saved counter lies between the last one printed before the save and the last one printed after it.
        var beforeA = ApiExtensions.LastCounter(await c.SerialLogAsync("chain"));
        var a = await c.SaveCheckpointAsync("chain", "a", "live");
        var afterA = ApiExtensions.LastCounter(await c.SerialLogAsync("chain"));
        await _app.SendSerialAsync("chain", "diskw BETWEEN 12");
        await c.WaitForSerialAsync("chain", "DISKW OK 12");
        var b = await c.SaveCheckpointAsync("chain", "b", "live");
        Assert.Equal(a.GetProperty("id").GetString(), b.GetProperty("parentId").GetString());

        var aFull = await GetAsync(c, a);
        var bFull = await GetAsync(c, b);
        var l0 = LayerFile(aFull, 0);
        Assert.Equal(l0, LayerFile(bFull, 0));
        var l1 = LayerFile(bFull, 1);

        Assert.Equal(HttpStatusCode.OK, (await c.PostAsync($"/api/v1/checkpoints/{a.GetProperty("id").GetString()}/restore?force=true&wait=true", null)).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await c.DeleteAsync($"/api/v1/checkpoints/{b.GetProperty("id").GetString()}")).StatusCode);
        Assert.False(File.Exists(Path.Combine(_app.DataDir, l1)), "layer held only by the deleted checkpoint is removed");
        Assert.True(File.Exists(Path.Combine(_app.DataDir, l0)), "layer still in checkpoint a's chain is kept");

        var refusedVmDelete = await c.DeleteAsync("/api/v1/vms/chain");
        Assert.Equal(HttpStatusCode.Conflict, refusedVmDelete.StatusCode);

        var export = await c.GetAsync($"/api/v1/checkpoints/{a.GetProperty("id").GetString()}/export");
        Assert.Equal(HttpStatusCode.OK, export.StatusCode);
        var archive = await export.Content.ReadAsByteArrayAsync();
        Assert.Equal(HttpStatusCode.NoContent, (await c.DeleteAsync($"/api/v1/checkpoints/{a.GetProperty("id").GetString()}")).StatusCode);
        Assert.Empty((await (await c.GetAsync("/api/v1/vms/chain/checkpoints")).JsonAsync()).GetProperty("items").EnumerateArray());

        var body = new ByteArrayContent(archive);
        body.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/x-tar");
        var imported = await c.PostAsync("/api/v1/checkpoints/import", body);
        var report = await imported.JsonAsync();
        Assert.Equal(HttpStatusCode.Created, imported.StatusCode);
        Assert.True(report.GetProperty("compatible").GetBoolean(), report.ToString());
        var importedId = report.GetProperty("checkpoint").GetProperty("id").GetString();

        var offset = (await c.SerialLogAsync("chain")).Length;
        Assert.Equal(HttpStatusCode.OK, (await c.PostAsync($"/api/v1/checkpoints/{importedId}/restore?force=true&wait=true", null)).StatusCode);
        var resumed = int.Parse((await c.WaitForSerialAsync("chain", @"COUNTER (\d+)\r?\n", select: s => s[Math.Min(offset, s.Length)..])).Groups[1].Value);
        Assert.InRange(resumed, Math.Max(beforeA, 1), afterA + 1);
    }

    [Fact(Timeout = 60_000)]
    public async Task Save_NotEnoughFreeSpace_Returns507AndNoCheckpoint()
    {
        await using var app = new ApplianceFactory(settings: new Dictionary<string, string?> { ["Appliance:Checkpoints:SpaceMarginMiB"] = "1000000000" });
        var c = app.Api();
        await c.CreateDemoVmAsync("full");
        var r = await c.PostAsJsonAsync("/api/v1/vms/full/checkpoints", new { name = "x", mode = "disk-only" });
        Assert.Equal((HttpStatusCode)507, r.StatusCode);
        Assert.Equal("urn:appliance:problem:insufficient-storage", (await r.JsonAsync()).GetProperty("type").GetString());
        Assert.Empty((await (await c.GetAsync("/api/v1/vms/full/checkpoints")).JsonAsync()).GetProperty("items").EnumerateArray());
    }

    [Fact(Timeout = 60_000)]
    public async Task Save_BadRequest_ProblemNamesFields()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("bad");
        var r = await c.PostAsJsonAsync("/api/v1/vms/bad/checkpoints", new { name = "", mode = "sometimes" });
        var p = await r.JsonAsync();
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.True(p.GetProperty("errors").TryGetProperty("name", out _));
        Assert.True(p.GetProperty("errors").TryGetProperty("mode", out _));
        var stopped = await c.PostAsJsonAsync("/api/v1/vms/bad/checkpoints", new { name = "x", mode = "live" });
        Assert.Equal(HttpStatusCode.Conflict, stopped.StatusCode);
    }

    private static async Task<JsonElement> StartDemoAsync(HttpClient c, string name)
    {
        var vm = await c.CreateDemoVmAsync(name);
        await c.ActAsync(name, "start");
        await c.WaitForSerialAsync(name, "demo# ", TimeSpan.FromSeconds(60));
        await c.WaitForSerialAsync(name, @"COUNTER 2\r?\n", TimeSpan.FromSeconds(60));
        return vm;
    }

    private static async Task AssertUntouchedAsync(HttpClient c, string vm, int pid)
    {
        var now = await (await c.GetAsync($"/api/v1/vms/{vm}")).JsonAsync();
        Assert.Equal("running", now.GetProperty("state").GetString());
        Assert.Equal(pid, now.GetProperty("runtime").GetProperty("pid").GetInt32());
        var counter = ApiExtensions.LastCounter(await c.SerialLogAsync(vm));
        await c.WaitForSerialAsync(vm, $@"COUNTER {counter + 1}\r?\n");
    }

    private static async Task<JsonElement> GetAsync(HttpClient c, JsonElement cp) =>
        await (await c.GetAsync($"/api/v1/checkpoints/{cp.GetProperty("id").GetString()}")).JsonAsync();

    private static string LayerFile(JsonElement cp, int position) =>
        cp.GetProperty("manifest").GetProperty("disks")[0].GetProperty("layers")[position].GetProperty("file").GetString()!;
}

public static class CheckpointApiExtensions
{
    public static async Task<JsonElement> SaveCheckpointAsync(this HttpClient c, string vm, string name, string mode)
    {
        var r = await c.PostAsJsonAsync($"/api/v1/vms/{vm}/checkpoints?wait=true", new { name, mode });
        var json = await r.JsonAsync();
        if (r.StatusCode != HttpStatusCode.Created) throw new InvalidOperationException($"checkpoint {vm}/{name}: {(int)r.StatusCode} {json}");
        return json;
    }
}
