"""Telemetry read by the console, the autoscaler and Prometheus; written by its producers."""

from openeas.telemetry.control import ControlMetrics

__all__ = ["ControlMetrics"]
