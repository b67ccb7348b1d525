#!/usr/bin/env bash
# Adds up dotnet test's per-assembly summaries into one closing line: "N passed, N failed, N skipped".
set -euo pipefail
f=$1
passed=0; failed=0; skipped=0
while read -r line; do
  [[ $line =~ Failed:[[:space:]]+([0-9]+),[[:space:]]+Passed:[[:space:]]+([0-9]+),[[:space:]]+Skipped:[[:space:]]+([0-9]+) ]] || continue
  failed=$((failed + BASH_REMATCH[1])); passed=$((passed + BASH_REMATCH[2])); skipped=$((skipped + BASH_REMATCH[3]))
done < <(grep -E "(Passed|Failed)! +- +Failed:" "$f" || true)
echo "$passed passed, $failed failed, $skipped skipped"
