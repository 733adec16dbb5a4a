"""Durable writes through fsspec: atomic on local disks, one-shot uploads on object stores.

On a local file system a write goes to a hidden temporary name in the same folder, is flushed and
fsync'ed, then ``os.replace``d onto the final name and the folder is fsync'ed: a reader sees the old
file or the new one, never a torn one, and a crash leaves at most a stray ``.tmp-`` file. On an object
store (s3, gcs, ...) an object becomes visible only once its upload completes, so the bytes are
uploaded in one ``pipe_file`` call to the final key.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system behind ``url`` and the root path on it (no trailing slash)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"cannot open {url!r}: {exc}. A local folder needs no extra package; for s3:// install s3fs, "
            "for gs:// gcsfs, for az:// adlfs"
        ) from exc
    return fs, path.rstrip("/") or "/"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` durably and atomically (see the module docstring)."""
    parent = posixpath.dirname(path)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f"{TMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    data = fs.cat_file(path)
    assert isinstance(data, bytes)
    return data
