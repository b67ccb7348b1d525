using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Security;

/// <summary><c>Authorization: Bearer apl_...</c> against the hashed tokens in SQLite.</summary>
public sealed class BearerAuthenticationHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, Accounts accounts)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "Bearer";

    protected override async Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        var header = Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return AuthenticateResult.NoResult();
        var principal = await accounts.AuthenticateTokenAsync(header["Bearer ".Length..].Trim(), SchemeName, Context.RequestAborted);
        return principal is null
            ? AuthenticateResult.Fail("The bearer token is unknown, revoked or expired.")
            : AuthenticateResult.Success(new AuthenticationTicket(principal, SchemeName));
    }

    protected override Task HandleChallengeAsync(AuthenticationProperties properties) =>
        SecurityProblems.WriteAsync(Context, 401, "unauthenticated", "Authentication required",
            Request.Headers.Authorization.Count > 0
                ? "The bearer token is unknown, revoked or expired."
                : "Sign in, or send Authorization: Bearer <token> (POST /api/v1/auth/token issues one).");

    protected override Task HandleForbiddenAsync(AuthenticationProperties properties) => SecurityProblems.ForbiddenAsync(Context);
}

public static class SecurityProblems
{
    public static async Task WriteAsync(HttpContext ctx, int status, string slug, string title, string detail)
    {
        if (ctx.Response.HasStarted) return;
        ctx.Response.StatusCode = status;
        if (status == 401) ctx.Response.Headers.WWWAuthenticate = "Bearer";
        var problems = ctx.RequestServices.GetRequiredService<IProblemDetailsService>();
        await problems.WriteAsync(new ProblemDetailsContext
        {
            HttpContext = ctx,
            ProblemDetails = Infrastructure.Problems.From(new Core.Errors.ApplianceError(status, slug, title, detail), ctx),
        });
    }

    public static Task ForbiddenAsync(HttpContext ctx)
    {
        var need = ctx.GetEndpoint()?.Metadata.GetMetadata<MinimumRoleMetadata>()?.Role;
        var have = Roles.Of(ctx.User);
        return WriteAsync(ctx, 403, "forbidden", "Forbidden",
            need is null ? "Your role does not allow this." : $"This needs the {need.Value.ToWire()} role or higher; you are {have?.ToWire() ?? "unknown"}.");
    }
}
