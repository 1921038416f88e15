#!/usr/bin/env bash
# Start `gpu-cluster cluster` under nohup, logging to logs/clustering-<timestamp>.log.
#
#   ./perform-clustering.sh DB [cluster options]      e.g. ./perform-clustering.sh panic.sqlite -d 100
#
# Writes the PID of the gpu-cluster process to logs/clustering.pid and refuses to start
# while that process is alive. A stale PID file (process gone) is replaced. When the run
# ends, its exit status and a final summary line are appended to the log.
# Environment: GPU_CLUSTER (command to run; default: ./.venv/bin/gpu-cluster if present,
# else gpu-cluster on PATH), LOG_DIR (default: logs).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${GPU_CLUSTER:-}" ]; then
    if [ -x "$here/.venv/bin/gpu-cluster" ]; then GPU_CLUSTER="$here/.venv/bin/gpu-cluster"
    else GPU_CLUSTER=gpu-cluster; fi
fi
command -v "$GPU_CLUSTER" >/dev/null 2>&1 || {
    echo "perform-clustering: '$GPU_CLUSTER' not found; run scripts/demo.sh or pip install the project" >&2
    exit 2
}

log_dir="${LOG_DIR:-logs}"
mkdir -p "$log_dir"
pid_file="$log_dir/clustering.pid"

if [ -f "$pid_file" ]; then
    old_pid="$(cat "$pid_file" 2>/dev/null || true)"
    if [ -n "$old_pid" ] && kill -0 "$old_pid" 2>/dev/null \
        && ps -p "$old_pid" -o args= 2>/dev/null | grep -q "gpu.cluster"; then
        echo "perform-clustering: a run is already in progress (PID $old_pid, see $pid_file); not starting another" >&2
        exit 1
    fi
    echo "perform-clustering: removing stale PID file $pid_file (PID ${old_pid:-?} is not running)"
    rm -f "$pid_file"
fi

log="$log_dir/clustering-$(date +%Y%m%d-%H%M%S).log"
# The wrapper runs gpu-cluster as a child so it can record the child's exit status.
nohup bash -c '
    log=$1; pid_file=$2; shift 2
    echo "$(date "+%Y-%m-%d %H:%M:%S") perform-clustering: starting: $*"
    "$@" &
    child=$!
    echo "$child" > "$pid_file"
    trap "kill -TERM $child 2>/dev/null" TERM INT HUP
    rc=0; wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
    rm -f "$pid_file"
    echo "$(date "+%Y-%m-%d %H:%M:%S") perform-clustering: finished with exit status $rc"
    exit "$rc"
' perform-clustering "$log" "$pid_file" "$GPU_CLUSTER" cluster "$@" >"$log" 2>&1 < /dev/null &

for _ in $(seq 50); do [ -s "$pid_file" ] && break; sleep 0.1; done
echo "started gpu-cluster (PID $(cat "$pid_file" 2>/dev/null || echo '?'))"
echo "log:     $log"
echo "follow:  tail -f $log"
echo "stop:    kill \$(cat $pid_file)"
