#!/usr/bin/env bash
# The chaos benchmark (bench/chaos.py): writes docs/reliability.md.
#
#   ./bench/chaos.sh                    10 minutes, as docs/reliability.md reports
#   ./bench/chaos.sh --duration 120     a short run
#
# Runs inside a private network namespace with only loopback (re-executes itself under
# `unshare -rn`), after building the project venv if it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "$(ip -o link show | awk -F': ' '$2 != "lo"')" ]; then
    if [ -n "${CHAOS_IN_NETNS:-}" ]; then
        echo "chaos.sh: still see non-loopback interfaces inside the namespace" >&2
        exit 1
    fi
    [ -x "$ROOT/.venv/bin/herdsman" ] || make -C "$ROOT" .venv/.installed
    export CHAOS_IN_NETNS=1
    # shellcheck disable=SC2016
    exec unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' "${BASH_SOURCE[0]}" "$@"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m bench.chaos --invocation "./bench/chaos.sh${*:+ $*}" "$@"
