#!/usr/bin/env bash
# Sets everything up and runs the appliance on its embedded defaults:
# SQLite and all state under ./data, listening on http://127.0.0.1:5080, the demo guest in the image library.
# Extra arguments go to the appliance (for example --urls http://0.0.0.0:5080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dotnet publish src/Appliance.Web -c Release -o build/app --nologo --verbosity quiet
mkdir -p data
export APPLIANCE_DATA_DIR="${APPLIANCE_DATA_DIR:-$PWD/data}"
export Appliance__DemoGuestDirectory="${Appliance__DemoGuestDirectory:-$PWD/build/demo-guest}"
exec dotnet build/app/Appliance.Web.dll "$@"
