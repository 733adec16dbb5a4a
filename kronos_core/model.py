"""The Kronos predictor: autoregressive transformer over (s1, s2) token pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kronos_core.checkpoint import PretrainedMixin
from kronos_core.config import PredictorConfig
from kronos_core.layers import CrossAttention, KVCacheLike, RMSNorm, TransformerBlock

# Sizes of the five calendar features, in the order of the stamp channels.
TIME_FEATURE_SIZES = {"minute": 60, "hour": 24, "weekday": 7, "day": 32, "month": 13}


class TokenPairEmbedding(nn.Module):
    """Embed s1 and s2 ids (each scaled by sqrt(d_model)), concatenate, fuse with a linear layer."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int) -> None:
        super().__init__()
        self.s1_bits, self.s2_bits, self.d_model = s1_bits, s2_bits, d_model
        self.emb_s1 = nn.Embedding(2**s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2**s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def split_token(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Composite ids (s1 in the high bits, s2 in the low ``s2_bits``) to ``(s1_ids, s2_ids)``."""
        ids = token_ids.long()
        return ids >> self.s2_bits, ids & ((1 << self.s2_bits) - 1)

    def forward(self, token_ids: Tensor | Sequence[Tensor]) -> Tensor:
        """``(s1_ids, s2_ids)`` [B, S] each, or composite ids [B, S].  # [B, S, d_model]"""
        if isinstance(token_ids, Tensor):
            s1_ids, s2_ids = self.split_token(token_ids)
        else:
            s1_ids, s2_ids = token_ids
        scale = math.sqrt(self.d_model)
        return self.fusion_proj(torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1))


def sinusoidal_table(n_rows: int, d_model: int) -> Tensor:
    """Fixed sin/cos table: even channels ``sin(r * w_i)``, odd channels ``cos(r * w_i)``.  # [n_rows, d_model]"""
    rows = torch.arange(n_rows, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(n_rows, d_model)
    table[:, 0::2] = torch.sin(rows * freqs)
    table[:, 1::2] = torch.cos(rows * freqs)
    return table


class SinusoidalEmbedding(nn.Module):
    """A frozen sinusoidal lookup table (state-dict key ``<name>.emb.weight``)."""

    def __init__(self, n_rows: int, d_model: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_rows, d_model)
        self.emb.weight = nn.Parameter(sinusoidal_table(n_rows, d_model), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.emb(x).detach()


class CalendarEmbedding(nn.Module):
    """Sum of minute, hour, weekday, day and month embeddings (learned, or fixed sinusoidal)."""

    def __init__(self, d_model: int, learn_te: bool) -> None:
        super().__init__()

        def table(n: int) -> nn.Module:
            return nn.Embedding(n, d_model) if learn_te else SinusoidalEmbedding(n, d_model)

        self.minute_embed = table(TIME_FEATURE_SIZES["minute"])
        self.hour_embed = table(TIME_FEATURE_SIZES["hour"])
        self.weekday_embed = table(TIME_FEATURE_SIZES["weekday"])
        self.day_embed = table(TIME_FEATURE_SIZES["day"])
        self.month_embed = table(TIME_FEATURE_SIZES["month"])

    def forward(self, stamp: Tensor) -> Tensor:
        """stamp [B, S, 5] (minute, hour, weekday, day, month; floats are truncated).  # [B, S, d_model]"""
        s = stamp.long()
        minute = self.minute_embed(s[..., 0])
        # Same summation order as upstream, so float rounding matches.
        return (
            self.hour_embed(s[..., 1]) + self.weekday_embed(s[..., 2]) + self.day_embed(s[..., 3])
            + self.month_embed(s[..., 4]) + minute
        )


class DependencyLayer(nn.Module):
    """Condition the context on an s1 embedding: ``norm(context + cross_attn(q=s1_emb, kv=context))``."""

    def __init__(self, d_model: int, n_heads: int = PredictorConfig.DEP_LAYER_HEADS) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(d_model, n_heads)
        self.norm = RMSNorm(d_model)

    def forward(self, hidden_states: Tensor, sibling_embed: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """hidden_states [B, S, d]; sibling_embed [B, S, d] or [B, 1, d].  # [B, S, d]"""
        attn = self.cross_attn(sibling_embed, hidden_states, hidden_states, padding_mask)
        return self.norm(hidden_states + attn)


def dual_cross_entropy(
    s1_logits: Tensor,  # [B, S, V1]
    s2_logits: Tensor,  # [B, S, V2]
    s1_targets: Tensor,  # [B, S]
    s2_targets: Tensor,  # [B, S]
    padding_mask: Tensor | None = None,  # [B, S], non-zero = padded (ignored)
) -> tuple[Tensor, Tensor, Tensor]:
    """``((ce_s1 + ce_s2) / 2, ce_s1, ce_s2)``, token-averaged cross-entropies."""
    if padding_mask is not None:
        valid = padding_mask == 0
        s1_logits, s2_logits = s1_logits[valid], s2_logits[valid]
        s1_targets, s2_targets = s1_targets[valid], s2_targets[valid]
    ce_s1 = F.cross_entropy(s1_logits.reshape(-1, s1_logits.shape[-1]), s1_targets.reshape(-1))
    ce_s2 = F.cross_entropy(s2_logits.reshape(-1, s2_logits.shape[-1]), s2_targets.reshape(-1))
    return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2


class TokenHeads(nn.Module):
    """Linear heads for s1 (``forward``) and for s2 after conditioning (``cond_forward``)."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int) -> None:
        super().__init__()
        self.vocab_s1, self.vocab_s2 = 2**s1_bits, 2**s2_bits
        self.proj_s1 = nn.Linear(d_model, self.vocab_s1)
        self.proj_s2 = nn.Linear(d_model, self.vocab_s2)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x2: Tensor) -> Tensor:
        return self.proj_s2(x2)

    def compute_loss(
        self,
        s1_logits: Tensor,
        s2_logits: Tensor,
        s1_targets: Tensor,
        s2_targets: Tensor,
        padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return dual_cross_entropy(s1_logits, s2_logits, s1_targets, s2_targets, padding_mask)


class Kronos(nn.Module, PretrainedMixin[PredictorConfig]):
    """Decoder-only transformer predicting the next s1 token, then s2 conditioned on it.

    Build with ``Kronos(config)`` or the upstream keyword arguments (``Kronos(s1_bits=10, ...)``).
    A fresh model is initialised like upstream (Xavier-normal linears with zero bias, normal
    embeddings with std ``d_model ** -0.5``, unit norms); fixed time tables stay sinusoidal.
    """

    config_class = PredictorConfig

    def __init__(self, config: PredictorConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a PredictorConfig or keyword arguments, not both")
        cfg = config if config is not None else PredictorConfig.from_dict(kwargs)
        self.config = cfg
        self.s1_bits, self.s2_bits = cfg.s1_bits, cfg.s2_bits
        self.n_layers, self.d_model = cfg.n_layers, cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.s1_vocab_size = cfg.s1_vocab_size

        self.token_drop = nn.Dropout(cfg.token_dropout_p)
        self.embedding = TokenPairEmbedding(cfg.s1_bits, cfg.s2_bits, cfg.d_model)
        self.time_emb = CalendarEmbedding(cfg.d_model, cfg.learn_te)
        self.transformer = nn.ModuleList(
            [
                TransformerBlock(
                    cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.ffn_dropout_p, cfg.attn_dropout_p, cfg.resid_dropout_p
                )
                for _ in range(cfg.n_layers)
            ]
        )
        self.norm = RMSNorm(cfg.d_model)
        self.dep_layer = DependencyLayer(cfg.d_model)
        self.head = TokenHeads(cfg.s1_bits, cfg.s2_bits, cfg.d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            # Upstream's init loop also re-randomises the frozen sinusoidal tables (they are
            # nn.Embedding inside); here they stay sinusoidal. Loading a checkpoint overwrites
            # them either way, as they are part of its state dict.
            if isinstance(module, SinusoidalEmbedding):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
                nn.init.normal_(module.weight, mean=0.0, std=self.d_model**-0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # -- pieces (the engine composes these)

    def embed(self, s1_ids: Tensor, s2_ids: Tensor, stamp: Tensor | None = None) -> Tensor:
        """Token embedding plus time embedding, after token dropout.  # [B, S, d_model]"""
        x = self.embedding([s1_ids, s2_ids])
        if stamp is not None:
            x = x + self.time_emb(stamp)
        return self.token_drop(x)

    def run_transformer(
        self,
        x: Tensor,  # [B, S, d_model]
        *,
        padding_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_caches: Sequence[KVCacheLike] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """The causal blocks and the final RMSNorm (hooks as in :class:`~kronos_core.layers.SelfAttention`)."""
        if kv_caches is not None and len(kv_caches) != self.n_layers:
            raise ValueError(f"expected {self.n_layers} per-layer KV caches, got {len(kv_caches)}")
        for i, layer in enumerate(self.transformer):
            x = layer(
                x,
                positions=positions,
                kv_cache=None if kv_caches is None else kv_caches[i],
                attn_mask=attn_mask,
                padding_mask=padding_mask,
            )
        return self.norm(x)  # [B, S, d_model]

    # -- upstream API

    def forward(
        self,
        s1_ids: Tensor,
        s2_ids: Tensor,
        stamp: Tensor | None = None,
        padding_mask: Tensor | None = None,
        use_teacher_forcing: bool = False,
        s1_targets: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(s1_logits [B, S, V1], s2_logits [B, S, V2])``.

        s2 is conditioned on ``s1_targets`` with teacher forcing, otherwise on s1 ids sampled
        from the s1 distribution (``generator`` makes that draw reproducible).
        """
        context = self.run_transformer(self.embed(s1_ids, s2_ids, stamp), padding_mask=padding_mask)
        s1_logits = self.head(context)
        if use_teacher_forcing:
            if s1_targets is None:
                raise ValueError("use_teacher_forcing=True needs s1_targets")
            sibling_ids = s1_targets
        else:
            probs = F.softmax(s1_logits.detach(), dim=-1)
            sibling_ids = torch.multinomial(probs.reshape(-1, self.s1_vocab_size), 1, generator=generator)
            sibling_ids = sibling_ids.view(s1_ids.shape)
        x2 = self.dep_layer(context, self.embedding.emb_s1(sibling_ids), padding_mask)
        return s1_logits, self.head.cond_forward(x2)

    def decode_s1(
        self,
        s1_ids: Tensor,
        s2_ids: Tensor,
        stamp: Tensor | None = None,
        padding_mask: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        kv_caches: Sequence[KVCacheLike] | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(s1_logits [B, S, V1], context [B, S, d_model])``; context feeds :meth:`decode_s2`."""
        x = self.embed(s1_ids, s2_ids, stamp)
        context = self.run_transformer(
            x, padding_mask=padding_mask, positions=positions, kv_caches=kv_caches, attn_mask=attn_mask
        )
        return self.head(context), context

    def decode_s2(self, context: Tensor, s1_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """s2 logits [B, S, V2] from the context [B, S, d] and s1 ids, [B, S] or one step [B, 1].

        Upstream semantics, kept exactly (see :class:`~kronos_core.layers.CrossAttention`):

        - Full-length ids [B, S]: query row ``t`` and key row ``t`` are rotated to position
          ``t``; in eval mode nothing is masked, so row ``t`` also attends to rows after ``t``.
        - One step [B, 1] (generation): rotary positions follow the query length, so the query
          and *all* S context rows sit at position 0 (no rotation), and the single query row
          attends to all S rows. Its attention output [B, 1, d] is then added to every context
          row by the residual, so the result still has S rows; generation reads the last one,
          ``proj_s2(norm(context[:, -1] + attn))``.
        """
        x2 = self.dep_layer(context, self.embedding.emb_s1(s1_ids), padding_mask)
        return self.head.cond_forward(x2)
