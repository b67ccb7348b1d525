using System.Text;
using Dapper;

namespace Appliance.Data;

public sealed class UserRecord
{
    public Guid Id { get; init; }
    public required string Name { get; init; }
    public required string Role { get; init; }
    public required string PasswordHash { get; init; }
    public bool Disabled { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }
}

public sealed class TokenRecord
{
    public Guid Id { get; init; }
    public Guid UserId { get; init; }
    public string UserName { get; init; } = "";
    public required string Name { get; init; }
    public required string Role { get; init; }
    public required string Kind { get; init; }
    public required string TokenHash { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset? ExpiresAt { get; init; }
    public DateTimeOffset? LastUsedAt { get; init; }
    public DateTimeOffset? RevokedAt { get; init; }
}

public sealed class AuditRecord
{
    public long Id { get; init; }
    public DateTimeOffset At { get; init; }
    public string? UserName { get; init; }
    public string? AuthMethod { get; init; }
    public string? RemoteAddr { get; init; }
    public required string Action { get; init; }
    public string? Target { get; init; }
    public int Status { get; init; }
    public required string Outcome { get; init; }
    public string? Detail { get; init; }
}

public sealed record AuditQuery(string? User, string? Action, string? Target, DateTimeOffset? From, DateTimeOffset? To, int Offset, int Limit);

/// <summary>Users, bearer tokens and the append-only audit log (migration 0003).</summary>
public sealed class SecurityRepository(Database db)
{
    private const string UserColumns = "id AS Id, name AS Name, role AS Role, password_hash AS PasswordHash, disabled AS Disabled, created_at AS CreatedAt, updated_at AS UpdatedAt";
    private const string TokenColumns = """
        t.id AS Id, t.user_id AS UserId, u.name AS UserName, t.name AS Name, t.role AS Role, t.kind AS Kind, t.token_hash AS TokenHash,
        t.created_at AS CreatedAt, t.expires_at AS ExpiresAt, t.last_used_at AS LastUsedAt, t.revoked_at AS RevokedAt
        """;

    public async Task<long> CountUsersAsync(CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM users");
    }

    public async Task<UserRecord?> FindUserAsync(string name, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<UserRecord>($"SELECT {UserColumns} FROM users WHERE name = @name", new { name });
    }

    public async Task<UserRecord?> GetUserAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<UserRecord>($"SELECT {UserColumns} FROM users WHERE id = @id", new { id = id.ToString() });
    }

