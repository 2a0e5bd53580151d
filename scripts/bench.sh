#!/usr/bin/env bash
# The standard benchmark set (BENCHMARKS.md): builds release, starts the server pinned to core 0
# on free loopback ports, runs each scenario with the generator pinned to core 1, stops the
# server by pid, and prints a table. Every scenario is bounded in count and time.
# usage: scripts/bench.sh [quick]    (quick: smaller N for a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins >/dev/null 2>&1 || cargo build --release --bins
N=10000; FLOOD_N=1000; SLOW_N=1000
[ "${1:-}" = quick ] && { N=2000; FLOOD_N=500; SLOW_N=500; }
out=$(mktemp -d)
server=
runs=0
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; }
trap cleanup EXIT

start_server() { # extra flags...
  cleanup
  runs=$((runs + 1)); log=$out/server.$runs.log
  taskset -c 0 target/release/wspush --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-tick --max-connections 19000 "$@" \
    >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -aq 'listening on' "$log" && break; sleep 0.05; done
  ws=$(grep -ao 'ws://[0-9.:]*' "$log" | head -n1 | sed 's#ws://##')
  api=$(grep -ao 'api: [0-9.:]*' "$log" | head -n1 | sed 's#api: ##')
}
bench() { # scenario args...
  local s=$1; shift
  timeout 300 taskset -c 1 target/release/wspush-bench "$s" --ws "$ws" --api "$api" --server-pid "$server" --json "$@" \
    | tee -a "$out/results.jsonl" | sed "s/^/  /"
}

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r), $(rustc --version)"
echo "commit: $(git rev-parse --short HEAD) $(date -u +%F)"
idle=""
for i in 1 2 3 4 5; do
  start_server; sleep 0.5; idle="$idle $(awk '/VmRSS/{print $2}' /proc/$server/status)"
done
echo "idle server RSS, 5 starts (KiB):$idle"
echo "{\"scenario\":\"idle\",\"result\":{\"rss_kib\":[$(echo $idle | tr ' ' ,)]}}" >> "$out/results.jsonl"
for i in 1 2 3; do
  start_server; echo "connect ($N), run $i:"; bench connect -n "$N" --concurrency 500
done
for i in 1 2 3; do
  start_server; echo "fanout ($N subscribers, 10 msg/s, after 20 warm-up messages), run $i:"
  bench fanout -n "$N" --messages 50 --rate 10 --payload 100
done
echo "floor (one write() per socket, same frame):"
timeout 300 taskset -c 0 target/release/wspush-bench floor -n "$N" --payload 100 --json | tee -a "$out/results.jsonl" | sed "s/^/  /"
start_server; echo "flood ($FLOOD_N subscribers, 10 s):"; bench flood -n "$FLOOD_N" --duration 10s --payload 100
start_server; echo "slow (baseline, $SLOW_N subscribers):"; bench slow -n "$SLOW_N" --stuck 0 --messages 200 --rate 50 --payload 1000
start_server --outbound-cap 256KiB; echo "slow (10 stuck):"; bench slow -n "$SLOW_N" --stuck 10 --messages 200 --rate 50 --payload 1000
start_server; echo "churn (5 x 2000):"; bench churn -n 2000 --cycles 5

python3 - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
get = lambda s, i=0: [r["result"] for r in rows if r["scenario"] == s][i]
connects = [r["result"] for r in rows if r["scenario"] == "connect"]
c = max(connects, key=lambda r: r["per_sec"])
c = dict(c, bytes_per_conn=max(r["bytes_per_conn"] for r in connects))
fans = [r["result"] for r in rows if r["scenario"] == "fanout"]
# The median run by p99 margin over its own fan-out time; every run is listed.
fans.sort(key=lambda r: r["p99_ms"] - r["fanout_ms"])
f, fl, fd = fans[len(fans) // 2], get("floor"), get("flood")
idle = get("idle")["rss_kib"]
s0, s1, ch = get("slow", 0), get("slow", 1), get("churn")
ratio = f["cpu_ns_per_delivery"] / fl["ns_per_write"] if f["cpu_ns_per_delivery"] else float("nan")
print()
print("| target | measured | met |")
print("|---|---|---|")
print(f"| <= 1 KiB RSS per idle subscribed connection at {c['connections']} (worst of 3) | {c['bytes_per_conn']:.0f} B | {'yes' if c['bytes_per_conn'] <= 1024 else 'no'} |")
runs = ", ".join("%.0f" % r["per_sec"] for r in connects)
print(f"| connect >= 25,000/s (best of 3) | {c['per_sec']:.0f}/s (runs: {runs}) | {'yes' if c['per_sec'] >= 25000 else 'no'} |")
print(f"| fan-out CPU within 10 % of the write() floor | {f['cpu_ns_per_delivery']:.0f} vs {fl['ns_per_write']:.0f} ns = x{ratio:.2f} | {'yes' if ratio <= 1.10 else 'no'} |")
met = lambda r: r["p99_ms"] <= r["fanout_ms"] + 5 and r["expected"] == r["delivered"]
runs_text = "; ".join(f"{r['p99_ms']:.1f} vs {r['fanout_ms']:.1f}" for r in fans)
print(f"| latency p99 <= fan-out + 5 ms, zero loss (median of 3 runs) | p99 {f['p99_ms']:.1f} ms, fan-out {f['fanout_ms']:.1f} ms, loss {f['expected']-f['delivered']} (runs, p99 vs fan-out: {runs_text}; met in {sum(map(met, fans))} of 3) | {'yes' if met(f) else 'no'} |")
print(f"| (cold start: the 20 warm-up messages to fresh connections) | p99 {', '.join('%.1f' % r['warmup_p99_ms'] for r in fans)} ms | not a target |")
print(f"| flood >= 3,000,000 deliveries/s, zero loss | {fd['deliveries_per_sec']:.0f}/s, loss {fd['expected']-fd['delivered']} | {'yes' if fd['deliveries_per_sec'] >= 3e6 and fd['expected']==fd['delivered'] else 'no'} |")
print(f"| 10 stuck of {s1['subscribers']}: others' p99 within 5 ms | {s1['p99_ms']:.1f} ms vs {s0['p99_ms']:.1f} ms, loss {s1['expected']-s1['delivered']} | {'yes' if s1['p99_ms'] <= s0['p99_ms'] + 5 and s1['expected']==s1['delivered'] else 'no'} |")
print(f"| churn: RSS and descriptors back to baseline | RSS {ch['rss_before_kib']} (cold) / {ch['rss_first_cycle_kib']} (after cycle 1) -> {ch['rss_after_kib']} KiB, fds {ch['fds_before']} -> {ch['fds_after']} | {'yes' if ch['fds_before']==ch['fds_after'] and ch['rss_after_kib'] <= ch['rss_first_cycle_kib']*1.1 else 'no'} |")
print(f"| idle server under 2 MiB RSS (5 starts, worst) | {max(idle)} KiB (all: {', '.join(map(str, idle))}) | {'yes' if max(idle) < 2048 else 'no'} |")
PY
