#!/usr/bin/env bash
# Installs the system packages veto's build, tests and benchmarks need, only
# if missing (idempotent). Usage: scripts/deps.sh [build|bench]
set -euo pipefail
# prometheus: its promtool validates veto's /metrics output in the tests.
want=(libclang-dev clang prometheus)
if [[ "${1:-build}" == "bench" ]]; then
  want+=(etcd-server)
fi
missing=()
for p in "${want[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
