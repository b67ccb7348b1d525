using System.Buffers.Binary;
using System.IO.Compression;

namespace Appliance.Core.Console;

/// <summary>
/// An RGB picture of a VM's screen. QEMU's screendump writes PPM, which needs no decoder; scaling is a
/// box filter and PNG encoding is zlib plus CRC-32, so no imaging library is needed.
/// </summary>
public sealed class ScreenImage(int width, int height, byte[] rgb)
{
    public int Width { get; } = width;
    public int Height { get; } = height;
    public byte[] Rgb { get; } = rgb;

    public static ScreenImage ParsePpm(ReadOnlySpan<byte> data)
    {
        var pos = 0;
        if (Token(data, ref pos) != "P6") throw new FormatException("Not a binary PPM (P6) image.");
        var w = int.Parse(Token(data, ref pos), System.Globalization.CultureInfo.InvariantCulture);
        var h = int.Parse(Token(data, ref pos), System.Globalization.CultureInfo.InvariantCulture);
        var max = int.Parse(Token(data, ref pos), System.Globalization.CultureInfo.InvariantCulture);
        if (w <= 0 || h <= 0 || w > 16384 || h > 16384 || max != 255) throw new FormatException($"Unsupported PPM: {w}x{h}, max {max}.");
        pos++; // the single whitespace after maxval
        var need = w * h * 3;
        if (data.Length - pos < need) throw new FormatException("Truncated PPM image.");
        return new ScreenImage(w, h, data.Slice(pos, need).ToArray());
    }

    private static string Token(ReadOnlySpan<byte> d, ref int pos)
    {
        while (pos < d.Length)
        {
            if (d[pos] == '#') { while (pos < d.Length && d[pos] != '\n') pos++; }
            else if (d[pos] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t') pos++;
            else break;
        }
        var start = pos;
        while (pos < d.Length && d[pos] is not ((byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t')) pos++;
        return System.Text.Encoding.ASCII.GetString(d[start..pos]);
    }

    /// <summary>Scales down to <paramref name="width"/> keeping the aspect ratio (area average); never scales up.</summary>
    public ScreenImage ScaleToWidth(int width)
    {
        if (width >= Width) return this;
        var height = Math.Max(1, (int)Math.Round((double)Height * width / Width));
        var dst = new byte[width * height * 3];
        for (var y = 0; y < height; y++)
        {
            var y0 = y * Height / height;
            var y1 = Math.Max(y0 + 1, (y + 1) * Height / height);
            for (var x = 0; x < width; x++)
            {
                var x0 = x * Width / width;
                var x1 = Math.Max(x0 + 1, (x + 1) * Width / width);
                int r = 0, g = 0, b = 0;
                for (var sy = y0; sy < y1; sy++)
                {
                    var row = sy * Width * 3;
                    for (var sx = x0; sx < x1; sx++)
                    {
                        var i = row + sx * 3;
                        r += Rgb[i]; g += Rgb[i + 1]; b += Rgb[i + 2];
                    }
                }
                var n = (y1 - y0) * (x1 - x0);
                var o = (y * width + x) * 3;
                dst[o] = (byte)(r / n); dst[o + 1] = (byte)(g / n); dst[o + 2] = (byte)(b / n);
            }
        }
        return new ScreenImage(width, height, dst);
    }

    public byte[] ToPng()
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, Width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), Height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // truecolour RGB
        Chunk(ms, "IHDR", ihdr);
        using (var idat = new MemoryStream())
        {
            using (var z = new ZLibStream(idat, CompressionLevel.Fastest, leaveOpen: true))
            {
                var stride = Width * 3;
                var line = new byte[stride + 1];
                for (var y = 0; y < Height; y++)
                {
                    // Filter "Sub": flat screen areas become runs of zeros, which compress well.
                    line[0] = 1;
                    var row = Rgb.AsSpan(y * stride, stride);
                    for (var i = 0; i < stride; i++) line[i + 1] = (byte)(row[i] - (i >= 3 ? row[i - 3] : 0));
                    z.Write(line);
                }
            }
            Chunk(ms, "IDAT", idat.ToArray());
        }
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> head = stackalloc byte[8];
        BinaryPrimitives.WriteInt32BigEndian(head, data.Length);
        System.Text.Encoding.ASCII.GetBytes(type, head[4..]);
        s.Write(head);
        s.Write(data);
        var crc = Crc32.Update(Crc32.Update(0xFFFFFFFFu, head[4..]), data) ^ 0xFFFFFFFFu;
        Span<byte> tail = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(tail, crc);
        s.Write(tail);
    }

    private static class Crc32
    {
        private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
        {
            var c = (uint)n;
            for (var k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            return c;
        }).ToArray();

        public static uint Update(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (var b in data) crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
            return crc;
        }
    }
}
