#!/usr/bin/env bash
# What baton adds to a Buildbot build, against the real Buildbot of scripts/buildbot.sh:
#
#   scripts/buildbot.sh && bench/buildbot-overhead/run.sh      # ROUNDS=20 SLEEP=2 by default
#
# The same `sleep` build (SLEEP seconds) three ways, one after the other, ROUNDS times
# (after one warm-up round):
#   direct        a careful client: JSON-RPC `force` on /api/v2/forceschedulers/force, then
#                 GET /api/v2/builds?buildrequestid=<id> every DIRECT_POLL_MS (200) until the
#                 build is complete; timed from the force to the answer showing it complete
#   baton, on     a signed GitHub push to `baton serve`, whose workflow runs the build through
#                 the buildbot adapter; the master's HttpStatusPush reaches it (it listens on
#                 the web port + 9, where master.cfg pushes)
#   baton, off    the same with no status push reaching baton: polls alone see the end
# baton is timed by its own clock (the delivery's received_at → the run's finished_at) and on
# the client (the POST → the REST API, read every API_POLL_MS (50), showing the run finished).
# Every client reaches Buildbot through a counting proxy of its own: the requests per build.
#
# Prints the medians (and min–max), the ratios baton/direct, and the requests per build with
# baton's calls listed. Keep the machine quiet: no other builds, no tests running.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
URL=${BUILDBOT_URL:-http://127.0.0.1:${BUILDBOT_WEB_PORT:-8010}}
PY=$ROOT/.buildbot/venv/bin/python
[ -x "$PY" ] || PY=python3

# Buildbot must be up, with its workers, and idle.
"$PY" - "$URL" <<'PY' || { echo "run scripts/buildbot.sh first" >&2; exit 1; }
import json, sys, urllib.request
url = sys.argv[1]
def get(path):
    with urllib.request.urlopen(url + "/api/v2/" + path, timeout=10) as r:
        return json.load(r)
try:
    workers = [w for w in get("workers")["workers"] if w.get("connected_to")]
    running = get("builds?complete=false")["builds"]
except Exception as e:
    sys.exit("Buildbot at %s does not answer (%s)" % (url, e))
if not workers:
    sys.exit("Buildbot at %s has no connected worker" % url)
if running:
    print("warning: %d builds are running on %s; the figures will be noisy" % (len(running), url), file=sys.stderr)
PY

cargo build -q --release -p baton-cli -p baton-bench --manifest-path "$ROOT/Cargo.toml"
exec "$ROOT/target/release/buildbot-overhead" "$ROOT/target/release/baton" "$URL"
