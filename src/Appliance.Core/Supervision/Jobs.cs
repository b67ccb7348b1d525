using System.Collections.Concurrent;
using System.Text.Json.Serialization;

namespace Appliance.Core.Supervision;

[JsonConverter(typeof(JsonStringEnumConverter<JobStatus>))]
public enum JobStatus
{
    [JsonStringEnumMemberName("queued")] Queued,
    [JsonStringEnumMemberName("running")] Running,
    [JsonStringEnumMemberName("succeeded")] Succeeded,
    [JsonStringEnumMemberName("failed")] Failed,
}

public sealed record JobSnapshot
{
    public Guid Id { get; init; }
    public string Kind { get; init; } = "";
    public Guid? VmId { get; init; }
    public JobStatus Status { get; init; }
    /// <summary>0..1 when known.</summary>
    public double? Progress { get; init; }
    public long? BytesDone { get; init; }
    public long? BytesTotal { get; init; }
    public string? Message { get; init; }
    public string? Error { get; init; }
    public string? ErrorType { get; init; }
    public object? Result { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset? FinishedAt { get; init; }
}

/// <summary>Long operations as jobs with an id, progress and an outcome, pushed as events.</summary>
public sealed class JobTracker(EventBus bus)
{
    private readonly ConcurrentDictionary<Guid, JobSnapshot> _jobs = new();
    private const int Keep = 1000;

    public JobSnapshot Create(string kind, Guid? vmId)
    {
        var j = new JobSnapshot { Id = Guid.NewGuid(), Kind = kind, VmId = vmId, Status = JobStatus.Queued, CreatedAt = DateTimeOffset.UtcNow };
        _jobs[j.Id] = j;
        bus.Publish(new JobChanged(j));
        Trim();
        return j;
    }

    public JobSnapshot? Get(Guid id) => _jobs.GetValueOrDefault(id);

    public IReadOnlyList<JobSnapshot> Recent(Guid? vmId = null, int limit = 50) =>
        _jobs.Values.Where(j => vmId is null || j.VmId == vmId).OrderByDescending(j => j.CreatedAt).Take(limit).ToList();

    public JobSnapshot Update(Guid id, Func<JobSnapshot, JobSnapshot> change)
    {
        while (true)
        {
            var old = _jobs[id];
            var next = change(old);
            if (_jobs.TryUpdate(id, next, old))
            {
                bus.Publish(new JobChanged(next));
                return next;
            }
        }
    }

    public void Running(Guid id, string? message = null) => Update(id, j => j with { Status = JobStatus.Running, Message = message ?? j.Message });

    public void Progress(Guid id, long done, long? total, string? message = null) =>
        Update(id, j => j with
        {
            BytesDone = done, BytesTotal = total,
            Progress = total is > 0 ? Math.Min(1.0, (double)done / total.Value) : j.Progress,
            Message = message ?? j.Message,
        });

    public void Succeed(Guid id, object? result = null, string? message = null) =>
        Update(id, j => j with { Status = JobStatus.Succeeded, Progress = 1, Result = result, Message = message ?? j.Message, FinishedAt = DateTimeOffset.UtcNow });

    public void Fail(Guid id, string error, string? errorType = null) =>
        Update(id, j => j with { Status = JobStatus.Failed, Error = error, ErrorType = errorType, FinishedAt = DateTimeOffset.UtcNow });

    private void Trim()
    {
        if (_jobs.Count <= Keep) return;
        foreach (var old in _jobs.Values.Where(j => j.FinishedAt is not null).OrderBy(j => j.CreatedAt).Take(_jobs.Count - Keep))
            _jobs.TryRemove(old.Id, out _);
    }
}
