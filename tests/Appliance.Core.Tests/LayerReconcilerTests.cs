using System.Text.Json;
using Appliance.Core.Storage;
using Appliance.Core.Supervision;

namespace Appliance.Core.Tests;

public sealed class LayerReconcilerTests
{
    private const string Data = "/data";
    private static readonly Guid Vm = Guid.Parse("11111111-2222-3333-4444-555555555555");
    private static readonly DateTimeOffset Now = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private static readonly Guid Base = Guid.Parse("aaaaaaaa-0000-0000-0000-000000000001");
    private static readonly Guid Top = Guid.Parse("aaaaaaaa-0000-0000-0000-000000000002");

    private static readonly DiskLayer[] Recorded =
    [
        new() { Id = Base, VmId = Vm, DiskName = "disk0", File = "disks/11111111/disk0-base.qcow2", VirtualSize = 64 << 20 },
        new() { Id = Top, VmId = Vm, DiskName = "disk0", File = "disks/11111111/disk0-top.qcow2", VirtualSize = 64 << 20, ParentId = Base, IsActive = true },
    ];

    private static (List<DiskLayer>, List<string>) Plan(params string[] topFirst) =>
        LayerReconciler.Plan(Vm, Recorded, new Dictionary<string, IReadOnlyList<OpenImage>> { ["disk0"] = topFirst.Select(f => new OpenImage(f, "qcow2", 64 << 20)).ToList() },
            r => Path.GetFullPath(Path.Combine(Data, r)), a => Path.GetRelativePath(Data, a), Path.Combine(Data, "disks"), Now);

    [Fact]
    public void Plan_EmulatorOnRecordedTop_NothingToDo()
    {
        var (adopt, problems) = Plan("/data/disks/11111111/disk0-top.qcow2", "/data/disks/11111111/disk0-base.qcow2");
        Assert.Empty(adopt);
        Assert.Empty(problems);
    }

    [Fact]
    public void Plan_FreezeNotRecorded_NewTopRecordedOnRecordedActive()
    {
        var (adopt, problems) = Plan("/data/disks/11111111/disk0-new.qcow2", "/data/disks/11111111/disk0-top.qcow2", "/data/disks/11111111/disk0-base.qcow2");
        Assert.Empty(problems);
        var l = Assert.Single(adopt);
        Assert.Equal(("disk0", "disks/11111111/disk0-new.qcow2", Top, true, Vm, Now), (l.DiskName, l.File, l.ParentId!.Value, l.IsActive, l.VmId, l.CreatedAt));
    }

    [Fact]
    public void Plan_TwoUnrecordedLayers_ChainedBottomFirst()
    {
        var (adopt, _) = Plan("/data/disks/11111111/b.qcow2", "/data/disks/11111111/a.qcow2", "/data/disks/11111111/disk0-top.qcow2");
        Assert.Equal(["disks/11111111/a.qcow2", "disks/11111111/b.qcow2"], adopt.Select(l => l.File));
        Assert.Equal(Top, adopt[0].ParentId);
        Assert.Equal(adopt[0].Id, adopt[1].ParentId);
    }

    [Fact]
    public void Plan_UnrecordedImageOutsideDisksFolder_NotRecordedAndReported()
    {
        var (adopt, problems) = Plan("/tmp/evil.qcow2", "/data/disks/11111111/disk0-top.qcow2");
        Assert.Empty(adopt);
        Assert.Contains("outside the disks folder", Assert.Single(problems));
    }

    [Fact]
    public void Plan_NoRecordedImageInChain_Reported()
    {
        var (adopt, problems) = Plan("/data/disks/11111111/x.qcow2", "/data/disks/11111111/y.qcow2");
        Assert.Empty(adopt);
        Assert.Contains("none of the emulator's images", Assert.Single(problems));
    }

    [Fact]
    public void ParseQueryBlock_NestedBackingImages_TopFirstPerApplianceDrive()
    {
        var reply = JsonDocument.Parse("""
            [{"device":"drive-disk0","inserted":{"file":"/d/top.qcow2","image":{"filename":"/d/top.qcow2","format":"qcow2","virtual-size":67108864,
               "backing-image":{"filename":"/d/mid.qcow2","format":"qcow2","virtual-size":67108864,"backing-image":{"filename":"/d/base.raw","format":"raw","virtual-size":1024}}}}},
             {"device":"drive-cdrom0"},
             {"device":"floppy0","inserted":{"image":{"filename":"/d/f.img","format":"raw","virtual-size":1}}}]
            """).RootElement;
        var chains = LayerReconciler.ParseQueryBlock(reply);
        Assert.Equal(["disk0"], chains.Keys);
        Assert.Equal([new OpenImage("/d/top.qcow2", "qcow2", 67108864), new OpenImage("/d/mid.qcow2", "qcow2", 67108864), new OpenImage("/d/base.raw", "raw", 1024)], chains["disk0"]);
    }
}
