#!/usr/bin/env bash
# Durable webhook intake: `baton serve` (SQLite, synchronous=FULL, 202 only after the commit)
# beside adnanh/webhook (a hook that verifies the same GitHub HMAC and runs nothing), under
# the same load tools with the same signed payload, on 127.0.0.1.
#
#   bench/intake/run.sh            # DUR=10s CONNS="32 128" ROUNDS=3 by default
#   bench/intake/run.sh --store postgres   # one replica and two on one fresh database
#
# With --store postgres, baton stores into a fresh database on PG_URL
# (postgres://postgres@127.0.0.1:5432 by default, dropped at the end) and is measured with
# GitHub's ids as one replica and as two `baton serve` on that database (peak: two wrk at once,
# half the connections each; paced: intake-load dealing its connections to both).
#
# Peak: wrk (closed loop) at each number of connections in CONNS, for baton with three kinds
# of delivery id (see below) and for the peer, ROUNDS times with the order rotated; medians
# are compared, since on a shared 2-core VM one run can differ by 30% from the next. With few
# connections, each waiting for its answer, baton is bound by the sync every answer waits for;
# with many, by CPU. Then, for each peak, p99 at half of baton's (GitHub ids) for both, with
# as many connections as that peak, from bench's own intake-load: open loop at a fixed rate,
# a fresh GitHub-style delivery id per request, latency from each request's scheduled time
# (neither wrk nor oha can give each request its own id at a fixed rate), after a lead-in of
# LEAD_IN seconds (1 by default) at the same rate whose latencies are not counted (the first
# second after an idle machine is slower for both servers, and only baton's first paced run
# follows the pause below), with the VM's steal time over each run (on a VM the host can
# pause it: then no server meets a low p99). Then the disk's own flush latency
# (flush-probe), which bounds any durable server's p99 from below.
# Last, a check that every 2xx baton gave at peak is a stored delivery. Needs the apt packages
# webhook and wrk (installed when missing). BATON_BIN=path runs that baton binary instead of
# this checkout's (to compare two builds under the same load).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STORE=sqlite
while [ $# -gt 0 ]; do
  case $1 in
    --store) STORE=${2:?--store sqlite|postgres}; shift 2 ;;
    --store=*) STORE=${1#--store=}; shift ;;
    *) echo "usage: $0 [--store sqlite|postgres]"; exit 2 ;;
  esac
done
case $STORE in sqlite|postgres) ;; *) echo "--store: sqlite or postgres, not $STORE"; exit 2 ;; esac
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
DUR=${DUR:-10s}; CONNS=${CONNS:-32 128}; THREADS=${THREADS:-1}; ROUNDS=${ROUNDS:-3}; LEAD_IN=${LEAD_IN:-1}
BATON_PORT=${BATON_PORT:-9101}; PEER_PORT=${PEER_PORT:-9102}; BATON2_PORT=${BATON2_PORT:-9103}
SECRET=bench-secret
BODY='{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"acme/app"}}'

need() { command -v "$1" >/dev/null 2>&1; }
if ! need webhook || ! need wrk; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq webhook wrk
fi
need python3 || { echo "python3 is needed to read the results"; exit 1; }
[ "$STORE" = sqlite ] || need psql || { echo "psql is needed for --store postgres"; exit 1; }

cargo build -q --release -p baton-cli -p baton-bench --manifest-path "$ROOT/Cargo.toml"
BATON=${BATON_BIN:-$ROOT/target/release/baton}
LOAD=$ROOT/target/release/intake-load

D=$(mktemp -d); DB=baton_intake_$$
cleanup() {
  kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"
  [ "$STORE" = sqlite ] || psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
}
trap cleanup EXIT
cd "$D"
if [ "$STORE" = postgres ]; then
  psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  STORE_URL=$PG_URL/$DB
else
  STORE_URL=sqlite://$D/baton.db
fi
SIG=sha256=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $2}')

# --- baton: one workflow whose trigger evaluates a jq condition on every delivery ---
mkdir -p workflows
cat > baton.toml <<TOML
workflows = ["workflows/*.yaml"]
[store]
url = "$STORE_URL"
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
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return; sleep 0.05; done; echo "$1 did not come up"; exit 1; }
for url in http://127.0.0.1:$BATON_PORT/healthz http://127.0.0.1:$PEER_PORT/; do wait_up "$url"; done
if [ "$STORE" = postgres ]; then
  # The second replica, on the same database, once the first has migrated it.
  BENCH_SECRET=$SECRET BATON_LOG=warn "$BATON" serve -c baton.toml --listen 127.0.0.1:$BATON2_PORT 2>baton2.log &
  wait_up http://127.0.0.1:$BATON2_PORT/healthz
fi

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

