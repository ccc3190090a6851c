#!/usr/bin/env bash
# Webhook relays: signed GitHub pushes at a fixed rate into `baton serve` (SQLite, every
# delivery and every relay try committed durably), relayed by one relay to two receivers on
# 127.0.0.1, one target signed `github` and one `standard-webhooks`, the default schedule.
#
#   bench/relay/run.sh            # ROUNDS=3 STEP_SECS=4 DUR=8 LEAD_IN=1 CONNS=32
#
# The receivers are bench's relay-receiver (one epoll thread, answers 200 at once, keeps each
# request's wall-clock arrival time, delivery id and Idempotency-Key); the load is bench's
# intake-load (open loop at a fixed rate, a fresh GitHub-style delivery id per request),
# which with INTAKE_LOAD_TRACE_IDS keeps each 2xx delivery's id and the wall-clock times it
# was sent and its 202 was read. Everything runs on one machine, so one clock.
#
# Saturation, ROUNDS times: an open-loop ramp of deliveries/s from START_RATE, times STEP
# each step, STEP_SECS seconds a step after a lead-in of LEAD_IN seconds at the same rate.
# A step's relayed rate is the messages that reached the two receivers while its load ran,
# from the end of its lead-in to its last request, per second. The ramp stops at the first
# step whose relayed rate falls below 90% of twice its accepted deliveries/s (the relay no
# longer keeps up), or at MAX_RATE; the round's figure is its best step. Between steps the
# script waits until both receivers have every message (so each step starts without a
# backlog), and says so when they stop getting closer.
#
# Latency, ROUNDS times alternating which side goes first, at half of the median saturated
# rate (in deliveries/s: half the messages/s over two targets), DUR seconds after LEAD_IN:
# - relay: for each message, the receiver's arrival minus the moment intake-load read the
#   delivery's 202 (the moment the sender knows baton has it), over both receivers;
# - floor: the same deliveries POSTed straight to one receiver by intake-load at the same
#   rate: the receiver's arrival minus the moment intake-load sent the request, the one-way
#   time of an HTTP request on this machine under this load (intake-load's own latency
#   would add the answer's way back).
# p50 and p99 of each run, the median of the runs' p99 per side, the added p99 (relay minus
# floor) and the ratio. Then where the relay's time goes, from the store's own clock
# (milliseconds, so each part is ±1 ms): 202 read → the message made (`created_at`: the
# matcher's pass over the delivery), → its first try started (`relay_attempts.at`: the
# pass's commit and the hand-over to the target's worker), → the receiver's arrival (the
# request). Last, the check that every delivery answered 2xx reached both receivers, and
# the duplicates each receiver saw (messages whose key came twice).
# Needs python3 and curl; installs nothing. BATON_BIN=path runs that baton binary instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}; STEP_SECS=${STEP_SECS:-4}; DUR=${DUR:-8}; LEAD_IN=${LEAD_IN:-1}; CONNS=${CONNS:-32}
START_RATE=${START_RATE:-1000}; STEP=${STEP:-1.5}; MAX_RATE=${MAX_RATE:-40000}
BATON_PORT=${BATON_PORT:-9121}; GH_PORT=${GH_PORT:-9122}; SW_PORT=${SW_PORT:-9123}
SECRET=bench-secret
BODY='{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"acme/app"}}'

need() { command -v "$1" >/dev/null 2>&1 || { echo "$1 is needed"; exit 1; }; }
need python3; need curl

cargo build -q --release -p baton-cli -p baton-bench --manifest-path "$ROOT/Cargo.toml"
BATON=${BATON_BIN:-$ROOT/target/release/baton}
LOAD=$ROOT/target/release/intake-load
RECEIVER=$ROOT/target/release/relay-receiver

D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
cd "$D"

