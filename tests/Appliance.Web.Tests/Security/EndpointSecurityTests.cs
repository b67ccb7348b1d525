using System.Net;
using System.Text.RegularExpressions;
using Appliance.Web.Security;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.StaticAssets;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace Appliance.Web.Tests.Security;

/// <summary>
/// Walks every endpoint the app maps (from its own EndpointDataSource, so endpoints added by any feature are covered
/// without editing this test) and checks who may call it.
/// </summary>
public sealed class EndpointSecurityTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    /// <summary>Endpoints that may be called without signing in. Adding one here is a security decision.</summary>
    private static readonly HashSet<string> AnonymousAllowed =
    [
        "GET /healthz", "POST /auth/login", "POST /auth/logout", "POST /api/v1/auth/token", "GET /login",
        "GET /openapi/{documentName}.json", "GET /api/docs/{documentName?}",
        // The API reference page's own script and icon.
        "GET /api/docs/scalar.js", "GET /api/docs/scalar.aspnetcore.js", "GET /api/docs/favicon.svg",
        // Blazor's form post target for the static sign-in page; it only renders the page again.
        "POST /login",
    ];

    private sealed record Probe(string Method, string Pattern, string Url, Role MinimumRole, bool Api, bool Ticket);

    private List<Probe> Probes(out List<string> anonymous)
    {
        _app.Api();
        anonymous = [];
        var probes = new List<Probe>();
        foreach (var ep in _app.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>())
        {
            var pattern = "/" + (ep.RoutePattern.RawText ?? "").Trim('/');
            var methods = ep.Metadata.GetMetadata<HttpMethodMetadata>()?.HttpMethods ?? ["GET"];
            var ticket = ep.Metadata.GetMetadata<TicketAuthenticatedMetadata>() is not null;
            var api = ep.Metadata.GetMetadata<ApiEndpointMetadata>() is not null;
            foreach (var method in methods)
            {
                if (ep.Metadata.GetMetadata<IAllowAnonymous>() is not null && !ticket)
                {
                    if (ep.Metadata.GetMetadata<StaticAssetDescriptor>() is null) anonymous.Add($"{method} {pattern}");
                    continue;
                }
                var role = ep.Metadata.OfType<MinimumRoleMetadata>().LastOrDefault()?.Role ?? Role.Viewer;
                probes.Add(new Probe(method, pattern, Url(pattern), role, api, ticket));
            }
        }
        foreach (var p in probes) output.WriteLine($"{p.Method} {p.Pattern} min={p.MinimumRole} api={p.Api} ticket={p.Ticket}");
        return probes;
    }

    /// <summary>A concrete URL for a route pattern; parameters name things that do not exist, so no call changes anything.</summary>
    private static string Url(string pattern) =>
        Regex.Replace(pattern, @"\{(\*\*)?([A-Za-z0-9_]+)([^}]*)\}", m =>
            m.Groups[3].Value.Contains("guid") ? Guid.NewGuid().ToString()
            : m.Groups[3].Value.EndsWith('?') ? ""
            : m.Groups[3].Value.Contains("int") || m.Groups[3].Value.Contains("long") ? "987654"
            : "probe-" + m.Groups[2].Value.ToLowerInvariant()).Replace("//", "/");

    private static async Task<HttpStatusCode> SendAsync(HttpClient c, Probe p)
    {
        using var req = new HttpRequestMessage(new HttpMethod(p.Method), p.Url);
        // No content type: routing would answer 415 for a wrong one before authorization runs.
        if (SecurityEndpointExtensions.IsUnsafe(p.Method)) req.Content = new ByteArrayContent([]);
        using var r = await c.SendAsync(req);
        return r.StatusCode;
    }

    [Fact(Timeout = 120_000)]
    public async Task EveryEndpoint_NoCredentials_401UnlessDeclaredAnonymous()
    {
        var probes = Probes(out var anonymous);
        Assert.Empty(anonymous.Except(AnonymousAllowed));
        Assert.Contains(probes, p => p.Pattern == "/api/v1/vms" && p.Method == "POST");
        Assert.Contains(probes, p => p.Pattern == "/");
        var anon = _app.Anonymous();
        var failures = new List<string>();
        foreach (var p in probes)
        {
            var status = await SendAsync(anon, p);
            if (status != HttpStatusCode.Unauthorized) failures.Add($"{p.Method} {p.Url}: {(int)status}");
        }
        Assert.Empty(failures);
    }

    [Fact(Timeout = 180_000)]
    public async Task EveryEndpoint_RoleBelowMinimum_403_MinimumRole_Admitted_AndAudited()
    {
        var probes = Probes(out _).Where(p => !p.Ticket).ToList();
        var clients = new Dictionary<Role, HttpClient>
        {
            [Role.Viewer] = _app.ClientFor("viewer"), [Role.Operator] = _app.ClientFor("operator"), [Role.Admin] = _app.ClientFor("admin"),
        };
        var users = new Dictionary<Role, string>();
        foreach (var (role, c) in clients) users[role] = (await (await c.GetAsync("/api/v1/auth/me")).JsonAsync()).GetProperty("name").GetString()!;
        var failures = new List<string>();
        var expectedAudit = new List<(string User, string Action, int Status)>();
        foreach (var p in probes)
        {
            // Every API call that changes something needs more than viewer; there is no read-only user who can act.
            if (p.Api && SecurityEndpointExtensions.IsUnsafe(p.Method) && p.MinimumRole == Role.Viewer)
                failures.Add($"{p.Method} {p.Pattern}: unsafe API endpoint open to viewer");
            foreach (var role in Enum.GetValues<Role>())
            {
                var status = (int)await SendAsync(clients[role], p);
                var allowed = role >= p.MinimumRole;
                if (allowed && status is 401 or 403) failures.Add($"{p.Method} {p.Url} as {role}: {status}, expected admission");
                if (!allowed && status != 403) failures.Add($"{p.Method} {p.Url} as {role}: {status}, expected 403");
                if (p.Api && SecurityEndpointExtensions.IsUnsafe(p.Method)) expectedAudit.Add((users[role], $"{p.Method} {p.Pattern}", status));
            }
        }
        Assert.Empty(failures);
        Assert.NotEmpty(expectedAudit);

        var rows = (await (await _app.Api().GetAsync("/api/v1/audit?limit=1000")).JsonAsync()).GetProperty("items").EnumerateArray()
            .Select(r => (r.GetProperty("userName").GetString(), r.GetProperty("action").GetString()!, r.GetProperty("status").GetInt32())).ToList();
        var missing = expectedAudit.Where(e => !rows.Remove((e.User, e.Action, e.Status))).ToList();
        Assert.Empty(missing);
    }

    [Fact(Timeout = 60_000)]
    public async Task PageRequest_NoSession_RedirectsToLoginWithReturnUrl()
    {
        var anon = _app.Anonymous();
        using var req = new HttpRequestMessage(HttpMethod.Get, "/vms/some-vm/console");
        req.Headers.Accept.ParseAdd("text/html");
        using var r = await anon.SendAsync(req);
        Assert.Equal(HttpStatusCode.Redirect, r.StatusCode);
        Assert.Equal("/login?returnUrl=%2Fvms%2Fsome-vm%2Fconsole", r.Headers.Location?.OriginalString);
    }

    [Fact(Timeout = 60_000)]
    public async Task SerialWebSocket_NoCredentialsOrViewer_Refused()
    {
        await _app.Api().CreateDemoVmAsync("ws");
        var uri = new UriBuilder(_app.BaseAddress) { Scheme = "ws", Path = "/api/v1/vms/ws/serial" }.Uri;
        using var anon = new System.Net.WebSockets.ClientWebSocket { Options = { CollectHttpResponseDetails = true } };
        await Assert.ThrowsAnyAsync<System.Net.WebSockets.WebSocketException>(() => anon.ConnectAsync(uri, CancellationToken.None));
        Assert.Equal(HttpStatusCode.Unauthorized, anon.HttpStatusCode);
        var viewer = _app.ClientFor("viewer").DefaultRequestHeaders.Authorization!.ToString();
        using var v = new System.Net.WebSockets.ClientWebSocket { Options = { CollectHttpResponseDetails = true } };
        v.Options.SetRequestHeader("Authorization", viewer);
        await Assert.ThrowsAnyAsync<System.Net.WebSockets.WebSocketException>(() => v.ConnectAsync(uri, CancellationToken.None));
        Assert.Equal(HttpStatusCode.Forbidden, v.HttpStatusCode);
    }
}
