"""The HTTP side of the daemon: health, readiness and Prometheus metrics."""
