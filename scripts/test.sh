#!/usr/bin/env bash
# The test command (README: "Run the tests"). Installs whatever the tests need on a fresh
# machine that has only the Rust toolchain, then runs every test: unit, integration, crash,
# property and doc tests, plus a smoke pass of each benchmark harness.
set -euo pipefail
cd "$(dirname "$0")/.."

# (Nothing beyond the Rust toolchain is needed yet; the tiering tests will install and start
# their S3-compatible server here.)

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --lib --bins --tests --no-fail-fast
fi
cargo test --workspace --doc
# Smoke pass of the benchmark harnesses (seconds): keeps them compiling and working.
cargo test --benches
