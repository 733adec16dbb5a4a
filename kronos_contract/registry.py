"""The model registry: versioned checkpoints on any fsspec root, a champion pointer, checksums.

Layout under the root (a local folder or any fsspec URL such as ``s3://bucket/models``)::

    versions/<version>/tokenizer/...        the tokenizer's save_pretrained folder
    versions/<version>/predictor/...        the predictor's save_pretrained folder
    versions/<version>/manifest.json        written LAST: a version exists once this file does
    versions/<version>/manifest.sig         optional: an Ed25519 signature of manifest.json's bytes
                                            (kronos_contract.signing), written before it
    champion.json                           {"version", "previous", "updated_at", "history"}
    refused/<version>/manifest.json         a candidate the gate refused (figures only, no weights)
    challengers.json                        challengers, live decisions, blocked versions
                                            (kronos_contract.challengers)

Guarantees:

- A version is complete before anything names it: its files are written (and fsync'ed on a local
  disk) first, the manifest with the sha256 of every file after them, the pointer last. A folder
  without ``manifest.json`` is an unfinished publish and is never listed.
- The pointer is replaced atomically (temporary file, fsync, ``os.replace`` on a local disk; a
  single upload on an object store), so a reader sees the old champion or the new one.
- Readers verify: :meth:`Registry.fetch` copies a version and checks every file's sha256 and size
  against the manifest; any mismatch or missing file raises :class:`RegistryError` and nothing is
  left in the destination. :meth:`Registry.promote` and :meth:`Registry.rollback` verify the version
  before they point at it.
- :meth:`Registry.gc` never deletes the champion, the previous champion nor a challenger
  (:mod:`kronos_contract.challengers`).
- :func:`publish_hint` tells daemons on Redis pub/sub that the pointer moved; it is only a hint
  (a lost message delays a swap until the next poll of the pointer, it never changes what is served).

Manifest keys (the trainer fills the training ones; :meth:`Registry.publish` fills the others):
``version``, ``parent`` (the champion it was trained from, or None), ``files`` ({relative path:
{"sha256", "size"}}), ``created_at``, ``data`` (range start/end, symbols, row counts), ``settings``
(training settings), ``evaluation`` (figures of candidate, champion and persistence), ``code_version``,
``torch_version``, ``world_size``.

Writers: one publisher at a time (the retrain CronJob forbids concurrency); two concurrent promotes
would each be atomic, the later one wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from kronos_contract.storage import TMP_MARK, is_local, open_fs, read_bytes, write_bytes

HINT_CHANNEL_SUFFIX = ":models"
MANIFEST = "manifest.json"
POINTER = "champion.json"
PARTS = ("tokenizer", "predictor")
_CHUNK = 1 << 20
_HISTORY_KEEP = 20


class RegistryError(Exception):
    """The registry cannot do what was asked: a missing or unverifiable version, a bad pointer, ..."""


@dataclass(frozen=True)
class LocalVersion:
    """A fetched and verified version on the local disk."""

    version: str
    tokenizer_dir: Path
    predictor_dir: Path
    manifest: dict[str, Any]


def new_version_id(prefix: str = "v") -> str:
    """A fresh version id that sorts by creation time: ``v20240618T031500Z-3fa9c2``."""
    return f"{prefix}{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_version_name(version: str) -> None:
    if not version or "/" in version or version.startswith(".") or version != version.strip():
        raise RegistryError(f"bad version id {version!r}: use letters, digits, '-', '_' or '.' (no '/')")


def _package_version(name: str) -> str | None:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return None


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _local_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RegistryError(f"{folder} is not a folder; pass the save_pretrained folder of the model")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"{folder} holds no files; pass the save_pretrained folder of the model")
    return files


class Registry:
    """A registry rooted at ``url`` (a local path or an fsspec URL; ``storage_options`` go to fsspec)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        try:
            self._fs, self._root = open_fs(url, storage_options)
        except ValueError as exc:
            raise RegistryError(str(exc)) from exc

    # -- paths ---------------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._root, *parts)

    def _version_path(self, version: str, *parts: str) -> str:
        _check_version_name(version)
        return self._path("versions", version, *parts)

    # -- reading -------------------------------------------------------------------------------------

    def _pointer(self) -> dict[str, Any]:
        path = self._path(POINTER)
        if not self._fs.exists(path):
            return {}
        try:
            pointer = json.loads(read_bytes(self._fs, path))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"the champion pointer {self.url}/{POINTER} is unreadable: {exc}") from exc
        if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
            raise RegistryError(f"the champion pointer {self.url}/{POINTER} names no version: {pointer!r}")
        return pointer

    def pointer(self) -> dict[str, Any]:
        """The champion pointer as stored ({} when no version was ever promoted)."""
        return dict(self._pointer())

    def champion(self) -> str | None:
        """The version the pointer names, or None when nothing was promoted yet."""
        return self._pointer().get("version")

    def previous(self) -> str | None:
        """The champion before the current one (what :meth:`rollback` returns to), or None."""
        return self._pointer().get("previous")

    def versions(self) -> list[str]:
        """Complete versions (those with a manifest), oldest first (version ids sort by time)."""
        pattern = self._path("versions", "*", MANIFEST)
        found = self._fs.glob(pattern)
        names = {posixpath.basename(posixpath.dirname(str(p))) for p in found}
        return sorted(n for n in names if not n.startswith("."))

    def refused(self) -> list[str]:
        """Versions the gate refused (their manifests are under refused/)."""
        found = self._fs.glob(self._path("refused", "*", MANIFEST))
        return sorted(posixpath.basename(posixpath.dirname(str(p))) for p in found)

    def manifest(self, version: str) -> dict[str, Any]:
        """The manifest of a complete version; RegistryError if there is none."""
        return self._manifest_raw(version)[1]

    def signature(self, version: str) -> bytes | None:
        """The content of ``versions/<version>/manifest.sig``, None when the version is not signed."""
        from kronos_contract.signing import SIGNATURE

        try:
            return read_bytes(self._fs, self._version_path(version, SIGNATURE))
        except FileNotFoundError:
            return None

    def _signed_manifest(self, version: str, public_key: Any | None) -> dict[str, Any]:
        """The manifest, read once; with ``public_key``, its signature checked over those very bytes
        (:class:`~kronos_contract.signing.SignatureError` when missing or wrong)."""
        raw, manifest = self._manifest_raw(version)
        if public_key is not None:
            from kronos_contract.signing import verify

            verify(public_key, raw, self.signature(version), version)
        return manifest

    def _manifest_raw(self, version: str) -> tuple[bytes, dict[str, Any]]:
        path = self._version_path(version, MANIFEST)
        try:
            raw = read_bytes(self._fs, path)
        except FileNotFoundError as exc:
            raise RegistryError(
                f"version {version!r} does not exist in {self.url} (no {MANIFEST}); "
                f"known versions: {self.versions()[-5:]}"
            ) from exc
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"the manifest of {version!r} in {self.url} is not JSON: {exc}") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise RegistryError(f"the manifest of {version!r} in {self.url} lists no files")
        if manifest.get("version") != version:
            raise RegistryError(
                f"the manifest in versions/{version} names version {manifest.get('version')!r}; "
                "the folder was renamed or copied by hand"
            )
        return raw, manifest

    def refused_manifest(self, version: str) -> dict[str, Any]:
        path = self._path("refused", version, MANIFEST)
        try:
            return dict(json.loads(read_bytes(self._fs, path)))
        except FileNotFoundError as exc:
            raise RegistryError(f"no refused candidate {version!r} in {self.url}") from exc

    @staticmethod
    def _expected(manifest: dict[str, Any], rel: str) -> tuple[str, int | None]:
        entry = manifest["files"][rel]
        if isinstance(entry, str):
            return entry, None
        return str(entry["sha256"]), entry.get("size")

    def _check_files(self, version: str, manifest: dict[str, Any]) -> None:
        for part in PARTS:
            if not any(rel.startswith(part + "/") for rel in manifest["files"]):
                raise RegistryError(f"version {version!r} lists no {part}/ files in its manifest")
        for rel in manifest["files"]:
            if rel.startswith("/") or ".." in rel.split("/"):
                raise RegistryError(f"version {version!r} lists a file outside its folder: {rel!r}")

    def verify(self, version: str, public_key: Any | None = None) -> dict[str, Any]:
        """Re-read every file of ``version`` in the registry and check its sha256 and size; with
        ``public_key`` (Ed25519, :mod:`kronos_contract.signing`) the manifest's signature first.

        Returns the manifest; raises RegistryError naming the first file that does not verify."""
        manifest = self._signed_manifest(version, public_key)
        self._check_files(version, manifest)
        for rel in sorted(manifest["files"]):
            sha, size = self._expected(manifest, rel)
            digest, got = hashlib.sha256(), 0
            try:
                with self._fs.open(self._version_path(version, rel), "rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
                        got += len(chunk)
            except FileNotFoundError as exc:
                raise RegistryError(f"version {version!r} is missing {rel}; refusing it") from exc
            self._compare(version, rel, sha, size, digest.hexdigest(), got)
        return manifest

    @staticmethod
    def _compare(version: str, rel: str, sha: str, size: int | None, got_sha: str, got_size: int) -> None:
        if got_sha != sha or (size is not None and got_size != size):
            raise RegistryError(
                f"version {version!r}: {rel} does not match its manifest (sha256 {got_sha[:12]}.. "
                f"{got_size} bytes, expected {sha[:12]}.. {size} bytes); refusing it"
            )

    def fetch(
        self, version: str, dest_dir: str | os.PathLike[str], public_key: Any | None = None
    ) -> LocalVersion:
        """Copy ``version`` into ``dest_dir`` (created; must not hold another version) and verify it.

        The copy goes to a temporary sibling folder, is verified file by file, then renamed onto
        ``dest_dir``: a failed or interrupted fetch leaves nothing there. A ``dest_dir`` that already
        holds this version is verified again and reused. With ``public_key`` the manifest must carry
        that key's signature (checked before any file is copied; the files are then checked against
        the signed manifest)."""
        dest = Path(dest_dir)
        manifest = self._signed_manifest(version, public_key)
        self._check_files(version, manifest)
        if dest.exists() and any(dest.iterdir()):
            return self._reuse(version, dest, manifest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{TMP_MARK}{version}-", dir=dest.parent))
        try:
            for rel in sorted(manifest["files"]):
                self._download(version, rel, manifest, staging / rel)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return LocalVersion(version, dest / "tokenizer", dest / "predictor", manifest)

    def _download(self, version: str, rel: str, manifest: dict[str, Any], target: Path) -> None:
        sha, size = self._expected(manifest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, got = hashlib.sha256(), 0
        try:
            with self._fs.open(self._version_path(version, rel), "rb") as src, target.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    got += len(chunk)
                    out.write(chunk)
        except FileNotFoundError as exc:
            raise RegistryError(f"version {version!r} is missing {rel}; refusing it") from exc
        self._compare(version, rel, sha, size, digest.hexdigest(), got)

    def _reuse(self, version: str, dest: Path, manifest: dict[str, Any]) -> LocalVersion:
        try:
            local = json.loads((dest / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"{dest} is not empty and holds no fetched version; use an empty folder"
            ) from exc
        if local.get("version") != version or local.get("files") != manifest["files"]:
            raise RegistryError(
                f"{dest} holds version {local.get('version')!r}, not {version!r}; fetch into another folder"
            )
        for rel in sorted(manifest["files"]):
            sha, size = self._expected(manifest, rel)
            if not (dest / rel).is_file():
                raise RegistryError(f"{dest} lacks {rel}; delete the folder and fetch again")
            got_sha, got_size = _sha256_file(dest / rel)
            self._compare(version, rel, sha, size, got_sha, got_size)
        return LocalVersion(version, dest / "tokenizer", dest / "predictor", manifest)

    # -- writing -------------------------------------------------------------------------------------

    def _put(self, source: Path, remote: str) -> dict[str, Any]:
        sha, size = _sha256_file(source)
        if is_local(self._fs):
            write_bytes(self._fs, remote, source.read_bytes())
        else:
            self._fs.makedirs(posixpath.dirname(remote), exist_ok=True)
            self._fs.put_file(str(source), remote)
        return {"sha256": sha, "size": size}

    def publish(
        self,
        version: str,
        tokenizer_dir: str | os.PathLike[str],
        predictor_dir: str | os.PathLike[str],
        manifest: dict[str, Any],
        *,
        promote: bool,
        signing_key: Any | None = None,
    ) -> dict[str, Any]:
        """Store a new version: copy both folders, write the manifest (with every file's sha256)
        last, then move the champion pointer to it if ``promote``. Returns the stored manifest.
        With ``signing_key`` (an Ed25519 private key, :mod:`kronos_contract.signing`) the manifest's
        signature is written beside it, before it.

        A version id can be published once; an unfinished earlier attempt (no manifest) is overwritten."""
        _check_version_name(version)
        if self._fs.exists(self._version_path(version, MANIFEST)):
            raise RegistryError(f"version {version!r} already exists in {self.url}; versions are immutable")
        sources = {
            part: Path(folder) for part, folder in zip(PARTS, (tokenizer_dir, predictor_dir), strict=True)
        }
        files: dict[str, dict[str, Any]] = {}
        for part, folder in sources.items():
            for path in _local_files(folder):
                rel = f"{part}/{path.relative_to(folder).as_posix()}"
                files[rel] = self._put(path, self._version_path(version, rel))
        stored = dict(manifest)
        stored.update(version=version, files=files)
        stored.setdefault("parent", self.champion())
        stored.setdefault("created_at", _now())
        stored.setdefault("code_version", _package_version("kronos-stream"))
        stored.setdefault("torch_version", _package_version("torch"))
        try:
            body = json.dumps(stored, indent=2, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"the manifest of {version!r} is not plain JSON: {exc}") from exc
        self._before_manifest(version)
        if signing_key is not None:
            from kronos_contract.signing import SIGNATURE, sign

            write_bytes(self._fs, self._version_path(version, SIGNATURE), sign(signing_key, body))
        write_bytes(self._fs, self._version_path(version, MANIFEST), body)
        if promote:
            self._before_pointer(version)
            self.promote(version)
        return stored

    def sign(self, version: str, signing_key: Any) -> None:
        """Write ``versions/<version>/manifest.sig``: ``signing_key``'s signature of the stored manifest
        (for a version published before signing was turned on). Check the version first."""
        from kronos_contract.signing import SIGNATURE, sign

        raw, _ = self._manifest_raw(version)
        write_bytes(self._fs, self._version_path(version, SIGNATURE), sign(signing_key, raw))

    def _before_manifest(self, version: str) -> None:
        """A seam for fault tests: runs after the files, before the manifest is written."""

    def _before_pointer(self, version: str) -> None:
        """A seam for fault tests: runs after the manifest, before the pointer moves."""

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        write_bytes(self._fs, self._path(POINTER), json.dumps(pointer, indent=2).encode())

    def promote(self, version: str) -> dict[str, Any]:
        """Verify ``version`` and make it the champion; the old champion becomes ``previous``.
        Returns the new pointer (unchanged when ``version`` already is the champion)."""
        self.verify(version)
        old = self._pointer()
        current = old.get("version")
        if current == version:
            return old
        history = [v for v in old.get("history", []) if v != version]
        if current is not None:
            history.append(current)
        pointer = {
            "version": version,
            "previous": current,
            "updated_at": _now(),
            "history": history[-_HISTORY_KEEP:],
        }
        self._write_pointer(pointer)
        return pointer

    def rollback(self) -> str:
        """Point back at the previous champion (verified first); returns it. The version rolled back
        from is kept in the pointer's ``rolled_back_from`` and is no longer ``previous``."""
        old = self._pointer()
        history = list(old.get("history", []))
        if not old or not history:
            raise RegistryError(f"nothing to roll back to in {self.url}: no previous champion recorded")
        target = history.pop()
        self.verify(target)
        pointer = {
            "version": target,
            "previous": history[-1] if history else None,
            "updated_at": _now(),
            "history": history,
            "rolled_back_from": old["version"],
        }
        self._write_pointer(pointer)
        return target

    def read_document(self, name: str) -> dict[str, Any]:
        """A JSON document at the registry's root (e.g. ``challengers.json``); {} when absent."""
        path = self._path(name)
        if not self._fs.exists(path):
            return {}
        try:
            data = json.loads(read_bytes(self._fs, path))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self.url}/{name} is unreadable: {exc}; fix or remove it") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"{self.url}/{name} is not a JSON object; fix or remove it")
        return data

    def write_document(self, name: str, data: dict[str, Any]) -> None:
        """Replace a JSON document at the root atomically (as the pointer is)."""
        write_bytes(self._fs, self._path(name), json.dumps(data, indent=2, allow_nan=False).encode())

    def record_refused(self, version: str, manifest: dict[str, Any]) -> None:
        """Keep the figures of a candidate the gate refused (no weights) under refused/<version>/."""
        _check_version_name(version)
        stored = dict(manifest)
        stored.update(version=version, refused=True)
        stored.setdefault("created_at", _now())
        stored.pop("files", None)
        body = json.dumps(stored, indent=2, sort_keys=True, allow_nan=False).encode()
        write_bytes(self._fs, self._path("refused", version, MANIFEST), body)

    def gc(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` complete versions (by ``created_at``), never the champion nor the previous
        champion. Returns what was deleted. Unfinished folders (no manifest) are left alone: a
        publish may be writing them."""
        if keep < 0:
            raise RegistryError(f"keep must be >= 0, got {keep}")
        pointer = self._pointer()
        protected = {pointer.get("version"), pointer.get("previous")}
        listed = self.read_document("challengers.json").get("challengers") or []  # challengers stay too
        protected |= {c.get("version") if isinstance(c, dict) else c for c in listed}
        # newest by the manifests' created_at (then by id), whatever prefixes the ids carry
        versions = sorted(self.versions(), key=lambda v: (str(self.manifest(v).get("created_at", "")), v))
        kept = set(versions[-keep:]) if keep else set()
        deleted = []
        for version in versions:
            if version in kept or version in protected:
                continue
            # the manifest goes first: from then on the version is unlisted, whatever else remains
            self._fs.rm_file(self._version_path(version, MANIFEST))
            self._fs.rm(self._version_path(version), recursive=True)
            deleted.append(version)
        return deleted


def hint_channel(key_prefix: str) -> str:
    """The Redis pub/sub channel of registry hints: ``<key_prefix>:models``."""
    return f"{key_prefix}{HINT_CHANNEL_SUFFIX}"


async def publish_hint(redis_url: str, key_prefix: str, version: str, **options: Any) -> int:
    """Publish {"version": ...} on ``<key_prefix>:models``; returns how many subscribers got it.
    ``options`` go to ``redis.asyncio.from_url`` (``username``, ``password``, ``ssl_ca_certs``...; a URL
    such as ``rediss://user:secret@host:6379/0?ssl_ca_certs=/etc/ca.crt`` carries them too).

    A hint only: subscribers must read the pointer (the truth) before acting."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(redis_url, **options)
    try:
        receivers = await client.publish(hint_channel(key_prefix), json.dumps({"version": version}))
    except RedisError as exc:
        raise RegistryError(
            f"the hint for {version!r} could not be published on {redis_url}: {exc} "
            "(the pointer is moved already; daemons see it at their next poll)"
        ) from exc
    finally:
        await client.aclose()
    return int(receivers)