# A Standard Webhooks secret is whsec_ and the key in base64.
SW_SECRET=whsec_$(printf 'bench-relay-standard-webhooks-k' | base64)
cat > baton.toml <<TOML
[store]
url = "sqlite://$D/baton.db"
[sources.github]
kind = "github"
secret = { env = "BENCH_SECRET" }
[relays.bench]
from = "github"
[[relays.bench.to]]
name = "github-signed"
url = "http://127.0.0.1:$GH_PORT/hook"
sign = { scheme = "github", secret = { env = "BENCH_GH_SECRET" } }
allow_private = true
[[relays.bench.to]]
name = "standard-signed"
url = "http://127.0.0.1:$SW_PORT/hook"
sign = { scheme = "standard-webhooks", secret = { env = "BENCH_SW_SECRET" } }
allow_private = true
TOML
"$RECEIVER" "$GH_PORT" "$D/gh.arrivals" > gh.out &
"$RECEIVER" "$SW_PORT" "$D/sw.arrivals" > sw.out &
BENCH_SECRET=$SECRET BENCH_GH_SECRET=relay-secret BENCH_SW_SECRET=$SW_SECRET BATON_LOG=warn \
  "$BATON" serve -c baton.toml --listen 127.0.0.1:$BATON_PORT 2>baton.log &
for url in http://127.0.0.1:$BATON_PORT/healthz http://127.0.0.1:$GH_PORT/count http://127.0.0.1:$SW_PORT/count; do
  for _ in $(seq 100); do curl -s -o /dev/null "$url" && break; sleep 0.05; done
  curl -s -o /dev/null "$url" || { echo "not answering: $url"; cat baton.log; exit 1; }
done

HOOK=http://127.0.0.1:$BATON_PORT/hooks/github
RELAYED_OK=0 # 2xx deliveries sent to baton so far: each receiver owes that many messages

