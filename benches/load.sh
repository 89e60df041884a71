#!/usr/bin/env bash
# Full load-generator run (README benchmark table): release builds, a file-descriptor limit
# high enough for 100,000 connections on each side, then the scenarios given (default: all).
#   bash benches/load.sh                 # every scenario
#   bash benches/load.sh send --json send.json
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -p tidings -p tidings-load
exec "${CARGO_TARGET_DIR:-target}/release/tidings-load" "${@:-all}"
