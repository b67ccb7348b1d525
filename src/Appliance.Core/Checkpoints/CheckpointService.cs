using System.Diagnostics;
using System.Text.Json.Nodes;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Storage;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Checkpoints;

public sealed class CheckpointOptions
{
    public const string Section = "Appliance:Checkpoints";

    /// <summary>Free space required beyond the guest's RAM before a save starts.</summary>
    public long SpaceMarginMiB { get; set; } = 256;

    /// <summary>How long a restore may wait for the emulator to take the whole stream.</summary>
    public int RestoreTimeoutSeconds { get; set; } = 120;

    /// <summary>
    /// Use QEMU's background snapshots (copy-on-write RAM through userfaultfd) for live checkpoints when the
    /// host allows them; false always uses a live migration that pauses at its end.
    /// </summary>
    public bool BackgroundSnapshot { get; set; } = true;

    /// <summary>How long a save may take before it is abandoned.</summary>
    public int SaveTimeoutSeconds { get; set; } = 600;

    /// <summary>
    /// Hand each background-snapshot stream to the stream keeper process, which finishes it if the appliance
    /// dies mid-save (otherwise QEMU 7.2 leaves the guest hung). See <see cref="Checkpoints.StreamKeeper"/>.
    /// </summary>
    public bool StreamKeeper { get; set; } = true;
}

/// <summary>A checkpoint as the API lists it, with the space it alone holds.</summary>
public sealed record CheckpointView(CheckpointRecord Record, long SizeBytes, long SharedBytes);

