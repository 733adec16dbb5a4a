"""``python -m daemon ...`` is ``kronos-stream ...``."""

from daemon.cli import main

raise SystemExit(main())
