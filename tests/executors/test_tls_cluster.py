"""A TLS dask cluster started with the dask CLI and certificates made here: security
reaches the Client from compute(security=...), the spec and the CLI flags."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.executors.dask import cluster_security
from blocklin.testing.helpers import free_ports

DASK = str(Path(sys.executable).with_name("dask"))


def _certificates(folder: Path) -> dict[str, str]:
    """A self-signed CA and a certificate it signs for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blocklin test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    if not os.path.exists(DASK) and shutil.which("dask") is None:
        pytest.skip("the dask CLI is not installed")
    folder = tmp_path_factory.mktemp("tls")
    certs = _certificates(folder)
    tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    port = free_ports()[0]
    address = f"tls://127.0.0.1:{port}"
    procs = [subprocess.Popen([DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0", *tls],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.5)
        procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1",
                                       "--dashboard-address", ":0", *tls],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        sec = cluster_security(certs["ca"], certs["cert"], certs["key"])
        with Client(address, security=sec, timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
        yield address, certs
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_compute_with_security_on_a_tls_cluster(tls_cluster: tuple[str, dict[str, str]],
                                                tmp_path: Path) -> None:
    address, certs = tls_cluster
    x = np.random.default_rng(3).normal(size=(300, 5))
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    sec = cluster_security(certs["ca"], certs["cert"], certs["key"])
    (g,) = bl.compute(bl.ops.gram(X), address=address, security=sec,
                      work_dir=str(tmp_path / "work"))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)


def test_cli_and_spec_tls_settings_reach_the_cluster(tls_cluster: tuple[str, dict[str, str]],
                                                     tmp_path: Path) -> None:
    address, certs = tls_cluster
    x = np.random.default_rng(4).normal(size=(300, 5))
    bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    spec = {"name": "t", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"g": {"step": "g"}}, "output_dir": "out"}
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(spec))
    res = run_cli("run", "cli.yaml", "--address", address, "--tls-ca-file", certs["ca"],
                  "--tls-cert", certs["cert"], "--tls-key", certs["key"], "--json",
                  cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    got = np.load(tmp_path / "out" / "g.npz")
    np.testing.assert_allclose(got[got.files[0]], x.T @ x, rtol=1e-12)

    spec_tls = {**spec, "output_dir": "out2",
                "executor": {"address": address, "tls_ca_file": certs["ca"],
                             "tls_cert": certs["cert"], "tls_key": certs["key"]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_tls))
    res = run_cli("run", "spec.yaml", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr

    # Without certificates: a clear error naming the flags, not "TLS expects a ssl_context".
    res = run_cli("run", "cli.yaml", "--address", address, cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "no certificates" in res.stderr and "--tls-ca-file" in res.stderr
    assert "ssl_context" not in res.stderr


def test_svd_steps_and_entry_points_reach_a_tls_cluster(
        tls_cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """randomized_svd, pca and svd_update take the cluster's TLS settings, and a
    pipeline's SVD step gets the CLI's (before: a tls:// address without them)."""
    address, certs = tls_cluster
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 8)) @ np.diag([9.0, 7, 5, 3, 2, 1, 0.5, 0.1])
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    sec = cluster_security(certs["ca"], certs["cert"], certs["key"])
    s_ref = np.linalg.svd(x, compute_uv=False)
    res = bl.ops.randomized_svd(X, 3, n_iter=4, address=address, security=sec,
                                connect_timeout=30, work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(res.s, s_ref[:3], rtol=1e-8)
    xc = x - x.mean(0)
    pc = bl.ops.pca(X, 2, n_iter=4, address=address, security=sec,
                    work_dir=str(tmp_path / "w2"))
    np.testing.assert_allclose(pc.s, np.linalg.svd(xc, compute_uv=False)[:2], rtol=1e-8)

    spec = {"name": "t", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "svd", "op": "randomized_svd", "inputs": {"A": "X"},
                       "params": {"k": 3, "n_iter": 4}}],
            "outputs": {"svd": {"step": "svd"}}, "output_dir": "out"}
    (tmp_path / "svd.yaml").write_text(yaml.safe_dump(spec))
    res_cli = run_cli("run", "svd.yaml", "--address", address, "--tls-ca-file", certs["ca"],
                      "--tls-cert", certs["cert"], "--tls-key", certs["key"], "--json",
                      cwd=tmp_path, timeout=180)
    assert res_cli.returncode == 0, res_cli.stderr
    got = np.load(tmp_path / "out" / "svd.npz")
    np.testing.assert_allclose(got["singular_values"], s_ref[:3], rtol=1e-8)
