#!/usr/bin/env bash
# Issue/revoke benchmark against a local 3-node cluster (release build,
# fsync on) and a local 3-member etcd cluster for comparison.
# Extra arguments go to `veto bench` (e.g. --duration-secs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
cargo build --release --workspace --bins
exec target/release/veto bench "$@"
