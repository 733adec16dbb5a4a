"""The daemon's load benchmark (run it with ``scripts/bench_load.py``): ``harness`` (collector, publishing,
the daemon subprocess, sessions), one module per scenario (``drain``, ``bursts``, ``steady``), ``report``
(tables and Markdown), ``cli`` (arguments and the run), and ``probe`` (the counting model wrapper the
daemon loads in incremental mode)."""
