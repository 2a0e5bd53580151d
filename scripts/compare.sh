#!/usr/bin/env bash
# Same-session pairs of two wspush builds: runs one wspush-bench scenario against each, alternating,
# twice (server pinned to core 0, generator to core 1, loopback only, each run bounded by timeout).
# usage: [OLD_FLAGS=..] [NEW_FLAGS=..] scripts/compare.sh OLD_WSPUSH NEW_WSPUSH SCENARIO [ARGS...]
#   e.g. scripts/compare.sh /tmp/old/wspush target/release/wspush flood -n 1000 --duration 5s
#   OLD_FLAGS / NEW_FLAGS: extra server flags of each side (one build twice: history on and off).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,6p "$0"; exit 2; }
old=$1 new=$2; shift 2
cargo build --release --bin wspush-bench >/dev/null
server=
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=; fi; }
trap cleanup EXIT
for i in 1 2; do
  for side in old new; do
    if [ $side = old ]; then bin=$old; flags=${OLD_FLAGS:-}; else bin=$new; flags=${NEW_FLAGS:-}; fi
    log=$(mktemp)
    # shellcheck disable=SC2086 # the flags are words
    taskset -c 0 "$bin" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-tick --max-connections 19000 $flags >"$log" 2>&1 &
    server=$!
    for _ in $(seq 100); do grep -aq 'listening on' "$log" && break; sleep 0.05; done
    ws=$(grep -ao 'ws://[0-9.:]*' "$log" | head -n1 | sed 's#ws://##')
    api=$(grep -ao 'api: [0-9.:]*' "$log" | head -n1 | sed 's#api: ##')
    echo "== $bin $flags, run $i"
    timeout 300 taskset -c 1 target/release/wspush-bench "$@" --ws "$ws" --api "$api" --server-pid "$server" | tail -n 2
    cleanup; rm -f "$log"
  done
done
