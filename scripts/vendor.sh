#!/usr/bin/env bash
# Vendoring: `cargo vendor` of the runtime tree and an offline build from a clean checkout, as
# a minimal-dependency build would do it; then the declared `rust-version` is checked with that
# toolchain when rustup can provide it.
# usage: scripts/vendor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q --no-hardlinks . "$work/wspush"
cd "$work/wspush"
mkdir -p .cargo
# Only what the library and the binaries need; dev-dependencies are vendored too by cargo, so
# the offline build below covers `cargo build`, not `cargo test`.
cargo vendor --locked vendor > .cargo/config.toml
echo "vendored: $(ls vendor | wc -l) crates, $(du -sh vendor | cut -f1)"
CARGO_TARGET_DIR=$work/target cargo build --offline --locked --release --bins
CARGO_TARGET_DIR=$work/target cargo build --offline --locked --lib --no-default-features
echo "offline build from the vendored tree: ok (binaries, and the library without the cli feature)"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1; then
  CARGO_TARGET_DIR=$work/target-msrv cargo "+$msrv" check --offline --locked --all-targets
  echo "rust-version $msrv: cargo +$msrv check passes"
else
  echo "rust-version $msrv: toolchain not available, not checked"
fi
