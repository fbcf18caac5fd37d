#!/usr/bin/env bash
# A Ray head on this machine for guide_ray jobs; its dashboard and job server on loopback only.
#
#   cluster/local-head.sh start|stop|status
#
# Settings (environment): RAY_HEAD_PORT (GCS, default 6379), RAY_DASHBOARD_PORT (dashboard and job
# API, 8265), RAY_AGENT_PORT (the node agent that runs jobs, 52365: change it if another Ray here
# holds it), RAY_HEAD_NUM_CPUS / RAY_HEAD_NUM_GPUS (default: detected), RAY_AUTH_MODE (token, the
# default, as Ray's node ports listen on every interface: clients need ~/.ray/auth_token, created
# here when missing, and RAY_AUTH_MODE=token; or disabled), RAY (default: .venv/bin/ray, else PATH's).
# `stop` runs `ray stop`, which stops every Ray process of this user on this machine.
set -euo pipefail

die() { echo "cluster/local-head.sh: $*" >&2; exit 2; }
usage() { local rc=${1:-2}; sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&$(( rc ? 2 : 1 )); exit "$rc"; }

port_ok() { [[ $2 =~ ^[0-9]+$ ]] && (( 10#$2 >= 1 && 10#$2 <= 65535 )) || die "$1='$2' is not a TCP port (1-65535)"; }
count_ok() { [[ -z $2 || $2 =~ ^[0-9]+$ ]] || die "$1='$2' is not a whole number"; }

[ $# -eq 1 ] || usage
cmd=$1
case "$cmd" in start|stop|status) ;; -h|--help) usage 0 ;; *) echo "cluster/local-head.sh: unknown command '$cmd'" >&2; usage ;; esac

port=${RAY_HEAD_PORT:-6379}
dash=${RAY_DASHBOARD_PORT:-8265}
agent=${RAY_AGENT_PORT:-52365}
auth=${RAY_AUTH_MODE:-token}
port_ok RAY_HEAD_PORT "$port"
port_ok RAY_DASHBOARD_PORT "$dash"
port_ok RAY_AGENT_PORT "$agent"
[ "$(printf '%s\n' "$port" "$dash" "$agent" | sort -u | wc -l)" = 3 ] ||
    die "RAY_HEAD_PORT, RAY_DASHBOARD_PORT and RAY_AGENT_PORT must differ ($port, $dash, $agent)"
case "$auth" in token|disabled) ;; *) die "RAY_AUTH_MODE='$auth': use token or disabled" ;; esac
count_ok RAY_HEAD_NUM_CPUS "${RAY_HEAD_NUM_CPUS:-}"
count_ok RAY_HEAD_NUM_GPUS "${RAY_HEAD_NUM_GPUS:-}"

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${RAY:-}" ]; then
    if [ -x "$repo/.venv/bin/ray" ]; then RAY=$repo/.venv/bin/ray; else RAY=ray; fi
fi
command -v "$RAY" >/dev/null || die "'$RAY' not found; run 'make install' or set RAY=/path/to/ray"
export RAY_AUTH_MODE=$auth

case "$cmd" in
start)
    # With token auth Ray starts only if a token exists; this creates ~/.ray/auth_token once.
    [ "$auth" = disabled ] || "$RAY" get-auth-token --generate >/dev/null
    args=(start --head --port="$port" --include-dashboard=true --dashboard-host=127.0.0.1
          --dashboard-port="$dash" --dashboard-agent-listen-port="$agent" --disable-usage-stats)
    [ -z "${RAY_HEAD_NUM_CPUS:-}" ] || args+=(--num-cpus="$RAY_HEAD_NUM_CPUS")
    [ -z "${RAY_HEAD_NUM_GPUS:-}" ] || args+=(--num-gpus="$RAY_HEAD_NUM_GPUS")
    "$RAY" "${args[@]}"
    cat <<EOF

Ray head on port $port; dashboard and job server: http://127.0.0.1:$dash
Submit jobs from this machine (the head and its workers see GUIDE_RAY_CACHE and
MLFLOW_TRACKING_URI as they were in the shell that started it):
    cd $repo
    export RAY_ADDRESS=http://127.0.0.1:$dash RAY_AUTH_MODE=$auth
    $RAY job submit --working-dir . -- python -m guide_ray.fleet jobs/demo/ids.csv \\
        --generator dcgan-digiface64 --config jobs/configs/demo-cpu.yaml --out $repo/outputs/head-demo
Stop it: cluster/local-head.sh stop
EOF
    ;;
stop)
    "$RAY" stop
    ;;
status)
    "$RAY" status --address="127.0.0.1:$port"
    ;;
esac
