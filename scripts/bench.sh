#!/usr/bin/env bash
# The standard benchmark set (BENCHMARKS.md): builds release, starts the server pinned to core 0
# on free loopback ports, runs each scenario with the generator pinned to core 1, stops the
# server by pid, and prints a table. fanout, flood and notify also run against the yardstick
# (`wspush-bench yardstick`, the minimal server), alternating wspush and yardstick runs, and the
# table gives wspush's CPU per delivery as a ratio to the yardstick's (median of 5 each: this VM drifts by ±10 % from run to run).
# Every scenario is bounded in count and time.
# usage: scripts/bench.sh [quick]    (quick: smaller N and one run each, for a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins >/dev/null 2>&1 || cargo build --release --bins
N=10000; FLOOD_N=1000; SLOW_N=1000; NOTIFY_MSGS=120000; RUNS=5; KEEPALIVE_SECS=60
[ "${1:-}" = quick ] && { N=2000; FLOOD_N=500; SLOW_N=500; NOTIFY_MSGS=20000; RUNS=1; KEEPALIVE_SECS=20; }
out=$(mktemp -d)
server=
kind=
runs=0
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=; fi; }
trap cleanup EXIT

start() { # wspush|yardstick [extra flags of that server...]
  cleanup
  kind=$1; shift
  runs=$((runs + 1)); log=$out/$kind.$runs.log
  if [ "$kind" = wspush ]; then
    taskset -c 0 target/release/wspush --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-tick --max-connections 19000 "$@" \
      >"$log" 2>&1 &
  else
    taskset -c 0 target/release/wspush-bench yardstick --ws 127.0.0.1:0 --api 127.0.0.1:0 "$@" >"$log" 2>&1 &
  fi
  server=$!
  for _ in $(seq 100); do grep -aq 'listening on' "$log" && break; sleep 0.05; done
  ws=$(grep -ao 'ws://[0-9.:]*' "$log" | head -n1 | sed 's#ws://##')
  api=$(grep -ao 'api: [0-9.:]*' "$log" | head -n1 | sed 's#api: ##')
}
start_server() { start wspush "$@"; }
bench() { # scenario args...   (one JSON line per run, tagged with the server)
  local s=$1; shift
  timeout 300 taskset -c 1 target/release/wspush-bench "$s" --ws "$ws" --api "$api" --server-pid "$server" --json "$@" \
    | sed "s/^{/{\"server\":\"$kind\",\"variant\":\"${variant:-}\",/" | tee -a "$out/results.jsonl" | sed "s/^/  /"
}
both() { # label scenario args...   (RUNS x: wspush, then the yardstick, same generator flags)
  # WSPUSH_FLAGS / YARD_FLAGS: each server's own flags (history off: --history-size 0 against
  # --no-positions, so both send the same bytes)
  local label=$1; shift
  for i in $(seq "$RUNS"); do
    start wspush ${WSPUSH_FLAGS:-}; echo "$label, wspush ${WSPUSH_FLAGS:-}, run $i:"; bench "$@"
    start yardstick ${YARD_FLAGS:-}; echo "$label, yardstick ${YARD_FLAGS:-}, run $i:"; bench "$@"
  done
}

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r), $(rustc --version)"
echo "commit: $(git rev-parse --short HEAD) $(date -u +%F)"
idle=""
for i in 1 2 3 4 5; do
  start_server; sleep 0.5; idle="$idle $(awk '/VmRSS/{print $2}' /proc/$server/status)"
done
echo "idle server RSS, 5 starts (KiB):$idle"
echo "{\"server\":\"wspush\",\"scenario\":\"idle\",\"result\":{\"rss_kib\":[$(echo $idle | tr ' ' ,)]}}" >> "$out/results.jsonl"
for i in 1 2 3; do
  start_server; echo "connect ($N), run $i:"; bench connect -n "$N" --concurrency 500
done
both "fanout ($N subscribers, 10 msg/s, after 20 warm-up messages)" fanout -n "$N" --messages 50 --rate 10 --payload 100
both "flood ($FLOOD_N subscribers, 10 s)" flood -n "$FLOOD_N" --duration 10s --payload 100
variant=nohistory WSPUSH_FLAGS="--history-size 0" YARD_FLAGS=--no-positions \
  both "flood, history off ($FLOOD_N subscribers, 10 s)" flood -n "$FLOOD_N" --duration 10s --payload 100
