using Appliance.Data;
using Appliance.Web;
using Microsoft.Extensions.Options;

var builder = ApplianceHost.CreateBuilder(args);
var app = builder.Build().Configure();
try
{
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

public partial class Program;
