"""``kronos-stream api-key new NAME`` and ``kronos-stream api-schema [PATH]``.

``api-key new`` prints a new key once (on stdout, for the caller to hand over) and the line for the
keys file (``NAME:SHA256HEX``, what goes into the Kubernetes Secret); the daemon never stores the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser(
        "api-key",
        help="make an API key: the key (shown once) and its hashed line for KRONOS_API__KEYS_FILE",
        description="Prints a new API key once, and the `NAME:SHA256HEX` line to add to the keys file (the "
        "Kubernetes Secret the daemon reads through KRONOS_API__KEYS_FILE). Only the line is stored; keep the "
        "key where its user keeps secrets.",
    )
    what = keys.add_subparsers(dest="api_key_command", metavar="new", required=True)
    new = what.add_parser("new", help="a new key for NAME")
    new.add_argument("name", help="who the key is for (1-64 letters, digits, '.', '_' or '-'); logs name it")
    new.add_argument("--json", action="store_true", help="print {name, key, line} as JSON")
    schema = sub.add_parser("api-schema", help="write the HTTP API's OpenAPI schema (default docs/api/openapi.json)")
    schema.add_argument("path", nargs="?", help="where to write it")


def run(args: argparse.Namespace) -> int:
    if args.command == "api-schema":
        from daemon.api.openapi import main as schema_main

        return schema_main([args.path] if args.path else [])
    from daemon.api.auth import key_line, new_key

    key = new_key()
    line = key_line(args.name, key)
    if args.json:
        print(json.dumps({"name": args.name, "key": key, "line": line}))
        return 0
    print(f"key (shown once; give it to {args.name}):\n  {key}\n")
    print("line for the keys file (KRONOS_API__KEYS_FILE, e.g. the Secret's `keys` entry):")
    print(f"  {line}")
    print("\nAdd the line, e.g.: kubectl create secret generic kronos-api-keys --from-file=keys=./keys", file=sys.stderr)
    return 0
