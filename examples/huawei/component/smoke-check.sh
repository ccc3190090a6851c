#!/bin/sh
# A ContainerOps component run as a Kubernetes Job: it reads its input from $CO_DATA (a JSON
# string, ContainerOps' own variable; baton also mounts it as the read-only file
# $BATON_INPUT), probes the freshly deployed service, and reports outputs two ways:
# `[COUT] KEY = value` lines in its log, and a JSON object written to $BATON_OUTPUT, which
# on Kubernetes is the container's termination message (/dev/termination-log).
#
# Input:  {"url": "http://web.app.svc.cluster.local/healthz", "image": "…@sha256:…", "revision": "2"}
# Output: [COUT] healthy = true
#         [COUT] probes = 1
#         $BATON_OUTPUT: {"checked_image": "…@sha256:…", "revision": "2"}
# A non-zero exit fails the stage.
set -eu

# The value of a top-level key, string or number (without quotes). Enough for this flat
# input; a real component would use a JSON parser.
field() {
    printf '%s\n' "$CO_DATA" |
        sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\).*/\1/p"
}

url=$(field url)
image=$(field image)
revision=$(field revision)
if [ -z "$url" ] || [ -z "$image" ]; then
    echo "smoke-check: the input needs \"url\" and \"image\"; got: $CO_DATA" >&2
    exit 2
fi

echo "smoke-check: $image (revision ${revision:-?}) at $url"
probes=0
until wget -q -T 5 -O /dev/null "$url"; do
    probes=$((probes + 1))
    if [ "$probes" -ge 10 ]; then
        echo "smoke-check: $url did not answer 2xx after $probes probes" >&2
        exit 1
    fi
    sleep 3
done
echo "[COUT] healthy = true"
echo "[COUT] probes = $((probes + 1))"
printf '{"checked_image": "%s", "revision": "%s"}\n' "$image" "$revision" > "${BATON_OUTPUT:-/dev/termination-log}"
