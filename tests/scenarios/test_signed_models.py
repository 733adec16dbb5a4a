"""Signed models: a daemon holding the signer's public key (KRONOS_MODEL__REGISTRY_PUBLIC_KEY) serves only
versions whose manifest carries that key's Ed25519 signature. An unsigned v2 and a v2 signed by another
key are refused and counted (kronos_model_swaps_total{result="signature"}) while v1 keeps serving; once
v2 is signed by the right key it is served. `models verify` checks the signature; the trainer's publish
signs. Real Kafka and Redis, the tiny checkpoint's versions (tests/support/hotswap.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.app import Daemon
from daemon.cli.main import main as cli_main
from daemon.errors import ForecasterError
from daemon.model.follower import ModelFollower
from daemon.model.swap import ModelMetrics
from daemon.model.vetting import LoadRefused, prepare_version
from daemon.settings import Settings, load_settings
from kronos_contract.registry import Registry
from kronos_contract.signing import SIGNATURE, SignatureError, load_private_key, load_public_key
from tests.support.hotswap import TINY, registry_v1_v2
from tests.support.launcher import (
    Record,
    Topics,
    bar_series,
    daemon_settings,
    forecasts,
    interleave,
    metric,
    produce,
    read_topic,
    running_daemon,
    wait_until,
)

SYMBOLS = ["SA", "SB"]


def _write_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair as PEM files (what `openssl genpkey -algorithm ed25519` writes)."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return {"signer": _write_key(folder, "signer"), "forger": _write_key(folder, "forger")}


@pytest.fixture
def registry_root(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    """v1 (champion) signed by the signer; v2 published unsigned."""
    root = registry_v1_v2(tmp_path)
    Registry(str(root)).sign("v1", load_private_key(keys["signer"][0]))
    return root


def _chunk(series: dict[str, list[Record]], start: int, stop: int) -> list[Record]:
    return interleave(*(bars[start:stop] for bars in series.values()))


def _versions(out: Sequence[dict[str, Any]]) -> set[str]:
    return {f["model_version"] for f in out}


def _by_bar(out: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The forecasts in bar order: a topic of several partitions is not read in the order written."""
    return sorted(out, key=lambda f: (f["as_of"], f["symbol"]))


def _settings(
    bootstrap: str, redis_url: str, prefix: str, group: str, topics: Topics, root: Path, public_key: Path
) -> Settings:
    model = {
        "registry": str(root), "registry_public_key": str(public_key), "registry_poll_s": 0.2,
        "registry_hint": False, "registry_retry_s": 0.2, "registry_retry_max_s": 0.5,
        "device": "cpu", "threads": 1, "cache_dir": str(root.parent / "cache"),
    }  # fmt: skip
    return daemon_settings(bootstrap, redis_url, prefix, group, topics, model=model, mode="exact")


def _signature_refusals(d: Daemon) -> float:
    return metric(d, "kronos_model_swaps_total", result="signature")


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_unsigned_and_forged_v2_are_refused_v1_keeps_serving_and_a_signed_v2_is_served(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    registry_root: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:
    settings = _settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, registry_root, keys["signer"][1])
    reg = Registry(str(registry_root))
    series = {s: bar_series(s, 30, seed=i) for i, s in enumerate(SYMBOLS)}
    async with running_daemon(settings, None) as d:
        assert d.models is not None and d.forecaster is not None
        await produce(kafka_bootstrap, topics.input, _chunk(series, 0, 10))
        first = forecasts(await read_topic(kafka_bootstrap, topics.output, 20))

        reg.promote("v2")  # unsigned
        await wait_until(lambda: _signature_refusals(d) >= 1, 60, "the unsigned v2 refused")
        await produce(kafka_bootstrap, topics.input, _chunk(series, 10, 20))
        second = _by_bar(forecasts(await read_topic(kafka_bootstrap, topics.output, 40)))[20:]
        assert d.forecaster.model_version == "v1"

        reg.sign("v2", load_private_key(keys["forger"][0]))  # signed, by someone else
        before = _signature_refusals(d)
        await wait_until(lambda: _signature_refusals(d) >= before + 2, 60, "the forged v2 refused")
        assert d.models.forecaster is not None and d.models.forecaster.target_version == "v1"

        reg.sign("v2", load_private_key(keys["signer"][0]))
        await wait_until(lambda: d.models is not None and d.models.forecaster is not None
                         and d.models.forecaster.target_version == "v2", 60, "the signed v2 served")  # fmt: skip
        await produce(kafka_bootstrap, topics.input, _chunk(series, 20, 30))
        third = _by_bar(forecasts(await read_topic(kafka_bootstrap, topics.output, 60)))[40:]
        assert metric(d, "kronos_model_swaps_total", result="ok") == 1
        ok, _ = d.ready()
        assert ok

    assert _versions(first) == _versions(second) == {"v1"}
    assert _versions(third) == {"v2"}


