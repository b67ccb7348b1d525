using System.Net.Sockets;
using System.Net.WebSockets;
using Appliance.Core.Console;
using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Core.Vms;
using Appliance.Data;
using Appliance.Web.Infrastructure;
using Appliance.Web.Security;
using Microsoft.AspNetCore.Http.HttpResults;

namespace Appliance.Web.Apis;

public sealed record ConsoleTicketResponse(string Ticket, string Url, DateTimeOffset ExpiresAt);

/// <summary>The browser console: tickets, the RFB websocket proxy to the VM's VNC socket, screenshots, and the console pages.</summary>
public static class ConsoleApi
{
    public static IServiceCollection AddConsole(this IServiceCollection s) =>
        s.AddSingleton(_ => new ConsoleTickets()).AddSingleton(sp => new ScreenCapture(sp.GetRequiredService<Supervisor>()));

    public static IEndpointRouteBuilder MapConsoleApi(this IEndpointRouteBuilder app, RouteGroupBuilder api)
    {
        var g = api.MapGroup("/vms/{id}").WithTags("Console");
        g.MapPost("/console", MintTicket).WithName("CreateConsoleTicket")
            .WithSummary("A one-time ticket (valid 30 s) and the websocket path for the VM's graphical console (`kind=vnc`, default) or serial console (`kind=serial`).")
            .ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);
        g.MapGet("/console/vnc", VncSocket).WithName("ConsoleVncWebSocket")
            .WithDescription("Upgrade with a WebSocket handshake (101 Switching Protocols) carrying RFB 3.8 both ways, as noVNC speaks it. Refusals are problem documents sent before the upgrade.")
            .WithSummary("WebSocket (subprotocol `binary`): the VM's RFB (VNC) stream, opened with `?ticket=` from CreateConsoleTicket.")
            .AuthenticatedByTicket()
            .ProducesProblem(400).ProducesProblem(401).ProducesProblem(403).ProducesProblem(409);
        g.MapGet("/screenshot", Screenshot).WithName("GetScreenshot")
            .WithSummary("A PNG of the VM's screen, optionally scaled down to `width` pixels; cached for 1 s.")
            .Produces(200, contentType: "image/png").ProducesProblem(400).ProducesProblem(404).ProducesProblem(409);

