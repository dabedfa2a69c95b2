#!/usr/bin/env bash
# The GPU checks of issue 15 as one script, for a machine with a CUDA GPU and CuPy:
# the gpu-marked tests, then the benchmark (2,000,000 x 500, float64 and float32).
# Each step is bounded so the whole fits a short device lease; the table goes to $OUT.
#   ROWS=2000000 REPEAT=2 OUT=gpu_results.md benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROWS=${ROWS:-2000000}
REPEAT=${REPEAT:-2}
OUT=${OUT:-$PWD/gpu_results.md}
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
"$PY" -c "import cupy; print('CuPy', cupy.__version__, '-', cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    tests/ops/test_array_namespace.py tests/executors/test_dask.py
cd benchmarks
timeout "${BENCH_TIMEOUT:-1500}" "$PY" bench_gpu.py --rows "$ROWS" --cols 500 \
    --repeat "$REPEAT" --out "$OUT"
