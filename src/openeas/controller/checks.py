"""Which probe does what for one replica: EAS's health-check shapes, mapped to three roles.

A container may carry the older ``health_check`` and the container-level ``startup_check``,
``liveness_check`` and ``readiness_check`` (Kubernetes semantics). :func:`checks_of` (pure)
gives each role its check:

- **startup** gates Ready at start: ``startup_check``, else ``readiness_check``, else
  ``health_check``, else a TCP connect. A ``startup_check`` gives up after
  ``initial_delay_seconds + failure_threshold x period_seconds`` (unless
  ``startup_timeout_seconds`` is written), as Kubernetes does; the others after
  ``startup_timeout_seconds`` (600 s).
- **liveness** runs while the replica serves; ``failure_threshold`` failures in a row restart it:
  ``liveness_check``, else ``health_check`` when no container-level check is written (what
  ``health_check`` has always meant here), else none.
- **readiness** runs while the replica serves; ``failure_threshold`` failures in a row take it out
  of routing (phase Unready) without a restart, one success puts it back: ``readiness_check``.

An ``exec`` check runs its command inside the replica (``<engine> exec`` in its container; for a
process, in the replica's folder with its environment); exit status 0 passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from openeas.spec.models import Container, HealthCheck


@dataclass(frozen=True)
class Checks:
    startup: HealthCheck | None  # None: a TCP connect with the defaults
    startup_timeout_s: float  # seconds from the process start; not Ready by then: restarted
    liveness: HealthCheck | None  # None with `live_probe`: a TCP connect with the defaults
    readiness: HealthCheck | None  # None: not probed for readiness
    live_probe: bool = True  # whether liveness is probed at all
    # where startup_timeout_s comes from: the field to raise when a big model needs longer
    startup_timeout_from: str = "the default; set health_check.startup_timeout_seconds"


def checks_of(c: Container) -> Checks:
    container_level = c.startup_check or c.liveness_check or c.readiness_check
    startup = c.startup_check or c.readiness_check or c.health_check
    default_timeout = HealthCheck().startup_timeout_seconds
    timeout = startup.startup_timeout_seconds if startup is not None else default_timeout
    role = (
        "startup_check" if c.startup_check else "readiness_check" if c.readiness_check else "health_check"
    )
    source = Checks.startup_timeout_from
    if startup is not None and "startup_timeout_seconds" in startup.model_fields_set:
        source = f"{role}.startup_timeout_seconds"
    elif c.startup_check is not None:
        s = c.startup_check
        timeout = s.initial_delay_seconds + s.failure_threshold * s.period_seconds
        source = "startup_check: initial_delay_seconds + failure_threshold x period_seconds"
    return Checks(
        startup=startup,
        startup_timeout_s=float(timeout),
        liveness=c.liveness_check or (None if container_level else c.health_check),
        readiness=c.readiness_check,
        # Without container-level checks, health_check (or a TCP connect) has always restarted
        # a replica that stops answering; with them, only a liveness_check does.
        live_probe=c.liveness_check is not None or not container_level,
        startup_timeout_from=source,
    )
