#!/usr/bin/env bash
# Start `gpu-cluster cluster` under nohup, logging to logs/clustering-<timestamp>.log.
#
#   ./perform-clustering.sh DB [cluster options]      e.g. ./perform-clustering.sh panic.sqlite -d 100
#
# First checks, in the foreground, that the run can start (`gpu-cluster cluster --check`:
# the options, the database opened for writing, the models, the device); if it cannot,
# prints why and exits non-zero without starting anything. Writes the PID of the
# gpu-cluster process to logs/clustering.pid and refuses to start while that process is
# alive (the PID file is claimed atomically, so two launches at once start one run). A
# stale PID file (process gone) is replaced. When the run ends, a summary line
# (gpu-cluster's own last word) and its exit status end the log.
# Environment: GPU_CLUSTER (command to run; default: ./.venv/bin/gpu-cluster if present,
# else gpu-cluster on PATH), LOG_DIR (default: logs).
set -euo pipefail

stamp() { date "+%Y-%m-%d %H:%M:%S"; }

summary() {  # the run's outcome in one line, from its log: LOG EXIT_STATUS
    local where result
    where="$(grep -E '(interrupted|stopped by a database error) during ' "$1" | tail -n 1 \
             | sed -E 's/^.* (ERROR|WARNING|INFO) //')" || true
    result="$(grep -E '^(done: |gpu-cluster: )' "$1" | tail -n 1)" || true
    echo "${result:-gpu-cluster ended without a summary (exit status $2); see the lines above}${where:+ ($where)}"
}

if [ "${1:-}" = "--wrapped-run" ]; then  # the nohup'd part: run, wait, record the outcome
    log=$2; pid_file=$3; shift 3
    echo "$(stamp) perform-clustering: starting: $*"
    "$@" &
    child=$!
    echo "$child" > "$pid_file.$$" && mv -f "$pid_file.$$" "$pid_file"  # atomic: never read empty
    trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
    rc=0; wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
    rm -f "$pid_file"
    echo "$(stamp) perform-clustering: summary: $(summary "$log" "$rc")"
    echo "$(stamp) perform-clustering: finished with exit status $rc"
    exit "$rc"
fi

usage() { sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }

here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${GPU_CLUSTER:-}" ]; then
    if [ -x "$here/.venv/bin/gpu-cluster" ]; then GPU_CLUSTER="$here/.venv/bin/gpu-cluster"
    else GPU_CLUSTER=gpu-cluster; fi
fi
have_cli() { command -v "$GPU_CLUSTER" >/dev/null 2>&1; }
not_found="perform-clustering: '$GPU_CLUSTER' not found; run scripts/demo.sh or pip install the project"

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    if have_cli; then echo; echo "cluster options:"; "$GPU_CLUSTER" cluster --help | sed -n '/^Options:/,$p' | tail -n +2; fi
    exit 0
fi
if [ $# -lt 1 ]; then
    usage >&2
    exit 2
fi
have_cli || { echo "$not_found" >&2; exit 2; }

# Preflight: a run that cannot start says so here, on the terminal, with a non-zero exit.
# (Not captured: if the database is locked, its waiting lines show as they come.)
rc=0; "$GPU_CLUSTER" cluster --check "$@" < /dev/null || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "perform-clustering: not started (the check above failed with exit status $rc)" >&2
    exit "$rc"
fi

log_dir="${LOG_DIR:-logs}"
mkdir -p "$log_dir"
pid_file="$log_dir/clustering.pid"

claim() {  # create the PID file holding this launcher's PID, atomically; fails if it exists
    local tmp="$pid_file.$$"
    echo "$$" > "$tmp"
    if ln "$tmp" "$pid_file" 2>/dev/null; then rm -f "$tmp"; return 0; fi
    rm -f "$tmp"
    return 1
}

refuse() {
    echo "perform-clustering: a run is already in progress (PID $1, see $pid_file); not starting another" >&2
    exit 1
}

if ! claim; then
    old_pid=""
    for _ in $(seq 20); do  # a PID file that exists but reads empty is being written: re-read
        old_pid="$(cat "$pid_file" 2>/dev/null || true)"
        { [ -n "$old_pid" ] || [ ! -e "$pid_file" ]; } && break
        sleep 0.05
    done
    if [ -n "$old_pid" ] && kill -0 "$old_pid" 2>/dev/null \
        && ps -p "$old_pid" -o args= 2>/dev/null | grep -q -E "gpu.cluster|perform-clustering"; then
        refuse "$old_pid"
    fi
    again="$(cat "$pid_file" 2>/dev/null || true)"
    if [ -e "$pid_file" ] && [ "$again" != "$old_pid" ]; then
        refuse "${again:-?}"  # it changed while we looked: a run is starting
    fi
    echo "perform-clustering: removing stale PID file $pid_file (PID ${old_pid:-?} is not running)"
    rm -f "$pid_file"
    claim || refuse "$(cat "$pid_file" 2>/dev/null || echo '?')"
fi

log="$log_dir/clustering-$(date +%Y%m%d-%H%M%S).log"
# The wrapper runs gpu-cluster as a child so it can record the child's exit status.
nohup bash "$0" --wrapped-run "$log" "$pid_file" "$GPU_CLUSTER" cluster "$@" >"$log" 2>&1 < /dev/null &

for _ in $(seq 50); do [ "$(cat "$pid_file" 2>/dev/null)" != "$$" ] && break; sleep 0.1; done
echo "started gpu-cluster (PID $(cat "$pid_file" 2>/dev/null || echo '?'))"
echo "log:     $log"
echo "follow:  tail -f $log"
echo "stop:    kill \$(cat $pid_file)"
