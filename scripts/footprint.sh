#!/usr/bin/env bash
# The footprint budget (BENCHMARKS.md "Footprint"): binary sizes, start-up RSS, RSS with 1,000
# idle connections, wake-ups per second with no traffic, and the runtime dependency tree with
# its lines of Rust. Builds release (glibc) and the static musl targets (scripts/static.sh).
# usage: scripts/footprint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins >/dev/null 2>&1 || cargo build --release --bins
scripts/static.sh >/dev/null
server=
cleanup() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=; fi; }
trap cleanup EXIT
start() { # binary [flags...]
  cleanup
  log=$(mktemp)
  "$@" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --max-connections 5000 >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -aq 'listening on' "$log" && break; sleep 0.05; done
  ws=$(grep -ao 'ws://[0-9.:]*' "$log" | head -n1 | sed 's#ws://##')
  api=$(grep -ao 'api: [0-9.:]*' "$log" | head -n1 | sed 's#api: ##')
}
rss() { awk '/VmRSS/{print $2}' "/proc/$server/status"; }
switches() { awk '/^voluntary_ctxt_switches/{print $2}' "/proc/$server/status"; }
gnu=target/release/wspush
musl=target/x86_64-unknown-linux-musl/release/wspush
arm=target/aarch64-unknown-linux-musl/release/wspush

echo "commit $(git rev-parse --short HEAD), $(date -u +%F), $(rustc --version), kernel $(uname -r)"
echo
echo "| figure | x86_64 glibc | x86_64 musl (static) | aarch64 musl (static) |"
echo "|---|---|---|---|"
echo "| stripped binary, wspush | $(stat -c %s $gnu) B | $(stat -c %s $musl) B | $(stat -c %s $arm) B |"
startup() { # binary: RSS 0.5 s after start, 5 starts
  local all=""
  for _ in 1 2 3 4 5; do start "$1"; sleep 0.5; all="$all $(rss)"; done
  echo $all | tr ' ' '\n' | sort -n | sed -n '1p;$p' | paste -sd- | sed 's/$/ KiB/'
}
echo "| start-up RSS (5 starts, min-max) | $(startup $gnu) | $(startup $musl) | not measured (qemu's own RSS) |"
idle1000() { # binary: RSS with 1,000 idle subscribed connections
  start "$1" --no-tick
  local before; before=$(rss)
  target/release/wspush-bench connect --ws "$ws" --api "$api" --server-pid "$server" -n 1000 --concurrency 200 >/dev/null
  echo "$(rss) KiB (from $before)"
}
echo "| RSS with 1,000 idle subscribed connections | $(idle1000 $gnu) | $(idle1000 $musl) | not measured |"
wakeups() { # binary flags...: voluntary context switches per second over 30 s, no clients
  start "$@"; sleep 1
  local a; a=$(switches); sleep 30; echo "$(( ($(switches) - a) ))/30 s"
}
echo "| wake-ups with no clients, demo tick on (every 3 s) | $(wakeups $gnu) | $(wakeups $musl) | |"
echo "| wake-ups with no clients, \`--no-tick\` | $(wakeups $gnu --no-tick) | $(wakeups $musl --no-tick) | |"
cleanup
k=$(mktemp)
start $gnu --no-tick
target/release/wspush-bench keepalive --ws "$ws" --api "$api" --server-pid "$server" -n 1000 --concurrency 200 --duration 30s >"$k"
cleanup
echo
echo "1,000 idle connections kept alive by the server's Pings, glibc: $(cat "$k")"

# The runtime tree: the library alone (what a vendoring project links) and the binaries.
echo
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -n1)
tree() { # cargo tree flags...: "name version" per crate linked into the binary (no proc-macros)
  cargo tree -e normal,no-proc-macro --prefix none "$@" | sed 's/ (\*)//' | awk '{print $1, $2}' | sort -u
}
lines() { # name vX.Y.Z -> lines of .rs in its registry source
  local dir="$registry/$1-${2#v}"
  [ -d "$dir" ] && find "$dir" -name '*.rs' -not -path '*/tests/*' -not -path '*/benches/*' -not -path '*/examples/*' | xargs cat | wc -l || echo "?"
}
for features in "--no-default-features" ""; do
  label=${features:-"default features (the binaries' logger)"}
  [ -n "$features" ] && label="library alone ($features)"
  total=0; count=0; rows=""
  while read -r name version; do
    if [ "$name" = wspush ]; then n=$(find src -name '*.rs' | xargs cat | wc -l); else n=$(lines "$name" "$version"); fi
    rows="$rows $name $version: $n;"
    count=$((count + 1)); [ "$n" != "?" ] && total=$((total + n))
  done < <(tree $features)
  echo "runtime tree, $label: $count crates, $total lines of Rust (without tests, benches, examples):$rows"
done
macros=$(cargo tree -e normal --prefix none | grep -c '(proc-macro)' || true)
echo "build-time only: $macros proc-macro crates (serde_derive, thiserror-impl) and what they pull in (syn, quote, proc-macro2, unicode-ident)"
cargo build --lib --no-default-features >/dev/null 2>&1 && echo "the library builds without the cli feature (no logger)"
