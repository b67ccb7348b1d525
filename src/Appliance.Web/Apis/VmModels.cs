using Appliance.Core.Vms;

namespace Appliance.Web.Apis;

/// <summary>A VM as the API shows it: its spec plus identity, state and bookkeeping.</summary>
public sealed record VmResource
{
    public Guid Id { get; init; }
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    public VmState State { get; init; }
    public int Vcpus { get; init; }
    public int MemoryMiB { get; init; }
    public string Machine { get; init; } = "";
    public string Firmware { get; init; } = "";
    public string CpuModel { get; init; } = "";
    public List<string> BootOrder { get; init; } = [];
    public List<DiskSpec> Disks { get; init; } = [];
    public string? Cdrom { get; init; }
    public KernelBootSpec? KernelBoot { get; init; }
    public List<NicSpec> Nics { get; init; } = [];
    public DisplaySpec Display { get; init; } = new();
    public bool SerialConsole { get; init; }
    public List<string> Tags { get; init; } = [];
    public string RestartPolicy { get; init; } = "";
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }
    public long Version { get; init; }
    public VmRuntimeInfo? Runtime { get; init; }

    public static VmResource From(Vm vm, VmRuntimeInfo? runtime = null) => new()
    {
        Id = vm.Id,
        Name = vm.Spec.Name,
        Description = vm.Spec.Description,
        State = runtime?.State ?? vm.State,
        Vcpus = vm.Spec.Vcpus,
        MemoryMiB = vm.Spec.MemoryMiB,
        Machine = vm.Spec.Machine,
        Firmware = vm.Spec.Firmware,
        CpuModel = vm.Spec.CpuModel,
        BootOrder = vm.Spec.BootOrder,
        Disks = vm.Spec.Disks,
        Cdrom = vm.Spec.Cdrom,
        KernelBoot = vm.Spec.KernelBoot,
        Nics = vm.Spec.Nics,
        Display = vm.Spec.Display,
        SerialConsole = vm.Spec.SerialConsole,
        Tags = vm.Spec.Tags,
        RestartPolicy = vm.Spec.RestartPolicy,
        CreatedAt = vm.CreatedAt,
        UpdatedAt = vm.UpdatedAt,
        Version = vm.Version,
        Runtime = runtime,
    };
}

/// <summary>What the supervisor knows about a VM's emulator process right now.</summary>
public sealed record VmRuntimeInfo
{
    public VmState State { get; init; }
    public int? Pid { get; init; }
    public string? Accelerator { get; init; }
    public DateTimeOffset? StartedAt { get; init; }
    public int? ExitCode { get; init; }
    public string? LastError { get; init; }
    public long StateVersion { get; init; }
}

public sealed record Page<T>(IReadOnlyList<T> Items, int Total, int Offset, int Limit);
