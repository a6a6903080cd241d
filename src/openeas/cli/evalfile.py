"""Reading an eval-set file for the CLI (``openeas eval --set``, ``openeas rollout --eval-set``):
parsed here first, so a malformed file is an error naming each bad line and nothing is sent."""

from __future__ import annotations

from pathlib import Path

import typer

from openeas.evalset import EvalSetError, parse_eval_set


def read_eval_set(path: Path, option: str = "--set") -> str:
    """The file's text, parsed once here; exit 2 naming the file and every bad line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        typer.echo(f"error: {option} {path}: cannot read it ({e})", err=True)
        raise typer.Exit(2) from None
    try:
        parse_eval_set(text)
    except EvalSetError as e:
        for err in e.errors:
            typer.echo(f"error: {option} {path}: {err}", err=True)
        raise typer.Exit(2) from None
    return text
