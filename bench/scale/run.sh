#!/usr/bin/env bash
# What 10,000 runs waiting at once on a slow CI cost one `baton serve`, per store backend:
#
#   bench/scale/run.sh                      # sqlite; RUNS=10000 SETTLE_SECS=100 SAMPLE_SECS=60
#   bench/scale/run.sh sqlite postgres      # each backend in turn
#   RUNS=1000 SETTLE_SECS=30 bench/scale/run.sh   # a quicker look
#
# The CI is the in-process GitLab model of crates/forge-fakes, whose pipelines run for a
# day; the runs are started through the REST API. Once every stage waits (the store holds it
# running with its pipeline's reference) and after SETTLE_SECS, baton's RSS (VmRSS, VmHWM)
# and CPU time (utime + stime) are read over SAMPLE_SECS, with the requests the model served
# meanwhile. PostgreSQL sides get a fresh database on PG_URL (postgres://postgres@127.0.0.1:5432),
# dropped at their end. Keep the machine quiet: the CPU figure is the whole process's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-cli --bin baton -p baton-bench --bin scale
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$TARGET/release/scale" "${BATON_BIN:-$TARGET/release/baton}" "$@"
