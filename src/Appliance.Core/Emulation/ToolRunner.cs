using System.Diagnostics;
using System.Text;

namespace Appliance.Core.Emulation;

public sealed record ToolResult(int ExitCode, string Stdout, string Stderr);

public sealed class ToolFailedException(string message) : Exception(message);

/// <summary>
/// Runs short-lived helper tools (qemu-img, qemu --version) from an argument list with a deadline.
/// Emulators themselves are started by <see cref="NativeProcess"/>.
/// </summary>
public static class ToolRunner
{
    public static async Task<ToolResult> RunAsync(string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken ct = default)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = false, UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Clear();
        psi.Environment["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin";
        psi.Environment["LC_ALL"] = "C";
        using var p = new Process { StartInfo = psi };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            await p.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5), CancellationToken.None);
            if (ct.IsCancellationRequested) throw;
            throw new ToolFailedException($"{Path.GetFileName(file)} did not finish within {timeout.TotalSeconds:0} s.");
        }
        p.WaitForExit();
        return new ToolResult(p.ExitCode, stdout.ToString(), stderr.ToString());
    }

    public static async Task<string> RunCheckedAsync(string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken ct = default)
    {
        var r = await RunAsync(file, args, timeout, ct);
        if (r.ExitCode != 0)
            throw new ToolFailedException($"{Path.GetFileName(file)} failed ({r.ExitCode}): {r.Stderr.Trim()}");
        return r.Stdout;
    }
}
