"""Which GPUs a container replica gets: exactly ``metadata.gpu`` of them, never every GPU.

:func:`assign_gpus` is the pure decision: the node's GPU indices, the ones the running replicas
of this data dir hold (read back from the engine: each container carries the label
``io.openeas.gpus``, so the answer survives a control-plane restart), and the count the spec
asks for give the lowest free indices, or an error that names ``metadata.gpu`` and the counts.
:func:`node_gpus` counts the node's GPUs (``nvidia-smi -L``; ``OPENEAS_GPUS`` overrides it, a
count, for hosts without the tool).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping

GPUS_ENV = "OPENEAS_GPUS"
NVIDIA_SMI_TIMEOUT_S = 10.0


class GpuError(ValueError):
    """The node cannot give the replica the GPUs its spec asks for."""


def assign_gpus(want: int, total: int, held: Iterable[int]) -> tuple[int, ...]:
    """The ``want`` lowest GPU indices in ``range(total)`` that nobody ``held`` (pure)."""
    if want <= 0:
        return ()
    taken = set(held)
    free = [i for i in range(total) if i not in taken]
    if len(free) < want:
        if total == 0:
            raise GpuError(f"metadata.gpu: {want} GPU(s) requested but this node has no GPU")
        raise GpuError(
            f"metadata.gpu: {want} GPU(s) requested but this node has {total}, "
            f"{len(free)} free (the others are held by running replicas)"
        )
    return tuple(free[:want])


def parse_held(label_values: Iterable[str]) -> list[int]:
    """GPU indices from the ``io.openeas.gpus`` labels ("0,1"; empty or "<no value>": none)."""
    out = []
    for value in label_values:
        for part in value.split(","):
            if part.strip().isdigit():
                out.append(int(part))
    return out


def node_gpus(environ: Mapping[str, str] = os.environ) -> int:
    """How many GPUs this node has: ``OPENEAS_GPUS``, else the lines of ``nvidia-smi -L``, else 0."""
    forced = environ.get(GPUS_ENV, "").strip()
    if forced.isdigit():
        return int(forced)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))
