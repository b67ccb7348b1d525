using System.Collections.Concurrent;
using System.Security.Cryptography;
using Appliance.Core.Errors;

namespace Appliance.Core.Console;

/// <summary>What a console ticket opens: the VNC (RFB) socket or the serial console.</summary>
public enum ConsoleKind { Vnc, Serial }

public sealed record ConsoleTicket(string Value, Guid VmId, string User, ConsoleKind Kind, DateTimeOffset ExpiresAt);

/// <summary>
/// One-time tickets for the console websockets. A browser cannot put an Authorization header on a
/// websocket, so an authenticated API call mints a short-lived ticket that the socket presents once.
/// Tickets are kept by their SHA-256, so neither a memory dump nor lookup timing gives a usable ticket away.
/// </summary>
public sealed class ConsoleTickets(TimeProvider clock)
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<string, Entry> _entries = new();

    private sealed record Entry(byte[] Hash, Guid VmId, string User, ConsoleKind Kind, DateTimeOffset ExpiresAt);

    public ConsoleTickets() : this(TimeProvider.System) { }

    public int Count => _entries.Count;

    public ConsoleTicket Mint(Guid vmId, string user, ConsoleKind kind)
    {
        Prune();
        var value = Base64Url(RandomNumberGenerator.GetBytes(32));
        var hash = SHA256.HashData(System.Text.Encoding.ASCII.GetBytes(value));
        var expires = clock.GetUtcNow() + Lifetime;
        _entries[Convert.ToHexString(hash)] = new Entry(hash, vmId, user, kind, expires);
        return new ConsoleTicket(value, vmId, user, kind, expires);
    }

    /// <summary>
    /// Consumes <paramref name="ticket"/>: a ticket is burnt by its first presentation, right or wrong, so a
    /// ticket shown for the wrong VM cannot be replayed for the right one. Throws 401 when the ticket is
    /// missing, unknown, used or expired, 403 when it was minted for another VM or console.
    /// </summary>
    public ConsoleTicket Redeem(string? ticket, Guid vmId, ConsoleKind kind)
    {
        if (string.IsNullOrEmpty(ticket))
            throw Unauthorized("ticket-required", "Console ticket required", "Open this websocket with ?ticket=... from POST /api/v1/vms/{id}/console.");
        if (ticket.Length > 128)
            throw Unauthorized("ticket-invalid", "Console ticket not valid", "The ticket is unknown, already used or expired; request a new one.");
        var hash = SHA256.HashData(System.Text.Encoding.ASCII.GetBytes(ticket));
        if (!_entries.TryRemove(Convert.ToHexString(hash), out var e) || !CryptographicOperations.FixedTimeEquals(e.Hash, hash))
            throw Unauthorized("ticket-invalid", "Console ticket not valid", "The ticket is unknown, already used or expired; request a new one.");
        if (clock.GetUtcNow() >= e.ExpiresAt)
            throw Unauthorized("ticket-invalid", "Console ticket not valid", "The ticket is unknown, already used or expired; request a new one.");
        if (e.VmId != vmId || e.Kind != kind)
            throw new ApplianceError(403, "ticket-mismatch", "Console ticket not for this console",
                "The ticket was issued for another VM or another console; request one for this one.");
        return new ConsoleTicket(ticket, e.VmId, e.User, e.Kind, e.ExpiresAt);
    }

    private void Prune()
    {
        var now = clock.GetUtcNow();
        foreach (var (k, e) in _entries)
            if (e.ExpiresAt <= now) _entries.TryRemove(k, out _);
    }

    private static ApplianceError Unauthorized(string slug, string title, string detail) => new(401, slug, title, detail);

    private static string Base64Url(byte[] bytes) =>
        Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
