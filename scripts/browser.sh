#!/usr/bin/env bash
# The browser and standard-client tests (tests/browser.rs): Python websockets, Node ws and
# headless Chromium against the server, directly and through nginx with TLS, and the demo page
# resuming across a cut and a restart (tests/browser/demo_page.rs). They need Debian's
# chromium, nginx-light, node-ws and python3-websockets (.ci/run installs them) and take about
# WSPUSH_LIVENESS_SECS (default 300) plus a minute, the tests running in parallel.
# Screenshots: target/browser-artifacts/.
#
# Debug build: the server's behaviour under test does not depend on optimisation, and it reuses
# what `cargo test` built.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests mostly wait, so they all run at once (the harness would run only as many as there
# are cores).
cargo test --test browser -- --ignored --nocapture --test-threads 16 "$@"
