#!/usr/bin/env bash
# pyenv.sh NAME REQUIREMENTS: prints the path of a Python interpreter in a
# venv at ${XDG_CACHE_HOME:-$HOME/.cache}/veto-test-venv/NAME holding exactly
# the pinned REQUIREMENTS (a path relative to the repository root), creating
# it on first use and re-creating it when the file changes. Tests call it to
# run real Python peers (grpcio's health and reflection clients, OAuth
# libraries). Concurrent callers wait on a lock. PYTHON picks the
# interpreter (default python3; python3-venv comes from scripts/deps.sh test).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: pyenv.sh NAME REQUIREMENTS}
req="$root/${2:?usage: pyenv.sh NAME REQUIREMENTS}"
python="${PYTHON:-python3}"
base="${XDG_CACHE_HOME:-$HOME/.cache}/veto-test-venv"
dir="$base/$name"
mkdir -p "$base"

exec 9>"$base/$name.lock"
flock -w 600 9

want=$(sha256sum "$req" | cut -d' ' -f1)
stamp="$dir/.veto-requirements.sha256"
if [[ ! -x "$dir/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    rm -rf "$dir"
    "$python" -m venv "$dir" >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$req" >&2
    echo "$want" >"$stamp"
fi
echo "$dir/bin/python"