# Delivery ids decide how much of baton's duplicate index each commit rewrites, so baton is
# measured with three kinds (the peer keeps no index):
# - counters (above): "<run>-<thread>-<n>", next to each other in the index;
# - GitHub's: UUID version 1, the clock's low 32 bits first, so ids sent together sort
#   together (github.com's own example, 58474f00-b361-11eb-..., decodes to the second its
#   delivery was made); here the clock is a counter stepping ~100 us per request;
# - random UUIDs (version 4, as GitLab's X-Gitlab-Event-UUID): each lands on its own page.
# Each run seeds from the clock and a hash of its whole prefix, so no two runs (nor the two
# wrk of a replica pair, whose prefixes differ in their last letter) send the same ids.
SEED='local seed = 0; for i = 1, #prefix do seed = (seed * 31 + prefix:byte(i)) % 2147483647 end; math.randomseed(os.time() * 1000 + seed)'
sed -e 's|^  wrk.headers\["X-GitHub-Delivery"\] = .*|  wrk.headers["X-GitHub-Delivery"] = string.format("%08x-%04x-1%03x-%04x-%08x%04x", (low + counter * 1013) % 4294967296, mid, hi, clock, node_a, node_b)|' \
    -e "s|^function setup(thread)|$SEED\nlocal low, mid, hi, clock, node_a, node_b = math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff), math.random(0, 0x7fffffff), math.random(0, 0xffff)\nfunction setup(thread)|" signed.lua > uuid1.lua
sed -e 's|^  wrk.headers\["X-GitHub-Delivery"\] = .*|  wrk.headers["X-GitHub-Delivery"] = string.format("%08x-%04x-4%03x-%04x-%08x%04x", math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff), math.random(0, 0x7fffffff), math.random(0, 0xffff))|' \
    -e "s|^function setup(thread)|$SEED\nfunction setup(thread)|" signed.lua > uuid4.lua

peak() { # connections url prefix script -> "rps p99_ms non2xx total"
  BENCH_PREFIX="$3" wrk -t"$THREADS" -c"$1" -d"$DUR" --latency -s "${4:-signed.lua}" "$2" > wrk.out
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

# Two replicas at once: two wrk, half the connections each, one per replica; their rates
# added, the worse p99.
peak_pair() { # connections prefix -> "rps p99_ms non2xx total"
  local half=$(( $1 / 2 ))
  BENCH_PREFIX="$2a" wrk -t"$THREADS" -c"$half" -d"$DUR" --latency -s uuid1.lua http://127.0.0.1:$BATON_PORT/hooks/github > wrk.a &
  local a=$!
  BENCH_PREFIX="$2b" wrk -t"$THREADS" -c"$half" -d"$DUR" --latency -s uuid1.lua http://127.0.0.1:$BATON2_PORT/hooks/github > wrk.b
  wait $a
  python3 - <<'PY'
import re
rps = p99 = 0.0; non = total = 0
for f in ("wrk.a", "wrk.b"):
    t = open(f).read()
    rps += float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", t)
    p99 = max(p99, float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)])
    n = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    non += int(n.group(1)) if n else 0
    total += int(re.search(r"(\d+) requests in", t).group(1))
print(f"{rps:.0f} {p99:.2f} {non} {total}")
PY
}

# The machine's CPU time counters (/proc/stat's first line): on a VM, "steal" is time the host
# ran something else while the VM wanted to run.
cpu_times() { head -1 /proc/stat; }

