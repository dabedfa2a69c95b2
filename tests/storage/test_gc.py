"""``blocklin gc`` of a work directory: what it lists, frees and leaves alone (real zarr
arrays on disk, a lease held by another process, the CLI in a subprocess, S3 via moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.storage.gc import collect_garbage, scan_work_dir
from blocklin.storage.leases import LEASES, TRASH, Lease, flush_removals
from blocklin.testing import inject_fault
from blocklin.testing.faults import InjectedFault
from blocklin.testing.leases import lease_held_elsewhere

CLI = [sys.executable, "-m", "blocklin._cli"]
DAY = 86400.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BLOCKLIN_DEBUG": "0"}, check=False)


def _names(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name not in ("zarr.json", ".blocklin"))


def _bytes(work: Path) -> int:
    return sum(p.stat().st_size for p in work.rglob("*") if p.is_file())


def _age(path: Path, seconds: float) -> None:
    """Make every file under ``path`` look ``seconds`` old."""
    t = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t))


@pytest.fixture
def leftovers(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A work dir as users find it: kept intermediates, an interrupted compute's partial
    array, a matrix result, a killed fit's scratch folder, and a file blocklin did not
    write. Returns it and the kind of each entry by name."""
    x = np.random.default_rng(0).standard_normal((600, 8))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    work = tmp_path / "w"
    bl.ops.gram(A).compute(work_dir=str(work), keep_intermediates=True)
    P = bl.ops.matmul(A, np.ones((8, 2))).compute(work_dir=str(work))
    S = bl.ops.sketch(A, 20, seed=1)
    with pytest.raises(InjectedFault):
        bl.compute(inject_fault(S, "sketch/partial", tmp_path / "fault", succeed=3),
                   work_dir=str(work), num_workers=1)
    scratch = work / "input-X-abc123"
    bl.from_array(x, scratch / "X.zarr")
    (work / "notes.txt").write_text("mine")
    kinds = {e.name: e.kind for e in scan_work_dir(str(work))}
    assert kinds[Path(P.url).name] == "array"
    assert kinds[S.plan.stages[0].output.name] == "incomplete"
    assert kinds["input-X-abc123"] == "scratch" and kinds["notes.txt"] == "foreign"
    assert sorted(kinds.values()).count("array") == 3  # P, gram's partials and their sum
    return work, kinds


def test_dry_run_lists_and_frees_nothing(leftovers: tuple[Path, dict[str, str]]) -> None:
    work, kinds = leftovers
    before = (_names(work), _bytes(work))
    report = collect_garbage(str(work), dry_run=True)
    assert (_names(work), _bytes(work)) == before
    assert sorted(e.name for e in report.freed) == sorted(n for n, k in kinds.items()
                                                          if k != "foreign")
    assert [e.name for e, _ in report.kept] == ["notes.txt"]
    # What it would free is what is there, by bytes, and each entry says what it is.
    assert report.freed_bytes == before[1] - (work / "notes.txt").stat().st_size \
        - (work / "zarr.json").stat().st_size
    whats = {e.what for e in report.freed}
    assert {"gram/partial", "matmul/panel", "an estimator's scratch folder"} <= whats
    assert any("resume=True reuses it" in w for w in whats)
    assert "would free" in report.text() and "dry run: nothing removed" in report.text()


def test_gc_frees_what_no_one_uses_and_leaves_foreign_files(
        leftovers: tuple[Path, dict[str, str]]) -> None:
    work, _ = leftovers
    report = collect_garbage(str(work))
    assert _names(work) == ["notes.txt"]
    assert (work / "zarr.json").exists()  # still a work directory
    assert report.freed_bytes > 600 * 8 * 8  # the scratch copy of X at least
    assert collect_garbage(str(work)).freed == []


def test_older_than_keeps_recent_entries(leftovers: tuple[Path, dict[str, str]]) -> None:
    work, kinds = leftovers
    old = sorted(n for n, k in kinds.items() if k in ("array", "scratch"))
    for n in old:
        _age(work / n, 8 * DAY)
    report = collect_garbage(str(work), older_than=7 * DAY)
    assert sorted(e.name for e in report.freed) == old
    recent = [n for n, k in kinds.items() if k == "incomplete"]
    assert _names(work) == sorted([*recent, "notes.txt"])
    assert {why for e, why in report.kept if e.name in recent} == {"newer than 7.0 d"}


