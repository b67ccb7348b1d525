using Appliance.Core.Console;
using Appliance.Core.Errors;

namespace Appliance.Core.Tests;

public sealed class ConsoleTicketsTests
{
    private sealed class ManualClock : TimeProvider
    {
        public DateTimeOffset Now { get; set; } = new(2025, 1, 1, 0, 0, 0, TimeSpan.Zero);
        public override DateTimeOffset GetUtcNow() => Now;
    }

    private readonly ManualClock _clock = new();
    private readonly Guid _vm = Guid.NewGuid();

    [Fact]
    public void Mint_Ticket_Is32RandomBytesUrlSafe()
    {
        var t = new ConsoleTickets(_clock);
        var a = t.Mint(_vm, "alice", ConsoleKind.Vnc).Value;
        var b = t.Mint(_vm, "alice", ConsoleKind.Vnc).Value;
        Assert.NotEqual(a, b);
        Assert.Equal(43, a.Length);
        Assert.Matches("^[A-Za-z0-9_-]+$", a);
    }

    [Fact]
    public void Redeem_WithinLifetime_ReturnsUserAndVm()
    {
        var t = new ConsoleTickets(_clock);
        var m = t.Mint(_vm, "alice", ConsoleKind.Vnc);
        _clock.Now += TimeSpan.FromSeconds(29);
        var r = t.Redeem(m.Value, _vm, ConsoleKind.Vnc);
        Assert.Equal(("alice", _vm), (r.User, r.VmId));
    }

    [Fact]
    public void Redeem_AfterThirtySeconds_Unauthorized()
    {
        var t = new ConsoleTickets(_clock);
        var m = t.Mint(_vm, "alice", ConsoleKind.Vnc);
        _clock.Now += TimeSpan.FromSeconds(30);
        var e = Assert.Throws<ApplianceError>(() => t.Redeem(m.Value, _vm, ConsoleKind.Vnc));
        Assert.Equal((401, "ticket-invalid"), (e.Status, e.Slug));
    }

    [Fact]
    public void Redeem_Twice_SecondUnauthorized()
    {
        var t = new ConsoleTickets(_clock);
        var m = t.Mint(_vm, "alice", ConsoleKind.Vnc);
        t.Redeem(m.Value, _vm, ConsoleKind.Vnc);
        Assert.Equal(401, Assert.Throws<ApplianceError>(() => t.Redeem(m.Value, _vm, ConsoleKind.Vnc)).Status);
    }

    [Fact]
    public void Redeem_WrongVm_ForbiddenAndTicketBurnt()
    {
        var t = new ConsoleTickets(_clock);
        var m = t.Mint(_vm, "alice", ConsoleKind.Vnc);
        Assert.Equal(403, Assert.Throws<ApplianceError>(() => t.Redeem(m.Value, Guid.NewGuid(), ConsoleKind.Vnc)).Status);
        Assert.Equal(401, Assert.Throws<ApplianceError>(() => t.Redeem(m.Value, _vm, ConsoleKind.Vnc)).Status);
    }

    [Fact]
    public void Redeem_WrongKind_Forbidden()
    {
        var t = new ConsoleTickets(_clock);
        var m = t.Mint(_vm, "alice", ConsoleKind.Serial);
        Assert.Equal(403, Assert.Throws<ApplianceError>(() => t.Redeem(m.Value, _vm, ConsoleKind.Vnc)).Status);
    }

    [Fact]
    public void Mint_ExpiredTicketsPresent_PrunesThem()
    {
        var t = new ConsoleTickets(_clock);
        for (var i = 0; i < 10; i++) t.Mint(_vm, "alice", ConsoleKind.Vnc);
        _clock.Now += TimeSpan.FromMinutes(1);
        t.Mint(_vm, "alice", ConsoleKind.Vnc);
        Assert.Equal(1, t.Count);
    }
}
