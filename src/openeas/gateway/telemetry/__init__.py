"""What the gateway counts: per-service metrics for Prometheus (`metrics`, `histogram`) and the
counters datagram to the control plane (`stats`); with ``--workers N``, what the workers show as
one on /metrics and /groups (`siblings`)."""
