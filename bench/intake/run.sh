#!/usr/bin/env bash
# Durable webhook intake: `baton serve` (SQLite, synchronous=FULL, 202 only after the commit)
# beside adnanh/webhook (a hook that verifies the same GitHub HMAC and runs nothing), under
# the same load tools with the same signed payload, on 127.0.0.1.
#
#   bench/intake/run.sh            # DUR=10s CONNS=32 by default
#
# Prints, for both: peak requests/s and p99 at peak (wrk), then p99 at half of baton's peak
# rate, the ratios, and checks that every 2xx baton gave is a
# stored delivery. Peak: wrk (closed loop, CONNS connections). Half rate: bench's own
# intake-load (open loop at a fixed rate, a fresh delivery id per request, latency from each
# request's scheduled time), because neither wrk nor oha can give each request its own id at
# a fixed rate. Needs the apt packages webhook and wrk (installed when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-10s}; CONNS=${CONNS:-32}; THREADS=${THREADS:-1}
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

# Each wrk thread numbers its requests; the delivery id makes every request a new delivery.
cat > signed.lua <<LUA
local counter = 0
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "$SIG"
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = "b-" .. tostring(tid) .. "-" .. counter
  return wrk.format(nil, nil, nil, nil)
end
LUA

peak() { # url -> "rps p99_ms non2xx total"
  wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -s signed.lua "$1" > wrk.out
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

echo "warming up..."; wrk -t1 -c8 -d2s -s signed.lua http://127.0.0.1:$BATON_PORT/hooks/github >/dev/null
read -r B_RPS B_P99 B_NON B_TOTAL < <(peak http://127.0.0.1:$BATON_PORT/hooks/github)
read -r W_RPS W_P99 W_NON W_TOTAL < <(peak http://127.0.0.1:$PEER_PORT/hooks/github)
HALF=$(( ${B_RPS%.*} / 2 ))
read -r B_HALF_P99 B_HALF_RPS B_HALF_BAD < <(paced http://127.0.0.1:$BATON_PORT/hooks/github $HALF)
read -r W_HALF_P99 W_HALF_RPS W_HALF_BAD < <(paced http://127.0.0.1:$PEER_PORT/hooks/github $HALF)
sleep 1
STORED=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from deliveries where delivery_id like 'b-%'\").fetchone()[0])" "$D/baton.db")
OK=$(( B_TOTAL - B_NON ))

printf '\nwebhook intake, %s connections, %s per run, signed GitHub push (%d bytes)\n' "$CONNS" "$DUR" "${#BODY}"
printf '%-34s %12s %12s\n' "" "baton" "webhook"
printf '%-34s %12s %12s\n' "peak verified deliveries/s (wrk)" "$B_RPS" "$W_RPS"
printf '%-34s %12s %12s\n' "p99 at peak, ms" "$B_P99" "$W_P99"
printf '%-34s %12s %12s\n' "non-2xx answers" "$B_NON" "$W_NON"
printf '%-34s %12s %12s\n' "p99 at $HALF/s offered, ms" "$B_HALF_P99" "$W_HALF_P99"
printf '%-34s %12s %12s\n' "  achieved rate; failed requests" "$B_HALF_RPS; $B_HALF_BAD" "$W_HALF_RPS; $W_HALF_BAD"
python3 -c "import sys; b,w=map(float,sys.argv[1:]); print(f'ratio baton/webhook, peak rate: {b/w:.2f}')" "$B_RPS" "$W_RPS"
echo "baton 2xx answers: $OK; deliveries stored: $STORED (every 2xx stored: $([ "$STORED" -ge "$OK" ] && echo yes || echo NO))"
