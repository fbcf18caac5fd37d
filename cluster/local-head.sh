#!/usr/bin/env bash
# A Ray head on this machine for guide_ray jobs; its dashboard and job server on loopback only.
#
#   cluster/local-head.sh start|stop|status
#
# Settings (environment): RAY_HEAD_PORT (GCS, default 6379), RAY_DASHBOARD_PORT (dashboard and job
# API, 8265), RAY_AGENT_PORT (the node agent that runs jobs, 52365: change it if another Ray here
# holds it), RAY_HEAD_NUM_CPUS / RAY_HEAD_NUM_GPUS (default: detected), RAY_HEAD_TEMP_DIR (Ray's
# logs and sockets, default /tmp/ray), RAY_AUTH_MODE (token, the default, as Ray's node ports listen
# on every interface: clients need ~/.ray/auth_token, created here when missing, and
# RAY_AUTH_MODE=token; or disabled), RAY (default: .venv/bin/ray, else PATH's). Jobs run with the
# python environment RAY belongs to. `stop` stops this head only: the Ray session whose GCS listens
# on RAY_HEAD_PORT, with its workers and jobs (`ray stop` would stop every Ray of this user here).
set -euo pipefail

die() { echo "cluster/local-head.sh: $*" >&2; exit 2; }
usage() { local rc=${1:-2}; sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&$(( rc ? 2 : 1 )); exit "$rc"; }

port_ok() { [[ $2 =~ ^[0-9]+$ ]] && (( 10#$2 >= 1 && 10#$2 <= 65535 )) || die "$1='$2' is not a TCP port (1-65535)"; }
count_ok() { [[ -z $2 || $2 =~ ^[0-9]+$ ]] || die "$1='$2' is not a whole number"; }

[ $# -eq 1 ] || usage
cmd=$1
case "$cmd" in start|stop|status) ;; -h|--help) usage 0 ;; *) echo "cluster/local-head.sh: unknown command '$cmd'" >&2; usage ;; esac

port=${RAY_HEAD_PORT:-6379}
dash=${RAY_DASHBOARD_PORT:-8265}
agent=${RAY_AGENT_PORT:-52365}
auth=${RAY_AUTH_MODE:-token}
temp=${RAY_HEAD_TEMP_DIR:-}
port_ok RAY_HEAD_PORT "$port"
port_ok RAY_DASHBOARD_PORT "$dash"
port_ok RAY_AGENT_PORT "$agent"
[ "$(printf '%s\n' "$port" "$dash" "$agent" | sort -u | wc -l)" = 3 ] ||
    die "RAY_HEAD_PORT, RAY_DASHBOARD_PORT and RAY_AGENT_PORT must differ ($port, $dash, $agent)"
case "$auth" in token|disabled) ;; *) die "RAY_AUTH_MODE='$auth': use token or disabled" ;; esac
count_ok RAY_HEAD_NUM_CPUS "${RAY_HEAD_NUM_CPUS:-}"
count_ok RAY_HEAD_NUM_GPUS "${RAY_HEAD_NUM_GPUS:-}"
[[ -z $temp || $temp == /* ]] || die "RAY_HEAD_TEMP_DIR='$temp' is not an absolute path"

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${RAY:-}" ]; then
    if [ -x "$repo/.venv/bin/ray" ]; then RAY=$repo/.venv/bin/ray; else RAY=ray; fi
fi
found=$(command -v "$RAY") || die "'$RAY' not found; run 'make install' or set RAY=/path/to/ray"
[[ $found == /* ]] || found=$PWD/$found
RAY=$found  # absolute, so that the printed commands work from any shell, venv or none
bin=$(dirname "$RAY")
export RAY_AUTH_MODE=$auth

# This head's processes, of this user: those whose command line names the session dir of the GCS
# on $port (GCS, raylet, dashboard, monitors) or that GCS's address (Ray's client server), and all
# their descendants (agents, workers, jobs).
head_pids() {
    local gcs args session ip p roots
    gcs=$(pgrep -u "$(id -u)" -f -- "gcs_server .*--gcs_server_port=$port( |\$)" | head -n1) || true
    [ -n "$gcs" ] || return 0
    roots=$gcs
    args=$(tr '\0' '\n' < "/proc/$gcs/cmdline" 2>/dev/null) || true
    session=$(sed -n 's/^--session-dir=//p' <<<"$args" | head -n1)
    ip=$(sed -n 's/^--node-ip-address=//p' <<<"$args" | head -n1)
    if [ -n "$session" ]; then
        for p in $(grep -alsF -- "$session" /proc/[0-9]*/cmdline | cut -d/ -f3); do
            [ ! -O "/proc/$p" ] || roots="$roots $p"
        done
    fi
    [ -z "$ip" ] || roots="$roots $(pgrep -u "$(id -u)" -f -- "address=${ip//./\\.}:$port( |\$)" | tr '\n' ' ')"
    ps -eo pid=,ppid= | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { pid[NR] = $1; parent[$1] = $2 }
        END {
            do { grew = 0
                 for (i = 1; i <= NR; i++) if (!(pid[i] in keep) && (parent[pid[i]] in keep)) { keep[pid[i]] = 1; grew = 1 }
            } while (grew)
            for (i = 1; i <= NR; i++) if (pid[i] in keep) print pid[i] }'  # running ones only
}

case "$cmd" in
start)
    # Ray runs a job's entrypoint (`python -m guide_ray.fleet ...`) as a shell command in a worker
    # of this head, with the environment `ray start` had: from a shell without the venv, `python`
    # there is the system's (no torch) or none. So the head starts with RAY's environment first on
    # PATH (and as VIRTUAL_ENV): a job's `python` is then the one Ray's own workers run, the
    # project's, whatever the starting shell had activated. That python is checked first.
    "$bin/python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("guide_ray") and u.find_spec("torch")))' \
        2>/dev/null || die "$bin/python cannot import guide_ray and torch: run 'make install', or set RAY to the ray of the project's environment"
    export PATH=$bin:$PATH
    if [ -f "$bin/../pyvenv.cfg" ]; then VIRTUAL_ENV=$(cd "$bin/.." && pwd); export VIRTUAL_ENV; else unset VIRTUAL_ENV; fi
    # With token auth Ray starts only if a token exists; this creates ~/.ray/auth_token once.
    [ "$auth" = disabled ] || "$RAY" get-auth-token --generate >/dev/null
    args=(start --head --port="$port" --include-dashboard=true --dashboard-host=127.0.0.1
          --dashboard-port="$dash" --dashboard-agent-listen-port="$agent" --disable-usage-stats)
    [ -z "${RAY_HEAD_NUM_CPUS:-}" ] || args+=(--num-cpus="$RAY_HEAD_NUM_CPUS")
    [ -z "${RAY_HEAD_NUM_GPUS:-}" ] || args+=(--num-gpus="$RAY_HEAD_NUM_GPUS")
    [ -z "$temp" ] || args+=(--temp-dir="$temp")
    "$RAY" "${args[@]}"
    q() { printf '%q' "$1"; }
    cat <<EOF

