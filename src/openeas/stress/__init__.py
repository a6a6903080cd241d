"""The one-click stress test: an open-loop load generator, saturation analysis and reports.

``plan`` (EAS benchmark JSON + options → a validated plan) · ``generator`` (open- and closed-loop
steps, no coordinated omission) · ``client`` (the raw HTTP transport, SSE token timing) · ``histo``
(HDR histograms) · ``observe`` (replicas and in-flight from the control plane) · ``analysis``
(knee, saturation, recommendation: pure) · ``runner`` (steps → report) · ``report`` (terminal,
JSON, HTML) · ``store`` (reports kept in the store) · ``apply`` (the recommendation as a new
version of the spec). User guide: docs/stress.md.
"""

from openeas.stress.analysis import Recommendation, Saturation, StepResult, recommend, saturation
from openeas.stress.generator import Generator, Outcome, Transport
from openeas.stress.plan import PlanError, StressPlan, from_eas, load_bodies, make_plan

__all__ = [
    "Generator",
    "Outcome",
    "PlanError",
    "Recommendation",
    "Saturation",
    "StepResult",
    "StressPlan",
    "Transport",
    "from_eas",
    "load_bodies",
    "make_plan",
    "recommend",
    "saturation",
]
