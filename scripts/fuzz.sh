#!/usr/bin/env bash
# Runs veto's cargo fuzz targets (fuzz/: token, feed, command) for a bounded
# time each, starting from the committed seeds (fuzz/seeds/) and the corpus
# kept in target/fuzz-corpus/. A crash fails the script and leaves the input
# in fuzz/artifacts/<target>/.
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then targets=(token feed command); fi
# cargo fuzz, pinned, installed once
version=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$version"; then
  cargo install cargo-fuzz --version "$version" --locked
fi
# libFuzzer's instrumentation and AddressSanitizer are unstable rustc flags:
# RUSTC_BOOTSTRAP lets the pinned stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  corpus="target/fuzz-corpus/$t"
  mkdir -p "$corpus"
  cargo fuzz run --fuzz-dir fuzz --target-dir target/fuzz "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
