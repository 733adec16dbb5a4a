"""The model registry on a local folder: publish, verify, fetch, promote, rollback, gc, hints."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kronos_contract import registry as registry_mod
from kronos_contract.registry import (
    LocalVersion,
    Registry,
    RegistryError,
    hint_channel,
    new_version_id,
    publish_hint,
)

DEMO = Path(__file__).resolve().parents[2] / "daemon" / "assets" / "demo-model"


def make_model(base: Path, tag: str) -> tuple[Path, Path]:
    """Two tiny save_pretrained-like folders whose bytes depend on ``tag``."""
    tok, pred = base / f"tok-{tag}", base / f"pred-{tag}"
    for folder, kind in ((tok, "tokenizer"), (pred, "predictor")):
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"kind": kind, "tag": tag}))
        (folder / "model.safetensors").write_bytes(os.urandom(4096) + tag.encode())
        (folder / "sub" / "extra.bin").write_bytes(tag.encode() * 10)
    return tok, pred


def publish(
    reg: Registry, base: Path, version: str, *, promote: bool = False, **extra: Any
) -> dict[str, Any]:
    tok, pred = make_model(base, version)
    return reg.publish(version, tok, pred, {"settings": {"lr": 1e-4}, **extra}, promote=promote)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"))


def test_publish_verify_fetch_round_trip(reg: Registry, tmp_path: Path) -> None:
    manifest = reg.publish(
        "v1", DEMO / "tokenizer", DEMO / "predictor", {"evaluation": {"crps": 0.5}}, promote=True
    )
    assert set(manifest["files"]) == {
        "tokenizer/config.json", "tokenizer/model.safetensors",
        "predictor/config.json", "predictor/model.safetensors",
    }  # fmt: skip
    assert manifest["version"] == "v1" and manifest["parent"] is None and manifest["created_at"]
    assert reg.champion() == "v1" and reg.previous() is None and reg.versions() == ["v1"]
    assert reg.verify("v1") == reg.manifest("v1") == manifest

    local = reg.fetch("v1", tmp_path / "cache" / "v1")
    assert isinstance(local, LocalVersion) and local.version == "v1"
    for part in ("tokenizer", "predictor"):
        for name in ("config.json", "model.safetensors"):
            assert (getattr(local, f"{part}_dir") / name).read_bytes() == (DEMO / part / name).read_bytes()
    assert local.manifest["evaluation"] == {"crps": 0.5}
    # fetching again into the same folder verifies and reuses it
    assert reg.fetch("v1", tmp_path / "cache" / "v1").manifest == manifest


def test_second_version_names_its_parent_and_ids_sort(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    second = publish(reg, tmp_path, "v2", promote=True)
    assert second["parent"] == "v1"
    assert (reg.champion(), reg.previous()) == ("v2", "v1")
    with pytest.raises(RegistryError, match="immutable"):
        publish(reg, tmp_path / "again", "v2")
    ids = [new_version_id() for _ in range(3)]
    assert all(i.startswith("v") for i in ids) and len(set(ids)) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_file_makes_the_version_refused(reg: Registry, tmp_path: Path, damage: str) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    publish(reg, tmp_path, "v2")
    target = tmp_path / "registry" / "versions" / "v2" / "predictor" / "model.safetensors"
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        target.write_bytes(data[:-1])
    else:
        target.unlink()

    with pytest.raises(RegistryError, match="predictor/model.safetensors"):
        reg.verify("v2")
    dest = tmp_path / "cache" / "v2"
    with pytest.raises(RegistryError, match="refusing"):
        reg.fetch("v2", dest)
    assert not dest.exists() and not list((tmp_path / "cache").iterdir())  # nothing half-fetched remains
    with pytest.raises(RegistryError):
        reg.promote("v2")
    assert reg.champion() == "v1"


def test_fetch_refuses_a_corrupted_local_copy(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1")
    dest = tmp_path / "cache"
    reg.fetch("v1", dest)
    (dest / "tokenizer" / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="tokenizer/config.json"):
        reg.fetch("v1", dest)


def test_fetch_refuses_a_manifest_naming_another_version(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1")
    os.rename(tmp_path / "registry" / "versions" / "v1", tmp_path / "registry" / "versions" / "v9")
    with pytest.raises(RegistryError, match="names version 'v1'"):
        reg.fetch("v9", tmp_path / "cache")


class _Crash(Exception):
    pass


class CrashBeforePointer(Registry):
    def _before_pointer(self, version: str) -> None:
        raise _Crash(version)


class CrashBeforeManifest(Registry):
    def _before_manifest(self, version: str) -> None:
        raise _Crash(version)


def test_crash_between_version_and_pointer_keeps_the_old_champion(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    crashing = CrashBeforePointer(reg.url)
    with pytest.raises(_Crash):
        publish(crashing, tmp_path, "v2", promote=True)
    fresh = Registry(reg.url)  # a reader after the crash
    assert fresh.champion() == "v1"
    fresh.fetch(fresh.champion() or "", tmp_path / "cache")  # the pointer names a version that verifies
    assert fresh.versions() == ["v1", "v2"]  # v2 is complete, merely not promoted
    fresh.promote("v2")
    assert (fresh.champion(), fresh.previous()) == ("v2", "v1")


def test_crash_before_the_manifest_leaves_no_version(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    with pytest.raises(_Crash):
        publish(CrashBeforeManifest(reg.url), tmp_path, "v2", promote=True)
    assert reg.versions() == ["v1"] and reg.champion() == "v1"
    with pytest.raises(RegistryError, match="does not exist"):
        reg.fetch("v2", tmp_path / "cache")
    publish(reg, tmp_path / "retry", "v2", promote=True)  # an unfinished attempt is overwritten
    assert reg.champion() == "v2"
    reg.verify("v2")


def test_pointer_write_failing_midway_leaves_the_old_pointer(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    publish(reg, tmp_path, "v2")
    before = (tmp_path / "registry" / "champion.json").read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(registry_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk gone"):
        reg.promote("v2")
    monkeypatch.undo()
    assert (tmp_path / "registry" / "champion.json").read_bytes() == before
    assert reg.champion() == "v1"
    assert [p.name for p in (tmp_path / "registry").iterdir() if p.name.startswith(".")] == []


def test_readers_never_see_a_partial_pointer(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    publish(reg, tmp_path, "v2")
    pointer = tmp_path / "registry" / "champion.json"
    bad: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            text = pointer.read_text()
            try:
                assert json.loads(text)["version"] in ("v1", "v2")
            except (ValueError, KeyError, AssertionError):
                bad.append(text)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for _ in range(100):
            reg.rollback() if reg.champion() == "v2" else reg.promote("v2")
    finally:
        stop.set()
        reader.join()
    assert bad == []


def test_rollback_walks_back_the_history(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    for v in ("v1", "v2", "v3"):
        publish(reg, tmp_path, v, promote=True)
    assert reg.rollback() == "v2"
    assert (reg.champion(), reg.previous()) == ("v2", "v1")
    assert reg.pointer()["rolled_back_from"] == "v3"
    assert reg.rollback() == "v1"
    assert reg.previous() is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_gc_keeps_champion_and_previous(reg: Registry, tmp_path: Path) -> None:
    for v in ("v1", "v2", "v3", "v4", "v5"):
        publish(reg, tmp_path, v)
    reg.promote("v1")
    reg.promote("v2")
    deleted = reg.gc(keep=1)
    assert deleted == ["v3", "v4"]
    assert reg.versions() == ["v1", "v2", "v5"]
    assert not (tmp_path / "registry" / "versions" / "v3").exists()
    for v in reg.versions():
        reg.verify(v)
    assert reg.gc(keep=0) == ["v5"]
    assert reg.versions() == ["v1", "v2"]


def test_refused_candidate_keeps_figures_only(reg: Registry, tmp_path: Path) -> None:
    publish(reg, tmp_path, "v1", promote=True)
    reg.record_refused("v2", {"evaluation": {"candidate": {"crps": 2.0}}, "files": {"x": "y"}})
    assert reg.refused() == ["v2"]
    stored = reg.refused_manifest("v2")
    assert stored["evaluation"]["candidate"]["crps"] == 2.0 and "files" not in stored and stored["refused"]
    assert reg.versions() == ["v1"] and reg.champion() == "v1"


def test_bad_input_says_what_to_do(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="save_pretrained"):
        reg.publish("v1", tmp_path / "nope", tmp_path / "nope", {}, promote=False)
    with pytest.raises(RegistryError, match="bad version id"):
        reg.manifest("../v1")
    (tmp_path / "registry").mkdir(exist_ok=True)
    (tmp_path / "registry" / "champion.json").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        reg.champion()


@pytest.mark.redis
async def test_hint_arrives_on_redis(redis_url: str, key_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(hint_channel(key_prefix))
        await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        receivers = await publish_hint(redis_url, key_prefix, "v42")
        assert receivers >= 1
        message = None
        async with asyncio.timeout(10):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert message["channel"].decode() == f"{key_prefix}:models"
        assert json.loads(message["data"]) == {"version": "v42"}
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_hint_failure_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="pointer is moved already"):
        await publish_hint("redis://127.0.0.1:1/0", "kronos", "v1")


def test_object_store_path_through_fsspec_memory(tmp_path: Path) -> None:
    """The non-local code path (uploads in one piece, no os.replace) on fsspec's in-memory store."""
    import fsspec

    url = f"memory://registry-{uuid.uuid4().hex}"
    reg = Registry(url)
    publish(reg, tmp_path, "v1", promote=True)
    publish(reg, tmp_path, "v2", promote=True)
    assert (reg.champion(), reg.previous(), reg.versions()) == ("v2", "v1", ["v1", "v2"])
    local = reg.fetch("v2", tmp_path / "cache")
    assert (local.predictor_dir / "sub" / "extra.bin").read_bytes() == b"v2" * 10
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{url}/versions/v1/tokenizer/config.json", b"{}")
    with pytest.raises(RegistryError, match="tokenizer/config.json"):
        reg.rollback()
    assert reg.champion() == "v2"
    fs.rm(url, recursive=True)


def test_gc_orders_by_creation_time_not_by_name(reg: Registry, tmp_path: Path) -> None:
    for version, created in (("zeta", "2024-01-01T00:00:00Z"), ("alpha", "2024-03-01T00:00:00Z")):
        tok, pred = make_model(tmp_path, version)
        reg.publish(version, tok, pred, {"created_at": created}, promote=False)
    publish(reg, tmp_path, "mid", created_at="2024-02-01T00:00:00Z")
    assert reg.gc(keep=1) == ["zeta", "mid"]
    assert reg.versions() == ["alpha"]
