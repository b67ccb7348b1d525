using Appliance.Core.Vms;

namespace Appliance.Core.Emulation;

public enum EmulatorCapability { Start, Shutdown, Poweroff, Pause, Resume, Reset, Screendump, Checkpoint, Restore }

/// <summary>A device as placed on the emulated machine: its id, model, bus and slot. Checkpoints record the full list.</summary>
public sealed record DeviceInfo(string Id, string Driver, string Bus, string? Slot, string? Backend = null);

/// <summary>Where a VM's runtime files live while it runs. Unix socket paths must stay within 107 bytes.</summary>
public sealed record RuntimePaths(string RunDir)
{
    /// <summary>
    /// <c>&lt;data&gt;/run/&lt;8 hex&gt;</c> when short enough for unix socket paths (107 bytes), else a short base under /tmp
    /// named after a hash of the data directory, so two appliances never share it.
    /// </summary>
    public static RuntimePaths For(string dataDir, Guid vmId) => new(Path.Combine(RootFor(dataDir), vmId.ToString("N")[..8]));

    /// <summary>The folder that holds every VM's runtime folder (and the stream keeper's): names in it are 8 characters.</summary>
    public static string RootFor(string dataDir)
    {
        var preferred = Path.Combine(dataDir, "run");
        if (System.Text.Encoding.UTF8.GetByteCount(Path.Combine(preferred, "01234567", "serial.sock")) <= 100) return preferred;
        var hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(dataDir)))[..8];
        return Path.Combine("/tmp", $"appliance-{hash}");
    }

    public string QmpSocket => Path.Combine(RunDir, "qmp.sock");
    public string VncSocket => Path.Combine(RunDir, "vnc.sock");
    public string SerialSocket => Path.Combine(RunDir, "serial.sock");
    public string PidFile => Path.Combine(RunDir, "qemu.pid");
    public string MigrationSocket => Path.Combine(RunDir, "mig.sock");
}

/// <summary>Everything needed to turn a VM definition into an emulator command line.</summary>
public sealed record LaunchContext
{
    public required Guid VmId { get; init; }
    public required VmSpec Spec { get; init; }
    public required string Accelerator { get; init; }
    public required RuntimePaths Paths { get; init; }
    public required string SerialLogPath { get; init; }
    /// <summary>Active disk layer file per disk name.</summary>
    public IReadOnlyDictionary<string, string> DiskFiles { get; init; } = new Dictionary<string, string>();
    public string? KernelPath { get; init; }
    public string? InitrdPath { get; init; }
    public string? CdromPath { get; init; }
    public string? FirmwarePath { get; init; }
    /// <summary>Start paused, waiting for a migration stream (restore).</summary>
    public bool Incoming { get; init; }
    public bool Sandbox { get; init; } = true;
    public string? RunAsUser { get; init; }
}

public sealed record LaunchPlan(IReadOnlyList<string> Argv, IReadOnlyList<DeviceInfo> Devices, string CpuModel);

/// <summary>
/// One table of operations per emulator, as libvirt does it: the supervisor asks for a capability
/// before using it and answers "unsupported" (501) when a driver lacks it.
/// </summary>
public interface IEmulatorDriver
{
    string Name { get; }
    IReadOnlySet<EmulatorCapability> Capabilities { get; }
    LaunchPlan BuildLaunch(LaunchContext ctx);
    /// <summary>The emulator's exact version, for checkpoint manifests and compatibility checks.</summary>
    Task<string> GetVersionAsync(CancellationToken ct = default);
}
