"""``kronos-stream models``: the registry from the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemon.cli.main import main as cli_main
from kronos_contract.registry import Registry, hint_channel


def _model(base: Path, tag: str) -> tuple[Path, Path]:
    out = []
    for part in ("tokenizer", "predictor"):
        folder = base / tag / part
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"part": part, "tag": tag}))
        (folder / "model.safetensors").write_bytes(tag.encode() * 100)
        out.append(folder)
    return out[0], out[1]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(str(tmp_path / "registry"))
    for tag in ("v1", "v2", "v3"):
        reg.publish(
            tag, *_model(tmp_path / "models", tag), {"evaluation": {"crps": 1.0}}, promote=tag != "v3"
        )
    return reg


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_show_verify(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--registry", registry.url, "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["version"], r["role"], r["parent"]) for r in rows] == [
        ("v1", "previous", None),
        ("v2", "champion", "v1"),
        ("v3", "", "v2"),
    ]
    code, out, _ = run(capsys, "models", "--registry", registry.url, "list")
    assert code == 0 and "champion" in out.splitlines()[1]
    code, out, _ = run(capsys, "models", "--registry", registry.url, "show")
    assert code == 0 and json.loads(out)["version"] == "v2"
    code, out, _ = run(capsys, "models", "--registry", registry.url, "verify", "v3")
    assert code == 0 and "4 files verify" in out


def test_corrupt_version_fails_verify_and_promote(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "registry" / "versions" / "v3" / "tokenizer" / "model.safetensors").write_bytes(b"junk")
    code, _, err = run(capsys, "models", "--registry", registry.url, "verify", "v3")
    assert code == 2 and "tokenizer/model.safetensors does not match" in err
    code, _, err = run(capsys, "models", "--registry", registry.url, "promote", "v3")
    assert code == 2 and "refusing" in err
    assert registry.champion() == "v2"


def test_promote_rollback_gc(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--registry", registry.url, "promote", "v3")
    assert code == 0 and json.loads(out) == {"champion": "v3", "previous": "v2"}
    code, out, _ = run(capsys, "models", "--registry", registry.url, "rollback")
    assert code == 0 and json.loads(out) == {"champion": "v2", "previous": "v1"}
    code, out, _ = run(capsys, "models", "--registry", registry.url, "gc", "--keep", "0")
    assert code == 0 and json.loads(out) == {"deleted": ["v3"]}


def test_registry_is_required(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRONOS_MODEL__REGISTRY", raising=False)
    monkeypatch.delenv("KRONOS_TRAIN__REGISTRY", raising=False)
    code, _, err = run(capsys, "models", "list")
    assert code == 2 and "--registry" in err


@pytest.mark.redis
async def test_promote_sends_the_hint(
    registry: Registry, redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = aioredis.from_url(redis_url)
    pubsub = client.pubsub()
    prefix = key_prefix.rstrip(":")
    try:
        await pubsub.subscribe(hint_channel(prefix))
        argv = [
            "models",
            "--registry",
            registry.url,
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "promote",
            "v3",
        ]
        code = await asyncio.to_thread(cli_main, argv)
        assert code == 0
        message = None
        async with asyncio.timeout(10):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert json.loads(message["data"]) == {"version": "v3"}
    finally:
        await pubsub.aclose()
        await client.aclose()
