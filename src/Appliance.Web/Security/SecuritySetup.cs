using System.Security.Claims;
using System.Security.Cryptography;
using Appliance.Core;
using Appliance.Data;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Authorization;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Security;

public static class SecuritySetup
{
    public const string PolicyScheme = "appliance";
    public const string CsrfHeader = "X-CSRF-TOKEN";

    public static WebApplicationBuilder AddApplianceSecurity(this WebApplicationBuilder builder)
    {
        if (Environment.GetEnvironmentVariable("APPLIANCE_ADMIN_PASSWORD") is { Length: > 0 } pw && builder.Configuration[$"{SecurityOptions.Section}:AdminPassword"] is null)
            builder.Configuration[$"{SecurityOptions.Section}:AdminPassword"] = pw;
        var security = builder.Configuration.GetSection(SecurityOptions.Section).Get<SecurityOptions>() ?? new SecurityOptions();
        TlsSetup.Configure(builder, security);

        var s = builder.Services;
        s.AddOptions<SecurityOptions>().Bind(builder.Configuration.GetSection(SecurityOptions.Section));
        s.AddSingleton(TimeProvider.System);
        s.AddSingleton<SecurityRepository>();
        s.AddSingleton<Accounts>();
        s.AddSingleton<LoginThrottle>();
        s.AddSingleton<IAuditLog, AuditLog>();
        s.AddHostedService<SecurityStartup>();

        s.AddAuthentication(PolicyScheme)
            .AddPolicyScheme(PolicyScheme, "Cookie or bearer", o => o.ForwardDefaultSelector = ctx =>
                ctx.Request.Headers.Authorization.ToString().StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)
                    ? BearerAuthenticationHandler.SchemeName : CookieAuthenticationDefaults.AuthenticationScheme)
            .AddScheme<AuthenticationSchemeOptions, BearerAuthenticationHandler>(BearerAuthenticationHandler.SchemeName, null)
            .AddCookie(CookieAuthenticationDefaults.AuthenticationScheme, o =>
            {
                o.Cookie.Name = "appliance.session";
                o.Cookie.HttpOnly = true;
                o.Cookie.SameSite = SameSiteMode.Strict;
                o.Cookie.SecurePolicy = CookieSecurePolicy.SameAsRequest;
                o.SlidingExpiration = true;
                o.ExpireTimeSpan = TimeSpan.FromMinutes(Math.Max(1, security.SessionIdleMinutes));
                o.LoginPath = "/login";
                o.LogoutPath = "/auth/logout";
                o.ReturnUrlParameter = "returnUrl";
                o.Events.OnRedirectToLogin = ctx => WantsPage(ctx.HttpContext)
                    ? Redirect(ctx)
                    : SecurityProblems.WriteAsync(ctx.HttpContext, 401, "unauthenticated", "Authentication required",
                        "Sign in, or send Authorization: Bearer <token> (POST /api/v1/auth/token issues one).");
                o.Events.OnRedirectToAccessDenied = ctx => SecurityProblems.ForbiddenAsync(ctx.HttpContext);
                o.Events.OnValidatePrincipal = RevalidateAsync;
            });
        s.AddAuthorization(o =>
        {
            Roles.AddPolicies(o);
            // Everything needs a signed-in user unless it says otherwise, so an endpoint added later cannot be forgotten.
            o.FallbackPolicy = new AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build();
        });
        s.AddCascadingAuthenticationState();
        s.AddAntiforgery(o => o.HeaderName = CsrfHeader);
        s.AddRateLimiter(o => LoginThrottle.AddPolicy(o, security));
        s.Configure<Microsoft.AspNetCore.OpenApi.OpenApiOptions>("v1", OpenApiSecurity.Add);
        return builder;
    }

    /// <summary>Routing, then who the caller is, then the audit trail, then what they may do.</summary>
    public static WebApplication UseApplianceSecurity(this WebApplication app)
    {
        app.UseRouting();
        app.UseAuthentication();
        app.UseRateLimiter();
        app.UseMiddleware<AuditMiddleware>();
        app.UseAuthorization();
        app.Use(RequireCsrfTokenForCookieCalls);
        return app;
    }

    public static WebApplication UseSecurityHeaders(this WebApplication app)
    {
        app.Use((ctx, next) =>
        {
            var h = ctx.Response.Headers;
            // Scalar's API reference page bootstraps itself with an inline script; nothing else needs one.
            var docs = ctx.Request.Path.StartsWithSegments("/api/docs");
            h.ContentSecurityPolicy = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                + (docs ? "script-src 'self' 'unsafe-inline'; font-src 'self' data:; " : "script-src 'self'; ")
                + "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'";
            h.XContentTypeOptions = "nosniff";
            h.XFrameOptions = "SAMEORIGIN"; // the dashboard embeds the console pages; no other site may
            h["Referrer-Policy"] = "no-referrer";
            h["Cross-Origin-Opener-Policy"] = "same-origin";
            return next(ctx);
        });
        return app;
    }

    /// <summary>Browser navigations get the login page; API, websocket and script calls get a 401 problem.</summary>
    private static bool WantsPage(HttpContext ctx) =>
        HttpMethods.IsGet(ctx.Request.Method) && !ctx.WebSockets.IsWebSocketRequest
        && !ctx.Request.Path.StartsWithSegments("/api") && !ctx.Request.Path.StartsWithSegments("/hubs")
        && ctx.Request.Headers.Accept.ToString().Contains("text/html", StringComparison.OrdinalIgnoreCase);

    private static Task Redirect(RedirectContext<CookieAuthenticationOptions> ctx)
    {
        var path = ctx.Request.PathBase + ctx.Request.Path + ctx.Request.QueryString;
        ctx.Response.Redirect("/login?returnUrl=" + Uri.EscapeDataString(path));
        return Task.CompletedTask;
    }

    /// <summary>A session cookie follows every request the browser makes; a disabled, deleted or re-roled user is noticed on the next one.</summary>
    private static async Task RevalidateAsync(CookieValidatePrincipalContext ctx)
    {
        var id = ctx.Principal?.FindFirstValue(ClaimTypes.NameIdentifier);
        var repo = ctx.HttpContext.RequestServices.GetRequiredService<SecurityRepository>();
        var user = Guid.TryParse(id, out var g) ? await repo.GetUserAsync(g, ctx.HttpContext.RequestAborted) : null;
        if (user is null || user.Disabled || !Roles.TryParse(user.Role, out var role))
        {
            ctx.RejectPrincipal();
            await ctx.HttpContext.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
            return;
        }
        if (Roles.Of(ctx.Principal!) != role)
        {
            ctx.ReplacePrincipal(Accounts.Principal(user, role, CookieAuthenticationDefaults.AuthenticationScheme));
            ctx.ShouldRenew = true;
        }
    }

    /// <summary>
    /// Cookie-authenticated unsafe API calls must carry the antiforgery token (GET /api/v1/auth/csrf) in X-CSRF-TOKEN;
    /// bearer calls cannot be forged by another site and need none.
    /// </summary>
    private static async Task RequireCsrfTokenForCookieCalls(HttpContext ctx, RequestDelegate next)
    {
        if (SecurityEndpointExtensions.IsUnsafe(ctx.Request.Method)
            && ctx.User.Identity is { IsAuthenticated: true, AuthenticationType: CookieAuthenticationDefaults.AuthenticationScheme }
            && ctx.GetEndpoint()?.Metadata.GetMetadata<ApiEndpointMetadata>() is not null)
        {
            var af = ctx.RequestServices.GetRequiredService<IAntiforgery>();
            if (!await af.IsRequestValidAsync(ctx))
            {
                await SecurityProblems.WriteAsync(ctx, 403, "csrf-token-invalid", "Antiforgery token missing or invalid",
                    $"Cookie-authenticated requests that change something need the {CsrfHeader} header from GET /api/v1/auth/csrf (or use a bearer token).");
                return;
            }
        }
        await next(ctx);
    }
}

