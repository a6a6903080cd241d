"""``python -m openeas.cli``."""

from openeas.cli.main import app

if __name__ == "__main__":
    app(prog_name="openeas")
