#!/usr/bin/env bash
# Durable webhook intake: `baton serve` (SQLite, synchronous=FULL, 202 only after the commit)
# beside adnanh/webhook (a hook that verifies the same GitHub HMAC and runs nothing), under
# the same load tools with the same signed payload, on 127.0.0.1.
#
#   bench/intake/run.sh            # DUR=10s CONNS=32 ROUNDS=3 by default
#
# Prints, for both: peak requests/s and p99 at peak (wrk), then p99 at half of baton's peak
# rate, the ratios, and checks that every 2xx baton gave is a stored delivery. The peak is
# measured ROUNDS times, alternating which server goes first, and the medians are compared:
# on a shared 2-core VM one pair of runs can differ by 30% from the next. Peak: wrk (closed loop, CONNS connections). Half rate: bench's own
# intake-load (open loop at a fixed rate, a fresh delivery id per request, latency from each
# request's scheduled time), because neither wrk nor oha can give each request its own id at
# a fixed rate. Needs the apt packages webhook and wrk (installed when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-10s}; CONNS=${CONNS:-32}; THREADS=${THREADS:-1}; ROUNDS=${ROUNDS:-3}
BATON_PORT=${BATON_PORT:-9101}; PEER_PORT=${PEER_PORT:-9102}
SECRET=bench-secret
BODY='{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"acme/app"}}'

need() { command -v "$1" >/dev/null 2>&1; }
if ! need webhook || ! need wrk; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq webhook wrk
fi
need python3 || { echo "python3 is needed to read the results"; exit 1; }

cargo build -q --release -p baton-cli -p baton-bench --manifest-path "$ROOT/Cargo.toml"
BATON=$ROOT/target/release/baton
LOAD=$ROOT/target/release/intake-load

D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
cd "$D"
SIG=sha256=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $2}')

# --- baton: one workflow whose trigger evaluates a jq condition on every delivery ---
mkdir -p workflows
cat > baton.toml <<TOML
workflows = ["workflows/*.yaml"]
[store]
url = "sqlite://$D/baton.db"
[sources.github]
kind = "github"
secret = { env = "BENCH_SECRET" }
TOML
cat > workflows/never.yaml <<YAML
name: never
on: [{ source: github, event: push, if: '.ref == "refs/heads/never"' }]
stages:
  x: { uses: exec, with: { run: 'true' } }
YAML
BENCH_SECRET=$SECRET BATON_LOG=warn "$BATON" serve -c baton.toml --listen 127.0.0.1:$BATON_PORT 2>baton.log &
# --- the peer: verifies the HMAC, then a rule that never matches, so nothing runs ---
cat > hooks.json <<JSON
[{"id":"github","execute-command":"/bin/true",
  "trigger-rule":{"and":[
    {"match":{"type":"payload-hmac-sha256","secret":"$SECRET","parameter":{"source":"header","name":"X-Hub-Signature-256"}}},
    {"match":{"type":"value","value":"push","parameter":{"source":"header","name":"X-GitHub-Event"}}},
    {"match":{"type":"value","value":"never","parameter":{"source":"header","name":"X-Bench"}}}]}}]
JSON
webhook -hooks hooks.json -ip 127.0.0.1 -port $PEER_PORT >peer.log 2>&1 &
for url in http://127.0.0.1:$BATON_PORT/healthz http://127.0.0.1:$PEER_PORT/; do
  for _ in $(seq 100); do curl -s -o /dev/null "$url" && break; sleep 0.05; done
done

# Each wrk thread numbers its requests and each wrk run has its own prefix (BENCH_PREFIX), so
# every request is a new delivery: a repeated id would get the cheaper duplicate answer.
cat > signed.lua <<LUA
local counter = 0
local threads = 0
local prefix = os.getenv("BENCH_PREFIX") or "b"
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "$SIG"
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. tostring(tid) .. "-" .. counter
  return wrk.format(nil, nil, nil, nil)
end
LUA

# GitHub's delivery ids are GUIDs: random keys land on random pages of baton's duplicate
# index, where counters land on a few. baton is measured with both.
sed -e 's|^  wrk.headers\["X-GitHub-Delivery"\] = .*|  wrk.headers["X-GitHub-Delivery"] = string.format("%08x-%04x-4%03x-%04x-%08x%04x", math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff), math.random(0, 0x7fffffff), math.random(0, 0xffff))|' \
    -e 's|^function setup(thread)|math.randomseed(os.time())\nfunction setup(thread)|' signed.lua > guid.lua

peak() { # url prefix script -> "rps p99_ms non2xx total"
  BENCH_PREFIX="$2" wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -s "${3:-signed.lua}" "$1" > wrk.out
  python3 - <<'PY'
import re
t = open("wrk.out").read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
total = int(re.search(r"(\d+) requests in", t).group(1))
print(f"{rps:.0f} {p99:.2f} {int(non.group(1)) if non else 0} {total}")
PY
}

