"""Models built from the published configs have exactly the published state-dict layout."""

from __future__ import annotations

import pytest
import torch

from kronos_core import Kronos, KronosTokenizer, PredictorConfig, TokenizerConfig, build_model, preset_config

PUBLISHED = ["Kronos-Tokenizer-base", "Kronos-small", "Kronos-base"]


def _build_on_meta(kind: str, config: dict) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        if kind == "tokenizer":
            return KronosTokenizer(TokenizerConfig.from_dict(config))
        return Kronos(PredictorConfig.from_dict(config))


@pytest.mark.parametrize("name", PUBLISHED)
def test_config_builds_published_state_dict(name: str, official_shapes) -> None:
    entry = official_shapes[name]
    model = _build_on_meta(entry["kind"], entry["config"])
    shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
    assert shapes == entry["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == entry["parameters"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_matches_published_config(name: str, official_shapes) -> None:
    assert preset_config(name).to_dict() == official_shapes[name]["config"]


def test_upstream_keyword_construction(official_shapes) -> None:
    with torch.device("meta"):
        model = Kronos(**official_shapes["Kronos-small"]["config"])
    assert model.config == preset_config("Kronos-small")


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model("Kronos-tiny", seed=3)
    b = build_model("Kronos-tiny", seed=3)
    c = build_model("Kronos-tiny", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.state_dict()["head.proj_s1.weight"], c.state_dict()["head.proj_s1.weight"])


def test_tiny_presets_match_reference_fixture_configs(tiny_tokenizer, tiny_model) -> None:
    assert preset_config("Kronos-Tokenizer-tiny") == tiny_tokenizer.config
    assert preset_config("Kronos-tiny") == tiny_model.config


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown preset 'Kronos-huge'.*Kronos-small"):
        build_model("Kronos-huge")


def test_fixed_time_embedding_layout_and_values() -> None:
    config = PredictorConfig(s1_bits=4, s2_bits=4, n_layers=1, d_model=16, n_heads=2, ff_dim=32, learn_te=False)
    model = Kronos(config)
    table = model.state_dict()["time_emb.hour_embed.emb.weight"]
    assert table.shape == (24, 16)
    assert not model.get_parameter("time_emb.hour_embed.emb.weight").requires_grad
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(table[3, 1], torch.cos(torch.tensor(3.0)))
    assert "time_emb.hour_embed.weight" not in model.state_dict()
