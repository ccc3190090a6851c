#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine. Needs the Rust toolchain, a C
# compiler (SQLite is compiled in), python3 (for the real Buildbot the Buildbot adapter's
# tests drive; scripts/buildbot.sh installs it under .buildbot/ and starts it on 127.0.0.1;
# and for Schemathesis, installed under .venv-schemathesis/), and root with apt-get for the
# registry and Docker engine scripts/containers.sh installs and starts under .containers/, and
# for Debian's chromium and chromium-driver, which the web UI's browser tests drive.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Buildbot (a master with workers, and one behind a login); the tests that need it
# fail without it. Another checkout's Buildbot, or anything else, may hold the default
# ports: then this run takes free ones (its own Buildbot, left running, keeps its ports).
taken() { ! python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
own_pid=$(cat .buildbot/master/twistd.pid 2>/dev/null || true)
if [ -z "$own_pid" ] || ! kill -0 "$own_pid" 2>/dev/null; then
    for setting in BUILDBOT_WEB_PORT=8010 BUILDBOT_PB_PORT=9989 BUILDBOT_AUTH_WEB_PORT=8011 BUILDBOT_AUTH_PB_PORT=9990; do
        name=${setting%%=*}
        port=${!name:-${setting#*=}}
        if taken "$port"; then
            free=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            echo "test.sh: port $port ($name) is taken; using $free" >&2
            export "$name=$free"
        fi
    done
fi
# On CI, leave nothing running behind.
if [ -n "${CI:-}" ]; then trap 'scripts/buildbot.sh stop; scripts/containers.sh stop' EXIT; fi
scripts/buildbot.sh
export BATON_BUILDBOT_URL=http://127.0.0.1:${BUILDBOT_WEB_PORT:-8010}
export BATON_BUILDBOT_AUTH_URL=http://127.0.0.1:${BUILDBOT_AUTH_WEB_PORT:-8011}

# A real OCI registry (open, and one behind htpasswd) and a real Docker engine with the busybox
# image the component tests run (scripts/containers.sh); their addresses in .containers/env.
scripts/containers.sh
. .containers/env

# PostgreSQL for the store's contract tests and the replica tests: the one this machine kind
# runs on 127.0.0.1:5432 (trust auth, database `test`); installed and started when missing.
# Each test works in a schema or database of its own, so runs never see each other.
export BATON_TEST_POSTGRES=${BATON_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
scripts/postgres.sh

# Schemathesis (pinned), which the `api` end-to-end test runs against `baton serve`'s OpenAPI
# document with each role's token; in a virtual environment of its own under the checkout.
SCHEMATHESIS_VERSION=4.32.5
if ! .venv-schemathesis/bin/schemathesis --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
    python3 -m venv .venv-schemathesis
    .venv-schemathesis/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export BATON_SCHEMATHESIS=$PWD/.venv-schemathesis/bin/schemathesis

# Headless Chromium and chromedriver for the web UI's stories (tests/tests/ui.rs), from
# Debian's packages when missing; the tests fail, naming this fix, without them.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "test.sh: installing chromium and chromium-driver" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
export BATON_CHROMEDRIVER=${BATON_CHROMEDRIVER:-$(command -v chromedriver)}

# The end-to-end tests in tests/tests/ are baton-cli's integration tests: cargo builds the
# `baton` binary they run from the current source first.
cargo test --locked --workspace

# Every fuzz target for a few seconds on its seed corpus (fuzz/README.md); its own build
# in fuzz/target/. BATON_FUZZ_SECONDS sets the time per target.
fuzz/run.sh "${BATON_FUZZ_SECONDS:-15}"
