"""The Python-processor host (openeas.processor): packages, entry files, the process() answer
mapping, and a real processor process written the EAS way (no server, plain HTTP)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.processor.host import response
from openeas.processor.package import PackageError, find_entry, model_dir, unpack
from openeas.runtime import free_port
from tests.harness import wait_for

# A processor as EAS documents it: allspark.BaseProcessor, initialize(), process(data) ->
# (response, status), started by run() under __main__. It reads its model through
# get_model_path() and its model_config through get_model_config().
EAS_PROCESSOR = '''\
# -*- coding: utf-8 -*-
import json
import os
import allspark


class MyProcessor(allspark.BaseProcessor):
    """ MyProcessor is an example """

    def initialize(self):
        with open(os.path.join(self.get_model_path(), "scale.txt")) as f:
            self.scale = int(f.read())
        self.config = json.loads(self.get_model_config() or "{}")
        allspark.default_properties().put("rpc.keepalive", "10000")

    def process(self, data):
        req = json.loads(data)
        if req.get("x", 0) < 0:
            return json.dumps({"error": "negative"}).encode(), 400
        return json.dumps({"y": req["x"] * self.scale, "tag": self.config.get("tag"),
                           "cwd_writable": os.access(".", os.W_OK)}).encode(), 0


if __name__ == "__main__":
    runner = MyProcessor(worker_threads=10)
    runner.run()
'''


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tar_gz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for rel, text in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    return path


def zip_file(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, text in files.items():
            z.writestr(rel, text)
    return path


@pytest.mark.parametrize(
    ("make", "entry", "found"),
    [
        (lambda t: write_package(t / "d", {"app.py": ""}), "app.py", "app.py"),
        (lambda t: write_package(t / "d", {"app.py": ""}), "./app.py", "app.py"),
        (lambda t: write_package(t / "d", {"src/app.py": "", "src/util.py": ""}), "src/app.py", "src/app.py"),
        (lambda t: tar_gz(t / "p.tar.gz", {"demo/app.py": "", "demo/model.py": ""}), "app.py", "demo/app.py"),
        (lambda t: zip_file(t / "p.zip", {"main.py": ""}), "main.py", "main.py"),
        (lambda t: write_package(t / "d", {"only.tgz": ""}) and tar_gz(t / "d" / "only.tgz", {"x/app.py": ""}).parent,
         "app.py", "x/app.py"),
    ],
    ids=["directory", "dot-slash", "subfolder", "tar-gz-with-top-folder", "zip", "folder-holding-one-archive"],
)  # fmt: skip
def test_package_is_unpacked_writable_and_its_entry_found(tmp_path: Path, make: Any, entry: str, found: str):
    src = make(tmp_path)
    root = unpack(src, tmp_path / "work" / "processor")
    path = find_entry(root, entry)
    assert path.relative_to(root).as_posix() == found
    path.write_text("# a processor may write next to its code")


@pytest.mark.parametrize(
    ("files", "entry", "error"),
    [
        ({"app.py": "", "b.py": ""}, "main.py", "processor_entry 'main.py': not in the processor package (its Python "
                                                "files: app.py, b.py)"),
        ({"a/app.py": "", "b/app.py": ""}, "app.py", "processor_entry 'app.py': found more than once (a/app.py, b/app.py); write its "
                                                      "folder too"),
        ({"app.py": ""}, "../app.py", "processor_entry '../app.py': must be a file path inside the processor package"),
    ],
    ids=["missing", "ambiguous", "outside"],
)  # fmt: skip
def test_entry_errors_say_what_is_there(tmp_path: Path, files: dict[str, str], entry: str, error: str):
    root = unpack(write_package(tmp_path / "d", files), tmp_path / "w")
    with pytest.raises(PackageError) as exc:
        find_entry(root, entry)
    assert str(exc.value) == error


@pytest.mark.parametrize("member", ["../evil.py", "/etc/evil.py"], ids=["dotdot", "absolute"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_members_outside_the_package_are_refused(tmp_path: Path, member: str, kind: str):
    make = zip_file if kind == "zip" else tar_gz
    archive = make(tmp_path / f"p.{kind}", {"app.py": "", member: "x"})
    with pytest.raises(PackageError, match="would be written outside the package folder"):
        unpack(archive, tmp_path / "w")
    assert not (tmp_path / "evil.py").exists()


def test_model_archive_is_extracted_and_a_folder_is_used_as_it_is(tmp_path: Path):
    folder = write_package(tmp_path / "m", {"scale.txt": "2"})
    assert model_dir(folder, tmp_path / "x") == folder
    packed = tar_gz(tmp_path / "model.tar.gz", {"scale.txt": "3"})
    assert (model_dir(packed, tmp_path / "model") / "scale.txt").read_text() == "3"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ((b"ok", 0), (b"ok", 200)),  # EAS's success code
        ((b"ok", 200), (b"ok", 200)),
        (("text", 201), (b"text", 201)),
        ((b"bad", 400), (b"bad", 400)),
        ((0.25, 0), (b"0.25", 200)),  # a number: its str (the PAI-EAS tutorial returns a float)
        (({"a": 1}, 0), (b'{"a": 1}', 200)),
        ((None, None), (b"", 200)),
        (b"just bytes", (b"just bytes", 200)),  # a single value: 200
        ((b"x", 1000), (b"processor returned status 1000: expected an HTTP code or 0", 500)),
        ((b"x", "200"), (b"processor returned status '200': expected an HTTP code or 0", 500)),
    ],
    ids=["zero", "200", "str-201", "400", "float", "dict", "nones", "single", "bad-code", "str-code"],
)
def test_process_result_to_http(result: Any, expected: tuple[bytes, int]):
    assert response(result) == expected


def test_a_processor_written_the_eas_way_serves(tmp_path: Path):
    pkg = tar_gz(tmp_path / "proc.tar.gz", {"demo/app.py": EAS_PROCESSOR})
    model = write_package(tmp_path / "model", {"scale.txt": "3"})
    port = free_port()
    work = tmp_path / "replica"
    work.mkdir()
    cmd = [sys.executable, "-m", "openeas.processor", "--path", str(pkg), "--entry", "app.py",
           "--model-path", str(model), "--port", str(port)]  # fmt: skip
    env = {**__import__("os").environ, "OPENEAS_MODEL_CONFIG": '{"tag": "t1"}'}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.post(url, data=b'{"x": 1}', timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout_s=30, what="the processor to listen")
        r = requests.post(url + "/any/sub/path", data=json.dumps({"x": 4}), timeout=5)
        assert (r.status_code, r.json()) == (200, {"y": 12, "tag": "t1", "cwd_writable": True})
        r = requests.post(url, data=b'{"x": -1}', timeout=5)
        assert (r.status_code, r.json()) == (400, {"error": "negative"})
        r = requests.post(url, data=b"not json", timeout=5)
        assert r.status_code == 400 and r.text.startswith("JSONDecodeError: ")
        assert requests.get(url, timeout=5).status_code == 405
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "initializing MyProcessor (10 worker threads)" in out
    assert (work / "processor" / "demo" / "app.py").is_file()  # unpacked in the replica's folder


def test_an_entry_without_a_main_block_is_served_by_its_one_processor_class(tmp_path: Path):
    src = EAS_PROCESSOR.split('if __name__ == "__main__":')[0]
    pkg = write_package(tmp_path / "pkg", {"app.py": src})
    model = write_package(tmp_path / "model", {"scale.txt": "5"})
    port = free_port()
    cmd = [sys.executable, "-m", "openeas.processor", "--path", str(pkg), "--entry", "app.py",
           "--model-path", str(model), "--port", str(port), "--workdir", str(tmp_path / "w")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def answer() -> Any:
            try:
                return requests.post(f"http://127.0.0.1:{port}", data=b'{"x": 2}', timeout=2).json()
            except requests.ConnectionError:
                return None

        assert wait_for(answer, timeout_s=30, what="the processor")["y"] == 10
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_a_broken_package_exits_with_the_reason(tmp_path: Path):
    pkg = write_package(tmp_path / "pkg", {"app.py": ""})
    r = subprocess.run(
        [sys.executable, "-m", "openeas.processor", "--path", str(pkg), "--entry", "main.py", "--port", "1",
         "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "openeas.processor: processor_entry 'main.py': not in the processor package" in r.stderr