# 12 s at 10,000/s, ~1 s of server CPU. The clients never send anything, so wspush would Ping
# each of them after 10 s of silence (10,000 sends and reads that are no publish's cost, which
# the yardstick does not make): its heartbeat is set past the run.
WSPUSH_FLAGS="--heartbeat-interval 60s" \
  both "notify ($N clients, a topic each, $NOTIFY_MSGS messages at 10000/s)" notify -n "$N" --messages "$NOTIFY_MSGS" --rate 10000 --payload 100
start_server; echo "slow (baseline, $SLOW_N subscribers):"; bench slow -n "$SLOW_N" --stuck 0 --messages 200 --rate 50 --payload 1000
start_server --outbound-cap 256KiB; echo "slow (10 stuck):"; bench slow -n "$SLOW_N" --stuck 10 --messages 200 --rate 50 --payload 1000
start_server; echo "churn (5 x 2000):"; bench churn -n 2000 --cycles 5
# Idle connections kept alive by the server's Pings (heartbeat 10 s: one Ping per connection per 10 s)
start_server; echo "keepalive ($N silent subscribers answering Pings, $KEEPALIVE_SECS s):"
bench keepalive -n "$N" --concurrency 500 --duration "${KEEPALIVE_SECS}s"
cleanup

python3 - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def runs(s, server="wspush", variant=""):
    return [r["result"] for r in rows if r["scenario"] == s and r["server"] == server and r.get("variant", "") == variant]