count() { # port [from_us to_us] -> the receiver's /count JSON
  local query=""; [ $# -eq 3 ] && query="?from=$2&to=$3"
  curl -s "http://127.0.0.1:$1/count$query"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Waits until both receivers have RELAYED_OK relayed messages; gives up when neither got a
# message for 10 s. Prints how long it waited.
drain() {
  local begun last_total=-1 still=0 a b
  begun=$(date +%s.%N)
  while :; do
    a=$(field "$(count "$GH_PORT")" relayed); b=$(field "$(count "$SW_PORT")" relayed)
    [ "$a" -ge "$RELAYED_OK" ] && [ "$b" -ge "$RELAYED_OK" ] && break
    if [ $((a + b)) -eq "$last_total" ]; then
      still=$((still + 1))
      [ "$still" -ge 50 ] && { echo "  the receivers stopped at $a and $b of $RELAYED_OK messages" >&2; break; }
    else still=0; last_total=$((a + b)); fi
    sleep 0.2
  done
  python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$begun"
}

load() { # url rate seconds trace_file -> intake-load's JSON
  INTAKE_LOAD_LEAD_IN=$LEAD_IN INTAKE_LOAD_TRACE_IDS=$4 "$LOAD" "$1" "$2" "$3" "$CONNS" "$SECRET" "$BODY" 1
}

# One ramp step: load at `rate` into baton, then the relayed rate during it. It runs in a
# subshell, so the caller adds the step's 2xx count to RELAYED_OK.
# -> "relayed_msgs_per_s accepted_per_s failed ok"
step() { # rate tag
  local out from to a b
  out=$(load "$HOOK" "$1" "$STEP_SECS" "$D/ids.$2")
  # The window: from the end of the lead-in to the last request sent, by the trace.
  read -r from to < <(python3 - "$D/ids.$2" "$LEAD_IN" <<'PY'
import sys
sent = [int(l.split()[1]) for l in open(sys.argv[1])]
print(min(sent) + int(float(sys.argv[2]) * 1e6), max(sent))
PY
)
  a=$(field "$(count "$GH_PORT" "$from" "$to")" window); b=$(field "$(count "$SW_PORT" "$from" "$to")" window)
  python3 -c "import sys; a,b,f,t=map(int,sys.argv[1:5]); print(f'{(a+b)/((t-f)/1e6):.0f}', end=' ')" "$a" "$b" "$from" "$to"
  echo "$(field "$out" rate) $(( $(field "$out" non_2xx) + $(field "$out" errors) )) $(field "$out" ok)"
}

median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

echo "warming up..."
RELAYED_OK=$((RELAYED_OK + $(field "$(load "$HOOK" 500 2 "$D/ids.warm")" ok)))
drain >/dev/null

SAT=""; ACCEPTED_AT_SAT=""; FAILED=0
for round in $(seq "$ROUNDS"); do
  rate=$START_RATE; best=0; best_accepted=0; line="round $round:"
  while :; do
    read -r relayed accepted failed ok < <(step "$rate" "sat$round-$rate")
    FAILED=$((FAILED + failed)); RELAYED_OK=$((RELAYED_OK + ok)); waited=$(drain)
    line+=" $rate/s → ${relayed} msg/s (accepted ${accepted%.*}/s, drained in ${waited} s);"
    if [ "$relayed" -gt "$best" ]; then best=$relayed; best_accepted=$accepted; fi
    keeps_up=$(python3 -c "import sys; r,a=map(float,sys.argv[1:]); print(int(r >= 0.9 * 2 * a))" "$relayed" "$accepted")
    next=$(python3 -c "import sys; print(int(float(sys.argv[1]) * float(sys.argv[2])))" "$rate" "$STEP")
    if [ "$keeps_up" = 0 ] || [ "$next" -gt "$MAX_RATE" ]; then break; fi
    rate=$next
  done
  echo "${line%;}"
  SAT+="$best "; ACCEPTED_AT_SAT+="$best_accepted "
done
# shellcheck disable=SC2086
SAT_MEDIAN=$(median $SAT)
# shellcheck disable=SC2086
ACCEPTED_MEDIAN=$(median $ACCEPTED_AT_SAT)
HALF=$(python3 -c "import sys; print(int(float(sys.argv[1]) / 2 / 2))" "$SAT_MEDIAN")

# The paced runs: relay and floor alternated, traces kept for the analysis below.
for round in $(seq "$ROUNDS"); do
  order="relay floor"; [ $((round % 2)) = 0 ] && order="floor relay"
  for who in $order; do
    if [ "$who" = relay ]; then
      out=$(load "$HOOK" "$HALF" "$DUR" "$D/ids.relay$round")
      RELAYED_OK=$((RELAYED_OK + $(field "$out" ok)))
      drain >/dev/null
    else
      out=$(load "http://127.0.0.1:$GH_PORT/direct" "$HALF" "$DUR" "$D/ids.floor$round")
    fi
    FAILED=$((FAILED + $(field "$out" non_2xx) + $(field "$out" errors)))
    echo "paced round $round, $who: $(field "$out" rate)/s achieved"
  done
done

curl -s -o /dev/null "http://127.0.0.1:$GH_PORT/report"; curl -s -o /dev/null "http://127.0.0.1:$SW_PORT/report"
GH_SUMMARY=$(count "$GH_PORT"); SW_SUMMARY=$(count "$SW_PORT")

printf '\nwebhook relay, %s rounds, signed GitHub push (%d bytes), one relay to two targets (github, standard-webhooks signatures)\n' "$ROUNDS" "${#BODY}"
echo "relayed messages/s at saturation, median: ${SAT_MEDIAN%.*} (each round: ${SAT% }); accepted deliveries/s at that step: ${ACCEPTED_MEDIAN%.*}"
python3 - "$D" "$ROUNDS" "$LEAD_IN" "$HALF" "$SAT_MEDIAN" "$FAILED" "$GH_SUMMARY" "$SW_SUMMARY" <<'PY'
import glob, json, os, sqlite3, statistics, sys
d, rounds, lead_in, half, sat, failed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
summaries = {"github-signed": json.loads(sys.argv[7]), "standard-signed": json.loads(sys.argv[8])}

def trace(path):
    """id -> (sent_us, answered_us) of one intake-load run."""
    out = {}
    for line in open(path):
        i, sent, answered = line.split()
        out[i] = (int(sent), int(answered))
    return out

def arrivals(path):
    """(relayed: id -> first arrival, direct: id -> first arrival) of one receiver."""
    relayed, direct = {}, {}
    for line in open(path):
        at, kind, i, _ = line.split()
        (relayed if kind == "r" else direct).setdefault(i, int(at))
    return relayed, direct

gh_relayed, gh_direct = arrivals(os.path.join(d, "gh.arrivals"))
sw_relayed, _ = arrivals(os.path.join(d, "sw.arrivals"))

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round((len(values) - 1) * q)))] / 1e3 if values else float("nan")

