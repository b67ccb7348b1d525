using System.Buffers;
using System.Formats.Tar;
using System.Security.Cryptography;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Storage;
using Appliance.Core.Supervision;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Checkpoints;

/// <summary>
/// The portable form of a checkpoint: one tar stream, <c>manifest.json</c> first (so a reader knows
/// what follows and can refuse an unknown format before reading gigabytes), then <c>state</c>, then
/// each disk's layers bottom first as <c>layers/&lt;disk&gt;/&lt;n&gt;.qcow2</c>. Every file's size and
/// SHA-256 are in the manifest.
/// </summary>
public sealed class CheckpointArchive(
    Supervisor sup,
    CheckpointService checkpoints,
    ICheckpointStore store,
    IStorageStore storage,
    IOptions<ApplianceOptions> options)
{
    public const string ManifestEntry = "manifest.json";
    public const string StateEntry = "state";

    public static string LayerEntry(string disk, int position) => $"layers/{disk}/{position}.qcow2";

    /// <summary>The manifest as it is written into an archive: file names become entry names.</summary>
    public static CheckpointManifest ForArchive(CheckpointManifest m) => m with
    {
        State = m.State is null ? null : m.State with { File = StateEntry },
        Disks = m.Disks.Select(d => d with { Layers = d.Layers.Select((l, i) => l with { File = LayerEntry(d.Disk, i) }).ToList() }).ToList(),
    };

    public async Task ExportAsync(CheckpointRecord cp, Stream output, CancellationToken ct)
    {
        var manifest = ManifestJson.Parse(System.Text.Encoding.UTF8.GetBytes(cp.ManifestJson ?? "{}"));
        var folder = sup.Disks.Absolute(cp.Folder);
        var files = new List<(string Entry, string Path)>();
        if (manifest.State is { } s) files.Add((StateEntry, Path.Combine(folder, s.File)));
        foreach (var d in manifest.Disks)
            for (var i = 0; i < d.Layers.Count; i++) files.Add((LayerEntry(d.Disk, i), sup.Disks.Absolute(d.Layers[i].File)));
        var missing = files.Where(f => !File.Exists(f.Path)).Select(f => f.Entry).ToList();
        if (missing.Count > 0)
            throw new ApplianceError(422, "checkpoint-corrupt", "Checkpoint damaged", $"Checkpoint '{cp.Name}' is missing files: {string.Join(", ", missing)}.");

        await using var tar = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true);
        var json = System.Text.Encoding.UTF8.GetBytes(ManifestJson.Serialize(ForArchive(manifest)));
        await WriteEntryAsync(tar, ManifestEntry, new MemoryStream(json), ct);
        foreach (var (entry, path) in files)
        {
            await using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            await WriteEntryAsync(tar, entry, f, ct);
        }
    }

    private static async Task WriteEntryAsync(TarWriter tar, string name, Stream data, CancellationToken ct)
    {
        var e = new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = data, Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite, ModificationTime = DateTimeOffset.UnixEpoch,
        };
        await tar.WriteEntryAsync(e, ct);
    }

    /// <summary>Reads an archive into a temp folder, checking order, names, sizes and digests as it goes.</summary>
    public static async Task<CheckpointManifest> ReadAsync(Stream input, string folder, CancellationToken ct)
    {
        Directory.CreateDirectory(folder);
        await using var tar = new TarReader(input, leaveOpen: true);
        CheckpointManifest? manifest = null;
        var expected = new Dictionary<string, (long Size, string Sha)>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        TarEntry? e;
        try
        {
            while ((e = await tar.GetNextEntryAsync(copyData: false, ct)) is not null)
            {
                if (e.EntryType is TarEntryType.Directory) continue;
                if (e.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile))
                    throw Invalid($"Entry '{e.Name}' is a {e.EntryType}; the archive holds regular files only.");
                if (manifest is null)
                {
                    if (e.Name != ManifestEntry) throw Invalid($"The first entry must be {ManifestEntry}, not '{e.Name}'.");
                    if (e.Length > 16 * 1024 * 1024) throw Invalid("The manifest is implausibly large.");
                    using var ms = new MemoryStream();
                    if (e.DataStream is not null) await e.DataStream.CopyToAsync(ms, ct);
                    try { manifest = ManifestJson.Parse(ms.ToArray()); }
                    catch (ManifestException m) { throw new ApplianceError(422, "checkpoint-format", "Unsupported or invalid manifest", m.Message); }
                    await File.WriteAllBytesAsync(Path.Combine(folder, ManifestEntry), ms.ToArray(), ct);
                    if (manifest.State is { } st) expected[StateEntry] = (st.Size, st.Sha256);
                    foreach (var d in manifest.Disks)
                    {
                        if (!SafePath.IsValidFileName(d.Disk)) throw Invalid($"Disk name '{d.Disk}' is not acceptable.");
                        for (var i = 0; i < d.Layers.Count; i++) expected[LayerEntry(d.Disk, i)] = (d.Layers[i].FileSize, d.Layers[i].Sha256);
                    }
                    continue;
                }
                if (!expected.TryGetValue(e.Name, out var want)) throw Invalid($"Entry '{e.Name}' is not described by the manifest.");
                if (!seen.Add(e.Name)) throw Invalid($"Entry '{e.Name}' appears twice.");
                if (e.Length != want.Size) throw Corrupt($"'{e.Name}' has {e.Length} bytes; the manifest says {want.Size}.");
                var path = EntryPath(folder, e.Name);
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                var sha = await CopyHashedAsync(e.DataStream ?? Stream.Null, path, ct);
                if (sha != want.Sha) throw Corrupt($"'{e.Name}' does not match its SHA-256 in the manifest.");
            }
        }
        catch (Exception ex) when (ex is InvalidDataException or FormatException or EndOfStreamException)
        {
            throw Invalid("The archive is not a readable tar stream: " + ex.Message);
        }
        if (manifest is null) throw Invalid("The archive is empty.");
        var absent = expected.Keys.Where(k => !seen.Contains(k)).ToList();
        if (absent.Count > 0) throw Corrupt($"The archive ends before {string.Join(", ", absent)}.");
        return manifest;
    }

    /// <summary>Entry names are checked against the manifest's own list, never used as paths directly.</summary>
    private static string EntryPath(string folder, string entry) =>
        entry == StateEntry ? Path.Combine(folder, StateEntry) : Path.Combine(folder, entry.Replace('/', '_'));

    private static async Task<string> CopyHashedAsync(Stream from, string path, CancellationToken ct)
    {
        await using var to = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            int n;
            while ((n = await from.ReadAsync(buf.AsMemory(0, 1 << 20), ct)) > 0)
            {
                sha.AppendData(buf, 0, n);
                await to.WriteAsync(buf.AsMemory(0, n), ct);
            }
            to.Flush(flushToDisk: true);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private static ApplianceError Invalid(string detail) => new(422, "archive-invalid", "Not a checkpoint archive", detail);
    private static ApplianceError Corrupt(string detail) => new(422, "checkpoint-corrupt", "Checkpoint damaged", detail);

    /// <summary>Reads, verifies and registers an archive for the VM it names (or <paramref name="vmName"/>).</summary>
    public async Task<(CheckpointRecord Checkpoint, IReadOnlyList<Difference> Differences)> ImportAsync(Stream input, string? vmName, CancellationToken ct)
    {
        Directory.CreateDirectory(checkpoints.CheckpointsDir);
        var tmp = Path.Combine(checkpoints.CheckpointsDir, ".import-" + Guid.NewGuid().ToString("N")[..12]);
        var moved = new List<string>();
        try
        {
            var manifest = await ReadAsync(input, tmp, ct);
            var name = vmName ?? manifest.VmName;
            var vm = await sup.Store.FindAsync(name, ct)
                ?? throw ApplianceError.Conflict("vm-missing",
                    $"No VM named '{name}' exists to receive this checkpoint. Create it with the definition in the manifest (extension 'definition'), then import again.",
                    new Dictionary<string, object?> { ["vmName"] = name, ["definition"] = manifest.Definition });
            var h = sup.Host(vm.Id);
            return await h.EnqueueAsync(async qct =>
            {
                var id = await store.GetAsync(manifest.Id, qct) is null ? manifest.Id : Guid.NewGuid();
                var images = await storage.ImagesAsync(qct);
                var newLayers = new List<DiskLayer>();
                var disks = new List<DiskChain>();
                foreach (var d in manifest.Disks)
                {
                    DiskLayer? parent = null;
                    var facts = new List<LayerFacts>();
                    for (var i = 0; i < d.Layers.Count; i++)
                    {
                        var l = d.Layers[i];
                        var layerId = Guid.NewGuid();
                        var file = Path.Combine(sup.Disks.DisksDir, vm.Id.ToString("N")[..8], $"{d.Disk}-{layerId.ToString("N")[..8]}.qcow2");
                        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                        File.Move(EntryPath(tmp, LayerEntry(d.Disk, i)), file);
                        moved.Add(file);
                        ImageRecord? image = null;
                        if (parent is not null)
                            await RebaseAsync(file, sup.Disks.Absolute(parent.File), "qcow2", qct);
                        else if (l.BaseImage is not null)
                        {
                            image = images.FirstOrDefault(x => x.Name == l.BaseImage)
                                ?? throw ApplianceError.Conflict("image-missing", $"Disk {d.Disk} is based on image '{l.BaseImage}', which is not in the library.");
                            await RebaseAsync(file, SafePath.Resolve(sup.Disks.ImagesDir, image.Name, "baseImage"), image.Kind == "qcow2" ? "qcow2" : "raw", qct);
                        }
                        var (size, sha) = await StateStream.DigestFileAsync(file, qct);
                        var layer = new DiskLayer
                        {
                            Id = layerId, VmId = vm.Id, DiskName = d.Disk, File = sup.Disks.Relative(file), Format = l.Format, VirtualSize = l.VirtualSize,
                            ParentId = parent?.Id, BaseImageId = image?.Id, IsActive = false, CreatedAt = DateTimeOffset.UtcNow,
                        };
                        newLayers.Add(layer);
                        facts.Add(l with { Id = layerId, File = layer.File, FileSize = size, Sha256 = sha });
                        parent = layer;
                    }
                    disks.Add(new DiskChain { Disk = d.Disk, Layers = facts });
                }
                var existingParent = manifest.ParentId is Guid p && await store.GetAsync(p, qct) is { } pc && pc.VmId == vm.Id ? p : (Guid?)null;
                var registered = manifest with
                {
                    Id = id, VmId = vm.Id, VmName = vm.Spec.Name, ParentId = existingParent, Disks = disks,
                    State = manifest.State is null ? null : manifest.State with { File = StateEntry },
                };
                var vmFolder = Path.Combine(checkpoints.CheckpointsDir, vm.Id.ToString("N"));
                var staging = Path.Combine(vmFolder, ".tmp-" + id.ToString("N"));
                var final = Path.Combine(vmFolder, id.ToString("N"));
                Directory.CreateDirectory(staging);
                moved.Add(staging);
                if (registered.State is not null) File.Move(Path.Combine(tmp, StateEntry), Path.Combine(staging, StateEntry));
                var manifestPath = Path.Combine(staging, ManifestEntry);
                await File.WriteAllTextAsync(manifestPath, ManifestJson.Serialize(registered), qct);
                StateStream.FsyncFile(manifestPath);
                StateStream.FsyncDirectory(staging);
                Directory.Move(staging, final);
                moved.Add(final);
                StateStream.FsyncDirectory(vmFolder);
                var rec = new CheckpointRecord
                {
                    Id = id, VmId = vm.Id, Name = registered.Name, Description = registered.Description, Mode = registered.Mode,
                    Status = CheckpointStatus.Ready, Folder = sup.Disks.Relative(final), CreatedAt = registered.CreatedAt,
                }.WithManifest(registered);
                var refs = disks.SelectMany(d => d.Layers.Select((l, i) => new CheckpointLayerRef(id, l.Id, d.Disk, i))).ToList();
                await store.ImportAsync(rec, newLayers, refs, CancellationToken.None);
                moved.Clear();
                var diffs = await checkpoints.CompareAsync(h, registered, qct);
                return (rec, diffs);
            });
        }
        finally
        {
            foreach (var path in moved)
            {
                try
                {
                    if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
                    else File.Delete(path);
                }
                catch (IOException) { }
            }
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); } catch (IOException) { }
        }
    }

    private Task RebaseAsync(string file, string backing, string backingFormat, CancellationToken ct) =>
        ToolRunner.RunCheckedAsync(options.Value.QemuImgPath, ["rebase", "-u", "-b", backing, "-F", backingFormat, file], TimeSpan.FromMinutes(1), ct);
}
