namespace Appliance.Web.Tests.Infrastructure;

public static class TestPaths
{
    public static string RepoRoot { get; } = FindRoot();

    /// <summary>Built by the test command (scripts/demo-guest/build.sh build/demo-guest).</summary>
    public static string DemoGuest => Path.Combine(RepoRoot, "build", "demo-guest");

    /// <summary>Short base so unix socket paths stay under 107 bytes.</summary>
    public static string NewDataDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "appl-t", Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Removes a data folder a fixture created, once its emulators are gone; a folder still busy is left with a note.</summary>
    public static void DeleteDataDir(string dataDir)
    {
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                if (Directory.Exists(dataDir)) Directory.Delete(dataDir, recursive: true);
                return;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                if (attempt == 20)
                {
                    Console.Error.WriteLine($"test data folder {dataDir} not removed: {e.Message}");
                    return;
                }
                Thread.Sleep(50); // a process that was just killed may still hold a file in it
            }
        }
    }

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Appliance.sln"))) return d.FullName;
        throw new InvalidOperationException("Appliance.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>Kills every emulator (and stream keeper) whose command line names <paramref name="dataDir"/>: tests must not leave guests behind.</summary>
    public static void KillEmulatorsUnder(string dataDir)
    {
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out var pid)) continue;
            string cmd;
            try { cmd = File.ReadAllText(Path.Combine(proc, "cmdline")); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            if ((cmd.Contains("qemu-system", StringComparison.Ordinal) || cmd.Contains("--stream-keeper", StringComparison.Ordinal)) && cmd.Contains(dataDir, StringComparison.Ordinal))
            {
                try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (Exception) { }
            }
        }
    }
}
