"""The ``openeas`` command line (typer + rich); ``openeas.cli.main:app`` is the console script."""

from openeas.cli.main import app

__all__ = ["app"]
