using Microsoft.AspNetCore.Authorization;

namespace Appliance.Web.Security;

/// <summary>admin &gt; operator &gt; viewer; a role includes everything the lower ones may do.</summary>
public enum Role { Viewer = 0, Operator = 1, Admin = 2 }

public static class Roles
{
    public const string Admin = "admin";
    public const string Operator = "operator";
    public const string Viewer = "viewer";
    public static readonly string[] All = [Viewer, Operator, Admin];

    public static string ToWire(this Role r) => r switch { Role.Admin => Admin, Role.Operator => Operator, _ => Viewer };

    public static bool TryParse(string? s, out Role role)
    {
        switch (s)
        {
            case Admin: role = Role.Admin; return true;
            case Operator: role = Role.Operator; return true;
            case Viewer: role = Role.Viewer; return true;
            default: role = Role.Viewer; return false;
        }
    }

    /// <summary>Policy name that admits <paramref name="r"/> and every higher role.</summary>
    public static string Policy(Role r) => "role:" + r.ToWire();

    public static void AddPolicies(AuthorizationOptions o)
    {
        foreach (var r in Enum.GetValues<Role>())
            o.AddPolicy(Policy(r), p => p.RequireAuthenticatedUser().RequireRole(Enum.GetValues<Role>().Where(x => x >= r).Select(ToWire)));
    }

    public static Role? Of(System.Security.Claims.ClaimsPrincipal user) =>
        user.Identity?.IsAuthenticated == true && TryParse(user.FindFirst(System.Security.Claims.ClaimTypes.Role)?.Value, out var r) ? r : null;
}

/// <summary>The least role an endpoint needs; set by the /api/v1 convention or explicitly with <see cref="SecurityEndpointExtensions.RequireMinimumRole{T}"/>.</summary>
public sealed record MinimumRoleMetadata(Role Role);

/// <summary>
/// Marks an endpoint that authenticates each request with a one-time ticket (e.g. a console websocket)
/// instead of a session or bearer token. It is anonymous to the authorization middleware; the handler
/// must refuse a missing, expired or foreign ticket with 401, and the endpoint security test checks that.
/// </summary>
public sealed record TicketAuthenticatedMetadata;

/// <summary>Set on every endpoint in the /api/v1 group, so the security convention and tests can tell API endpoints apart.</summary>
public sealed record ApiEndpointMetadata;

public static class SecurityEndpointExtensions
{
    public static TBuilder RequireMinimumRole<TBuilder>(this TBuilder b, Role role) where TBuilder : IEndpointConventionBuilder =>
        b.WithMetadata(new MinimumRoleMetadata(role));

    public static TBuilder AuthenticatedByTicket<TBuilder>(this TBuilder b) where TBuilder : IEndpointConventionBuilder =>
        b.WithMetadata(new TicketAuthenticatedMetadata()).AllowAnonymous();

    public static bool IsUnsafe(string method) => !(HttpMethods.IsGet(method) || HttpMethods.IsHead(method) || HttpMethods.IsOptions(method) || HttpMethods.IsTrace(method));

    /// <summary>
    /// The role convention for the API group, applied after every endpoint's own conventions so that endpoints
    /// mapped by other features are covered: reads need viewer, unsafe methods operator, unless the endpoint says otherwise.
    /// </summary>
    public static RouteGroupBuilder WithRoleConvention(this RouteGroupBuilder api)
    {
        api.WithMetadata(new ApiEndpointMetadata());
        ((IEndpointConventionBuilder)api).Finally(b =>
        {
            if (b.Metadata.OfType<IAllowAnonymous>().Any()) return;
            var declared = b.Metadata.OfType<MinimumRoleMetadata>().LastOrDefault();
            if (declared is null)
            {
                var methods = b.Metadata.OfType<Microsoft.AspNetCore.Routing.HttpMethodMetadata>().LastOrDefault()?.HttpMethods ?? [];
                declared = new MinimumRoleMetadata(methods.Count == 0 || methods.Any(IsUnsafe) ? Role.Operator : Role.Viewer);
                b.Metadata.Add(declared);
            }
            b.Metadata.Add(new AuthorizeAttribute { Policy = Roles.Policy(declared.Role) });
        });
        return api;
    }
}
