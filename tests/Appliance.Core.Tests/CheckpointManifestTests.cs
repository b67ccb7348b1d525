using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using Appliance.Core.Checkpoints;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;

namespace Appliance.Core.Tests;

public sealed class CheckpointManifestTests
{
    private static readonly Guid Vm = Guid.Parse("11111111-2222-3333-4444-555555555555");

    private static LaunchFacts Facts(int memory = 256, string cpu = "qemu64", string version = "7.2.22", params DeviceInfo[] extra)
    {
        var devices = new List<DeviceInfo> { new("video0", "VGA", "pcie.0", "0x2"), new("disk0", "virtio-blk-pci", "pcie.0", "0x4", "drive-disk0") };
        devices.AddRange(extra);
        var argv = new List<string>
        {
            "/usr/bin/qemu-system-x86_64", "-uuid", Vm.ToString(), "-machine", "q35", "-cpu", cpu, "-m", memory.ToString(), "-smp", "1",
            "-pidfile", "/data/run/11111111/qemu.pid",
            "-drive", "if=none,id=drive-disk0,file=/data/disks/11111111/disk0-aaaa.qcow2,format=qcow2",
            "-kernel", "/data/images/demo-vmlinuz",
        };
        foreach (var d in extra) argv.AddRange(["-device", $"{d.Driver},id={d.Id}"]);
        return LaunchFacts.From("qemu", version, "tcg", cpu, devices, argv, "/data", "/data/run/11111111", Vm);
    }

    private static CheckpointManifest Saved(LaunchFacts f) => new()
    {
        Emulator = f.Emulator, Machine = f.Machine, Devices = f.Devices.ToList(), LaunchArgs = f.LaunchArgs.ToList(),
        Disks = [new DiskChain { Disk = "disk0" }],
    };

    [Fact]
    public void Normalize_RunSpecificPaths_ReplacedByPlaceholders()
    {
        var f = Facts();
        Assert.Contains("if=none,id=drive-disk0,file=<disk:disk0>,format=qcow2", f.LaunchArgs);
        Assert.Contains("<run>/qemu.pid", f.LaunchArgs);
        Assert.Contains("<vm-uuid>", f.LaunchArgs);
        Assert.Contains("<data>/images/demo-vmlinuz", f.LaunchArgs);
        Assert.Equal(256, f.Machine.MemoryMiB);
    }

    [Fact]
    public void Compare_SameLaunchWithOtherDiskFiles_NoDifference()
    {
        var saved = Saved(Facts());
        var now = Facts() with { LaunchArgs = Facts().LaunchArgs.Select(a => a.Replace("aaaa", "bbbb", StringComparison.Ordinal)).ToList() };
        Assert.Empty(CompatibilityChecker.Compare(saved, now));
    }

    [Fact]
    public void Compare_MemoryCpuVersionAndExtraDisk_EveryDifferenceListed()
    {
        var saved = Saved(Facts());
        var now = Facts(memory: 512, cpu: "max", version: "8.0.0", extra: new DeviceInfo("disk1", "virtio-blk-pci", "pcie.0", "0x5", "drive-disk1"));
        var fields = CompatibilityChecker.Compare(saved, now).Select(d => d.Field).ToList();
        Assert.Equal(["emulator.version", "machine.cpuModel", "machine.memoryMiB", "devices.disk1", "launchArgs", "disks.disk1"], fields);
    }

    [Fact]
    public void Compare_MissingKernel_ReportedAsLaunchArgs()
    {
        var saved = Saved(Facts());
        var now = Facts() with { LaunchArgs = Facts().LaunchArgs.Where(a => !a.Contains("vmlinuz") && a != "-kernel").ToList() };
        var d = Assert.Single(CompatibilityChecker.Compare(saved, now));
        Assert.Equal("launchArgs", d.Field);
        Assert.Contains("-kernel", d.Saved);
    }

    [Fact]
    public void Parse_NewerFormatVersion_RefusedByName()
    {
        var e = Assert.Throws<ManifestException>(() => ManifestJson.Parse("""{"formatVersion": 99}"""u8));
        Assert.Contains("99", e.Message);
        Assert.Throws<ManifestException>(() => ManifestJson.Parse("""{"name": "x"}"""u8));
    }

    [Fact]
    public void Serialize_ThenParse_RoundTrips()
    {
        var m = Saved(Facts()) with { Id = Guid.NewGuid(), Name = "n", State = new StateFile { Size = 3, Sha256 = "abc" } };
        var back = ManifestJson.Parse(Encoding.UTF8.GetBytes(ManifestJson.Serialize(m)));
        Assert.Equal(m.Id, back.Id);
        Assert.Equal(CheckpointManifest.CurrentFormatVersion, back.FormatVersion);
        Assert.Equal(m.LaunchArgs, back.LaunchArgs);
    }

    private static byte[] Archive(CheckpointManifest m, params (string Name, byte[] Data)[] entries)
    {
        using var ms = new MemoryStream();
        using (var tar = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (var (name, data) in entries.Prepend((CheckpointArchive.ManifestEntry, Encoding.UTF8.GetBytes(ManifestJson.Serialize(m)))))
                tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(data) });
        }
        return ms.ToArray();
    }

    private static CheckpointManifest WithState(byte[] state) =>
        new() { Name = "x", State = new StateFile { Size = state.Length, Sha256 = Convert.ToHexStringLower(SHA256.HashData(state)) } };

    [Fact]
    public async Task ReadArchive_Intact_StateWrittenAndVerified()
    {
        var state = RandomNumberGenerator.GetBytes(4096);
        var dir = Path.Combine(Path.GetTempPath(), "ckpt-ut-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var m = await CheckpointArchive.ReadAsync(new MemoryStream(Archive(WithState(state), ("state", state))), dir, CancellationToken.None);
            Assert.Equal("x", m.Name);
            Assert.Equal(state, await File.ReadAllBytesAsync(Path.Combine(dir, "state")));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("altered", "checkpoint-corrupt")]
    [InlineData("truncated", "checkpoint-corrupt")]
    [InlineData("manifest-not-first", "archive-invalid")]
    [InlineData("unknown-entry", "archive-invalid")]
    [InlineData("missing-state", "checkpoint-corrupt")]
    public async Task ReadArchive_Damaged_Refused422(string damage, string slug)
    {
        var state = RandomNumberGenerator.GetBytes(4096);
        var m = WithState(state);
        var bad = (byte[])state.Clone();
        bad[100] ^= 1;
        byte[] bytes = damage switch
        {
            "altered" => Archive(m, ("state", bad)),
            "truncated" => Archive(m, ("state", state[..2048])),
            "unknown-entry" => Archive(m, ("../../etc/passwd", state)),
            "missing-state" => Archive(m),
            _ => Archive(m, ("state", state)).AsSpan(0, 0).ToArray(),
        };
        if (damage == "manifest-not-first")
        {
            using var ms = new MemoryStream();
            using (var tar = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
                tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "state") { DataStream = new MemoryStream(state) });
            bytes = ms.ToArray();
        }
        var dir = Path.Combine(Path.GetTempPath(), "ckpt-ut-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var e = await Assert.ThrowsAsync<ApplianceError>(() => CheckpointArchive.ReadAsync(new MemoryStream(bytes), dir, CancellationToken.None));
            Assert.Equal(422, e.Status);
            Assert.Equal(slug, e.Slug);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}
