"""The HTTP API (``/v1``) and the operations endpoints, on FastAPI, served by uvicorn in the daemon's loop.

Modules: :mod:`daemon.api.settings` (``KRONOS_API__*``), :mod:`daemon.api.app` (the two ASGI apps),
:mod:`daemon.api.server` (uvicorn inside the daemon), :mod:`daemon.api.auth` (keys and rate limit),
:mod:`daemon.api.forecasts`, :mod:`daemon.api.stream`, :mod:`daemon.api.catalog` (the routes).
This package's ``__init__`` imports nothing, so the settings can import its settings group cheaply.
"""
