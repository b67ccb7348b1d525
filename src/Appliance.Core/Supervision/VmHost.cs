using System.Text.Json;
using System.Threading.Channels;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Vms;
using Microsoft.Extensions.Logging;

namespace Appliance.Core.Supervision;

/// <summary>A running emulator as the supervisor holds it.</summary>
public sealed class EmulatorHandle
{
    public required int Pid { get; init; }
    public required long StartTicks { get; init; }
    public required bool IsChild { get; init; }
    public required RuntimePaths Paths { get; init; }
    public required QmpClient Qmp { get; init; }
    public required RuntimeRecord Record { get; init; }
    public SerialConsole? Serial { get; set; }
    /// <summary>Completes when the process has exited, with its exit code when known.</summary>
    public required Task<int?> Exited { get; init; }
}

/// <summary>
/// One VM's actor: every operation on the VM runs through its serialized queue, so two requests can
/// never drive the same emulator at once. Process exit is observed outside the queue, so an operation
/// waiting for the guest to power off sees it happen.
/// </summary>
public sealed class VmHost : IAsyncDisposable
{
    private readonly Supervisor _sup;
    private readonly ILogger _log;
    private readonly Channel<Func<Task>> _queue = Channel.CreateUnbounded<Func<Task>>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _cts = new();
    private readonly Lock _lock = new();
    private readonly Task _loop;
    private readonly List<DateTimeOffset> _crashRestarts = [];
    private VmSnapshot _snapshot;
    private bool _stopRequested;
    private bool _guestShutdown;
    // Completed while no emulator is attached; replaced on attach and completed once its exit is fully handled.
    private TaskCompletionSource _exitHandled = Completed();

    private static TaskCompletionSource Completed()
    {
        var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        t.SetResult();
        return t;
    }

    internal VmHost(Supervisor sup, Vm vm, ILogger log)
    {
        _sup = sup;
        _log = log;
        Vm = vm;
        _snapshot = new VmSnapshot { VmId = vm.Id, Name = vm.Spec.Name, State = vm.State, Version = sup.NextVersion(), At = DateTimeOffset.UtcNow };
        _loop = Task.Run(LoopAsync);
    }

    public Vm Vm { get; internal set; }
    public VmSnapshot Snapshot => _snapshot;
    public EmulatorHandle? Emulator { get; private set; }
    public Guid Id => Vm.Id;

