#!/usr/bin/env bash
# The test command (README: "Run the tests"). Installs whatever the tests need on a fresh
# machine that has only the Rust toolchain, then runs every test: unit, integration, crash,
# property, end-to-end and doc tests, plus a smoke pass of each benchmark harness.
set -euo pipefail
cd "$(dirname "$0")/.."

# The S3-compatible server the tiering tests run against (a real server, not a mock).
TOOLS="${TIDINGS_TOOLS:-$HOME/.cache/tidings-tools}"
S3S="$TOOLS/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
    if command -v s3s-fs >/dev/null 2>&1; then
        S3S="$(command -v s3s-fs)"
    else
        echo "installing s3s-fs 0.14.1 into $TOOLS (once; takes a few minutes)"
        cargo install s3s-fs --features binary --locked --version 0.14.1 --root "$TOOLS"
    fi
fi
export TIDINGS_S3S_FS="$S3S"

# Unless an endpoint was given (MinIO, Garage, AWS), run one s3s-fs for the whole run; the fault
# tests start and stop their own.
S3S_PID=""
S3S_DIR=""
cleanup() {
    if [ -n "$S3S_PID" ]; then kill "$S3S_PID" 2>/dev/null || true; wait "$S3S_PID" 2>/dev/null || true; fi
    if [ -n "$S3S_DIR" ]; then rm -rf "$S3S_DIR"; fi
}
trap cleanup EXIT
if [ -z "${TIDINGS_TEST_S3_ENDPOINT:-}" ]; then
    S3S_DIR="$(mktemp -d)"
    mkdir -p "$S3S_DIR/tidings"
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key tidings-ci --secret-key tidings-ci-secret "$S3S_DIR" >/dev/null 2>&1 &
    S3S_PID=$!
    for _ in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; then break; fi
        sleep 0.1
    done
    export TIDINGS_TEST_S3_ENDPOINT="http://127.0.0.1:$PORT"
    export TIDINGS_TEST_S3_BUCKET=tidings
    export AWS_ACCESS_KEY_ID=tidings-ci
    export AWS_SECRET_ACCESS_KEY=tidings-ci-secret
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --lib --bins --tests --no-fail-fast
fi
cargo test --workspace --doc
# Smoke pass of the benchmark harnesses (seconds): keeps them compiling and working.
cargo test --benches
# (The load generator's smoke run of every scenario is a test of the workspace run above:
# benches/load/tests/smoke.rs.)
