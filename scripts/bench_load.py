"""Load benchmark of the daemon through the real Kafka broker and Redis server (issue #5).

For each mode (``exact``, ``incremental``) the script starts the daemon as a subprocess
(``python -m daemon run``, configured by ``KRONOS_*`` variables, its log in ``results/tmp/``), on
fresh topics (input and output with ``--partitions`` partitions, a dead-letter topic), its own
consumer group and its own Redis key prefix, and drives it from this process:

1. **warm-up** (not measured for latency): ``--warm-bars`` bars per symbol (default: max_context)
   published as fast as possible, then wait until every one has its forecast, so each symbol's
   window is full. Its drain rate is reported too (contexts grow from 1 bar to full).
2. **measured phase**: ``--duration`` seconds at ``--rate`` bars/s in total over ``--symbols``
   symbols (round-robin, a fixed schedule so a late send catches up). Per bar, the wall clock just
   before the send is kept; a collector in this process reads the output topic and notes each
   forecast's arrival. Reported: forecasts arrived per second during the phase (sustained rate),
   end-to-end latency percentiles (send until the forecast is read from the output topic; bars whose
   forecast comes after the phase get ``--grace`` seconds more, the rest are counted as missing), the
   daemon's own ``latency_ms`` fields from the forecasts (queue, model, end_to_end), and the group's
   lag on the input topic (end offsets minus committed offsets) when the phase ends.
3. **max throughput**: a backlog of about ``--drain-seconds`` worth of bars (sized from the warm-up
   rate, whole rounds of all symbols) published as fast as possible; drain rate = backlog / (time
   from the first send to the last forecast read).

Instead of these phases, ``--burst N,N,...`` runs bursts (after a warm-up of ``max(N)`` symbols, the
first N symbols each send one bar at the same instant: time to the last forecast, against one batched
engine call over the same windows) and ``--steady [N]`` a steady state (N symbols, default 1,000, one
bar each per ``--interval``, every bar landing at a random moment within ``--spread`` seconds of the
close; after ``--steady-warmup`` intervals, ``--intervals`` are measured: latency p50/p90/p99 from each
bar's send to its forecast read, the daemon's mean model batch, forecasts/s, lag at the end, and
whether every close's forecasts were out before the next). In incremental mode the daemon's model is
wrapped by scripts/benchload/probe.py, which counts how each series was served (warm session, rebuilt,
refreshed) and the session pool's evictions; every symbol may keep a warm session
(``--max-sessions``). ``--model stub`` runs the deterministic stub forecaster of tests/support instead
of a model (the repository root on ``PYTHONPATH``) (~0 model time), so a burst measures the daemon's own overhead.

Then the daemon gets SIGTERM, and its topics and Redis keys are deleted (also after a failure).
The bars come from :func:`daemon.io.feeds.synthetic_bars` (same seed for both modes, so both see the
same bars). Every wait is bounded; only loopback addresses are used (``KAFKA_BOOTSTRAP`` and
``REDIS_URL`` from ``eval "$(scripts/services env)"``).

Output: a table on stdout, ``--out`` (JSON, default ``results/bench_load.json``,
``results/bench_burst.json`` or ``results/bench_steady.json``) and the same path with ``.md`` (the table
and the machine facts).

The code is in ``scripts/benchload/``: the harness, one module per scenario (``drain``, ``bursts``,
``steady``) and the reports.

Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_load.py`` (defaults: 20 symbols, 20 bars/s, 30 s, both modes,
the demo model, 4 sample paths, 1 torch thread; a few minutes in all).
"""

from __future__ import annotations

import sys

from scripts.benchload.cli import main

if __name__ == "__main__":
    sys.exit(main())
