#!/usr/bin/env bash
# A real Buildbot on 127.0.0.1 for baton's Buildbot adapter tests and example.
#
#   scripts/buildbot.sh          install (once), start the master and workers (if not running),
#                                wait until the workers are connected, print the URL
#   scripts/buildbot.sh stop     stop them
#   scripts/buildbot.sh reset    stop them and forget every build (the venv stays)
#
# Everything lives in .buildbot/ at the repository root (git-ignored): a Python virtualenv
# with Buildbot from PyPI, the master (its config is tests/buildbot/master.cfg, linked) and
# the workers. Needs python3; on Debian/Ubuntu python3-venv is installed with apt-get when
# missing. Ports: BUILDBOT_WEB_PORT (8010), BUILDBOT_PB_PORT (9989); BUILDBOT_WORKERS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BB=$ROOT/.buildbot
VENV=$BB/venv
VERSION=${BUILDBOT_VERSION:-4.3.0}
export BUILDBOT_WEB_PORT=${BUILDBOT_WEB_PORT:-8010}
export BUILDBOT_PB_PORT=${BUILDBOT_PB_PORT:-9989}
export BUILDBOT_WORKERS=${BUILDBOT_WORKERS:-3}
URL=http://127.0.0.1:$BUILDBOT_WEB_PORT
WORKERS=$(seq 1 "$BUILDBOT_WORKERS")

say() { echo "buildbot.sh: $*" >&2; }

running() { # basedir → true when its twistd is alive
    local pid
    [ -f "$1/twistd.pid" ] && pid=$(cat "$1/twistd.pid" 2>/dev/null) && [ -n "$pid" ] &&
        kill -0 "$pid" 2>/dev/null
}

stop() {
    for n in $WORKERS; do
        if running "$BB/worker$n"; then "$VENV/bin/buildbot-worker" stop "$BB/worker$n" >/dev/null || true; fi
    done
    if running "$BB/master"; then "$VENV/bin/buildbot" stop "$BB/master" >/dev/null || true; fi
    say "stopped"
}

case "${1:-start}" in
    stop) stop; exit 0 ;;
    reset) stop; rm -rf "$BB/master" "$BB"/worker*; say "reset"; exit 0 ;;
    start) ;;
    *) echo "usage: $0 [start|stop|reset]" >&2; exit 2 ;;
esac

# 1. Python with venv (a fresh Debian has python3 but not always its venv module).
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    command -v apt-get >/dev/null || { say "need python3 with the venv module"; exit 1; }
    say "installing python3-venv with apt-get"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi

# 2. The virtualenv with Buildbot (buildbot-www is needed even for the bare REST API).
if ! "$VENV/bin/python" -c "import buildbot, buildbot_worker, buildbot_www; assert buildbot.version == '$VERSION'" 2>/dev/null; then
    say "installing Buildbot $VERSION into $VENV"
    mkdir -p "$BB"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "buildbot==$VERSION" "buildbot-www==$VERSION" "buildbot-worker==$VERSION"
fi

# 3. The master, its config linked from the repository.
if [ ! -f "$BB/master/buildbot.tac" ]; then
    "$VENV/bin/buildbot" create-master -q -r "$BB/master" >/dev/null
fi
ln -sf "$ROOT/tests/buildbot/master.cfg" "$BB/master/master.cfg"
"$VENV/bin/buildbot" checkconfig "$BB/master" >/dev/null
SUM=$(cksum <"$ROOT/tests/buildbot/master.cfg")
answers() { "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()' "$URL/api/v2" 2>/dev/null; }
if running "$BB/master" && ! answers && ! { sleep 1; answers; }; then
    # Buildbot 4.3 writes API answers from a thread; a client that hangs up halfway can
    # leave its web server refusing every connection. Only a restart cures it.
    say "the master runs but its web server does not answer: restarting it"
    "$VENV/bin/buildbot" stop "$BB/master" >/dev/null || true
fi
if running "$BB/master"; then
    if [ "$(cat "$BB/master.cfg.sum" 2>/dev/null)" != "$SUM" ]; then
        say "master.cfg changed: reconfiguring"
        "$VENV/bin/buildbot" reconfig "$BB/master" >/dev/null
    fi
else
    say "starting the master on $URL"
    "$VENV/bin/buildbot" start "$BB/master" >/dev/null || {
        tail -n 30 "$BB/master/twistd.log" >&2; exit 1
    }
fi
echo "$SUM" >"$BB/master.cfg.sum"

# 4. The workers.
for n in $WORKERS; do
    W=$BB/worker$n
    if [ ! -f "$W/buildbot.tac" ] || ! grep -q "port = $BUILDBOT_PB_PORT\$" "$W/buildbot.tac"; then
        rm -rf "$W"
        "$VENV/bin/buildbot-worker" create-worker -q --umask=0o022 "$W" "127.0.0.1:$BUILDBOT_PB_PORT" "w$n" baton-test >/dev/null
    fi
    if ! running "$W"; then "$VENV/bin/buildbot-worker" start "$W" >/dev/null; fi
done

# 5. Wait until every worker is connected.
"$VENV/bin/python" - "$URL" "$BUILDBOT_WORKERS" <<'PY'
import json, sys, time, urllib.request
url, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 90
while True:
    try:
        with urllib.request.urlopen(url + "/api/v2/workers", timeout=5) as r:
            workers = json.load(r)["workers"]
        up = sum(1 for w in workers if w.get("connected_to"))
        if up >= want:
            break
    except Exception as e:  # not up yet
        up = 0
    if time.time() > deadline:
        sys.exit("buildbot.sh: only %d of %d workers connected after 90 s; see .buildbot/master/twistd.log" % (up, want))
    time.sleep(0.2)
PY
say "ready: $URL (export BATON_BUILDBOT_URL=$URL)"
