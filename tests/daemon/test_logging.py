"""JSON logs carry exceptions as structured data, not a text blob (a subprocess: logging is global)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, structlog
from daemon.logging import configure_logging
configure_logging("INFO", "json")
try:
    {}["missing"]
except KeyError:
    structlog.get_logger("t").exception("lookup failed", symbol="A")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("stdlib").exception("stdlib failed")
"""


def test_exceptions_in_json_logs_are_structured() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [r["event"] for r in records] == ["lookup failed", "stdlib failed"]
    for record, kind in zip(records, ("KeyError", "ZeroDivisionError"), strict=True):
        exc = record["exception"]
        assert isinstance(exc, list) and exc[0]["exc_type"] == kind
        assert exc[0]["frames"] and {"filename", "lineno", "name"} <= set(exc[0]["frames"][0])
    assert records[0]["symbol"] == "A"
