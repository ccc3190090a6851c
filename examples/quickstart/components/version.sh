#!/bin/sh
# A ContainerOps-style component: it reads its input as JSON and reports its outputs as
# `[COUT] KEY = value` lines on stdout. baton hands the input both on stdin and in the file
# named by $BATON_INPUT; by hand, pipe it in:
#
#   printf '{"base":"1.2.0","commits":5,"sha":"abc1234","branch":"main"}' \
#     | sh examples/quickstart/components/version.sh
#
# Input:  {"base": "0.4.0", "commits": 3, "sha": "3f4a2c1", "branch": "main", "tag": ""}
# Output: [COUT] VERSION = 0.4.3        (0.4.3-my-branch.3f4a2c1 off main/master;
#         [COUT] TAG = v0.4.3            the tag itself, without its `v`, when "tag" is set)
#         [COUT] PRERELEASE = false     (a JSON value: baton keeps it a boolean)
set -eu

if [ -n "${BATON_INPUT:-}" ] && [ -r "$BATON_INPUT" ]; then
    input=$(cat "$BATON_INPUT")
else
    input=$(cat)
fi

# The value of a top-level key holding a string (without its quotes) or a number. Enough
# for this flat input; a real component would use a JSON parser.
field() {
    printf '%s\n' "$input" | sed -n \
        -e "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" \
        -e t \
        -e "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p"
}

base=$(field base)
commits=$(field commits)
sha=$(field sha)
branch=$(field branch)
tag=$(field tag)

case $base in
    *[!0-9.]* | *..* | .* | *. | '') base_ok=no ;;
    *.*.*.*) base_ok=no ;;
    *.*.*) base_ok=yes ;;
    *) base_ok=no ;;
esac
if [ "$base_ok" != yes ]; then
    echo "version: \"base\" must look like 1.2.3, got '$base'" >&2
    exit 2
fi
case $commits in
    '' | *[!0-9]*)
        echo "version: \"commits\" must be a number, got '$commits'" >&2
        exit 2
        ;;
esac

version="${base%.*}.$((${base##*.} + commits))"
if [ -n "$tag" ]; then
    # A pushed tag names the release.
    version=${tag#v}
    prerelease=false
elif [ "$branch" = main ] || [ "$branch" = master ]; then
    prerelease=false
else
    prerelease=true
    suffix=$(printf '%s' "${branch:-dev}" | sed 's/[^A-Za-z0-9]/-/g')
    version="$version-$suffix${sha:+.$sha}"
fi

if [ -n "$tag" ]; then
    echo "version $version: the pushed tag $tag"
else
    echo "version $version: $base plus $commits commits on ${branch:-an unknown branch}"
fi
printf '[COUT] VERSION = %s\n' "$version"
printf '[COUT] TAG = v%s\n' "$version"
printf '[COUT] PRERELEASE = %s\n' "$prerelease"
