using Appliance.Core.Host;

namespace Appliance.Core.Tests;

public sealed class AcceleratorDetectorTests
{
    private const string IntelWithVmx = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge vmx ssse3 sse4_1\n\nprocessor\t: 1\nflags\t\t: fpu vme vmx\n";
    private const string AmdWithSvm = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse svm lm\n";
    // A nested paravirtual guest: /dev/kvm exists, but the CPU shows no vmx/svm; Linux guests crash under it.
    private const string NestedNoFlags = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lm constant_tsc\n";
    private const string FlagAsSubstring = "processor\t: 0\nflags\t\t: fpu vmxnotreally svmish\n";

    [Theory]
    [InlineData(IntelWithVmx, true)]
    [InlineData(AmdWithSvm, true)]
    [InlineData(NestedNoFlags, false)]
    [InlineData(FlagAsSubstring, false)]
    [InlineData("", false)]
    public void CpuHasVirtualization_SampleCpuinfo_MatchesWholeFlagsOnly(string cpuinfo, bool expected) =>
        Assert.Equal(expected, AcceleratorDetector.CpuHasVirtualization(cpuinfo));

    [Fact]
    public void Auto_VmxAndKvmOpens_PicksKvm() =>
        Assert.Equal("kvm", AcceleratorDetector.Choose("auto", IntelWithVmx, () => true).Accelerator);

    [Fact]
    public void Auto_NestedKvmWithoutCpuFlags_PicksTcgWithReason()
    {
        var kvmProbed = false;
        var c = AcceleratorDetector.Choose("auto", NestedNoFlags, () => kvmProbed = true);
        Assert.Equal("tcg", c.Accelerator);
        Assert.Contains("vmx", c.Reason);
        Assert.False(kvmProbed);
    }

    [Fact]
    public void Auto_FlagsButDevKvmDoesNotOpen_PicksTcg() =>
        Assert.Equal("tcg", AcceleratorDetector.Choose("auto", AmdWithSvm, () => false).Accelerator);

    [Theory]
    [InlineData("kvm")]
    [InlineData("tcg")]
    public void Configured_Explicit_IsHonoured(string accel) =>
        Assert.Equal(accel, AcceleratorDetector.Choose(accel, NestedNoFlags, () => false).Accelerator);
}
