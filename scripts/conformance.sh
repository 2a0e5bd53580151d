#!/usr/bin/env bash
# Protocol conformance: the Autobahn|Testsuite fuzzing client against `wspush --echo`.
# Installs the suite (Python 2.7 virtualenv, cached), starts the echo server on a free loopback
# port, runs cases 1-7, 9.1.1-9.1.3 and 10, and fails on any case that is not OK / NON-STRICT /
# INFORMATIONAL or that closes wrongly. Reports go to target/autobahn/.
# usage: scripts/conformance.sh [CASES_JSON_ARRAY]
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-'["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.1.1","9.1.2","9.1.3","10.*"]'}
out=$PWD/target/autobahn
venv=${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autobahn-venv}

py27=
candidates=()
command -v pyenv >/dev/null 2>&1 && candidates+=("$(pyenv root)"/versions/2.7*/bin/python2.7)
command -v python2.7 >/dev/null 2>&1 && candidates+=("$(command -v python2.7)")
for c in "${candidates[@]}"; do
  if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then py27=$c; break; fi
done
[ -n "$py27" ] || { echo "conformance: no Python 2.7 interpreter found (pyenv install 2.7.18)" >&2; exit 2; }
if [ ! -x "$venv/bin/wstest" ]; then
  tools=$(mktemp -d)
  export VIRTUALENV_OVERRIDE_APP_DATA=$tools/appdata
  python3 -m venv "$tools/venv" && "$tools/venv/bin/pip" install -q 'virtualenv==20.21.1'
  "$tools/venv/bin/virtualenv" -q -p "$py27" "$venv"
  "$venv/bin/pip" install -q autobahntestsuite==25.10.1
  rm -rf "$tools"
fi

cargo build --release --bin wspush
mkdir -p "$out"
log=$out/server.log
# The suite sends messages up to 1 MiB (9.1.3) and echoes them: raise the caps for this run only.
target/release/wspush --echo --listen 127.0.0.1:0 --api-listen off --no-tick \
  --max-message-size 16MiB --outbound-cap 64MiB >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
url=
for _ in $(seq 100); do
  url=$(grep -o 'ws://[0-9.:]*/ws' "$log" | head -n1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "conformance: the echo server did not start" >&2; cat "$log" >&2; exit 1; }
echo "conformance: running Autobahn cases $cases against $url"

cat >"$out/fuzzingclient.json" <<JSON
{"options": {"failByDrop": false},
 "outdir": "$out/servers",
 "servers": [{"agent": "wspush", "url": "$url"}],
 "cases": $cases,
 "exclude-cases": [], "exclude-agent-cases": {}}
JSON
(cd "$out" && "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >"$out/wstest.log" 2>&1)
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
python3 scripts/check_autobahn.py "$out/servers/index.json"
echo "conformance: all cases passed (reports: $out/servers/index.html)"
