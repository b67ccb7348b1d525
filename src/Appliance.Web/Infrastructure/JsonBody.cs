using System.Buffers;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using System.Text.RegularExpressions;
using Appliance.Core;
using Appliance.Core.Errors;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Infrastructure;

/// <summary>
/// Reads JSON request bodies strictly and turns every way they can be wrong into a problem that names
/// the field: malformed JSON, unknown members, wrong types, bodies over the size limit.
/// Minimal APIs' own binder would answer a bare 400 without saying which field was at fault.
/// </summary>
public static partial class JsonBody
{
    public static async Task<JsonNode> ReadNodeAsync(HttpContext ctx, bool allowMergePatch = false)
    {
        var type = ctx.Request.ContentType ?? "";
        var mediaOk = type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase)
            || (allowMergePatch && type.StartsWith("application/merge-patch+json", StringComparison.OrdinalIgnoreCase));
        if (!mediaOk)
            throw new ApplianceError(415, "unsupported-media-type", "Unsupported media type",
                $"Send the body as application/json{(allowMergePatch ? " or application/merge-patch+json" : "")}; got '{type}'.");

        var limit = ctx.RequestServices.GetRequiredService<IOptions<ApplianceOptions>>().Value.MaxJsonBodyBytes;
        if (ctx.Request.ContentLength > limit) throw TooLarge(limit);
        var buffer = new ArrayBufferWriter<byte>();
        var stream = ctx.Request.Body;
        while (true)
        {
            var mem = buffer.GetMemory(16 * 1024);
            var n = await stream.ReadAsync(mem, ctx.RequestAborted);
            if (n == 0) break;
            buffer.Advance(n);
            if (buffer.WrittenCount > limit) throw TooLarge(limit);
        }
        try
        {
            return JsonNode.Parse(buffer.WrittenSpan, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 32 })
                   ?? throw Malformed("The body is the JSON literal null; send an object.");
        }
        catch (JsonException e)
        {
            throw Malformed($"The body is not valid JSON ({Clean(e.Message)}).");
        }
    }

    public static async Task<T> ReadAsync<T>(HttpContext ctx) where T : class =>
        Bind<T>(await ReadNodeAsync(ctx));

    /// <summary>Converts an already parsed node to <typeparamref name="T"/>, reporting field errors.</summary>
    public static T Bind<T>(JsonNode node) where T : class
    {
        if (node is not JsonObject)
            throw ApplianceError.Field("$", "Expected a JSON object.");
        try
        {
            return node.Deserialize<T>(ApplianceJson.Strict) ?? throw ApplianceError.Field("$", "Expected a JSON object.");
        }
        catch (JsonException e)
        {
            throw ToValidation<T>(e);
        }
    }

    private static ApplianceError ToValidation<T>(JsonException e)
    {
        var path = e.Path is null or "$" ? "" : e.Path.StartsWith("$.", StringComparison.Ordinal) ? e.Path[2..] : e.Path.TrimStart('$');
        var unknown = UnknownMember().Match(e.Message);
        if (unknown.Success)
        {
            var field = string.IsNullOrEmpty(path) ? unknown.Groups[1].Value : $"{path}.{unknown.Groups[1].Value}";
            if (!string.IsNullOrEmpty(path) && path.EndsWith(unknown.Groups[1].Value, StringComparison.Ordinal)) field = path;
            var accepted = AcceptedMembers(unknown.Groups[2].Value);
            return ApplianceError.Field(field, $"Unknown field '{unknown.Groups[1].Value}'." + (accepted is null ? "" : $" Accepted: {accepted}."));
        }
        var conv = ConvertTo().Match(e.Message);
        if (conv.Success)
            return ApplianceError.Field(path.Length == 0 ? "$" : path, $"Wrong type: expected {Describe(conv.Groups[1].Value)}.");
        if (e.Message.Contains("null", StringComparison.OrdinalIgnoreCase))
            return ApplianceError.Field(path.Length == 0 ? "$" : path, "May not be null.");
        return ApplianceError.Field(path.Length == 0 ? "$" : path, Clean(e.Message));
    }

    private static string? AcceptedMembers(string typeName)
    {
        var type = Type.GetType(typeName) ?? AppDomain.CurrentDomain.GetAssemblies().Select(a => a.GetType(typeName)).FirstOrDefault(t => t is not null);
        if (type is null) return null;
        var info = ApplianceJson.Strict.GetTypeInfo(type);
        return info.Kind == JsonTypeInfoKind.Object ? string.Join(", ", info.Properties.Select(p => p.Name)) : null;
    }

    private static string Describe(string clrType) => clrType switch
    {
        var t when t.Contains("Int32") || t.Contains("Int64") => "an integer",
        var t when t.Contains("Boolean") => "true or false",
        var t when t.Contains("String") && !t.Contains("List") => "a string",
        var t when t.Contains("List") || t.Contains("[]") => "an array",
        _ => "an object",
    };

    private static string Clean(string message) =>
        Regex.Replace(message.Split(" Path:")[0], @"System\.[A-Za-z0-9_.`\[\]]+", "value").Trim();

    private static ApplianceError Malformed(string detail) => new(400, "malformed-json", "Malformed JSON", detail);

    private static ApplianceError TooLarge(long limit) =>
        new(413, "payload-too-large", "Request body too large", $"The body exceeds the limit of {limit} bytes for this endpoint.");

    [GeneratedRegex("The JSON property '([^']+)' could not be mapped to any .NET member contained in type '([^']+)'")]
    private static partial Regex UnknownMember();

    [GeneratedRegex("could not be converted to ([A-Za-z0-9_.`\\[\\], ]+?)\\.( Path|$)")]
    private static partial Regex ConvertTo();

    /// <summary>RFC 7396 JSON merge patch.</summary>
    public static JsonNode? MergePatch(JsonNode? target, JsonNode? patch)
    {
        if (patch is not JsonObject p) return patch?.DeepClone();
        var result = target is JsonObject t ? (JsonObject)t.DeepClone() : new JsonObject();
        foreach (var (key, value) in p)
        {
            if (value is null) result.Remove(key);
            else result[key] = MergePatch(result[key], value);
        }
        return result;
    }
}
