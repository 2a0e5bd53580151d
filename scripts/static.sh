#!/usr/bin/env bash
# Static builds for small hosts: x86_64 and aarch64 musl, linked with rust-lld (no cross gcc).
# usage: scripts/static.sh          build both, print their stripped sizes
#        scripts/static.sh test     also run tests/static_build.rs against each (aarch64 under
#                                   qemu-aarch64-static, from Debian's qemu-user-static)
set -euo pipefail
cd "$(dirname "$0")/.."
targets="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"
installed=$(rustup target list --installed)
for t in $targets; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
# rust-lld ships with the toolchain; `-C linker=rust-lld` finds it without a PATH entry.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
for t in $targets; do
  cargo build --release --target "$t" --bins
  for b in wspush wspush-client; do
    f=target/$t/release/$b
    echo "$t $b: $(stat -c %s "$f") bytes; $(file -b "$f" | grep -o "static[a-z-]* linked")"
  done
done
if [ "${1:-}" = test ]; then
  command -v qemu-aarch64-static >/dev/null || { apt-get update -q && apt-get install -y -q qemu-user-static; }
  WSPUSH_STATIC_BIN=$PWD/target/x86_64-unknown-linux-musl/release/wspush \
    cargo test --test static_build -- --ignored
  WSPUSH_STATIC_BIN=$PWD/target/aarch64-unknown-linux-musl/release/wspush WSPUSH_STATIC_RUNNER=qemu-aarch64-static \
    cargo test --test static_build -- --ignored
fi
