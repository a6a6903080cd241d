"""What the ``openeas`` command and its subcommand modules (cli/main.py, group.py, stress.py,
batch.py, cost.py, server.py) share: the common options, the server lookup, the error handling
(``error: ...`` on stderr and an exit code, never a traceback), the spinner, reading a spec file.
It imports no command module, so every one of them may import it."""

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from openeas.cli import render
from openeas.errors import SpecError
from openeas.sdk.client import ApiError, Client, WaitTimeout, ready_count
from openeas.sdk.discovery import ServerNotFound, discover

P = ParamSpec("P")
R = TypeVar("R")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory of the server (reads DIR/server.json).",
        show_default=False,
        file_okay=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the API answer as one line of JSON.")]
WaitTimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait before giving up.")]


class State:
    data_dir: Path | None = None


state = State()


def fail(message: str, lines: list[str] | None = None, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    for line in lines or []:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(code)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn known failures into ``error: ...`` on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ServerNotFound as exc:
            fail(str(exc))
        except SpecError as exc:
            fail("invalid spec", exc.errors, code=2)
        except ApiError as exc:
            fail(exc.message, exc.errors, code=2 if exc.status in (400, 422) else 1)
        except WaitTimeout as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def client(data_dir: Path | None = None) -> Client:
    return Client.from_info(discover(data_dir if data_dir is not None else state.data_dir))


@contextmanager
def spinner(text: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A rich spinner on stderr (stdout stays clean for ``--json``); yields a function to update it."""
    if not enabled:
        yield lambda _text: None
        return
    with render.err.status(text) as status:
        yield lambda new: status.update(new)


def wait_ready(
    client: Client, name: str, replicas: int | None, timeout_s: float, quiet: bool = False
) -> dict[str, Any]:
    with spinner(f"waiting for {name}", enabled=not quiet) as update:

        def progress(d: dict[str, Any]) -> None:
            wanted = replicas if replicas is not None else int(d.get("desired_replicas") or 0)
            update(render.progress_line(d, ready_count(d), wanted))

        detail = client.wait_ready(name, replicas=replicas, timeout_s=timeout_s, on_progress=progress)
    if not quiet:
        wanted = replicas if replicas is not None else detail.get("desired_replicas", 0)
        line = f"{name} is ready: {ready_count(detail)}/{wanted} replicas"
        cold = render.cold_start_line(detail)
        render.out.print(line + (f" · {cold}" if cold else ""), highlight=False)
    return detail


def read_spec(file: str, groups_ok: bool = True) -> dict[str, Any]:
    """A service spec, or (``groups_ok``) a group's (``kind: ServiceGroup``), validated here."""
    from openeas.spec import parse_spec, parse_text
    from openeas.spec.group import is_group_document, parse_group
    from openeas.spec.load import MAX_SPEC_FILE_BYTES, read_spec_file

    try:
        if file == "-":
            text = sys.stdin.read(MAX_SPEC_FILE_BYTES + 1)
            if len(text) > MAX_SPEC_FILE_BYTES:
                raise SpecError([f"spec: stdin is larger than {MAX_SPEC_FILE_BYTES} bytes (16 MiB)"])
        else:
            try:
                text = read_spec_file(file)
            except OSError as exc:
                fail(f"cannot read {file}: {exc.strerror or exc}", code=2)
        data = parse_text(text)
        if groups_ok and is_group_document(data):
            parse_group(data)
            return data
        parse_spec(data)  # validate here: errors name the field before anything reaches the server
    except SpecError as exc:
        fail(f"invalid spec {'on stdin' if file == '-' else file}", exc.errors, code=2)
    return data
