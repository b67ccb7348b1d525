using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Appliance.Core;

namespace Appliance.Web.Security;

/// <summary>
/// Listening beyond loopback means HTTPS: a plain http:// URL on another address is switched to https://
/// (unless Appliance:Security:AllowPlainHttp), and HTTPS endpoints without a configured certificate use a
/// self-signed one made on first start and kept under the data directory, readable only by its owner.
/// </summary>
public static class TlsSetup
{
    public const string CertificateFile = "tls/appliance.pfx";

    public static void Configure(WebApplicationBuilder builder, SecurityOptions security)
    {
        var urls = (builder.Configuration["urls"] ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (urls.Length == 0) return;
        var rewritten = urls.Select(u => !security.AllowPlainHttp && u.StartsWith("http://", StringComparison.OrdinalIgnoreCase) && !IsLoopback(u)
            ? "https://" + u["http://".Length..] : u).ToArray();
        if (!rewritten.SequenceEqual(urls)) builder.WebHost.UseUrls(rewritten);
        if (!rewritten.Any(u => u.StartsWith("https://", StringComparison.OrdinalIgnoreCase))) return;
        if (builder.Configuration["Kestrel:Certificates:Default:Path"] is { Length: > 0 }) return;
        var dataDir = new ApplianceOptions { DataDirectory = builder.Configuration["Appliance:DataDirectory"] ?? "data" }.ResolvedDataDirectory;
        var cert = LoadOrCreate(Path.Combine(dataDir, CertificateFile));
        builder.WebHost.ConfigureKestrel(k => k.ConfigureHttpsDefaults(h => h.ServerCertificate = cert));
    }

    public static bool IsLoopback(string url)
    {
        var rest = url[(url.IndexOf("://", StringComparison.Ordinal) + 3)..];
        var host = rest.StartsWith('[') ? rest[1..rest.IndexOf(']')] : rest.Split(':', '/')[0];
        return host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));
    }

    public static X509Certificate2 LoadOrCreate(string path)
    {
        if (File.Exists(path)) return X509CertificateLoader.LoadPkcs12FromFile(path, null);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.SetUnixFileMode(Path.GetDirectoryName(path)!, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={Environment.MachineName} appliance", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(Environment.MachineName);
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        san.AddIpAddress(IPAddress.IPv6Loopback);
        req.CertificateExtensions.Add(san.Build());
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(2));
        var tmp = path + ".tmp";
        File.Delete(tmp);
        using (var fs = new FileStream(tmp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        {
            fs.Write(cert.Export(X509ContentType.Pfx));
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path);
        return X509CertificateLoader.LoadPkcs12FromFile(path, null);
    }
}
