"""Issue 18 §4 and §6 through the real API: a stress test whose data file is ``/dev/zero`` (the
server grew past 7 GB), a FIFO (the request hung) or a directory, or whose ``http.path`` carries
CR LF (written raw into the request line), is a 400 naming the field, answered at once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import service_spec
from tests.test_api_hardening import Api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with Api(tmp_path_factory.mktemp("stressapi") / "data") as a:
        assert a.call("POST", "/api/v1/services", json=service_spec("target", replicas=0)).status_code == 201
        yield a


def _fifo(tmp: Path) -> dict[str, Any]:
    os.mkfifo(tmp / "d.fifo")
    return {"data": {"path": str(tmp / "d.fifo")}}


@pytest.mark.parametrize(
    ("make_task", "expected"),
    [
        pytest.param(lambda t: {"data": {"path": "/dev/zero"}}, "data.path: /dev/zero is a device, not a regular file",
                     id="dev-zero"),
        pytest.param(_fifo, "data.path: {d}/d.fifo is a FIFO, not a regular file", id="fifo"),
        pytest.param(lambda t: {"data": {"path": str(t)}}, "data.path: {d} is a directory, not a regular file",
                     id="directory"),
        pytest.param(lambda t: {"http": {"path": "/v1/x\r\nX-Evil: 1"}},
                     "http.path: character '\\r' at position 5 is not allowed", id="path-crlf"),
    ],
)  # fmt: skip
def test_bad_stress_input_is_a_400_naming_the_field(
    api: Api, tmp_path: Path, make_task: Callable[[Path], dict[str, Any]], expected: str
) -> None:
    r = api.call("POST", "/api/v1/services/target/stress", json=make_task(tmp_path))
    assert r.status_code == 400, r.text
    errors = r.json()["error"]["errors"]
    assert any(e.startswith(expected.format(d=tmp_path)) for e in errors), errors
    assert api.call("GET", "/api/v1/stress").status_code == 200  # the API is still answering
