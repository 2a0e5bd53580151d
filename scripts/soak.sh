#!/usr/bin/env bash
# Soak test: minutes of connection/subscription/publish churn against the release binary.
# usage: WSPUSH_SOAK_SECS=180 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export WSPUSH_SOAK_SECS=${WSPUSH_SOAK_SECS:-180}
cargo test --release --test soak -- --ignored --nocapture
