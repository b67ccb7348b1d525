using System.Collections.Concurrent;
using Appliance.Core.Emulation;
using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;

namespace Appliance.Core.Console;

/// <summary>
/// PNG screenshots through QMP <c>screendump</c>, cached for a moment per VM and width so that many
/// dashboards polling thumbnails cost QEMU one dump per second, not one per viewer. Concurrent requests
/// for the same picture share one dump.
/// </summary>
public sealed class ScreenCapture(Supervisor sup, TimeProvider clock)
{
    public static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(1);

    private readonly ConcurrentDictionary<(Guid, int), (DateTimeOffset At, Lazy<Task<byte[]>> Png)> _cache = new();

    public ScreenCapture(Supervisor sup) : this(sup, TimeProvider.System) { }

    public async Task<byte[]> PngAsync(Guid vmId, int? width, CancellationToken ct)
    {
        if (width is < 16 or > 8192) throw ApplianceError.Field("width", $"{width} is out of range: accepted 16..8192.");
        if (!sup.Driver.Capabilities.Contains(EmulatorCapability.Screendump)) throw ApplianceError.Unsupported("screendump", sup.Driver.Name);
        var key = (vmId, width ?? 0);
        var now = clock.GetUtcNow();
        if (_cache.Count > 64)
            foreach (var (k, v) in _cache)
                if (now - v.At >= CacheFor) _cache.TryRemove(k, out _);
        var entry = _cache.AddOrUpdate(key,
            _ => (now, new Lazy<Task<byte[]>>(() => CaptureAsync(vmId, width))),
            (_, old) => now - old.At < CacheFor && !old.Png.Value.IsFaulted ? old : (now, new Lazy<Task<byte[]>>(() => CaptureAsync(vmId, width))));
        try { return await entry.Png.Value.WaitAsync(ct); }
        catch (Exception) when (!ct.IsCancellationRequested)
        {
            _cache.TryRemove(new KeyValuePair<(Guid, int), (DateTimeOffset, Lazy<Task<byte[]>>)>(key, entry));
            throw;
        }
    }

    private async Task<byte[]> CaptureAsync(Guid vmId, int? width)
    {
        var h = sup.Host(vmId);
        var e = h.Emulator;
        if (e is null || h.Snapshot.State is not (VmState.Running or VmState.Paused))
            throw ApplianceError.Conflict("not-running", $"VM '{h.Vm.Spec.Name}' has no screen: it is {h.Snapshot.State.ToWire()}.");
        var file = Path.Combine(e.Paths.RunDir, $"screen-{Guid.NewGuid():N}.ppm");
        try
        {
            await e.Qmp.ExecuteAsync("screendump", new { filename = file }, TimeSpan.FromSeconds(10));
            var img = ScreenImage.ParsePpm(await File.ReadAllBytesAsync(file));
            return (width is int w ? img.ScaleToWidth(w) : img).ToPng();
        }
        catch (QmpException q)
        {
            throw new ApplianceError(502, "emulator-error", "Screendump failed", $"QEMU could not take a screenshot: {q.Message}");
        }
        finally
        {
            try { File.Delete(file); } catch (IOException) { }
        }
    }
}
