"""Ed25519 signatures of registry manifests (optional).

A version's ``manifest.json`` lists the sha256 of every file of the version, so a signature over the
manifest's exact bytes vouches for the whole version. The publisher (the trainer) signs with a private
key; readers holding the public key refuse a version whose ``manifest.sig`` is missing or does not
verify. The signature lies beside the manifest: ``versions/<version>/manifest.sig``, the 64 signature
bytes in base64 on one line.

Keys are PEM files, as ``openssl`` writes them::

    openssl genpkey -algorithm ed25519 -out signing.pem          # the private key (a Secret)
    openssl pkey -in signing.pem -pubout -out signing.pub.pem     # the public key (the daemons')

Uses the ``cryptography`` package (imported when a key is loaded).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from kronos_contract.registry import RegistryError

SIGNATURE = "manifest.sig"


class SignatureError(RegistryError):
    """A key that cannot be used, or a signature that is missing or does not verify."""


def load_private_key(path: str | Path) -> Any:
    """The Ed25519 private key in the PEM file ``path`` (unencrypted PKCS#8, as ``openssl genpkey`` writes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read the signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"the signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Any:
    """The Ed25519 public key in the PEM file ``path`` (``openssl pkey -pubout``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read the public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"the public key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def sign(private_key: Any, manifest: bytes) -> bytes:
    """The ``manifest.sig`` content for ``manifest`` (the manifest file's exact bytes)."""
    return base64.b64encode(private_key.sign(manifest)) + b"\n"


def verify(public_key: Any, manifest: bytes, signature: bytes | None, version: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` (``manifest.sig``'s content, None when absent)
    is ``public_key``'s signature of ``manifest``."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise SignatureError(f"version {version!r} is not signed (no {SIGNATURE}); refusing it")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        public_key.verify(raw, manifest)
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise SignatureError(
            f"version {version!r}: {SIGNATURE} is not a signature of its manifest by the configured key "
            "(signed with another key, or the manifest was changed); refusing it"
        ) from exc
