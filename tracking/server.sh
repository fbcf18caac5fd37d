#!/usr/bin/env bash
# The MLflow tracking server that guide_ray's fleets and sweeps log to (see tracking/README.md).
#
#   tracking/server.sh [--host HOST] [--port PORT] [--dir DIR] [-- MORE_MLFLOW_SERVER_OPTIONS]
#
# Defaults: 127.0.0.1:5000; runs and registered models in DIR/mlflow.db (SQLite), artifacts in
# DIR/artifacts served to clients over HTTP; DIR = outputs/mlflow. The same settings as env vars:
# MLFLOW_HOST, MLFLOW_PORT, MLFLOW_DIR, MLFLOW_WORKERS (default 2). MLFLOW_BACKEND_STORE_URI and
# MLFLOW_ARTIFACTS_DESTINATION replace the SQLite file and the artifact folder (PostgreSQL, S3).
# MLFLOW names the mlflow executable (default: .venv/bin/mlflow if present, else mlflow on PATH).
set -euo pipefail

host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
dir=${MLFLOW_DIR:-outputs/mlflow}
while [ $# -gt 0 ]; do
    case "$1" in
        --host|--port|--dir)
            [ $# -ge 2 ] || { echo "tracking/server.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in --host) host=$2 ;; --port) port=$2 ;; --dir) dir=$2 ;; esac
            shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "tracking/server.sh: unknown option '$1' (options for mlflow server go after --)" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${MLFLOW:-}" ]; then
    if [ -x "$repo/.venv/bin/mlflow" ]; then MLFLOW=$repo/.venv/bin/mlflow; else MLFLOW=mlflow; fi
fi
command -v "$MLFLOW" >/dev/null || { echo "tracking/server.sh: '$MLFLOW' not found; run 'make install' or set MLFLOW" >&2; exit 2; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
backend=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$dir/mlflow.db}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$dir/artifacts}
shown=$host
[ "$host" = 0.0.0.0 ] && shown=$(hostname -f 2>/dev/null || hostname)

# MLflow 3's server-side job runners (GenAI trace and scorer jobs: several extra processes) serve
# nothing guide_ray logs; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true turns them back on.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

echo "MLflow server: store $backend, artifacts $artifacts"
echo "Point fleets and sweeps at it (UI at the same address):"
echo "    export MLFLOW_TRACKING_URI=http://$shown:$port"
exec "$MLFLOW" server --backend-store-uri "$backend" --artifacts-destination "$artifacts" --serve-artifacts \
    --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}" "$@"
