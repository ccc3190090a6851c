#!/usr/bin/env bash
# The registry and docker adapters against the tools people use by hand, on the real
# registry and Docker engine of scripts/containers.sh:
#
#   scripts/containers.sh && bench/containers/run.sh     # PROMOTES=10 STAGES=100 ROUNDS=3
#
# promote    a three-platform OCI index whose images each carry one LAYER_MB (20) MB layer of
#            random bytes, copied to a new repository of the same registry PROMOTES times by
#            `skopeo copy --all` and by a one-stage `baton run` (action: promote), alternated.
#            Both are timed as whole commands (process start to exit). Bytes uploaded by
#            baton: the stage's `bytes_uploaded` output, and the blob upload requests of its
#            repositories in the registry's own access log (both 0 when every blob is mounted).
# component  STAGES sequential stages of the busybox image, each printing a `[COUT]` line, as
#            one `baton run` (per stage: the run's duration / STAGES), against STAGES
#            sequential `docker run --rm --network none` of the same image and command (per
#            stage: each command's wall time), ROUNDS times alternated.
# Prints medians (and min–max) and the ratios baton/peer. Keep the machine quiet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROMOTES=${PROMOTES:-10}
STAGES=${STAGES:-100}
ROUNDS=${ROUNDS:-3}
LAYER_MB=${LAYER_MB:-20}

[ -f "$ROOT/.containers/env" ] || { echo "run scripts/containers.sh first" >&2; exit 1; }
. "$ROOT/.containers/env"
export DOCKER_HOST=$BATON_DOCKER_HOST
REG=${BATON_REGISTRY_URL#http://}
curl -sf "$BATON_REGISTRY_URL/v2/" >/dev/null || { echo "no registry at $BATON_REGISTRY_URL: run scripts/containers.sh" >&2; exit 1; }
docker version >/dev/null 2>&1 || { echo "no Docker engine at $DOCKER_HOST: run scripts/containers.sh" >&2; exit 1; }
REGISTRY_LOG=$ROOT/.containers/registry/registry.log

cargo build -q --release -p baton-cli --manifest-path "$ROOT/Cargo.toml"
BATON=${BATON_BIN:-$ROOT/target/release/baton}

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }

cat > "$W/baton.toml" <<TOML
workflows = ["*.yaml"]
[store]
url = "sqlite://$W/baton.db"
[adapters.reg]
kind = "registry"
url = "$BATON_REGISTRY_URL"
[adapters.local]
kind = "docker"
host = "$DOCKER_HOST"
TOML

# ---- promote ------------------------------------------------------------------------------
echo "building the source image: 3 platforms × one ${LAYER_MB} MB layer" >&2
run_id=$(date +%s)
src=bench/src-$run_id
(
    cd "$W"
    umoci init --layout oci >/dev/null
    manifests=""
    for arch in amd64 arm64 s390x; do
        umoci new --image "oci:$arch" >/dev/null
        umoci config --image "oci:$arch" --os linux --architecture "$arch" >/dev/null
        head -c $((LAYER_MB * 1024 * 1024)) /dev/urandom > payload.bin
        umoci insert --image "oci:$arch" payload.bin /payload.bin >/dev/null
        skopeo copy -q --dest-tls-verify=false "oci:oci:$arch" "docker://$REG/$src:$arch"
        skopeo inspect --raw --tls-verify=false "docker://$REG/$src:$arch" > manifest.json
        digest=sha256:$(sha256sum < manifest.json | cut -d' ' -f1)
        manifests=${manifests:+$manifests,}$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,"platform":{"os":"linux","architecture":"%s"}}' "$digest" "$(wc -c < manifest.json)" "$arch")
    done
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$manifests" > index.json
    curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" --data-binary @index.json \
        "$BATON_REGISTRY_URL/v2/$src/manifests/v1" -o /dev/null
    rm -rf oci payload.bin
)

