"""S3 (a local moto server) beside local disk: from_array, gram and a LinearRegression fit.

    python benchmarks/bench_s3.py [--rows 200000] [--cols 50]

moto keeps objects in memory in one Python process, so its figures measure blocklin's
S3 request path (signing, HTTP, s3fs), not a real object store's bandwidth.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

import blocklin as bl
from blocklin.ml import LinearRegression


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _case(root: str, x: np.ndarray, y: np.ndarray, opts: dict[str, Any] | None) -> list[float]:
    chunks = (20_000, None)
    t_write = _timed(lambda: bl.from_array(x, f"{root}/X.zarr", chunks=chunks,
                                           storage_options=opts))
    bl.from_array(y[:, None], f"{root}/y.zarr", chunks=chunks, storage_options=opts)
    X = bl.open(f"{root}/X.zarr", storage_options=opts)
    Y = bl.open(f"{root}/y.zarr", storage_options=opts)
    t_gram = _timed(lambda: bl.compute(bl.ops.gram(X), work_dir=f"{root}/w1",
                                       storage_options=opts))
    model = LinearRegression(solver="normal", work_dir=f"{root}/w2", storage_options=opts)
    t_fit = _timed(lambda: model.fit(X, Y.to_numpy()[:, 0]))
    return [t_write, t_gram, t_fit]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols))
    y = x @ rng.standard_normal(args.cols) + rng.standard_normal(args.rows)
    mb = x.nbytes / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        local = _case(tmp, x, y, None)
    proc, url = _moto()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        urllib.request.urlopen(urllib.request.Request(f"{url}/{bucket}", method="PUT")).close()
        opts = {"key": "bench", "secret": "bench", "endpoint_url": url}
        s3 = _case(f"s3://{bucket}", x, y, opts)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{args.rows} x {args.cols} float64 ({mb:.0f} MiB), 20000-row blocks")
    print(f"{'':22s}{'local disk':>12s}{'S3 (moto)':>12s}")
    for name, a, b in zip(["from_array", "gram", "LinearRegression fit"], local, s3,
                          strict=True):
        print(f"{name:22s}{a:11.2f}s{b:11.2f}s")


if __name__ == "__main__":
    main()
