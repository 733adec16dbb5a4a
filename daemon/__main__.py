"""``python -m daemon ...`` is ``kronos-stream ...``."""

from daemon.cli.main import main

raise SystemExit(main())
