using Appliance.Core.Supervision;
using Dapper;

namespace Appliance.Data;

public sealed class StorageRepository(Database db) : IStorageStore
{
    private sealed record LayerRow(string Id, string Vm_Id, string Disk_Name, string File, string Format, long Virtual_Size,
        string? Parent_Id, string? Base_Image_Id, long Is_Active, string Created_At);

    private static DiskLayer Map(LayerRow r) => new()
    {
        Id = Guid.Parse(r.Id), VmId = Guid.Parse(r.Vm_Id), DiskName = r.Disk_Name, File = r.File, Format = r.Format,
        VirtualSize = r.Virtual_Size, ParentId = r.Parent_Id is null ? null : Guid.Parse(r.Parent_Id),
        BaseImageId = r.Base_Image_Id is null ? null : Guid.Parse(r.Base_Image_Id), IsActive = r.Is_Active != 0,
        CreatedAt = DateTimeOffset.Parse(r.Created_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
    };

    public async Task<IReadOnlyList<DiskLayer>> LayersAsync(Guid vmId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<LayerRow>("SELECT * FROM disk_layers WHERE vm_id = @Id ORDER BY created_at", new { Id = vmId.ToString() })).Select(Map).ToList();
    }

    private static object Params(DiskLayer l) => new
    {
        Id = l.Id.ToString(), VmId = l.VmId.ToString(), l.DiskName, l.File, l.Format, l.VirtualSize,
        ParentId = l.ParentId?.ToString(), BaseImageId = l.BaseImageId?.ToString(), IsActive = l.IsActive ? 1 : 0, CreatedAt = Database.ToDb(l.CreatedAt),
    };

    private const string InsertLayer = """
        INSERT INTO disk_layers(id, vm_id, disk_name, file, format, virtual_size, parent_id, base_image_id, is_active, created_at)
        VALUES (@Id, @VmId, @DiskName, @File, @Format, @VirtualSize, @ParentId, @BaseImageId, @IsActive, @CreatedAt)
        """;

    public async Task AddLayerAsync(DiskLayer layer, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync(InsertLayer, Params(layer));
    }

    public async Task PushLayerAsync(DiskLayer newTop, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        await c.ExecuteAsync("UPDATE disk_layers SET is_active = 0 WHERE vm_id = @VmId AND disk_name = @DiskName",
            new { VmId = newTop.VmId.ToString(), newTop.DiskName }, tx);
        await c.ExecuteAsync(InsertLayer, Params(newTop), tx);
        await tx.CommitAsync(ct);
    }

    public async Task DeleteLayerAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM disk_layers WHERE id = @Id", new { Id = id.ToString() });
    }

    private sealed record ImageRow(string Id, string Name, string Kind, long Size_Bytes, string Sha256, string Created_At);

    private static ImageRecord Map(ImageRow r) => new()
    {
        Id = Guid.Parse(r.Id), Name = r.Name, Kind = r.Kind, SizeBytes = r.Size_Bytes, Sha256 = r.Sha256,
        CreatedAt = DateTimeOffset.Parse(r.Created_At, null, System.Globalization.DateTimeStyles.AssumeUniversal),
    };

    public async Task<ImageRecord?> FindImageAsync(string name, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var r = await c.QuerySingleOrDefaultAsync<ImageRow>("SELECT * FROM images WHERE name = @Name", new { Name = name });
        return r is null ? null : Map(r);
    }

    public async Task<IReadOnlyList<ImageRecord>> ImagesAsync(CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<ImageRow>("SELECT * FROM images ORDER BY name")).Select(Map).ToList();
    }

    public async Task AddImageAsync(ImageRecord i, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("INSERT INTO images(id, name, kind, size_bytes, sha256, created_at) VALUES (@Id, @Name, @Kind, @SizeBytes, @Sha256, @CreatedAt)",
            new { Id = i.Id.ToString(), i.Name, i.Kind, i.SizeBytes, i.Sha256, CreatedAt = Database.ToDb(i.CreatedAt) });
    }

    public async Task DeleteImageAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM images WHERE id = @Id", new { Id = id.ToString() });
    }
}
