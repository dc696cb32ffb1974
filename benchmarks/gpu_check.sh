#!/usr/bin/env bash
# The GPU half of issue 6, as one script for a machine with a CUDA GPU (e.g. the `device`
# tool's): installs CuPy, runs the backend tests on it, and times the large forward.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (writes OUT_DIR/gpu-tests.txt, gpu-bench.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q -e ".[gpu,test]"
python -c "import cupy; print('CuPy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
# every backend test, CuPy included; -rs lists anything still skipped, with its reason
python -m pytest tests/test_backend.py tests/test_backend_cli.py -rs 2>&1 | tee "$out/gpu-tests.txt"
# the issue's figure: Residual SSM forward, batch 1000, L = 65536, CuPy vs the NumPy cores
python cli.py bench --only backend_forward --backend cupy --backend-size 1000x65536 --json-out "$out/gpu-bench.json" 2>&1 \
    | tee "$out/gpu-bench.txt"
