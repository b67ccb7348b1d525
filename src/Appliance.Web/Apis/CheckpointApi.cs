using System.Text.Json;
using Appliance.Core.Checkpoints;
using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Data;
using Appliance.Web.Infrastructure;
using Microsoft.AspNetCore.Http.HttpResults;

namespace Appliance.Web.Apis;

public sealed record CheckpointCreateRequest
{
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    /// <summary><c>live</c> (default), <c>suspend</c> or <c>disk-only</c>.</summary>
    public string Mode { get; init; } = "live";
}

public sealed record CheckpointResource
{
    public Guid Id { get; init; }
    public Guid VmId { get; init; }
    public string Name { get; init; } = "";
    public string? Description { get; init; }
    public string Status { get; init; } = "";
    public string Mode { get; init; } = "";
    public string? Method { get; init; }
    public Guid? ParentId { get; init; }
    /// <summary>Bytes freed by deleting this checkpoint: its state, manifest and the layers only it holds.</summary>
    public long SizeBytes { get; init; }
    /// <summary>Bytes of layers this checkpoint shares with the VM's disks or other checkpoints.</summary>
    public long SharedBytes { get; init; }
    public long? StateBytes { get; init; }
    public double? GuestPauseMs { get; init; }
    public int FormatVersion { get; init; }
    public string? EmulatorVersion { get; init; }
    public string? Machine { get; init; }
    public int? MemoryMiB { get; init; }
    public string? Error { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public JsonElement? Manifest { get; init; }

    public static CheckpointResource From(CheckpointView v, bool withManifest) => new()
    {
        Id = v.Record.Id, VmId = v.Record.VmId, Name = v.Record.Name, Description = v.Record.Description, Status = v.Record.Status,
        Mode = v.Record.Mode, Method = v.Record.Method, ParentId = v.Record.ParentId, SizeBytes = v.SizeBytes, SharedBytes = v.SharedBytes,
        StateBytes = v.Record.StateSize, GuestPauseMs = v.Record.GuestPauseMs, FormatVersion = v.Record.FormatVersion,
        EmulatorVersion = v.Record.EmulatorVersion, Machine = v.Record.Machine, MemoryMiB = v.Record.MemoryMiB, Error = v.Record.Error,
        CreatedAt = v.Record.CreatedAt,
        Manifest = withManifest && v.Record.ManifestJson is { } m ? JsonDocument.Parse(m).RootElement.Clone() : null,
    };
}

public sealed record CheckpointList(IReadOnlyList<CheckpointResource> Items);

public sealed record CheckpointJob(Guid CheckpointId, JobSnapshot Job);

public sealed record ImportResult(CheckpointResource Checkpoint, bool Compatible, IReadOnlyList<Difference> Differences);

public static class CheckpointApi
{
    public static IServiceCollection AddCheckpoints(this IServiceCollection s, IConfiguration config)
    {
        s.AddOptions<CheckpointOptions>().Bind(config.GetSection(CheckpointOptions.Section));
        s.AddSingleton<CheckpointRepository>();
        s.AddSingleton<ICheckpointStore>(sp => sp.GetRequiredService<CheckpointRepository>());
        s.AddSingleton(StreamKeeperCommand.ForApp(typeof(Program).Assembly.Location));
        s.AddSingleton<StreamKeeperClient>();
        s.AddSingleton<CheckpointService>();
        s.AddSingleton<CheckpointArchive>();
        s.AddHostedService<CheckpointStartup>();
        return s;
    }

