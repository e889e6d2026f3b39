#!/usr/bin/env bash
# The routing benchmark (bench/routing.py): writes docs/benchmarks-routing.md.
#
#   ./bench/routing.sh                  the full run (4 and 8 engines, both workloads, every
#                                       target; about 50 minutes)
#   ./bench/routing.sh --quick          the same plan with short windows (a smoke run)
#   ./bench/routing.sh --fleets 8 --workloads shared --targets round_robin,cache_aware
#   BENCH_PYTHON=/path/to/python        the interpreter to run it with (default: .venv's)
#
# Installs what needs the network first (the project venv if missing; smg==1.13.0 in
# ~/.cache/herdsman-bench/smg-venv, or $BENCH_SMG_VENV, as bench/run.sh does), then re-executes
# itself in a private network namespace with only loopback (`unshare -rn`): SMG and everything
# else then reach nothing but the local processes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/bench/routing.sh"
SMG_VERSION=1.13.0
SMG_VENV="${BENCH_SMG_VENV:-$HOME/.cache/herdsman-bench/smg-venv}"
PYTHON="${BENCH_PYTHON:-$ROOT/.venv/bin/python}"

for arg in "$@"; do
    if [ "$arg" = -h ] || [ "$arg" = --help ]; then
        sed -n '2,13p' "$SELF"
        exit 0
    fi
done

if [ -n "$(ip -o link show | awk -F': ' '$2 != "lo"')" ]; then
    if [ -n "${ROUTING_IN_NETNS:-}" ]; then
        echo "routing.sh: still see non-loopback interfaces inside the namespace" >&2
        exit 1
    fi
    if [ -z "${BENCH_PYTHON:-}" ] && [ ! -x "$ROOT/.venv/bin/herdsman" ]; then
        make -C "$ROOT" .venv/.installed
    fi
    installed="$("$SMG_VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("smg"))' 2>/dev/null || true)"
    if [ "$installed" != "$SMG_VERSION" ]; then
        echo "routing.sh: installing smg==$SMG_VERSION into $SMG_VENV" >&2
        python3 -m venv "$SMG_VENV"
        "$SMG_VENV/bin/pip" install --quiet "smg==$SMG_VERSION"
    fi
    export ROUTING_IN_NETNS=1
    export ROUTING_INVOCATION="./bench/routing.sh${*:+ $*}"
    # shellcheck disable=SC2016
    exec unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' "$SELF" "$@"
fi

cd "$ROOT"
RUN_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        kill -TERM "$RUN_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$RUN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$RUN_PID" 2>/dev/null || true
    fi
    # Engines and gateways run in their own process groups; the harness lists the live ones.
    for registry in "$ROOT"/bench/results/*-routing-*/server-pids; do
        [ -f "$registry" ] || continue
        while read -r pgid; do
            [ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
        done <"$registry"
    done
    exit "$status"
}
trap cleanup EXIT INT TERM

"$PYTHON" -m bench.routing --smg "$SMG_VENV/bin/smg" \
    --invocation "${ROUTING_INVOCATION:-./bench/routing.sh $*}" "$@" &
RUN_PID=$!
wait "$RUN_PID"
