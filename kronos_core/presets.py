"""Named configurations: the published checkpoints' shapes, plus tiny ones for tests and demos.

``build_model(name, seed=...)`` makes a randomly initialised model of a preset, reproducibly.
The published names match the Hugging Face model ids (``NeoQuasar/<name>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import torch

from kronos_core.config import PredictorConfig, TokenizerConfig
from kronos_core.exceptions import ConfigError
from kronos_core.model import Kronos
from kronos_core.tokenizer import KronosTokenizer

Kind = Literal["tokenizer", "predictor"]


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Kind
    config: TokenizerConfig | PredictorConfig
    published: bool  # shapes of a released checkpoint (True) or a local test/demo size (False)
    tokenizer: str | None = None  # for predictors: the tokenizer preset they pair with


_TOKENIZER_BASE = TokenizerConfig(
    d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
    s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
)
_SMALL = PredictorConfig(
    s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8, ff_dim=1024,
    ffn_dropout_p=0.25, attn_dropout_p=0.1, resid_dropout_p=0.25, token_dropout_p=0.1, learn_te=True,
)
_BASE = PredictorConfig(
    s1_bits=10, s2_bits=10, n_layers=12, d_model=832, n_heads=16, ff_dim=2048,
    ffn_dropout_p=0.2, attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0, learn_te=True,
)
# Same sizes as the kronos-tiny-a reference fixture: fast enough for unit tests and demos.
_TOKENIZER_TINY = TokenizerConfig(
    d_in=6, d_model=32, n_heads=4, ff_dim=64, n_enc_layers=3, n_dec_layers=3,
    s1_bits=5, s2_bits=5, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=5,
)
_TINY = PredictorConfig(s1_bits=5, s2_bits=5, n_layers=2, d_model=64, n_heads=4, ff_dim=128, learn_te=True)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("Kronos-Tokenizer-base", "tokenizer", _TOKENIZER_BASE, published=True),
        Preset("Kronos-small", "predictor", _SMALL, published=True, tokenizer="Kronos-Tokenizer-base"),
        Preset("Kronos-base", "predictor", _BASE, published=True, tokenizer="Kronos-Tokenizer-base"),
        Preset("Kronos-Tokenizer-tiny", "tokenizer", _TOKENIZER_TINY, published=False),
        Preset("Kronos-tiny", "predictor", _TINY, published=False, tokenizer="Kronos-Tokenizer-tiny"),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_config(name: str) -> TokenizerConfig | PredictorConfig:
    return get_preset(name).config


@overload
def build_model(name: str, seed: int = 0, *, kind: Literal["tokenizer"]) -> KronosTokenizer: ...
@overload
def build_model(name: str, seed: int = 0, *, kind: Literal["predictor"]) -> Kronos: ...
@overload
def build_model(name: str, seed: int = 0, *, kind: None = None) -> KronosTokenizer | Kronos: ...


def build_model(name: str, seed: int = 0, *, kind: Kind | None = None) -> KronosTokenizer | Kronos:
    """A randomly initialised model of preset ``name``; the same seed gives the same weights.

    ``kind`` (optional) asserts what the preset must be and narrows the return type.
    The global RNG state is left untouched.
    """
    preset = get_preset(name)
    if kind is not None and preset.kind != kind:
        raise ConfigError(f"preset {name!r} is a {preset.kind}, not a {kind}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(preset.config, TokenizerConfig):
            return KronosTokenizer(preset.config)
        return Kronos(preset.config)


def build_pair(predictor: str = "Kronos-tiny", seed: int = 0) -> tuple[KronosTokenizer, Kronos]:
    """The tokenizer and predictor of a predictor preset, both randomly initialised."""
    preset = get_preset(predictor)
    if preset.kind != "predictor" or preset.tokenizer is None:
        raise ConfigError(f"preset {predictor!r} is not a predictor preset")
    return (
        build_model(preset.tokenizer, seed, kind="tokenizer"),
        build_model(predictor, seed + 1, kind="predictor"),
    )
