using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Appliance.Web.Security;

/// <summary>Describes the bearer and cookie schemes in the OpenAPI document and which operations need them.</summary>
public static class OpenApiSecurity
{
    public static void Add(OpenApiOptions o)
    {
        o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Components ??= new OpenApiComponents();
            doc.Components.SecuritySchemes ??= new Dictionary<string, IOpenApiSecurityScheme>();
            doc.Components.SecuritySchemes["bearer"] = new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.Http, Scheme = "bearer", BearerFormat = "apl_ token",
                Description = "A named API token (POST /api/v1/tokens) or a short-lived one from POST /api/v1/auth/token.",
            };
            doc.Components.SecuritySchemes["cookie"] = new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.ApiKey, In = ParameterLocation.Cookie, Name = "appliance.session",
                Description = "The dashboard's session cookie; unsafe requests also need the X-CSRF-TOKEN header from GET /api/v1/auth/csrf.",
            };
            return Task.CompletedTask;
        });
        o.AddOperationTransformer((op, ctx, _) =>
        {
            var meta = ctx.Description.ActionDescriptor.EndpointMetadata;
            if (meta.OfType<Microsoft.AspNetCore.Authorization.IAllowAnonymous>().Any()) return Task.CompletedTask;
            op.Security ??= [];
            op.Security.Add(new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference("bearer", ctx.Document)] = [] });
            op.Security.Add(new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference("cookie", ctx.Document)] = [] });
            if (meta.OfType<MinimumRoleMetadata>().LastOrDefault() is { } role)
                op.Description = (op.Description is { Length: > 0 } d ? d + "\n\n" : "") + $"Requires the {role.Role.ToWire()} role or higher.";
            return Task.CompletedTask;
        });
    }
}
