using System.Text.Json;
using Appliance.Core;
using Appliance.Core.Errors;
using Appliance.Core.Emulation;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;
using Dapper;
using Microsoft.Data.Sqlite;

namespace Appliance.Data;

public sealed record VmQuery(string? Tag = null, VmState? State = null, int Offset = 0, int Limit = 50);

public sealed class VmRepository(Database db) : IVmStore
{
    private sealed record Row(string Id, string Spec_Json, string State, string Created_At, string Updated_At, long Version);

    private static Vm Map(Row r) => new()
    {
        Id = Guid.Parse(r.Id),
        Spec = JsonSerializer.Deserialize<VmSpec>(r.Spec_Json, ApplianceJson.Strict)!,
        State = Enum.Parse<VmState>(r.State, ignoreCase: true),
        CreatedAt = DateTimeOffset.Parse(r.Created_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
        UpdatedAt = DateTimeOffset.Parse(r.Updated_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
        Version = r.Version,
    };

    private const string Columns = "id, spec_json, state, created_at, updated_at, version";

    public async Task<(IReadOnlyList<Vm> Items, int Total)> ListAsync(VmQuery q, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var where = new List<string>();
        if (q.Tag is not null) where.Add("EXISTS (SELECT 1 FROM vm_tags t WHERE t.vm_id = vms.id AND t.tag = @Tag)");
        if (q.State is not null) where.Add("state = @State");
        var clause = where.Count == 0 ? "" : "WHERE " + string.Join(" AND ", where);
        var p = new { q.Tag, State = q.State?.ToWire(), q.Offset, q.Limit };
        var total = await c.ExecuteScalarAsync<int>($"SELECT COUNT(*) FROM vms {clause}", p);
        var rows = await c.QueryAsync<Row>($"SELECT {Columns} FROM vms {clause} ORDER BY name LIMIT @Limit OFFSET @Offset", p);
        return (rows.Select(Map).ToList(), total);
    }

    public async Task<IReadOnlyList<Vm>> AllAsync(CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<Row>($"SELECT {Columns} FROM vms ORDER BY name")).Select(Map).ToList();
    }

    /// <summary>Finds a VM by UUID or by name.</summary>
    public async Task<Vm?> FindAsync(string idOrName, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var row = Guid.TryParse(idOrName, out var id)
            ? await c.QuerySingleOrDefaultAsync<Row>($"SELECT {Columns} FROM vms WHERE id = @Id", new { Id = id.ToString() })
            : await c.QuerySingleOrDefaultAsync<Row>($"SELECT {Columns} FROM vms WHERE name = @Name", new { Name = idOrName });
        return row is null ? null : Map(row);
    }

    public async Task<Vm> GetAsync(string idOrName, CancellationToken ct = default) =>
        await FindAsync(idOrName, ct) ?? throw ApplianceError.NotFound("VM", idOrName);

    public async Task<Vm> InsertAsync(VmSpec spec, CancellationToken ct = default)
    {
        var now = DateTimeOffset.UtcNow;
        var vm = new Vm { Id = Guid.NewGuid(), Spec = spec, CreatedAt = now, UpdatedAt = now, Version = 1 };
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        try
        {
            await c.ExecuteAsync("""
                INSERT INTO vms(id, name, vcpus, memory_mib, machine, spec_json, state, created_at, updated_at, version)
                VALUES (@Id, @Name, @Vcpus, @MemoryMiB, @Machine, @Json, 'stopped', @At, @At, 1)
                """, new { Id = vm.Id.ToString(), spec.Name, spec.Vcpus, spec.MemoryMiB, spec.Machine, Json = Serialize(spec), At = Database.ToDb(now) }, tx);
            await WriteTagsAsync(c, tx, vm.Id, spec.Tags);
            await tx.CommitAsync(ct);
        }
        catch (SqliteException e) when (e.SqliteErrorCode == 19 && e.Message.Contains("vms.name", StringComparison.Ordinal))
        {
            throw DuplicateName(spec.Name);
        }
        return vm;
    }

    /// <summary>Replaces the spec when the row still has <paramref name="expectedVersion"/>; null when it moved on.</summary>
    public async Task<Vm?> UpdateSpecAsync(Guid id, VmSpec spec, long expectedVersion, CancellationToken ct = default)
    {
        var now = DateTimeOffset.UtcNow;
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        int n;
        try
        {
            n = await c.ExecuteAsync("""
                UPDATE vms SET name = @Name, vcpus = @Vcpus, memory_mib = @MemoryMiB, machine = @Machine, spec_json = @Json,
                               updated_at = @At, version = version + 1
                WHERE id = @Id AND version = @Expected
                """, new { Id = id.ToString(), spec.Name, spec.Vcpus, spec.MemoryMiB, spec.Machine, Json = Serialize(spec), At = Database.ToDb(now), Expected = expectedVersion }, tx);
        }
        catch (SqliteException e) when (e.SqliteErrorCode == 19 && e.Message.Contains("vms.name", StringComparison.Ordinal))
        {
            throw DuplicateName(spec.Name);
        }
        if (n == 0) return null;
        await c.ExecuteAsync("DELETE FROM vm_tags WHERE vm_id = @Id", new { Id = id.ToString() }, tx);
        await WriteTagsAsync(c, tx, id, spec.Tags);
        await tx.CommitAsync(ct);
        return await FindAsync(id.ToString(), ct);
    }

    public async Task SetStateAsync(Guid id, VmState state, int? exitCode, string? error, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("UPDATE vms SET state = @State, last_exit_code = @ExitCode, last_error = @Error WHERE id = @Id",
            new { Id = id.ToString(), State = state.ToWire(), ExitCode = exitCode, Error = error });
    }

    public async Task<(int? ExitCode, string? Error)> GetLastExitAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var r = await c.QuerySingleOrDefaultAsync<(long? Code, string? Error)>("SELECT last_exit_code, last_error FROM vms WHERE id = @Id", new { Id = id.ToString() });
        return ((int?)r.Code, r.Error);
    }

