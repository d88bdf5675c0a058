"""/health, /ready, /metrics and /metrics/engine: for orchestrators and Prometheus."""
