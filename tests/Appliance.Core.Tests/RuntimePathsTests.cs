using System.Text;
using Appliance.Core.Emulation;

namespace Appliance.Core.Tests;

public sealed class RuntimePathsTests
{
    private static readonly Guid Vm = Guid.Parse("12345678-9abc-def0-1234-56789abcdef0");

    [Fact]
    public void For_ShortDataDir_UsesRunFolderInside() =>
        Assert.Equal("/srv/appliance/run/12345678", RuntimePaths.For("/srv/appliance", Vm).RunDir);

    [Fact]
    public void For_DeepDataDir_FallsBackToShortBaseWithinSocketLimit()
    {
        var deep = "/srv/" + string.Join('/', Enumerable.Repeat("very-long-folder-name", 6));
        var p = RuntimePaths.For(deep, Vm);
        Assert.StartsWith("/tmp/appliance-", p.RunDir);
        Assert.True(Encoding.UTF8.GetByteCount(p.MigrationSocket) <= 107);
        Assert.NotEqual(p.RunDir, RuntimePaths.For(deep + "-other", Vm).RunDir);
    }
}
