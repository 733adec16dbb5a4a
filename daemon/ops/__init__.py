"""Operations: the health/metrics server, Prometheus metrics, start-up checks, config view."""
