#!/usr/bin/env bash
# npmenv.sh NAME DIR: prints the path of a copy of DIR (a path relative to
# the repository root holding package.json, package-lock.json and scripts)
# at ${XDG_CACHE_HOME:-$HOME/.cache}/veto-test-npm/NAME with exactly the
# locked packages installed (`npm ci`), re-created when any file of DIR
# changes. Tests run real npm validators from it (docs/integrations.md's
# Istio and Traefik resources). Concurrent callers wait on a lock. Node.js
# and npm come from scripts/deps.sh test.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: npmenv.sh NAME DIR}
src="$root/${2:?usage: npmenv.sh NAME DIR}"
base="${XDG_CACHE_HOME:-$HOME/.cache}/veto-test-npm"
dir="$base/$name"
mkdir -p "$base"

exec 9>"$base/$name.lock"
flock -w 600 9

want=$(cd "$src" && find . -maxdepth 1 -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp="$dir/.veto-files.sha256"
if [[ ! -d "$dir/node_modules" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$src"/* "$dir"/
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$stamp"
fi
echo "$dir"