paced() { # url rate connections -> "p99_ms achieved_rate failed steal_%"
  local before; before=$(cpu_times)
  INTAKE_LOAD_LEAD_IN=$LEAD_IN "$LOAD" "$1" "$2" "${DUR%s}" "$3" "$SECRET" "$BODY" > load.json
  python3 - "$before" "$(cpu_times)" <<'PY'
import json, sys
r = json.load(open("load.json"))
a, b = ([int(x) for x in line.split()[1:]] for line in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
steal = 100 * d[7] / max(sum(d), 1) if len(d) > 7 else 0
print(f"{r['p99_ms']:.2f} {r['rate']:.0f} {r['non_2xx'] + r['errors']} {steal:.1f}")
PY
}

median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

echo "warming up..."; BENCH_PREFIX=warm wrk -t1 -c8 -d2s -s signed.lua http://127.0.0.1:$BATON_PORT/hooks/github >/dev/null
KINDS=(counter uuid1 uuid4 webhook)
# On PostgreSQL: GitHub's ids, to one replica and to two.
[ "$STORE" = postgres ] && KINDS=(uuid1 pair webhook)
NK=${#KINDS[@]}
declare -A RPS P99 HALF
B_NON=0; B_OK=0; W_NON=0
for conns in $CONNS; do
  for round in $(seq "$ROUNDS"); do
    line="$conns connections, round $round:"
    for k in $(seq 0 $((NK - 1))); do # each round starts with a different one
      who=${KINDS[$(( (k + round - 1) % NK ))]}
      url=http://127.0.0.1:$BATON_PORT/hooks/github
      case $who in
        counter) read -r rps p99 non total < <(peak "$conns" "$url" "c$conns-$round") ;;
        uuid1) read -r rps p99 non total < <(peak "$conns" "$url" "v$conns-$round" uuid1.lua) ;;
        uuid4) read -r rps p99 non total < <(peak "$conns" "$url" "r$conns-$round" uuid4.lua) ;;
        pair) read -r rps p99 non total < <(peak_pair "$conns" "p$conns-$round") ;;
        webhook) read -r rps p99 non total < <(peak "$conns" http://127.0.0.1:$PEER_PORT/hooks/github "w$conns-$round") ;;
      esac
      RPS[$conns,$who]+="$rps "; P99[$conns,$who]+="$p99 "
      if [ "$who" = webhook ]; then W_NON=$((W_NON + non)); else B_NON=$((B_NON + non)); B_OK=$((B_OK + total - non)); fi
      line+=" $who ${rps}/s (p99 $p99 ms)"
    done
    echo "$line"
  done
  for who in "${KINDS[@]}"; do
    # shellcheck disable=SC2086
    RPS[$conns,$who]=$(median ${RPS[$conns,$who]}); P99[$conns,$who]=$(median ${P99[$conns,$who]})
  done
done
# Every delivery of the peak runs (not the warm-up's), counted before the paced runs add more.
sleep 1
if [ "$STORE" = postgres ]; then
  STORED=$(psql -tA "$STORE_URL" -c "select count(*) from deliveries where delivery_id not like 'warm-%'")
else
  STORED=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from deliveries where delivery_id not like 'warm-%'\").fetchone()[0])" "$D/baton.db")
fi
# The peaks leave the checkpointer behind (random ids dirty pages all over the index): the
# paced runs measure the steady state, so give it a few seconds first. Paced runs are as noisy
# as peaks on a shared VM: ROUNDS of them, alternating who goes first, and the median p99.
# The sides of the paced runs: baton (and on PostgreSQL the two replicas, at half of their
# own peak) and the peer, which runs at baton's half rate.
PACED=(baton webhook); [ "$STORE" = postgres ] && PACED=(baton pair webhook)
NP=${#PACED[@]}
for conns in $CONNS; do
  sleep 5
  declare -A RUNS=() RATES=() STEAL=() BAD=()
  for round in $(seq "$ROUNDS"); do
    for k in $(seq 0 $((NP - 1))); do # each round starts with a different side
      who=${PACED[$(( (k + round - 1) % NP ))]}
      rate=$(( ${RPS[$conns,uuid1]%.*} / 2 ))
      url=http://127.0.0.1:$BATON_PORT/hooks/github
      case $who in
        webhook) url=http://127.0.0.1:$PEER_PORT/hooks/github ;;
        pair) rate=$(( ${RPS[$conns,pair]%.*} / 2 )); url+=",http://127.0.0.1:$BATON2_PORT/hooks/github" ;;
      esac
      read -r p99 achieved bad steal < <(paced "$url" "$rate" "$conns")
      RUNS[$who]+="$p99 "; RATES[$who]+="$achieved "; STEAL[$who]+="$steal "; BAD[$who]=$(( ${BAD[$who]:-0} + bad ))
      HALF[$conns,$who,rate]=$rate
    done
  done
  for who in "${PACED[@]}"; do
    # shellcheck disable=SC2086
    HALF[$conns,$who]="${HALF[$conns,$who,rate]} $(median ${RUNS[$who]}) $(median ${RATES[$who]}) ${BAD[$who]} $(median ${STEAL[$who]}) ${RUNS[$who]% }"
  done
done

# The disk's own flush latency, with both servers idle: every 2xx of baton's waits for a flush,
# so a flush that stalls (on a VM the host's disk can take tens of ms now and then) stalls
# every delivery behind it, and no durable server on this disk gets a p99 below that tail.
sleep 2
FLUSH=$("$ROOT/target/release/flush-probe" "$D" 5 1000 | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms, {r['over_5ms']} of {r['flushes']} over 5 ms\")")