    public async Task<IReadOnlyList<UserRecord>> UsersAsync(CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<UserRecord>($"SELECT {UserColumns} FROM users ORDER BY name")).ToList();
    }

    /// <summary>Inserts the user; false when the name is taken.</summary>
    public async Task<bool> AddUserAsync(UserRecord u, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var n = await c.ExecuteAsync("""
            INSERT INTO users(id, name, role, password_hash, disabled, created_at, updated_at)
            VALUES (@Id, @Name, @Role, @PasswordHash, @Disabled, @CreatedAt, @UpdatedAt)
            ON CONFLICT(name) DO NOTHING
            """, new { Id = u.Id.ToString(), u.Name, u.Role, u.PasswordHash, Disabled = u.Disabled ? 1 : 0, CreatedAt = Database.ToDb(u.CreatedAt), UpdatedAt = Database.ToDb(u.UpdatedAt) });
        return n == 1;
    }

    public async Task UpdateUserAsync(Guid id, string? role, string? passwordHash, bool? disabled, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await using var tx = await c.BeginTransactionAsync(ct);
        await c.ExecuteAsync("""
            UPDATE users SET role = COALESCE(@role, role), password_hash = COALESCE(@passwordHash, password_hash),
                disabled = COALESCE(@disabled, disabled), updated_at = @now WHERE id = @id
            """, new { id = id.ToString(), role, passwordHash, disabled = disabled is null ? (int?)null : disabled.Value ? 1 : 0, now = Database.ToDb(DateTimeOffset.UtcNow) }, tx);
        // A demoted or disabled user keeps no token that outranks them.
        if (role is not null || disabled == true)
            await c.ExecuteAsync("UPDATE api_tokens SET revoked_at = @now WHERE user_id = @id AND revoked_at IS NULL AND (@disabled = 1 OR role <> @role)",
                new { id = id.ToString(), role = role ?? "", disabled = disabled == true ? 1 : 0, now = Database.ToDb(DateTimeOffset.UtcNow) }, tx);
        await tx.CommitAsync(ct);
    }

    public async Task<bool> DeleteUserAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.ExecuteAsync("DELETE FROM users WHERE id = @id", new { id = id.ToString() }) == 1;
    }

    public async Task AddTokenAsync(TokenRecord t, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("""
            INSERT INTO api_tokens(id, user_id, name, role, kind, token_hash, created_at, expires_at)
            VALUES (@Id, @UserId, @Name, @Role, @Kind, @TokenHash, @CreatedAt, @ExpiresAt)
            """, new
        {
            Id = t.Id.ToString(), UserId = t.UserId.ToString(), t.Name, t.Role, t.Kind, t.TokenHash,
            CreatedAt = Database.ToDb(t.CreatedAt), ExpiresAt = t.ExpiresAt is { } e ? Database.ToDb(e) : null,
        });
    }

    public async Task<(TokenRecord Token, UserRecord User)?> FindTokenByHashAsync(string hash, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var t = await c.QuerySingleOrDefaultAsync<TokenRecord>($"SELECT {TokenColumns} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = @hash", new { hash });
        if (t is null) return null;
        var u = await c.QuerySingleAsync<UserRecord>($"SELECT {UserColumns} FROM users WHERE id = @id", new { id = t.UserId.ToString() });
        return (t, u);
    }

    public async Task TouchTokenAsync(Guid id, DateTimeOffset at, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("UPDATE api_tokens SET last_used_at = @at WHERE id = @id", new { id = id.ToString(), at = Database.ToDb(at) });
    }

    public async Task<IReadOnlyList<TokenRecord>> TokensAsync(Guid? userId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<TokenRecord>(
            $"SELECT {TokenColumns} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.kind = 'api' AND (@userId IS NULL OR t.user_id = @userId) ORDER BY t.created_at",
            new { userId = userId?.ToString() })).ToList();
    }

    public async Task<TokenRecord?> GetTokenAsync(Guid id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<TokenRecord>($"SELECT {TokenColumns} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = @id", new { id = id.ToString() });
    }

    public async Task RevokeTokenAsync(Guid id, DateTimeOffset at, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, @at) WHERE id = @id", new { id = id.ToString(), at = Database.ToDb(at) });
    }

    /// <summary>Drops session tokens that expired more than a day ago; named tokens stay listed.</summary>
    public async Task PurgeExpiredSessionsAsync(DateTimeOffset now, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("DELETE FROM api_tokens WHERE kind = 'session' AND expires_at < @cutoff", new { cutoff = Database.ToDb(now.AddDays(-1)) });
    }

    public async Task AppendAuditAsync(AuditRecord a, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        await c.ExecuteAsync("""
            INSERT INTO audit_log(at, user_name, auth_method, remote_addr, action, target, status, outcome, detail)
            VALUES (@At, @UserName, @AuthMethod, @RemoteAddr, @Action, @Target, @Status, @Outcome, @Detail)
            """, new { At = Database.ToDb(a.At), a.UserName, a.AuthMethod, a.RemoteAddr, a.Action, a.Target, a.Status, a.Outcome, a.Detail });
    }

    public async Task<(IReadOnlyList<AuditRecord> Items, int Total)> AuditAsync(AuditQuery q, CancellationToken ct = default)
    {
        var where = new StringBuilder("WHERE 1 = 1");
        if (q.User is not null) where.Append(" AND user_name = @User COLLATE NOCASE");
        if (q.Action is not null) where.Append(" AND action LIKE '%' || @Action || '%'");
        if (q.Target is not null) where.Append(" AND target = @Target");
        if (q.From is not null) where.Append(" AND at >= @From");
        if (q.To is not null) where.Append(" AND at < @To");
        var p = new
        {
            q.User, q.Action, q.Target, From = q.From is { } f ? Database.ToDb(f) : null, To = q.To is { } t ? Database.ToDb(t) : null,
            q.Offset, q.Limit,
        };
        await using var c = await db.OpenAsync(ct);
        var total = await c.ExecuteScalarAsync<int>($"SELECT COUNT(*) FROM audit_log {where}", p);
        var items = await c.QueryAsync<AuditRecord>($"""
            SELECT id AS Id, at AS At, user_name AS UserName, auth_method AS AuthMethod, remote_addr AS RemoteAddr, action AS Action,
                   target AS Target, status AS Status, outcome AS Outcome, detail AS Detail
            FROM audit_log {where} ORDER BY id DESC LIMIT @Limit OFFSET @Offset
            """, p);
        return (items.ToList(), total);
    }
}