    public static RouteGroupBuilder MapCheckpointApi(this RouteGroupBuilder api)
    {
        var vm = api.MapGroup("/vms/{id}/checkpoints").WithTags("Checkpoints");
        vm.MapPost("/", Create).WithName("CreateCheckpoint")
            .WithSummary("Save a checkpoint (live: the VM keeps running; suspend: the VM stops after the save; disk-only: no RAM). A job; wait=true waits for it.")
            .Accepts<CheckpointCreateRequest>("application/json").Produces<CheckpointJob>(202).Produces<CheckpointResource>(201)
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(415).ProducesProblem(501).ProducesProblem(507);
        vm.MapGet("/", List).WithName("ListCheckpoints").WithSummary("A VM's checkpoints with the space each holds.").ProducesProblem(404);

        var g = api.MapGroup("/checkpoints").WithTags("Checkpoints");
        g.MapGet("/{checkpointId:guid}", Get).WithName("GetCheckpoint").WithSummary("A checkpoint and its manifest.").ProducesProblem(404);
        g.MapDelete("/{checkpointId:guid}", Delete).WithName("DeleteCheckpoint")
            .WithSummary("Delete a checkpoint: its state and every disk layer nothing else needs.").ProducesProblem(404).ProducesProblem(409);
        g.MapPost("/{checkpointId:guid}/restore", Restore).WithName("RestoreCheckpoint")
            .WithSummary("Restore the VM to the checkpoint (force=true powers a running VM off first). Refused with every difference listed when the VM no longer matches.")
            .Produces<JobSnapshot>(202).Produces<JobSnapshot>(200)
            .ProducesProblem(404).ProducesProblem(409).ProducesProblem(422).ProducesProblem(501);
        g.MapGet("/{checkpointId:guid}/export", Export).WithName("ExportCheckpoint")
            .WithSummary("One self-describing archive (tar: manifest.json, state, disk layers).").Produces(200, contentType: "application/x-tar").ProducesProblem(404).ProducesProblem(409);
        g.MapPost("/import", Import).WithName("ImportCheckpoint")
            .WithSummary("Import an exported archive for the VM it names (or ?vm=); digests and format version are checked; returns a compatibility report.")
            .Accepts<Stream>("application/x-tar").Produces<ImportResult>(201)
            .ProducesProblem(400).ProducesProblem(409).ProducesProblem(415).ProducesProblem(422).ProducesProblem(507);
        return vm;
    }

    private static async Task<IResult> Create(string id, HttpContext ctx, VmRepository repo, CheckpointService svc, Supervisor sup, bool? wait, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<CheckpointCreateRequest>(ctx);
        var errors = new Dictionary<string, string[]>();
        if (string.IsNullOrWhiteSpace(req.Name) || req.Name.Length > 100 || req.Name.Any(char.IsControl))
            errors["name"] = ["Required: 1-100 characters, no control characters."];
        if (req.Description is { Length: > 1000 }) errors["description"] = ["At most 1000 characters."];
        if (!CheckpointService.Modes.Contains(req.Mode)) errors["mode"] = [$"'{req.Mode}' is not a mode: one of {string.Join(", ", CheckpointService.Modes)}."];
        if (errors.Count > 0) throw ApplianceError.Validation(errors);
        var vm = await repo.GetAsync(id, ct);
        var (cp, job) = await svc.RequestSaveAsync(vm.Id, req.Name.Trim(), req.Description, req.Mode, ct);
        var location = $"/api/v1/checkpoints/{cp.Id}";
        if (wait != true) return TypedResults.Accepted(location, new CheckpointJob(cp.Id, job));
        var done = await LifecycleApi.WaitAsync(sup, job.Id, TimeSpan.FromMinutes(15), ct);
        if (done.Status == JobStatus.Failed) throw JobFailed(done);
        var view = (await svc.ListAsync(vm.Id, ct)).First(v => v.Record.Id == cp.Id);
        return TypedResults.Created(location, CheckpointResource.From(view, withManifest: false));
    }

    private static ApplianceError JobFailed(JobSnapshot done) =>
        new(done.ErrorType is "invalid-state" or "vm-running" or "checkpoint-incompatible" ? 409 : done.ErrorType == "checkpoint-corrupt" ? 422 : 500,
            done.ErrorType ?? "job-failed", "The operation failed", done.Error ?? "failed",
            extensions: new Dictionary<string, object?> { ["jobId"] = done.Id });

    private static async Task<Ok<CheckpointList>> List(string id, VmRepository repo, CheckpointService svc, CancellationToken ct)
    {
        var vm = await repo.GetAsync(id, ct);
        var items = (await svc.ListAsync(vm.Id, ct)).Select(v => CheckpointResource.From(v, withManifest: false)).ToList();
        return TypedResults.Ok(new CheckpointList(items));
    }

