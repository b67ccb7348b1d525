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

    public double ElapsedMs => _sw.Elapsed.TotalMilliseconds;

    public override string ToString()
    {
        var b = new StringBuilder();
        lock (_marks)
            foreach (var (n, ms) in _marks) b.Append(b.Length == 0 ? "" : ", ").Append(n).Append(' ').Append(ms.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture));
        return b.ToString();
    }
}