    private sealed record RuntimeRow(string Vm_Id, long Pid, long Pid_Start_Ticks, string Run_Dir, string Accelerator, string Cpu_Model,
        string Emulator_Version, string Started_At, string Devices_Json, string Argv_Json);

    public async Task<RuntimeRecord?> GetRuntimeAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var r = await c.QuerySingleOrDefaultAsync<RuntimeRow>("SELECT * FROM vm_runtime WHERE vm_id = @Id", new { Id = id.ToString() });
        return r is null ? null : new RuntimeRecord
        {
            VmId = id, Pid = (int)r.Pid, PidStartTicks = r.Pid_Start_Ticks, RunDir = r.Run_Dir, Accelerator = r.Accelerator,
            CpuModel = r.Cpu_Model, EmulatorVersion = r.Emulator_Version,
            StartedAt = DateTimeOffset.Parse(r.Started_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
            Devices = JsonSerializer.Deserialize<List<DeviceInfo>>(r.Devices_Json, ApplianceJson.Strict) ?? [],
            Argv = JsonSerializer.Deserialize<List<string>>(r.Argv_Json) ?? [],
        };
    }

    public async Task SaveRuntimeAsync(RuntimeRecord r, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("""
            INSERT OR REPLACE INTO vm_runtime(vm_id, pid, pid_start_ticks, run_dir, accelerator, cpu_model, emulator_version, started_at, devices_json, argv_json)
            VALUES (@VmId, @Pid, @PidStartTicks, @RunDir, @Accelerator, @CpuModel, @EmulatorVersion, @StartedAt, @Devices, @Argv)
            """, new
        {
            VmId = r.VmId.ToString(), r.Pid, r.PidStartTicks, r.RunDir, r.Accelerator, r.CpuModel, r.EmulatorVersion,
            StartedAt = Database.ToDb(r.StartedAt), Devices = JsonSerializer.Serialize(r.Devices, ApplianceJson.Strict), Argv = JsonSerializer.Serialize(r.Argv),
        });
    }

    public async Task ClearRuntimeAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM vm_runtime WHERE vm_id = @Id", new { Id = id.ToString() });
    }

    public async Task<bool> DeleteAsync(Guid id, long? expectedVersion, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var n = await c.ExecuteAsync("DELETE FROM vms WHERE id = @Id AND (@Expected IS NULL OR version = @Expected)",
            new { Id = id.ToString(), Expected = expectedVersion });
        return n > 0;
    }

    private static ApplianceError DuplicateName(string name) =>
        new(409, "duplicate-name", "Name already in use", $"A VM named '{name}' already exists; choose another name.",
            new Dictionary<string, string[]> { ["name"] = [$"'{name}' is already used by another VM."] });

    private static async Task WriteTagsAsync(SqliteConnection c, System.Data.Common.DbTransaction tx, Guid id, IEnumerable<string> tags)
    {
        foreach (var t in tags.Distinct())
            await c.ExecuteAsync("INSERT INTO vm_tags(vm_id, tag) VALUES (@Id, @Tag)", new { Id = id.ToString(), Tag = t }, tx);
    }

    public static string Serialize(VmSpec spec) => JsonSerializer.Serialize(spec, ApplianceJson.Strict);
}
