"""deploy/spark: the submit script's command line and its Spark properties file."""

from __future__ import annotations

import py_compile
import shlex
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "spark"
SUBMIT = DEPLOY / "submit.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SUBMIT), *args], capture_output=True, text=True,
                          timeout=30, check=False)


def test_help() -> None:
    res = _run("--help")
    assert res.returncode == 0
    assert res.stdout.startswith("usage: submit.sh") and "--py-files" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--bogus",), "unknown option --bogus"),
    ((), "missing the driver script"),
    (("no/such/driver.py",), "no driver script"),
])
def test_bad_command_lines(args: tuple[str, ...], message: str) -> None:
    res = _run(*args)
    assert res.returncode == 2
    assert message in res.stderr


def test_dry_run_ships_the_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "blocklin-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    res = _run("--dry-run", "--master", "spark://10.0.0.5:7077", "--wheel", str(wheel),
               "--archive", "env.tar.gz", "--spark-submit", "/opt/spark/bin/spark-submit",
               str(DEPLOY / "example_gram.py"), "A.zarr", "work", "out.npy")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    assert argv[0] == "/opt/spark/bin/spark-submit"
    assert argv[argv.index("--master") + 1] == "spark://10.0.0.5:7077"
    assert argv[argv.index("--py-files") + 1] == str(wheel)
    assert argv[argv.index("--archives") + 1] == "env.tar.gz#blenv"
    assert argv[argv.index("--properties-file") + 1] == str(DEPLOY / "spark-defaults.conf")
    assert argv[-4:] == [str(DEPLOY / "example_gram.py"), "A.zarr", "work", "out.npy"]


def test_properties_file_parses() -> None:
    props = {}
    for line in (DEPLOY / "spark-defaults.conf").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split(None, 1)
        assert key.startswith("spark."), key
        props[key] = value.strip()
    assert int(props["spark.task.maxFailures"]) >= 2
    assert props["spark.executor.pyspark.memory"].endswith("g")


def test_example_driver_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(DEPLOY / "example_gram.py"), cfile=str(tmp_path / "x.pyc"),
                       doraise=True)
