using System.Text;
using Appliance.Core.Console;

namespace Appliance.Core.Tests;

public sealed class ScreenImageTests
{
    private static byte[] Ppm(int w, int h, Func<int, int, (byte R, byte G, byte B)> px)
    {
        var head = Encoding.ASCII.GetBytes($"P6\n# comment\n{w} {h}\n255\n");
        var body = new byte[w * h * 3];
        for (var y = 0; y < h; y++)
            for (var x = 0; x < w; x++)
            {
                var (r, g, b) = px(x, y);
                var i = (y * w + x) * 3;
                body[i] = r; body[i + 1] = g; body[i + 2] = b;
            }
        return [.. head, .. body];
    }

    [Fact]
    public void ParsePpm_WithComment_ReadsSizeAndPixels()
    {
        var img = ScreenImage.ParsePpm(Ppm(3, 2, (x, y) => ((byte)x, (byte)y, 7)));
        Assert.Equal((3, 2), (img.Width, img.Height));
        Assert.Equal(new byte[] { 2, 1, 7 }, img.Rgb[15..18]);
    }

    [Fact]
    public void ParsePpm_Truncated_Throws() =>
        Assert.Throws<FormatException>(() => ScreenImage.ParsePpm(Ppm(4, 4, (_, _) => (1, 1, 1))[..40]));

    [Fact]
    public void ScaleToWidth_Half_AveragesBoxes()
    {
        var img = ScreenImage.ParsePpm(Ppm(4, 2, (x, _) => x % 2 == 0 ? ((byte)0, (byte)0, (byte)0) : ((byte)200, (byte)100, (byte)50)));
        var s = img.ScaleToWidth(2);
        Assert.Equal((2, 1), (s.Width, s.Height));
        Assert.Equal(new byte[] { 100, 50, 25, 100, 50, 25 }, s.Rgb);
    }

    [Fact]
    public void ScaleToWidth_Wider_ReturnsSame()
    {
        var img = ScreenImage.ParsePpm(Ppm(4, 2, (_, _) => (1, 2, 3)));
        Assert.Same(img, img.ScaleToWidth(10));
    }
}