/// <summary>Creates the first <c>admin</c> on an empty user table, with the configured password or a generated one written once to an owner-only file.</summary>
public sealed class SecurityStartup(Accounts accounts, IOptions<SecurityOptions> security, IOptions<ApplianceOptions> appliance, TimeProvider clock, ILogger<SecurityStartup> log) : IHostedService
{
    public const string InitialPasswordFile = "initial-admin-password";

    public async Task StartAsync(CancellationToken ct)
    {
        await accounts.Repository.PurgeExpiredSessionsAsync(clock.GetUtcNow(), ct);
        if (await accounts.Repository.CountUsersAsync(ct) > 0) return;
        var configured = security.Value.AdminPassword;
        var password = string.IsNullOrEmpty(configured) ? Generate() : configured;
        await accounts.CreateUserAsync("admin", Role.Admin, password, ct);
        if (!string.IsNullOrEmpty(configured))
        {
            log.LogInformation("Created user 'admin' with the configured password");
            return;
        }
        var file = Path.Combine(appliance.Value.ResolvedDataDirectory, InitialPasswordFile);
        File.Delete(file);
        await using (var fs = new FileStream(file, new FileStreamOptions
        {
            Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        }))
        await using (var w = new StreamWriter(fs)) await w.WriteLineAsync(password);
        log.LogWarning("Created user 'admin' with generated password {Password} (also in {File}, readable only by its owner). Change it after signing in.", password, file);
    }

    private static string Generate()
    {
        const string alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        return string.Create(20, 0, (span, _) => { for (var i = 0; i < span.Length; i++) span[i] = alphabet[RandomNumberGenerator.GetInt32(alphabet.Length)]; });
    }

    public Task StopAsync(CancellationToken ct) => Task.CompletedTask;
}
