"""The API's OpenAPI schema, generated from the code: ``python -m daemon.api.openapi`` (or
``kronos-stream api-schema``) rewrites ``docs/api/openapi.json``; a test fails when it is stale.

The schema is the app's, with every router the daemon mounts (:func:`daemon.api.app.extra_routers`),
so a route added in another module only needs a regeneration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


def api_schema() -> dict[str, Any]:
    from daemon.api.app import build_api, extra_routers
    from daemon.api.service import ApiService
    from daemon.api.settings import ApiSettings

    service = ApiService(None)
    app = build_api(service, ApiSettings(auth="none"), routers=extra_routers(service))
    return app.openapi()


def schema_text() -> str:
    return json.dumps(api_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else SCHEMA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(schema_text())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
