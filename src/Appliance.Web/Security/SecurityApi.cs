using System.Security.Claims;
using Appliance.Core.Errors;
using Appliance.Data;
using Appliance.Web.Infrastructure;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;

namespace Appliance.Web.Security;

public static class SecurityApi
{
    public sealed record TokenRequest(string Username, string Password);
    public sealed record SessionToken(string Token, string TokenType, DateTimeOffset ExpiresAt, string User, string Role);
    public sealed record Me(string Name, string Role, string AuthMethod);
    public sealed record CsrfToken(string HeaderName, string Token);
    public sealed record TokenCreate(string Name, string Role, DateTimeOffset? ExpiresAt = null);
    public sealed record TokenInfo(Guid Id, string Name, string Role, string User, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt, DateTimeOffset? LastUsedAt, DateTimeOffset? RevokedAt)
    {
        public static TokenInfo From(TokenRecord t) => new(t.Id, t.Name, t.Role, t.UserName, t.CreatedAt, t.ExpiresAt, t.LastUsedAt, t.RevokedAt);
    }
    public sealed record TokenCreated(Guid Id, string Token, string Name, string Role, string User, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt);
    public sealed record UserCreate(string Name, string Role, string Password);
    public sealed record UserPatch(string? Role = null, string? Password = null, bool? Disabled = null);
    public sealed record UserInfo(Guid Id, string Name, string Role, bool Disabled, DateTimeOffset CreatedAt, DateTimeOffset UpdatedAt)
    {
        public static UserInfo From(UserRecord u) => new(u.Id, u.Name, u.Role, u.Disabled, u.CreatedAt, u.UpdatedAt);
    }
    public sealed record AuditPage(IReadOnlyList<AuditRecord> Items, int Total, int Offset, int Limit);

    /// <summary>The dashboard's sign-in and sign-out form targets (outside /api/v1).</summary>
    public static void MapLoginEndpoints(this IEndpointRouteBuilder app)
    {
        app.MapPost("/auth/login", Login).AllowAnonymous().RequireRateLimiting(LoginThrottle.Policy).WithMetadata(new AuditedMetadata())
            .DisableAntiforgery().ExcludeFromDescription();
        app.MapPost("/auth/logout", async (HttpContext ctx) =>
        {
            await ctx.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
            return Results.Redirect("/login?loggedOut=1");
        }).AllowAnonymous().WithMetadata(new AuditedMetadata()).ExcludeFromDescription();
    }

