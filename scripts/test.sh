#!/usr/bin/env bash
# The whole test suite: formatting, clippy (warnings are errors), then every
# unit and integration test (integration tests start real veto-server
# processes on 127.0.0.1 ephemeral ports; the chaos tests start servers and
# edges in network namespaces of their own, as root), then a bounded fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# deploy/: docker-compose config, kubernetes-validate, hadolint, shellcheck
# (pinned PyPI tools in a cached venv), promtool on the compose scrape config,
# and the image's and ConfigMap's TOML through the veto-server just built.
scripts/check-deploy.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# cargo fuzz: the token, feed-message and command decoders, 15 s each
# (longer runs: scripts/fuzz.sh 600).
scripts/fuzz.sh 15
