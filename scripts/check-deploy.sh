#!/usr/bin/env bash
# check-deploy.sh: validate the deploy files offline (no Docker daemon, no
# cluster). Quiet on success; on failure prints what failed and exits non-zero.
#
#   docker-compose 1.29.2 `config -q`  deploy/compose/docker-compose.yml (all profiles)
#   kubernetes-validate --strict       every manifest in deploy/k8s, for the
#                                      oldest supported (1.28) and a recent Kubernetes
#   hadolint (Dockerfile lint)         deploy/docker/Dockerfile
#   ShellCheck (POSIX sh / bash)       deploy/docker/veto-init-cluster.sh, this script
# and, when the tool is on this machine:
#   promtool check config              deploy/compose/prometheus.yml + ../observability/rules.yml
#   kubectl kustomize                  deploy/k8s rendered, then validated the same way
#   veto-server --dump-config          the TOML in the image and in the ConfigMap, with
#                                      VETO_TLS_* set as compose and k8s set them
#                                      (needs target/{debug,release}/veto-server; never builds)
#
# The Python tools live in two venvs under
# ${XDG_CACHE_HOME:-$HOME/.cache}/veto-deploy-venv, "compose" and "validate"
# (docker-compose needs jsonschema<4, kubernetes-validate jsonschema>=4),
# pinned by deploy/tools/requirements-*.txt, created on first use and
# re-created when deploy/tools/requirements-*.txt change. PYTHON picks the
# interpreter (default python3, 3.11 tested).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

venv_root="${XDG_CACHE_HOME:-$HOME/.cache}/veto-deploy-venv"
python="${PYTHON:-python3}"
kube_versions=(1.28.0 1.34.0)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "check-deploy: $*" >&2
    exit 1
}

# run DESCRIPTION CMD...: runs CMD with its output captured; shows it on failure.
run() {
    local what=$1
    shift
    if ! "$@" >"$tmp/out" 2>&1; then
        echo "check-deploy: FAILED: $what" >&2
        echo "  \$ $*" >&2
        sed 's/^/  /' "$tmp/out" >&2
        exit 1
    fi
}

# ensure_venv NAME REQUIREMENTS: a venv at $venv_root/NAME holding exactly the
# pinned requirements; rebuilt when the requirements file changes.
ensure_venv() {
    local dir="$venv_root/$1" req="$root/$2" stamp want
    want=$(sha256sum "$req" | cut -d' ' -f1)
    stamp="$dir/.veto-requirements.sha256"
    if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$venv_root"
    run "create venv $dir" "$python" -m venv "$dir"
    run "install $2 into $dir" "$dir/bin/python" -m pip install \
        --quiet --disable-pip-version-check --no-input -r "$req"
    echo "$want" >"$stamp"
}

ensure_venv compose deploy/tools/requirements-compose.txt
ensure_venv validate deploy/tools/requirements-validate.txt
compose_bin="$venv_root/compose/bin/docker-compose"
vbin="$venv_root/validate/bin"
kv_bin="$vbin/kubernetes-validate"

# --- docker-compose ---------------------------------------------------------
compose_file=deploy/compose/docker-compose.yml
run "docker-compose config ($compose_file)" \
    "$compose_bin" -f "$compose_file" config -q
run "docker-compose config --profile relay ($compose_file)" \
    "$compose_bin" -f "$compose_file" --profile relay config -q
[[ -f deploy/observability/rules.yml ]] ||
    fail "deploy/observability/rules.yml (mounted by $compose_file) is missing"

# --- Kubernetes -------------------------------------------------------------
manifests=()
for f in deploy/k8s/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] && continue
    manifests+=("$f")
done
((${#manifests[@]} > 0)) || fail "no manifests under deploy/k8s"
# kube_validate WHAT FILES...: strict, every version; a warning (e.g. a kind
# without a schema) fails too.
kube_validate() {
    local what=$1 v
    shift
    for v in "${kube_versions[@]}"; do
        run "kubernetes-validate --strict -k $v $what" "$kv_bin" --strict --quiet -k "$v" "$@"
        if [[ -s "$tmp/out" ]]; then
            echo "check-deploy: FAILED: kubernetes-validate -k $v warned on $what:" >&2
            sed 's/^/  /' "$tmp/out" >&2
            exit 1
        fi
    done
}
kube_validate deploy/k8s "${manifests[@]}"

if command -v kubectl >/dev/null 2>&1; then
    run "kubectl kustomize deploy/k8s" kubectl kustomize deploy/k8s
    cp "$tmp/out" "$tmp/rendered.yaml"
    kube_validate "kustomize output of deploy/k8s" "$tmp/rendered.yaml"
fi

# --- Dockerfile, scripts and configs ----------------------------------------
run "hadolint deploy/docker/Dockerfile" "$vbin/hadolint" --no-color deploy/docker/Dockerfile
# The init script runs under busybox sh: check it as POSIX sh.
run "shellcheck deploy/docker/veto-init-cluster.sh" \
    "$vbin/shellcheck" -s sh deploy/docker/veto-init-cluster.sh
run "shellcheck scripts/check-deploy.sh" "$vbin/shellcheck" scripts/check-deploy.sh
[[ -x deploy/docker/veto-init-cluster.sh ]] || fail "deploy/docker/veto-init-cluster.sh is not executable"

if command -v promtool >/dev/null 2>&1; then
    # Container paths (/etc/prometheus/...) move under $tmp/prom: the rules
    # file, and empty stand-ins for the TLS files, which promtool only checks
    # exist (the real ones are made by the compose `certs` service).
    mkdir -p "$tmp/prom"
    sed "s#/etc/prometheus/#$tmp/prom/#g" deploy/compose/prometheus.yml >"$tmp/prometheus.yml"
    cp deploy/observability/rules.yml "$tmp/prom/rules.yml"
    sed -nE 's/^ *(ca|cert|key)_file: *//p' "$tmp/prometheus.yml" | sort -u | while read -r f; do
        mkdir -p "$(dirname "$f")"
        : >"$f"
    done
    run "promtool check config deploy/compose/prometheus.yml" promtool check config "$tmp/prometheus.yml"
fi

server_bin=""
for b in target/debug/veto-server target/release/veto-server; do
    if [[ -x "$b" ]]; then
        server_bin=$b
        break
    fi
done
if [[ -n "$server_bin" ]]; then
    "$vbin/python" - deploy/k8s/10-server-config.yaml "$tmp/configmap.toml" <<'EOF'
import sys, yaml
with open(sys.argv[1]) as f:
    cm = yaml.safe_load(f)
with open(sys.argv[2], "w") as f:
    f.write(cm["data"]["server.toml"])
EOF
    for cfg in deploy/docker/server.toml "$tmp/configmap.toml"; do
        # TLS comes from the environment in compose and Kubernetes (the
        # files are only read at start, not by --dump-config).
        run "veto-server --dump-config with $cfg" env -i PATH="$PATH" \
            VETO_KEK="$(printf '0%.0s' {1..64})" \
            VETO_TLS_CA=/certs/ca.pem VETO_TLS_CERT=/certs/server-1.pem VETO_TLS_KEY=/certs/server-1.key \
            "$server_bin" --config "$cfg" --node-id 1 --dump-config
    done
fi
