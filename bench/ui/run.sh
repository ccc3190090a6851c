#!/usr/bin/env bash
# The web UI on a store of 100,000 runs and 100,000 deliveries: page times beside the REST
# API answering the same query, and store → browser latency of a change:
#
#   bench/ui/run.sh                       # sqlite; RUNS=100000 DELIVERIES=100000 REQUESTS=500
#   bench/ui/run.sh --store postgres      # a fresh database on PG_URL (postgres://postgres@127.0.0.1:5432)
#   RUNS=10000 DELIVERIES=10000 REQUESTS=200 LIVE_SAMPLES=50 bench/ui/run.sh   # a quicker look
#
# The store is seeded through baton's store API (the same build as the server), then
# `baton serve` (release) is measured on it with sequential requests on 127.0.0.1; see
# bench/README.md#ui. Keep the machine quiet: the figures are latencies.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-cli --bin baton -p baton-bench --bin ui
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$TARGET/release/ui" "${BATON_BIN:-$TARGET/release/baton}" "$@"
