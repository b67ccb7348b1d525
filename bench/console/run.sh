#!/usr/bin/env bash
# Console proxy benchmark: the appliance's ByteProxy against a direct unix-socket read (ceiling), Debian's
# websockify (reference proxy) and a bare Kestrel websocket sender, all read by the same .NET client in one run.
# Usage: bench/console/run.sh [MiB per run, default 2048]
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-2048}
OUT=bench/out/console
mkdir -p "$OUT"
dotnet build bench/console -c Release --nologo -v q >/dev/null
BIN=bench/console/bin/Release/net10.0/ConsoleBench
PORT=5199; WS_STREAM=5198; WS_ECHO=5197
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -f "$OUT"/*.sock; }
trap cleanup EXIT

"$BIN" serve --dir "$OUT" --port $PORT >"$OUT/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [[ -S "$OUT/echo.sock" ]] && grep -q ready "$OUT/serve.log" && break; sleep 0.1; done
/usr/bin/python3 /usr/bin/websockify --unix-target="$OUT/stream.sock" 127.0.0.1:$WS_STREAM >"$OUT/websockify-stream.log" 2>&1 & pids+=($!)
/usr/bin/python3 /usr/bin/websockify --unix-target="$OUT/echo.sock" 127.0.0.1:$WS_ECHO >"$OUT/websockify-echo.log" 2>&1 & pids+=($!)
for port in $WS_STREAM $WS_ECHO; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uname -sr); .NET $(dotnet --version); websockify $(dpkg-query -W -f='${Version}' websockify 2>/dev/null)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo
"$BIN" measure --dir "$OUT" --port $PORT --ws-stream $WS_STREAM --ws-echo $WS_ECHO --bytes $((MIB * 1024 * 1024))
