#!/usr/bin/env bash
# What waiting on GitHub Actions, GitLab CI, Travis CI and Concourse costs, against the
# in-process forge models of crates/forge-fakes (nothing to install):
#
#   bench/ci-polling/run.sh                     # every adapter; STAGES=500 RUN_SECS=120 PEER_RUNS=20
#   bench/ci-polling/run.sh travis concourse    # some of them
#   STAGES=100 RUN_SECS=30 bench/ci-polling/run.sh    # a quicker look
#
# Per adapter, at once and each on a forge of its own: STAGES stages through `baton serve`
# with webhooks off (requests per run, peak requests/s on the one token, lowest rate-limit
# remaining), the same with the forge's completion deliveries sent to baton (delivery
# received -> stage finished, baton's clock; for Concourse, its event streams followed:
# status event -> stage finished), and PEER_RUNS runs watched as `gh run watch`
# does (a read every 3 s). About RUN_SECS + 30 s per adapter. Keep the machine quiet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-cli --bin baton
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec cargo run -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-bench --bin ci-polling -- \
  "${BATON_BIN:-$TARGET/release/baton}" "$@"