def test_entries_in_use_by_another_process_are_untouched(
        leftovers: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    work, kinds = leftovers
    held = sorted(n for n, k in kinds.items() if k in ("scratch", "incomplete"))
    with lease_held_elsewhere(work, held, command="a running fit") as proc:
        report = collect_garbage(str(work))
        assert _names(work) == sorted([*held, "notes.txt"])
        reasons = {e.name: why for e, why in report.kept}
        for n in held:
            assert reasons[n].startswith(f"in use by pid {proc.pid} on ")
            assert reasons[n].endswith("(a running fit)")
    collect_garbage(str(work))
    assert _names(work) == ["notes.txt"]


def test_a_compute_running_in_a_scratch_folder_keeps_it(tmp_path: Path) -> None:
    work = tmp_path / "w"
    inner = work / "truncated-svd-x1"
    bl.ops.gram(bl.from_array(np.ones((10, 2)), tmp_path / "A.zarr")).compute(
        work_dir=str(inner), keep_intermediates=True)
    (work / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {}}))
    with Lease(str(inner), ["a-0123456789abcdef0123"]):
        report = collect_garbage(str(work))
        assert _names(work) == ["truncated-svd-x1"] and report.freed == []
    assert [e.name for e in collect_garbage(str(work)).freed] == ["truncated-svd-x1"]


def test_gc_refuses_a_directory_that_is_not_a_work_dir(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    (home / "project" / "a.txt").write_text("keep me")
    with pytest.raises(InputValueError, match="not a blocklin work directory"):
        collect_garbage(str(home))
    assert (home / "project" / "a.txt").read_text() == "keep me"
    assert collect_garbage(str(tmp_path / "nowhere")).freed == []  # nothing there yet


def test_stale_leases_and_trash_are_removed(tmp_path: Path) -> None:
    work = tmp_path / "w"
    bl.ops.gram(bl.from_array(np.ones((10, 2)), tmp_path / "A.zarr")).compute(
        work_dir=str(work))
    flush_removals()  # the compute's own removals are done
    (work / LEASES).mkdir(parents=True, exist_ok=True)
    (work / LEASES / "dead.json").write_text(json.dumps(
        {"token": "t", "pid": 999_999_999, "host": os.uname().nodename, "started": 1.0,
         "renewed": 1.0, "command": "killed", "names": ["a-0123456789abcdef0123"]}))
    # What a process killed while deleting its removed arrays left behind.
    dropped = work / TRASH / "5f3c-a-0123456789abcdef0123"
    (dropped / "c" / "0").mkdir(parents=True)
    (dropped / "c" / "0" / "0").write_bytes(b"x" * 100)
    report = collect_garbage(str(work))
    assert sorted(e.kind for e in report.freed) == ["lease", "trash"]
    assert not (work / LEASES / "dead.json").exists() and not dropped.exists()


def test_cli_gc(leftovers: tuple[Path, dict[str, str]]) -> None:
    work, kinds = leftovers
    before = _bytes(work)
    dry = _cli("gc", str(work), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc: dict[str, Any] = json.loads(dry.stdout)
    assert doc["dry_run"] is True and _bytes(work) == before
    assert len(doc["freed"]) == len(kinds) - 1 and doc["freed_bytes"] > 0
    assert {"name", "kind", "bytes", "age_seconds", "what"} <= set(doc["freed"][0])
    text = _cli("gc", str(work), "--older-than", "1d")
    assert text.returncode == 0 and "freed 0 entries" in text.stdout
    assert "newer than 24.0 h" in text.stdout
    done = _cli("gc", str(work))
    assert done.returncode == 0 and _names(work) == ["notes.txt"]
    bad = _cli("gc", str(work), "--older-than", "soon")
    assert bad.returncode == 2 and "7d" in bad.stderr
