"""KronosTokenizer: OHLCV bars <-> two-level BSQ tokens (s1 coarse bits, s2 fine bits)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from kronos_core.checkpoint import PretrainedMixin
from kronos_core.config import TokenizerConfig
from kronos_core.layers import TransformerBlock
from kronos_core.quantizer import BSQCodec, indices_to_codes


class KronosTokenizer(nn.Module, PretrainedMixin[TokenizerConfig]):
    """Causal transformer auto-encoder with a binary spherical quantiser in the middle.

    Encoder: linear embedding, ``n_enc_layers - 1`` blocks, projection to ``s1_bits + s2_bits``.
    Decoder: projection of the code (all bits, or only the s1 bits) back to ``d_model``,
    ``n_dec_layers - 1`` blocks (shared by both paths), linear head to ``d_in``.

    Build with ``KronosTokenizer(config)`` or with the upstream keyword arguments
    (``KronosTokenizer(d_in=6, d_model=..., ...)``).
    """

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config if config is not None else TokenizerConfig.from_dict(kwargs)
        if config is not None and kwargs:
            raise TypeError("pass either a TokenizerConfig or keyword arguments, not both")
        self.config = cfg
        self.d_in, self.d_model = cfg.d_in, cfg.d_model
        self.s1_bits, self.s2_bits = cfg.s1_bits, cfg.s2_bits
        self.codebook_dim = cfg.codebook_dim

        def block() -> TransformerBlock:
            return TransformerBlock(
                cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.ffn_dropout_p, cfg.attn_dropout_p, cfg.resid_dropout_p
            )

        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.d_in)
        self.encoder = nn.ModuleList([block() for _ in range(cfg.n_enc_layers - 1)])
        self.decoder = nn.ModuleList([block() for _ in range(cfg.n_dec_layers - 1)])
        self.quant_embed = nn.Linear(cfg.d_model, cfg.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(cfg.s1_bits, cfg.d_model)
        self.post_quant_embed = nn.Linear(cfg.codebook_dim, cfg.d_model)
        self.tokenizer = BSQCodec(
            cfg.s1_bits, cfg.s2_bits, cfg.beta, cfg.gamma0, cfg.gamma, cfg.zeta, cfg.group_size
        )

    # -- pieces

    def encode_latent(self, x: Tensor) -> Tensor:
        """Pre-quantisation latent of normalised bars x [B, S, d_in].  # [B, S, s1_bits + s2_bits]"""
        z = self.embed(x)
        for layer in self.encoder:
            z = layer(z)
        return self.quant_embed(z)

    def decode_code(self, code: Tensor) -> Tensor:
        """Reconstruct bars from a scaled code: all bits [B, S, C] or only the s1 bits [B, S, s1_bits]."""
        code = code.to(self.post_quant_embed.weight.dtype)  # ids become float32 bits; a bf16 copy needs bf16
        if code.shape[-1] == self.codebook_dim:
            h = self.post_quant_embed(code)
        elif code.shape[-1] == self.s1_bits:
            h = self.post_quant_embed_pre(code)
        else:
            raise ValueError(
                f"code must have {self.codebook_dim} (full) or {self.s1_bits} (s1 only) channels, got {code.shape[-1]}"
            )
        for layer in self.decoder:
            h = layer(h)
        return self.head(h)  # [B, S, d_in]

    # -- upstream API

    def forward(self, x: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor, Tensor, Tensor]:
        """``((z_pre, z), bsq_loss, quantized, ids)``: reconstructions from the s1 bits and from
        the full code [B, S, d_in], the BSQ loss (scalar), the scaled code [B, S, C], ids [B, S]."""
        bsq_loss, quantized, ids = self.tokenizer(self.encode_latent(x))
        assert isinstance(ids, Tensor)
        z_pre = self.decode_code(quantized[..., : self.s1_bits])
        z = self.decode_code(quantized)
        return (z_pre, z), bsq_loss, quantized, ids

    @overload
    def encode(self, x: Tensor, half: Literal[False] = False) -> Tensor: ...
    @overload
    def encode(self, x: Tensor, half: Literal[True]) -> list[Tensor]: ...
    @overload
    def encode(self, x: Tensor, half: bool) -> Tensor | list[Tensor]: ...

    def encode(self, x: Tensor, half: bool = False) -> Tensor | list[Tensor]:
        """Token ids of bars x [B, S, d_in]: [B, S] over all bits, or ``[s1_ids, s2_ids]`` with ``half``."""
        _, _, ids = self.tokenizer(self.encode_latent(x), half=half, collect_metrics=False)
        return ids

    def indices_to_bits(self, x: Tensor | Sequence[Tensor], half: bool = False) -> Tensor:
        """Ids to the scaled code [B, S, C] (``±1/sqrt(C)``); ``half`` takes ``(s1_ids, s2_ids)``.

        Upstream splits with ``codebook_dim // 2`` bits each; here s1 and s2 get ``s1_bits``
        and ``s2_bits`` (identical for every published configuration).
        """
        if half:
            s1_ids, s2_ids = x
            code = torch.cat([indices_to_codes(s1_ids, self.s1_bits), indices_to_codes(s2_ids, self.s2_bits)], dim=-1)
        else:
            assert isinstance(x, Tensor)
            code = indices_to_codes(x, self.codebook_dim)
        return code * (1.0 / self.codebook_dim**0.5)

    def decode(self, x: Tensor | Sequence[Tensor], half: bool = False) -> Tensor:
        """Bars [B, S, d_in] from ids (full-code path); ``half`` takes ``(s1_ids, s2_ids)``."""
        return self.decode_code(self.indices_to_bits(x, half))