paced() { # url rate -> "p99_ms achieved_rate"
  "$LOAD" "$1" "$2" "${DUR%s}" "$CONNS" "$SECRET" "$BODY" > load.json
  python3 -c "import json; r=json.load(open('load.json')); print(f\"{r['p99_ms']:.2f} {r['rate']:.0f} {r['non_2xx'] + r['errors']}\")"
}

median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

echo "warming up..."; BENCH_PREFIX=warm wrk -t1 -c8 -d2s -s signed.lua http://127.0.0.1:$BATON_PORT/hooks/github >/dev/null
B_RPS_ALL=(); B_P99_ALL=(); G_RPS_ALL=(); G_P99_ALL=(); W_RPS_ALL=(); W_P99_ALL=()
B_NON=0; B_OK=0; W_NON=0
for round in $(seq "$ROUNDS"); do
  # Each round starts with a different one of the three.
  case $(( round % 3 )) in
    1) order=(baton guid webhook) ;; 2) order=(guid webhook baton) ;; 0) order=(webhook baton guid) ;;
  esac
  for who in "${order[@]}"; do
    case $who in
      baton) read -r rps p99 non total < <(peak http://127.0.0.1:$BATON_PORT/hooks/github "b$round")
             B_RPS_ALL+=("$rps"); B_P99_ALL+=("$p99") ;;
      guid)  read -r rps p99 non total < <(peak http://127.0.0.1:$BATON_PORT/hooks/github "g$round" guid.lua)
             G_RPS_ALL+=("$rps"); G_P99_ALL+=("$p99") ;;
      webhook) read -r rps p99 non total < <(peak http://127.0.0.1:$PEER_PORT/hooks/github "w$round")
             W_RPS_ALL+=("$rps"); W_P99_ALL+=("$p99"); W_NON=$((W_NON + non)); continue ;;
    esac
    B_NON=$((B_NON + non)); B_OK=$((B_OK + total - non))
  done
  echo "round $round: baton ${B_RPS_ALL[-1]}/s (p99 ${B_P99_ALL[-1]} ms), baton with GUID ids ${G_RPS_ALL[-1]}/s (p99 ${G_P99_ALL[-1]} ms), webhook ${W_RPS_ALL[-1]}/s (p99 ${W_P99_ALL[-1]} ms)"
done
B_RPS=$(median "${B_RPS_ALL[@]}"); B_P99=$(median "${B_P99_ALL[@]}")
G_RPS=$(median "${G_RPS_ALL[@]}"); G_P99=$(median "${G_P99_ALL[@]}")
W_RPS=$(median "${W_RPS_ALL[@]}"); W_P99=$(median "${W_P99_ALL[@]}")
HALF=$(( ${B_RPS%.*} / 2 ))
read -r B_HALF_P99 B_HALF_RPS B_HALF_BAD < <(paced http://127.0.0.1:$BATON_PORT/hooks/github $HALF)
read -r W_HALF_P99 W_HALF_RPS W_HALF_BAD < <(paced http://127.0.0.1:$PEER_PORT/hooks/github $HALF)
sleep 1
# Every delivery of the peak runs (not the warm-up's, not the paced run's).
STORED=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from deliveries where delivery_id not like 'warm-%' and delivery_id not like 'load-%'\").fetchone()[0])" "$D/baton.db")

printf '\nwebhook intake, %s connections, %s per run, %s alternated rounds, signed GitHub push (%d bytes)\n' "$CONNS" "$DUR" "$ROUNDS" "${#BODY}"
printf '%-36s %12s %16s %12s\n' "" "baton" "baton, GUID ids" "webhook"
printf '%-36s %12.0f %16.0f %12.0f\n' "peak verified deliveries/s, median" "$B_RPS" "$G_RPS" "$W_RPS"
printf '%-36s %12.2f %16.2f %12.2f\n' "p99 at peak, ms, median" "$B_P99" "$G_P99" "$W_P99"
printf '%-36s %12s %16s %12s\n' "non-2xx answers" "$B_NON" "" "$W_NON"
printf '%-36s %12s %16s %12s\n' "p99 at $HALF/s offered, ms" "$B_HALF_P99" "" "$W_HALF_P99"
printf '%-36s %12s %16s %12s\n' "  achieved rate; failed requests" "$B_HALF_RPS; $B_HALF_BAD" "" "$W_HALF_RPS; $W_HALF_BAD"
python3 -c "import sys; b,g,w=map(float,sys.argv[1:]); print(f'ratio baton/webhook, median peak rate: {b/w:.2f} (GUID ids: {g/w:.2f})')" "$B_RPS" "$G_RPS" "$W_RPS"
echo "baton 2xx answers: $B_OK; deliveries stored: $STORED (every 2xx stored: $([ "$STORED" -ge "$B_OK" ] && echo yes || echo NO))"
