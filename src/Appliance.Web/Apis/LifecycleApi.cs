using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Data;
using Microsoft.AspNetCore.Http.HttpResults;

namespace Appliance.Web.Apis;

public static class LifecycleApi
{
    public static RouteGroupBuilder MapLifecycleApi(this RouteGroupBuilder api)
    {
        var g = api.MapGroup("/vms/{id}").WithTags("VM lifecycle");
        foreach (var action in Enum.GetValues<VmAction>())
        {
            var verb = Supervisor.Verb(action);
            g.MapPost($"/{verb}", (string id, VmRepository repo, Supervisor sup, HttpContext ctx, int? timeoutSeconds, bool? wait, CancellationToken ct) =>
                    Act(id, action, repo, sup, ctx, timeoutSeconds, wait ?? false, ct))
                .WithName($"{char.ToUpperInvariant(verb[0])}{verb[1..]}Vm")
                .WithSummary(Summary(action))
                .Produces<JobSnapshot>(202).Produces<JobSnapshot>(200)
                .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(501);
        }
        var jobs = api.MapGroup("/jobs").WithTags("Jobs");
        jobs.MapGet("/{jobId:guid}", GetJob).WithName("GetJob").WithSummary("A long operation's progress and outcome.").ProducesProblem(404);
        jobs.MapGet("/", ListJobs).WithName("ListJobs").WithSummary("Recent jobs, newest first.");
        return g;
    }

    private static string Summary(VmAction a) => a switch
    {
        VmAction.Start => "Start the VM's emulator.",
        VmAction.Shutdown => "ACPI power-down; forced off after timeoutSeconds (default from configuration).",
        VmAction.Poweroff => "Power off at once (like pulling the plug).",
        VmAction.Pause => "Pause the vCPUs.",
        VmAction.Resume => "Resume paused vCPUs.",
        VmAction.Reset => "Hard reset the machine.",
        VmAction.Restart => "Shut down (as shutdown does) and start again.",
        _ => a.ToString(),
    };

    private static async Task<IResult> Act(string id, VmAction action, VmRepository repo, Supervisor sup, HttpContext ctx,
        int? timeoutSeconds, bool wait, CancellationToken ct)
    {
        if (timeoutSeconds is < 1 or > 3600)
            throw ApplianceError.Field("timeoutSeconds", $"{timeoutSeconds} is out of range: accepted 1..3600.");
        var vm = await repo.GetAsync(id, ct);
        var job = sup.RequestAction(vm.Id, action, timeoutSeconds is null ? null : TimeSpan.FromSeconds(timeoutSeconds.Value));
        var location = $"/api/v1/jobs/{job.Id}";
        if (!wait) return TypedResults.Accepted(location, job);
        var done = await WaitAsync(sup, job.Id, TimeSpan.FromMinutes(10), ct);
        if (done.Status == JobStatus.Failed)
            throw new ApplianceError(done.ErrorType == "invalid-state" ? 409 : done.ErrorType == "insufficient-memory" ? 409 : 500,
                done.ErrorType ?? "job-failed", "The operation failed", done.Error ?? "failed",
                extensions: new Dictionary<string, object?> { ["jobId"] = done.Id });
        return TypedResults.Ok(done);
    }

    public static async Task<JobSnapshot> WaitAsync(Supervisor sup, Guid jobId, TimeSpan timeout, CancellationToken ct)
    {
        using var sub = sup.Bus.Subscribe();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        var j = sup.Jobs.Get(jobId)!;
        while (j.Status is JobStatus.Queued or JobStatus.Running)
        {
            var e = await sub.Reader.ReadAsync(cts.Token);
            if (e is JobChanged jc && jc.Job.Id == jobId) j = jc.Job;
        }
        return j;
    }

    private static Results<Ok<JobSnapshot>, ProblemHttpResult> GetJob(Guid jobId, Supervisor sup) =>
        sup.Jobs.Get(jobId) is { } j ? TypedResults.Ok(j) : throw ApplianceError.NotFound("Job", jobId.ToString());

    private static Ok<IReadOnlyList<JobSnapshot>> ListJobs(Supervisor sup, Guid? vmId = null) => TypedResults.Ok(sup.Jobs.Recent(vmId));
}