        app.MapGet("/vms/{id}/console", (IWebHostEnvironment env) => Page(env, "vnc.html")).ExcludeFromDescription();
        app.MapGet("/vms/{id}/serial", (IWebHostEnvironment env) => Page(env, "serial.html")).ExcludeFromDescription();
        return app;
    }

    private static IResult Page(IWebHostEnvironment env, string file) =>
        TypedResults.PhysicalFile(Path.Combine(env.WebRootPath, "console", file), "text/html; charset=utf-8");

    private static async Task<Ok<ConsoleTicketResponse>> MintTicket(string id, string? kind, HttpContext ctx, VmRepository repo, Supervisor sup, ConsoleTickets tickets, CancellationToken ct)
    {
        var k = kind switch
        {
            null or "vnc" => ConsoleKind.Vnc,
            "serial" => ConsoleKind.Serial,
            _ => throw ApplianceError.Field("kind", $"'{kind}' is not a console kind; accepted: vnc, serial."),
        };
        var vm = await repo.GetAsync(id, ct);
        var h = sup.Host(vm.Id);
        var available = k == ConsoleKind.Vnc ? h.Emulator is not null : h.Emulator?.Serial is not null;
        if (!available)
            throw ApplianceError.Conflict("not-running", $"VM '{vm.Spec.Name}' has no {(k == ConsoleKind.Vnc ? "display" : "serial console")} to open: it is {h.Snapshot.State.ToWire()}.",
                new Dictionary<string, object?> { ["state"] = h.Snapshot.State.ToWire() });
        var t = tickets.Mint(vm.Id, ctx.User.Identity?.Name ?? "anonymous", k);
        var path = k == ConsoleKind.Vnc ? $"/api/v1/vms/{vm.Id}/console/vnc" : $"/api/v1/vms/{vm.Id}/serial";
        return TypedResults.Ok(new ConsoleTicketResponse(t.Value, $"{path}?ticket={t.Value}", t.ExpiresAt));
    }

    /// <summary>
    /// Browsers send the page's origin with a websocket request and let any site open one to us; only our
    /// own pages may (cross-site websocket hijacking). Clients that send no Origin are not browsers.
    /// </summary>
    public static void CheckOrigin(HttpContext ctx)
    {
        var origin = ctx.Request.Headers.Origin.ToString();
        if (origin.Length == 0) return;
        if (!Uri.TryCreate(origin, UriKind.Absolute, out var o) || !string.Equals(o.Authority, ctx.Request.Host.Value, StringComparison.OrdinalIgnoreCase))
            throw new ApplianceError(403, "origin-mismatch", "Cross-origin websocket refused", $"Origin '{origin}' is not this appliance ({ctx.Request.Host.Value}).");
    }

    /// <summary>Resolves the VM and consumes the ticket; an unknown VM reads as a bad ticket so the socket reveals no names.</summary>
    internal static async Task<(Vm Vm, ConsoleTicket Ticket)> RedeemAsync(HttpContext ctx, string id, string? ticket, ConsoleKind kind, VmRepository repo, ConsoleTickets tickets, CancellationToken ct)
    {
        Vm vm;
        try { vm = await repo.GetAsync(id, ct); }
        catch (ApplianceError e) when (e.Status == 404)
        {
            throw new ApplianceError(401, "ticket-invalid", "Console ticket not valid", "The ticket is unknown, already used or expired; request a new one.");
        }
        var t = tickets.Redeem(ticket, vm.Id, kind);
        // The ticket is the credential; a request that also carries a session must be the same person's.
        if (ctx.User.Identity is { IsAuthenticated: true, Name: { } name } && name != t.User)
            throw new ApplianceError(403, "ticket-wrong-user", "Console ticket belongs to someone else", "This ticket was issued to another user; request your own.");
        return (vm, t);
    }

    private static async Task VncSocket(string id, string? ticket, HttpContext ctx, VmRepository repo, Supervisor sup, ConsoleTickets tickets,
        ILogger<ConsoleTicket> log, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(ticket))
            throw new ApplianceError(401, "ticket-invalid", "Console ticket not valid", "Open the console with ?ticket= from POST /api/v1/vms/{id}/console.");
        if (!ctx.WebSockets.IsWebSocketRequest)
            throw new ApplianceError(400, "websocket-required", "WebSocket required", "Open this endpoint as a WebSocket.");
        CheckOrigin(ctx);
        var (vm, t) = await RedeemAsync(ctx, id, ticket, ConsoleKind.Vnc, repo, tickets, ct);
        var host = sup.Host(vm.Id);

        // Subscribe before looking at the state, so a stop between the two is not missed.
        using var sub = sup.Bus.Subscribe(64);
        var socketPath = host.Emulator?.Paths.VncSocket;
        if (socketPath is null || host.Snapshot.State is not (VmState.Running or VmState.Paused))
            throw ApplianceError.Conflict("not-running", $"VM '{vm.Spec.Name}' has no display: it is {host.Snapshot.State.ToWire()}.");
        using var vnc = await ConnectAsync(socketPath, vm.Spec.Name, ct);
        var stopped = WatchStopAsync(sub, vm.Id, vm.Spec.Name);

        var sub_ = ctx.WebSockets.WebSocketRequestedProtocols.Contains("binary") ? "binary" : null;
        var (ws, sink) = await DirectWebSocket.AcceptAsync(ctx, sub_);
        using var _ = ws;
        log.LogInformation("Console: {User} opened the display of {Vm} ({Path})", t.User, vm.Spec.Name, sink is null ? "websocket" : "direct frames");
        var r = await ByteProxy.RunAsync(ws, vnc, new ByteProxyOptions(), stopped, ct, sink);
        log.LogInformation("Console: {User} left the display of {Vm}: {End} ({Reason}); {Out} bytes out, {In} in",
            t.User, vm.Spec.Name, r.End, r.Reason, r.BytesToClient, r.BytesToTarget);
    }

    /// <summary>QEMU's VNC listener has a backlog of 1: a second viewer connecting at the same instant may be told to try again.</summary>
    private static async Task<Socket> ConnectAsync(string path, string vmName, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(3);
        for (var delay = 10; ; delay = Math.Min(delay * 2, 200))
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await s.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                return s;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TryAgain or SocketError.WouldBlock && DateTime.UtcNow < deadline)
            {
                s.Dispose();
                await Task.Delay(delay, ct);
            }
            catch (SocketException e)
            {
                s.Dispose();
                throw new ApplianceError(502, "display-unavailable", "Display unavailable", $"Could not connect to the display of '{vmName}': {e.Message}");
            }
        }
    }

    private static async Task<string> WatchStopAsync(EventBus.Subscription sub, Guid vmId, string name)
    {
        try
        {
            await foreach (var e in sub.Reader.ReadAllAsync())
            {
                if (e is VmChanged c && c.Snapshot.VmId == vmId && c.Snapshot.State is VmState.Stopping or VmState.Stopped or VmState.Crashed)
                    return $"VM '{name}' is {c.Snapshot.State.ToWire()}.";
                if (e is VmRemoved r && r.VmId == vmId) return $"VM '{name}' was deleted.";
            }
        }
        catch (ObjectDisposedException) { }
        return "The console was closed.";
    }

    private static async Task<FileContentHttpResult> Screenshot(string id, int? width, HttpContext ctx, VmRepository repo, ScreenCapture screens, CancellationToken ct)
    {
        var vm = await repo.GetAsync(id, ct);
        var png = await screens.PngAsync(vm.Id, width, ct);
        ctx.Response.Headers.CacheControl = "private, max-age=1";
        return TypedResults.File(png, "image/png");
    }
}
