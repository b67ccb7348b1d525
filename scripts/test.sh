#!/usr/bin/env bash
# Sets everything up and runs every test and check: unit, integration (real QEMU, SQLite, websockets),
# browser (Debian Chromium via Playwright), and the OpenAPI lint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
mkdir -p build
dotnet build Appliance.sln -c Debug --nologo --verbosity quiet
scripts/lint-openapi.sh
docker-compose -f docker-compose.yml config --quiet && echo "docker-compose.yml: valid"
status=0
dotnet test Appliance.sln -c Debug --no-build --nologo --verbosity quiet --logger "console;verbosity=minimal" "$@" >build/test-output.txt 2>&1 || status=$?
cat build/test-output.txt
scripts/summarize-tests.sh build/test-output.txt
exit $status