get = lambda s, i=0: runs(s)[i]
median = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")
connects = runs("connect")
c = max(connects, key=lambda r: r["per_sec"])
c = dict(c, bytes_per_conn=max(r["bytes_per_conn"] for r in connects))
fans = runs("fanout")
# The median run by p99 margin over its own fan-out time; every run is listed.
fans.sort(key=lambda r: r["p99_ms"] - r["fanout_ms"])
f = fans[len(fans) // 2]
floods = sorted(runs("flood"), key=lambda r: r["deliveries_per_sec"])
fd = floods[len(floods) // 2]
idle = get("idle")["rss_kib"]
s0, s1, ch = get("slow", 0), get("slow", 1), get("churn")
print()
print("| target | measured | met |")
print("|---|---|---|")
print(f"| <= 1 KiB RSS per idle subscribed connection at {c['connections']} (worst of 3) | {c['bytes_per_conn']:.0f} B | {'yes' if c['bytes_per_conn'] <= 1024 else 'no'} |")
rates = ", ".join("%.0f" % r["per_sec"] for r in connects)
print(f"| connect >= 25,000/s (best of 3) | {c['per_sec']:.0f}/s (runs: {rates}) | {'yes' if c['per_sec'] >= 25000 else 'no'} |")
met = lambda r: r["p99_ms"] <= r["fanout_ms"] + 5 and r["expected"] == r["delivered"]
runs_text = "; ".join(f"{r['p99_ms']:.1f} vs {r['fanout_ms']:.1f}" for r in fans)
print(f"| latency p99 <= fan-out + 5 ms, zero loss (median of {len(fans)} runs) | p99 {f['p99_ms']:.1f} ms, fan-out {f['fanout_ms']:.1f} ms, loss {f['expected']-f['delivered']} (runs, p99 vs fan-out: {runs_text}; met in {sum(map(met, fans))} of {len(fans)}) | {'yes' if met(f) else 'no'} |")
print(f"| (cold start: the 20 warm-up messages to fresh connections) | p99 {', '.join('%.1f' % r['warmup_p99_ms'] for r in fans)} ms | not a target |")
lossless = all(r["expected"] == r["delivered"] for r in floods)
print(f"| flood >= 3,000,000 deliveries/s, zero loss (median of {len(floods)}) | {fd['deliveries_per_sec']:.0f}/s (runs: {', '.join('%.0f' % r['deliveries_per_sec'] for r in floods)}), loss {sum(r['expected']-r['delivered'] for r in floods)} | {'yes' if fd['deliveries_per_sec'] >= 3e6 and lossless else 'no'} |")
print(f"| 10 stuck of {s1['subscribers']}: others' p99 within 5 ms | {s1['p99_ms']:.1f} ms vs {s0['p99_ms']:.1f} ms, loss {s1['expected']-s1['delivered']} | {'yes' if s1['p99_ms'] <= s0['p99_ms'] + 5 and s1['expected']==s1['delivered'] else 'no'} |")
print(f"| churn: RSS and descriptors back to baseline | RSS {ch['rss_before_kib']} (cold) / {ch['rss_first_cycle_kib']} (after cycle 1) -> {ch['rss_after_kib']} KiB, fds {ch['fds_before']} -> {ch['fds_after']} | {'yes' if ch['fds_before']==ch['fds_after'] and ch['rss_after_kib'] <= ch['rss_first_cycle_kib']*1.1 else 'no'} |")
k = get("keepalive")
print(f"| keepalive: {k['connections']} silent connections kept by the server's Pings, {k['secs']:.0f} s | {k['pings_per_sec']:.0f} Pings/s, server wake-ups {k['server_wakeups_per_sec']:.1f}/s, CPU {k['server_cpu_ms_per_sec']:.2f} ms/s, closed {k['closed']} | {'yes' if k['closed'] == 0 else 'no'} |")
print(f"| idle server under 2 MiB RSS (5 starts, worst) | {max(idle)} KiB (all: {', '.join(map(str, idle))}) | {'yes' if max(idle) < 2048 else 'no'} |")

# Server CPU per delivery against the yardstick, same generator and flags, runs alternating
# (wspush, yardstick, wspush, ...): the ratio of the medians; every run and each adjacent
# pair's ratio are listed under the table.
print()
print("| scenario | wspush ns/delivery | yardstick ns/delivery | ratio | target | met |")
print("|---|---|---|---|---|---|")
notes = []
for s, variant, target in (("fanout", "", 1.10), ("flood", "", 1.05), ("flood", "nohistory", 1.05), ("notify", "", 1.10)):
    w, y = runs(s, variant=variant), runs(s, "yardstick", variant)
    s = f"{s} ({variant})" if variant else s
    wn = [r["cpu_ns_per_delivery"] for r in w if r.get("cpu_ns_per_delivery")]
    yn = [r["cpu_ns_per_delivery"] for r in y if r.get("cpu_ns_per_delivery")]
    lost = sum(r["expected"] - r["delivered"] for r in w + y)
    ratio = median(wn) / median(yn) if wn and yn else float("nan")
    ok = ratio <= target and lost == 0
    print(f"| {s} | {median(wn):.0f} | {median(yn):.0f} | x{ratio:.2f} | <= x{target:.2f} | {'yes' if ok else 'no'}{'' if lost == 0 else f' (loss {lost})'} |")
    pairs = ", ".join(f"x{a / b:.2f}" for a, b in zip(wn, yn))
    share = lambda rs: "/".join("%.0f" % (100 * r["cpu_user_share"]) for r in rs if r.get("cpu_user_share") is not None)
    notes.append(f"  {s}: wspush {', '.join('%.0f' % v for v in wn)} ns; yardstick {', '.join('%.0f' % v for v in yn)} ns; pairs {pairs}; user-space share % wspush {share(w)}, yardstick {share(y)}")
# History on against off (issue #12), and the same bytes difference in the yardstick: pushes
# with positions against without.
cpu = lambda rs: median([r["cpu_ns_per_delivery"] for r in rs if r.get("cpu_ns_per_delivery")])
hw = cpu(runs("flood")) / cpu(runs("flood", variant="nohistory"))
hy = cpu(runs("flood", "yardstick")) / cpu(runs("flood", "yardstick", "nohistory"))
notes.append(f"  flood, pushes with positions against without: wspush (history on / --history-size 0) x{hw:.2f}, yardstick (default / --no-positions) x{hy:.2f}")
nw, ny = runs("notify"), runs("notify", "yardstick")
bw, by = [r["bytes_per_conn"] for r in nw], [r["bytes_per_conn"] for r in ny]
print(f"| notify: server RSS per connected client (own topic each, worst of {len(bw)}) | {max(bw):.0f} B | {max(by):.0f} B | x{max(bw) / max(by):.2f} | wspush <= 400 B | {'yes' if max(bw) <= 400 else 'no'} |")
print("\n".join(notes))
print(f"  notify RSS per client: wspush {', '.join('%.0f' % v for v in bw)} B, yardstick {', '.join('%.0f' % v for v in by)} B (after the messages: wspush {', '.join('%.0f' % r['bytes_per_conn_after_messages'] for r in nw)} B, yardstick {', '.join('%.0f' % r['bytes_per_conn_after_messages'] for r in ny)} B)")
PY
