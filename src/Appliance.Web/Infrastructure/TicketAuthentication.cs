namespace Appliance.Web.Infrastructure;

/// <summary>
/// Marks an endpoint that a one-time console ticket authenticates (browsers cannot send credentials
/// headers on a websocket). With <see cref="Optional"/> the endpoint also keeps its normal authorization
/// and checks a ticket only when one is presented.
/// </summary>
[AttributeUsage(AttributeTargets.Method | AttributeTargets.Class)]
public sealed class TicketAuthenticatedAttribute : Attribute
{
    public bool Optional { get; init; }
}
