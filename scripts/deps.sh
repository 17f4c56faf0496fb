#!/usr/bin/env bash
# Installs the system packages veto needs, only those missing (idempotent).
# Usage: scripts/deps.sh [demo|test|bench]   (build = test, for old callers)
#   demo:  what building veto needs (bindgen for RocksDB: libclang, a C++
#          compiler) — the demo needs nothing else.
#   test:  + what the test command uses:
#          prometheus (its promtool validates /metrics, the scrape config and
#          the alert rules), chromium (renders /ui headless), iproute2 and
#          nftables (the chaos tests' network namespaces and their faults),
#          python3-venv (the pinned PyPI tools: deploy checks, gRPC health and
#          reflection clients), faketime (libfaketime: edges and servers with
#          their wall clock offset, monotonic clock untouched), nginx (the
#          auth_request test and `nginx -t` of docs/integrations.md), caddy
#          (`caddy adapt --validate` of the documented Caddyfile), lua5.1
#          (`luac5.1 -p` of the documented Kong plugin's Lua), nodejs and
#          npm (the Istio and Traefik resource validators from npm).
#   bench: + etcd-server (the propagation baseline), wrk (loads nginx in
#          `veto-bench gateways`).
set -euo pipefail
build=(libclang-dev clang)
test=(prometheus chromium iproute2 nftables python3-venv faketime nginx-light caddy lua5.1)
# Node.js and npm from Debian only where none is installed (a Node.js from
# elsewhere ships its own npm, which Debian's npm conflicts with).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then test+=(nodejs npm); fi
case "${1:-test}" in
  demo) want=("${build[@]}") ;;
  build | test) want=("${build[@]}" "${test[@]}") ;;
  bench) want=("${build[@]}" "${test[@]}" etcd-server wrk) ;;
  *)
    echo "usage: $0 [demo|test|bench]" >&2
    exit 64
    ;;
esac
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
