using Appliance.Core.Supervision;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.SignalR;

namespace Appliance.Web.Hubs;

/// <summary>
/// Live events for API clients (the dashboard has its own circuit): <c>vm</c> with a VM's snapshot on every
/// state change, <c>vmRemoved</c>, and <c>job</c> with a job's progress and outcome. A client calls
/// <c>Snapshot()</c> after connecting to get the current state of every VM; snapshots carry a growing
/// <c>version</c>, so anything older than what the client holds can be ignored.
/// </summary>
[Authorize]
public sealed class EventsHub(Supervisor sup) : Hub
{
    public const string Path = "/hubs/events";

    public IReadOnlyList<VmSnapshot> Snapshot() => sup.Snapshots();
}

/// <summary>Relays the in-process event bus to every connected hub client.</summary>
public sealed class EventsRelay(EventBus bus, IHubContext<EventsHub> hub, ILogger<EventsRelay> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        using var sub = bus.Subscribe(4096);
        try
        {
            await foreach (var e in sub.Reader.ReadAllAsync(ct))
            {
                var send = e switch
                {
                    VmChanged c => hub.Clients.All.SendAsync("vm", c.Snapshot, ct),
                    VmRemoved r => hub.Clients.All.SendAsync("vmRemoved", new { r.VmId, r.Name }, ct),
                    JobChanged j => hub.Clients.All.SendAsync("job", j.Job, ct),
                    _ => Task.CompletedTask,
                };
                try { await send; }
                catch (Exception ex) when (ex is not OperationCanceledException) { log.LogWarning("Event relay: {Error}", ex.Message); }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
    }
}
