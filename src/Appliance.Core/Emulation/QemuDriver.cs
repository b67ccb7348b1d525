using System.Globalization;
using Appliance.Core.Host;
using Appliance.Core.Vms;
using Microsoft.Extensions.Options;

namespace Appliance.Core.Emulation;

public sealed class QemuDriver(IOptions<ApplianceOptions> options) : IEmulatorDriver
{
    public string Name => "qemu";

    public IReadOnlySet<EmulatorCapability> Capabilities { get; } = Enum.GetValues<EmulatorCapability>().ToHashSet();

    private string? _version;

    public async Task<string> GetVersionAsync(CancellationToken ct = default)
    {
        if (_version is not null) return _version;
        var text = await ToolRunner.RunCheckedAsync(options.Value.QemuPath, ["--version"], TimeSpan.FromSeconds(20), ct);
        // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"
        var first = text.Split('\n')[0];
        const string marker = "version ";
        var i = first.IndexOf(marker, StringComparison.Ordinal);
        return _version = i < 0 ? first.Trim() : first[(i + marker.Length)..].Trim();
    }

    public LaunchPlan BuildLaunch(LaunchContext ctx) => QemuCommandLine.Build(options.Value.QemuPath, ctx);
}

/// <summary>
/// Builds QEMU's argument list from a VM definition. Every device gets an explicit id and PCI slot so
/// the device set is stable across starts and can be compared when a checkpoint is restored.
/// </summary>
public static class QemuCommandLine
{
    public static string ResolveCpu(string model, string accelerator) =>
        model != "default" ? model : accelerator == "kvm" ? "host" : "qemu64";

