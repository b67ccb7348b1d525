namespace Appliance.Core.Errors;

/// <summary>
/// A failure a client can act on. Web code turns it into an RFC 9457 problem document whose
/// <c>type</c> is <c>urn:appliance:problem:{Slug}</c>; slugs are part of the public API and never change meaning.
/// </summary>
public class ApplianceError : Exception
{
    public ApplianceError(int status, string slug, string title, string detail,
        IReadOnlyDictionary<string, string[]>? errors = null, IReadOnlyDictionary<string, object?>? extensions = null)
        : base(detail)
    {
        Status = status;
        Slug = slug;
        Title = title;
        Errors = errors;
        Extensions = extensions;
    }

    public int Status { get; }
    public string Slug { get; }
    public string Title { get; }
    public IReadOnlyDictionary<string, string[]>? Errors { get; }
    public IReadOnlyDictionary<string, object?>? Extensions { get; }

    public static ApplianceError Validation(IReadOnlyDictionary<string, string[]> errors, string? detail = null) =>
        new(400, "validation", "The request is not valid",
            detail ?? "One or more fields are not valid: " + string.Join(", ", errors.Keys) + ".", errors);

    public static ApplianceError Field(string field, string message) =>
        Validation(new Dictionary<string, string[]> { [field] = [message] }, $"{field}: {message}");

    public static ApplianceError NotFound(string what, string id) =>
        new(404, "not-found", $"{what} not found", $"No {what.ToLowerInvariant()} is named or identified by '{id}'.");

    public static ApplianceError Conflict(string slug, string detail, IReadOnlyDictionary<string, object?>? extensions = null) =>
        new(409, slug, "Conflict", detail, extensions: extensions);

    public static ApplianceError Unsupported(string operation, string emulator) =>
        new(501, "unsupported-operation", "Operation not supported by this emulator",
            $"The {emulator} driver does not support '{operation}'.");
}