promote_yaml() { # destination repository
    cat > "$W/promote.yaml" <<YAML
name: promote
on: [{ source: manual }]
stages:
  promote:
    uses: reg
    timeout: 10m
    with: { action: promote, from: '$src:v1', to: '$1:v1' }
YAML
}
log_lines_before=$(wc -l < "$REGISTRY_LOG")
: > "$W/promote.tsv"
for i in $(seq 1 "$PROMOTES"); do
    t=$(now_ns)
    skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false \
        "docker://$REG/$src:v1" "docker://$REG/bench/skopeo-$run_id-$i:v1"
    skopeo_ms=$(ms_since "$t")
    promote_yaml "bench/baton-$run_id-$i"
    t=$(now_ns)
    "$BATON" run -c "$W/baton.toml" promote --json > "$W/promote.json" 2>"$W/promote.err" ||
        { cat "$W/promote.err" >&2; exit 1; }
    baton_ms=$(ms_since "$t")
    uploaded=$(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["stages"][0]["outputs"]; print(o.get("bytes_uploaded", "?"))' "$W/promote.json")
    printf '%s\t%s\t%s\n' "$skopeo_ms" "$baton_ms" "$uploaded" >> "$W/promote.tsv"
done
# Blob uploads (POST/PATCH/PUT on blobs/uploads) into baton's repositories, from the registry.
log_uploads=$(tail -n +"$((log_lines_before + 1))" "$REGISTRY_LOG" |
    grep -E "\"(PATCH|PUT) /v2/bench/baton-$run_id-[0-9]+/blobs/uploads/" -c || true)
# Every digest kept: the index and each child at one baton destination equal the source's.
same=yes
for ref in v1 amd64 arm64 s390x; do
    a=$(skopeo inspect --raw --tls-verify=false "docker://$REG/$src:$ref" | sha256sum)
    want=$a
    if [ "$ref" = v1 ]; then
        b=$(skopeo inspect --raw --tls-verify=false "docker://$REG/bench/baton-$run_id-1:v1" | sha256sum)
    else
        d=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$REG/$src:$ref" | sha256sum | cut -d' ' -f1)
        b=$(skopeo inspect --raw --tls-verify=false "docker://$REG/bench/baton-$run_id-1@$d" | sha256sum)
    fi
    [ "$want" = "$b" ] || same=no
done

# ---- component ----------------------------------------------------------------------------
{
    echo "name: chain"
    echo "on: [{ source: manual }]"
    echo "stages:"
    for i in $(seq 1 "$STAGES"); do
        echo "  s$i:"
        [ "$i" -gt 1 ] && echo "    needs: [s$((i - 1))]"
        echo "    uses: local"
        echo "    with: { image: '$BATON_BUSYBOX_IMAGE', pull: never, command: [sh, -c, 'echo \"[COUT] n = $i\"'] }"
    done
} > "$W/chain.yaml"
: > "$W/component.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 1 "$STAGES"); do
        t=$(now_ns)
        docker run --rm --network none "$BATON_BUSYBOX_IMAGE" sh -c "echo \"[COUT] n = $i\"" >/dev/null
        printf 'docker\t%s\t%s\n' "$round" "$(ms_since "$t")" >> "$W/component.tsv"
    done
    t=$(now_ns)
    "$BATON" run -c "$W/baton.toml" chain --json > "$W/chain.json" 2>"$W/chain.err" ||
        { cat "$W/chain.err" >&2; exit 1; }
    total=$(ms_since "$t")
    python3 - "$W/chain.json" "$round" "$total" "$STAGES" >> "$W/component.tsv" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
assert run["status"] == "succeeded", run["status"]
stages = int(sys.argv[4])
assert [s["outputs"]["n"] for s in run["stages"]] == list(range(1, stages + 1))
print("baton\t%s\t%.1f" % (sys.argv[2], int(sys.argv[3]) / stages))
for s in run["stages"]:
    print("baton-stage\t%s\t%d" % (sys.argv[2], s["finished_at"] - s["started_at"]))
PY
done
left=$(docker ps -aq --filter label=baton.attempt | wc -l)

python3 - "$W/promote.tsv" "$W/component.tsv" "$log_uploads" "$same" "$left" "$LAYER_MB" "$STAGES" <<'PY'
import statistics as st, sys
promote = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
comp = [l.split("\t") for l in open(sys.argv[2]).read().split("\n") if l]
def show(xs):
    return "%8.1f ms (%.1f–%.1f)" % (st.median(xs), min(xs), max(xs))
sk = [float(p[0]) for p in promote]; ba = [float(p[1]) for p in promote]
print("promote: 3-platform index, %s MB layers, %d copies each, alternated" % (sys.argv[6], len(promote)))
print("  skopeo copy --all  %s" % show(sk))
print("  baton promote      %s" % show(ba))
print("  ratio baton/skopeo (medians)  %.2f   (target ≤ 1.0)" % (st.median(ba) / st.median(sk)))
print("  bytes uploaded by baton (its output, per copy): %s" % ", ".join(sorted({p[2].strip() for p in promote})))
print("  blob uploads into baton's repositories in the registry's log: %s   (target 0)" % sys.argv[3])
print("  every digest at the destination equals the source's: %s" % sys.argv[4])
dk = [float(c[2]) for c in comp if c[0] == "docker"]
bp = [float(c[2]) for c in comp if c[0] == "baton"]
bs = [float(c[2]) for c in comp if c[0] == "baton-stage"]
print("component: %s sequential stages of busybox, %d rounds" % (sys.argv[7], len(bp)))
print("  docker run --rm (each)          %s" % show(dk))
print("  baton, run duration / stages    %s" % show(bp))
print("  baton, stage started → finished %s" % show(bs))
print("  ratio baton/docker (medians)    %.2f   (target ≤ 1.0)" % (st.median(bp) / st.median(dk)))
print("  containers left with a baton.attempt label: %s" % sys.argv[5])
PY
