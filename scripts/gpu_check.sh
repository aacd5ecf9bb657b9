#!/usr/bin/env bash
# GPU check of the deformable-attention kernels (about 2-4 minutes on an H100).
#
#   bash scripts/gpu_check.sh [KIND]
#
# On a CUDA machine: runs the GPU tests (pytest -m gpu tests/test_kernels.py), then
# compares and times numba_cuda against the grid_sample reference at the COCO encoder
# and decoder shapes (B=2) and writes benchmarks/results/gpu_<KIND>_<date>.json.
# KIND defaults to $GPU_KIND, else a name made from the device name.
# Without a GPU: runs the same Python code as a dry run (tiny shapes, CUDA simulator),
# says so, and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
# Never let the repository root shadow installed packages (the folder kernels/ is
# installed as ddetr_lib.kernels, not as a top-level module).
export PYTHONSAFEPATH=1

if ! "$PY" -c "import ddetr_lib" >/dev/null 2>&1; then
    echo "== installing the project (pip install -e . --no-deps)"
    "$PY" -m pip install -e . --no-deps -q || { echo "gpu_check: install failed" >&2; exit 1; }
fi

KIND="${1:-${GPU_KIND:-}}"
KIND_ARGS=()
if [ -n "$KIND" ]; then KIND_ARGS=(--kind "$KIND"); fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    TMP="$(mktemp -d)"
    echo "== no CUDA GPU here: dry run of the GPU check (CPU, tiny shapes, CUDA simulator)"
    if ! "$PY" benchmarks/gpu_check.py --dry-run --out "$TMP" "${KIND_ARGS[@]}"; then
        echo "gpu_check: the dry run FAILED" >&2
        exit 1
    fi
    echo "gpu_check: no CUDA device found, so only the dry run ran (output in $TMP); nothing was measured."
    exit 0
fi

STATUS=0
echo "== $("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
if "$PY" -c "import pytest" >/dev/null 2>&1; then
    echo "== GPU tests"
    timeout 150 "$PY" -m pytest -m gpu tests/test_kernels.py -q -p no:cacheprovider || STATUS=1
else
    echo "== pytest is not installed: skipping the GPU tests"
fi

echo "== COCO shapes: numba_cuda vs torch reference"
timeout 180 "$PY" benchmarks/gpu_check.py --out benchmarks/results "${KIND_ARGS[@]}" || STATUS=1
exit $STATUS
