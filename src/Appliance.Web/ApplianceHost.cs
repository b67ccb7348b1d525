using System.Security.Cryptography;
using System.Text.Json;
using Appliance.Core;
using Appliance.Core.Emulation;
using Appliance.Core.Host;
using Appliance.Core.Storage;
using Appliance.Core.Supervision;
using Appliance.Data;
using Appliance.Web.Apis;
using Appliance.Web.Components;
using Appliance.Web.Infrastructure;
using Appliance.Web.Security;
using Microsoft.Extensions.Options;
using Scalar.AspNetCore;

namespace Appliance.Web;

/// <summary>The composition root: services, middleware and endpoints in one place.</summary>
public static class ApplianceHost
{
    public static WebApplicationBuilder CreateBuilder(string[] args)
    {
        // appsettings.json ships next to the binary; without this the working directory would be the content root.
        var contentRoot = args.Any(a => a.Contains("contentRoot", StringComparison.OrdinalIgnoreCase)) ? null : AppContext.BaseDirectory;
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, WebRootPath = FindWebRoot(), ContentRootPath = contentRoot });
        // Serves Blazor's framework files from a plain build output too, not only from `dotnet publish`.
        builder.WebHost.UseStaticWebAssets();
        if (Environment.GetEnvironmentVariable("APPLIANCE_DATA_DIR") is { Length: > 0 } dataDir && builder.Configuration["Appliance:DataDirectory"] is null)
            builder.Configuration["Appliance:DataDirectory"] = dataDir;
        if (string.IsNullOrEmpty(builder.Configuration["urls"]) && string.IsNullOrEmpty(builder.Configuration["http_ports"]))
            builder.WebHost.UseUrls("http://127.0.0.1:5080");

        var s = builder.Services;
        s.AddOptions<ApplianceOptions>().Bind(builder.Configuration.GetSection(ApplianceOptions.Section)).ValidateOnStart();
        s.AddSingleton<IValidateOptions<ApplianceOptions>, ApplianceOptionsValidator>();
        s.AddSingleton(sp => new Database(Path.Combine(sp.GetRequiredService<IOptions<ApplianceOptions>>().Value.ResolvedDataDirectory, "appliance.db")));
        s.AddSingleton<MigrationRunner>();
        s.AddSingleton<VmRepository>();
        s.AddSingleton<IVmStore>(sp => sp.GetRequiredService<VmRepository>());
        s.AddSingleton<StorageRepository>();
        s.AddSingleton<IStorageStore>(sp => sp.GetRequiredService<StorageRepository>());
        s.AddSingleton<IHostInfo, LinuxHostInfo>();
        s.AddSingleton<IEmulatorDriver, QemuDriver>();
        s.AddSingleton<DiskService>();
        s.AddSingleton<EventBus>();
        s.AddSingleton<JobTracker>();
        s.AddSingleton<Supervisor>();
        s.AddConsole();
        // Order matters: the schema exists and the demo guest is in the library before the supervisor reconciles.
        s.AddHostedService<StartupTasks>();
        s.AddHostedService(sp => sp.GetRequiredService<Supervisor>());
        s.AddCheckpoints(builder.Configuration);

        s.ConfigureHttpJsonOptions(o => ApplianceJson.Configure(o.SerializerOptions));
        s.AddProblemDetails(o => o.CustomizeProblemDetails = Problems.Normalize);
        s.AddExceptionHandler<Problems.ExceptionHandler>();
        s.AddOpenApi("v1", o => o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "Appliance API";
            doc.Info.Version = "v1";
            doc.Info.Contact = new() { Name = "Appliance maintainers" };
            // The server entry follows the request's host; without the trailing slash it composes with the paths.
            foreach (var server in doc.Servers ?? []) server.Url = server.Url?.TrimEnd('/');
            doc.Info.Description = "Virtual machines, their lifecycle, consoles, images and checkpoints. Every error is an RFC 9457 problem document whose `type` is `urn:appliance:problem:<slug>`.";
            return Task.CompletedTask;
        }));
        s.AddRazorComponents().AddInteractiveServerComponents();
        s.AddSignalR().AddJsonProtocol(o => ApplianceJson.Configure(o.PayloadSerializerOptions));
        s.AddHostedService<Hubs.EventsRelay>();
        builder.AddApplianceSecurity();
        return builder;
    }

    public static WebApplication Configure(this WebApplication app)
    {
        app.UseExceptionHandler();
        app.UseStatusCodePages();
        app.UseSecurityHeaders();
        app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(30) });
        app.UseStaticFiles();
        app.UseApplianceSecurity();
        app.UseAntiforgery();

        // API documentation stays readable without signing in; it describes, it does not act.
        app.MapOpenApi("/openapi/{documentName}.json").AllowAnonymous();
        app.MapScalarApiReference("/api/docs", o => o.WithTitle("Appliance API").WithOpenApiRoutePattern("/openapi/{documentName}.json")).AllowAnonymous();
        app.MapHealthApi();
        app.MapLoginEndpoints();
        var api = app.MapGroup("/api/v1").WithRoleConvention();
        api.MapSecurityApi();
        api.MapVmApi();
        api.MapLifecycleApi();
        api.MapImageApi();
        api.MapSerialApi();
        app.MapConsoleApi(api);
        app.MapHub<Hubs.EventsHub>(Hubs.EventsHub.Path);
        api.MapCheckpointApi();

        app.MapStaticAssets().AllowAnonymous();
        app.MapRazorComponents<App>().AddInteractiveServerRenderMode();
        return app;
    }

    /// <summary>The repository's top-level wwwroot (development) or the one published next to the binary.</summary>
    private static string? FindWebRoot()
    {
        var published = Path.Combine(AppContext.BaseDirectory, "wwwroot");
        if (Directory.Exists(Path.Combine(published, "lib"))) return published;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Appliance.sln")) && Directory.Exists(Path.Combine(dir.FullName, "wwwroot")))
                return Path.Combine(dir.FullName, "wwwroot");
        return Directory.Exists(published) ? published : null;
    }
}

