"""``metadata.standby`` (an OpenEAS extension; docs/cold-start.md "Standby replicas"): replicas of
the current version kept started and warmed but out of routing, so that a scale-out promotes one
(a readiness probe, then the routing push) instead of starting a replica cold.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from openeas.spec.numbers import CheckedNumbers

MAX_STANDBY = 20
"""Most standbys a service may keep: each holds a replica's memory (and is priced like one)."""

StandbyMode = Literal["frozen", "hot"]


class Standby(CheckedNumbers):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # as every spec model

    replicas: int = Field(
        default=0, ge=0, le=MAX_STANDBY, description="standbys kept beside the routed replicas"
    )
    mode: StandbyMode = Field(
        default="frozen",
        description=(
            "frozen: after its warmup the replica's process group is stopped (SIGSTOP) or its "
            "containers paused (podman/docker pause), no CPU, memory kept, resumed on promotion; "
            "hot: it keeps running"
        ),
    )
    sleep_path: str | None = Field(
        default=None,
        pattern=r"^/",
        description=(
            "a path POSTed once the standby is warmed, before it is frozen (vLLM with "
            "--enable-sleep-mode: /sleep?level=1 releases the accelerator's memory)"
        ),
    )
    wake_path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="a path POSTed on promotion, after the thaw and before the probe (vLLM: /wake_up)",
    )
