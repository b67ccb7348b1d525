using Appliance.Core.Emulation;

namespace Appliance.Core.Checkpoints;

/// <summary>One way in which what a checkpoint was saved from differs from what a restore would start.</summary>
public sealed record Difference(string Field, string? Saved, string? Current);

/// <summary>
/// Compares a manifest with the launch a restore would make and returns every difference, not just the
/// first: QEMU itself refuses some (memory, machine type, a missing device) but silently accepts others
/// (an extra disk, another CPU model, a missing kernel), so the appliance compares everything it launches.
/// </summary>
public static class CompatibilityChecker
{
    public static IReadOnlyList<Difference> Compare(CheckpointManifest saved, LaunchFacts current)
    {
        var d = new List<Difference>();
        void Check(string field, string? a, string? b) { if (!string.Equals(a, b, StringComparison.Ordinal)) d.Add(new Difference(field, a, b)); }

        Check("emulator.name", saved.Emulator.Name, current.Emulator.Name);
        Check("emulator.version", saved.Emulator.Version, current.Emulator.Version);
        Check("emulator.accelerator", saved.Emulator.Accelerator, current.Emulator.Accelerator);
        Check("machine.type", saved.Machine.Type, current.Machine.Type);
        Check("machine.cpuModel", saved.Machine.CpuModel, current.Machine.CpuModel);
        Check("machine.vcpus", saved.Machine.Vcpus.ToString(System.Globalization.CultureInfo.InvariantCulture), current.Machine.Vcpus.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Check("machine.memoryMiB", saved.Machine.MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture), current.Machine.MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture));

        var now = current.Devices.ToDictionary(x => x.Id);
        foreach (var s in saved.Devices)
        {
            if (!now.TryGetValue(s.Id, out var c)) { d.Add(new Difference($"devices.{s.Id}", Describe(s), null)); continue; }
            if (s != c) d.Add(new Difference($"devices.{s.Id}", Describe(s), Describe(c)));
        }
        foreach (var c in current.Devices.Where(c => saved.Devices.All(s => s.Id != c.Id)))
            d.Add(new Difference($"devices.{c.Id}", null, Describe(c)));

        var missing = Multiset(saved.LaunchArgs, current.LaunchArgs);
        var extra = Multiset(current.LaunchArgs, saved.LaunchArgs);
        if (missing.Count > 0 || extra.Count > 0 || (missing.Count == 0 && !saved.LaunchArgs.SequenceEqual(current.LaunchArgs)))
            d.Add(new Difference("launchArgs",
                missing.Count > 0 ? string.Join(' ', missing) : string.Join(' ', saved.LaunchArgs),
                extra.Count > 0 ? string.Join(' ', extra) : string.Join(' ', current.LaunchArgs)));

        var disks = saved.Disks.Select(x => x.Disk).ToHashSet();
        var devicesWithDrives = current.Devices.Where(x => x.Backend?.StartsWith("drive-", StringComparison.Ordinal) == true && x.Id != "cdrom0").Select(x => x.Id).ToHashSet();
        foreach (var disk in disks.Except(devicesWithDrives)) d.Add(new Difference($"disks.{disk}", "saved", null));
        foreach (var disk in devicesWithDrives.Except(disks)) d.Add(new Difference($"disks.{disk}", null, "present"));
        return d;
    }

    private static string Describe(DeviceInfo x) =>
        $"{x.Driver} bus={x.Bus}" + (x.Slot is null ? "" : $" slot={x.Slot}") + (x.Backend is null ? "" : $" backend={x.Backend}");

    /// <summary>Items of <paramref name="a"/> not matched one-for-one in <paramref name="b"/>.</summary>
    private static List<string> Multiset(IReadOnlyList<string> a, IReadOnlyList<string> b)
    {
        var left = b.GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count());
        var result = new List<string>();
        foreach (var x in a)
        {
            if (left.TryGetValue(x, out var n) && n > 0) left[x] = n - 1;
            else result.Add(x);
        }
        return result;
    }
}