    public static RouteGroupBuilder MapSecurityApi(this RouteGroupBuilder api)
    {
        var auth = api.MapGroup("/auth").WithTags("Authentication");
        auth.MapPost("/token", IssueSessionToken).AllowAnonymous().RequireRateLimiting(LoginThrottle.Policy)
            .WithName("CreateSessionToken").WithSummary("Exchange a user name and password for a short-lived bearer token.")
            .WithDescription("For scripts: the token lasts one hour and carries the user's role. Rate-limited per client and per user name; a failure is answered after a delay.")
            .Accepts<TokenRequest>("application/json").Produces<SessionToken>(200)
            .ProducesProblem(400).ProducesProblem(401).ProducesProblem(415).ProducesProblem(429);
        auth.MapGet("/me", (ClaimsPrincipal user) => TypedResults.Ok(new Me(user.Identity!.Name!, Roles.Of(user)!.Value.ToWire(), AuditLog.MethodOf(user))))
            .WithName("GetCurrentUser").WithSummary("Who the request is authenticated as.");
        auth.MapGet("/csrf", (HttpContext ctx, IAntiforgery af) =>
        {
            var t = af.GetAndStoreTokens(ctx);
            return TypedResults.Ok(new CsrfToken(t.HeaderName!, t.RequestToken!));
        }).WithName("GetCsrfToken").WithSummary("Antiforgery token that cookie-authenticated clients send in the X-CSRF-TOKEN header on unsafe requests.");

        var tokens = api.MapGroup("/tokens").WithTags("API tokens");
        tokens.MapGet("/", ListTokens).WithName("ListTokens").WithSummary("Your named API tokens (all users' with all=true, admin only).").ProducesProblem(403);
        tokens.MapPost("/", CreateToken).WithName("CreateToken")
            .WithSummary("Create a named API token with a role no higher than yours and an optional expiry. The token is shown only in this answer.")
            .Accepts<TokenCreate>("application/json").Produces<TokenCreated>(201).ProducesProblem(400).ProducesProblem(403).ProducesProblem(415);
        tokens.MapDelete("/{tokenId:guid}", RevokeToken).WithName("RevokeToken").WithSummary("Revoke a token (your own; any, for an admin).")
            .ProducesProblem(403).ProducesProblem(404);

        var users = api.MapGroup("/users").WithTags("Users").RequireMinimumRole(Role.Admin);
        users.MapGet("/", async (SecurityRepository r, CancellationToken ct) => TypedResults.Ok((await r.UsersAsync(ct)).Select(UserInfo.From).ToList()))
            .WithName("ListUsers").WithSummary("All users.");
        users.MapPost("/", CreateUser).WithName("CreateUser").WithSummary("Create a user with a role (admin, operator, viewer).")
            .Accepts<UserCreate>("application/json").Produces<UserInfo>(201).ProducesProblem(400).ProducesProblem(409).ProducesProblem(415);
        users.MapGet("/{name}", async (string name, SecurityRepository r, CancellationToken ct) =>
                TypedResults.Ok(UserInfo.From(await r.FindUserAsync(name, ct) ?? throw ApplianceError.NotFound("User", name))))
            .WithName("GetUser").WithSummary("One user.").ProducesProblem(404);
        users.MapPatch("/{name}", PatchUser).WithName("UpdateUser").WithSummary("Change a user's role, password or disabled flag. Demoting or disabling revokes tokens above the new role.")
            .Accepts<UserPatch>("application/json").Produces<UserInfo>(200).ProducesProblem(400).ProducesProblem(404).ProducesProblem(409).ProducesProblem(415);
        users.MapDelete("/{name}", DeleteUser).WithName("DeleteUser").WithSummary("Delete a user and their tokens.").ProducesProblem(404).ProducesProblem(409);

        api.MapGet("/audit", ListAudit).RequireMinimumRole(Role.Admin).WithTags("Audit").WithName("ListAudit")
            .WithSummary("The audit trail, newest first; filter by user, action (substring), target and time [from, to). Read-only.")
            .ProducesProblem(400);
        return api;
    }

    private static async Task<IResult> Login(HttpContext ctx, Accounts accounts, LoginThrottle throttle, IAntiforgery af, CancellationToken ct)
    {
        if (!ctx.Request.HasFormContentType) return Results.Redirect("/login?error=invalid");
        var form = await ctx.Request.ReadFormAsync(ct);
        var returnUrl = SafeReturnUrl(form["returnUrl"].ToString());
        var back = "&returnUrl=" + Uri.EscapeDataString(returnUrl);
        // The login form is static SSR; its antiforgery token is checked here rather than by the endpoint filter,
        // so a stale form lands back on the login page instead of a bare 400.
        if (!await af.IsRequestValidAsync(ctx)) return Results.Redirect("/login?error=expired" + back);
        var name = form["username"].ToString().Trim();
        AuditContext.SetTarget(ctx, name);
        if (!throttle.TryAcquire(name))
        {
            ctx.Response.Headers.RetryAfter = "60";
            return Results.Redirect("/login?error=throttled" + back);
        }
        var user = await accounts.CheckPasswordAsync(name, form["password"].ToString(), ct);
        if (user is null || !Roles.TryParse(user.Role, out var role))
        {
            await throttle.FailureDelayAsync(ct);
            return Results.Redirect("/login?error=invalid" + back);
        }
        var principal = Accounts.Principal(user, role, CookieAuthenticationDefaults.AuthenticationScheme);
        AuditContext.SetUser(ctx, principal);
        await ctx.SignInAsync(CookieAuthenticationDefaults.AuthenticationScheme, principal, new AuthenticationProperties { IsPersistent = false });
        return Results.Redirect(returnUrl);
    }

