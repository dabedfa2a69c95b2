#!/usr/bin/env bash
# Start one dask worker process for blocklin.
#   deploy/dask/worker.sh tcp://SCHEDULER:8786 [THREADS] [MEMORY_LIMIT]
# blocklin checks, before a run, that memory_limit / threads per worker covers the
# plan's projected per-task memory, so size them together (e.g. 4 threads, 16GiB).
# Every worker must reach the pipeline's inputs, outputs and work_dir (a shared
# filesystem path or an object-store URL).
set -euo pipefail
SCHEDULER="${1:?usage: worker.sh tcp://SCHEDULER:8786 [THREADS] [MEMORY_LIMIT]}"
THREADS="${2:-2}"
MEMORY="${3:-8GiB}"
# One BLAS thread per task: blocklin runs one task per worker thread.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
exec dask worker "$SCHEDULER" --nthreads "$THREADS" --memory-limit "$MEMORY" \
    --name "blocklin-$(hostname)-$$"
