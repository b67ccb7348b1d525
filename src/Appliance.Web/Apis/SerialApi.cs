using System.Net.WebSockets;
using System.Text;
using Appliance.Core.Console;
using Appliance.Core.Errors;
using Appliance.Core.Supervision;
using Appliance.Data;
using Appliance.Web.Security;

namespace Appliance.Web.Apis;

public static class SerialApi
{
    public static RouteGroupBuilder MapSerialApi(this RouteGroupBuilder api)
    {
        var g = api.MapGroup("/vms/{id}/serial").WithTags("Serial console");
        g.MapGet("/log", Log).WithName("GetSerialLog").WithSummary("Recent serial output as text (the last `bytes`, default 64 KiB).")
            .Produces<string>(200, "text/plain").ProducesProblem(400).ProducesProblem(404);
        g.MapGet("/", Socket).AuthenticatedByTicket().WithName("SerialWebSocket")
            .WithDescription("Upgrade with a WebSocket handshake (101 Switching Protocols); guest output arrives as binary messages, anything sent is typed into the serial port.")
            .WithSummary("WebSocket: live two-way serial console (binary or text frames), opened with `?ticket=` from CreateConsoleTicket (`kind=serial`), or without one by an operator's session or bearer token.")
            .ProducesProblem(400).ProducesProblem(401).ProducesProblem(403).ProducesProblem(404).ProducesProblem(409);
        return g;
    }

    private static async Task<IResult> Log(string id, VmRepository repo, Supervisor sup, int? bytes, CancellationToken ct)
    {
        var n = bytes ?? 65536;
        if (n is < 1 or > 4 * 1024 * 1024) throw ApplianceError.Field("bytes", $"{n} is out of range: accepted 1..4194304.");
        var vm = await repo.GetAsync(id, ct);
        var path = sup.SerialLogPath(vm.Id);
        if (!File.Exists(path)) return TypedResults.Text("", "text/plain; charset=utf-8");
        await using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var start = Math.Max(0, fs.Length - n);
        fs.Seek(start, SeekOrigin.Begin);
        var buf = new byte[fs.Length - start];
        await fs.ReadExactlyAsync(buf, ct);
        return TypedResults.Text(Encoding.UTF8.GetString(buf), "text/plain; charset=utf-8");
    }

    private static async Task Socket(string id, string? ticket, HttpContext ctx, VmRepository repo, Supervisor sup, ConsoleTickets tickets, CancellationToken ct)
    {
        // Typing into a guest is an operator's right: without a ticket (which only operators can mint) the caller must be one.
        if (ticket is null)
        {
            if (ctx.User.Identity?.IsAuthenticated != true)
                throw new ApplianceError(401, "unauthenticated", "Authentication required", "Send a console ticket, a session cookie or a bearer token.");
            if (Roles.Of(ctx.User) is not (Role.Operator or Role.Admin))
                throw new ApplianceError(403, "forbidden", "Forbidden", "The serial console needs the operator role.");
        }
        if (!ctx.WebSockets.IsWebSocketRequest)
            throw new ApplianceError(400, "websocket-required", "WebSocket required", "Open this endpoint as a WebSocket.");
        ConsoleApi.CheckOrigin(ctx);
        var vm = ticket is null ? await repo.GetAsync(id, ct) : (await ConsoleApi.RedeemAsync(ctx, id, ticket, ConsoleKind.Serial, repo, tickets, ct)).Vm;
        var serial = sup.Serial(vm.Id)
            ?? throw ApplianceError.Conflict("not-running", $"VM '{vm.Spec.Name}' has no serial console running (it is {sup.Snapshot(vm.Id)?.State.ToString().ToLowerInvariant()}).");
        using var ws = await ctx.WebSockets.AcceptWebSocketAsync();
        await Pump(ws, serial, ct);
    }

    public static async Task Pump(WebSocket ws, SerialConsole serial, CancellationToken ct)
    {
        var reader = serial.Subscribe(out var backlog, out var unsubscribe);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            if (backlog.Length > 0) await ws.SendAsync(backlog, WebSocketMessageType.Binary, true, cts.Token);
            var outbound = Task.Run(async () =>
            {
                await foreach (var chunk in reader.ReadAllAsync(cts.Token))
                    await ws.SendAsync(chunk, WebSocketMessageType.Binary, true, cts.Token);
            }, cts.Token);
            var buf = new byte[4096];
            while (ws.State == WebSocketState.Open)
            {
                var r = await ws.ReceiveAsync(buf, cts.Token);
                if (r.MessageType == WebSocketMessageType.Close) break;
                await serial.WriteAsync(buf.AsMemory(0, r.Count), cts.Token);
            }
            await cts.CancelAsync();
            try { await outbound; } catch (OperationCanceledException) { }
            if (ws.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
        finally { unsubscribe(); }
    }
}
