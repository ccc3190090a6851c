#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine. Needs only the Rust toolchain and a
# C compiler (SQLite is compiled in).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests in tests/ run the real `baton` binary: build it first.
cargo build --locked -p baton-cli
cargo test --locked --workspace
