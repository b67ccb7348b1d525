using System.Collections.Concurrent;
using System.Threading.Channels;
using Appliance.Core.Vms;

namespace Appliance.Core.Supervision;

/// <summary>An immutable picture of one VM's runtime state; <see cref="Version"/> grows with every change.</summary>
public sealed record VmSnapshot
{
    public Guid VmId { get; init; }
    public string Name { get; init; } = "";
    public VmState State { get; init; }
    public long Version { get; init; }
    public DateTimeOffset At { get; init; }
    public int? Pid { get; init; }
    public string? Accelerator { get; init; }
    public DateTimeOffset? StartedAt { get; init; }
    public int? ExitCode { get; init; }
    public string? LastError { get; init; }
}

public abstract record ApplianceEvent
{
    public long Seq { get; init; }
    public DateTimeOffset At { get; init; } = DateTimeOffset.UtcNow;
    public abstract string Kind { get; }
}

public sealed record VmChanged(VmSnapshot Snapshot) : ApplianceEvent { public override string Kind => "vm"; }

public sealed record VmRemoved(Guid VmId, string Name) : ApplianceEvent { public override string Kind => "vm-removed"; }

public sealed record JobChanged(JobSnapshot Job) : ApplianceEvent { public override string Kind => "job"; }

/// <summary>An event QEMU reported over QMP (SHUTDOWN, STOP, RESUME, RESET, POWERDOWN, MIGRATION, ...).</summary>
public sealed record EmulatorEvent(Guid VmId, string Name, string? DataJson) : ApplianceEvent { public override string Kind => "emulator"; }

/// <summary>
/// In-process fan-out of events. Each subscriber has its own bounded channel; a subscriber that falls
/// too far behind loses the oldest events rather than slowing the supervisor (it can re-read snapshots).
/// </summary>
public sealed class EventBus
{
    private readonly ConcurrentDictionary<long, Channel<ApplianceEvent>> _subs = new();
    private long _nextSub;
    private long _seq;

    public long Publish(ApplianceEvent e)
    {
        var seq = Interlocked.Increment(ref _seq);
        var stamped = e with { Seq = seq };
        foreach (var ch in _subs.Values) ch.Writer.TryWrite(stamped);
        return seq;
    }

    public Subscription Subscribe(int capacity = 1024)
    {
        var id = Interlocked.Increment(ref _nextSub);
        var ch = Channel.CreateBounded<ApplianceEvent>(new BoundedChannelOptions(capacity)
        {
            FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true,
        });
        _subs[id] = ch;
        return new Subscription(ch.Reader, () => { if (_subs.TryRemove(id, out var c)) c.Writer.TryComplete(); });
    }

    public sealed class Subscription(ChannelReader<ApplianceEvent> reader, Action dispose) : IDisposable
    {
        public ChannelReader<ApplianceEvent> Reader { get; } = reader;
        public void Dispose() => dispose();
    }
}
