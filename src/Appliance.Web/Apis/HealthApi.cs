using Appliance.Core;
using Appliance.Core.Supervision;
using Appliance.Data;
using Dapper;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Apis;

public static class HealthApi
{
    public sealed record Check(string Status, string? Detail);
    public sealed record Health(string Status, Check Database, Check Emulator, Check ImageTool, string Accelerator, string AcceleratorReason);

    public static void MapHealthApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/healthz", async (Database db, Supervisor sup, IOptions<ApplianceOptions> o, CancellationToken ct) =>
        {
            Check dbc;
            try
            {
                await using var c = await db.OpenAsync(ct);
                var n = await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM schema_migrations");
                dbc = new Check("ok", $"{n} migrations applied");
            }
            catch (Exception e) { dbc = new Check("error", e.Message); }
            var emu = sup.EmulatorVersion is { } v ? new Check("ok", $"QEMU {v}") : new Check("error", $"{o.Value.QemuPath} cannot be run");
            var img = File.Exists(o.Value.QemuImgPath) ? new Check("ok", o.Value.QemuImgPath) : new Check("error", $"{o.Value.QemuImgPath} not found");
            var ok = dbc.Status == "ok" && emu.Status == "ok" && img.Status == "ok";
            var h = new Health(ok ? "ok" : "degraded", dbc, emu, img, sup.Accelerator.Accelerator, sup.Accelerator.Reason);
            return ok ? Results.Ok(h) : Results.Json(h, statusCode: 503);
        }).AllowAnonymous().WithTags("Health").WithName("Health").WithSummary("Database and emulator availability.")
          .WithDescription("Anonymous. 200 when the SQLite database, the emulator and qemu-img are usable, 503 with the failing check otherwise; also reports the accelerator chosen and why.")
          .Produces<Health>(200).Produces<Health>(503);
    }
}
