using System.Threading.RateLimiting;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.Options;

namespace Appliance.Web.Security;

/// <summary>
/// Per-user-name limit on password checks (the per-client limit is the "login" rate-limiter policy on the endpoints).
/// Counted on the name as typed, so guessing against one account from many addresses is slowed too.
/// </summary>
public sealed class LoginThrottle : IDisposable
{
    public const string Policy = "login";
    private readonly PartitionedRateLimiter<string> _perUser;
    private readonly SecurityOptions _o;

    public LoginThrottle(IOptions<SecurityOptions> options)
    {
        _o = options.Value;
        _perUser = PartitionedRateLimiter.Create<string, string>(name => RateLimitPartition.GetFixedWindowLimiter(name,
            _ => new FixedWindowRateLimiterOptions { PermitLimit = _o.LoginPermitsPerUserPerMinute, Window = TimeSpan.FromMinutes(1), QueueLimit = 0 }));
    }

    public bool TryAcquire(string userName)
    {
        using var lease = _perUser.AttemptAcquire(userName.ToLowerInvariant());
        return lease.IsAcquired;
    }

    public Task FailureDelayAsync(CancellationToken ct) => Task.Delay(_o.LoginFailureDelayMilliseconds, ct);

    public static void AddPolicy(RateLimiterOptions o, SecurityOptions s)
    {
        o.AddPolicy(Policy, ctx => RateLimitPartition.GetFixedWindowLimiter(ctx.Connection.RemoteIpAddress?.ToString() ?? "unknown",
            _ => new FixedWindowRateLimiterOptions { PermitLimit = s.LoginPermitsPerClientPerMinute, Window = TimeSpan.FromMinutes(1), QueueLimit = 0 }));
        o.OnRejected = (c, _) => Throttled(c.HttpContext);
    }

    public static ValueTask Throttled(HttpContext ctx)
    {
        ctx.Response.Headers.RetryAfter = "60";
        if (ctx.Request.Path.StartsWithSegments("/auth/login"))
        {
            ctx.Response.Redirect("/login?error=throttled");
            return ValueTask.CompletedTask;
        }
        return new ValueTask(SecurityProblems.WriteAsync(ctx, 429, "too-many-attempts", "Too many attempts",
            "Too many sign-in attempts; wait a minute and try again."));
    }

    public void Dispose() => _perUser.Dispose();
}
