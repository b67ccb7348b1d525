using Appliance.Core.Errors;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Mvc;

namespace Appliance.Web.Infrastructure;

/// <summary>RFC 9457 problem documents for every error the API returns.</summary>
public static class Problems
{
    public const string TypePrefix = "urn:appliance:problem:";

    public static ProblemDetails From(ApplianceError e, HttpContext? ctx = null)
    {
        var p = new ProblemDetails
        {
            Type = TypePrefix + e.Slug,
            Title = e.Title,
            Status = e.Status,
            Detail = e.Message,
            Instance = ctx?.Request.Path,
        };
        if (e.Errors is not null) p.Extensions["errors"] = e.Errors;
        if (e.Extensions is not null)
            foreach (var (k, v) in e.Extensions) p.Extensions[k] = v;
        return p;
    }

    /// <summary>Gives problems the framework writes itself (unknown route, wrong method, wrong media type) our stable types.</summary>
    public static void Normalize(ProblemDetailsContext ctx)
    {
        var p = ctx.ProblemDetails;
        if (p.Type?.StartsWith(TypePrefix, StringComparison.Ordinal) == true) return;
        var (slug, detail) = p.Status switch
        {
            400 => ("bad-request", "The request is not valid."),
            401 => ("unauthenticated", "Sign in or send a bearer token."),
            403 => ("forbidden", "Your role does not allow this."),
            404 => ("not-found", $"Nothing is served at {ctx.HttpContext.Request.Path}."),
            405 => ("method-not-allowed", $"{ctx.HttpContext.Request.Method} is not allowed on {ctx.HttpContext.Request.Path}."),
            413 => ("payload-too-large", "The request body is too large."),
            415 => ("unsupported-media-type", $"Content-Type '{ctx.HttpContext.Request.ContentType}' is not accepted here; send application/json."),
            429 => ("too-many-requests", "Too many requests; retry later."),
            _ => ("error", p.Title ?? "The request failed."),
        };
        p.Type = TypePrefix + slug;
        p.Detail ??= detail;
        p.Instance ??= ctx.HttpContext.Request.Path;
    }

    public static IResult Result(ApplianceError e, HttpContext? ctx = null) =>
        TypedResults.Problem(From(e, ctx));

    /// <summary>Maps exceptions to problems; never leaks a stack trace.</summary>
    public sealed class ExceptionHandler(ILogger<ExceptionHandler> log, IProblemDetailsService problems) : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext ctx, Exception exception, CancellationToken ct)
        {
            var error = exception switch
            {
                ApplianceError a => a,
                BadHttpRequestException { StatusCode: 413 } => new ApplianceError(413, "payload-too-large", "Request body too large", "The request body is larger than this endpoint accepts."),
                BadHttpRequestException b => new ApplianceError(b.StatusCode, "bad-request", "Bad request", b.Message),
                OperationCanceledException when ctx.RequestAborted.IsCancellationRequested => null,
                _ => null,
            };
            if (error is null)
            {
                if (ctx.RequestAborted.IsCancellationRequested) return true;
                log.LogError(exception, "Unhandled error on {Method} {Path}", ctx.Request.Method, ctx.Request.Path);
                error = new ApplianceError(500, "internal", "Internal error", "The appliance hit an unexpected error; it has been logged. Nothing was changed by this request unless stated otherwise.");
            }
            ctx.Response.StatusCode = error.Status;
            return await problems.TryWriteAsync(new ProblemDetailsContext { HttpContext = ctx, ProblemDetails = From(error, ctx), Exception = exception });
        }
    }
}