    /// <summary>Only a local path: an absolute or protocol-relative URL would make the login page an open redirect.</summary>
    public static string SafeReturnUrl(string? url) =>
        !string.IsNullOrEmpty(url) && url.StartsWith('/') && !url.StartsWith("//") && !url.StartsWith("/\\") ? url : "/";

    private static async Task<Ok<SessionToken>> IssueSessionToken(HttpContext ctx, Accounts accounts, LoginThrottle throttle, TimeProvider clock, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<TokenRequest>(ctx);
        if (string.IsNullOrWhiteSpace(req.Username)) throw ApplianceError.Field("username", "Required.");
        if (req.Password is null) throw ApplianceError.Field("password", "Required.");
        AuditContext.SetTarget(ctx, req.Username);
        if (!throttle.TryAcquire(req.Username))
        {
            ctx.Response.Headers.RetryAfter = "60";
            throw new ApplianceError(429, "too-many-attempts", "Too many attempts", "Too many sign-in attempts for this user; wait a minute and try again.");
        }
        var user = await accounts.CheckPasswordAsync(req.Username, req.Password, ct);
        if (user is null || !Roles.TryParse(user.Role, out var role))
        {
            await throttle.FailureDelayAsync(ct);
            throw new ApplianceError(401, "invalid-credentials", "Invalid credentials", "The user name or password is wrong, or the account is disabled.");
        }
        var expires = clock.GetUtcNow() + Accounts.SessionTokenLifetime;
        var (_, token) = await accounts.IssueTokenAsync(user, "session", role, "session", expires, ct);
        AuditContext.SetUser(ctx, Accounts.Principal(user, role, BearerAuthenticationHandler.SchemeName));
        return TypedResults.Ok(new SessionToken(token, "Bearer", expires, user.Name, role.ToWire()));
    }

    private static Guid UserId(ClaimsPrincipal u) => Guid.Parse(u.FindFirstValue(ClaimTypes.NameIdentifier)!);

    private static async Task<Ok<List<TokenInfo>>> ListTokens(ClaimsPrincipal user, SecurityRepository repo, bool? all, CancellationToken ct)
    {
        if (all == true && Roles.Of(user) != Role.Admin) throw new ApplianceError(403, "forbidden", "Forbidden", "Listing every user's tokens needs the admin role.");
        return TypedResults.Ok((await repo.TokensAsync(all == true ? null : UserId(user), ct)).Select(TokenInfo.From).ToList());
    }

    private static async Task<Created<TokenCreated>> CreateToken(HttpContext ctx, ClaimsPrincipal user, Accounts accounts, TimeProvider clock, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<TokenCreate>(ctx);
        if (string.IsNullOrWhiteSpace(req.Name) || req.Name.Length > 100) throw ApplianceError.Field("name", "1-100 characters.");
        if (!Roles.TryParse(req.Role, out var role)) throw ApplianceError.Field("role", $"'{req.Role}' is not a role: one of {string.Join(", ", Roles.All)}.");
        var mine = Roles.Of(user)!.Value;
        if (role > mine) throw new ApplianceError(403, "role-too-high", "Role too high", $"A token's role may not exceed yours ({mine.ToWire()}).");
        if (req.ExpiresAt is { } e && e <= clock.GetUtcNow()) throw ApplianceError.Field("expiresAt", "Must be in the future.");
        var owner = await accounts.Repository.GetUserAsync(UserId(user), ct) ?? throw new ApplianceError(401, "unauthenticated", "Authentication required", "Your account no longer exists.");
        var (rec, token) = await accounts.IssueTokenAsync(owner, req.Name.Trim(), role, "api", req.ExpiresAt?.ToUniversalTime(), ct);
        return TypedResults.Created($"/api/v1/tokens/{rec.Id}", new TokenCreated(rec.Id, token, rec.Name, rec.Role, owner.Name, rec.CreatedAt, rec.ExpiresAt));
    }

