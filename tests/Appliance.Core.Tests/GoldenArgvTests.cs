using System.Text.Json;
using Appliance.Core.Emulation;
using Appliance.Core.Vms;

namespace Appliance.Core.Tests;

/// <summary>
/// From VM definition to QEMU argv, one case per feature (Proxmox's cfg2cmd suite is the model).
/// Each Golden/NAME.json holds the inputs; Golden/NAME.argv the expected arguments, one per line.
/// Set UPDATE_GOLDEN=1 to rewrite the .argv files after an intended change, then review the diff.
/// </summary>
public sealed class GoldenArgvTests
{
    private sealed record Case
    {
        public VmSpec Spec { get; init; } = new();
        public string Accelerator { get; init; } = "tcg";
        public bool Incoming { get; init; }
        public bool Sandbox { get; init; } = true;
        public string? RunAsUser { get; init; }
        public string? Cdrom { get; init; }
        public string? Firmware { get; init; }
    }

    private static readonly string Dir = Path.Combine(AppContext.BaseDirectory, "Golden");
    private static readonly Guid VmId = Guid.Parse("0f8e4c2a-1b3d-4e5f-8a9b-0c1d2e3f4a5b");

    public static TheoryData<string> Cases() => new(Directory.GetFiles(Dir, "*.json").Select(Path.GetFileNameWithoutExtension).Order()!);

    [Theory]
    [MemberData(nameof(Cases))]
    public void Build_Case_MatchesGoldenArgv(string name)
    {
        var c = JsonSerializer.Deserialize<Case>(File.ReadAllText(Path.Combine(Dir, name + ".json")), ApplianceJson.Strict)!;
        var ctx = new LaunchContext
        {
            VmId = VmId, Spec = c.Spec, Accelerator = c.Accelerator, Paths = new RuntimePaths("/data/run/0f8e4c2a"),
            SerialLogPath = "/data/logs/vm-serial.log",
            DiskFiles = c.Spec.Disks.ToDictionary(d => d.Name, d => $"/data/disks/0f8e4c2a/{d.Name}-00000001.qcow2"),
            KernelPath = c.Spec.KernelBoot is null ? null : $"/data/images/{c.Spec.KernelBoot.Kernel}",
            InitrdPath = c.Spec.KernelBoot?.Initrd is null ? null : $"/data/images/{c.Spec.KernelBoot.Initrd}",
            CdromPath = c.Cdrom, FirmwarePath = c.Firmware, Incoming = c.Incoming, Sandbox = c.Sandbox, RunAsUser = c.RunAsUser,
        };
        var actual = string.Join('\n', QemuCommandLine.Build("/usr/bin/qemu-system-x86_64", ctx).Argv) + "\n";
        var goldenPath = Path.Combine(Dir, name + ".argv");
        if (Environment.GetEnvironmentVariable("UPDATE_GOLDEN") == "1")
        {
            var source = Path.Combine(FindSourceDir(), name + ".argv");
            File.WriteAllText(source, actual);
            return;
        }
        Assert.True(File.Exists(goldenPath), $"Missing golden file {name}.argv; run with UPDATE_GOLDEN=1 and review it.");
        Assert.Equal(File.ReadAllText(goldenPath), actual);
    }

    [Fact]
    public void Build_AnyCase_NeverUsesAShellOrWebsocketListener()
    {
        foreach (var name in Directory.GetFiles(Dir, "*.json").Select(Path.GetFileNameWithoutExtension))
        {
            var argv = File.ReadAllLines(Path.Combine(Dir, name + ".argv"));
            Assert.DoesNotContain(argv, a => a.Contains("exec:", StringComparison.Ordinal) || a.Contains("websocket", StringComparison.Ordinal));
            Assert.DoesNotContain(argv, a => a is "/bin/sh" or "sh" or "-c");
            Assert.Contains("-nodefaults", argv);
        }
    }

    private static string FindSourceDir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var p = Path.Combine(d.FullName, "tests", "Appliance.Core.Tests", "Golden");
            if (Directory.Exists(p)) return p;
        }
        throw new DirectoryNotFoundException("Golden source folder");
    }
}
