#!/usr/bin/env bash
# Starts the built appliance on a scratch data folder, fetches its OpenAPI document and lints it
# with Spectral's spectral:oas ruleset (pinned in package.json). Fails on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
APPLIANCE_DATA_DIR="$tmp/data" Appliance__DemoGuestDirectory="$PWD/build/demo-guest" \
  APPLIANCE_ADMIN_PASSWORD="lint-only-$RANDOM$RANDOM" \
  dotnet src/Appliance.Web/bin/Debug/net10.0/Appliance.Web.dll --urls "http://127.0.0.1:$port" >"$tmp/app.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$port/openapi/v1.json" -o build/openapi.json 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$tmp/app.log"; exit 1; }
  sleep 0.2
done
[[ -s build/openapi.json ]] || { echo "lint-openapi: no OpenAPI document"; cat "$tmp/app.log"; exit 1; }
npx --no-install spectral lint --ruleset .spectral.yaml --fail-severity error build/openapi.json
echo "lint-openapi: build/openapi.json passes spectral:oas with no errors"
