#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine. Needs the Rust toolchain, a C
# compiler (SQLite is compiled in) and python3 (for the real Buildbot the Buildbot adapter's
# tests drive; scripts/buildbot.sh installs it under .buildbot/ and starts it on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Buildbot (a master with workers, and one behind a login); the tests that need it
# fail without it.
scripts/buildbot.sh
export BATON_BUILDBOT_URL=http://127.0.0.1:${BUILDBOT_WEB_PORT:-8010}
export BATON_BUILDBOT_AUTH_URL=http://127.0.0.1:${BUILDBOT_AUTH_WEB_PORT:-8011}

# The end-to-end tests in tests/ run the real `baton` binary: build it first.
cargo build --locked -p baton-cli
cargo test --locked --workspace
