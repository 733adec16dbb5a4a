"""Model configurations: the keys of the published ``config.json`` files, validated.

Field names are exactly the upstream ``config.json`` keys so a published checkpoint
directory loads as is and ``save_pretrained`` writes a file upstream can read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from kronos_core.exceptions import ConfigError


def _check_positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


def _check_probability(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a probability in [0, 1), got {value!r}")


class _ConfigBase:
    """Shared dict round-trip for the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a ``config.json`` mapping; unknown keys are an error, optional keys default."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown config keys {unknown}; expected a subset of {sorted(known)}"
            )
        required = {
            f.name
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"{cls.__name__}: config is missing required keys {missing}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class TokenizerConfig(_ConfigBase):
    """Hyper-parameters of :class:`kronos_core.KronosTokenizer` (upstream ``config.json`` keys).

    ``n_enc_layers``/``n_dec_layers`` follow upstream: the encoder and the decoder each hold
    ``n - 1`` transformer blocks (the input embedding and the output head count as one).
    ``beta``, ``gamma0``, ``gamma`` and ``zeta`` weight the BSQ losses; ``group_size`` only
    shapes the ``group_basis`` buffer kept for state-dict compatibility.
    """

    d_in: int
    d_model: int
    n_heads: int
    ff_dim: int
    n_enc_layers: int
    n_dec_layers: int
    s1_bits: int
    s2_bits: int
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    beta: float = 0.05
    gamma0: float = 1.0
    gamma: float = 1.1
    zeta: float = 0.05
    group_size: int = 4

    def __post_init__(self) -> None:
        _check_positive(
            self,
            ("d_in", "d_model", "n_heads", "ff_dim", "n_enc_layers", "n_dec_layers", "s1_bits", "s2_bits",
             "group_size"),
        )
        _check_probability(self, ("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p"))
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError("the head dimension d_model // n_heads must be even for rotary embeddings")
        if self.codebook_dim % self.group_size:
            raise ConfigError(
                f"s1_bits + s2_bits ({self.codebook_dim}) must be divisible by group_size ({self.group_size})"
            )

    @property
    def codebook_dim(self) -> int:
        return self.s1_bits + self.s2_bits


@dataclass(frozen=True)
class PredictorConfig(_ConfigBase):
    """Hyper-parameters of the :class:`kronos_core.Kronos` predictor (upstream ``config.json`` keys)."""

    s1_bits: int
    s2_bits: int
    n_layers: int
    d_model: int
    n_heads: int
    ff_dim: int
    ffn_dropout_p: float = 0.0
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    token_dropout_p: float = 0.0
    learn_te: bool = True

    # The dependency-aware layer always uses this many heads upstream, whatever n_heads is.
    DEP_LAYER_HEADS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        _check_positive(self, ("s1_bits", "s2_bits", "n_layers", "d_model", "n_heads", "ff_dim"))
        _check_probability(self, ("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p", "token_dropout_p"))
        if not isinstance(self.learn_te, bool):
            raise ConfigError(f"learn_te must be a bool, got {self.learn_te!r}")
        for heads in (self.n_heads, self.DEP_LAYER_HEADS):
            if self.d_model % heads or (self.d_model // heads) % 2:
                raise ConfigError(
                    f"d_model ({self.d_model}) must split into {heads} heads of even size "
                    "(rotary embeddings rotate pairs of channels)"
                )

    @property
    def s1_vocab_size(self) -> int:
        return 2**self.s1_bits

    @property
    def s2_vocab_size(self) -> int:
        return 2**self.s2_bits
