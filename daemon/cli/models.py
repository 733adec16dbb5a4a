"""``kronos-stream models``: the model registry (list, show, verify, sign, promote, rollback, gc, and
the challengers' challenge, withdraw, compare)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from daemon.cli.common import cli_settings
from daemon.errors import DaemonError


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the model registry: list, show, verify, sign, promote, rollback, gc")
    models.add_argument(
        "--registry",
        help="registry folder or fsspec URL (default: KRONOS_MODEL__REGISTRY, KRONOS_TRAIN__REGISTRY)",
    )
    models.add_argument(
        "--redis-url", help="where promote/rollback send the hint (default: KRONOS_REDIS__URL)"
    )
    models.add_argument("--prefix", help="key prefix of the hint channel (default: KRONOS_REDIS__KEY_PREFIX)")
    models.add_argument(
        "--public-key", type=Path,
        help="Ed25519 public key (PEM): verify and promote also check the manifest's signature "
        "(default: KRONOS_MODEL__REGISTRY_PUBLIC_KEY)",
    )  # fmt: skip
    what = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = what.add_parser("list", help="versions, newest last, with the champion and previous marked")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--refused", action="store_true", help="also list candidates the gate refused")
    show = what.add_parser("show", help="a version's manifest (default: the champion's)")
    show.add_argument("version", nargs="?")
    verify = what.add_parser(
        "verify",
        help="re-read a version's files and check every sha256, and with a public key its signature (exit 1 if not)",
    )
    verify.add_argument("version", nargs="?")
    sign = what.add_parser("sign", help="sign a published version's manifest (writes manifest.sig beside it)")
    sign.add_argument("version")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    promote = what.add_parser("promote", help="verify a version and make it the champion")
    promote.add_argument("version")
    what.add_parser("rollback", help="point back at the previous champion")
    gc = what.add_parser("gc", help="delete old versions (never the champion or the previous)")
    gc.add_argument("--keep", type=int, required=True, help="newest versions to keep besides those two")
    from daemon.cli import challengers

    challengers.add_parsers(what)


def run(args: argparse.Namespace) -> int:
    import os

    from kronos_contract.registry import Registry, RegistryError

    url = (
        args.registry or os.environ.get("KRONOS_MODEL__REGISTRY") or os.environ.get("KRONOS_TRAIN__REGISTRY")
    )
    if not url:
        raise DaemonError("no registry given: pass --registry URL or set KRONOS_MODEL__REGISTRY")
    key_path = args.public_key or os.environ.get("KRONOS_MODEL__REGISTRY_PUBLIC_KEY") or None
    try:
        registry = Registry(url)
        if key_path is not None:
            from kronos_contract.signing import load_public_key

            args.key_object = load_public_key(key_path)
        return _models_action(args, registry)
    except RegistryError as exc:
        raise DaemonError(str(exc)) from exc


def _models_action(args: argparse.Namespace, registry: Any) -> int:
    action = args.models_command
    if action in ("challenge", "withdraw", "compare"):
        from daemon.cli import challengers

        return challengers.run(args, registry, cli_settings(args))
    if action == "list":
        from kronos_contract.challengers import challengers as listed

        pointer = registry.pointer()
        shadow = set(listed(registry))
        rows = []
        for version in registry.versions():
            manifest = registry.manifest(version)
            role = {pointer.get("version"): "champion", pointer.get("previous"): "previous"}.get(version, "")
            role = role or ("challenger" if version in shadow else "")
            rows.append(
                {
                    "version": version,
                    "role": role,
                    "created_at": manifest.get("created_at"),
                    "parent": manifest.get("parent"),
                }
            )
        if args.refused:
            rows += [{"version": v, "role": "refused"} for v in registry.refused()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(
                    f"{row['version']:<32} {row['role']:<10} {row.get('created_at') or '':<21} parent={row.get('parent')}"
                )
        return 0
    if action in ("show", "verify"):
        version = args.version or registry.champion()
        if version is None:
            raise DaemonError(
                f"{registry.url} has no champion; name a version (see 'kronos-stream models list')"
            )
        public_key = getattr(args, "key_object", None)
        if action == "show":
            print(json.dumps(registry.manifest(version), indent=2))
            return 0
        manifest = registry.verify(version, public_key)
        if public_key is not None:
            signed = "signature by the given key verifies"
        else:
            signed = "signed" if registry.signature(version) is not None else "unsigned"
            signed += ", signature not checked (no --public-key)"
        print(f"{version}: {len(manifest['files'])} files verify; {signed}")
        return 0
    if action == "sign":
        from kronos_contract.signing import load_private_key

        registry.sign(args.version, load_private_key(args.key))
        print(json.dumps({"signed": args.version}))
        return 0
    if action == "gc":
        print(json.dumps({"deleted": registry.gc(args.keep)}))
        return 0
    if action == "promote" and getattr(args, "key_object", None) is not None:
        registry.verify(args.version, args.key_object)  # daemons holding the key would refuse it
    version = registry.promote(args.version)["version"] if action == "promote" else registry.rollback()
    print(json.dumps({"champion": version, "previous": registry.previous()}))
    _models_hint(args, version)
    return 0


def _models_hint(args: argparse.Namespace, version: str) -> None:
    """Tell daemons the pointer moved (a hint: they poll the pointer anyway)."""
    import os

    if not (args.redis_url or os.environ.get("KRONOS_REDIS__URL")):
        return
    from daemon.state.redis_access import client_options
    from kronos_contract.registry import RegistryError, publish_hint

    redis = cli_settings(args).redis
    try:
        asyncio.run(publish_hint(redis.url, redis.key_prefix, version, **client_options(redis)))
    except RegistryError as exc:
        print(f"kronos-stream models: {exc}", file=sys.stderr)
