#!/usr/bin/env bash
# Installs the system packages veto's build, tests and benchmarks need, only
# if missing (idempotent). Usage: scripts/deps.sh [build|bench]
set -euo pipefail
# prometheus: its promtool validates veto's /metrics output, the scrape
# config and the alerting rules in the tests.
# chromium: the dashboard test renders /ui headless.
# iproute2 and nftables: the chaos tests' hosts (network namespaces, veth,
# a bridge) and their faults (packet drop and loss rules).
want=(libclang-dev clang prometheus chromium iproute2 nftables)
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
  # Wait for another apt/dpkg run rather than fail on its lock.
  apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
  $SUDO env DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2
fi
