#!/bin/sh
# A ContainerOps component: it reads its input from $CO_DATA (a JSON string, ContainerOps'
# own variable; baton also hands it on stdin and in the read-only file $BATON_INPUT), checks
# it, and reports outputs as `[COUT] KEY = value` lines. A non-zero exit fails the stage.
#
# Input:  {"repository": "containerops/app", "version": "1.4.0", "channel": "stable"}
# Output: [COUT] image = containerops/app:1.4.0
#         [COUT] tag = 1.4.0
#         [COUT] channel = stable
#         [COUT] semver = true          (a JSON value: baton keeps it a boolean)
set -eu

# The value of a top-level string key (without its quotes). Enough for this flat input; a
# real component would use a JSON parser.
field() {
    printf '%s\n' "$CO_DATA" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p"
}

repository=$(field repository)
version=$(field version)
channel=$(field channel)
if [ -z "$repository" ] || [ -z "$version" ]; then
    echo "check-release: the input needs \"repository\" and \"version\"; got: $CO_DATA" >&2
    exit 2
fi
case "$version" in
    *[!0-9.]* | .* | *. | *..*)
        echo "check-release: \"$version\" is not a release version (digits and dots)" >&2
        exit 1 ;;
esac

echo "checking $repository:$version for the ${channel:-stable} channel"
echo "[COUT] image = $repository:$version"
echo "[COUT] tag = $version"
echo "[COUT] channel = ${channel:-stable}"
echo "[COUT] semver = true"
