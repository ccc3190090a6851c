#!/usr/bin/env bash
# A real OCI registry (two: open, and behind htpasswd) and a real Docker engine on 127.0.0.1
# for baton's registry and docker adapter tests, the containerops example and bench/containers.
#
#   scripts/containers.sh          install what is missing (apt), start what is not running,
#                                  load the test image, write .containers/env
#   scripts/containers.sh stop     stop them (the data folders stay)
#   scripts/containers.sh reset    stop them and delete every image and blob
#
# Everything lives in .containers/ at the repository root (git-ignored):
#   registry/       the open registry (delete enabled) on REGISTRY_PORT (5000)
#   registry-auth/  the same behind htpasswd (user baton, password s3cret) on REGISTRY_AUTH_PORT (5001)
#                   (a port another program holds is replaced by a free one)
#   docker/         dockerd's data, exec root and socket (docker.sock)
#   env             the variables the tests read: BATON_REGISTRY_URL, BATON_REGISTRY_AUTH_URL,
#                   BATON_REGISTRY_AUTH_PASSWORD, BATON_DOCKER_HOST, BATON_BUSYBOX_IMAGE
#
# dockerd runs with no bridge and no iptables, ip_forward or masquerading changes: containers
# get `--network none` or `host`, and the machine's network is left as it was.
# Needs root (dockerd) and apt-get for the packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
C=$ROOT/.containers
REGISTRY_PORT=${REGISTRY_PORT:-5000}
REGISTRY_AUTH_PORT=${REGISTRY_AUTH_PORT:-5001}
BUSYBOX_IMAGE=baton-test/busybox:1
PACKAGES="docker-registry skopeo umoci docker.io busybox-static apache2-utils"
TOOLS="docker-registry skopeo umoci dockerd docker busybox htpasswd"

say() { echo "containers.sh: $*" >&2; }

alive() { # pidfile → true when its process is alive
    local pid
    [ -f "$1" ] && pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

stop_pid() { # pidfile: TERM, wait up to 20 s, then KILL
    alive "$1" || { rm -f "$1"; return 0; }
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$(basename "$(dirname "$1")") did not stop: killing it"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop() {
    if alive "$C/docker/dockerd.pid"; then
        # Containers first, so that none outlives the engine's stop as a stray runc process.
        DOCKER_HOST=unix://$C/docker/docker.sock docker ps -aq 2>/dev/null |
            xargs -r env DOCKER_HOST="unix://$C/docker/docker.sock" docker rm -f >/dev/null 2>&1 || true
    fi
    stop_pid "$C/docker/dockerd.pid"
    umount "$C/docker/exec/netns/default" 2>/dev/null || true
    stop_pid "$C/registry/registry.pid"
    stop_pid "$C/registry-auth/registry.pid"
    say "stopped"
}

case "${1:-start}" in
    stop) stop; exit 0 ;;
    reset) stop; rm -rf "$C/registry/data" "$C/registry-auth/data" "$C/docker/root"; exit 0 ;;
    start) ;;
    *) echo "usage: scripts/containers.sh [start|stop|reset]" >&2; exit 2 ;;
esac

missing=""
for tool in $TOOLS; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
    say "installing $PACKAGES (missing:$missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' own services must not start: policy-rc.d refuses them for this install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq $PACKAGES >/dev/null
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi

wait_for() { # what, seconds, command...: retries the command every 0.1 s
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq 1 $((seconds * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "$what did not come up in ${seconds} s; its log:"
    tail -n 30 "$LOG" >&2 || true
    exit 1
}

taken() { ! python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_registry() { # dir port [auth]: sets PORT to the port it listens on
    local dir=$1 port=$2 auth=${3:-}
    mkdir -p "$dir/data"
    if alive "$dir/registry.pid"; then PORT=$(cat "$dir/port"); return 0; fi
    if taken "$port"; then
        # Another checkout's registry, or anything else, holds it: take a free one.
        local free
        free=$(free_port)
        say "port $port is taken; $(basename "$dir") uses $free"
        port=$free
    fi
    PORT=$port
    echo "$port" > "$dir/port"
    {
        echo "version: 0.1"
        echo "log: {level: warn}"
        echo "storage:"
        echo "  filesystem: {rootdirectory: $dir/data}"
        echo "  delete: {enabled: true}"
        echo "http: {addr: 127.0.0.1:$port, secret: baton-test-$port}"
        if [ -n "$auth" ]; then
            htpasswd -Bbn baton s3cret > "$dir/htpasswd"
            echo "auth: {htpasswd: {realm: baton-test, path: $dir/htpasswd}}"
        fi
    } > "$dir/config.yml"
    LOG=$dir/registry.log
    docker-registry serve "$dir/config.yml" > "$LOG" 2>&1 &
    echo $! > "$dir/registry.pid"
    wait_for "the registry on $port" 20 curl -s -o /dev/null "http://127.0.0.1:$port/v2/"
}

start_registry "$C/registry" "$REGISTRY_PORT"
REGISTRY_PORT=$PORT
start_registry "$C/registry-auth" "$REGISTRY_AUTH_PORT" auth
REGISTRY_AUTH_PORT=$PORT

D=$C/docker
export DOCKER_HOST=unix://$D/docker.sock
if ! alive "$D/dockerd.pid"; then
    mkdir -p "$D"
    umount "$D/exec/netns/default" 2>/dev/null || true
    LOG=$D/dockerd.log
    # setsid: the engine must not die with the shell that started it (CI stops it explicitly).
    setsid dockerd --data-root "$D/root" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
        -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false \
        --ip-forward=false --ip-masq=false > "$LOG" 2>&1 < /dev/null &
    wait_for "dockerd" 60 docker version
fi

# The image every component test runs: busybox, static, FROM scratch (no image can be pulled here).
if ! docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    ctx=$(mktemp -d)
    cp "$(command -v busybox)" "$ctx/busybox"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' > "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$BUSYBOX_IMAGE" "$ctx" >/dev/null 2>"$ctx/build.log" ||
        { cat "$ctx/build.log" >&2; exit 1; }
    rm -rf "$ctx"
fi

cat > "$C/env" <<ENV
export BATON_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
export BATON_REGISTRY_AUTH_URL=http://127.0.0.1:$REGISTRY_AUTH_PORT
export BATON_REGISTRY_AUTH_PASSWORD=s3cret
export BATON_DOCKER_HOST=$DOCKER_HOST
export BATON_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
ENV
say "registry http://127.0.0.1:$REGISTRY_PORT, htpasswd registry http://127.0.0.1:$REGISTRY_AUTH_PORT, dockerd $DOCKER_HOST; variables in .containers/env"
