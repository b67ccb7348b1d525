namespace Appliance.Core;

/// <summary>Settings bound from the "Appliance" configuration section.</summary>
public sealed class ApplianceOptions
{
    public const string Section = "Appliance";

    /// <summary>Root of everything the appliance stores. Relative paths resolve against the working directory.</summary>
    public string DataDirectory { get; set; } = "data";

    public string QemuPath { get; set; } = "/usr/bin/qemu-system-x86_64";

    public string QemuImgPath { get; set; } = "/usr/bin/qemu-img";

    /// <summary><c>auto</c>, <c>kvm</c> or <c>tcg</c>.</summary>
    public string Accelerator { get; set; } = "auto";

    /// <summary>Memory kept free for the host when admitting a VM start.</summary>
    public int HostMemoryReserveMiB { get; set; } = 1024;

    /// <summary>How long an ACPI shutdown may take before the VM is forced off.</summary>
    public int ShutdownTimeoutSeconds { get; set; } = 60;

    /// <summary>Folder holding the demo guest (vmlinuz, initrd.img); empty means &lt;DataDirectory&gt;/images/demo.</summary>
    public string? DemoGuestDirectory { get; set; }

    /// <summary>Largest image upload accepted, in bytes.</summary>
    public long MaxUploadBytes { get; set; } = 16L * 1024 * 1024 * 1024;

    /// <summary>Largest JSON request body accepted, in bytes.</summary>
    public long MaxJsonBodyBytes { get; set; } = 256 * 1024;

    /// <summary>Unprivileged user QEMU drops to when the appliance runs as root; empty disables.</summary>
    public string? QemuRunAsUser { get; set; }

    /// <summary>Use QEMU's seccomp sandbox when the binary supports it.</summary>
    public bool QemuSandbox { get; set; } = true;

    public string ResolvedDataDirectory => Path.GetFullPath(DataDirectory);

    public string ResolvedDemoGuestDirectory =>
        string.IsNullOrWhiteSpace(DemoGuestDirectory)
            ? Path.Combine(ResolvedDataDirectory, "images", "demo")
            : Path.GetFullPath(DemoGuestDirectory);
}
