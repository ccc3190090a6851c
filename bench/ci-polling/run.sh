#!/usr/bin/env bash
# What waiting on GitHub Actions and GitLab CI costs, against the in-process forge models of
# crates/forge-fakes (nothing to install):
#
#   bench/ci-polling/run.sh                     # both adapters; STAGES=500 RUN_SECS=120 PEER_RUNS=20
#   bench/ci-polling/run.sh gitlab-ci           # one adapter
#   STAGES=100 RUN_SECS=30 bench/ci-polling/run.sh    # a quicker look
#
# Per adapter, at once and each on a forge of its own: STAGES stages through `baton serve`
# with webhooks off (requests per run, peak requests/s on the one token, lowest rate-limit
# remaining), the same with the forge's completion deliveries sent to baton (delivery
# received -> stage finished, baton's clock), and PEER_RUNS runs watched as `gh run watch`
# does (a read every 3 s). About RUN_SECS + 30 s per adapter. Keep the machine quiet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-cli --bin baton
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec cargo run -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-bench --bin ci-polling -- \
  "${BATON_BIN:-$TARGET/release/baton}" "$@"
