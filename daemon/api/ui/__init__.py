"""The dashboard at ``/ui``: a page, a server-rendered fan chart and the JSON it reads.

Modules: :mod:`daemon.api.ui.router` (the routes), :mod:`daemon.api.ui.chart` (the SVG fan chart),
:mod:`daemon.api.ui.data` (the reads from Redis and the daemon's metrics), ``static/`` (the page, its
script and style sheet). Like :mod:`daemon.api`, this ``__init__`` imports nothing.
"""
