#!/usr/bin/env bash
# Create .venv (if missing) and install pdiff-hf with its test dependencies.
# On a machine without CUDA a CPU build of torch is installed first, so pip never pulls a multi-GB CUDA build;
# a torch that is already importable (e.g. your GPU build, with PDIFF_PYTHON pointing at its interpreter) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PDIFF_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ -n "${PDIFF_PYTHON:-}" ]; then
    # the interpreter's own packages (its torch build) stay visible inside the venv
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    # PDIFF_TORCH_INDEX_URL may point at PyTorch's CPU wheel index on machines without a local CPU wheel.
    python -m pip install -q "torch==${PDIFF_TORCH_VERSION:-2.13.0}" ${PDIFF_TORCH_INDEX_URL:+--index-url "$PDIFF_TORCH_INDEX_URL"}
  fi
fi
python -m pip install -q -e ".[test]"
