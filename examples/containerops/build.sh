#!/usr/bin/env bash
# Builds what the example runs, on the Docker engine in DOCKER_HOST and the registry at
# REGISTRY (host:port, default 127.0.0.1:5000), with nothing pulled from anywhere:
#   containerops/check-release:1   the component image, in the engine
#   REGISTRY/containerops/app:1.4.0  "the built image" that the workflow promotes: a
#                                  three-platform index made with umoci and skopeo
# With the repository's scripts/containers.sh running: `. .containers/env` first, then
#   DOCKER_HOST=$BATON_DOCKER_HOST REGISTRY=${BATON_REGISTRY_URL#http://} examples/containerops/build.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REGISTRY=${REGISTRY:-127.0.0.1:5000}
VERSION=${VERSION:-1.4.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The component: busybox-static and the script, built with the classic builder (no BuildKit).
cp "$HERE/component/Dockerfile" "$HERE/component/check-release.sh" "$work/"
cp "$(command -v busybox)" "$work/busybox"
DOCKER_BUILDKIT=0 docker build -q -t containerops/check-release:1 "$work" >/dev/null 2>"$work/build.log" ||
    { cat "$work/build.log" >&2; exit 1; }

# The application image: one small image per platform, pushed by digest, and an OCI index
# over the three (skopeo cannot write an index itself, so it is written here).
cd "$work"
umoci init --layout oci >/dev/null
manifests=""
for platform in linux/amd64 linux/arm64 linux/s390x; do
    arch=${platform#linux/}
    umoci new --image "oci:$arch" >/dev/null
    umoci config --image "oci:$arch" --os linux --architecture "$arch" >/dev/null
    echo "app $VERSION for $platform" > release.txt
    umoci insert --image "oci:$arch" release.txt /release.txt >/dev/null
    skopeo copy -q --dest-tls-verify=false "oci:oci:$arch" "docker://$REGISTRY/containerops/app:$VERSION-$arch"
    # The digest is over the manifest's exact bytes, trailing newline included: hash the file.
    skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/containerops/app:$VERSION-$arch" > manifest.json
    digest=sha256:$(sha256sum < manifest.json | cut -d' ' -f1)
    entry=$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,"platform":{"os":"linux","architecture":"%s"}}' \
        "$digest" "$(wc -c < manifest.json)" "$arch")
    manifests=${manifests:+$manifests,}$entry
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$manifests" > index.json
curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" --data-binary @index.json \
    "http://$REGISTRY/v2/containerops/app/manifests/$VERSION" -o /dev/null
echo "built containerops/check-release:1 in the engine and $REGISTRY/containerops/app:$VERSION (3 platforms)"
