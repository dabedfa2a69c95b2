"""Window co-occurrence: blocklin's block pass against an in-memory numpy/scipy count.

Data: a seeded token stream of ``--tokens`` ids from a Zipf(1) vocabulary of
``--vocab`` words, documents ending every ~500 tokens at id 0, stored by blocklin as
a ``tokens × 1`` int64 column in blocks of ``--block`` tokens.

* ``blocklin``: ``bl.ops.cooccurrence_counts(T, window=w, vocab_size=V, boundary=0)``
  on the embedded threaded executor (sizing pass + counting pass when V² > 2²²).
* ``numpy``: the whole stream in memory, every pair at distance 1..w within a
  document (the same harmonic integer weights) as arrays of keys, ``np.unique`` and
  a scipy CSR: what a one-machine script does.

Each runs in its own process (peak RSS from ``ru_maxrss``); the two counts are
compared exactly.

Run: ``python benchmarks/bench_cooccurrence.py [--tokens 5000000 --vocab 30000 --window 5]``

Measured (shared 2-core box, embedded threads, counts equal exactly in both rows):

| tokens | blocks | distinct pairs | blocklin | numpy/scipy in memory |
|---|---|---|---|---|
| 2,000,000 | 8 × 250,000 | 6,968,974 | 7.97 s, 1,387 MiB | 6.89 s, 1,627 MiB |
| 10,000,000 | 10 × 1,000,000 | 23,978,402 | 63.7 s, 3,232 MiB | 41.4 s, 7,732 MiB |

blocklin generates each block's pairs twice (the sizing pass, then the counting pass:
vocabulary 30,000 > 2,048 needs data-sized parts), hence the slower time; its memory
is a block's pairs per thread plus C's nonzeros on the driver, where the in-memory
count holds every pair of the corpus.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _stream(tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab)
    ids = 1 + rng.choice(vocab - 1, size=tokens, p=p / p.sum())
    ids[rng.random(tokens) < 1 / 500] = 0
    return ids.astype(np.int64)


def _child(which: str, args: argparse.Namespace, folder: str) -> None:
    import scipy.sparse as sp

    t0 = time.perf_counter()
    if which == "blocklin":
        import blocklin as bl

        counts, _ = bl.ops.cooccurrence_counts(f"{folder}/T.zarr", window=args.window,
                                                   vocab_size=args.vocab, boundary=0,
                                                   work_dir=f"{folder}/work")
    else:
        from blocklin.ops._cooccurrence_pass import window_pairs

        ids = np.load(f"{folder}/ids.npy")
        keys, vals = window_pairs(ids, ids.size, args.vocab, args.window, "harmonic", 0, False)
        counts = sp.csr_matrix((vals, (keys // args.vocab, keys % args.vocab)),
                               shape=(args.vocab, args.vocab))
    seconds = time.perf_counter() - t0
    sp.save_npz(f"{folder}/{which}.npz", counts)
    print(json.dumps({"seconds": seconds, "nnz": int(counts.nnz),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--block", type=int, default=500_000)
    ap.add_argument("--child", default=None)
    ap.add_argument("--folder", default=None)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args, args.folder)
        return
    import scipy.sparse as sp

    import blocklin as bl

    with tempfile.TemporaryDirectory() as folder:
        ids = _stream(args.tokens, args.vocab)
        np.save(f"{folder}/ids.npy", ids)
        bl.from_array(ids[:, None], f"{folder}/T.zarr", chunks=(args.block, None))
        rows = {}
        for which in ("blocklin", "numpy"):
            out = subprocess.run([sys.executable, __file__, "--child", which, "--folder", folder,
                                  "--tokens", str(args.tokens), "--vocab", str(args.vocab),
                                  "--window", str(args.window)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{which} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
                return
            rows[which] = json.loads(out.stdout.strip().splitlines()[-1])
        a = sp.load_npz(Path(folder) / "blocklin.npz")
        b = sp.load_npz(Path(folder) / "numpy.npz")
        same = (a != b).nnz == 0
        print(f"{args.tokens:,} tokens, vocab {args.vocab:,}, window {args.window}, "
              f"blocks of {args.block:,}: {a.nnz:,} distinct pairs; equal: {same}")
        for which, r in rows.items():
            print(f"  {which:9s} {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mib']:8.0f} MiB")


if __name__ == "__main__":
    main()
