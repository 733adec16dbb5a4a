"""Code the benchmark and results scripts share (imported as ``scripts.benchkit`` with the repository
root on ``PYTHONPATH``): ``demo`` (the bundled demo model, bars and windows of them),
``public_bars`` (the public real bars the published backtests run on) and ``timing`` (calls timed
against each other in interleaved rounds)."""
