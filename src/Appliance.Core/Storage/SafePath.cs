using Appliance.Core.Errors;

namespace Appliance.Core.Storage;

/// <summary>Resolves client-named files so they can never leave their folder.</summary>
public static class SafePath
{
    private static readonly System.Buffers.SearchValues<char> Allowed =
        System.Buffers.SearchValues.Create("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");

    public const string FileNameRule = "1-128 characters of letters, digits, '.', '_' and '-', not starting with '.'";

    public static bool IsValidFileName(string? name) =>
        !string.IsNullOrEmpty(name) && name.Length <= 128 && name[0] != '.' && !name.AsSpan().ContainsAnyExcept(Allowed);

    /// <summary>Returns the full path of <paramref name="name"/> inside <paramref name="folder"/>, or throws a 400 naming <paramref name="field"/>.</summary>
    public static string Resolve(string folder, string? name, string field)
    {
        if (!IsValidFileName(name))
            throw ApplianceError.Field(field, $"'{name}' is not an acceptable file name: use {FileNameRule}.");
        var root = Path.GetFullPath(folder);
        var full = Path.GetFullPath(Path.Combine(root, name!));
        if (!full.StartsWith(root.TrimEnd('/') + "/", StringComparison.Ordinal))
            throw ApplianceError.Field(field, $"'{name}' resolves outside its folder.");
        return full;
    }
}
