"""``python -m openeas.processor --path P --entry FILE --port N [--host H] [--model-path M]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from openeas.processor.host import Host, load_and_serve
from openeas.processor.package import PackageError, find_entry, model_dir, unpack


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m openeas.processor", description=__doc__)
    p.add_argument("--path", required=True, help="the processor package: a directory or a .zip/.tar.gz")
    p.add_argument("--entry", required=True, help="processor_entry: the module file defining the processor")
    p.add_argument("--port", type=int, required=True, help="the port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--model-path", help="the local model directory (get_model_path())")
    p.add_argument("--workdir", default=".", help="where the package is unpacked (default: here)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).absolute()
    try:
        root = unpack(Path(args.path), work / "processor")
        entry = find_entry(root, args.entry)
        model = model_dir(Path(args.model_path), work / "model") if args.model_path else None
    except PackageError as exc:
        print(f"openeas.processor: {exc}", file=sys.stderr)
        return 2
    env = {"OPENEAS_MODEL_PATH": str(model.absolute())} if model is not None else {}
    load_and_serve(entry, Host(args.host, args.port), env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