public sealed class ApplianceOptionsValidator : IValidateOptions<ApplianceOptions>
{
    public ValidateOptionsResult Validate(string? name, ApplianceOptions o)
    {
        var f = new List<string>();
        if (string.IsNullOrWhiteSpace(o.DataDirectory)) f.Add("Appliance:DataDirectory is empty");
        else
        {
            try
            {
                Directory.CreateDirectory(o.ResolvedDataDirectory);
                var probe = Path.Combine(o.ResolvedDataDirectory, $".probe-{Guid.NewGuid():N}");
                File.WriteAllText(probe, "");
                File.Delete(probe);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                f.Add($"Appliance:DataDirectory '{o.DataDirectory}' is not a writable folder ({e.Message})");
            }
        }
        if (!Path.IsPathFullyQualified(o.QemuPath) || Directory.Exists(o.QemuPath)) f.Add($"Appliance:QemuPath '{o.QemuPath}' must be the absolute path of the qemu-system binary");
        if (!Path.IsPathFullyQualified(o.QemuImgPath) || Directory.Exists(o.QemuImgPath)) f.Add($"Appliance:QemuImgPath '{o.QemuImgPath}' must be the absolute path of qemu-img");
        if (o.Accelerator is not ("auto" or "kvm" or "tcg")) f.Add($"Appliance:Accelerator '{o.Accelerator}' must be auto, kvm or tcg");
        if (o.ShutdownTimeoutSeconds is < 1 or > 3600) f.Add($"Appliance:ShutdownTimeoutSeconds {o.ShutdownTimeoutSeconds} must be 1..3600");
        if (o.HostMemoryReserveMiB < 0) f.Add($"Appliance:HostMemoryReserveMiB {o.HostMemoryReserveMiB} must be 0 or more");
        if (!string.IsNullOrWhiteSpace(o.QemuRunAsUser) && Appliance.Core.Emulation.QemuUser.Lookup(o.QemuRunAsUser) is null)
            f.Add($"Appliance:QemuRunAsUser '{o.QemuRunAsUser}' is not an account on this host");
        if (o.MaxUploadBytes < 1) f.Add("Appliance:MaxUploadBytes must be positive");
        if (o.MaxJsonBodyBytes is < 1024 or > 64 * 1024 * 1024) f.Add("Appliance:MaxJsonBodyBytes must be 1024..67108864");
        return f.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(f);
    }
}

/// <summary>Runs before anything else starts: schema migrations, data folders, the demo guest in the image library.</summary>
public sealed class StartupTasks(MigrationRunner migrations, IOptions<ApplianceOptions> options, IStorageStore store, ILogger<StartupTasks> log) : IHostedService
{
    public async Task StartAsync(CancellationToken ct)
    {
        var o = options.Value;
        foreach (var d in new[] { "images", "disks", "checkpoints", "logs", "run" })
            Directory.CreateDirectory(Path.Combine(o.ResolvedDataDirectory, d));
        var applied = await migrations.RunAsync(ct: ct);
        if (applied.Count > 0) log.LogInformation("Applied migrations: {Names}", string.Join(", ", applied));
        await SeedDemoGuestAsync(o, ct);
    }

    private async Task SeedDemoGuestAsync(ApplianceOptions o, CancellationToken ct)
    {
        var src = o.ResolvedDemoGuestDirectory;
        var images = Path.Combine(o.ResolvedDataDirectory, "images");
        foreach (var (file, name, kind) in new[] { ("vmlinuz", VmTemplates.DemoKernel, "kernel"), ("initrd.img", VmTemplates.DemoInitrd, "initrd") })
        {
            var from = Path.Combine(src, file);
            if (!File.Exists(from)) { log.LogWarning("Demo guest file {File} not found; the demo template will not boot until it is built", from); continue; }
            var bytes = await File.ReadAllBytesAsync(from, ct);
            var sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
            var existing = await store.FindImageAsync(name, ct);
            var dest = Path.Combine(images, name);
            if (existing is not null && existing.Sha256 == sha && File.Exists(dest)) continue;
            var tmp = dest + ".tmp";
            await File.WriteAllBytesAsync(tmp, bytes, ct);
            File.Move(tmp, dest, overwrite: true);
            if (existing is not null) await store.DeleteImageAsync(existing.Id, ct);
            await store.AddImageAsync(new ImageRecord { Id = Guid.NewGuid(), Name = name, Kind = kind, SizeBytes = bytes.Length, Sha256 = sha, CreatedAt = DateTimeOffset.UtcNow }, ct);
        }
    }

    public Task StopAsync(CancellationToken ct) => Task.CompletedTask;
}
