using Appliance.Core.Emulation;
using Appliance.Core.Vms;

namespace Appliance.Core.Supervision;

public sealed record RuntimeRecord
{
    public Guid VmId { get; init; }
    public int Pid { get; init; }
    public long PidStartTicks { get; init; }
    public string RunDir { get; init; } = "";
    public string Accelerator { get; init; } = "";
    public string CpuModel { get; init; } = "";
    public string EmulatorVersion { get; init; } = "";
    public DateTimeOffset StartedAt { get; init; }
    public IReadOnlyList<DeviceInfo> Devices { get; init; } = [];
    public IReadOnlyList<string> Argv { get; init; } = [];
}

public sealed record DiskLayer
{
    public Guid Id { get; init; }
    public Guid VmId { get; init; }
    public string DiskName { get; init; } = "";
    /// <summary>Relative to the data directory.</summary>
    public string File { get; init; } = "";
    public string Format { get; init; } = "qcow2";
    public long VirtualSize { get; init; }
    public Guid? ParentId { get; init; }
    public Guid? BaseImageId { get; init; }
    public bool IsActive { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
}

public sealed record ImageRecord
{
    public Guid Id { get; init; }
    public string Name { get; init; } = "";
    public string Kind { get; init; } = "";
    public long SizeBytes { get; init; }
    public string Sha256 { get; init; } = "";
    public DateTimeOffset CreatedAt { get; init; }
}

/// <summary>The persistence the supervisor needs; implemented over SQLite in Appliance.Data.</summary>
public interface IVmStore
{
    Task<IReadOnlyList<Vm>> AllAsync(CancellationToken ct = default);
    Task<Vm?> FindAsync(string idOrName, CancellationToken ct = default);
    Task<Vm> InsertAsync(VmSpec spec, CancellationToken ct = default);
    Task<Vm?> UpdateSpecAsync(Guid id, VmSpec spec, long expectedVersion, CancellationToken ct = default);
    Task<bool> DeleteAsync(Guid id, long? expectedVersion, CancellationToken ct = default);
    Task SetStateAsync(Guid id, VmState state, int? exitCode, string? error, CancellationToken ct = default);
    Task<(int? ExitCode, string? Error)> GetLastExitAsync(Guid id, CancellationToken ct = default);
    Task<RuntimeRecord?> GetRuntimeAsync(Guid id, CancellationToken ct = default);
    Task SaveRuntimeAsync(RuntimeRecord r, CancellationToken ct = default);
    Task ClearRuntimeAsync(Guid id, CancellationToken ct = default);
}

public interface IStorageStore
{
    Task<IReadOnlyList<DiskLayer>> LayersAsync(Guid vmId, CancellationToken ct = default);
    Task AddLayerAsync(DiskLayer layer, CancellationToken ct = default);
    /// <summary>Marks <paramref name="newTop"/> active and its parent inactive, in one transaction.</summary>
    Task PushLayerAsync(DiskLayer newTop, CancellationToken ct = default);
    Task DeleteLayerAsync(Guid id, CancellationToken ct = default);
    Task<ImageRecord?> FindImageAsync(string name, CancellationToken ct = default);
    Task<IReadOnlyList<ImageRecord>> ImagesAsync(CancellationToken ct = default);
    Task AddImageAsync(ImageRecord image, CancellationToken ct = default);
    Task DeleteImageAsync(Guid id, CancellationToken ct = default);
}
