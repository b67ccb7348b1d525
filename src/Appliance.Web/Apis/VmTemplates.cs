using Appliance.Core.Errors;
using Appliance.Core.Vms;

namespace Appliance.Web.Apis;

public static class VmTemplates
{
    public const string DemoKernel = "demo-vmlinuz";
    public const string DemoInitrd = "demo-initrd.img";
    public static readonly string[] Names = ["demo"];

    public static VmSpec Base(string? template) => template switch
    {
        null => new VmSpec(),
        "demo" => new VmSpec
        {
            Description = "Demo guest: Linux + busybox, boots in seconds, counts on its serial port.",
            Vcpus = 1,
            MemoryMiB = 256,
            Machine = "q35",
            BootOrder = ["disk"],
            // no_timer_check: under an emulator on a busy host the kernel's boot-time IO-APIC timer check can miss
            // its ticks and panic ("IO-APIC + timer doesn't work"); seen once in a test run on two loaded cores.
            KernelBoot = new KernelBootSpec { Kernel = DemoKernel, Initrd = DemoInitrd, Cmdline = "console=tty0 console=ttyS0 quiet no_timer_check" },
            Disks = [new DiskSpec { Name = "disk0", SizeMiB = 64, Bus = "virtio" }],
            Display = new DisplaySpec { Type = "std", Width = 1024, Height = 768 },
            SerialConsole = true,
            Tags = ["demo"],
        },
        _ => throw ApplianceError.Field("template", $"Unknown template '{template}'; accepted: {string.Join(", ", Names)}."),
    };

    public static VmSpec Apply(VmCreateRequest r)
    {
        var b = Base(r.Template);
        return b with
        {
            Name = r.Name,
            Description = r.Description ?? b.Description,
            Vcpus = r.Vcpus ?? b.Vcpus,
            MemoryMiB = r.MemoryMiB ?? b.MemoryMiB,
            Machine = r.Machine ?? b.Machine,
            Firmware = r.Firmware ?? b.Firmware,
            CpuModel = r.CpuModel ?? b.CpuModel,
            BootOrder = r.BootOrder ?? b.BootOrder,
            Disks = r.Disks ?? b.Disks,
            Cdrom = r.Cdrom ?? b.Cdrom,
            KernelBoot = r.KernelBoot ?? b.KernelBoot,
            Nics = r.Nics ?? b.Nics,
            Display = r.Display ?? b.Display,
            SerialConsole = r.SerialConsole ?? b.SerialConsole,
            Tags = r.Tags ?? b.Tags,
            RestartPolicy = r.RestartPolicy ?? b.RestartPolicy,
        };
    }
}
