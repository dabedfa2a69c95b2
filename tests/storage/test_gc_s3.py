# ruff: noqa: F811  (the moto fixture ``s3`` is imported, then requested by name)
"""Intermediates and gc on an S3 work directory (moto's server: conditional PUTs for the
lock object, listings without a cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.storage.test_s3 import S3, _no_aws_environment, s3  # noqa: F401  (fixtures)

import blocklin as bl
from blocklin.storage.gc import collect_garbage
from blocklin.storage.leases import LOCK_KEY, Lease, work_lock
from blocklin.testing import inject_fault
from blocklin.testing.faults import InjectedFault


def _keys(s3: S3, url: str) -> list[str]:
    root = url.removeprefix("s3://")
    return sorted(p[len(root) + 1:] for p in s3.fs().find(root))


def test_s3_work_dir_is_emptied_kept_on_failure_and_collected(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    work = f"{bucket}/work"
    x = np.random.default_rng(3).standard_normal((600, 5))
    A = bl.from_array(x, f"{bucket}/A.zarr", chunks=(100, None), storage_options=s3.options)
    g = bl.ops.gram(A).compute(work_dir=work, storage_options=s3.options)
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert _keys(s3, work) == ["zarr.json"]  # no arrays, no lease, no lock object
    G = bl.ops.gram(A)
    with pytest.raises(InjectedFault):
        bl.compute(inject_fault(G, "gram/partial", tmp_path / "fault", succeed=3), work_dir=work,
                   num_workers=1, storage_options=s3.options)
    partial = G.plan.stages[0].output.name
    assert any(k.startswith(f"{partial}/.blocklin/done/") for k in _keys(s3, work))
    # A live lease keeps the partials from gc; then gc frees them.
    with Lease(work, [partial]):
        report = collect_garbage(work)
        assert partial not in [e.name for e in report.freed]
        assert any(k.startswith(f"{partial}/") for k in _keys(s3, work))
    report = collect_garbage(work, dry_run=True)
    assert [e.name for e in report.freed] == [partial] and report.freed_bytes > 0
    collect_garbage(work)
    assert _keys(s3, work) == ["zarr.json"]


def test_s3_lock_object_is_exclusive_and_released(s3: S3) -> None:
    from blocklin.errors import LockError
    from blocklin.storage.stores import register_storage_options

    work = f"{s3.bucket()}/work"
    register_storage_options(work, s3.options)
    with work_lock(work):
        assert LOCK_KEY in _keys(s3, work)
        with pytest.raises(LockError, match="stayed locked"), work_lock(work, wait=0.2):
            pass
    assert LOCK_KEY not in _keys(s3, work)
