#!/usr/bin/env bash
# The benchmarks (release build): `veto-bench` against a local 3-node
# cluster (fsync on) and, for issue/revoke/propagation, a local 3-member
# etcd cluster for comparison. The first argument picks the benchmark (all,
# issue, revoke, verify, propagation, scale, overhead, gateways, usage; default
# all); the rest go to it (e.g. scripts/bench.sh propagation --duration-secs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
cargo build --release --workspace --bins
if [[ $# -eq 0 || $1 == -* ]]; then
    set -- all "$@"
fi
exec target/release/veto-bench "$@"
