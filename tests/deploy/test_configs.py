"""deploy/: every config parses and holds what its README promises; refresh.sh really runs."""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import blocklin as bl
from blocklin.pipelines.manifest import load_small

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MINE = [DEPLOY / "dask", DEPLOY / "schedule"]


def _yaml_files() -> list[Path]:
    return sorted(p for d in MINE for p in d.iterdir() if p.suffix in (".yml", ".yaml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)


def test_compose_services() -> None:
    doc = yaml.safe_load((DEPLOY / "dask" / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"scheduler", "worker", "pipeline"} <= set(services)
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert services["pipeline"]["command"][:2] == ["blocklin", "run"]
    assert (DEPLOY / "dask" / services["scheduler"]["build"]["dockerfile"].split("/")[-1]).exists()


def test_helm_and_jobqueue_values() -> None:
    helm = yaml.safe_load((DEPLOY / "dask" / "helm-values.yaml").read_text())
    assert helm["worker"]["replicas"] >= 1 and "image" in helm["scheduler"]
    jq = yaml.safe_load((DEPLOY / "dask" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    assert jq["cores"] % jq["processes"] == 0
    ast.parse((DEPLOY / "dask" / "slurm_cluster.py").read_text())


def _cron_fields(expr: str) -> list[str]:
    fields = expr.split()
    assert len(fields) == 5, expr
    return fields


def test_schedules_agree() -> None:
    spec = yaml.safe_load((ROOT / "examples" / "pipelines" / "lsa_weekly.yaml").read_text())
    expected = _cron_fields(spec["refresh"]["schedule"])
    lines = [ln for ln in (DEPLOY / "schedule" / "crontab").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1 and lines[0].split()[:5] == expected
    job = yaml.safe_load((DEPLOY / "schedule" / "cronjob.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "CronJob"
    assert _cron_fields(job["spec"]["schedule"]) == expected
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_systemd_units_parse() -> None:
    timer = configparser.ConfigParser(strict=True)
    timer.read_string((DEPLOY / "schedule" / "blocklin-refresh.timer").read_text())
    assert timer["Timer"]["OnCalendar"] == "Mon *-*-* 03:00:00"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # systemd allows repeated keys (Environment=); parse without the duplicate check.
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read_string((DEPLOY / "schedule" / "blocklin-refresh.service").read_text())
    assert service["Service"]["Type"] == "oneshot"
    assert "refresh.sh" in service["Service"]["ExecStart"]


@pytest.mark.parametrize("script", ["dask/scheduler.sh", "dask/worker.sh",
                                    "schedule/refresh.sh"])
def test_shell_scripts_are_valid_and_executable(script: str) -> None:
    path = DEPLOY / script
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_refresh_script_applies_inbox_once(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(200, 3))
    bl.from_array(x, tmp_path / "X.zarr", chunks=(64, None))
    spec = {"name": "cron", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"gram": {"step": "g"}}, "output_dir": "out",
            "refresh": {"input": "X"}, "report": False}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    wrapper = tmp_path / "blocklin"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m blocklin._cli \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "BLOCKLIN": str(wrapper)}
    subprocess.run([str(wrapper), "run", "p.yaml"], cwd=tmp_path, check=True,
                   capture_output=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    b = np.random.default_rng(1).normal(size=(30, 3))
    np.save(inbox / "week1.npy", b)
    script = str(DEPLOY / "schedule" / "refresh.sh")
    res = subprocess.run([script, "p.yaml", str(inbox)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert (inbox / "applied" / "week1.npy").exists() and not (inbox / "week1.npy").exists()
    full = np.vstack([x, b])
    np.testing.assert_allclose(load_small(tmp_path / "out" / "gram.npz")["value"],
                               full.T @ full, rtol=1e-12)
    # Locked by a live run: the script stops quietly and leaves the batch for later.
    np.save(inbox / "week2.npy", b)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import json
        import socket
        import time

        (tmp_path / "out" / ".blocklin.lock").write_text(json.dumps(
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time(),
             "command": "test"}))
        res = subprocess.run([script, "p.yaml", str(inbox)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert res.returncode == 0 and "busy" in res.stderr
    assert (inbox / "week2.npy").exists()