Ray head on port $port; dashboard and job server: http://127.0.0.1:$dash
Submit jobs from this machine, in any shell (no venv needed: jobs run with $bin/python, and
see GUIDE_RAY_CACHE and MLFLOW_TRACKING_URI as they were in the shell that started the head).
The demo fleet; for yours, change the CSV, --generator, --config and --out:
    cd $(q "$repo")
    export RAY_ADDRESS=http://127.0.0.1:$dash RAY_AUTH_MODE=$auth
    $(q "$RAY") job submit --working-dir . -- python -m guide_ray.fleet jobs/demo/ids.csv \\
        --generator dcgan-digiface64 --config jobs/configs/demo-cpu.yaml --out $(q "$repo/outputs/head-demo")
Stop it: cluster/local-head.sh stop   (or: make head-stop)
EOF
    ;;
stop)
    pids=$(head_pids)
    if [ -z "$pids" ]; then echo "cluster/local-head.sh: no Ray head of yours with its GCS on port $port"; exit 0; fi
    alive() { local p; for p in "$@"; do
        [ -e "/proc/$p" ] && [ "$(ps -o stat= -p "$p" 2>/dev/null | cut -c1)" != Z ] && echo "$p"; done; true; }
    # SIGTERM, then up to 10 s for them to exit (as `ray stop`)
    term() { local _; [ $# -eq 0 ] || kill -TERM "$@" 2>/dev/null || true
             for _ in $(seq 50); do [ -n "$(alive "$@")" ] || return 0; sleep 0.2; done; }
    named() { local p; for p in $pids; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" != "$1" ] || echo "$p"; done; }
    # The raylet first (it ends its workers and agents and leaves the GCS), the GCS last: the
    # dashboard and the monitors take the full grace period to exit once the GCS is gone.
    # shellcheck disable=SC2046
    term $(named raylet)
    # shellcheck disable=SC2046
    term $(for p in $(alive $pids); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = gcs_server ] || echo "$p"; done)
    # shellcheck disable=SC2046
    term $(alive $pids)
    # shellcheck disable=SC2046,SC2086
    left=$(alive $pids); [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
    echo "Stopped the Ray head on port $port ($(wc -w <<<"$pids") processes)."
    ;;
status)
    "$RAY" status --address="127.0.0.1:$port"
    ;;
esac