printf '\nwebhook intake, %s per run (paced runs after a %s s lead-in), %s alternated rounds, signed GitHub push (%d bytes)\n' "$DUR" "$LEAD_IN" "$ROUNDS" "${#BODY}"
if [ "$STORE" = postgres ]; then
  for conns in $CONNS; do
    printf '\n%-40s %18s %18s %18s\n' "$conns connections, PostgreSQL" "baton, 1 replica" "baton, 2 replicas" "webhook"
    printf '%-40s %18.0f %18.0f %18.0f\n' "peak verified deliveries/s, median" "${RPS[$conns,uuid1]}" "${RPS[$conns,pair]}" "${RPS[$conns,webhook]}"
    printf '%-40s %18.2f %18.2f %18.2f\n' "p99 at peak, ms, median" "${P99[$conns,uuid1]}" "${P99[$conns,pair]}" "${P99[$conns,webhook]}"
    python3 -c "import sys; a,b,w=map(float,sys.argv[1:]); print(f'{\"ratio to webhook\":40s} {a/w:18.2f} {b/w:18.2f}')" "${RPS[$conns,uuid1]}" "${RPS[$conns,pair]}" "${RPS[$conns,webhook]}"
    read -r a_rate a_p99 a_ach a_bad a_steal a_all <<< "${HALF[$conns,baton]}"
    read -r p_rate p_p99 p_ach p_bad p_steal p_all <<< "${HALF[$conns,pair]}"
    read -r w_rate w_p99 w_ach w_bad w_steal w_all <<< "${HALF[$conns,webhook]}"
    printf '%-40s %18s %18s %18s\n' "half rate, deliveries/s (open loop)" "$a_rate" "$p_rate" "$w_rate"
    printf '%-40s %18s %18s %18s\n' "p99 at the half rate, ms, median" "$a_p99" "$p_p99" "$w_p99"
    printf '%-40s %18s %18s %18s\n' "  each run's p99, ms" "${a_all// /,}" "${p_all// /,}" "${w_all// /,}"
    printf '%-40s %18s %18s %18s\n' "  achieved rate/s; failed requests" "${a_ach%.*}; $a_bad" "${p_ach%.*}; $p_bad" "${w_ach%.*}; $w_bad"
    printf '%-40s %18s %18s %18s\n' "  VM steal time, % of CPU time, median" "$a_steal" "$p_steal" "$w_steal"
  done
else
  for conns in $CONNS; do
    printf '\n%-40s %14s %14s %14s %10s\n' "$conns connections (wrk)" "baton, GitHub" "baton, counter" "baton, random" "webhook"
    printf '%-40s %14s %14s %14s %10s\n' "delivery ids" "(UUIDv1)" "ids" "(UUIDv4)" ""
    printf '%-40s %14.0f %14.0f %14.0f %10.0f\n' "peak verified deliveries/s, median" "${RPS[$conns,uuid1]}" "${RPS[$conns,counter]}" "${RPS[$conns,uuid4]}" "${RPS[$conns,webhook]}"
    printf '%-40s %14.2f %14.2f %14.2f %10.2f\n' "p99 at peak, ms, median" "${P99[$conns,uuid1]}" "${P99[$conns,counter]}" "${P99[$conns,uuid4]}" "${P99[$conns,webhook]}"
    python3 -c "import sys; g,c,r,w=map(float,sys.argv[1:]); print(f'{\"ratio to webhook\":40s} {g/w:14.2f} {c/w:14.2f} {r/w:14.2f}')" "${RPS[$conns,uuid1]}" "${RPS[$conns,counter]}" "${RPS[$conns,uuid4]}" "${RPS[$conns,webhook]}"
    read -r rate b_p99 b_rate b_bad b_steal b_all <<< "${HALF[$conns,baton]}"
    read -r _ w_p99 w_rate w_bad w_steal w_all <<< "${HALF[$conns,webhook]}"
    printf '%-40s %14s %44s\n' "p99 at $rate/s (half), open loop, median" "$b_p99" "$w_p99"
    printf '%-40s %14s %44s\n' "  each run's p99, ms" "$b_all" "$w_all"
    printf '%-40s %14s %44s\n' "  achieved rate/s; failed requests" "${b_rate%.*}; $b_bad" "${w_rate%.*}; $w_bad"
    printf '%-40s %14s %44s\n' "  VM steal time, % of CPU time, median" "$b_steal" "$w_steal"
  done
fi
# Each side's best peak over the connection counts, the target's terms: baton (GitHub ids)
# against the peer.
pairs=""
for conns in $CONNS; do pairs+="${RPS[$conns,uuid1]}:${RPS[$conns,webhook]} "; done
# shellcheck disable=SC2086
python3 -c "import sys; b,w=(max(float(p.split(':')[i]) for p in sys.argv[1:]) for i in (0,1)); print(f'\nbest peak: baton {b:.0f}/s, webhook {w:.0f}/s, ratio {b/w:.2f}')" $pairs
echo "the disk's own flushes (flush-probe, 5 s at 1,000/s, servers idle): $FLUSH"
printf '\nnon-2xx answers: baton %s, webhook %s\n' "$B_NON" "$W_NON"
echo "baton 2xx answers at peak: $B_OK; deliveries stored: $STORED (every 2xx stored: $([ "$STORED" -ge "$B_OK" ] && echo yes || echo NO))"
