using Appliance.Core;
using Appliance.Core.Checkpoints;
using Appliance.Data;
using Appliance.Web;
using Microsoft.Extensions.Options;

// The stream keeper is this executable too (see StreamKeeper): it runs its loop and never builds the web host.
if (StreamKeeper.IsCommand(args)) return StreamKeeper.Run(args);
return await RunApplianceAsync(args);

// A method of its own, so that the keeper's start compiles and loads none of the web host.
static async Task<int> RunApplianceAsync(string[] args)
{
    var builder = ApplianceHost.CreateBuilder(args);

    // Checked before the host starts so a bad setting stops the appliance with one line, not a logged stack trace.
    var settings = builder.Configuration.GetSection(ApplianceOptions.Section).Get<ApplianceOptions>() ?? new ApplianceOptions();
    if (new ApplianceOptionsValidator().Validate(null, settings) is { Failed: true } invalid)
    {
        Console.Error.WriteLine("appliance: invalid configuration: " + string.Join("; ", invalid.Failures!));
        return 2;
    }

    var app = builder.Build().Configure();
    try
    {
        // Also run by StartupTasks (which the test host uses); here first so a refusal is one line, not a logged stack trace.
        await app.Services.GetRequiredService<MigrationRunner>().RunAsync();
        await app.RunAsync();
        return 0;
    }
    catch (OptionsValidationException e)
    {
        Console.Error.WriteLine("appliance: invalid configuration: " + string.Join("; ", e.Failures));
        return 2;
    }
    catch (MigrationException e)
    {
        Console.Error.WriteLine("appliance: database migration refused: " + e.Message);
        return 3;
    }
}

public partial class Program;
