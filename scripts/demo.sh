#!/usr/bin/env bash
# The demo command: set up .venv if needed, then run p-diff end to end on MNIST-1D.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
pdiff-hf demo --output-dir "${1:-demo_output}" "${@:2}"
