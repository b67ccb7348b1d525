using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text.Json.Nodes;
using Appliance.Core.Emulation;
using Appliance.Web.Tests.Infrastructure;

namespace Appliance.Web.Tests;

/// <summary>
/// The appliance dies between QEMU accepting a disk freeze and the database recording the new top
/// layer. Simulated by freezing the disk through the QMP socket while the appliance is down.
/// </summary>
public sealed class LayerReconcileRestartTests
{
    [Fact(Timeout = 300_000)]
    public async Task DiskFrozenWhileApplianceDown_Restart_RecordsRealTopSoCheckpointKeepsLaterWrites()
    {
        await using var app = new ApplianceProcess();
        await app.StartAsync();
        var c = app.Api();
        await c.CreateDemoVmAsync("drift");
        await c.ActAsync("drift", "start");
        await c.WaitForSerialAsync("drift", "demo# ", TimeSpan.FromSeconds(60));
        await app.SendSerialAsync("drift", "diskw BEFORE 7; sync");
        await c.WaitForSerialAsync("drift", "DISKW OK 7");
        await app.KillAsync();

        var qmpSocket = Directory.EnumerateFiles(Path.Combine(app.DataDir, "run"), "qmp.sock", SearchOption.AllDirectories).Single();
        string behind;
        await using (var qmp = await QmpClient.ConnectAsync(qmpSocket, TimeSpan.FromSeconds(30)))
        {
            var top = (await qmp.ExecuteAsync("query-block")).EnumerateArray().Single(d => d.GetProperty("device").GetString() == "drive-disk0")
                .GetProperty("inserted").GetProperty("file").GetString()!;
            behind = Path.Combine(Path.GetDirectoryName(top)!, "disk0-behind.qcow2");
            await qmp.ExecuteAsync("blockdev-snapshot-sync", new JsonObject { ["device"] = "drive-disk0", ["snapshot-file"] = behind, ["format"] = "qcow2" });
        }

        await app.StartAsync();
        c = app.Api();
        Assert.Equal("running", await c.StateAsync("drift"));
        await app.SendSerialAsync("drift", "diskw AFTER 7; sync");
        await c.WaitForSerialAsync("drift", "DISKW OK 7", select: s => s[(s.LastIndexOf("diskw AFTER", StringComparison.Ordinal) + 1)..]);

        var save = await c.PostAsJsonAsync("/api/v1/vms/drift/checkpoints?wait=true", new { name = "after-drift", mode = "live" });
        Assert.Equal(HttpStatusCode.Created, save.StatusCode);
        var id = (await save.JsonAsync()).GetProperty("id").GetString();
        var manifest = (await (await c.GetAsync($"/api/v1/checkpoints/{id}")).JsonAsync()).GetProperty("manifest");
        var layers = manifest.GetProperty("disks")[0].GetProperty("layers").EnumerateArray().Select(l => l.GetProperty("file").GetString()!).ToList();
        Assert.EndsWith("disk0-behind.qcow2", layers[^1]);

        await app.SendSerialAsync("drift", "diskw LATER 7; sync");
        await c.WaitForSerialAsync("drift", "DISKW OK 7", select: s => s[(s.LastIndexOf("diskw LATER", StringComparison.Ordinal) + 1)..]);
        var offset = (await c.SerialLogAsync("drift")).Length;
        var r = await c.PostAsync($"/api/v1/checkpoints/{id}/restore?force=true&wait=true", null);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        await app.SendSerialAsync("drift", "sync; echo 3 > /proc/sys/vm/drop_caches; diskr 7");
        var d7 = await c.WaitForSerialAsync("drift", @"DISK 7 ([^\r\n]*)", select: s => s[Math.Min(offset, s.Length)..]);
        Assert.StartsWith("AFTER", d7.Groups[1].Value.Trim());
    }

}
