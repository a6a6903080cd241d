"""Issue 18 §4 and §5: batch jobs read their input bounded and never destroy a file.

- the input must be a regular file (``/dev/zero``, a FIFO, a directory: a 400 naming ``input``);
- paths are compared normalised (``file:///x``, ``//x``, ``/./x``, a symlink, a hard link);
- the output or errors file may be neither the input nor each other, an existing one is replaced
  only with ``overwrite``, a directory never: each a 400 listing every problem;
- a job writes only names of its own: a pre-existing ``<output>.parts/`` folder and
  ``<output>.tmp`` survive a job that ran to its end.

Submission goes through the real API (FastAPI under uvicorn, a real SQLite store, tests
/test_api_hardening.Api); the job is run by the real BatchRunner against a small real HTTP server
standing in for the gateway (the files are under test here, not the routing).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from openeas.batch import BatchRunner
from openeas.batch.files import MAX_INPUT_BYTES, MAX_LINE_BYTES, output_problems, scan_input, url_key
from openeas.userfile import UserFileError
from tests.harness import service_spec, wait_for
from tests.test_api_hardening import Api

LINE = {"custom_id": "c", "method": "POST", "url": "/v1/x", "body": {}}


def write_input(path: Path, n: int) -> bytes:
    data = "".join(json.dumps({**LINE, "custom_id": f"c{i}"}) + "\n" for i in range(n)).encode()
    path.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with Api(tmp_path_factory.mktemp("batchapi") / "data") as a:
        assert a.call("POST", "/api/v1/services", json=service_spec("bsvc", replicas=0)).status_code == 201
        yield a


# --- one spelling for one file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["file://{d}/in.jsonl", "{d}//in.jsonl", "/{d}/in.jsonl", "{d}/./in.jsonl", "{d}/sub/../in.jsonl",
     "{d}/link.jsonl", "local://{d}/in.jsonl"],
    ids=["file-url", "double-slash", "leading-double-slash", "dot", "dot-dot", "symlink", "local-url"],
)  # fmt: skip
def test_every_spelling_of_a_local_path_is_one_key(tmp_path: Path, spelling: str) -> None:
    (tmp_path / "in.jsonl").write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    assert url_key(spelling.format(d=tmp_path)) == ("file", str(tmp_path / "in.jsonl"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("memory://bucket//a/./b.jsonl", "memory://bucket/a/b.jsonl", True),
        ("memory://bucket/a/b.jsonl", "memory://bucket/a/c.jsonl", False),
    ],
    ids=["remote-normalised", "remote-different"],
)
def test_remote_urls_are_normalised_as_text(a: str, b: str, same: bool) -> None:
    assert (url_key(a) == url_key(b)) is same


# --- the output and errors files, checked before the job starts --------------------------------------

# (output, errors, files made first, overwrite, every expected problem's start); "{d}" is the temp dir.
PROBLEMS = [
    pytest.param("file://{d}/in.jsonl", "{d}/e.jsonl", [], False,
                 ["output: file://{d}/in.jsonl is the input file", "output: file://{d}/in.jsonl exists"],
                 id="output-is-input-file-url"),
    pytest.param("{d}//./in.jsonl", "{d}/e.jsonl", [], True, ["output: {d}//./in.jsonl is the input file"],
                 id="output-is-input-dot-slashes-even-with-overwrite"),
    pytest.param("{d}/hard.jsonl", "{d}/e.jsonl", ["hardlink"], True, ["output: {d}/hard.jsonl is the input file"],
                 id="output-is-input-hard-link"),
    pytest.param("{d}/o.jsonl", "file://{d}/o.jsonl", [], False, ["errors: file://{d}/o.jsonl is the output file"],
                 id="errors-is-output"),
    pytest.param("{d}/o.jsonl", "{d}/./in.jsonl", [], True, ["errors: {d}/./in.jsonl is the input file"],
                 id="errors-is-input"),
    pytest.param("{d}/o.jsonl", "{d}/e.jsonl", ["o.jsonl"], False, ["output: {d}/o.jsonl exists; pass overwrite"],
                 id="output-exists"),
    pytest.param("{d}/o.jsonl", "{d}/e.jsonl", ["e.jsonl"], False, ["errors: {d}/e.jsonl exists; pass overwrite"],
                 id="errors-exists"),
    pytest.param("{d}/o.jsonl", "{d}/e.jsonl", ["o.jsonl", "e.jsonl"], True, [], id="both-exist-overwrite"),
    pytest.param("{d}/adir", "{d}/e.jsonl", ["adir/"], True, ["output: {d}/adir is a directory"],
                 id="output-is-a-directory"),
    pytest.param("{d}/adir", "{d}/adir", ["adir/"], False,
                 ["errors: {d}/adir is the output file", "output: {d}/adir is a directory",
                  "errors: {d}/adir is a directory"], id="everything-at-once"),
    pytest.param("{d}/new/o.jsonl", "{d}/new/e.jsonl", [], False, [], id="fresh-names"),
]  # fmt: skip


def _make(tmp: Path, names: list[str]) -> None:
    for name in names:
        if name == "hardlink":
            os.link(tmp / "in.jsonl", tmp / "hard.jsonl")
        elif name.endswith("/"):
            (tmp / name).mkdir()
        else:
            (tmp / name).write_text("keep me\n")


@pytest.mark.parametrize(("output", "errors", "made", "overwrite", "expected"), PROBLEMS)
def test_output_problems(
    tmp_path: Path, output: str, errors: str, made: list[str], overwrite: bool, expected: list[str]
) -> None:
    (tmp_path / "in.jsonl").write_text("x\n")
    _make(tmp_path, made)
    got = output_problems(
        str(tmp_path / "in.jsonl"), output.format(d=tmp_path), errors.format(d=tmp_path), overwrite
    )
    want = [e.format(d=tmp_path) for e in expected]
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert g.startswith(w), (g, w)


# --- the input, read bounded ---------------------------------------------------------------------


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "in.fifo")
    return str(tmp / "in.fifo")


@pytest.mark.parametrize(
    ("make_input", "expected"),
    [
        pytest.param(
            lambda t: "/dev/zero", "input: /dev/zero is a device, not a regular file", id="dev-zero"
        ),
        pytest.param(_fifo, "input: {d}/in.fifo is a FIFO, not a regular file", id="fifo"),
        pytest.param(lambda t: str(t), "input: {d} is a directory, not a regular file", id="directory"),
        pytest.param(lambda t: f"file://{t}/nope.jsonl", "input: no such file: {d}/nope.jsonl", id="missing"),
    ],
)
def test_an_input_that_is_not_a_regular_file_is_refused_before_any_read(
    tmp_path: Path, make_input: Callable[[Path], str], expected: str
) -> None:
    with pytest.raises(UserFileError) as err:
        scan_input(make_input(tmp_path), 10)
    assert str(err.value) == expected.format(d=tmp_path)


def test_a_line_over_the_cap_is_refused_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:  # 16 MiB + 1 of one line, then a good line never read
        f.write(b"x" * (MAX_LINE_BYTES + 1) + b"\n" + json.dumps(LINE).encode() + b"\n")
    with pytest.raises(UserFileError, match=r"input: .*long.jsonl line 1 is longer than 16 MiB"):
        scan_input(str(path), 10)


def test_the_documented_caps() -> None:
    assert (MAX_INPUT_BYTES, MAX_LINE_BYTES) == (1 << 30, 16 << 20)  # docs/batch.md, docs/RELIABILITY.md


def test_scan_counts_requests_and_cuts_shards(tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.jsonl", 5) + b"\n"  # a blank last line: a line, not a request
    (tmp_path / "in.jsonl").write_bytes(data)
    bounds, total = scan_input(f"file://{tmp_path}/in.jsonl", 2)
    assert total == 5 and [b[:2] for b in bounds] == [(1, 3), (3, 5), (5, 7)]
    assert bounds[-1][3] == len(data)


# --- through the API -----------------------------------------------------------------------------


def _submit(api: Api, **body: Any) -> Any:
    return api.call("POST", "/api/v1/batch", json={"service": "bsvc", **body})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"input": "/dev/zero"}, ["input: /dev/zero is a device, not a regular file"], id="dev-zero"),
        pytest.param({"input": "{d}/in.fifo"}, ["input: {d}/in.fifo is a FIFO, not a regular file"], id="fifo"),
        pytest.param({"output": "file://{d}/in.jsonl"},
                     ["output: file://{d}/in.jsonl is the input file", "output: file://{d}/in.jsonl exists"],
                     id="output-is-input"),
        pytest.param({"output": "{d}/o.jsonl", "errors": "{d}//o.jsonl"}, ["errors: {d}//o.jsonl is the output file"],
                     id="errors-is-output"),
        pytest.param({"output": "{d}/old.jsonl"}, ["output: {d}/old.jsonl exists; pass overwrite (--overwrite)"],
                     id="existing-output"),
        pytest.param({"output": "{d}/adir", "overwrite": True}, ["output: {d}/adir is a directory"], id="output-dir"),
    ],
)  # fmt: skip
def test_submit_refuses_with_every_problem(
    api: Api, tmp_path: Path, body: dict[str, str], expected: list[str]
) -> None:
    original = write_input(tmp_path / "in.jsonl", 3)
    os.mkfifo(tmp_path / "in.fifo")
    (tmp_path / "old.jsonl").write_text("keep me\n")
    (tmp_path / "adir").mkdir()
    full = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "fresh.jsonl"), **body}
    r = _submit(api, **{k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in full.items()})
    assert r.status_code == 400, r.text
    errors = r.json()["error"]["errors"]
    assert [e[: len(w.format(d=tmp_path))] for e, w in zip(errors, expected, strict=False)] == [
        w.format(d=tmp_path) for w in expected
    ] and len(errors) == len(expected), errors
    assert (tmp_path / "in.jsonl").read_bytes() == original
    assert (tmp_path / "old.jsonl").read_text() == "keep me\n"


def test_overwrite_replaces_an_existing_output_and_keeps_what_the_job_did_not_make(
    api: Api, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", 7)
    out = tmp_path / "o.jsonl"
    out.write_text("old output\n")
    (tmp_path / "o.jsonl.parts").mkdir()  # someone else's folder, named as the old runner's
    (tmp_path / "o.jsonl.parts" / "notes.txt").write_text("mine\n")
    (tmp_path / "o.jsonl.tmp").write_text("mine too\n")
    r = _submit(api, input=str(tmp_path / "in.jsonl"), output=str(out), shard_lines=3, overwrite=True)
    assert r.status_code == 201, r.text
    job = _run_until_done(api, r.json()["id"])
    assert (job["state"], job["ok_lines"], job["failed_lines"]) == ("Succeeded", 7, 0), job
    assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == [f"c{i}" for i in range(7)]
    assert (tmp_path / "o.jsonl.parts" / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "o.jsonl.tmp").read_text() == "mine too\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl",
        "o.errors.jsonl",
        "o.jsonl",
        "o.jsonl.parts",
        "o.jsonl.tmp",
    ]  # fmt: skip  (the job's own parts folder and temporary files are gone)


def _run_until_done(api: Api, job_id: str) -> dict[str, Any]:
    """The real BatchRunner, its requests answered by a plain HTTP server in the gateway's place."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"echo": await request.json()})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        stop = asyncio.Event()
        batch = BatchRunner(api.cp.store, f"http://127.0.0.1:{port}")
        task = asyncio.create_task(batch.run(stop))
        try:
            await asyncio.to_thread(
                wait_for, lambda: api.call("GET", f"/api/v1/batch/{job_id}").json()["state"] != "Running", 30
            )
        finally:
            stop.set()
            batch.wake()
            await task
            await runner.cleanup()

    asyncio.run(main())
    job: dict[str, Any] = api.call("GET", f"/api/v1/batch/{job_id}").json()
    return job
