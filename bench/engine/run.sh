#!/usr/bin/env bash
# The engine on SQLite, every state change committed durably: stage transitions/s and the
# "needs satisfied -> start called" latency, beside the same disk's durable commit rate.
#
#   bench/engine/run.sh [CONCURRENT_RUNS [TOTAL_RUNS]]     # 100 20000 by default
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
exec cargo run -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-bench --bin engine -- "${1:-100}" "${2:-20000}"