def test_prepare_refuses_unsigned_and_forged_versions_with_the_reason(
    tmp_path: Path, registry_root: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    settings = load_settings(model={"registry": str(registry_root), "device": "cpu", "threads": 1})
    reg = Registry(str(registry_root))
    public = load_public_key(keys["signer"][1])
    with pytest.raises(LoadRefused, match="not signed") as unsigned:
        prepare_version(reg, "v2", settings, tmp_path / "cache", public)
    reg.sign("v2", load_private_key(keys["forger"][0]))
    with pytest.raises(LoadRefused, match="not a signature of its manifest") as forged:
        prepare_version(reg, "v2", settings, tmp_path / "cache", public)
    assert unsigned.value.result == forged.value.result == "signature"
    assert not (tmp_path / "cache" / "v2").exists()  # nothing fetched is left behind

    # a manifest changed after signing (here: its files' list edited) no longer matches the signature
    reg.sign("v2", load_private_key(keys["signer"][0]))
    prepare_version(reg, "v2", settings, tmp_path / "cache", public)  # signed: accepted
    manifest = registry_root / "versions" / "v2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"parent"', '"parent" ', 1))
    with pytest.raises(LoadRefused, match="not a signature"):
        prepare_version(reg, "v2", settings, tmp_path / "cache2", public)


async def test_an_unsigned_champion_stops_the_start_with_the_reason(
    registry_root: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    (registry_root / "versions" / "v1" / SIGNATURE).unlink()
    settings = load_settings(
        model={"registry": str(registry_root), "registry_public_key": str(keys["signer"][1]), "device": "cpu",
               "threads": 1, "cache_dir": str(registry_root.parent / "cache")},
    )  # fmt: skip
    from prometheus_client import CollectorRegistry

    follower = ModelFollower(settings, ModelMetrics(CollectorRegistry()))
    try:
        with pytest.raises(ForecasterError, match="not signed"):
            await follower.start()
    finally:
        await follower.close()


def test_publish_with_a_signing_key_and_models_verify(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "reg"
    reg = Registry(str(root))
    reg.publish("s1", TINY / "tokenizer", TINY / "predictor", {}, promote=True,
                signing_key=load_private_key(keys["signer"][0]))  # fmt: skip
    reg.publish("u1", TINY / "tokenizer", TINY / "predictor", {}, promote=False)
    assert (root / "versions" / "s1" / SIGNATURE).is_file()
    reg.verify("s1", load_public_key(keys["signer"][1]))
    with pytest.raises(SignatureError):
        reg.verify("s1", load_public_key(keys["forger"][1]))

    base = ["models", "--registry", str(root)]
    assert cli_main([*base, "--public-key", str(keys["signer"][1]), "verify", "s1"]) == 0
    assert "signature by the given key verifies" in capsys.readouterr().out
    assert cli_main([*base, "--public-key", str(keys["signer"][1]), "verify", "u1"]) != 0
    assert "not signed" in capsys.readouterr().err
    assert cli_main([*base, "--public-key", str(keys["forger"][1]), "verify", "s1"]) != 0
    assert "not a signature of its manifest" in capsys.readouterr().err
    assert cli_main([*base, "verify", "u1"]) == 0  # no key: the checksums only, and it says so
    assert "unsigned, signature not checked" in capsys.readouterr().out
    # promote refuses what daemons holding the key would refuse
    assert cli_main([*base, "--public-key", str(keys["signer"][1]), "promote", "u1"]) != 0
    assert reg.champion() == "s1"
    assert cli_main([*base, "sign", "u1", "--key", str(keys["signer"][0])]) == 0
    assert cli_main([*base, "--public-key", str(keys["signer"][1]), "promote", "u1"]) == 0
    assert reg.champion() == "u1"


def test_the_trainers_publish_signs_with_its_signing_key(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    import shutil

    from trainer.run import publish as trainer_publish
    from trainer.settings import TrainSettings

    folder = tmp_path / "candidate"
    shutil.copytree(TINY, folder)
    settings = TrainSettings(registry=str(tmp_path / "reg"), signing_key=keys["signer"][0], promote=True)
    stored = trainer_publish(settings, folder, {"gate": {"promoted": True}}, passed=True)
    reg = Registry(str(tmp_path / "reg"))
    reg.verify(stored["version"], load_public_key(keys["signer"][1]))  # raises unless signed by it
    with pytest.raises(SignatureError):
        reg.verify(stored["version"], load_public_key(keys["forger"][1]))