    private static async Task<Ok<CheckpointResource>> Get(Guid checkpointId, CheckpointService svc, CancellationToken ct)
    {
        var cp = await svc.GetAsync(checkpointId, ct);
        var view = (await svc.ListAsync(cp.VmId, ct)).First(v => v.Record.Id == checkpointId);
        return TypedResults.Ok(CheckpointResource.From(view, withManifest: true));
    }

    private static async Task<NoContent> Delete(Guid checkpointId, CheckpointService svc, CancellationToken ct)
    {
        await svc.DeleteAsync(checkpointId, ct);
        return TypedResults.NoContent();
    }

    private static async Task<IResult> Restore(Guid checkpointId, CheckpointService svc, Supervisor sup, bool? force, bool? wait, CancellationToken ct)
    {
        var job = await svc.RequestRestoreAsync(checkpointId, force ?? false, ct);
        if (wait != true) return TypedResults.Accepted($"/api/v1/jobs/{job.Id}", job);
        var done = await LifecycleApi.WaitAsync(sup, job.Id, TimeSpan.FromMinutes(10), ct);
        if (done.Status == JobStatus.Failed) throw JobFailed(done);
        return TypedResults.Ok(done);
    }

    private static async Task Export(Guid checkpointId, HttpContext ctx, CheckpointService svc, CheckpointArchive archive, CancellationToken ct)
    {
        var cp = await svc.GetAsync(checkpointId, ct);
        if (cp.Status != CheckpointStatus.Ready)
            throw ApplianceError.Conflict("checkpoint-not-ready", $"Checkpoint '{cp.Name}' is {cp.Status}; only a ready checkpoint can be exported.");
        var safeName = new string(cp.Name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray());
        ctx.Response.ContentType = "application/x-tar";
        ctx.Response.Headers.ContentDisposition = $"attachment; filename=\"checkpoint-{safeName}-{cp.Id:N}.tar\"";
        await archive.ExportAsync(cp, ctx.Response.Body, ct);
    }

    private static async Task<Created<ImportResult>> Import(HttpContext ctx, CheckpointArchive archive, CheckpointService svc, string? vm, CancellationToken ct)
    {
        var type = ctx.Request.ContentType ?? "";
        if (!type.StartsWith("application/x-tar", StringComparison.OrdinalIgnoreCase) && !type.StartsWith("application/octet-stream", StringComparison.OrdinalIgnoreCase))
            throw new ApplianceError(415, "unsupported-media-type", "Unsupported media type", $"Send the archive as application/x-tar; got '{type}'.");
        var max = ctx.RequestServices.GetRequiredService<Microsoft.Extensions.Options.IOptions<Appliance.Core.ApplianceOptions>>().Value.MaxUploadBytes;
        if (ctx.Request.ContentLength > max)
            throw new ApplianceError(413, "payload-too-large", "Request body too large", $"The archive exceeds the upload limit of {max} bytes.");
        if (ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } f) f.MaxRequestBodySize = max;
        var (cp, diffs) = await archive.ImportAsync(ctx.Request.Body, vm, ct);
        var view = (await svc.ListAsync(cp.VmId, ct)).First(v => v.Record.Id == cp.Id);
        return TypedResults.Created($"/api/v1/checkpoints/{cp.Id}", new ImportResult(CheckpointResource.From(view, withManifest: true), diffs.Count == 0, diffs));
    }
}

/// <summary>Cleans up after an interrupted save before requests are served, and keeps VMs with checkpoints from being deleted.</summary>
public sealed class CheckpointStartup(CheckpointService svc, Supervisor sup) : IHostedService
{
    public async Task StartAsync(CancellationToken ct)
    {
        sup.LayersHeldByOthers = svc.HeldByCheckpointsAsync;
        await svc.RecoverAsync(ct);
    }

    public Task StopAsync(CancellationToken ct) => Task.CompletedTask;
}
