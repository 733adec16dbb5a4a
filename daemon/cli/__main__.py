"""``python -m daemon.cli ...`` is ``kronos-stream ...`` (the retrain CronJob runs it under torchrun)."""

from daemon.cli.main import main

raise SystemExit(main())
