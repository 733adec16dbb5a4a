"""save_pretrained / from_pretrained: published layout, bit-identical round trip, strict loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kronos_core import CheckpointError, Kronos, KronosTokenizer, build_model

from .conftest import TINY


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(("cls", "preset"), [(KronosTokenizer, "Kronos-Tokenizer-tiny"), (Kronos, "Kronos-tiny")])
def test_save_load_is_bit_identical(cls, preset, tmp_path: Path) -> None:
    model = build_model(preset, seed=11)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path / "ckpt")
    _assert_same_state(model, loaded)
    assert loaded.config == model.config
    assert not loaded.training


@pytest.mark.parametrize("part", ["tokenizer", "predictor"])
def test_reference_checkpoint_round_trips_in_published_layout(part: str, tmp_path: Path) -> None:
    cls = KronosTokenizer if part == "tokenizer" else Kronos
    model = cls.from_pretrained(TINY / part)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((TINY / part / "config.json").read_text())
    original, written = load_file(str(TINY / part / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert original.keys() == written.keys()
    for key in original:
        assert torch.equal(original[key], written[key]), key


def _copy_tiny(tmp_path: Path) -> Path:
    target = tmp_path / "predictor"
    shutil.copytree(TINY / "predictor", target)
    return target


def _rewrite_weights(directory: Path, edit) -> None:
    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    ckpt = _copy_tiny(tmp_path)
    _rewrite_weights(ckpt, lambda s: s.__setitem__("head.proj_s1.bias", torch.zeros(7)))
    with pytest.raises(CheckpointError, match=r"head\.proj_s1\.bias: .* has \[7\], model expects \[32\]"):
        Kronos.from_pretrained(ckpt)


def test_missing_key_is_named(tmp_path: Path) -> None:
    ckpt = _copy_tiny(tmp_path)
    _rewrite_weights(ckpt, lambda s: s.pop("transformer.1.ffn.w2.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \['transformer\.1\.ffn\.w2\.weight'\]"):
        Kronos.from_pretrained(ckpt)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    ckpt = _copy_tiny(tmp_path)
    _rewrite_weights(ckpt, lambda s: s.__setitem__("extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra\.weight'\]"):
        Kronos.from_pretrained(ckpt)


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Kronos.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Kronos.from_pretrained(tmp_path)
    ckpt = _copy_tiny(tmp_path)
    (ckpt / "model.safetensors").unlink()
    torch.save({}, ckpt / "pytorch_model.bin")  # a pickle next to it is never read
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pickled .* not supported"):
        Kronos.from_pretrained(ckpt)


def test_bad_config_is_named(tmp_path: Path) -> None:
    ckpt = _copy_tiny(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["n_layerz"] = config.pop("n_layers")
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown config keys \['n_layerz'\]"):
        Kronos.from_pretrained(ckpt)


def test_config_from_the_wrong_model_kind_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="unknown config keys"):
        Kronos.from_pretrained(TINY / "tokenizer")


def test_corrupt_weights_file(tmp_path: Path) -> None:
    ckpt = _copy_tiny(tmp_path)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        Kronos.from_pretrained(ckpt)
