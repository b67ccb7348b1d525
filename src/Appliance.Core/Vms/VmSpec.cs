using System.Text.Json.Serialization;

namespace Appliance.Core.Vms;

/// <summary>What a client may set on a VM. Unknown JSON members are rejected.</summary>
public sealed record VmSpec
{
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    public int Vcpus { get; init; } = 1;
    public int MemoryMiB { get; init; } = 512;
    public string Machine { get; init; } = "q35";
    public string Firmware { get; init; } = "bios";
    /// <summary>QEMU CPU model; <c>default</c> means <c>host</c> under KVM and <c>qemu64</c> under TCG.</summary>
    public string CpuModel { get; init; } = "default";
    public List<string> BootOrder { get; init; } = ["disk", "cdrom", "network"];
    public List<DiskSpec> Disks { get; init; } = [];
    /// <summary>Name of an ISO in the image library, attached as a CD-ROM.</summary>
    public string? Cdrom { get; init; }
    public KernelBootSpec? KernelBoot { get; init; }
    public List<NicSpec> Nics { get; init; } = [];
    public DisplaySpec Display { get; init; } = new();
    public bool SerialConsole { get; init; } = true;
    public List<string> Tags { get; init; } = [];
    /// <summary><c>never</c> or <c>on-crash</c>.</summary>
    public string RestartPolicy { get; init; } = "never";
}

public sealed record DiskSpec
{
    public string Name { get; init; } = "disk0";
    public long SizeMiB { get; init; } = 1024;
    public string Format { get; init; } = "qcow2";
    public string Bus { get; init; } = "virtio";
    /// <summary>Optional qcow2 image in the library that the new disk is based on (copy-on-write).</summary>
    public string? SourceImage { get; init; }
}

public sealed record KernelBootSpec
{
    /// <summary>Image-library name of the kernel.</summary>
    public string Kernel { get; init; } = "";
    public string? Initrd { get; init; }
    public string? Cmdline { get; init; }
}

public sealed record NicSpec
{
    public string Model { get; init; } = "virtio";
    public string? Mac { get; init; }
    public List<PortForward> PortForwards { get; init; } = [];
}

public sealed record PortForward
{
    public string Protocol { get; init; } = "tcp";
    public string HostAddress { get; init; } = "127.0.0.1";
    public int HostPort { get; init; }
    public int GuestPort { get; init; }
}

public sealed record DisplaySpec
{
    public string Type { get; init; } = "std";
    public int Width { get; init; } = 1024;
    public int Height { get; init; } = 768;
}

/// <summary>The body of <c>POST /api/v1/vms</c>: a spec, optionally seeded from a template.</summary>
public sealed record VmCreateRequest
{
    public string Name { get; init; } = "";
    /// <summary>Optional template (<c>demo</c>) whose settings fill the fields not given.</summary>
    public string? Template { get; init; }
    public string? Description { get; init; }
    public int? Vcpus { get; init; }
    public int? MemoryMiB { get; init; }
    public string? Machine { get; init; }
    public string? Firmware { get; init; }
    public string? CpuModel { get; init; }
    public List<string>? BootOrder { get; init; }
    public List<DiskSpec>? Disks { get; init; }
    public string? Cdrom { get; init; }
    public KernelBootSpec? KernelBoot { get; init; }
    public List<NicSpec>? Nics { get; init; }
    public DisplaySpec? Display { get; init; }
    public bool? SerialConsole { get; init; }
    public List<string>? Tags { get; init; }
    public string? RestartPolicy { get; init; }
}

/// <summary>A stored VM: its spec plus identity, bookkeeping and the last known runtime state.</summary>
public sealed record Vm
{
    public Guid Id { get; init; }
    public required VmSpec Spec { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }
    /// <summary>Row version; the ETag is derived from it and it grows on every write.</summary>
    public long Version { get; init; }
    public VmState State { get; init; } = VmState.Stopped;
}

[JsonConverter(typeof(JsonStringEnumConverter<VmState>))]
public enum VmState
{
    [JsonStringEnumMemberName("stopped")] Stopped,
    [JsonStringEnumMemberName("starting")] Starting,
    [JsonStringEnumMemberName("running")] Running,
    [JsonStringEnumMemberName("paused")] Paused,
    [JsonStringEnumMemberName("stopping")] Stopping,
    [JsonStringEnumMemberName("saving")] Saving,
    [JsonStringEnumMemberName("restoring")] Restoring,
    [JsonStringEnumMemberName("crashed")] Crashed,
}

public static class VmStateNames
{
    public static string ToWire(this VmState s) => s.ToString().ToLowerInvariant();

    public static bool TryParse(string? s, out VmState state) =>
        Enum.TryParse(s, ignoreCase: true, out state) && s!.All(char.IsLetter);

    public static readonly string[] All = Enum.GetValues<VmState>().Select(ToWire).ToArray();
}
