using Appliance.Data;
using Dapper;

namespace Appliance.Data.Tests;

public sealed class MigrationRunnerTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "appl-mig-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly Database _db;

    public MigrationRunnerTests()
    {
        Directory.CreateDirectory(_dir);
        _db = new Database(Path.Combine(_dir, "test.db"));
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_dir, recursive: true);
    }

    private static readonly MigrationScript A = new("0001_a.sql", "CREATE TABLE a (x INTEGER);");
    private static readonly MigrationScript B = new("0002_b.sql", "CREATE TABLE b (y INTEGER);");
    private static readonly MigrationScript C = new("0003_c.sql", "CREATE TABLE c (z INTEGER);");

    [Fact]
    public async Task Run_FreshDatabase_AppliesAllInOrderAndRecordsChecksums()
    {
        var applied = await new MigrationRunner(_db).RunAsync([B, A]);
        Assert.Equal(["0001_a.sql", "0002_b.sql"], applied);
        await using var c = await _db.OpenAsync();
        var rows = (await c.QueryAsync<(string Name, string Sha256)>("SELECT name, sha256 FROM schema_migrations ORDER BY name")).ToList();
        Assert.Equal([(A.Name, A.Sha256), (B.Name, B.Sha256)], rows);
    }

    [Fact]
    public async Task Run_SecondTime_AppliesNothing()
    {
        await new MigrationRunner(_db).RunAsync([A, B]);
        var again = await new MigrationRunner(_db).RunAsync([A, B]);
        Assert.Empty(again);
    }

    [Fact]
    public async Task Run_AppliedScriptEdited_RefusesNamingTheScript()
    {
        await new MigrationRunner(_db).RunAsync([A, B]);
        var edited = A with { Sql = "CREATE TABLE a (x INTEGER, extra TEXT);" };
        var e = await Assert.ThrowsAsync<MigrationException>(() => new MigrationRunner(_db).RunAsync([edited, B, C]));
        Assert.Contains("0001_a.sql", e.Message);
        Assert.Contains("edited", e.Message);
        await using var c = await _db.OpenAsync();
        Assert.Equal(0, await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM sqlite_master WHERE name = 'c'"));
    }

    [Fact]
    public async Task Run_NewScriptSortsBeforeApplied_Refuses()
    {
        await new MigrationRunner(_db).RunAsync([A, C]);
        var e = await Assert.ThrowsAsync<MigrationException>(() => new MigrationRunner(_db).RunAsync([A, B, C]));
        Assert.Contains("0002_b.sql", e.Message);
        Assert.Contains("sorts before", e.Message);
    }

    [Fact]
    public async Task Run_FailingScript_RollsBackThatScriptOnly()
    {
        var bad = new MigrationScript("0002_bad.sql", "CREATE TABLE ok1 (x INTEGER); CREATE TABLE broken (;");
        await Assert.ThrowsAnyAsync<Exception>(() => new MigrationRunner(_db).RunAsync([A, bad]));
        await using var c = await _db.OpenAsync();
        Assert.Equal(1, await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM schema_migrations"));
        Assert.Equal(0, await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM sqlite_master WHERE name = 'ok1'"));
    }

    [Fact]
    public async Task Embedded_ScriptsFromMigrationsFolder_ApplyCleanlyWithPragmas()
    {
        var applied = await new MigrationRunner(_db).RunAsync();
        Assert.Contains("0001_vms_disks_images.sql", applied);
        await using var c = await _db.OpenAsync();
        Assert.Equal("wal", await c.ExecuteScalarAsync<string>("PRAGMA journal_mode"));
        Assert.Equal(1, await c.ExecuteScalarAsync<long>("PRAGMA foreign_keys"));
        Assert.Equal(10000, await c.ExecuteScalarAsync<long>("PRAGMA busy_timeout"));
    }
}
