"""The daemon's load benchmark (run it with ``scripts/bench_load.py``): ``process`` (the daemon
subprocess and its environment), ``publishing`` (bars to the input topic), ``collector`` (the
output-topic reader), ``housekeeping`` (a run's topics and Redis keys), ``harness`` (a daemon session
of all of those), ``measures`` (percentiles, differences of readings), one module per scenario
(``drain``, ``bursts``, ``steady``), ``report`` (tables and Markdown), ``cli`` (arguments and the run),
and ``probe`` (the counting model wrapper the daemon loads in incremental mode)."""
