#!/usr/bin/env bash
# 200 Deployments rolled out at once through one `kubernetes` instance, against the
# in-process Kubernetes API server of crates/forge-fakes (nothing to install):
#
#   bench/k8s-rollouts/run.sh                        # NAMESPACES=20 DEPLOYMENTS=10 REPLICAS=3 STEP_MS=200 ROUNDS=3
#   NAMESPACES=5 ROUNDS=1 bench/k8s-rollouts/run.sh  # a quicker look
#
# Each round sets a new image on every Deployment twice: as one `baton run` of a workflow
# with one set-image stage per Deployment, and as one run per Deployment given to a
# `baton serve`. Prints the API server's open watches at peak, its requests per rollout,
# and the time from the status write that completed each rollout to the stage's stored end
# (p50/p95/p99/worst), each beside its target. Keep the machine quiet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-cli --bin baton
TARGET=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec cargo run -q --release --manifest-path "$ROOT/Cargo.toml" -p baton-bench --bin k8s-rollouts -- \
  "${BATON_BIN:-$TARGET/release/baton}" "$@"
