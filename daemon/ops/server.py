"""Operations endpoints, served by the daemon's HTTP framework (daemon/api: FastAPI on uvicorn).

``/healthz``  liveness: 200 while the loop has ticked within ``KRONOS_HEALTH_STALE_S``, else 503 (stuck,
              not idle: idle fetches and retries during an outage tick too).
``/readyz``   readiness: 200 while the model is loaded, the consumer owns partitions and Kafka and Redis
              answer (periodic probes, no call waiting out an outage), else 503.
``/metrics``  Prometheus text format from this daemon's own registry.

Bodies of /healthz and /readyz are JSON with the details, so a probe's failure explains itself. They
are served on ``KRONOS_HTTP_PORT``, apart from the API's port and without its keys.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.api.server import Listener
    from daemon.ops.metrics import Metrics

Probe = Callable[[], tuple[bool, dict[str, Any]]]


def ops_listener(metrics: Metrics, live: Probe, ready: Probe, host: str = "0.0.0.0", port: int = 8080) -> Listener:
    """The operations endpoints on ``host:port``, ready to ``start()``."""
    from daemon.api.app import build_ops
    from daemon.api.server import Listener

    app = build_ops(metrics.render, live, ready)
    what = "/healthz, /readyz and /metrics"
    return Listener(app, host, port, what=what, variable="KRONOS_HTTP_PORT", event="ops endpoints listening")


def check(url: str, timeout_s: float = 3.0) -> bool:
    """GET ``url`` and say whether it answered 200 (``kronos-stream check``: a ready-made probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (local probe)
            return bool(response.status == 200)
    except OSError:
        return False
