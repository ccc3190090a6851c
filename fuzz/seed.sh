#!/usr/bin/env bash
# Builds each fuzz target's seed corpus under fuzz/corpus/<target>/ from the project's own
# inputs: the webhook payloads in tests/fixtures/, the configs and workflows under config/
# and examples/, the starter files `baton init` writes, the TOML, YAML and JSON snippets
# of the docs, and the small hand-written seeds in fuzz/seeds/. The input format of each
# target is described in fuzz/src/ (intake.rs, load.rs, jq.rs).
#
# Usage: fuzz/seed.sh            (adds to what fuzz/corpus/ already holds)
set -euo pipefail
cd "$(dirname "$0")/.."

out=fuzz/corpus
mkdir -p "$out"
for t in intake_github intake_gitlab intake_travis intake_registry intake_generic intake_adapter config_load workflow_load \
    template_render trigger_match; do
    mkdir -p "$out/$t"
    if [ -d "fuzz/seeds/$t" ]; then cp fuzz/seeds/"$t"/* "$out/$t/"; fi
done

# A seed file per input; the name is the content's hash, so a rerun adds nothing twice.
put() { # put TARGET  (content on stdin)
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    mv "$tmp" "$out/$1/seed-$(sha1sum <"$tmp" | cut -c1-16)"
}

docs=(README.md docs/*.md docs/adapters/*.md examples/*/README.md)
# The fenced blocks of one language in the docs, each into its own file under $1.
snippets() { # snippets LANG DIR
    awk -v lang="$1" -v dir="$2" '
        $0 == "```" lang { n++; file = sprintf("%s/%03d", dir, n); inside = 1; next }
        /^```/ { inside = 0; next }
        inside { print > file }
    ' "${docs[@]}"
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch"/{toml,yaml,json}
snippets toml "$scratch/toml"
snippets yaml "$scratch/yaml"
snippets json "$scratch/json"

# Configs: the format byte `t` (TOML) or `y` (YAML), then the file.
configs=(config/baton.toml examples/*/baton.toml crates/cli/src/starter/*.toml "$scratch"/toml/*)
for f in "${configs[@]}"; do
    [ -f "$f" ] || continue
    { printf t; cat "$f"; } | put config_load
done

# Workflows, the same way; a TOML snippet of a config is a workflow seed too (both formats).
workflows=(config/workflows/*.yaml examples/*/*.yaml examples/*/workflows/*.yaml
    crates/cli/src/starter/*.yaml "$scratch"/yaml/*)
for f in "${workflows[@]}"; do
    [ -f "$f" ] || continue
    { printf y; cat "$f"; } | put workflow_load
done

payloads=(tests/fixtures/*/*.json examples/*/event.json "$scratch"/json/*)

# jq programs: every `if:` and every `${{ … }}` in the workflows and docs, and the
# generic sources' event expressions.
grep -ho "if: '[^']*'" "${workflows[@]}" "${docs[@]}" 2>/dev/null |
    sed "s/^if: '//; s/'\$//" | sort -u >"$scratch/conditions"
grep -ho '\${{[^}]*}}' "${workflows[@]}" "${docs[@]}" 2>/dev/null |
    sed 's/^\${{ *//; s/ *}}$//' | sort -u >"$scratch/expressions"
grep -ho 'expr = "[^"]*"' "${configs[@]}" "${docs[@]}" 2>/dev/null |
    sed 's/^expr = "//; s/"$//' | sort -u >>"$scratch/expressions"
# Whole template strings, as a stage's `with:` holds them.
grep -ho "'[^']*\${{[^']*'" "${workflows[@]}" "${docs[@]}" 2>/dev/null |
    sed "s/^'//; s/'\$//" | sort -u >"$scratch/templates"

# Each program with each payload would be thousands of seeds; each program gets one small
# payload (in turn) and each payload gets every condition, which covers both sides. libFuzzer
# mutates any byte alike, so a short payload leaves more of the mutations to the program.
small=()
for f in "${payloads[@]}"; do
    if [ "$(wc -c <"$f")" -le 3000 ]; then small+=("$f"); fi
done
pair() { # pair TARGET PROGRAMS
    local i=0 program
    while IFS= read -r program; do
        [ -n "$program" ] || continue
        local payload=${small[i % ${#small[@]}]}
        i=$((i + 1))
        { printf '%s\0' "$program"; cat "$payload"; } | put "$1"
    done <"$2"
}
pair trigger_match "$scratch/conditions"
pair trigger_match "$scratch/expressions"
for payload in "${payloads[@]}"; do
    while IFS= read -r program; do
        { printf '%s\0' "$program"; cat "$payload"; } | put trigger_match
    done <"$scratch/conditions"
done
pair template_render "$scratch/templates"
pair template_render "$scratch/expressions"

# Intake: a flags byte (`a`: signed; `c`: signed, the kind's second source; a backquote:
# unsigned), header lines, an empty line, the body. Each payload as its sender sends it,
# signed and not.
delivery() { # delivery TARGET FLAGS BODY HEADER...
    local target=$1 flags=$2 body=$3
    shift 3
    { printf '%s' "$flags"; printf '%s\n' "$@" ''; cat "$body"; } | put "$target"
}
for f in tests/fixtures/github/*.json examples/*/event.json; do
    event=$(basename "$f" .json)
    for flags in a '`'; do
        delivery intake_github "$flags" "$f" "X-GitHub-Event: $event" \
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958" \
            "Content-Type: application/json" "User-Agent: GitHub-Hookshot/044aadd"
    done
done
for f in tests/fixtures/gitlab/*.json; do
    case $(basename "$f") in
    push.json) event="Push Hook" ;;
    pipeline.json) event="Pipeline Hook" ;;
    *) event="Merge Request Hook" ;;
    esac
    for flags in a '`'; do
        delivery intake_gitlab "$flags" "$f" "X-Gitlab-Event: $event" \
            "X-Gitlab-Event-UUID: 13792a34-cac6-4fda-95a8-c58e00a3954e" \
            "Content-Type: application/json"
    done
done
# Signed travis inputs are the payload (the target posts it form-encoded and signs it);
# unsigned ones are sent as given, so one is the form itself.
for f in tests/fixtures/travis/*.json; do
    for flags in a '`'; do
        delivery intake_travis "$flags" "$f" "Travis-Repo-Slug: pingcap/tidb" \
            "Content-Type: application/x-www-form-urlencoded"
    done
    { printf '`'; printf '%s\n' "Signature: AAAA" ''; printf 'payload='; cat "$f"; } | put intake_travis
done
# Registry envelopes as distribution sends them; flag bit 1 picks the Basic source.
for f in tests/fixtures/registry/*.json; do
    for flags in a c '`'; do
        delivery intake_registry "$flags" "$f" \
            "Content-Type: application/vnd.docker.distribution.events.v1+json" \
            "User-Agent: Go-http-client/1.1"
    done
done
for f in "${payloads[@]}"; do
    delivery intake_generic a "$f" "X-Request-Id: 5b1f" "Content-Type: application/json"
    delivery intake_generic c "$f" "X-Event: build" "Content-Type: application/json"
done
for f in "${payloads[@]}"; do
    delivery intake_adapter a "$f" "Content-Type: application/json"
done
echo "seed.sh: $(find "$out" -type f | wc -l) seeds under $out"
