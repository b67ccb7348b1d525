#!/usr/bin/env bash
# Installs what the appliance needs on a Debian machine that has the .NET SDK, then restores and builds.
# Safe to run again: each step skips what is already in place.
#   scripts/setup.sh          run-time needs (QEMU, demo guest, browser assets, NuGet packages)
#   scripts/setup.sh --test   also what the tests and checks need (Chromium, websockify)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

packages=(qemu-system-x86 qemu-utils busybox-static linux-image-cloud-amd64 cpio xz-utils zstd)
(( want_test )) && packages+=(chromium websockify docker-compose)
# Tools the scripts call, added only where the machine lacks them (a fresh Debian may have no Node.js).
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
command -v curl >/dev/null 2>&1 || packages+=(curl)
[[ -x /usr/bin/python3 ]] || packages+=(python3)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  (( EUID == 0 )) || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Browser assets (noVNC, xterm.js) come from npm, pinned by package-lock.json, copied under wwwroot/lib.
if [[ -f package.json ]]; then
  if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  node scripts/copy-assets.mjs
fi

# The demo guest: a kernel and a busybox initramfs, built from the Debian packages above.
scripts/demo-guest/build.sh build/demo-guest

dotnet restore Appliance.sln --verbosity quiet
