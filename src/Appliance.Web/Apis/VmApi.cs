using System.Text.Json;
using System.Text.Json.Nodes;
using Appliance.Core;
using Appliance.Core.Errors;
using Appliance.Core.Host;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;
using Appliance.Data;
using Appliance.Web.Infrastructure;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;

namespace Appliance.Web.Apis;

public static class VmApi
{
    public static RouteGroupBuilder MapVmApi(this RouteGroupBuilder api)
    {
        var g = api.MapGroup("/vms").WithTags("VMs");
        g.MapGet("/", List).WithName("ListVms").WithSummary("List VMs, filtered by tag or state, paged.")
            .ProducesValidationProblem();
        g.MapPost("/", Create).WithName("CreateVm").WithSummary("Create a VM, optionally from a template (demo).")
            .Accepts<VmCreateRequest>("application/json")
            .ProducesProblem(400).ProducesProblem(409).ProducesProblem(413).ProducesProblem(415);
        g.MapGet("/{id}", Get).WithName("GetVm").WithSummary("Get a VM by name or UUID.").ProducesProblem(404);
        g.MapPut("/{id}", Replace).WithName("ReplaceVm").WithSummary("Replace a VM's definition (If-Match for optimistic concurrency).")
            .Accepts<VmSpec>("application/json")
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(412).ProducesProblem(413).ProducesProblem(415);
        g.MapPatch("/{id}", Patch).WithName("PatchVm").WithSummary("Change some fields of a VM's definition (JSON merge patch, RFC 7396).")
            .Accepts<JsonObject>("application/merge-patch+json", "application/json")
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(412).ProducesProblem(413).ProducesProblem(415);
        g.MapDelete("/{id}", Delete).WithName("DeleteVm").WithSummary("Delete a stopped VM and its disks.")
            .ProducesProblem(404).ProducesProblem(409).ProducesProblem(412);
        return g;
    }

    public static VmResource ToResource(Vm vm, Supervisor sup)
    {
        var s = sup.Snapshot(vm.Id);
        return VmResource.From(vm, s is null ? null : new VmRuntimeInfo
        {
            State = s.State, Pid = s.Pid, Accelerator = s.Accelerator, StartedAt = s.StartedAt,
            ExitCode = s.ExitCode, LastError = s.LastError, StateVersion = s.Version,
        });
    }

    private static string ETag(Vm vm) => $"\"v{vm.Version}\"";

    private static long? IfMatch(HttpRequest req, Vm current)
    {
        var h = req.Headers.IfMatch.ToString();
        if (string.IsNullOrWhiteSpace(h) || h.Trim() == "*") return null;
        var tags = h.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (tags.Contains(ETag(current))) return current.Version;
        throw new ApplianceError(412, "precondition-failed", "Precondition failed",
            $"The VM changed since you read it: If-Match {h} does not match the current ETag {ETag(current)}. Read it again and retry.",
            extensions: new Dictionary<string, object?> { ["currentETag"] = ETag(current) });
    }

    private static async Task<Ok<Page<VmResource>>> List(VmRepository repo, Supervisor sup,
        string? tag = null, string? state = null, int offset = 0, int limit = 50, CancellationToken ct = default)
    {
        var errors = new Dictionary<string, string[]>();
        VmState? st = null;
        if (state is not null)
        {
            if (VmStateNames.TryParse(state, out var s)) st = s;
            else errors["state"] = [$"'{state}' is not a state: one of {string.Join(", ", VmStateNames.All)}."];
        }
        if (offset < 0) errors["offset"] = ["Must be 0 or more."];
        if (limit is < 1 or > 500) errors["limit"] = [$"{limit} is out of range: accepted 1..500."];
        if (errors.Count > 0) throw ApplianceError.Validation(errors);
        // State lives in the supervisor; filter on its view so the list agrees with GET.
        var all = await repo.ListAsync(new VmQuery(tag, null, 0, int.MaxValue), ct);
        var items = all.Items.Select(v => ToResource(v, sup)).Where(v => st is null || v.State == st).ToList();
        return TypedResults.Ok(new Page<VmResource>(items.Skip(offset).Take(limit).ToList(), items.Count, offset, limit));
    }

    private static async Task<Results<Ok<VmResource>, NotFound>> Get(string id, VmRepository repo, Supervisor sup, HttpResponse res, CancellationToken ct)
    {
        var vm = await repo.GetAsync(id, ct);
        res.Headers.ETag = ETag(vm);
        return TypedResults.Ok(ToResource(vm, sup));
    }

    private static async Task<Created<VmResource>> Create(HttpContext ctx, VmRepository repo, Supervisor sup, IHostInfo host, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<VmCreateRequest>(ctx);
        var spec = VmTemplates.Apply(req);
        Validate(spec, host);
        var vm = await sup.CreateVmAsync(spec, ct);
        ctx.Response.Headers.ETag = ETag(vm);
        return TypedResults.Created($"/api/v1/vms/{vm.Id}", ToResource(vm, sup));
    }

    private static async Task<Ok<VmResource>> Replace(string id, HttpContext ctx, VmRepository repo, Supervisor sup, IHostInfo host, CancellationToken ct)
    {
        var current = await repo.GetAsync(id, ct);
        var spec = await JsonBody.ReadAsync<VmSpec>(ctx);
        return await Save(ctx, current, spec, repo, sup, host, ct);
    }

    private static async Task<Ok<VmResource>> Patch(string id, HttpContext ctx, VmRepository repo, Supervisor sup, IHostInfo host, CancellationToken ct)
    {
        var current = await repo.GetAsync(id, ct);
        var patch = await JsonBody.ReadNodeAsync(ctx, allowMergePatch: true);
        if (patch is not JsonObject) throw ApplianceError.Field("$", "Expected a JSON object (a merge patch).");
        var merged = JsonBody.MergePatch(JsonSerializer.SerializeToNode(current.Spec, ApplianceJson.Strict), patch)!;
        var spec = JsonBody.Bind<VmSpec>(merged);
        return await Save(ctx, current, spec, repo, sup, host, ct);
    }

    private static async Task<Ok<VmResource>> Save(HttpContext ctx, Vm current, VmSpec spec, VmRepository repo, Supervisor sup, IHostInfo host, CancellationToken ct)
    {
        var expected = IfMatch(ctx.Request, current) ?? current.Version;
        Validate(spec, host);
        var updated = await sup.UpdateVmAsync(current, spec, expected, ct)
            ?? throw new ApplianceError(412, "precondition-failed", "Precondition failed",
                "The VM was changed by another request while this one was processed. Read it again and retry.");
        ctx.Response.Headers.ETag = ETag(updated);
        return TypedResults.Ok(ToResource(updated, sup));
    }

    private static async Task<NoContent> Delete(string id, HttpContext ctx, VmRepository repo, Supervisor sup, CancellationToken ct)
    {
        var current = await repo.GetAsync(id, ct);
        var expected = IfMatch(ctx.Request, current);
        await sup.DeleteVmAsync(current, expected, ct);
        return TypedResults.NoContent();
    }

    private static void Validate(VmSpec spec, IHostInfo host)
    {
        var errors = VmValidator.Validate(spec, host);
        if (errors.Count > 0) throw ApplianceError.Validation(errors);
    }
}