    public static LaunchPlan Build(string qemuPath, LaunchContext ctx)
    {
        var s = ctx.Spec;
        var a = new List<string>();
        var devices = new List<DeviceInfo>();
        var bus = s.Machine == "q35" ? "pcie.0" : "pci.0";
        var cpu = ResolveCpu(s.CpuModel, ctx.Accelerator);
        void Add(params string[] items) => a.AddRange(items);
        static string Hex(int slot) => "0x" + slot.ToString("x", CultureInfo.InvariantCulture);

        Add(qemuPath, "-nodefaults", "-no-user-config");
        Add("-name", $"guest={Escape(s.Name)},debug-threads=on");
        Add("-uuid", ctx.VmId.ToString());
        Add("-machine", s.Machine == "q35" ? "q35" : "pc");
        Add("-accel", ctx.Accelerator);
        Add("-cpu", cpu);
        Add("-m", s.MemoryMiB.ToString(CultureInfo.InvariantCulture));
        Add("-smp", s.Vcpus.ToString(CultureInfo.InvariantCulture));
        Add("-pidfile", ctx.Paths.PidFile);
        Add("-chardev", $"socket,id=qmp,path={Escape(ctx.Paths.QmpSocket)},server=on,wait=off");
        Add("-mon", "chardev=qmp,mode=control");
        Add("-display", "none");
        Add("-vnc", $"unix:{ctx.Paths.VncSocket}");
        Add("-msg", "timestamp=on");
        // QEMU 7.2's seccomp filter with elevateprivileges=deny also forbids the setuid that -runas makes (the process dies
        // with SIGSYS); once QEMU has become the unprivileged user it has no way back to root, so "allow" costs nothing there.
        if (ctx.Sandbox)
            Add("-sandbox", $"on,obsolete=deny,elevateprivileges={(string.IsNullOrEmpty(ctx.RunAsUser) ? "deny" : "allow")},spawn=deny,resourcecontrol=deny");
        if (!string.IsNullOrEmpty(ctx.RunAsUser)) Add("-runas", ctx.RunAsUser);
        if (s.Firmware == "uefi" && ctx.FirmwarePath is not null) Add("-drive", $"if=pflash,format=raw,readonly=on,file={Escape(ctx.FirmwarePath)}");

        // -nodefaults drops the VGA adapter too; without this line the console is blank.
        var video = s.Display.Type == "virtio" ? "virtio-vga" : "VGA";
        var videoProps = s.Display.Type == "virtio"
            ? $"xres={s.Display.Width},yres={s.Display.Height}"
            : $"xres={s.Display.Width},yres={s.Display.Height},vgamem_mb=16";
        Add("-device", $"{video},id=video0,bus={bus},addr={Hex(2)},{videoProps}");
        devices.Add(new DeviceInfo("video0", video, bus, Hex(2)));

        var needsAhci = s.Disks.Any(d => d.Bus == "sata") || ctx.CdromPath is not null;
        if (needsAhci)
        {
            Add("-device", $"ich9-ahci,id=sata0,bus={bus},addr={Hex(3)}");
            devices.Add(new DeviceInfo("sata0", "ich9-ahci", bus, Hex(3)));
        }
        var sataPort = 0;
        var bootIndex = 1;
        var diskBoot = s.BootOrder.IndexOf("disk");
        for (var i = 0; i < s.Disks.Count; i++)
        {
            var d = s.Disks[i];
            var file = ctx.DiskFiles.TryGetValue(d.Name, out var f) ? f : throw new InvalidOperationException($"No file for disk {d.Name}");
            var drive = $"drive-{d.Name}";
            Add("-drive", $"if=none,id={drive},file={Escape(file)},format=qcow2,cache=writeback,discard=unmap");
            var boot = diskBoot >= 0 && i == 0 && ctx.Spec.KernelBoot is null ? $",bootindex={bootIndex + diskBoot}" : "";
            if (d.Bus == "virtio")
            {
                var slot = Hex(4 + i);
                Add("-device", $"virtio-blk-pci,id={d.Name},drive={drive},bus={bus},addr={slot}{boot}");
                devices.Add(new DeviceInfo(d.Name, "virtio-blk-pci", bus, slot, drive));
            }
            else
            {
                var port = sataPort++;
                Add("-device", $"ide-hd,id={d.Name},drive={drive},bus=sata0.{port}{boot}");
                devices.Add(new DeviceInfo(d.Name, "ide-hd", $"sata0.{port}", null, drive));
            }
        }
        if (ctx.CdromPath is not null)
        {
            var port = sataPort++;
            var cdBoot = s.BootOrder.IndexOf("cdrom");
            Add("-drive", $"if=none,id=drive-cdrom0,file={Escape(ctx.CdromPath)},format=raw,media=cdrom,readonly=on");
            Add("-device", $"ide-cd,id=cdrom0,drive=drive-cdrom0,bus=sata0.{port}{(cdBoot >= 0 ? $",bootindex={bootIndex + cdBoot}" : "")}");
            devices.Add(new DeviceInfo("cdrom0", "ide-cd", $"sata0.{port}", null, "drive-cdrom0"));
        }

        if (s.Nics.Count == 0) Add("-nic", "none");
        for (var i = 0; i < s.Nics.Count; i++)
        {
            var n = s.Nics[i];
            var fwd = string.Concat(n.PortForwards.Select(p => $",hostfwd={p.Protocol}:{p.HostAddress}:{p.HostPort}-:{p.GuestPort}"));
            Add("-netdev", $"user,id=net{i}{fwd}");
            var model = n.Model == "virtio" ? "virtio-net-pci" : "e1000";
            var slot = Hex(0x10 + i);
            var mac = n.Mac ?? DefaultMac(ctx.VmId, i);
            var netBoot = s.BootOrder.IndexOf("network");
            // romfile= skips the PXE option ROM unless network boot is wanted.
            var rom = netBoot >= 0 && i == 0 ? $",bootindex={bootIndex + netBoot}" : ",romfile=";
            Add("-device", $"{model},id=nic{i},netdev=net{i},mac={mac},bus={bus},addr={slot}{rom}");
            devices.Add(new DeviceInfo($"nic{i}", model, bus, slot, $"net{i}"));
        }

        if (s.SerialConsole)
        {
            Add("-chardev", $"socket,id=serial0,path={Escape(ctx.Paths.SerialSocket)},server=on,wait=off,logfile={Escape(ctx.SerialLogPath)},logappend=on");
            Add("-device", "isa-serial,id=serial0dev,chardev=serial0,index=0");
            devices.Add(new DeviceInfo("serial0dev", "isa-serial", "isa", null, "serial0"));
        }

        if (s.KernelBoot is not null && ctx.KernelPath is not null)
        {
            Add("-kernel", ctx.KernelPath);
            if (ctx.InitrdPath is not null) Add("-initrd", ctx.InitrdPath);
            if (!string.IsNullOrEmpty(s.KernelBoot.Cmdline)) Add("-append", s.KernelBoot.Cmdline);
        }
        if (ctx.Incoming) Add("-incoming", "defer");
        return new LaunchPlan(a, devices, cpu);
    }

    /// <summary>QEMU option values use ',' as separator; a literal comma is written twice.</summary>
    private static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    public static string DefaultMac(Guid vmId, int index)
    {
        var b = vmId.ToByteArray();
        return $"52:54:00:{b[0]:x2}:{b[1]:x2}:{(byte)(b[2] + index):x2}";
    }
}
