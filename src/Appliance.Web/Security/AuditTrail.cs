using System.Security.Claims;
using Appliance.Core.Errors;
using Appliance.Data;
using Microsoft.AspNetCore.Authentication.Cookies;

namespace Appliance.Web.Security;

/// <summary>Appends to the audit trail. The dashboard calls it for actions taken through Blazor; the API's middleware for every unsafe request.</summary>
public interface IAuditLog
{
    Task RecordAsync(ClaimsPrincipal? user, string action, string? target, int status, string? remoteAddress = null, string? detail = null, CancellationToken ct = default);
}

public sealed class AuditLog(SecurityRepository repo, TimeProvider clock, ILogger<AuditLog> log) : IAuditLog
{
    public async Task RecordAsync(ClaimsPrincipal? user, string action, string? target, int status, string? remoteAddress = null, string? detail = null, CancellationToken ct = default)
    {
        var rec = new AuditRecord
        {
            At = clock.GetUtcNow(),
            UserName = user?.Identity?.IsAuthenticated == true ? user.Identity.Name : null,
            AuthMethod = user?.Identity?.IsAuthenticated == true ? MethodOf(user) : null,
            RemoteAddr = remoteAddress,
            Action = action,
            Target = target,
            Status = status,
            Outcome = status switch { < 400 => "success", 401 or 403 => "denied", 429 => "throttled", < 500 => "rejected", _ => "failed" },
            Detail = detail,
        };
        try { await repo.AppendAuditAsync(rec, CancellationToken.None); }
        catch (Exception e) { log.LogError(e, "Could not append to the audit log: {Action} {Target} by {User}", action, target, rec.UserName); }
    }

    public static string MethodOf(ClaimsPrincipal user) =>
        user.Identity?.AuthenticationType == CookieAuthenticationDefaults.AuthenticationScheme ? "cookie"
        : user.FindFirst(Accounts.TokenIdClaim)?.Value is { } id ? "token:" + id : "bearer";
}

/// <summary>Marks a non-API endpoint whose unsafe requests are audited too (sign-in, sign-out).</summary>
public sealed record AuditedMetadata;

/// <summary>Lets a handler name the audited user and target where the route does not say them (e.g. sign-in).</summary>
public static class AuditContext
{
    public static void SetTarget(HttpContext ctx, string target) => ctx.Items["audit:target"] = target;
    public static void SetUser(HttpContext ctx, ClaimsPrincipal user) => ctx.Items["audit:user"] = user;
}

/// <summary>
/// Records every unsafe request to an API (or audited) endpoint: who, when, from where, what, target and outcome,
/// including the ones authorization turns away. Placed between authentication and authorization.
/// </summary>
public sealed class AuditMiddleware(RequestDelegate next)
{
    private static readonly string[] TargetKeys = ["id", "name", "tokenId", "checkpointId", "jobId"];

    public async Task InvokeAsync(HttpContext ctx, IAuditLog audit)
    {
        var ep = ctx.GetEndpoint();
        if (ep is not RouteEndpoint route || !SecurityEndpointExtensions.IsUnsafe(ctx.Request.Method)
            || (ep.Metadata.GetMetadata<ApiEndpointMetadata>() is null && ep.Metadata.GetMetadata<AuditedMetadata>() is null))
        {
            await next(ctx);
            return;
        }
        var status = 500;
        string? detail = null;
        try
        {
            await next(ctx);
            status = ctx.Response.StatusCode;
        }
        catch (ApplianceError e) { status = e.Status; detail = e.Slug; throw; }
        catch (BadHttpRequestException e) { status = e.StatusCode; throw; }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { status = 499; detail = "client went away"; throw; }
        catch { status = 500; throw; }
        finally
        {
            var user = ctx.Items["audit:user"] as ClaimsPrincipal ?? ctx.User;
            await audit.RecordAsync(user, $"{ctx.Request.Method} {Pattern(route)}", Target(ctx), status, ctx.Connection.RemoteIpAddress?.ToString(), detail);
        }
    }

    private static string Pattern(RouteEndpoint route) => "/" + (route.RoutePattern.RawText ?? "").Trim('/');

    private static string? Target(HttpContext ctx)
    {
        if (ctx.Items["audit:target"] is string t) return t;
        var values = ctx.Request.RouteValues;
        var parts = TargetKeys.Where(k => values.TryGetValue(k, out var v) && v is not null).Select(k => values[k]!.ToString()).ToList();
        if (parts.Count > 0) return string.Join('/', parts);
        var location = ctx.Response.Headers.Location.ToString();
        return location.Length > 0 ? location.Split('/')[^1] : null;
    }
}
