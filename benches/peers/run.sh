#!/usr/bin/env bash
# Side-by-side peer benchmark: installs redis-server and nats-server from Debian packages when
# missing, then runs `tidings-load peers` (Redis XADD with appendfsync always, NATS JetStream,
# a raw write + fdatasync baseline, and tidings' send scenario) and prints one table.
#   bash benches/peers/run.sh            # full (10 s per engine)
#   bash benches/peers/run.sh --smoke    # seconds
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}"
    # The packages start system services; this benchmark starts its own instances.
    $SUDO systemctl stop redis-server nats-server 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)"
cargo build --release -p tidings -p tidings-load --features tidings-load/peers
exec "${CARGO_TARGET_DIR:-target}/release/tidings-load" peers "$@"
