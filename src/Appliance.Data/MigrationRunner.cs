using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using Dapper;

namespace Appliance.Data;

public sealed record MigrationScript(string Name, string Sql)
{
    public string Sha256 => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Sql)));
}

public sealed class MigrationException(string message) : Exception(message);

/// <summary>
/// Applies <c>migrations/NNNN_name.sql</c> in order, each in its own transaction, recording name and
/// SHA-256. Refuses to run when an applied script changed or a new script sorts before an applied one:
/// both mean the database and the code disagree about history, and guessing would lose data.
/// </summary>
public sealed class MigrationRunner(Database db)
{
    public static IReadOnlyList<MigrationScript> Embedded()
    {
        var asm = typeof(MigrationRunner).Assembly;
        return asm.GetManifestResourceNames()
            .Where(n => n.StartsWith("migrations/", StringComparison.Ordinal) && n.EndsWith(".sql", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n =>
            {
                using var s = asm.GetManifestResourceStream(n)!;
                using var r = new StreamReader(s, Encoding.UTF8);
                return new MigrationScript(n["migrations/".Length..], r.ReadToEnd());
            })
            .ToList();
    }

    /// <returns>The names of the scripts applied by this call.</returns>
    public async Task<IReadOnlyList<string>> RunAsync(IReadOnlyList<MigrationScript>? scripts = null, CancellationToken ct = default)
    {
        scripts ??= Embedded();
        var ordered = scripts.OrderBy(s => s.Name, StringComparer.Ordinal).ToList();
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name       TEXT NOT NULL PRIMARY KEY,
                sha256     TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )
            """);
        var applied = (await c.QueryAsync<(string Name, string Sha256)>("SELECT name, sha256 FROM schema_migrations ORDER BY name"))
            .ToDictionary(r => r.Name, r => r.Sha256, StringComparer.Ordinal);

        foreach (var s in ordered)
        {
            if (applied.TryGetValue(s.Name, out var sha) && sha != s.Sha256)
                throw new MigrationException($"Migration '{s.Name}' was edited after it was applied (recorded SHA-256 {sha[..12]}…, now {s.Sha256[..12]}…); restore the original script and add a new one instead.");
        }
        var lastApplied = applied.Keys.Order(StringComparer.Ordinal).LastOrDefault();
        var pending = ordered.Where(s => !applied.ContainsKey(s.Name)).ToList();
        var early = pending.FirstOrDefault(s => lastApplied is not null && string.CompareOrdinal(s.Name, lastApplied) < 0);
        if (early is not null)
            throw new MigrationException($"Migration '{early.Name}' sorts before the already applied '{lastApplied}'; rename it to sort after it.");
        var missing = applied.Keys.Where(n => ordered.All(s => s.Name != n)).ToList();
        if (missing.Count > 0)
            throw new MigrationException($"The database has migrations this build does not know ({string.Join(", ", missing)}); it was written by a newer version.");

        var done = new List<string>();
        foreach (var s in pending)
        {
            await using var tx = await c.BeginTransactionAsync(ct);
            await c.ExecuteAsync(s.Sql, transaction: tx);
            await c.ExecuteAsync("INSERT INTO schema_migrations(name, sha256, applied_at) VALUES (@Name, @Sha, @At)",
                new { s.Name, Sha = s.Sha256, At = Database.ToDb(DateTimeOffset.UtcNow) }, tx);
            await tx.CommitAsync(ct);
            done.Add(s.Name);
        }
        return done;
    }
}
