"""kronos-stream's daemon: Kafka in, Redis state, forecasts out.

Modules, along the data path:
``settings`` (KRONOS_* environment) -> ``kafka_io`` / ``bus_memory`` behind ``bus`` (fetch, commit,
publish, dead letters) -> ``schemas`` (bar in, forecast out) -> ``loop`` (rounds of batched forecasts,
Kafka before Redis, commit last) -> ``state_redis`` / ``state_memory`` behind ``state`` (key schema
there) -> ``metrics`` and ``ops`` (/healthz, /readyz, /metrics) -> ``app`` (wiring, shutdown) -> ``cli``.
The model comes from ``forecaster`` (kronos_core's StreamingForecaster, or a plug-in factory).
"""
