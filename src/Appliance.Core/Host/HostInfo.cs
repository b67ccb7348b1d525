namespace Appliance.Core.Host;

/// <summary>Facts about the machine the appliance runs on.</summary>
public interface IHostInfo
{
    int LogicalCores { get; }
    long TotalMemoryMiB { get; }
    long AvailableMemoryMiB { get; }
    bool OvmfAvailable { get; }
}

public sealed class LinuxHostInfo : IHostInfo
{
    public static readonly string[] OvmfCandidates = ["/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd"];

    public int LogicalCores => Environment.ProcessorCount;

    public long TotalMemoryMiB => ReadMeminfo("MemTotal:") / 1024;

    public long AvailableMemoryMiB => ReadMeminfo("MemAvailable:") / 1024;

    public bool OvmfAvailable => OvmfCandidates.Any(File.Exists);

    public static string? OvmfPath => OvmfCandidates.FirstOrDefault(File.Exists);

    private static long ReadMeminfo(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (!line.StartsWith(key, StringComparison.Ordinal)) continue;
                var parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        catch (IOException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1024;
    }
}

/// <summary>
/// Chooses between KVM and TCG. A nested paravirtual /dev/kvm can open and even report itself enabled
/// over QMP while Linux guests die under it ("KVM internal error ... emulation failure"), so KVM is
/// chosen only when the CPU itself advertises hardware virtualisation (vmx or svm) as well.
/// </summary>
public static class AcceleratorDetector
{
    public sealed record Choice(string Accelerator, string Reason);

    public static bool CpuHasVirtualization(string cpuinfo)
    {
        foreach (var line in cpuinfo.Split('\n'))
        {
            if (!line.StartsWith("flags", StringComparison.Ordinal)) continue;
            var colon = line.IndexOf(':');
            if (colon < 0) continue;
            var flags = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (flags.Contains("vmx") || flags.Contains("svm")) return true;
        }
        return false;
    }

    public static Choice Choose(string configured, string cpuinfo, Func<bool> kvmOpens)
    {
        switch (configured)
        {
            case "tcg":
                return new("tcg", "configured");
            case "kvm":
                return new("kvm", "configured");
        }
        if (!CpuHasVirtualization(cpuinfo))
            return new("tcg", "the CPU flags show neither vmx nor svm");
        if (!kvmOpens())
            return new("tcg", "/dev/kvm cannot be opened");
        return new("kvm", "vmx/svm present and /dev/kvm opens");
    }

    public static Choice Detect(string configured)
    {
        string cpuinfo;
        try { cpuinfo = File.ReadAllText("/proc/cpuinfo"); }
        catch (IOException) { cpuinfo = ""; }
        return Choose(configured, cpuinfo, static () =>
        {
            try
            {
                using var fs = new FileStream("/dev/kvm", FileMode.Open, FileAccess.ReadWrite);
                return true;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
        });
    }
}
