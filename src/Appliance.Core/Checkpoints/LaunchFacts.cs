using System.Globalization;
using System.Text.RegularExpressions;
using Appliance.Core.Emulation;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// The facts of one emulator launch that a restore must reproduce, taken from the argument list itself
/// (not from the VM definition, which may have been edited while the VM ran).
/// </summary>
public sealed record LaunchFacts(EmulatorFacts Emulator, MachineFacts Machine, IReadOnlyList<DeviceInfo> Devices, IReadOnlyList<string> LaunchArgs)
{
    public static LaunchFacts From(string emulatorName, string emulatorVersion, string accelerator, string cpuModel,
        IReadOnlyList<DeviceInfo> devices, IReadOnlyList<string> argv, string dataDir, string runDir, Guid vmId)
    {
        var args = LaunchArgNormalizer.Normalize(argv, dataDir, runDir, vmId);
        string Opt(string name) { var i = args.IndexOf(name); return i >= 0 && i + 1 < args.Count ? args[i + 1] : ""; }
        static int Int(string s) => int.TryParse(s.Split(',')[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : 0;
        var machine = new MachineFacts { Type = Opt("-machine"), CpuModel = cpuModel, Vcpus = Int(Opt("-smp")), MemoryMiB = Int(Opt("-m")) };
        return new LaunchFacts(new EmulatorFacts { Name = emulatorName, Version = emulatorVersion, Accelerator = accelerator }, machine, devices, args);
    }
}

public static partial class LaunchArgNormalizer
{
    /// <summary>
    /// Replaces what legitimately differs between two launches of the same machine (the runtime folder,
    /// the data folder, disk layer files, the VM's UUID, <c>-incoming</c>) with placeholders, so that
    /// what remains must match exactly.
    /// </summary>
    public static List<string> Normalize(IReadOnlyList<string> argv, string dataDir, string runDir, Guid vmId)
    {
        var result = new List<string>();
        var data = dataDir.TrimEnd('/');
        var run = runDir.TrimEnd('/');
        for (var i = 0; i < argv.Count; i++)
        {
            var a = argv[i];
            if (i == 0) { result.Add("<emulator>"); continue; }
            if (a == "-incoming" && i + 1 < argv.Count) { i++; continue; }
            var drive = DriveId().Match(a);
            if (drive.Success) a = FileValue().Replace(a, m => $"{m.Groups[1].Value}file=<disk:{drive.Groups[1].Value}>");
            a = a.Replace(run, "<run>", StringComparison.Ordinal).Replace(data, "<data>", StringComparison.Ordinal)
                .Replace(vmId.ToString(), "<vm-uuid>", StringComparison.Ordinal);
            result.Add(a);
        }
        return result;
    }

    [GeneratedRegex(@"(?:^|,)id=drive-([A-Za-z0-9_.-]+)(?:,|$)")]
    private static partial Regex DriveId();

    // QEMU escapes a literal comma in an option value by doubling it.
    [GeneratedRegex(@"(^|,)file=((?:[^,]|,,)*)")]
    private static partial Regex FileValue();
}
