"""Model versions for the hot-swap tests and scripts: a registry holding the tiny checkpoint (v1), the
same weights perturbed (v2, v4, ...), and broken ones (truncated weights, wrong shapes, NaN weights,
an incompatible config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from kronos_contract.registry import Registry

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "kronos-tiny-a"


def perturb_(module: torch.nn.Module, scale: float, generator: torch.Generator) -> torch.nn.Module:
    """``module`` with every weight w -> w + scale*std(w)*noise, in place (scalars left as they are)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() > 1 and p.dtype.is_floating_point:
                p.add_(torch.randn(p.shape, generator=generator) * scale * float(p.std()))
    return module


def perturbed_copy(
    src: Path, dest: Path, scale: float, seed: int, parts: tuple[str, ...] = ("tokenizer", "predictor")
) -> Path:
    """``src`` (a checkpoint with tokenizer/ and predictor/) with every weight w -> w + scale*std(w)*noise
    in ``parts``; the other part copied as it is (``parts=("predictor",)``: fine-tuned with the tokenizer
    frozen, as the retrain job does by default)."""
    from kronos_core import Kronos, KronosTokenizer

    gen = torch.Generator().manual_seed(seed)
    for part, cls in (("tokenizer", KronosTokenizer), ("predictor", Kronos)):
        if part not in parts:
            shutil.copytree(src / part, dest / part)
            continue
        perturb_(cls.from_pretrained(src / part), scale, gen).save_pretrained(dest / part)
    return dest


def broken_copy(src: Path, dest: Path, how: str) -> Path:
    """A copy of ``src`` broken one way: truncated, wrong_shapes, nan, incompatible."""
    shutil.copytree(src, dest)
    weights = dest / "predictor" / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "wrong_shapes":
        cfg = json.loads((dest / "predictor" / "config.json").read_text())
        cfg["d_model"] = cfg["d_model"] * 2
        (dest / "predictor" / "config.json").write_text(json.dumps(cfg))
    elif how == "nan":
        from kronos_core import Kronos

        model = Kronos.from_pretrained(src / "predictor")
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        model.save_pretrained(dest / "predictor")
    elif how == "incompatible":
        cfg = json.loads((dest / "tokenizer" / "config.json").read_text())
        cfg["d_in"] = 5
        (dest / "tokenizer" / "config.json").write_text(json.dumps(cfg))
    else:
        raise ValueError(how)
    return dest


def registry_v1_v2(tmp_path: Path) -> Path:
    """A registry folder: v1 the tiny checkpoint (champion), v2 its weights perturbed (not promoted)."""
    root = tmp_path / "registry"
    reg = Registry(str(root))
    publish(reg, "v1", TINY, promote=True)
    publish(reg, "v2", perturbed_copy(TINY, tmp_path / "v2", 0.05, seed=2), promote=False)
    return root


def publish(registry: Registry, version: str, folder: Path, *, promote: bool, **manifest: Any) -> None:
    registry.publish(version, folder / "tokenizer", folder / "predictor", dict(manifest), promote=promote)


def tamper(registry_root: Path, version: str) -> None:
    """Flip bytes of a published weight file in place (its manifest's sha256 no longer matches)."""
    path = registry_root / "versions" / version / "predictor" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(16)
    path.write_bytes(bytes(data))
