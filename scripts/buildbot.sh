#!/usr/bin/env bash
# A real Buildbot on 127.0.0.1 for baton's Buildbot adapter tests and example.
#
#   scripts/buildbot.sh          install (once), start the masters and workers (if not
#                                running), wait until the workers are connected, print the URLs
#   scripts/buildbot.sh stop     stop them
#   scripts/buildbot.sh reset    stop them and forget every build (the venv stays)
#
# Everything lives in .buildbot/ at the repository root (git-ignored): a Python virtualenv
# with Buildbot from PyPI, two masters configured by tests/buildbot/master.cfg (linked), and
# the workers:
#   master/       the one the tests and the example drive, with BUILDBOT_WORKERS workers (3)
#                 connected on BUILDBOT_PB_PORT (9989); web and API on BUILDBOT_WEB_PORT (8010)
#   master-auth/  the same builders behind a login (BUILDBOT_AUTH), no workers; web and API
#                 on BUILDBOT_AUTH_WEB_PORT (8011)
# Needs python3; on Debian/Ubuntu python3-venv is installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BB=$ROOT/.buildbot
VENV=$BB/venv
VERSION=${BUILDBOT_VERSION:-4.3.0}
WEB_PORT=${BUILDBOT_WEB_PORT:-8010}
PB_PORT=${BUILDBOT_PB_PORT:-9989}
AUTH_WEB_PORT=${BUILDBOT_AUTH_WEB_PORT:-8011}
AUTH_PB_PORT=${BUILDBOT_AUTH_PB_PORT:-9990}
NWORKERS=${BUILDBOT_WORKERS:-3}
URL=http://127.0.0.1:$WEB_PORT
AUTH_URL=http://127.0.0.1:$AUTH_WEB_PORT
WORKERS=$(seq 1 "$NWORKERS")

say() { echo "buildbot.sh: $*" >&2; }

running() { # basedir → true when its twistd is alive
    local pid
    [ -f "$1/twistd.pid" ] && pid=$(cat "$1/twistd.pid" 2>/dev/null) && [ -n "$pid" ] &&
        kill -0 "$pid" 2>/dev/null
}

stop_one() { # basedir stop-command: stops one twistd, killing it if it will not go
    local dir=$1 tool=$2
    running "$dir" || return 0
    "$tool" stop "$dir" >/dev/null 2>&1 || true
    if running "$dir"; then
        # `buildbot stop` gives up after a while (seen with a build still running): a
        # master left behind keeps its ports and outlives a CI run.
        say "$(basename "$dir") did not stop: killing it"
        kill -9 "$(cat "$dir/twistd.pid")" 2>/dev/null || true
        rm -f "$dir/twistd.pid"
    fi
}

stop() {
    for n in $WORKERS; do stop_one "$BB/worker$n" "$VENV/bin/buildbot-worker"; done
    for m in master master-auth; do stop_one "$BB/$m" "$VENV/bin/buildbot"; done
    say "stopped"
}

case "${1:-start}" in
    stop) stop; exit 0 ;;
    reset) stop; rm -rf "$BB"/master* "$BB"/worker*; say "reset"; exit 0 ;;
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

answers() { # url → true when its API answers (read whole: see below)
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()' "$1/api/v2" 2>/dev/null
}

# 3. The masters, their config linked from the repository. The environment of `buildbot
#    start` is what master.cfg reads, then and at every reconfig.
master() { # name web-port pb-port workers auth
    local dir=$BB/$1 url=http://127.0.0.1:$2 sum
    if [ ! -f "$dir/buildbot.tac" ]; then
        "$VENV/bin/buildbot" create-master -q -r "$dir" >/dev/null
    fi
    ln -sf "$ROOT/tests/buildbot/master.cfg" "$dir/master.cfg"
    export BUILDBOT_WEB_PORT=$2 BUILDBOT_PB_PORT=$3 BUILDBOT_WORKERS=$4 BUILDBOT_AUTH=$5
    "$VENV/bin/buildbot" checkconfig "$dir" >/dev/null
    sum="$(cksum <"$ROOT/tests/buildbot/master.cfg") $2 $3 $4 $5"
    if running "$dir" && [ "$(cat "$dir.sum" 2>/dev/null)" != "$sum" ] &&
        [ "$(cut -d' ' -f3- "$dir.sum" 2>/dev/null)" != "$2 $3 $4 $5" ]; then
        say "$1: ports or workers changed: restarting it"
        "$VENV/bin/buildbot" stop "$dir" >/dev/null || true
    fi
    if running "$dir" && ! answers "$url" && ! { sleep 1; answers "$url"; }; then
        # Buildbot 4.3 writes API answers from a thread; a client that hangs up halfway can
        # leave its web server refusing every connection. Only a restart cures it.
        say "$1 runs but its web server does not answer: restarting it"
        "$VENV/bin/buildbot" stop "$dir" >/dev/null || true
    fi
    if running "$dir"; then
        if [ "$(cat "$dir.sum" 2>/dev/null)" != "$sum" ]; then
            say "$1: master.cfg changed: reconfiguring"
            "$VENV/bin/buildbot" reconfig "$dir" >/dev/null
        fi
    else
        say "starting $1 on $url"
        "$VENV/bin/buildbot" start "$dir" >/dev/null || {
            tail -n 30 "$dir/twistd.log" >&2
            exit 1
        }
    fi
    echo "$sum" >"$dir.sum"
}
master master "$WEB_PORT" "$PB_PORT" "$NWORKERS" ""
master master-auth "$AUTH_WEB_PORT" "$AUTH_PB_PORT" 0 1

# 4. The workers.
for n in $WORKERS; do
    W=$BB/worker$n
    if [ ! -f "$W/buildbot.tac" ] || ! grep -q "^port = $PB_PORT\$" "$W/buildbot.tac"; then
        if running "$W"; then "$VENV/bin/buildbot-worker" stop "$W" >/dev/null || true; fi
        rm -rf "$W"
        "$VENV/bin/buildbot-worker" create-worker -q --umask=0o022 "$W" "127.0.0.1:$PB_PORT" "w$n" baton-test >/dev/null
    fi
    if ! running "$W"; then "$VENV/bin/buildbot-worker" start "$W" >/dev/null; fi
done

# 5. Wait until every worker is connected.
"$VENV/bin/python" - "$URL" "$NWORKERS" <<'PY'
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
    except Exception:  # not up yet
        up = 0
    if time.time() > deadline:
        sys.exit("buildbot.sh: only %d of %d workers connected after 90 s; see .buildbot/master/twistd.log" % (up, want))
    time.sleep(0.2)
PY
answers "$AUTH_URL" || { say "master-auth does not answer at $AUTH_URL"; exit 1; }
say "ready: $URL, and $AUTH_URL behind a login"
say "  export BATON_BUILDBOT_URL=$URL BATON_BUILDBOT_AUTH_URL=$AUTH_URL"
