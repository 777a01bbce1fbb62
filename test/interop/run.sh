#!/usr/bin/env bash
# Runs the Azure IoT SDK interop suite: installs the pinned npm packages,
# builds outpost, and drives the real SDK clients against fresh processes.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p bin
go build -o bin/outpost ../../cmd/outpost
export OUTPOST_BIN="$PWD/bin/outpost"
shopt -s nullglob
tests=(*.test.js)
if [ ${#tests[@]} -eq 0 ]; then
  echo "interop: no tests yet"
  exit 0
fi
node --test --test-concurrency=1 "${tests[@]}"
