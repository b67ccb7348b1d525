using System.Text.Json;
using Appliance.Core.Emulation;
using Appliance.Core.Supervision;
using Microsoft.Extensions.Logging;

namespace Appliance.Core.Storage;

/// <summary>One image of a drive's chain as the emulator has it open.</summary>
public sealed record OpenImage(string File, string Format, long VirtualSize);

/// <summary>
/// Brings the recorded disk chains in line with the images a re-attached emulator really writes to.
/// Between QEMU accepting <c>blockdev-snapshot-sync</c> and the database recording the new top layer
/// there are a few milliseconds; an appliance killed in them would otherwise keep pointing the disk at
/// the frozen layer, and a later checkpoint or restore would silently miss every write since.
/// </summary>
public static class LayerReconciler
{
    /// <summary>
    /// The layers to record, bottom first, for every drive whose open top image is not the recorded
    /// active layer but sits on top of a recorded one; and what could not be reconciled, in words.
    /// </summary>
    public static (List<DiskLayer> Adopt, List<string> Problems) Plan(
        Guid vmId, IReadOnlyList<DiskLayer> layers, IReadOnlyDictionary<string, IReadOnlyList<OpenImage>> openTopFirst,
        Func<string, string> absolute, Func<string, string> relative, string disksDir, DateTimeOffset now)
    {
        var adopt = new List<DiskLayer>();
        var problems = new List<string>();
        var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(disksDir)) + Path.DirectorySeparatorChar;
        foreach (var (disk, chain) in openTopFirst)
        {
            var mine = layers.Where(l => l.DiskName == disk).ToList();
            if (chain.Count == 0 || mine.Count == 0) continue;
            var byPath = mine.GroupBy(l => absolute(l.File)).ToDictionary(g => g.Key, g => g.First());
            var active = mine.FirstOrDefault(l => l.IsActive);
            var top = Path.GetFullPath(chain[0].File);
            if (active is not null && absolute(active.File) == top) continue;
            var known = chain.ToList().FindIndex(i => byPath.ContainsKey(Path.GetFullPath(i.File)));
            if (known < 0)
            {
                problems.Add($"disk {disk}: none of the emulator's images ({string.Join(", ", chain.Select(i => i.File))}) is a recorded layer");
                continue;
            }
            if (known == 0)
            {
                problems.Add($"disk {disk}: the emulator writes to {top}, a recorded layer that is not the active one");
                continue;
            }
            var missing = chain.Take(known).Reverse().ToList();
            if (missing.FirstOrDefault(i => !Path.GetFullPath(i.File).StartsWith(root, StringComparison.Ordinal)) is { } outside)
            {
                problems.Add($"disk {disk}: the emulator writes to {outside.File}, outside the disks folder; not recorded");
                continue;
            }
            var parent = byPath[Path.GetFullPath(chain[known].File)].Id;
            foreach (var image in missing)
            {
                var layer = new DiskLayer
                {
                    Id = Guid.NewGuid(), VmId = vmId, DiskName = disk, File = relative(Path.GetFullPath(image.File)), Format = image.Format,
                    VirtualSize = image.VirtualSize, ParentId = parent, IsActive = true, CreatedAt = now,
                };
                adopt.Add(layer);
                parent = layer.Id;
            }
        }
        return (adopt, problems);
    }

    /// <summary>Each appliance drive's open images, top first, from <c>query-block</c>.</summary>
    public static Dictionary<string, IReadOnlyList<OpenImage>> ParseQueryBlock(JsonElement reply)
    {
        var chains = new Dictionary<string, IReadOnlyList<OpenImage>>(StringComparer.Ordinal);
        foreach (var dev in reply.EnumerateArray())
        {
            if (!dev.TryGetProperty("device", out var d) || d.GetString() is not { } device || !device.StartsWith("drive-", StringComparison.Ordinal)) continue;
            if (!dev.TryGetProperty("inserted", out var inserted) || !inserted.TryGetProperty("image", out var image)) continue;
            var chain = new List<OpenImage>();
            for (JsonElement? i = image; i is { } cur; i = cur.TryGetProperty("backing-image", out var b) ? b : null)
            {
                var file = cur.TryGetProperty("filename", out var f) ? f.GetString() : null;
                // A filename QEMU cannot express as a path ('json:{...}') is nothing the appliance made.
                if (file is null || !Path.IsPathFullyQualified(file)) break;
                chain.Add(new OpenImage(file, cur.TryGetProperty("format", out var fmt) ? fmt.GetString() ?? "qcow2" : "qcow2",
                    cur.TryGetProperty("virtual-size", out var vs) ? vs.GetInt64() : 0));
            }
            chains[device["drive-".Length..]] = chain;
        }
        return chains;
    }

    /// <summary>Asks the emulator for its chains and records the layers the database is missing.</summary>
    public static async Task<IReadOnlyList<DiskLayer>> ReconcileAsync(Guid vmId, string vmName, QmpClient qmp, IStorageStore storage, DiskService disks, ILogger log, CancellationToken ct)
    {
        var chains = ParseQueryBlock(await qmp.ExecuteAsync("query-block", null, ct));
        var (adopt, problems) = Plan(vmId, await storage.LayersAsync(vmId, ct), chains, disks.Absolute, disks.Relative, disks.DisksDir, DateTimeOffset.UtcNow);
        foreach (var p in problems) log.LogWarning("VM {Vm}: {Problem}", vmName, p);
        foreach (var l in adopt)
        {
            await storage.PushLayerAsync(l, CancellationToken.None);
            log.LogWarning("VM {Vm}: disk {Disk} runs on {File}, which was not recorded (the appliance stopped right after a disk freeze); recorded it as the active layer",
                vmName, l.DiskName, l.File);
        }
        return adopt;
    }
}
