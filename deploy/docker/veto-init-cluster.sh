#!/busybox/sh
# veto-init-cluster: bootstrap a veto cluster once; running it again is a no-op.
# Installed as /usr/local/bin/veto-init-cluster in the image's `debug` target
# (busybox shell); used by deploy/compose (service `init`) and deploy/k8s
# (Job `veto-init`).
#
# Environment:
#   VETO_ADDR                    servers to talk to, comma-separated (the veto CLI reads it too)
#   VETO_TLS_CA, VETO_TLS_CERT, VETO_TLS_KEY
#                                read by the veto CLI: the CA and an operator certificate
#                                (role operator) with its key; or VETO_INSECURE=1 for
#                                servers started with --insecure
#   VETO_INIT_MEMBERS            initial voters, space-separated ID=HOST:PORT, e.g.
#                                "1=server1:7400 2=server2:7400 3=server3:7400"; the addresses
#                                are stored in the Raft membership: use what peers can dial
#   VETO_INIT_LEARNERS           optional, space-separated ID=HOST:PORT to add as learners
#   VETO_INIT_PROMOTE_LEARNERS   "true" to promote those learners to voters (keep voters odd)
#   VETO_INIT_TIMEOUT_SECONDS    overall deadline for retries (default 300)
#
# Steps, each retried until the deadline while the servers come up:
#   1. veto cluster init --member ... ; "already initialised" (FAILED_PRECONDITION) counts as done
#   2. wait until the addressed node knows a leader
#   3. add-learner / promote, tolerating "already a member" / "already a voter"
# Exits 0 when the cluster is initialised, non-zero on a permanent error or at the deadline.
set -eu
PATH="$PATH:/busybox"

: "${VETO_ADDR:?set VETO_ADDR to the servers gRPC addresses, comma-separated}"
: "${VETO_INIT_MEMBERS:?set VETO_INIT_MEMBERS, e.g. 1=server1:7400 2=server2:7400 3=server3:7400}"
learners="${VETO_INIT_LEARNERS:-}"
promote="${VETO_INIT_PROMOTE_LEARNERS:-false}"
deadline=$(( $(date +%s) + ${VETO_INIT_TIMEOUT_SECONDS:-300} ))

log() { echo "veto-init-cluster: $*" >&2; }

# attempt WHAT TOLERATED CMD...: run CMD until it succeeds or fails with
# output containing TOLERATED (which also counts as success).
attempt() {
    what=$1
    tolerated=$2
    shift 2
    while :; do
        if out=$("$@" 2>&1); then
            log "$what: done"
            [ -z "$out" ] || echo "$out"
            return 0
        fi
        case "$out" in
            *"$tolerated"*)
                log "$what: $tolerated; nothing to do"
                return 0
                ;;
            *InvalidArgument*|*Unauthenticated*|*PermissionDenied*)
                log "$what: failed: $out"
                return 1
                ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$what: giving up at the deadline: $out"
            return 1
        fi
        log "$what: not yet: $out (retrying in 2 s)"
        sleep 2
    done
}

leader_known() {
    s=$(veto --json cluster status) || return 1
    case "$s" in
        *'"leader_id":0,'* | *'"leader_id":0}'*)
            echo "no leader known yet"
            return 1
            ;;
    esac
}

set --
for m in $VETO_INIT_MEMBERS; do
    set -- "$@" --member "$m"
done
attempt "cluster init" "already initialised" veto cluster init "$@"
attempt "leader election" "(never)" leader_known

for l in $learners; do
    id=${l%%=*}
    addr=${l#*=}
    attempt "add learner $id" "is already a member" veto cluster add-learner "$id" "$addr"
    if [ "$promote" = "true" ]; then
        attempt "promote $id" "is already a voter" veto cluster promote "$id"
    fi
done

veto cluster status
