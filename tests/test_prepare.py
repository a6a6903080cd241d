"""prepare.pythonRequirements (issue 12): installed once per node before the command, the second
replica finds them in the node cache; with real replicas and a real pip (a local wheel: no network)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from openeas.storage.pyreqs import PrepareError, ensure_requirements, requirements_key
from tests.harness import Server, service_spec


def make_wheel(folder: Path, name: str = "openeas_probe_pkg", version: str = "1.0") -> Path:
    """A minimal, valid pure-Python wheel (built by hand: pip installs it offline)."""
    files = {
        f"{name}/__init__.py": b"ANSWER = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return whl


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [(["x==1", "y"], ["y", "x==1"], True), (["x==1", ""], ["# c", "x==1"], True), (["x==1"], ["x==2"], False)],
    ids=["order-insensitive", "blanks-and-comments-ignored", "versions-differ"],
)
def test_requirements_key(a: list[str], b: list[str], same: bool):
    assert (requirements_key(a) == requirements_key(b)) is same


def test_install_once_then_hit(tmp_path: Path):
    whl = make_wheel(tmp_path)
    first = ensure_requirements(tmp_path / "cache", [str(whl)])
    assert not first.hit and (Path(first.path) / "openeas_probe_pkg" / "__init__.py").exists()
    second = ensure_requirements(tmp_path / "cache", [str(whl)])
    assert second.hit and second.path == first.path
    with pytest.raises(PrepareError, match="pip install failed"):
        ensure_requirements(tmp_path / "cache", [str(tmp_path / "missing-1.0-py3-none-any.whl")])


@pytest.mark.slow
def test_second_replica_does_not_reinstall(server: Server, tmp_path: Path):
    whl = make_wheel(tmp_path)
    check = "python -c 'import openeas_probe_pkg as p; assert p.ANSWER == 42 and \"/cache/python/\" in p.__file__'"
    spec = service_spec("prepared")
    spec["containers"][0]["command"] = f"{check} && exec " + spec["containers"][0]["command"]
    spec["containers"][0]["prepare"] = {"pythonRequirements": [str(whl)]}
    c = server.client
    c.deploy(spec)
    first = c.wait_ready("prepared", 1, timeout_s=120)["replicas"][0]
    assert first["phase_times"].keys() >= {"Fetching", "Preparing", "Starting"}
    c.scale("prepared", 2)
    detail = c.wait_ready("prepared", 2, timeout_s=120)
    second = next(r for r in detail["replicas"] if r["id"] != first["id"])
    p1, p2 = first["cold_start"]["prepare_s"], second["cold_start"]["prepare_s"]
    assert first["cold_start"]["prepare"]["cache_hit"] is False
    assert second["cold_start"]["prepare"]["cache_hit"] is True
    assert p2 <= 0.05 * p1, (p1, p2)  # the second found the packages in the node cache
