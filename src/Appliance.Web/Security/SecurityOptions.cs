namespace Appliance.Web.Security;

/// <summary>Settings bound from "Appliance:Security".</summary>
public sealed class SecurityOptions
{
    public const string Section = "Appliance:Security";

    /// <summary>Password for the first-start <c>admin</c> user (also APPLIANCE_ADMIN_PASSWORD); empty generates one.</summary>
    public string? AdminPassword { get; set; }

    /// <summary>Login and token requests accepted per client address per minute.</summary>
    public int LoginPermitsPerClientPerMinute { get; set; } = 30;

    /// <summary>Login and token requests accepted per user name per minute.</summary>
    public int LoginPermitsPerUserPerMinute { get; set; } = 10;

    /// <summary>Added to every failed login before it answers.</summary>
    public int LoginFailureDelayMilliseconds { get; set; } = 1000;

    /// <summary>Dashboard session lifetime; sliding, renewed while in use.</summary>
    public int SessionIdleMinutes { get; set; } = 480;

    /// <summary>Serve plain HTTP on a non-loopback address instead of switching it to HTTPS with the appliance's own certificate.</summary>
    public bool AllowPlainHttp { get; set; }
}
