"""Service specs: pydantic models of the PAI-EAS service JSON and its YAML twin."""

from openeas.spec.load import format_errors, load_spec_file, parse_spec, parse_stored_spec, parse_text
from openeas.spec.models import Container, HealthCheck, ServiceSpec, StorageMount

__all__ = [
    "Container",
    "HealthCheck",
    "ServiceSpec",
    "StorageMount",
    "format_errors",
    "load_spec_file",
    "parse_spec",
    "parse_stored_spec",
    "parse_text",
]
