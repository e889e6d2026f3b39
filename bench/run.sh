#!/usr/bin/env bash
# The benchmark: engine floor vs herdsman (1 and N workers) vs SMG, written to docs/benchmarks.md.
#
#   ./bench/run.sh            default run (~10 minutes, ~18 with aiperf)
#   ./bench/run.sh --quick    smoke run (~2.5 minutes, ~3.5 with aiperf); also BENCH_MODE=quick
#   ./bench/run.sh --soak     long run at c=64 recording memory; BENCH_SOAK_SECONDS per gateway
#                             (default 1200)
#   ./bench/run.sh --http-servers   herdsman's HTTP server vs uvicorn vs granian (~9 minutes,
#                             BENCH_ROUNDS=2 rounds); writes only that section of docs/benchmarks.md
#   BENCH_TARGETS=herdsman-w1,smg ./bench/run.sh   only some targets (floor, herdsman-wN, smg;
#                                                  herdsman-inline, --start-method inline, only
#                                                  when named)
#   BENCH_HERDSMAN_ARGS='--tokenizer-cache on'     extra flags for the herdsman targets
#   BENCH_DOCS=/tmp/report.md                      write the report elsewhere
#   BENCH_CLIENTS=own,aiperf                       load clients (default both; aiperf 0.13.0
#                                                  measures the standard workload too, quick and
#                                                  default mode only; BENCH_CLIENTS=own skips it)
#   BENCH_AIPERF_LEVELS=64                         aiperf at only these concurrency levels
#
# Everything runs inside a private network namespace with only loopback: the script first
# prepares what needs the network (the project venv, SMG and aiperf in cache venvs), then
# re-executes itself under `unshare -rn`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/bench/run.sh"
MODE="${BENCH_MODE:-default}"
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        --soak) MODE=soak ;;
        --http-servers) MODE=http ;;
        --default) MODE=default ;;
        -h | --help)
            sed -n '2,19p' "$SELF"
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument $arg" >&2
            exit 2
            ;;
    esac
done

SMG_VERSION=1.13.0
SMG_VENV="${BENCH_SMG_VENV:-$HOME/.cache/herdsman-bench/smg-venv}"
AIPERF_VERSION=0.13.0
AIPERF_VENV="${BENCH_AIPERF_VENV:-$HOME/.cache/herdsman-bench/aiperf-venv}"
CLIENTS="${BENCH_CLIENTS:-own,aiperf}"
PYTHON="$ROOT/.venv/bin/python"

isolated() {
    # Isolated when loopback is the only interface.
    [ -z "$(ip -o link show | awk -F': ' '$2 != "lo"')" ]
}

if ! isolated; then
    if [ -n "${BENCH_IN_NETNS:-}" ]; then
        echo "run.sh: still see non-loopback interfaces inside the namespace" >&2
        exit 1
    fi
    # Network is still available here: install what the run needs.
    if [ ! -x "$ROOT/.venv/bin/herdsman" ]; then
        make -C "$ROOT" .venv/.installed
    fi
    # The HTTP servers compared with herdsman's own: the exact pins of pyproject's bench extra.
    mapfile -t bench_pins < <("$PYTHON" -c 'import sys, tomllib; print("\n".join(
        tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["bench"]))' \
        "$ROOT/pyproject.toml")
    "$ROOT/.venv/bin/pip" install --quiet "${bench_pins[@]}"
    installed="$("$SMG_VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("smg"))' 2>/dev/null || true)"
    # The HTTP server comparison runs no SMG.
    if [ "$MODE" != http ] && [ "$installed" != "$SMG_VERSION" ]; then
        echo "run.sh: installing smg==$SMG_VERSION into $SMG_VENV" >&2
        python3 -m venv "$SMG_VENV"
        "$SMG_VENV/bin/pip" install --quiet "smg==$SMG_VERSION"
    fi
    # The second load client, for the standard workload in quick and default mode. Without it
    # the suite runs herdsman's own client alone and says so.
    installed="$("$AIPERF_VENV/bin/python" -c \
        'import importlib.metadata as m; print(m.version("aiperf"))' 2>/dev/null || true)"
    if [[ ",$CLIENTS," == *",aiperf,"* ]] && { [ "$MODE" = quick ] || [ "$MODE" = default ]; } &&
        [ "$installed" != "$AIPERF_VERSION" ]; then
        echo "run.sh: installing aiperf==$AIPERF_VERSION into $AIPERF_VENV" >&2
        if ! { python3 -m venv "$AIPERF_VENV" &&
            "$AIPERF_VENV/bin/pip" install --quiet "aiperf==$AIPERF_VERSION"; }; then
            echo "run.sh: could not install aiperf; the run goes on without it" >&2
        fi
    fi
    export BENCH_IN_NETNS=1 BENCH_MODE="$MODE"
    export BENCH_INVOCATION="${BENCH_INVOCATION:-./bench/run.sh $*}"
    # shellcheck disable=SC2016
    exec unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' "$SELF" "$@"
fi

cd "$ROOT"
OUT_DIR="$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-$MODE"
mkdir -p "$OUT_DIR"
SUITE_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$SUITE_PID" ] && kill -0 "$SUITE_PID" 2>/dev/null; then
        kill -TERM "$SUITE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SUITE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SUITE_PID" 2>/dev/null || true
    fi
    # Servers live in their own process groups; the suite lists the ones still running.
    if [ -f "$OUT_DIR/server-pids" ]; then
        while read -r pgid; do
            [ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
        done <"$OUT_DIR/server-pids"
    fi
    exit "$status"
}
trap cleanup EXIT INT TERM

"$PYTHON" -m bench.suite --mode "$MODE" --smg "$SMG_VENV/bin/smg" --out-dir "$OUT_DIR" \
    --aiperf "$AIPERF_VENV/bin/aiperf" --clients "$CLIENTS" &
SUITE_PID=$!
wait "$SUITE_PID"
