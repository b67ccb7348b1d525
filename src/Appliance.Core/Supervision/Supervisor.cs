using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Host;
using Appliance.Core.Storage;
using Appliance.Core.Vms;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Supervision;

public enum VmAction { Start, Shutdown, Poweroff, Pause, Resume, Reset, Restart }

/// <summary>
/// Launches, watches and re-attaches emulator processes. The database says what should be; the
/// supervisor finds what is: on start it reconciles every VM with the processes actually running.
/// </summary>
public sealed class Supervisor(
    IOptions<ApplianceOptions> options,
    IEmulatorDriver driver,
    IVmStore store,
    DiskService disks,
    IStorageStore storage,
    IHostInfo host,
    EventBus bus,
    JobTracker jobs,
    ILogger<Supervisor> log) : IHostedService, IAsyncDisposable
{
    private readonly ConcurrentDictionary<Guid, VmHost> _hosts = new();
    private readonly SemaphoreSlim _admission = new(1, 1);
    private long _version;

    public EventBus Bus => bus;
    public IVmStore Store => store;
    public IEmulatorDriver Driver => driver;
    public JobTracker Jobs => jobs;
    public ApplianceOptions Options => options.Value;
    public DiskService Disks => disks;
    public AcceleratorDetector.Choice Accelerator { get; private set; } = new("tcg", "not yet detected");
    public string? EmulatorVersion { get; private set; }

    internal long NextVersion() => Interlocked.Increment(ref _version);

    public string DataDir => options.Value.ResolvedDataDirectory;
    public string LogsDir => Path.Combine(DataDir, "logs");
    public string LogPath(Guid vmId) => Path.Combine(LogsDir, $"{vmId}.log");
    public string SerialLogPath(Guid vmId) => Path.Combine(LogsDir, $"{vmId}-serial.log");

    /// <summary>Unix socket paths may not exceed 107 bytes; when the data directory is deep, sockets move to a short base.</summary>
    public RuntimePaths RuntimePathsFor(Guid vmId) => RuntimePaths.For(DataDir, vmId);

    public VmSnapshot? Snapshot(Guid vmId) => _hosts.TryGetValue(vmId, out var h) ? h.Snapshot : null;

    public IReadOnlyList<VmSnapshot> Snapshots() => _hosts.Values.Select(h => h.Snapshot).OrderBy(s => s.Name).ToList();

    public VmHost Host(Guid vmId) => _hosts.TryGetValue(vmId, out var h) ? h : throw ApplianceError.NotFound("VM", vmId.ToString());

    public SerialConsole? Serial(Guid vmId) => Host(vmId).Emulator?.Serial;

    // ---- lifecycle of the service ------------------------------------------------------------

    public async Task StartAsync(CancellationToken ct)
    {
        Directory.CreateDirectory(LogsDir);
        Accelerator = AcceleratorDetector.Detect(options.Value.Accelerator);
        log.LogInformation("Accelerator: {Accel} ({Reason})", Accelerator.Accelerator, Accelerator.Reason);
        try { EmulatorVersion = await driver.GetVersionAsync(ct); }
        catch (Exception e) when (e is not OperationCanceledException) { log.LogWarning("Emulator not usable: {Error}", e.Message); }

        var vms = await store.AllAsync(ct);
        foreach (var vm in vms) _hosts[vm.Id] = new VmHost(this, vm, log);
        // One task per VM: a hung emulator cannot hold up the others (libvirt's qemuProcessReconnect does the same).
        await Task.WhenAll(_hosts.Values.Select(h => ReconcileAsync(h, ct)));
    }

    public async Task StopAsync(CancellationToken ct) => await DisposeAsync();

    public async ValueTask DisposeAsync()
    {
        foreach (var h in _hosts.Values) await h.DisposeAsync();
        _hosts.Clear();
    }

    private async Task ReconcileAsync(VmHost h, CancellationToken ct)
    {
        try
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(TimeSpan.FromSeconds(20));
            await h.EnqueueAsync(async _ => await ReconcileCoreAsync(h, cts.Token));
        }
        catch (Exception e)
        {
            log.LogError(e, "VM {Vm}: reconcile failed", h.Vm.Spec.Name);
        }
    }

    private async Task ReconcileCoreAsync(VmHost h, CancellationToken ct)
    {
        var rec = await store.GetRuntimeAsync(h.Id, ct);
        var paths = rec is not null ? new RuntimePaths(rec.RunDir) : RuntimePathsFor(h.Id);
        var pid = rec?.Pid ?? ReadPidFile(paths.PidFile);
        var (lastCode, lastError) = await store.GetLastExitAsync(h.Id, ct);
        if (pid is int p && IsOurEmulator(p, h.Id, rec?.PidStartTicks))
        {
            try
            {
                var qmp = await QmpClient.ConnectAsync(paths.QmpSocket, TimeSpan.FromSeconds(5), ct);
                var record = rec ?? new RuntimeRecord
                {
                    VmId = h.Id, Pid = p, PidStartTicks = NativeProcess.StartTicks(p) ?? 0, RunDir = paths.RunDir,
                    Accelerator = "unknown", CpuModel = "unknown", EmulatorVersion = qmp.QemuVersion ?? "", StartedAt = DateTimeOffset.UtcNow,
                    Argv = NativeProcess.CommandLine(p),
                };
                if (rec is null) await store.SaveRuntimeAsync(record, ct);
                var handle = new EmulatorHandle
                {
                    Pid = p, StartTicks = record.PidStartTicks, IsChild = false, Paths = paths, Qmp = qmp, Record = record,
                    Exited = WatchForeignExitAsync(p, qmp),
                };
                h.Attach(handle);
                var state = await h.QueryStateAsync(handle, ct);
                await Storage.LayerReconciler.ReconcileAsync(h.Id, h.Vm.Spec.Name, qmp, storage, disks, log, ct);
                if (h.Vm.Spec.SerialConsole) handle.Serial = new SerialConsole(paths.SerialSocket);
                h.SetState(state);
                log.LogInformation("VM {Vm}: re-attached to running emulator pid {Pid} ({State})", h.Vm.Spec.Name, p, state.ToWire());
                return;
            }
            catch (Exception e) when (e is QmpException or IOException or System.Net.Sockets.SocketException or OperationCanceledException)
            {
                // Alive but not answering: never kill a guest we cannot talk to; report it.
                log.LogWarning("VM {Vm}: emulator pid {Pid} is alive but QMP does not answer: {Error}", h.Vm.Spec.Name, p, e.Message);
                h.SetState(VmState.Crashed, null, $"The emulator (pid {p}) is running but does not answer on its control socket: {e.Message}");
                return;
            }
        }
        if (rec is not null) await store.ClearRuntimeAsync(h.Id, ct);
        CleanRunDir(paths);
        var was = h.Vm.State;
        if (was is VmState.Stopped) h.SetState(VmState.Stopped, lastCode, lastError);
        else if (was is VmState.Crashed) h.SetState(VmState.Crashed, lastCode, lastError);
        else if (was is VmState.Stopping) h.SetState(VmState.Stopped);
        else h.SetState(VmState.Crashed, null, $"The emulator was gone when the appliance started (the VM was {was.ToWire()}).");
    }

    private static int? ReadPidFile(string path)
    {
        try { return int.TryParse(File.ReadAllText(path).Trim(), out var p) ? p : null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>pid + start time + the VM's UUID on the command line: a reused pid is never mistaken for our emulator.</summary>
    private static bool IsOurEmulator(int pid, Guid vmId, long? startTicks)
    {
        if (!NativeProcess.IsAlive(pid)) return false;
        if (startTicks is long t && t != 0 && NativeProcess.StartTicks(pid) != t) return false;
        var argv = NativeProcess.CommandLine(pid);
        var i = argv.ToList().IndexOf("-uuid");
        return i >= 0 && i + 1 < argv.Count && argv[i + 1] == vmId.ToString();
    }

    private static async Task<int?> WatchForeignExitAsync(int pid, QmpClient qmp)
    {
        // Not our child, so no waitpid: the QMP socket closing is the prompt signal, /proc the proof.
        while (true)
        {
            await Task.WhenAny(qmp.Closed, Task.Delay(TimeSpan.FromSeconds(1)));
            if (!NativeProcess.IsAlive(pid)) return null;
            if (qmp.Closed.IsCompleted) await Task.Delay(100);
        }
    }

    internal void CleanRunDir(RuntimePaths paths)
    {
        try { if (Directory.Exists(paths.RunDir)) Directory.Delete(paths.RunDir, recursive: true); }
        catch (IOException e) { log.LogWarning("Could not remove {Dir}: {Error}", paths.RunDir, e.Message); }
    }

    internal void Persist(VmSnapshot s)
    {
        try { store.SetStateAsync(s.VmId, s.State, s.ExitCode, s.LastError).GetAwaiter().GetResult(); }
        catch (Exception e) { log.LogError(e, "Could not persist state of {Vm}", s.Name); }
    }

    public string LogTail(Guid vmId, int lines)
    {
        try
        {
            var all = File.ReadAllLines(LogPath(vmId));
            return string.Join(" | ", all.Where(l => !l.StartsWith("=== ", StringComparison.Ordinal)).TakeLast(lines)).Trim();
        }
        catch (IOException) { return ""; }
    }

    // ---- definitions -------------------------------------------------------------------------

    public async Task<Vm> CreateVmAsync(VmSpec spec, CancellationToken ct = default)
    {
        var vm = await store.InsertAsync(spec, ct);
        try
        {
            await disks.EnsureDisksAsync(vm.Id, spec, ct);
        }
        catch
        {
            await disks.DeleteAllAsync(vm.Id, null, CancellationToken.None);
            await store.DeleteAsync(vm.Id, null, CancellationToken.None);
            throw;
        }
        var h = new VmHost(this, vm, log);
        _hosts[vm.Id] = h;
        h.SetState(VmState.Stopped);
        return vm;
    }

    public Task<Vm?> UpdateVmAsync(Vm current, VmSpec spec, long expectedVersion, CancellationToken ct = default)
    {
        var h = Host(current.Id);
        return h.EnqueueAsync(async qct =>
        {
            var updated = await store.UpdateSpecAsync(current.Id, spec, expectedVersion, ct);
            if (updated is null) return null;
            h.Vm = updated with { State = h.Snapshot.State };
            if (h.Snapshot.State is VmState.Stopped or VmState.Crashed) await disks.EnsureDisksAsync(updated.Id, spec, ct);
            h.SetState(h.Snapshot.State, keepError: true);
            return updated;
        });
    }

    /// <summary>Called before a VM's rows go; lets checkpoints keep the layers they hold.</summary>
    public Func<Guid, CancellationToken, Task<IReadOnlySet<Guid>>>? LayersHeldByOthers { get; set; }

    public async Task DeleteVmAsync(Vm current, long? expectedVersion, CancellationToken ct = default)
    {
        var h = Host(current.Id);
        await h.EnqueueAsync(async _ =>
        {
            h.RequireState("delete", VmState.Stopped, VmState.Crashed);
            var keep = LayersHeldByOthers is null ? null : await LayersHeldByOthers(current.Id, ct);
            if (keep is { Count: > 0 })
                throw ApplianceError.Conflict("vm-has-checkpoints", $"VM '{current.Spec.Name}' has checkpoints; delete them first.");
            // The rows go first (disk layer rows cascade); files only once the delete is committed.
            var layers = await storage.LayersAsync(current.Id, ct);
            if (!await store.DeleteAsync(current.Id, expectedVersion, ct))
                throw new ApplianceError(412, "precondition-failed", "Precondition failed", "The VM changed since you read it; read it again and retry.");
            disks.DeleteFiles(current.Id, layers);
            TryDelete(LogPath(current.Id));
            TryDelete(SerialLogPath(current.Id));
        });
        if (_hosts.TryRemove(current.Id, out var removed)) await removed.DisposeAsync();
        bus.Publish(new VmRemoved(current.Id, current.Spec.Name));
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { }
    }

    // ---- actions -----------------------------------------------------------------------------

    private static readonly Dictionary<VmAction, (EmulatorCapability Cap, VmState[] Allowed)> Rules = new()
    {
        [VmAction.Start] = (EmulatorCapability.Start, [VmState.Stopped, VmState.Crashed]),
        [VmAction.Shutdown] = (EmulatorCapability.Shutdown, [VmState.Running, VmState.Paused]),
        [VmAction.Poweroff] = (EmulatorCapability.Poweroff, [VmState.Running, VmState.Paused, VmState.Stopping, VmState.Starting]),
        [VmAction.Pause] = (EmulatorCapability.Pause, [VmState.Running]),
        [VmAction.Resume] = (EmulatorCapability.Resume, [VmState.Paused]),
        [VmAction.Reset] = (EmulatorCapability.Reset, [VmState.Running, VmState.Paused]),
        [VmAction.Restart] = (EmulatorCapability.Reset, [VmState.Running, VmState.Paused]),
    };

    public static string Verb(VmAction a) => a.ToString().ToLowerInvariant();

    /// <summary>Checks the request against the VM's current state, then queues it as a job.</summary>
    public JobSnapshot RequestAction(Guid vmId, VmAction action, TimeSpan? shutdownTimeout = null)
    {
        var h = Host(vmId);
        var (cap, allowed) = Rules[action];
        if (!driver.Capabilities.Contains(cap)) throw ApplianceError.Unsupported(Verb(action), driver.Name);
        h.RequireState(Verb(action), allowed);
        var job = jobs.Create(Verb(action), vmId);
        var timeout = shutdownTimeout ?? TimeSpan.FromSeconds(options.Value.ShutdownTimeoutSeconds);
        _ = h.EnqueueAsync(async ct =>
        {
            jobs.Running(job.Id);
            try
            {
                switch (action)
                {
                    case VmAction.Start: await StartCoreAsync(h, ct); break;
                    case VmAction.Shutdown: await h.ShutdownCoreAsync(timeout, ct); break;
                    case VmAction.Poweroff: await h.PoweroffCoreAsync(ct); break;
                    case VmAction.Pause: await h.PauseCoreAsync(ct); break;
                    case VmAction.Resume: await h.ResumeCoreAsync(ct); break;
                    case VmAction.Reset: await h.ResetCoreAsync(ct); break;
                    case VmAction.Restart:
                        await h.ShutdownCoreAsync(timeout, ct);
                        await StartCoreAsync(h, ct);
                        break;
                }
                jobs.Succeed(job.Id, new { state = h.Snapshot.State.ToWire() });
            }
            catch (ApplianceError e) { jobs.Fail(job.Id, e.Message, e.Slug); }
            catch (Exception e) when (e is QmpException or IOException or ToolFailedException or System.ComponentModel.Win32Exception)
            {
                jobs.Fail(job.Id, e.Message, "emulator-error");
            }
        });
        return job;
    }

    private async Task AdmitAsync(VmHost h)
    {
        var total = host.TotalMemoryMiB;
        var reserve = options.Value.HostMemoryReserveMiB;
        var committed = _hosts.Values
            .Where(o => o.Id != h.Id && o.Snapshot.State is not (VmState.Stopped or VmState.Crashed))
            .Sum(o => (long)o.Vm.Spec.MemoryMiB);
        var requested = h.Vm.Spec.MemoryMiB;
        if (committed + requested > total - reserve)
            throw ApplianceError.Conflict("insufficient-memory",
                $"Starting '{h.Vm.Spec.Name}' needs {requested} MiB, but {committed} MiB are committed to running VMs and {reserve} MiB are reserved for the host out of {total} MiB: {Math.Max(0, total - reserve - committed)} MiB available.",
                new Dictionary<string, object?>
                {
                    ["requestedMiB"] = requested, ["committedMiB"] = committed, ["hostMemoryMiB"] = total,
                    ["reserveMiB"] = reserve, ["availableMiB"] = Math.Max(0, total - reserve - committed),
                });
        await Task.CompletedTask;
    }

    /// <summary>Starts the VM's emulator. With <paramref name="incoming"/> QEMU waits for a migration stream (restore).</summary>
    public async Task<EmulatorHandle> StartCoreAsync(VmHost h, CancellationToken ct, bool incoming = false,
        IReadOnlyDictionary<string, string>? diskFiles = null, Func<LaunchContext, LaunchContext>? adjust = null)
    {
        h.RequireState(incoming ? "restore" : "start", VmState.Stopped, VmState.Crashed);
        if (EmulatorVersion is null)
            throw new ApplianceError(503, "emulator-unavailable", "Emulator unavailable", $"The emulator at '{options.Value.QemuPath}' could not be run; install qemu-system-x86 or fix Appliance:QemuPath.");
        // Admission and the state change happen under one lock so two starts cannot both pass the memory check.
        await _admission.WaitAsync(ct);
        try
        {
            await AdmitAsync(h);
            h.SetState(incoming ? VmState.Restoring : VmState.Starting);
        }
        finally { _admission.Release(); }

        var spec = h.Vm.Spec;
        var paths = RuntimePathsFor(h.Id);
        int? pid = null;
        try
        {
            await disks.EnsureDisksAsync(h.Id, spec, ct);
            var files = diskFiles ?? await disks.ActiveFilesAsync(h.Id, ct);
            var ctx = await LaunchContextAsync(h, files, incoming, ct);
            if (adjust is not null) ctx = adjust(ctx);
            var plan = driver.BuildLaunch(ctx);

            CleanRunDir(paths);
            Directory.CreateDirectory(paths.RunDir);
            File.SetUnixFileMode(paths.RunDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            if (ctx.RunAsUser is { } runAs) QemuUser.GrantAccess(runAs, paths.RunDir, ctx.DiskFiles.Values);
            var logPath = LogPath(h.Id);
            await File.AppendAllTextAsync(logPath,
                $"=== {DateTimeOffset.UtcNow:O} starting {h.Vm.Spec.Name}: {string.Join(' ', plan.Argv.Select(QuoteForLog))}\n", ct);

            var env = new Dictionary<string, string> { ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin", ["LC_ALL"] = "C" };
            pid = NativeProcess.Spawn(plan.Argv, env, logPath);
            var exited = NativeProcess.WaitForChildAsync(pid.Value);
            var record = new RuntimeRecord
            {
                VmId = h.Id, Pid = pid.Value, PidStartTicks = NativeProcess.StartTicks(pid.Value) ?? 0, RunDir = paths.RunDir,
                Accelerator = Accelerator.Accelerator, CpuModel = plan.CpuModel, EmulatorVersion = EmulatorVersion,
                StartedAt = DateTimeOffset.UtcNow, Devices = plan.Devices, Argv = plan.Argv,
            };
            // Recorded before QMP answers: if the appliance dies now, the next start still finds this process.
            await store.SaveRuntimeAsync(record, ct);

            var qmp = await ConnectQmpAsync(paths.QmpSocket, exited, TimeSpan.FromSeconds(20), ct);
            var handle = new EmulatorHandle
            {
                Pid = pid.Value, StartTicks = record.PidStartTicks, IsChild = true, Paths = paths, Qmp = qmp, Record = record,
                Exited = exited.ContinueWith(t => (int?)t.Result, TaskScheduler.Default),
            };
            h.Attach(handle);
            if (spec.SerialConsole) handle.Serial = new SerialConsole(paths.SerialSocket);
            if (!incoming) h.SetState(await h.QueryStateAsync(handle, ct));
            log.LogInformation("VM {Vm}: started pid {Pid} ({Accel})", spec.Name, pid, Accelerator.Accelerator);
            return handle;
        }
        catch (Exception e)
        {
            if (pid is int p && h.Emulator is null)
            {
                NativeProcess.Signal(p, NativeProcess.SIGKILL);
                await store.ClearRuntimeAsync(h.Id, CancellationToken.None);
                CleanRunDir(paths);
            }
            if (h.Emulator is null)
            {
                var tail = LogTail(h.Id, 3);
                h.SetState(VmState.Stopped, null, $"Start failed: {e.Message}" + (tail.Length > 0 ? $" Emulator log: {tail}" : ""));
            }
            throw;
        }
    }

    /// <summary>The launch context a start of <paramref name="h"/> would use now; checkpoints compare its plan with a manifest.</summary>
    public async Task<LaunchContext> LaunchContextAsync(VmHost h, IReadOnlyDictionary<string, string> diskFiles, bool incoming, CancellationToken ct)
    {
        var spec = h.Vm.Spec;
        return new LaunchContext
        {
            VmId = h.Id, Spec = spec, Accelerator = Accelerator.Accelerator, Paths = RuntimePathsFor(h.Id),
            SerialLogPath = SerialLogPath(h.Id), DiskFiles = diskFiles,
            KernelPath = spec.KernelBoot is null ? null : await ImagePathAsync(spec.KernelBoot.Kernel, "kernelBoot.kernel", ct),
            InitrdPath = spec.KernelBoot?.Initrd is null ? null : await ImagePathAsync(spec.KernelBoot.Initrd, "kernelBoot.initrd", ct),
            CdromPath = spec.Cdrom is null ? null : await ImagePathAsync(spec.Cdrom, "cdrom", ct),
            FirmwarePath = spec.Firmware == "uefi" ? LinuxHostInfo.OvmfPath : null,
            Incoming = incoming,
            Sandbox = options.Value.QemuSandbox,
            RunAsUser = NativeProcess.geteuid() == 0 && !string.IsNullOrWhiteSpace(options.Value.QemuRunAsUser) ? options.Value.QemuRunAsUser : null,
        };
    }

    private async Task<QmpClient> ConnectQmpAsync(string socket, Task<int> exited, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        while (true)
        {
            if (exited.IsCompleted)
                throw new ApplianceError(500, "emulator-failed", "Emulator failed to start", $"The emulator exited during start-up with code {exited.Result}.");
            if (File.Exists(socket))
            {
                try { return await QmpClient.ConnectAsync(socket, TimeSpan.FromSeconds(5), ct); }
                catch (Exception e) when (e is System.Net.Sockets.SocketException or QmpException) { }
            }
            if (DateTimeOffset.UtcNow > deadline)
                throw new ApplianceError(500, "emulator-failed", "Emulator failed to start", $"The emulator did not open its control socket within {timeout.TotalSeconds:0} s.");
            await Task.WhenAny(exited, Task.Delay(50, ct));
        }
    }

    public async Task<string> ImagePathAsync(string name, string field, CancellationToken ct)
    {
        var img = await storage.FindImageAsync(name, ct)
            ?? throw ApplianceError.Conflict("image-missing", $"{field}: no image named '{name}' in the library.");
        return SafePath.Resolve(disks.ImagesDir, img.Name, field);
    }

    private static string QuoteForLog(string a) =>
        a.Length > 0 && a.All(c => char.IsLetterOrDigit(c) || "-_=.,:/+@".Contains(c)) ? a : "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    public static string FormatInvariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