/// <summary>
/// Saves, restores, deletes and garbage-collects checkpoints. Every step that touches a VM runs on
/// that VM's serialized queue, so a checkpoint never races a start, a shutdown or another checkpoint.
/// </summary>
public sealed partial class CheckpointService(
    Supervisor sup,
    ICheckpointStore store,
    IStorageStore storage,
    IOptions<CheckpointOptions> options,
    StreamKeeperClient keeper,
    ILogger<CheckpointService> log)
{
    public static readonly string[] Modes = ["live", "suspend", "disk-only"];

    private string DataDir => sup.DataDir;
    public string CheckpointsDir => Path.Combine(DataDir, "checkpoints");
    private string VmFolder(Guid vmId) => Path.Combine(CheckpointsDir, vmId.ToString("N"));
    private string Absolute(string relative) => sup.Disks.Absolute(relative);
    private string Relative(string absolute) => sup.Disks.Relative(absolute);
    private static string Short(Guid id) => id.ToString("N")[..8];

    // ---- reading ------------------------------------------------------------------------------

    public async Task<CheckpointRecord> GetAsync(Guid id, CancellationToken ct) =>
        await store.GetAsync(id, ct) ?? throw ApplianceError.NotFound("Checkpoint", id.ToString());

    public async Task<IReadOnlyList<CheckpointView>> ListAsync(Guid vmId, CancellationToken ct)
    {
        var all = await store.ForVmAsync(vmId, ct);
        var refs = await store.LayerRefsForVmAsync(vmId, ct);
        var layers = (await storage.LayersAsync(vmId, ct)).ToDictionary(l => l.Id);
        var live = ActiveChains(layers.Values);
        long FileSize(Guid layer) => layers.TryGetValue(layer, out var l) && File.Exists(Absolute(l.File)) ? new FileInfo(Absolute(l.File)).Length : 0;
        return all.Select(cp =>
        {
            var mine = refs.Where(r => r.CheckpointId == cp.Id).Select(r => r.LayerId).ToHashSet();
            var others = refs.Where(r => r.CheckpointId != cp.Id).Select(r => r.LayerId).ToHashSet();
            var exclusive = mine.Where(l => !others.Contains(l) && !live.Contains(l)).Sum(FileSize);
            var shared = mine.Where(l => others.Contains(l) || live.Contains(l)).Sum(FileSize);
            var folder = Absolute(cp.Folder);
            var own = Directory.Exists(folder) ? Directory.EnumerateFiles(folder).Sum(f => new FileInfo(f).Length) : 0;
            return new CheckpointView(cp, own + exclusive, shared);
        }).ToList();
    }

    /// <summary>Every layer the VM's disks run on now: the active layers and all their backing layers.</summary>
    private static HashSet<Guid> ActiveChains(IEnumerable<DiskLayer> layers)
    {
        var byId = layers.ToDictionary(l => l.Id);
        var keep = new HashSet<Guid>();
        foreach (var top in byId.Values.Where(l => l.IsActive))
            for (DiskLayer? l = top; l is not null && keep.Add(l.Id); l = l.ParentId is Guid p ? byId.GetValueOrDefault(p) : null) { }
        return keep;
    }

    private static List<DiskLayer> ChainOf(DiskLayer top, IReadOnlyDictionary<Guid, DiskLayer> byId)
    {
        var chain = new List<DiskLayer>();
        for (DiskLayer? l = top; l is not null; l = l.ParentId is Guid p ? byId.GetValueOrDefault(p) : null) chain.Add(l);
        chain.Reverse();
        return chain;
    }

    // ---- save ---------------------------------------------------------------------------------

    public async Task<(CheckpointRecord Checkpoint, JobSnapshot Job)> RequestSaveAsync(Guid vmId, string name, string? description, string mode, CancellationToken ct)
    {
        var h = sup.Host(vmId);
        if (!sup.Driver.Capabilities.Contains(EmulatorCapability.Checkpoint)) throw ApplianceError.Unsupported("checkpoint", sup.Driver.Name);
        RequireSaveState(h, mode);
        CheckFreeSpace(h, mode);
        var id = Guid.NewGuid();
        var rec = new CheckpointRecord
        {
            Id = id, VmId = vmId, Name = name, Description = description, Mode = mode, Status = CheckpointStatus.Saving,
            Folder = Relative(Path.Combine(VmFolder(vmId), id.ToString("N"))), CreatedAt = DateTimeOffset.UtcNow,
        };
        await store.InsertAsync(rec, ct);
        var job = sup.Jobs.Create("checkpoint", vmId);
        _ = h.EnqueueAsync(async qct =>
        {
            sup.Jobs.Running(job.Id, $"saving checkpoint '{name}'");
            try
            {
                var done = await SaveCoreAsync(h, rec, job.Id, qct);
                sup.Jobs.Succeed(job.Id, new { checkpointId = done.Id, status = done.Status, guestPauseMs = done.GuestPauseMs, method = done.Method });
            }
            catch (Exception e)
            {
                var (message, slug) = Describe(e);
                log.LogWarning(e, "VM {Vm}: checkpoint '{Name}' failed", h.Vm.Spec.Name, name);
                try { await store.FailAsync(id, message, CancellationToken.None); } catch (Exception) { }
                sup.Jobs.Fail(job.Id, message, slug);
            }
        });
        return (rec, job);
    }

    private static (string Message, string Slug) Describe(Exception e) => e switch
    {
        ApplianceError a => (a.Message, a.Slug),
        QmpException or IOException or ToolFailedException or System.Net.Sockets.SocketException => (e.Message, "emulator-error"),
        OperationCanceledException => ("The operation was cancelled or timed out.", "timeout"),
        _ => (e.Message, "checkpoint-failed"),
    };

    private static void RequireSaveState(VmHost h, string mode)
    {
        if (mode == "disk-only") h.RequireState("checkpoint", VmState.Running, VmState.Paused, VmState.Stopped, VmState.Crashed);
        else h.RequireState($"save a {mode} checkpoint of", VmState.Running, VmState.Paused);
    }

    private void CheckFreeSpace(VmHost h, string mode)
    {
        var need = (mode == "disk-only" ? 0 : (long)h.Vm.Spec.MemoryMiB * 1024 * 1024) + options.Value.SpaceMarginMiB * 1024 * 1024;
        Directory.CreateDirectory(CheckpointsDir);
        var free = new DriveInfo(CheckpointsDir).AvailableFreeSpace;
        if (free < need)
            throw new ApplianceError(507, "insufficient-storage", "Insufficient storage",
                $"Saving a checkpoint of '{h.Vm.Spec.Name}' needs up to {need / (1024 * 1024)} MiB free (guest RAM plus {options.Value.SpaceMarginMiB} MiB margin); {free / (1024 * 1024)} MiB are free.",
                extensions: new Dictionary<string, object?> { ["requiredBytes"] = need, ["availableBytes"] = free });
    }

    private async Task<CheckpointRecord> SaveCoreAsync(VmHost h, CheckpointRecord rec, Guid jobId, CancellationToken qct)
    {
        RequireSaveState(h, rec.Mode);
        var clock = new PhaseClock();
        var gc = GcCounts.Now();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(qct);
        cts.CancelAfter(TimeSpan.FromSeconds(options.Value.SaveTimeoutSeconds));
        var ct = cts.Token;
        var final = Absolute(rec.Folder);
        var tmp = Path.Combine(VmFolder(h.Id), ".tmp-" + rec.Id.ToString("N"));
        Directory.CreateDirectory(tmp);
        var before = h.Snapshot.State;
        try
        {
            var parentId = await ParentOfCurrentAsync(h.Id, ct);
            Capture cap;
            if (h.Emulator is null) cap = await FreezeStoppedAsync(h, ct);
            else
            {
                h.SetState(VmState.Saving);
                cap = rec.Mode == "disk-only"
                    ? await FreezeRunningAsync(h, h.Emulator, ct)
                    : await StreamAsync(h, h.Emulator, rec, tmp, jobId, before == VmState.Running, clock, ct);
            }
            clock.Mark("captured");
            var disks = await (cap.Layers ?? DescribeLayersAsync(h.Id, cap.Frozen, ct));
            clock.Mark("layers-digested");
            var manifest = new CheckpointManifest
            {
                Id = rec.Id, Name = rec.Name, Description = rec.Description, Mode = rec.Mode, Method = cap.Method, CreatedAt = rec.CreatedAt,
                ParentId = parentId, VmId = h.Id, VmName = h.Vm.Spec.Name, WasRunning = cap.WasRunning, GuestPauseMs = cap.PauseMs,
                Emulator = cap.Facts.Emulator, Machine = cap.Facts.Machine, Devices = cap.Facts.Devices.ToList(),
                LaunchArgs = cap.Facts.LaunchArgs.ToList(), Disks = disks, State = cap.State, Definition = h.Vm.Spec,
            };
            var manifestPath = Path.Combine(tmp, "manifest.json");
            await File.WriteAllTextAsync(manifestPath, ManifestJson.Serialize(manifest), CancellationToken.None);
            StateStream.FsyncFile(manifestPath);
            StateStream.FsyncDirectory(tmp);
            clock.Mark("manifest-synced");
            Directory.Move(tmp, final);
            StateStream.FsyncDirectory(VmFolder(h.Id));
            clock.Mark("renamed");
            var done = rec.WithManifest(manifest) with { Status = CheckpointStatus.Ready };
            var refs = disks.SelectMany(d => d.Layers.Select((l, i) => new CheckpointLayerRef(rec.Id, l.Id, d.Disk, i))).ToList();
            await store.CompleteAsync(done, refs, CancellationToken.None);
            clock.Mark("committed");
            if (h.Emulator is not null && h.Snapshot.State == VmState.Saving) h.SetState(await h.QueryStateAsync(h.Emulator, CancellationToken.None));
            clock.Mark("state-published");
            log.LogInformation("VM {Vm}: checkpoint '{Name}' saved ({Method}, pause {Pause} ms, {Size} bytes) in {Ms:0} ms: {Phases}; {Gc}",
                h.Vm.Spec.Name, rec.Name, cap.Method, cap.PauseMs, cap.State?.Size, clock.ElapsedMs, clock, GcCounts.Now() - gc);
            return done;
        }
        catch
        {
            TryDeleteDir(tmp);
            TryDeleteDir(final);
            if (h.Emulator is { } e && h.Snapshot.State == VmState.Saving)
            {
                try { h.SetState(await h.QueryStateAsync(e, CancellationToken.None)); }
                catch (Exception) { h.SetState(before); }
            }
            throw;
        }
    }

    private sealed record Capture(string Method, bool WasRunning, double? PauseMs, StateFile? State, LaunchFacts Facts,
        IReadOnlyList<(string Disk, List<DiskLayer> Chain)> Frozen, Task<List<DiskChain>>? Layers = null);

    /// <summary>
    /// Sizes and digests of the frozen chains. A frozen layer is never written again, so a digest another
    /// checkpoint of this VM already recorded for it (same size) is reused: only the newly frozen layer is read.
    /// </summary>
    private async Task<List<DiskChain>> DescribeLayersAsync(Guid vmId, IReadOnlyList<(string Disk, List<DiskLayer> Chain)> frozen, CancellationToken ct)
    {
        var known = new Dictionary<Guid, LayerFacts>();
        foreach (var cp in await store.ForVmAsync(vmId, ct))
        {
            if (cp.Status != CheckpointStatus.Ready || cp.ManifestJson is null) continue;
            foreach (var l in ManifestJson.Parse(System.Text.Encoding.UTF8.GetBytes(cp.ManifestJson)).Disks.SelectMany(d => d.Layers))
                known.TryAdd(l.Id, l);
        }
        var images = await storage.ImagesAsync(ct);
        var disks = new List<DiskChain>();
        foreach (var (disk, chain) in frozen)
        {
            var layers = new List<LayerFacts>();
            foreach (var l in chain)
            {
                var path = Absolute(l.File);
                var (size, sha) = known.TryGetValue(l.Id, out var k) && new FileInfo(path) is { Exists: true } fi && fi.Length == k.FileSize
                    ? (k.FileSize, k.Sha256)
                    : await StateStream.DigestFileAsync(path, ct);
                layers.Add(new LayerFacts
                {
                    Id = l.Id, File = l.File, Format = l.Format, VirtualSize = l.VirtualSize, FileSize = size, Sha256 = sha,
                    BaseImage = l.BaseImageId is null ? null : images.FirstOrDefault(i => i.Id == l.BaseImageId)?.Name,
                });
            }
            disks.Add(new DiskChain { Disk = disk, Layers = layers });
        }
        return disks;
    }

    private sealed record FreezePlan(string Disk, DiskLayer Old, DiskLayer New, JsonObject Command);

    /// <summary>The newest checkpoint whose frozen top layer the VM's disks currently run on (directly or further down).</summary>
    private async Task<Guid?> ParentOfCurrentAsync(Guid vmId, CancellationToken ct)
    {
        var layers = await storage.LayersAsync(vmId, ct);
        var byId = layers.ToDictionary(l => l.Id);
        var top = layers.Where(l => l.IsActive).OrderBy(l => l.DiskName, StringComparer.Ordinal).FirstOrDefault();
        if (top is null) return null;
        var refs = await store.LayerRefsForVmAsync(vmId, ct);
        var ready = (await store.ForVmAsync(vmId, ct)).Where(c => c.Status == CheckpointStatus.Ready).ToDictionary(c => c.Id);
        var tops = refs.Where(r => r.DiskName == top.DiskName && ready.ContainsKey(r.CheckpointId))
            .GroupBy(r => r.CheckpointId).Select(g => g.MaxBy(r => r.Position)!).ToList();
        for (DiskLayer? l = top; l is not null; l = l.ParentId is Guid p ? byId.GetValueOrDefault(p) : null)
        {
            var hit = tops.Where(t => t.LayerId == l.Id).Select(t => ready[t.CheckpointId]).MaxBy(c => c.CreatedAt);
            if (hit is not null) return hit.Id;
        }
        return null;
    }

    private async Task<List<FreezePlan>> PlanFreezeAsync(VmHost h, IReadOnlyList<DeviceInfo>? devices, CancellationToken ct)
    {
        var layers = await storage.LayersAsync(h.Id, ct);
        var plans = new List<FreezePlan>();
        foreach (var old in layers.Where(l => l.IsActive).OrderBy(l => l.DiskName, StringComparer.Ordinal))
        {
            if (devices is not null && devices.All(d => d.Backend != "drive-" + old.DiskName)) continue;
            var id = Guid.NewGuid();
            var file = Path.Combine(sup.Disks.DisksDir, Short(h.Id), $"{old.DiskName}-{Short(id)}.qcow2");
            var layer = new DiskLayer
            {
                Id = id, VmId = h.Id, DiskName = old.DiskName, File = Relative(file), Format = "qcow2", VirtualSize = old.VirtualSize,
                ParentId = old.Id, IsActive = true, CreatedAt = DateTimeOffset.UtcNow,
            };
            var cmd = new JsonObject { ["device"] = "drive-" + old.DiskName, ["snapshot-file"] = file, ["format"] = "qcow2" };
            plans.Add(new FreezePlan(old.DiskName, old, layer, cmd));
        }
        return plans;
    }

    private async Task<List<(string, List<DiskLayer>)>> FrozenChainsAsync(Guid vmId, IEnumerable<FreezePlan> plans, CancellationToken ct)
    {
        var byId = (await storage.LayersAsync(vmId, ct)).ToDictionary(l => l.Id);
        return plans.Select(p => (p.Disk, ChainOf(byId[p.Old.Id], byId))).ToList();
    }

    private async Task<LaunchFacts> PlannedFactsAsync(VmHost h, CancellationToken ct)
    {
        var files = await sup.Disks.ActiveFilesAsync(h.Id, ct);
        var ctx = await sup.LaunchContextAsync(h, files, incoming: false, ct);
        var plan = sup.Driver.BuildLaunch(ctx);
        return LaunchFacts.From(sup.Driver.Name, sup.EmulatorVersion ?? "", sup.Accelerator.Accelerator, plan.CpuModel, plan.Devices, plan.Argv, DataDir, ctx.Paths.RunDir, h.Id);
    }

    private LaunchFacts RunningFacts(VmHost h, EmulatorHandle e) =>
        LaunchFacts.From(sup.Driver.Name, e.Record.EmulatorVersion, e.Record.Accelerator, e.Record.CpuModel, e.Record.Devices, e.Record.Argv, DataDir, e.Record.RunDir, h.Id);

    private async Task<Capture> FreezeStoppedAsync(VmHost h, CancellationToken ct)
    {
        var plans = await PlanFreezeAsync(h, null, ct);
        var frozen = await FrozenChainsAsync(h.Id, plans, ct);
        foreach (var p in plans)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Absolute(p.New.File))!);
            await sup.Disks.CreateOverlayAsync(Absolute(p.Old.File), Absolute(p.New.File), ct);
            await storage.PushLayerAsync(p.New, CancellationToken.None);
        }
        return new Capture("disk-only", false, null, null, await PlannedFactsAsync(h, ct), frozen);
    }

    private async Task<Capture> FreezeRunningAsync(VmHost h, EmulatorHandle e, CancellationToken ct)
    {
        var plans = await PlanFreezeAsync(h, e.Record.Devices, ct);
        var frozen = await FrozenChainsAsync(h.Id, plans, ct);
        var replies = await e.Qmp.SendAsync(plans.Select(p => ("blockdev-snapshot-sync", (object?)p.Command)).ToList(), ct);
        await PushFrozenAsync(plans, replies);
        return new Capture("disk-only", false, null, null, RunningFacts(h, e), frozen);
    }

    /// <summary>Records each new top layer QEMU accepted (it writes there from now on), then reports the first failure.</summary>
    private async Task PushFrozenAsync(IReadOnlyList<FreezePlan> plans, IReadOnlyList<Task<System.Text.Json.JsonElement>> replies)
    {
        Exception? first = null;
        for (var i = 0; i < plans.Count; i++)
        {
            try
            {
                await QmpClient.AwaitReplyAsync("blockdev-snapshot-sync", replies[i], QmpClient.DefaultTimeout);
                await storage.PushLayerAsync(plans[i].New, CancellationToken.None);
            }
            catch (Exception ex) { first ??= ex; }
        }
        if (first is not null) throw first;
    }

    private sealed class MigrationWatch : IDisposable
    {
        private readonly QmpClient _qmp;
        private readonly PhaseClock? _clock;
        public TaskCompletionSource<string> Finished { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Stopped { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Resumed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public DateTimeOffset? StopAt { get; private set; }
        public DateTimeOffset? ResumeAt { get; private set; }

        public MigrationWatch(QmpClient qmp, PhaseClock? clock = null)
        {
            _qmp = qmp;
            _clock = clock;
            qmp.EventReceived += OnEvent;
        }

        private void OnEvent(QmpEvent ev)
        {
            switch (ev.Name)
            {
                case "STOP": StopAt ??= ev.At; Stopped.TrySetResult(); break;
                case "RESUME" when StopAt is not null: ResumeAt ??= ev.At; Resumed.TrySetResult(); break;
                case "MIGRATION" when ev.Data?.TryGetProperty("status", out var s) == true
                                      && s.GetString() is "completed" or "failed" or "cancelled" or "postmigrate":
                    if (Finished.TrySetResult(s.GetString()!)) _clock?.Mark("event-" + s.GetString());
                    break;
            }
        }

        public void Dispose() => _qmp.EventReceived -= OnEvent;
    }

    private async Task<Capture> StreamAsync(VmHost h, EmulatorHandle e, CheckpointRecord rec, string tmp, Guid jobId, bool wasRunning, PhaseClock clock, CancellationToken ct)
    {
        var qmp = e.Qmp;
        var total = (long)h.Vm.Spec.MemoryMiB * 1024 * 1024;
        var plans = await PlanFreezeAsync(h, e.Record.Devices, ct);
        var frozen = await FrozenChainsAsync(h.Id, plans, ct);
        var facts = RunningFacts(h, e);
        clock.Mark("planned");

        // The default max-bandwidth (128 MiB/s) would throttle even a stopped guest.
        await qmp.ExecuteAsync("migrate-set-parameters", new JsonObject { ["max-bandwidth"] = 0 }, ct);
        var background = rec.Mode == "live" && wasRunning && options.Value.BackgroundSnapshot && await TrySetCapabilitiesAsync(qmp, background: true, ct);
        if (!background) await TrySetCapabilitiesAsync(qmp, background: false, ct);
        // Only a background snapshot leaves the guest hung when its reader vanishes; started once, before the first.
        var kept = background && await keeper.EnsureStartedAsync(ct);
        clock.Mark(kept ? "keeper-ready" : "no-keeper");

        using var listener = StateStream.Listen(e.Paths.MigrationSocket);
        using var streamCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var lastReport = Stopwatch.StartNew();
        var receive = StateStream.ReceiveAsync(listener, Path.Combine(tmp, "state"), n =>
        {
            if (lastReport.ElapsedMilliseconds < 100) return;
            lastReport.Restart();
            sup.Jobs.Progress(jobId, n, Math.Max(n, total));
        }, streamCts.Token, kept ? conn => keeper.Hold(rec.Id, conn) : null);
        _ = receive.ContinueWith(_ => clock.Mark("sink-eof"), TaskScheduler.Default);
        using var watch = new MigrationWatch(qmp, clock);
        clock.Mark("configured");
        var migrate = ("migrate", (object?)new JsonObject { ["uri"] = "unix:" + e.Paths.MigrationSocket });
        var freeze = plans.Select(p => ("blockdev-snapshot-sync", (object?)p.Command)).ToList();
        string method;
        double? pause = null;
        Task<List<DiskChain>>? layers = null;
        var window = Stopwatch.StartNew();
        try
        {
            if (rec.Mode == "suspend" || !wasRunning || background)
            {
                // Point in time: stop, freeze the disks, start the stream of RAM as of now. With a background
                // snapshot QEMU itself resumes the guest once it has saved the device state; an explicit
                // 'cont' sent right behind 'migrate' would let the guest run between the disk freeze and
                // QEMU's own stop (measured: about 1 ms), so RAM and disks would no longer be one instant.
                var cmds = new List<(string, object?)>();
                if (wasRunning) cmds.Add(("stop", null));
                cmds.AddRange(freeze);
                cmds.Add(migrate);
                window.Restart();
                var replies = await qmp.SendAsync(cmds, ct);
                var offset = wasRunning ? 1 : 0;
                Exception? failure = null;
                try { if (wasRunning) await QmpClient.AwaitReplyAsync("stop", replies[0], QmpClient.DefaultTimeout, ct); }
                catch (Exception ex) { failure = ex; }
                try { await PushFrozenAsync(plans, replies.Skip(offset).Take(plans.Count).ToList()); }
                catch (Exception ex) { failure ??= ex; }
                try { await QmpClient.AwaitReplyAsync("migrate", replies[offset + plans.Count], QmpClient.DefaultTimeout, ct); }
                catch (Exception ex) { failure ??= ex; }
                if (failure is not null) throw failure;
                clock.Mark("migrate-accepted");
                // The disks are frozen now: digest them while the RAM streams.
                layers = DescribeLayersAsync(h.Id, frozen, ct);
                if (background)
                {
                    try { await watch.Resumed.Task.WaitAsync(TimeSpan.FromSeconds(10), ct); }
                    catch (TimeoutException) { await qmp.ExecuteAsync("cont", null, ct); }
                    pause = window.Elapsed.TotalMilliseconds;
                }
                method = background ? "background-snapshot" : wasRunning ? "stopped" : "paused";
                await WaitForStreamAsync(qmp, watch, e, receive, ct);
                clock.Mark("stream-on-disk");
            }
            else
            {
                // No background snapshots here (userfaultfd refused): migrate live; QEMU pauses at the end
                // (postmigrate), where the disks are frozen and the guest resumes.
                await qmp.ExecuteAsync("migrate", migrate.Item2, ct);
                await WaitForStreamAsync(qmp, watch, e, receive, ct);
                var replies = await qmp.SendAsync([.. freeze, ("cont", null)], ct);
                Exception? failure = null;
                try { await PushFrozenAsync(plans, replies.Take(plans.Count).ToList()); }
                catch (Exception ex) { failure = ex; }
                await QmpClient.AwaitReplyAsync("cont", replies[^1], QmpClient.DefaultTimeout, ct);
                if (failure is not null) throw failure;
                method = "live-migration";
            }
        }
        catch
        {
            await streamCts.CancelAsync();
            try { await qmp.ExecuteAsync("migrate_cancel", null, ct); } catch (Exception) { }
            if (rec.Mode == "live" && wasRunning)
            {
                try { await qmp.ExecuteAsync("cont", null, CancellationToken.None); } catch (Exception) { }
            }
            try { await receive; } catch (Exception) { }
            if (layers is not null) try { await layers; } catch (Exception) { }
            throw;
        }
        var received = await receive;
        clock.Note(received.Cost);
        if (watch.StopAt is { } s && watch.ResumeAt is { } r && r >= s) pause = (r - s).TotalMilliseconds is var p && p > 0 ? p : pause;
        if (rec.Mode == "suspend")
        {
            h.MarkStopRequested();
            try { await qmp.ExecuteAsync("quit", null, TimeSpan.FromSeconds(5), ct); } catch (QmpException) { }
            if (!await h.WaitForExitAsync(TimeSpan.FromSeconds(20), ct))
                throw new ApplianceError(500, "emulator-stuck", "Emulator did not exit", "The checkpoint was saved but the emulator did not quit.");
            pause = null;
        }
        sup.Jobs.Progress(jobId, received.Size, received.Size);
        return new Capture(method, wasRunning, pause, new StateFile { File = "state", Size = received.Size, Sha256 = received.Sha256 }, facts, frozen, layers);
    }

    private static async Task<bool> TrySetCapabilitiesAsync(QmpClient qmp, bool background, CancellationToken ct)
    {
        var caps = new JsonArray
        {
            new JsonObject { ["capability"] = "events", ["state"] = true },
            new JsonObject { ["capability"] = "background-snapshot", ["state"] = background },
        };
        try
        {
            await qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject { ["capabilities"] = caps }, ct);
            return true;
        }
        catch (QmpException) when (background)
        {
            return false;
        }
    }

    /// <summary>Waits until QEMU reports the migration finished and the appliance has the whole stream on disk.</summary>
    private static async Task WaitForStreamAsync(QmpClient qmp, MigrationWatch watch, EmulatorHandle e, Task<StateStream.Received> receive, CancellationToken ct)
    {
        while (true)
        {
            var tick = Task.Delay(250, ct);
            var first = await Task.WhenAny(watch.Finished.Task, e.Exited, receive, tick);
            if (first == e.Exited) throw new ApplianceError(500, "emulator-failed", "Emulator exited", "The emulator exited while the checkpoint was being written.");
            if (first == receive && receive.IsFaulted) await receive;
            var status = watch.Finished.Task.IsCompleted ? watch.Finished.Task.Result : await QueryMigrationAsync(qmp, ct);
            switch (status)
            {
                case "completed" or "postmigrate":
                    await receive.WaitAsync(TimeSpan.FromSeconds(30), ct);
                    return;
                case "failed" or "cancelled":
                    var info = await qmp.ExecuteAsync("query-migrate", null, ct);
                    var why = info.TryGetProperty("error-desc", out var d) ? d.GetString() : status;
                    throw new ApplianceError(500, "migration-failed", "Saving the state failed", $"The emulator could not write its state: {why}");
            }
        }
    }

    private static async Task<string> QueryMigrationAsync(QmpClient qmp, CancellationToken ct)
    {
        var info = await qmp.ExecuteAsync("query-migrate", null, ct);
        return info.TryGetProperty("status", out var s) ? s.GetString() ?? "" : "";
    }

    // ---- restore ------------------------------------------------------------------------------

    /// <summary>Checks compatibility and integrity without touching the VM; on success queues the restore.</summary>
    public async Task<JobSnapshot> RequestRestoreAsync(Guid checkpointId, bool force, CancellationToken ct)
    {
        var cp = await GetAsync(checkpointId, ct);
        if (cp.Status != CheckpointStatus.Ready)
            throw ApplianceError.Conflict("checkpoint-not-ready", $"Checkpoint '{cp.Name}' is {cp.Status}; only a ready checkpoint can be restored.");
        if (!sup.Driver.Capabilities.Contains(EmulatorCapability.Restore)) throw ApplianceError.Unsupported("restore", sup.Driver.Name);
        var h = sup.Host(cp.VmId);
        var manifest = ManifestJson.Parse(System.Text.Encoding.UTF8.GetBytes(cp.ManifestJson ?? "{}"));
        var clock = new PhaseClock();
        RequireRestoreState(h, force);
        await CheckCompatibleAsync(h, manifest, ct);
        clock.Mark("compared");
        await VerifyFilesAsync(cp, manifest, ct);
        clock.Mark("verified");
        var job = sup.Jobs.Create("restore", cp.VmId);
        _ = h.EnqueueAsync(async qct =>
        {
            sup.Jobs.Running(job.Id, $"restoring checkpoint '{cp.Name}'");
            try
            {
                clock.Mark("dequeued");
                var pause = await RestoreCoreAsync(h, cp, manifest, force, job.Id, clock, qct);
                sup.Jobs.Succeed(job.Id, new { checkpointId = cp.Id, state = h.Snapshot.State.ToWire(), restoreMs = pause });
            }
            catch (Exception e)
            {
                var (message, slug) = Describe(e);
                log.LogWarning(e, "VM {Vm}: restore of '{Name}' failed", h.Vm.Spec.Name, cp.Name);
                sup.Jobs.Fail(job.Id, message, slug);
            }
        });
        return job;
    }

    private static void RequireRestoreState(VmHost h, bool force)
    {
        var s = h.Snapshot.State;
        if (s is VmState.Stopped or VmState.Crashed) return;
        if (force && s is VmState.Running or VmState.Paused) return;
        if (s is VmState.Running or VmState.Paused)
            throw ApplianceError.Conflict("vm-running",
                $"VM '{h.Vm.Spec.Name}' is {s.ToWire()}; stop it first or pass force=true to power it off before restoring.",
                new Dictionary<string, object?> { ["state"] = s.ToWire() });
        h.RequireState("restore", VmState.Stopped, VmState.Crashed, VmState.Running, VmState.Paused);
    }

    /// <summary>What this appliance would launch for the VM now, in the manifest's terms.</summary>
    public async Task<IReadOnlyList<Difference>> CompareAsync(VmHost h, CheckpointManifest manifest, CancellationToken ct)
    {
        var files = h.Vm.Spec.Disks.ToDictionary(d => d.Name, d => Path.Combine(DataDir, "disks", "<restore>", d.Name));
        var ctx = await sup.LaunchContextAsync(h, files, incoming: true, ct);
        var plan = sup.Driver.BuildLaunch(ctx);
        var current = LaunchFacts.From(sup.Driver.Name, sup.EmulatorVersion ?? "", sup.Accelerator.Accelerator, plan.CpuModel, plan.Devices, plan.Argv, DataDir, ctx.Paths.RunDir, h.Id);
        var diffs = CompatibilityChecker.Compare(manifest, current);
        // A disk-only checkpoint carries no RAM or device state: only its disks must fit.
        return manifest.Mode == "disk-only" ? diffs.Where(d => d.Field.StartsWith("disks.", StringComparison.Ordinal)).ToList() : diffs;
    }

    private async Task CheckCompatibleAsync(VmHost h, CheckpointManifest manifest, CancellationToken ct)
    {
        var diffs = await CompareAsync(h, manifest, ct);
        if (diffs.Count == 0) return;
        throw ApplianceError.Conflict("checkpoint-incompatible",
            $"Checkpoint '{manifest.Name}' does not match what VM '{h.Vm.Spec.Name}' would start now ({diffs.Count} difference{(diffs.Count == 1 ? "" : "s")}: {string.Join(", ", diffs.Select(d => d.Field))}). The VM was not touched.",
            new Dictionary<string, object?> { ["differences"] = diffs });
    }

    private async Task VerifyFilesAsync(CheckpointRecord cp, CheckpointManifest manifest, CancellationToken ct)
    {
        var problems = new List<string>();
        if (manifest.State is { } state)
        {
            var path = Path.Combine(Absolute(cp.Folder), state.File);
            if (!File.Exists(path)) problems.Add("the state file is missing");
            else
            {
                var (size, sha) = await StateStream.DigestFileAsync(path, ct, dropCache: true);
                if (size != state.Size) problems.Add($"the state file has {size} bytes, the manifest says {state.Size}");
                else if (sha != state.Sha256) problems.Add("the state file's SHA-256 does not match the manifest");
            }
        }
        foreach (var d in manifest.Disks)
            foreach (var l in d.Layers)
            {
                var path = Absolute(l.File);
                if (!File.Exists(path)) problems.Add($"disk {d.Disk}: layer {l.File} is missing");
                else if (new FileInfo(path).Length != l.FileSize) problems.Add($"disk {d.Disk}: layer {l.File} changed size");
            }
        if (problems.Count > 0)
            throw new ApplianceError(422, "checkpoint-corrupt", "Checkpoint damaged",
                $"Checkpoint '{cp.Name}' cannot be restored: {string.Join("; ", problems)}. The VM was not touched.",
                extensions: new Dictionary<string, object?> { ["problems"] = problems });
    }

    private async Task<double> RestoreCoreAsync(VmHost h, CheckpointRecord cp, CheckpointManifest manifest, bool force, Guid jobId, PhaseClock clock, CancellationToken qct)
    {
        RequireRestoreState(h, force);
        await CheckCompatibleAsync(h, manifest, qct);
        clock.Mark("compared-again");
        var sw = Stopwatch.StartNew();
        if (h.Emulator is not null)
        {
            h.SetState(VmState.Stopping);
            await h.PoweroffCoreAsync(qct);
        }
        h.RequireState("restore", VmState.Stopped, VmState.Crashed);
        clock.Mark("powered-off");

        var overlays = new List<DiskLayer>();
        foreach (var d in manifest.Disks)
        {
            var top = d.Layers[^1];
            var id = Guid.NewGuid();
            var file = Path.Combine(sup.Disks.DisksDir, Short(h.Id), $"{d.Disk}-{Short(id)}.qcow2");
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            // The checkpoint's layer is only ever a read-only backing file: two restores are two independent overlays.
            await sup.Disks.CreateOverlayAsync(Absolute(top.File), file, qct);
            overlays.Add(new DiskLayer
            {
                Id = id, VmId = h.Id, DiskName = d.Disk, File = Relative(file), Format = "qcow2", VirtualSize = top.VirtualSize,
                ParentId = top.Id, IsActive = true, CreatedAt = DateTimeOffset.UtcNow,
            });
        }
        clock.Mark("overlays");
        try
        {
            if (manifest.State is null)
            {
                foreach (var o in overlays) await storage.PushLayerAsync(o, CancellationToken.None);
                await CollectLayersAsync(h.Id, CancellationToken.None);
                return sw.Elapsed.TotalMilliseconds;
            }
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(qct);
            cts.CancelAfter(TimeSpan.FromSeconds(options.Value.RestoreTimeoutSeconds));
            var ct = cts.Token;
            var files = overlays.ToDictionary(o => o.DiskName, o => Absolute(o.File));
            EmulatorHandle e;
            e = await sup.StartCoreAsync(h, ct, incoming: true, diskFiles: files);
            clock.Mark("emulator-started");
            try
            {
                await TrySetCapabilitiesAsync(e.Qmp, background: false, ct);
                await e.Qmp.ExecuteAsync("migrate-incoming", new JsonObject { ["uri"] = "unix:" + e.Paths.MigrationSocket }, ct);
                var statePath = Path.Combine(Absolute(cp.Folder), manifest.State.File);
                var lastReport = Stopwatch.StartNew();
                await StateStream.SendAsync(e.Paths.MigrationSocket, statePath, n =>
                {
                    if (lastReport.ElapsedMilliseconds < 100) return;
                    lastReport.Restart();
                    sup.Jobs.Progress(jobId, n, manifest.State.Size);
                }, TimeSpan.FromSeconds(10), ct);
                clock.Mark("stream-sent");
                // A stream QEMU never accepts leaves it in 'inmigrate' forever: the deadline above ends that.
                while (true)
                {
                    var status = (await e.Qmp.ExecuteAsync("query-status", null, ct)).GetProperty("status").GetString();
                    if (status is not ("inmigrate" or "restore-vm")) break;
                    if (e.Exited.IsCompleted) throw new ApplianceError(500, "restore-failed", "Restore failed", "The emulator exited while reading the checkpoint: " + sup.LogTail(h.Id, 3));
                    await Task.WhenAny(e.Exited, Task.Delay(10, ct));
                }
                var mig = await QueryMigrationAsync(e.Qmp, ct);
                clock.Mark("incoming-done");
                if (mig is "failed") throw new ApplianceError(500, "restore-failed", "Restore failed", "The emulator rejected the checkpoint's state: " + sup.LogTail(h.Id, 3));
                if (manifest.WasRunning) await e.Qmp.ExecuteAsync("cont", null, ct);
                clock.Mark("cont");
                foreach (var o in overlays) await storage.PushLayerAsync(o, CancellationToken.None);
                h.SetState(await h.QueryStateAsync(e, CancellationToken.None));
                clock.Mark("recorded");
            }
            catch
            {
                if (h.Emulator is not null)
                {
                    h.SetState(VmState.Stopping);
                    try { await h.PoweroffCoreAsync(CancellationToken.None); } catch (Exception) { }
                }
                throw;
            }
            sup.Jobs.Progress(jobId, manifest.State.Size, manifest.State.Size);
            await CollectLayersAsync(h.Id, CancellationToken.None);
            clock.Mark("collected");
            log.LogInformation("VM {Vm}: restored checkpoint '{Name}' in {Ms} ms: {Phases}", h.Vm.Spec.Name, cp.Name, sw.ElapsedMilliseconds, clock);
            return sw.Elapsed.TotalMilliseconds;
        }
        catch
        {
            var active = (await storage.LayersAsync(h.Id, CancellationToken.None)).Select(l => l.Id).ToHashSet();
            foreach (var o in overlays.Where(o => !active.Contains(o.Id))) TryDeleteFile(Absolute(o.File));
            throw;
        }
    }

    // ---- delete and space ---------------------------------------------------------------------

    public async Task DeleteAsync(Guid checkpointId, CancellationToken ct)
    {
        var cp = await GetAsync(checkpointId, ct);
        var h = sup.Host(cp.VmId);
        await h.EnqueueAsync(async qct =>
        {
            var now = await store.GetAsync(checkpointId, qct) ?? throw ApplianceError.NotFound("Checkpoint", checkpointId.ToString());
            if (now.Status == CheckpointStatus.Saving)
                throw ApplianceError.Conflict("checkpoint-busy", $"Checkpoint '{now.Name}' is still being saved.");
            await store.DeleteAsync(checkpointId, CancellationToken.None);
            TryDeleteDir(Absolute(now.Folder));
            await CollectLayersAsync(cp.VmId, CancellationToken.None);
        });
    }

    /// <summary>
    /// Deletes every layer of the VM that neither its disks (the active layers and what they are based on)
    /// nor any checkpoint needs. Runs on the VM's queue.
    /// </summary>
    public async Task<int> CollectLayersAsync(Guid vmId, CancellationToken ct)
    {
        var layers = await storage.LayersAsync(vmId, ct);
        var keep = ActiveChains(layers);
        foreach (var r in await store.LayerRefsForVmAsync(vmId, ct)) keep.Add(r.LayerId);
        var n = 0;
        foreach (var l in layers.Where(l => !keep.Contains(l.Id)).OrderByDescending(l => l.CreatedAt))
        {
            TryDeleteFile(Absolute(l.File));
            await storage.DeleteLayerAsync(l.Id, ct);
            n++;
        }
        return n;
    }

    /// <summary>Layers (and checkpoints) that keep a VM from being deleted.</summary>
    public async Task<IReadOnlySet<Guid>> HeldByCheckpointsAsync(Guid vmId, CancellationToken ct)
    {
        var held = (await store.LayerRefsForVmAsync(vmId, ct)).Select(r => r.LayerId).ToHashSet();
        foreach (var cp in await store.ForVmAsync(vmId, ct))
        {
            if (cp.Status == CheckpointStatus.Failed) continue;
            held.Add(cp.Id);
        }
        return held;
    }

    // ---- recovery -----------------------------------------------------------------------------

    /// <summary>
    /// After a crash or kill -9: removes temp folders, checkpoints that never completed and folders no row
    /// names, so a save interrupted at any point leaves either a complete checkpoint or none.
    /// </summary>
    public async Task RecoverAsync(CancellationToken ct)
    {
        Directory.CreateDirectory(CheckpointsDir);
        foreach (var cp in await store.WithStatusAsync(CheckpointStatus.Saving, ct))
        {
            log.LogWarning("Removing checkpoint '{Name}' of VM {Vm}: its save was interrupted", cp.Name, cp.VmId);
            TryDeleteDir(Absolute(cp.Folder));
            TryDeleteDir(Path.Combine(VmFolder(cp.VmId), ".tmp-" + cp.Id.ToString("N")));
            await store.DeleteAsync(cp.Id, ct);
        }
        foreach (var dir in Directory.EnumerateDirectories(CheckpointsDir, ".import-*")) TryDeleteDir(dir);
        foreach (var vmDir in Directory.EnumerateDirectories(CheckpointsDir))
        {
            var name = Path.GetFileName(vmDir);
            if (name.StartsWith('.')) continue;
            foreach (var dir in Directory.EnumerateDirectories(vmDir))
            {
                var leaf = Path.GetFileName(dir);
                if (leaf.StartsWith(".tmp-", StringComparison.Ordinal)) { TryDeleteDir(dir); continue; }
                if (Guid.TryParseExact(leaf, "N", out var id) && await store.GetAsync(id, ct) is null)
                {
                    log.LogWarning("Removing {Dir}: no checkpoint record names it", dir);
                    TryDeleteDir(dir);
                }
            }
            if (!Directory.EnumerateFileSystemEntries(vmDir).Any()) TryDeleteDir(vmDir);
        }
    }

    private void TryDeleteDir(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { log.LogWarning("Could not remove {Dir}: {Error}", dir, e.Message); }
    }

    private void TryDeleteFile(string file)
    {
        try { File.Delete(file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { log.LogWarning("Could not remove {File}: {Error}", file, e.Message); }
    }
}
