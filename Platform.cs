// The appliance drives Unix emulators over unix sockets; Windows is not a target.
[assembly: System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
