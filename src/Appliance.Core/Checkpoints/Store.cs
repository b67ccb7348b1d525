using Appliance.Core.Supervision;

namespace Appliance.Core.Checkpoints;

public static class CheckpointStatus
{
    public const string Saving = "saving";
    public const string Ready = "ready";
    public const string Failed = "failed";
}

/// <summary>A checkpoint row: the manifest's queryable facts plus bookkeeping.</summary>
public sealed record CheckpointRecord
{
    public Guid Id { get; init; }
    public Guid VmId { get; init; }
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    public string Status { get; init; } = CheckpointStatus.Saving;
    public string Mode { get; init; } = "live";
    public string? Method { get; init; }
    public Guid? ParentId { get; init; }
    public int FormatVersion { get; init; } = CheckpointManifest.CurrentFormatVersion;
    public string? Emulator { get; init; }
    public string? EmulatorVersion { get; init; }
    public string? Accelerator { get; init; }
    public string? Machine { get; init; }
    public string? CpuModel { get; init; }
    public int? Vcpus { get; init; }
    public int? MemoryMiB { get; init; }
    public long? StateSize { get; init; }
    public string? StateSha256 { get; init; }
    public double? GuestPauseMs { get; init; }
    /// <summary>Relative to the data directory.</summary>
    public string Folder { get; init; } = "";
    public string? ManifestJson { get; init; }
    public string? Error { get; init; }
    public DateTimeOffset CreatedAt { get; init; }

    public CheckpointRecord WithManifest(CheckpointManifest m) => this with
    {
        Method = m.Method, ParentId = m.ParentId, FormatVersion = m.FormatVersion, Emulator = m.Emulator.Name,
        EmulatorVersion = m.Emulator.Version, Accelerator = m.Emulator.Accelerator, Machine = m.Machine.Type,
        CpuModel = m.Machine.CpuModel, Vcpus = m.Machine.Vcpus, MemoryMiB = m.Machine.MemoryMiB,
        StateSize = m.State?.Size, StateSha256 = m.State?.Sha256, GuestPauseMs = m.GuestPauseMs, ManifestJson = Checkpoints.ManifestJson.Serialize(m),
    };
}

/// <summary>One disk layer a checkpoint needs, at <see cref="Position"/> in its disk's chain (0 = bottom).</summary>
public sealed record CheckpointLayerRef(Guid CheckpointId, Guid LayerId, string DiskName, int Position);

public interface ICheckpointStore
{
    Task InsertAsync(CheckpointRecord r, CancellationToken ct = default);
    /// <summary>Marks the checkpoint ready with its manifest and layer references, in one transaction.</summary>
    Task CompleteAsync(CheckpointRecord r, IReadOnlyList<CheckpointLayerRef> layers, CancellationToken ct = default);
    /// <summary>Registers an imported checkpoint together with its (new) disk layers, in one transaction.</summary>
    Task ImportAsync(CheckpointRecord r, IReadOnlyList<DiskLayer> newLayers, IReadOnlyList<CheckpointLayerRef> refs, CancellationToken ct = default);
    Task FailAsync(Guid id, string error, CancellationToken ct = default);
    Task<CheckpointRecord?> GetAsync(Guid id, CancellationToken ct = default);
    Task<IReadOnlyList<CheckpointRecord>> ForVmAsync(Guid vmId, CancellationToken ct = default);
    Task<IReadOnlyList<CheckpointRecord>> WithStatusAsync(string status, CancellationToken ct = default);
    Task<IReadOnlyList<CheckpointLayerRef>> LayerRefsForVmAsync(Guid vmId, CancellationToken ct = default);
    Task DeleteAsync(Guid id, CancellationToken ct = default);
}
