using System.Diagnostics;
using System.Text;

namespace Appliance.Core.Checkpoints;

/// <summary>Milliseconds since the start of an operation at each named step, logged once at the end.</summary>
public sealed class PhaseClock
{
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly List<(string Name, double Ms)> _marks = [];

    public void Mark(string name)
    {
        lock (_marks) _marks.Add((name, _sw.Elapsed.TotalMilliseconds));
    }

    private readonly List<string> _notes = [];

    /// <summary>A fact about the operation, printed after the marks.</summary>
    public void Note(string text)
    {
        lock (_marks) _notes.Add(text);
    }

    public double ElapsedMs => _sw.Elapsed.TotalMilliseconds;

    public override string ToString()
    {
        var b = new StringBuilder();
        lock (_marks)
        {
            foreach (var (n, ms) in _marks) b.Append(b.Length == 0 ? "" : ", ").Append(n).Append(' ').Append(ms.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture));
            foreach (var n in _notes) b.Append("; ").Append(n);
        }
        return b.ToString();
    }
}

/// <summary>Garbage collections and managed allocation so far; the difference of two says what an operation cost the GC.</summary>
public readonly record struct GcCounts(int Gen0, int Gen1, int Gen2, long Allocated)
{
    public static GcCounts Now() => new(GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2), GC.GetTotalAllocatedBytes());

    public static GcCounts operator -(GcCounts a, GcCounts b) => new(a.Gen0 - b.Gen0, a.Gen1 - b.Gen1, a.Gen2 - b.Gen2, a.Allocated - b.Allocated);

    public override string ToString() => $"GC {Gen0}/{Gen1}/{Gen2}, {Allocated / 1024} KiB allocated";
}
