using System.Security.Claims;
using System.Security.Cryptography;
using Appliance.Core.Errors;
using Appliance.Data;
using Microsoft.AspNetCore.Identity;

namespace Appliance.Web.Security;

/// <summary>Users and their passwords, and the bearer tokens issued to them. The only place passwords and tokens are hashed.</summary>
public sealed class Accounts(SecurityRepository repo, TimeProvider clock)
{
    public const string TokenPrefix = "apl_";
    public static readonly TimeSpan SessionTokenLifetime = TimeSpan.FromHours(1);
    private static readonly PasswordHasher<UserRecord> Hasher = new();
    // Verifying against this when the user does not exist keeps the timing of "no such user" and "wrong password" alike.
    private static readonly string DummyHash = Hasher.HashPassword(null!, "not-a-password-" + Guid.NewGuid());

    public SecurityRepository Repository => repo;

    public static string ValidateName(string? name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            throw ApplianceError.Field("name", "1-64 characters: letters, digits, '-', '_' or '.'.");
        return name;
    }

    public static void ValidatePassword(string? password, string field = "password")
    {
        if (password is null || password.Length < 10 || password.Length > 256)
            throw ApplianceError.Field(field, "Passwords are 10 to 256 characters long.");
    }

    public async Task<UserRecord> CreateUserAsync(string name, Role role, string password, CancellationToken ct = default)
    {
        ValidateName(name);
        ValidatePassword(password);
        var now = clock.GetUtcNow();
        var u = new UserRecord { Id = Guid.NewGuid(), Name = name, Role = role.ToWire(), PasswordHash = Hasher.HashPassword(null!, password), CreatedAt = now, UpdatedAt = now };
        if (!await repo.AddUserAsync(u, ct))
            throw ApplianceError.Conflict("duplicate-name", $"A user named '{name}' already exists.");
        return u;
    }

    public Task SetPasswordAsync(Guid userId, string password, CancellationToken ct = default)
    {
        ValidatePassword(password);
        return repo.UpdateUserAsync(userId, null, Hasher.HashPassword(null!, password), null, ct);
    }

    /// <summary>The user when the name and password match an enabled account; null otherwise, after the same work either way.</summary>
    public async Task<UserRecord?> CheckPasswordAsync(string name, string password, CancellationToken ct = default)
    {
        var u = string.IsNullOrEmpty(name) ? null : await repo.FindUserAsync(name, ct);
        var result = Hasher.VerifyHashedPassword(u!, u?.PasswordHash ?? DummyHash, password);
        if (u is null || u.Disabled || result == PasswordVerificationResult.Failed) return null;
        if (result == PasswordVerificationResult.SuccessRehashNeeded)
            await repo.UpdateUserAsync(u.Id, null, Hasher.HashPassword(u, password), null, ct);
        return u;
    }

    public static string HashToken(string token) => Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(token)));

    /// <summary>Issues a token: 32 random bytes, shown once; only its SHA-256 is stored.</summary>
    public async Task<(TokenRecord Record, string Token)> IssueTokenAsync(UserRecord user, string name, Role role, string kind, DateTimeOffset? expiresAt, CancellationToken ct = default)
    {
        var token = TokenPrefix + Base64Url(RandomNumberGenerator.GetBytes(32));
        var rec = new TokenRecord
        {
            Id = Guid.NewGuid(), UserId = user.Id, UserName = user.Name, Name = name, Role = role.ToWire(), Kind = kind,
            TokenHash = HashToken(token), CreatedAt = clock.GetUtcNow(), ExpiresAt = expiresAt,
        };
        await repo.AddTokenAsync(rec, ct);
        return (rec, token);
    }

    /// <summary>The principal a bearer token stands for, or null when it is unknown, revoked, expired or its user is disabled.</summary>
    public async Task<ClaimsPrincipal?> AuthenticateTokenAsync(string token, string scheme, CancellationToken ct = default)
    {
        if (!token.StartsWith(TokenPrefix, StringComparison.Ordinal) || token.Length > 128) return null;
        var found = await repo.FindTokenByHashAsync(HashToken(token), ct);
        if (found is not { } f) return null;
        var now = clock.GetUtcNow();
        if (f.Token.RevokedAt is not null || f.Token.ExpiresAt <= now || f.User.Disabled) return null;
        if (!Roles.TryParse(f.Token.Role, out var tokenRole) || !Roles.TryParse(f.User.Role, out var userRole)) return null;
        // Only named tokens carry a last-used time worth a write on every request.
        if (f.Token.Kind == "api" && (f.Token.LastUsedAt is null || now - f.Token.LastUsedAt > TimeSpan.FromMinutes(1)))
            await repo.TouchTokenAsync(f.Token.Id, now, ct);
        var role = tokenRole < userRole ? tokenRole : userRole;
        return Principal(f.User, role, scheme, f.Token.Id);
    }

    public static ClaimsPrincipal Principal(UserRecord user, Role role, string scheme, Guid? tokenId = null)
    {
        var claims = new List<Claim>
        {
            new(ClaimTypes.NameIdentifier, user.Id.ToString()),
            new(ClaimTypes.Name, user.Name),
            new(ClaimTypes.Role, role.ToWire()),
        };
        if (tokenId is not null) claims.Add(new Claim(TokenIdClaim, tokenId.Value.ToString()));
        return new ClaimsPrincipal(new ClaimsIdentity(claims, scheme, ClaimTypes.Name, ClaimTypes.Role));
    }

    public const string TokenIdClaim = "appliance:token";

    private static string Base64Url(byte[] b) => Convert.ToBase64String(b).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
