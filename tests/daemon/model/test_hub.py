"""Official checkpoints by Hugging Face id, offline, from a prepared local hub cache (no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "tests" / "fixtures" / "kronos-tiny-a"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

SCRIPT = """
import json
from daemon.settings import load_settings
from daemon.model.manifest import prepare_model_settings
from daemon.model.build import build_forecaster
try:
    s = prepare_model_settings(load_settings())
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    f = build_forecaster(s)
    print(json.dumps({"tokenizer": str(s.model.tokenizer_dir), "predictor": str(s.model.predictor_dir),
                      "version": f.model_version, "max_context": f.max_context}))
"""


def _cache(root: Path, repo: str, source: Path) -> Path:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def _run(cache: Path, **env: str) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "HF_"))}
    full.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        KRONOS_MODEL__HF_TOKENIZER="NeoQuasar/Kronos-Tokenizer-base",
        KRONOS_MODEL__HF_PREDICTOR="NeoQuasar/Kronos-small",
        KRONOS_MODEL__DEVICE="cpu",
        KRONOS_MODEL__MAX_CONTEXT="64",
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=full, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(180)
def test_hub_ids_load_offline_from_the_cache(tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    tok = _cache(tmp_path, "NeoQuasar/Kronos-Tokenizer-base", TINY / "tokenizer")
    pred = _cache(tmp_path, "NeoQuasar/Kronos-small", TINY / "predictor")
    got = _run(tmp_path)
    assert got["tokenizer"] == str(tok) and got["predictor"] == str(pred)
    assert str(got["version"]).startswith("ckpt-") and got["max_context"] == 64


@pytest.mark.timeout(180)
def test_offline_without_the_model_in_the_cache_says_what_to_do(tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    got = _run(tmp_path)
    assert got["error"] == "ConfigError"
    message = str(got["message"])
    assert "KRONOS_MODEL__HF_TOKENIZER=NeoQuasar/Kronos-Tokenizer-base" in message
    assert "HF_HUB_OFFLINE" in message and str(tmp_path) in message
