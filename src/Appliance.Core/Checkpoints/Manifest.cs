using System.Text.Json;
using Appliance.Core.Emulation;
using Appliance.Core.Vms;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// What a checkpoint is, in full: enough to decide, before starting anything, whether it can be
/// restored on this appliance, and to carry it to another one. Versioned so a later appliance can
/// read an older checkpoint or refuse a newer one by name instead of misreading it.
/// </summary>
public sealed record CheckpointManifest
{
    public const int CurrentFormatVersion = 1;

    public int FormatVersion { get; init; } = CurrentFormatVersion;
    public Guid Id { get; init; }
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    /// <summary><c>live</c>, <c>suspend</c> or <c>disk-only</c>.</summary>
    public string Mode { get; init; } = "live";
    /// <summary>How the RAM was captured: <c>background-snapshot</c>, <c>live-migration</c>, <c>stopped</c> or <c>disk-only</c>.</summary>
    public string Method { get; init; } = "";
    public DateTimeOffset CreatedAt { get; init; }
    public Guid? ParentId { get; init; }
    public Guid VmId { get; init; }
    public string VmName { get; init; } = "";
    /// <summary>Whether the vCPUs ran at the saved instant; a restore resumes only then.</summary>
    public bool WasRunning { get; init; }
    public double? GuestPauseMs { get; init; }
    public EmulatorFacts Emulator { get; init; } = new();
    public MachineFacts Machine { get; init; } = new();
    public List<DeviceInfo> Devices { get; init; } = [];
    /// <summary>The emulator's arguments with run-specific paths replaced by placeholders (see <see cref="LaunchArgNormalizer"/>).</summary>
    public List<string> LaunchArgs { get; init; } = [];
    public List<DiskChain> Disks { get; init; } = [];
    public StateFile? State { get; init; }
    public VmSpec Definition { get; init; } = new();
}

public sealed record EmulatorFacts
{
    public string Name { get; init; } = "";
    public string Version { get; init; } = "";
    public string Accelerator { get; init; } = "";
}

public sealed record MachineFacts
{
    public string Type { get; init; } = "";
    public string CpuModel { get; init; } = "";
    public int Vcpus { get; init; }
    public int MemoryMiB { get; init; }
}

/// <summary>One disk's frozen layers, bottom first; the last is the layer the saved instant wrote to.</summary>
public sealed record DiskChain
{
    public string Disk { get; init; } = "";
    public List<LayerFacts> Layers { get; init; } = [];
}

public sealed record LayerFacts
{
    public Guid Id { get; init; }
    /// <summary>Relative to the data directory (inside an archive: the entry name).</summary>
    public string File { get; init; } = "";
    public string Format { get; init; } = "qcow2";
    public long VirtualSize { get; init; }
    public long FileSize { get; init; }
    public string Sha256 { get; init; } = "";
    /// <summary>Image-library name the bottom layer is based on, when it is.</summary>
    public string? BaseImage { get; init; }
}

public sealed record StateFile
{
    public string File { get; init; } = "state";
    public long Size { get; init; }
    public string Sha256 { get; init; } = "";
}

public static class ManifestJson
{
    public static string Serialize(CheckpointManifest m) =>
        JsonSerializer.Serialize(m, new JsonSerializerOptions(ApplianceJson.Strict) { WriteIndented = true });

    /// <summary>Reads a manifest; the format version is checked first so a newer layout is refused by name.</summary>
    public static CheckpointManifest Parse(ReadOnlySpan<byte> json)
    {
        using var doc = JsonDocument.Parse(json.ToArray());
        if (!doc.RootElement.TryGetProperty("formatVersion", out var v) || v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var version))
            throw new ManifestException("The manifest has no formatVersion.");
        if (version > CheckpointManifest.CurrentFormatVersion || version < 1)
            throw new ManifestException($"Manifest format version {version} is not supported; this appliance reads version {CheckpointManifest.CurrentFormatVersion}.");
        try
        {
            return doc.RootElement.Deserialize<CheckpointManifest>(ApplianceJson.Strict) ?? throw new ManifestException("The manifest is empty.");
        }
        catch (JsonException e)
        {
            throw new ManifestException("The manifest is not valid: " + e.Message);
        }
    }
}

public sealed class ManifestException(string message) : Exception(message);
