"""Which chunk codec makes a pass cheapest: compression ratio and read speed per codec.

For each codec, the same Gaussian matrix is stored by blocklin and read back (a) through
zarr's array API (``zarr.open_array(...)[:]``) and (b) through blocklin's block read
path (chunk bytes into reused buffers, checksum, in-place decode), with 1 and with all
threads. This is the measurement behind ``codec="auto"``.

Run: ``python benchmarks/bench_codecs.py [--rows 200000 --cols 500 --repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import zarr

import blocklin as bl
from _common import median_time, read_all_blocks


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols))
    gb = x.nbytes / 1e9
    print(f"{args.rows} x {args.cols} float64 Gaussian ({gb:.2f} GB), {threads} cores, "
          f"median of {args.repeat}\n")
    print(f"{'codec':<6} {'ratio':>6} {'zarr API GB/s':>14} {'blocklin 1 thr':>15} "
          f"{'blocklin all':>13}")
    for codec in ("none", "lz4", "zstd"):
        path = args.data / f"codec_{codec}.zarr"
        A = bl.from_array(x, path, codec=codec, overwrite=True)
        ratio = x.nbytes / stored_bytes(path)
        z = zarr.open_array(str(path), mode="r")
        t_zarr, _ = median_time(lambda z=z: z[:], args.repeat)
        t_one, _ = median_time(lambda A=A: read_all_blocks(A, 1), args.repeat)
        t_all, _ = median_time(lambda A=A: read_all_blocks(A, threads), args.repeat)
        print(f"{codec:<6} {ratio:>6.2f} {gb / t_zarr:>14.2f} {gb / t_one:>15.2f} "
              f"{gb / t_all:>13.2f}")
    auto = bl.from_array(x[:20_000], args.data / "codec_auto.zarr", overwrite=True)
    print(f"\ncodec='auto' picks {auto.meta.codec.compressor if auto.meta.codec else None} "
          "for this data (compression kept only if it saves >= 15%)")


if __name__ == "__main__":
    main()
