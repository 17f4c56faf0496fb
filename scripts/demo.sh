#!/usr/bin/env bash
# veto's main job: a local 3-node cluster on loopback that issues a token,
# revokes it and prints the revision and measured latencies. Keeps running
# until Ctrl-C; pass --once to exit after the walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh demo
cargo build --workspace --bins
exec target/debug/veto-bench demo "$@"