    private static async Task<NoContent> RevokeToken(Guid tokenId, ClaimsPrincipal user, SecurityRepository repo, TimeProvider clock, CancellationToken ct)
    {
        var t = await repo.GetTokenAsync(tokenId, ct);
        // Someone else's token is "not found" to a non-admin, so ids cannot be probed.
        if (t is null || (t.UserId != UserId(user) && Roles.Of(user) != Role.Admin)) throw ApplianceError.NotFound("Token", tokenId.ToString());
        await repo.RevokeTokenAsync(t.Id, clock.GetUtcNow(), ct);
        return TypedResults.NoContent();
    }

    private static async Task<Created<UserInfo>> CreateUser(HttpContext ctx, Accounts accounts, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<UserCreate>(ctx);
        if (!Roles.TryParse(req.Role, out var role)) throw ApplianceError.Field("role", $"'{req.Role}' is not a role: one of {string.Join(", ", Roles.All)}.");
        var u = await accounts.CreateUserAsync(req.Name, role, req.Password, ct);
        return TypedResults.Created($"/api/v1/users/{u.Name}", UserInfo.From(u));
    }

    private static async Task<Ok<UserInfo>> PatchUser(string name, HttpContext ctx, ClaimsPrincipal me, Accounts accounts, CancellationToken ct)
    {
        var req = await JsonBody.ReadAsync<UserPatch>(ctx);
        var repo = accounts.Repository;
        var u = await repo.FindUserAsync(name, ct) ?? throw ApplianceError.NotFound("User", name);
        Role? role = null;
        if (req.Role is not null)
            role = Roles.TryParse(req.Role, out var r) ? r : throw ApplianceError.Field("role", $"'{req.Role}' is not a role: one of {string.Join(", ", Roles.All)}.");
        if (u.Id == UserId(me) && ((role is not null && role != Role.Admin) || req.Disabled == true))
            throw ApplianceError.Conflict("self-lockout", "You cannot demote or disable your own account; another admin must.");
        if (req.Password is not null) Accounts.ValidatePassword(req.Password);
        if (req.Password is not null) await accounts.SetPasswordAsync(u.Id, req.Password, ct);
        await repo.UpdateUserAsync(u.Id, role?.ToWire(), null, req.Disabled, ct);
        return TypedResults.Ok(UserInfo.From((await repo.GetUserAsync(u.Id, ct))!));
    }

    private static async Task<NoContent> DeleteUser(string name, ClaimsPrincipal me, SecurityRepository repo, CancellationToken ct)
    {
        var u = await repo.FindUserAsync(name, ct) ?? throw ApplianceError.NotFound("User", name);
        if (u.Id == UserId(me)) throw ApplianceError.Conflict("self-lockout", "You cannot delete your own account; another admin must.");
        await repo.DeleteUserAsync(u.Id, ct);
        return TypedResults.NoContent();
    }

    private static async Task<Ok<AuditPage>> ListAudit(SecurityRepository repo, string? user, string? action, string? target,
        DateTimeOffset? from, DateTimeOffset? to, int offset = 0, int limit = 100, CancellationToken ct = default)
    {
        var errors = new Dictionary<string, string[]>();
        if (offset < 0) errors["offset"] = ["Must be 0 or more."];
        if (limit is < 1 or > 1000) errors["limit"] = [$"{limit} is out of range: accepted 1..1000."];
        if (errors.Count > 0) throw ApplianceError.Validation(errors);
        var (items, total) = await repo.AuditAsync(new AuditQuery(user, action, target, from, to, offset, limit), ct);
        return TypedResults.Ok(new AuditPage(items, total, offset, limit));
    }
}
