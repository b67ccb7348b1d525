using Appliance.Core.Checkpoints;
using Appliance.Core.Supervision;
using Dapper;
using Microsoft.Data.Sqlite;

namespace Appliance.Data;

public sealed class CheckpointRepository(Database db) : ICheckpointStore
{
    private sealed record Row(string Id, string Vm_Id, string Name, string? Description, string Status, string Mode, string? Method,
        string? Parent_Id, long Format_Version, string? Emulator, string? Emulator_Version, string? Accelerator, string? Machine,
        string? Cpu_Model, long? Vcpus, long? Memory_Mib, long? State_Size, string? State_Sha256, double? Guest_Pause_Ms,
        string Folder, string? Manifest_Json, string? Error, string Created_At);

    private static CheckpointRecord Map(Row r) => new()
    {
        Id = Guid.Parse(r.Id), VmId = Guid.Parse(r.Vm_Id), Name = r.Name, Description = r.Description, Status = r.Status, Mode = r.Mode,
        Method = r.Method, ParentId = r.Parent_Id is null ? null : Guid.Parse(r.Parent_Id), FormatVersion = (int)r.Format_Version,
        Emulator = r.Emulator, EmulatorVersion = r.Emulator_Version, Accelerator = r.Accelerator, Machine = r.Machine, CpuModel = r.Cpu_Model,
        Vcpus = (int?)r.Vcpus, MemoryMiB = (int?)r.Memory_Mib, StateSize = r.State_Size, StateSha256 = r.State_Sha256,
        GuestPauseMs = r.Guest_Pause_Ms, Folder = r.Folder, ManifestJson = r.Manifest_Json, Error = r.Error,
        CreatedAt = DateTimeOffset.Parse(r.Created_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
    };

    private static object Params(CheckpointRecord r) => new
    {
        Id = r.Id.ToString(), VmId = r.VmId.ToString(), r.Name, r.Description, r.Status, r.Mode, r.Method, ParentId = r.ParentId?.ToString(),
        r.FormatVersion, r.Emulator, r.EmulatorVersion, r.Accelerator, r.Machine, r.CpuModel, r.Vcpus, r.MemoryMiB, r.StateSize,
        r.StateSha256, r.GuestPauseMs, r.Folder, r.ManifestJson, r.Error, CreatedAt = Database.ToDb(r.CreatedAt),
    };

    private const string Insert = """
        INSERT INTO checkpoints(id, vm_id, name, description, status, mode, method, parent_id, format_version, emulator, emulator_version,
            accelerator, machine, cpu_model, vcpus, memory_mib, state_size, state_sha256, guest_pause_ms, folder, manifest_json, error, created_at)
        VALUES (@Id, @VmId, @Name, @Description, @Status, @Mode, @Method, @ParentId, @FormatVersion, @Emulator, @EmulatorVersion,
            @Accelerator, @Machine, @CpuModel, @Vcpus, @MemoryMiB, @StateSize, @StateSha256, @GuestPauseMs, @Folder, @ManifestJson, @Error, @CreatedAt)
        """;

    public async Task InsertAsync(CheckpointRecord r, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync(Insert, Params(r));
    }

    public async Task CompleteAsync(CheckpointRecord r, IReadOnlyList<CheckpointLayerRef> layers, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        await c.ExecuteAsync("""
            UPDATE checkpoints SET status = 'ready', method = @Method, parent_id = @ParentId, format_version = @FormatVersion,
                emulator = @Emulator, emulator_version = @EmulatorVersion, accelerator = @Accelerator, machine = @Machine,
                cpu_model = @CpuModel, vcpus = @Vcpus, memory_mib = @MemoryMiB, state_size = @StateSize, state_sha256 = @StateSha256,
                guest_pause_ms = @GuestPauseMs, folder = @Folder, manifest_json = @ManifestJson, error = NULL
            WHERE id = @Id
            """, Params(r), tx);
        await InsertRefsAsync(c, tx, layers);
        await tx.CommitAsync(ct);
    }

    public async Task ImportAsync(CheckpointRecord r, IReadOnlyList<DiskLayer> newLayers, IReadOnlyList<CheckpointLayerRef> refs, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        foreach (var l in newLayers)
            await c.ExecuteAsync("""
                INSERT INTO disk_layers(id, vm_id, disk_name, file, format, virtual_size, parent_id, base_image_id, is_active, created_at)
                VALUES (@Id, @VmId, @DiskName, @File, @Format, @VirtualSize, @ParentId, @BaseImageId, 0, @CreatedAt)
                """, new
            {
                Id = l.Id.ToString(), VmId = l.VmId.ToString(), l.DiskName, l.File, l.Format, l.VirtualSize, ParentId = l.ParentId?.ToString(),
                BaseImageId = l.BaseImageId?.ToString(), CreatedAt = Database.ToDb(l.CreatedAt),
            }, tx);
        await c.ExecuteAsync(Insert, Params(r), tx);
        await InsertRefsAsync(c, tx, refs);
        await tx.CommitAsync(ct);
    }

    private static async Task InsertRefsAsync(SqliteConnection c, System.Data.Common.DbTransaction tx, IReadOnlyList<CheckpointLayerRef> layers)
    {
        foreach (var l in layers)
            await c.ExecuteAsync("INSERT INTO checkpoint_layers(checkpoint_id, layer_id, disk_name, position) VALUES (@C, @L, @D, @P)",
                new { C = l.CheckpointId.ToString(), L = l.LayerId.ToString(), D = l.DiskName, P = l.Position }, tx);
    }

    public async Task FailAsync(Guid id, string error, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("UPDATE checkpoints SET status = 'failed', error = @Error WHERE id = @Id", new { Id = id.ToString(), Error = error });
    }

    public async Task<CheckpointRecord?> GetAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var r = await c.QuerySingleOrDefaultAsync<Row>("SELECT * FROM checkpoints WHERE id = @Id", new { Id = id.ToString() });
        return r is null ? null : Map(r);
    }

    public async Task<IReadOnlyList<CheckpointRecord>> ForVmAsync(Guid vmId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<Row>("SELECT * FROM checkpoints WHERE vm_id = @Id ORDER BY created_at", new { Id = vmId.ToString() })).Select(Map).ToList();
    }

    public async Task<IReadOnlyList<CheckpointRecord>> WithStatusAsync(string status, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<Row>("SELECT * FROM checkpoints WHERE status = @Status", new { Status = status })).Select(Map).ToList();
    }

    public async Task<IReadOnlyList<CheckpointLayerRef>> LayerRefsForVmAsync(Guid vmId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<(string C, string L, string D, long P)>("""
                SELECT r.checkpoint_id, r.layer_id, r.disk_name, r.position FROM checkpoint_layers r
                JOIN checkpoints k ON k.id = r.checkpoint_id WHERE k.vm_id = @Id ORDER BY r.checkpoint_id, r.disk_name, r.position
                """, new { Id = vmId.ToString() }))
            .Select(x => new CheckpointLayerRef(Guid.Parse(x.C), Guid.Parse(x.L), x.D, (int)x.P)).ToList();
    }

    public async Task DeleteAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM checkpoints WHERE id = @Id", new { Id = id.ToString() });
    }
}