def measured(t):
    """The run's deliveries after its lead-in."""
    start = min(s for s, _ in t.values()) + lead_in * 1e6
    return {i: v for i, v in t.items() if v[0] >= start}

relay_p50, relay_p99, floor_p50, floor_p99, missing = [], [], [], [], 0
paced_relayed = {}
for r in range(1, rounds + 1):
    t = measured(trace(os.path.join(d, f"ids.relay{r}")))
    paced_relayed.update(t)
    lat = []
    for i, (_, answered) in t.items():
        for got in (gh_relayed, sw_relayed):
            if i in got:
                lat.append(got[i] - answered)
            else:
                missing += 1
    relay_p50.append(pct(lat, 0.5)); relay_p99.append(pct(lat, 0.99))
    t = measured(trace(os.path.join(d, f"ids.floor{r}")))
    lat = [gh_direct[i] - sent for i, (sent, _) in t.items() if i in gh_direct]
    floor_p50.append(pct(lat, 0.5)); floor_p99.append(pct(lat, 0.99))

med = statistics.median
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"\nat half of that, {half} deliveries/s ({2 * half} messages/s), open loop, {rounds} alternated runs a side:")
print(f"  relay, receiver arrival - 202 read:   p50 {med(relay_p50):.2f} ms, p99 {med(relay_p99):.2f} ms (each run's p99: {fmt(relay_p99)})")
print(f"  floor, receiver arrival - POST sent:  p50 {med(floor_p50):.2f} ms, p99 {med(floor_p99):.2f} ms (each run's p99: {fmt(floor_p99)})")
r99, f99 = med(relay_p99), med(floor_p99)
print(f"relay p99 {r99:.2f} ms, floor p99 {f99:.2f} ms, added {r99 - f99:.2f} ms, ratio {r99 / f99:.1f}")

# Where the time goes, per message of the paced relay runs, in ms.
stored = sqlite3.connect(os.path.join(d, "baton.db")).execute(
    "SELECT d.delivery_id, m.target, m.created_at, a.at FROM relay_messages m"
    " JOIN deliveries d ON d.seq = m.delivery"
    " JOIN relay_attempts a ON a.key = m.key AND a.attempt = 1")
receivers = {"github-signed": gh_relayed, "standard-signed": sw_relayed}
routed, started, sent = [], [], []
for i, target, created, tried in stored:
    if i in paced_relayed and i in receivers[target]:
        answered_ms = paced_relayed[i][1] / 1e3
        routed.append((created - answered_ms) * 1e3)
        started.append((tried - created) * 1e3)
        sent.append(receivers[target][i] - tried * 1e3)
print(f"where the relay's time goes (the store's clock is in ms: each part ±1 ms), over {len(sent)} messages:")
for name, values in (("202 read -> message made (matcher's pass)", routed),
                     ("made -> first try started (commit, hand-over)", started),
                     ("try started -> receiver's arrival (request)", sent)):
    print(f"  {name:48s} p50 {pct(values, 0.5):6.2f} ms, p99 {pct(values, 0.99):6.2f} ms")

sent_ok = set()
for path in glob.glob(os.path.join(d, "ids.*")):
    if ".floor" not in path:
        sent_ok |= trace(path).keys()
lost = {name: len(sent_ok - got.keys()) for name, got in (("github-signed", gh_relayed), ("standard-signed", sw_relayed))}
print(f"\ntargets: >= 5,000 relayed messages/s: {'met' if sat >= 5000 else 'MISSED'}; "
      f"added p99 <= 10 ms at half rate: {'met' if r99 - f99 <= 10 else 'MISSED'}")
print(f"failed requests to baton or the floor: {failed}; relay messages missing in the paced runs: {missing}")
for name, s in summaries.items():
    print(f"{name}: {s['relayed']} messages, {s['distinct_keys']} keys, {s['duplicates']} duplicates, {s['unsupported']} unreadable")
print(f"every 2xx delivery at both receivers: {'yes' if not any(lost.values()) else 'NO'} "
      f"({len(sent_ok)} deliveries; missing: {', '.join(f'{n} {c}' for n, c in lost.items())})")
PY
