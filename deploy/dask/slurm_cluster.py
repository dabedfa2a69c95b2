"""Start dask workers as SLURM jobs with dask-jobqueue and run a blocklin pipeline on them.

    pip install dask-jobqueue
    python deploy/dask/slurm_cluster.py examples/pipelines/lsa_weekly.yaml --jobs 4

The pipeline's inputs, outputs and work_dir must live on a filesystem every node
mounts (or an object store).
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs (2 workers each)")
    parser.add_argument("--queue", default="compute")
    args = parser.parse_args()

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(queue=args.queue, cores=8, processes=2, memory="64GiB",
                           walltime="02:00:00",
                           job_script_prologue=["export OMP_NUM_THREADS=1"])
    cluster.scale(jobs=args.jobs)
    try:
        from distributed import Client

        with Client(cluster) as client:
            client.wait_for_workers(2 * args.jobs, timeout=1800)
        # The CLI connects to the scheduler address for the run and disconnects after.
        return subprocess.call([sys.executable, "-m", "blocklin._cli", "run", args.spec,
                                "--address", cluster.scheduler_address])
    finally:
        cluster.close()


if __name__ == "__main__":
    raise SystemExit(main())
