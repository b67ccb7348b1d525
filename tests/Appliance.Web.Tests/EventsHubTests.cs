using System.Text.Json;
using System.Threading.Channels;
using Appliance.Web.Tests.Infrastructure;
using Microsoft.AspNetCore.SignalR.Client;

namespace Appliance.Web.Tests;

public sealed class EventsHubTests : IAsyncLifetime
{
    private readonly ApplianceFactory _app = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _app.DisposeAsync();

    private HubConnection Connect(string? token) =>
        new HubConnectionBuilder()
            .WithUrl(new Uri(_app.BaseAddress, "/hubs/events"), o =>
            {
                if (token is not null) o.Headers["Authorization"] = "Bearer " + token;
            })
            .Build();

    [Fact(Timeout = 90_000)]
    public async Task Hub_VmStartedThroughApi_ClientReceivesSnapshotsAndJobOutcome()
    {
        var c = _app.Api();
        await c.CreateDemoVmAsync("evented");
        var token = c.DefaultRequestHeaders.Authorization!.Parameter;
        await using var hub = Connect(token);
        var vmEvents = Channel.CreateUnbounded<JsonElement>();
        var jobEvents = Channel.CreateUnbounded<JsonElement>();
        hub.On<JsonElement>("vm", e => vmEvents.Writer.TryWrite(e));
        hub.On<JsonElement>("job", e => jobEvents.Writer.TryWrite(e));
        await hub.StartAsync();
        var initial = await hub.InvokeAsync<JsonElement>("Snapshot");
        var before = initial.EnumerateArray().Single(s => s.GetProperty("name").GetString() == "evented");
        Assert.Equal("stopped", before.GetProperty("state").GetString());

        await c.ActAsync("evented", "start");
        var states = new List<string>();
        long lastVersion = before.GetProperty("version").GetInt64();
        while (!states.Contains("running"))
        {
            var e = await vmEvents.Reader.ReadAsync();
            if (e.GetProperty("name").GetString() != "evented") continue;
            Assert.True(e.GetProperty("version").GetInt64() > lastVersion, "snapshot versions grow");
            lastVersion = e.GetProperty("version").GetInt64();
            states.Add(e.GetProperty("state").GetString()!);
        }
        Assert.Equal(["starting", "running"], states);
        JsonElement job;
        do job = await jobEvents.Reader.ReadAsync();
        while (job.GetProperty("status").GetString() is "queued" or "running");
        Assert.Equal("start", job.GetProperty("kind").GetString());
        Assert.Equal("succeeded", job.GetProperty("status").GetString());
    }

    [Fact(Timeout = 30_000)]
    public async Task Hub_NoCredentials_Refused()
    {
        await using var hub = Connect(null);
        var e = await Assert.ThrowsAsync<HttpRequestException>(() => hub.StartAsync());
        Assert.Equal(System.Net.HttpStatusCode.Unauthorized, e.StatusCode);
    }
}
