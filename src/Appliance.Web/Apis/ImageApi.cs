using System.Security.Cryptography;
using Appliance.Core;
using Appliance.Core.Errors;
using Appliance.Core.Storage;
using Appliance.Core.Supervision;
using Appliance.Data;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Apis;

public static class ImageApi
{
    public sealed record ImageList(IReadOnlyList<ImageRecord> Items, int Total);

    public static readonly string[] Kinds = ["iso", "qcow2", "raw", "kernel", "initrd"];

    public static RouteGroupBuilder MapImageApi(this RouteGroupBuilder api)
    {
        var g = api.MapGroup("/images").WithTags("Images");
        g.MapGet("/", async (IStorageStore s, CancellationToken ct) =>
        {
            var items = await s.ImagesAsync(ct);
            return TypedResults.Ok(new ImageList(items, items.Count));
        }).WithName("ListImages").WithSummary("The image library with sizes and SHA-256 checksums.");
        g.MapGet("/{name}", Get).WithName("GetImage").WithSummary("One image.").ProducesProblem(400).ProducesProblem(404);
        g.MapPut("/{name}", Upload).WithName("UploadImage")
            .WithSummary("Upload an image as the raw request body (streamed; size-limited). kind: iso, qcow2, raw, kernel, initrd (default from the name's extension).")
            .Accepts<Stream>("application/octet-stream")
            .Produces<ImageRecord>(201).ProducesProblem(400).ProducesProblem(409).ProducesProblem(413);
        g.MapDelete("/{name}", Delete).WithName("DeleteImage").WithSummary("Delete an image no VM uses.")
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        return g;
    }

    private static async Task<Ok<ImageRecord>> Get(string name, IStorageStore s, CancellationToken ct)
    {
        if (!SafePath.IsValidFileName(name)) throw ApplianceError.Field("name", $"Not an image name: use {SafePath.FileNameRule}.");
        return TypedResults.Ok(await s.FindImageAsync(name, ct) ?? throw ApplianceError.NotFound("Image", name));
    }

    private static string KindFor(string name, string? kind)
    {
        if (kind is not null)
            return Kinds.Contains(kind) ? kind : throw ApplianceError.Field("kind", $"'{kind}' is not accepted: one of {string.Join(", ", Kinds)}.");
        return Path.GetExtension(name).ToLowerInvariant() switch
        {
            ".iso" => "iso", ".qcow2" => "qcow2", ".img" or ".raw" => "raw", _ => "raw",
        };
    }

    private static async Task<Created<ImageRecord>> Upload(string name, string? kind, HttpContext ctx, IStorageStore store, DiskService disks,
        IOptions<ApplianceOptions> o, CancellationToken ct)
    {
        var path = SafePath.Resolve(disks.ImagesDir, name, "name");
        var k = KindFor(name, kind);
        var max = o.Value.MaxUploadBytes;
        if (ctx.Request.ContentLength > max)
            throw new ApplianceError(413, "payload-too-large", "Upload too large", $"The image is larger than the limit of {max} bytes (Appliance:MaxUploadBytes).");
        if (await store.FindImageAsync(name, ct) is not null || File.Exists(path))
            throw ApplianceError.Conflict("duplicate-name", $"An image named '{name}' already exists; delete it first or choose another name.");
        if (ctx.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } f) f.MaxRequestBodySize = max;

        Directory.CreateDirectory(disks.ImagesDir);
        var tmp = Path.Combine(disks.ImagesDir, $".upload-{Guid.NewGuid():N}");
        long size = 0;
        try
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            await using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20, FileOptions.Asynchronous))
            {
                var buf = new byte[1 << 20];
                int n;
                while ((n = await ctx.Request.Body.ReadAsync(buf, ct)) > 0)
                {
                    size += n;
                    if (size > max)
                        throw new ApplianceError(413, "payload-too-large", "Upload too large", $"The image is larger than the limit of {max} bytes (Appliance:MaxUploadBytes).");
                    sha.AppendData(buf, 0, n);
                    await fs.WriteAsync(buf.AsMemory(0, n), ct);
                }
                await fs.FlushAsync(ct);
                fs.Flush(flushToDisk: true);
            }
            if (size == 0) throw ApplianceError.Field("body", "The upload is empty.");
            File.Move(tmp, path);
            var rec = new ImageRecord
            {
                Id = Guid.NewGuid(), Name = name, Kind = k, SizeBytes = size, Sha256 = Convert.ToHexStringLower(sha.GetHashAndReset()),
                CreatedAt = DateTimeOffset.UtcNow,
            };
            try { await store.AddImageAsync(rec, ct); }
            catch { File.Delete(path); throw; }
            return TypedResults.Created($"/api/v1/images/{name}", rec);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    private static async Task<NoContent> Delete(string name, IStorageStore store, DiskService disks, VmRepository vms, CancellationToken ct)
    {
        var path = SafePath.Resolve(disks.ImagesDir, name, "name");
        var img = await store.FindImageAsync(name, ct) ?? throw ApplianceError.NotFound("Image", name);
        var users = (await vms.AllAsync(ct)).Where(v =>
            v.Spec.Cdrom == name || v.Spec.KernelBoot?.Kernel == name || v.Spec.KernelBoot?.Initrd == name ||
            v.Spec.Disks.Any(d => d.SourceImage == name)).Select(v => v.Spec.Name).ToList();
        foreach (var v in await vms.AllAsync(ct))
            if ((await store.LayersAsync(v.Id, ct)).Any(l => l.BaseImageId == img.Id) && !users.Contains(v.Spec.Name)) users.Add(v.Spec.Name);
        if (users.Count > 0)
            throw ApplianceError.Conflict("image-in-use", $"Image '{name}' is used by {string.Join(", ", users)}; change or delete those VMs first.",
                new Dictionary<string, object?> { ["usedBy"] = users });
        await store.DeleteImageAsync(img.Id, ct);
        if (File.Exists(path)) File.Delete(path);
        return TypedResults.NoContent();
    }
}
