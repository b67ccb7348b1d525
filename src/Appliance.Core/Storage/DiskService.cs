using System.Text.Json;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Storage;

/// <summary>qcow2 disks as overlay chains under <c>disks/</c>, made and inspected with qemu-img.</summary>
public sealed class DiskService(IOptions<ApplianceOptions> options, IStorageStore store)
{
    private string DataDir => options.Value.ResolvedDataDirectory;
    public string DisksDir => Path.Combine(DataDir, "disks");
    public string ImagesDir => Path.Combine(DataDir, "images");

    public string Absolute(string relative) => Path.GetFullPath(Path.Combine(DataDir, relative));

    public string Relative(string absolute) => Path.GetRelativePath(DataDir, absolute);

    private static string Short(Guid id) => id.ToString("N")[..8];

    /// <summary>Creates the first layer of each disk in <paramref name="spec"/> that has none yet.</summary>
    public async Task EnsureDisksAsync(Guid vmId, VmSpec spec, CancellationToken ct = default)
    {
        var layers = await store.LayersAsync(vmId, ct);
        foreach (var d in spec.Disks)
        {
            if (layers.Any(l => l.DiskName == d.Name && l.IsActive)) continue;
            var dir = Path.Combine(DisksDir, Short(vmId));
            Directory.CreateDirectory(dir);
            var id = Guid.NewGuid();
            var file = Path.Combine(dir, $"{d.Name}-{Short(id)}.qcow2");
            var args = new List<string> { "create", "-q", "-f", "qcow2" };
            ImageRecord? baseImage = null;
            if (d.SourceImage is not null)
            {
                baseImage = await store.FindImageAsync(d.SourceImage, ct)
                    ?? throw ApplianceError.Field($"disks.{d.Name}.sourceImage", $"No image named '{d.SourceImage}' in the library.");
                args.AddRange(["-b", SafePath.Resolve(ImagesDir, baseImage.Name, "sourceImage"), "-F", baseImage.Kind == "qcow2" ? "qcow2" : "raw"]);
            }
            args.AddRange([file, $"{d.SizeMiB}M"]);
            await ToolRunner.RunCheckedAsync(options.Value.QemuImgPath, args, TimeSpan.FromMinutes(2), ct);
            try
            {
                await store.AddLayerAsync(new DiskLayer
                {
                    Id = id, VmId = vmId, DiskName = d.Name, File = Relative(file), VirtualSize = d.SizeMiB * 1024 * 1024,
                    BaseImageId = baseImage?.Id, IsActive = true, CreatedAt = DateTimeOffset.UtcNow,
                }, ct);
            }
            catch
            {
                File.Delete(file);
                throw;
            }
        }
    }

    /// <summary>Active (top) layer file per disk name, as absolute paths.</summary>
    public async Task<Dictionary<string, string>> ActiveFilesAsync(Guid vmId, CancellationToken ct = default) =>
        (await store.LayersAsync(vmId, ct)).Where(l => l.IsActive).ToDictionary(l => l.DiskName, l => Absolute(l.File));

    /// <summary>Creates a new empty overlay file over <paramref name="backing"/> (used for restore).</summary>
    public async Task CreateOverlayAsync(string backing, string file, CancellationToken ct = default) =>
        await ToolRunner.RunCheckedAsync(options.Value.QemuImgPath, ["create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", file], TimeSpan.FromMinutes(1), ct);

    public async Task<long> VirtualSizeAsync(string file, CancellationToken ct = default)
    {
        var json = await ToolRunner.RunCheckedAsync(options.Value.QemuImgPath, ["info", "--output=json", "-U", file], TimeSpan.FromSeconds(30), ct);
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.GetProperty("virtual-size").GetInt64();
    }

    /// <summary>Deletes the files of layers whose rows are already gone.</summary>
    public void DeleteFiles(Guid vmId, IEnumerable<DiskLayer> layers)
    {
        foreach (var l in layers)
        {
            var path = Absolute(l.File);
            if (File.Exists(path)) File.Delete(path);
        }
        var dir = Path.Combine(DisksDir, Short(vmId));
        if (Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any()) Directory.Delete(dir);
    }

    /// <summary>Removes every layer of a VM (the VM must be stopped); layers a checkpoint holds are kept by the caller.</summary>
    public async Task DeleteAllAsync(Guid vmId, IReadOnlySet<Guid>? keep = null, CancellationToken ct = default)
    {
        foreach (var l in (await store.LayersAsync(vmId, ct)).OrderByDescending(l => l.CreatedAt))
        {
            if (keep?.Contains(l.Id) == true) continue;
            var path = Absolute(l.File);
            if (File.Exists(path)) File.Delete(path);
            await store.DeleteLayerAsync(l.Id, ct);
        }
        var dir = Path.Combine(DisksDir, Short(vmId));
        if (Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any()) Directory.Delete(dir);
    }
}