    /// <summary>Runs <paramref name="work"/> on this VM's queue, after everything queued before it.</summary>
    public Task<T> EnqueueAsync<T>(Func<CancellationToken, Task<T>> work)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_queue.Writer.TryWrite(async () =>
            {
                try { tcs.TrySetResult(await work(_cts.Token)); }
                catch (Exception e) { tcs.TrySetException(e); }
            }))
            tcs.TrySetException(new ObjectDisposedException("VM host"));
        return tcs.Task;
    }

    public Task EnqueueAsync(Func<CancellationToken, Task> work) =>
        EnqueueAsync<bool>(async ct => { await work(ct); return true; });

    private async Task LoopAsync()
    {
        await foreach (var item in _queue.Reader.ReadAllAsync())
        {
            try { await item(); }
            catch (Exception e) { _log.LogError(e, "VM {Vm}: queued operation failed", Vm.Spec.Name); }
        }
    }

    public void SetState(VmState state, int? exitCode = null, string? error = null, bool keepError = false)
    {
        VmSnapshot next;
        lock (_lock)
        {
            var e = Emulator;
            next = _snapshot with
            {
                Name = Vm.Spec.Name,
                State = state,
                Version = _sup.NextVersion(),
                At = DateTimeOffset.UtcNow,
                Pid = e?.Pid,
                Accelerator = e?.Record.Accelerator,
                StartedAt = e?.Record.StartedAt,
                ExitCode = exitCode ?? (keepError ? _snapshot.ExitCode : null),
                LastError = error ?? (keepError ? _snapshot.LastError : null),
            };
            _snapshot = next;
        }
        _sup.Persist(next);
        _sup.Bus.Publish(new VmChanged(next));
    }

    public void RequireState(string action, params VmState[] allowed)
    {
        var s = _snapshot.State;
        if (!allowed.Contains(s))
            throw ApplianceError.Conflict("invalid-state",
                $"Cannot {action} VM '{Vm.Spec.Name}' while it is {s.ToWire()}; allowed when {string.Join(" or ", allowed.Select(a => a.ToWire()))}.",
                new Dictionary<string, object?> { ["state"] = s.ToWire(), ["allowedStates"] = allowed.Select(a => a.ToWire()).ToArray() });
    }

    // ---- attaching to an emulator ------------------------------------------------------------

    internal void Attach(EmulatorHandle e)
    {
        _stopRequested = false;
        _guestShutdown = false;
        _exitHandled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Emulator = e;
        e.Qmp.EventReceived += ev => OnQmpEvent(e, ev);
        _ = WatchExitAsync(e);
    }

    private void OnQmpEvent(EmulatorHandle e, QmpEvent ev)
    {
        _sup.Bus.Publish(new EmulatorEvent(Id, ev.Name, ev.Data?.GetRawText()));
        switch (ev.Name)
        {
            case "SHUTDOWN":
                _guestShutdown = true;
                break;
            case "STOP" when _snapshot.State == VmState.Running && ReferenceEquals(Emulator, e):
                SetState(VmState.Paused);
                break;
            case "RESUME" when _snapshot.State == VmState.Paused && ReferenceEquals(Emulator, e):
                SetState(VmState.Running);
                break;
        }
    }

    private async Task WatchExitAsync(EmulatorHandle e)
    {
        int? code;
        try { code = await e.Exited; }
        catch (OperationCanceledException) { return; }
        if (_cts.IsCancellationRequested) return;
        await OnExitedAsync(e, code);
    }

    private async Task OnExitedAsync(EmulatorHandle e, int? code)
    {
        if (!ReferenceEquals(Emulator, e)) return;
        var clean = _stopRequested || _guestShutdown;
        string? error = null;
        if (!clean)
        {
            var tail = _sup.LogTail(Id, 5);
            error = $"The emulator exited unexpectedly ({(code is null ? "exit code unknown: it was re-attached after an appliance restart" : code >= 128 ? $"killed by signal {code - 128}" : $"exit code {code}")})."
                    + (tail.Length > 0 ? " Last log lines: " + tail : "");
        }
        await DetachAsync(e);
        SetState(clean ? VmState.Stopped : VmState.Crashed, clean ? code : code ?? -1, error);
        _log.LogInformation("VM {Vm}: emulator exited ({Code}); now {State}", Vm.Spec.Name, code, _snapshot.State.ToWire());
        _exitHandled.TrySetResult();
        if (!clean && Vm.Spec.RestartPolicy == "on-crash") ScheduleCrashRestart();
    }

    private async Task DetachAsync(EmulatorHandle e)
    {
        Emulator = null;
        await e.Qmp.DisposeAsync();
        if (e.Serial is not null) await e.Serial.DisposeAsync();
        await _sup.Store.ClearRuntimeAsync(Id);
        _sup.CleanRunDir(e.Paths);
    }

    private void ScheduleCrashRestart()
    {
        var now = DateTimeOffset.UtcNow;
        _crashRestarts.RemoveAll(t => now - t > TimeSpan.FromMinutes(10));
        if (_crashRestarts.Count >= 3)
        {
            _log.LogWarning("VM {Vm}: crashed {N} times in 10 minutes; not restarting again", Vm.Spec.Name, _crashRestarts.Count);
            return;
        }
        var delay = TimeSpan.FromSeconds(Math.Pow(2, _crashRestarts.Count));
        _crashRestarts.Add(now);
        _ = Task.Run(async () =>
        {
            try
            {
                await Task.Delay(delay, _cts.Token);
                if (_snapshot.State == VmState.Crashed) _sup.RequestAction(Id, VmAction.Start);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ApplianceError) { }
        });
    }

    /// <summary>Waits until the emulator has exited and the exit has been handled, or the timeout passes.</summary>
    public async Task<bool> WaitForExitAsync(TimeSpan timeout, CancellationToken ct)
    {
        // Not 'Emulator is null': exit handling clears it before the state leaves 'stopping'.
        var handled = _exitHandled.Task;
        if (handled.IsCompleted) return true;
        try
        {
            await handled.WaitAsync(timeout, ct);
            return true;
        }
        catch (TimeoutException) { return false; }
    }

    // ---- operations (called on the queue) ----------------------------------------------------

    internal void MarkStopRequested() => _stopRequested = true;

    internal async Task ShutdownCoreAsync(TimeSpan timeout, CancellationToken ct)
    {
        RequireState("shut down", VmState.Running, VmState.Paused);
        var e = Emulator!;
        SetState(VmState.Stopping);
        _stopRequested = true;
        try
        {
            if (_snapshot.State == VmState.Paused) await e.Qmp.ExecuteAsync("cont", null, ct);
            await e.Qmp.ExecuteAsync("system_powerdown", null, ct);
        }
        catch (QmpException) { /* the exit watcher decides what happened */ }
        if (await WaitForExitAsync(timeout, ct)) return;
        _log.LogInformation("VM {Vm}: guest ignored ACPI power-down for {S} s; forcing off", Vm.Spec.Name, timeout.TotalSeconds);
        await ForceOffAsync(ct);
    }

    internal async Task PoweroffCoreAsync(CancellationToken ct)
    {
        RequireState("power off", VmState.Running, VmState.Paused, VmState.Stopping, VmState.Starting);
        SetState(VmState.Stopping);
        _stopRequested = true;
        await ForceOffAsync(ct);
    }

    private async Task ForceOffAsync(CancellationToken ct)
    {
        var e = Emulator;
        if (e is null)
        {
            await WaitForExitAsync(TimeSpan.FromSeconds(10), ct);
            return;
        }
        try { await e.Qmp.ExecuteAsync("quit", null, TimeSpan.FromSeconds(3), ct); }
        catch (QmpException) { }
        if (await WaitForExitAsync(TimeSpan.FromSeconds(10), ct)) return;
        NativeProcess.Signal(e.Pid, NativeProcess.SIGTERM);
        if (await WaitForExitAsync(TimeSpan.FromSeconds(5), ct)) return;
        NativeProcess.Signal(e.Pid, NativeProcess.SIGKILL);
        if (!await WaitForExitAsync(TimeSpan.FromSeconds(10), ct))
            throw new ApplianceError(500, "emulator-stuck", "Emulator did not exit", $"The emulator of '{Vm.Spec.Name}' (pid {e.Pid}) survived SIGKILL for 10 s.");
    }

    internal async Task PauseCoreAsync(CancellationToken ct)
    {
        RequireState("pause", VmState.Running);
        await Emulator!.Qmp.ExecuteAsync("stop", null, ct);
        SetState(VmState.Paused);
    }

    internal async Task ResumeCoreAsync(CancellationToken ct)
    {
        RequireState("resume", VmState.Paused);
        await Emulator!.Qmp.ExecuteAsync("cont", null, ct);
        SetState(VmState.Running);
    }

    internal async Task ResetCoreAsync(CancellationToken ct)
    {
        RequireState("reset", VmState.Running, VmState.Paused);
        await Emulator!.Qmp.ExecuteAsync("system_reset", null, ct);
        _sup.Bus.Publish(new VmChanged(_snapshot));
    }

    /// <summary>Asks QEMU for its run state and maps it to ours.</summary>
    internal async Task<VmState> QueryStateAsync(EmulatorHandle e, CancellationToken ct)
    {
        var r = await e.Qmp.ExecuteAsync("query-status", null, ct);
        var status = r.GetProperty("status").GetString();
        return status switch
        {
            "running" => VmState.Running,
            "inmigrate" or "restore-vm" => VmState.Restoring,
            "finish-migrate" or "postmigrate" => VmState.Paused,
            _ => r.TryGetProperty("running", out var run) && run.GetBoolean() ? VmState.Running : VmState.Paused,
        };
    }

    private int _disposed;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        await _cts.CancelAsync();
        _queue.Writer.TryComplete();
        try { await _loop.WaitAsync(TimeSpan.FromSeconds(5)); } catch (Exception) { }
        var e = Emulator;
        if (e is not null)
        {
            // Leave the emulator running: an appliance restart must not touch the guests.
            await e.Qmp.DisposeAsync();
            if (e.Serial is not null) await e.Serial.DisposeAsync();
        }
        _cts.Dispose();
    }

    internal static string ToJson<T>(T value) => JsonSerializer.Serialize(value, ApplianceJson.Strict);
}
