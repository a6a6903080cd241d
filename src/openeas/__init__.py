"""OpenEAS: an open, self-hosted Elastic Algorithm Service."""

__version__ = "0.1.0"
