using System.Text.RegularExpressions;
using Appliance.Core.Host;
using Appliance.Core.Storage;

namespace Appliance.Core.Vms;

public static partial class VmValidator
{
    [GeneratedRegex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    private static partial Regex NameRegex();

    [GeneratedRegex("^[a-z0-9][a-z0-9_.-]{0,31}$")]
    private static partial Regex TagRegex();

    [GeneratedRegex("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")]
    private static partial Regex MacRegex();

    public const string NameRule = "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";

    public static readonly string[] Machines = ["q35", "pc"];
    public static readonly string[] Buses = ["virtio", "sata"];
    public static readonly string[] NicModels = ["virtio", "e1000"];
    public static readonly string[] DisplayTypes = ["std", "virtio"];
    public static readonly string[] BootDevices = ["disk", "cdrom", "network"];
    public static readonly string[] RestartPolicies = ["never", "on-crash"];
    public static readonly string[] CpuModels = ["default", "host", "max", "qemu64", "kvm64", "Skylake-Client", "EPYC"];

    public static bool IsValidName(string? name) => name is not null && NameRegex().IsMatch(name);

    /// <summary>Every problem with <paramref name="spec"/>, keyed by JSON path (camelCase).</summary>
    public static Dictionary<string, string[]> Validate(VmSpec spec, IHostInfo host)
    {
        var errors = new Dictionary<string, List<string>>();
        void Add(string field, string message)
        {
            if (!errors.TryGetValue(field, out var list)) errors[field] = list = [];
            list.Add(message);
        }

        if (!IsValidName(spec.Name)) Add("name", $"'{spec.Name}' is not a valid name: use {NameRule}.");
        if (spec.Description is { Length: > 1024 }) Add("description", "At most 1024 characters.");
        if (spec.Vcpus < 1 || spec.Vcpus > host.LogicalCores)
            Add("vcpus", $"{spec.Vcpus} is out of range: accepted 1..{host.LogicalCores} (the host's logical cores).");
        if (spec.MemoryMiB < 64 || spec.MemoryMiB > host.TotalMemoryMiB)
            Add("memoryMiB", $"{spec.MemoryMiB} is out of range: accepted 64..{host.TotalMemoryMiB} (the host's memory in MiB).");
        if (!Machines.Contains(spec.Machine)) Add("machine", $"'{spec.Machine}' is not accepted: one of {string.Join(", ", Machines)}.");
        if (spec.Firmware == "uefi")
        {
            if (!host.OvmfAvailable) Add("firmware", "'uefi' needs OVMF, which is not installed on this host (Debian package 'ovmf'); accepted: bios.");
        }
        else if (spec.Firmware != "bios") Add("firmware", $"'{spec.Firmware}' is not accepted: one of bios, uefi.");
        if (!CpuModels.Contains(spec.CpuModel)) Add("cpuModel", $"'{spec.CpuModel}' is not accepted: one of {string.Join(", ", CpuModels)}.");
        if (spec.BootOrder.Count == 0 || spec.BootOrder.Any(b => !BootDevices.Contains(b)) || spec.BootOrder.Distinct().Count() != spec.BootOrder.Count)
            Add("bootOrder", $"Give each of {string.Join(", ", BootDevices)} at most once, at least one.");
        if (!RestartPolicies.Contains(spec.RestartPolicy)) Add("restartPolicy", $"'{spec.RestartPolicy}' is not accepted: one of {string.Join(", ", RestartPolicies)}.");

        if (spec.Disks.Count > 8) Add("disks", "At most 8 disks.");
        var diskNames = new HashSet<string>();
        for (var i = 0; i < spec.Disks.Count; i++)
        {
            var d = spec.Disks[i];
            var p = $"disks[{i}]";
            if (!IsValidName(d.Name)) Add($"{p}.name", $"'{d.Name}' is not valid: use {NameRule}.");
            else if (!diskNames.Add(d.Name)) Add($"{p}.name", $"'{d.Name}' is used by another disk of this VM.");
            if (d.SizeMiB < 1 || d.SizeMiB > 64L * 1024 * 1024) Add($"{p}.sizeMiB", $"{d.SizeMiB} is out of range: accepted 1..67108864.");
            if (d.Format != "qcow2") Add($"{p}.format", $"'{d.Format}' is not accepted: qcow2.");
            if (!Buses.Contains(d.Bus)) Add($"{p}.bus", $"'{d.Bus}' is not accepted: one of {string.Join(", ", Buses)}.");
            if (d.SourceImage is not null && !SafePath.IsValidFileName(d.SourceImage)) Add($"{p}.sourceImage", $"Not an image name: use {SafePath.FileNameRule}.");
        }
        if (spec.Cdrom is not null && !SafePath.IsValidFileName(spec.Cdrom)) Add("cdrom", $"Not an image name: use {SafePath.FileNameRule}.");
        if (spec.KernelBoot is { } k)
        {
            if (!SafePath.IsValidFileName(k.Kernel)) Add("kernelBoot.kernel", $"Not an image name: use {SafePath.FileNameRule}.");
            if (k.Initrd is not null && !SafePath.IsValidFileName(k.Initrd)) Add("kernelBoot.initrd", $"Not an image name: use {SafePath.FileNameRule}.");
            if (k.Cmdline is { Length: > 2048 } || (k.Cmdline?.Any(char.IsControl) ?? false)) Add("kernelBoot.cmdline", "At most 2048 printable characters.");
        }
        if (spec.Nics.Count > 8) Add("nics", "At most 8 NICs.");
        var hostPorts = new HashSet<(string, int)>();
        for (var i = 0; i < spec.Nics.Count; i++)
        {
            var n = spec.Nics[i];
            var p = $"nics[{i}]";
            if (!NicModels.Contains(n.Model)) Add($"{p}.model", $"'{n.Model}' is not accepted: one of {string.Join(", ", NicModels)}.");
            if (n.Mac is not null && !MacRegex().IsMatch(n.Mac)) Add($"{p}.mac", "Use six lowercase hex pairs separated by ':'.");
            for (var j = 0; j < n.PortForwards.Count; j++)
            {
                var f = n.PortForwards[j];
                var q = $"{p}.portForwards[{j}]";
                if (f.Protocol is not ("tcp" or "udp")) Add($"{q}.protocol", "One of tcp, udp.");
                if (!System.Net.IPAddress.TryParse(f.HostAddress, out _)) Add($"{q}.hostAddress", "An IP address, such as 127.0.0.1.");
                if (f.HostPort is < 1 or > 65535) Add($"{q}.hostPort", $"{f.HostPort} is out of range: accepted 1..65535.");
                else if (!hostPorts.Add((f.Protocol, f.HostPort))) Add($"{q}.hostPort", "Forwarded twice.");
                if (f.GuestPort is < 1 or > 65535) Add($"{q}.guestPort", $"{f.GuestPort} is out of range: accepted 1..65535.");
            }
        }
        if (!DisplayTypes.Contains(spec.Display.Type)) Add("display.type", $"'{spec.Display.Type}' is not accepted: one of {string.Join(", ", DisplayTypes)}.");
        if (spec.Display.Width is < 640 or > 3840) Add("display.width", $"{spec.Display.Width} is out of range: accepted 640..3840.");
        if (spec.Display.Height is < 400 or > 2160) Add("display.height", $"{spec.Display.Height} is out of range: accepted 400..2160.");
        if (spec.Tags.Count > 32) Add("tags", "At most 32 tags.");
        foreach (var t in spec.Tags)
            if (!TagRegex().IsMatch(t)) Add("tags", $"'{t}' is not a valid tag: 1-32 lowercase letters, digits, '.', '_' or '-'.");

        return errors.ToDictionary(e => e.Key, e => e.Value.ToArray());
    }
}
