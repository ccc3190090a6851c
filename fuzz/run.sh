#!/usr/bin/env bash
# The bounded fuzzing pass of the test command: builds every fuzz target, seeds each one's
# corpus (fuzz/seed.sh) and runs each for a few seconds. Fails on the first target that
# finds a crash, a panic, a timeout or an out-of-memory; the input is left under
# fuzz/artifacts/<target>/ and the message says how to run it again.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 15 s, every target)
#
# Needs cargo-fuzz (installed here at a pinned version when missing) and a C++ compiler
# (libFuzzer is compiled from source). The toolchain may be stable: RUSTC_BOOTSTRAP lets it
# take the unstable flags cargo-fuzz passes. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(intake_github intake_gitlab intake_travis intake_registry intake_generic intake_adapter config_load
        workflow_load template_render trigger_match)
fi

# The fuzz build has its own flags, so its own target folder (fuzz/target), whatever the
# caller's CARGO_TARGET_DIR says; installing cargo-fuzz then builds in a folder of its own.
unset CARGO_TARGET_DIR
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz/run.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export RUSTC_BOOTSTRAP=1
# No sanitizer, and 16 codegen units: see README.md for both choices. `run` must be given
# the same flags as `build`, or it builds again.
flags=(--sanitizer none --codegen-units 16)

# The lock file is committed: refuse to change it, as `cargo test --locked` does.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
cargo fuzz build "${flags[@]}"
fuzz/seed.sh

# Per input: a hang of 10 s is a finding (jq programs that never end); 2 GiB is the most
# any input may make the process hold.
limits=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
for target in "${targets[@]}"; do
    echo "fuzz/run.sh: $target for ${seconds}s" >&2
    dict=()
    case $target in template_render | trigger_match) dict=(-dict=fuzz/dicts/jq.dict) ;; esac
    if ! cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" -- "${limits[@]}" "${dict[@]}" \
        2>"fuzz/$target.log"; then
        # What failed and on which input; cargo-fuzz's own backtrace after it says nothing more.
        grep -E -A6 'panicked at|ERROR: libFuzzer|Test unit written' "fuzz/$target.log" |
            head -n 40 >&2
        echo "fuzz/run.sh: $target found a failure; the input is under fuzz/artifacts/$target/." >&2
        echo "  Run it again: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --codegen-units 16 $target fuzz/artifacts/$target/<file>" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "fuzz/$target.log" |
        sed "s/^/fuzz\/run.sh: $target: /" >&2
    rm -f "fuzz/$target.log"
done
echo "fuzz/run.sh: ${#targets[@]} targets ran ${seconds}s each and found nothing" >&2
