"""The fast generation engine: the same answers as upstream's recompute loop, with less work.

Upstream runs the whole window through the predictor at every generated step. Here:

- the context is tokenised once and run through the predictor once (prefill), filling a
  per-layer :class:`~kronos_core.kv_cache.KVCache`;
- each generated step feeds one token through the transformer, attending to the cache;
- the dependency-aware layer's keys/values (projections of the context rows) are cached
  too, and only the last row of its output is computed (upstream computes all rows and
  keeps the last);
- the prompt is prefilled once per series and shared by its ``sample_count`` paths, for the
  predictor and for the tokenizer's decoder (whose context rows are decoded once, then each
  path decodes only its horizon against that prefix);
- series of different lengths share one batch: right padding, per-row positions and masks;
- the sample paths of a series read one copy of its context's keys and values, each path adding
  its own generated rows (:mod:`kronos_core.shared_prefix`);
- on CUDA the generated step is captured once per batch shape as a CUDA graph and replayed
  (:mod:`kronos_core.graphed_decode`), and the blocks can go through ``torch.compile``.

Exactness, including the sliding window: while ``len(context) + step <= max_context`` the
cached computation equals upstream's (rows of a causal window never change when tokens are
appended). Once a row's sequence outgrows ``max_context``, upstream re-windows it to the last
``max_context`` tokens and renumbers positions from 0, which changes every hidden state; those
rows fall back to a full recompute of their window at every remaining step, exactly like
upstream and at upstream's cost for those steps. Rows that still fit keep their caches.

Sampling uses :mod:`kronos_core.counter_rng` when per-series seeds are given (a series'
draws then do not depend on the rest of the batch), else ``generator`` or torch's global RNG.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kronos_core.counter_rng import path_seeds, sample_inverse_cdf, uniforms
from kronos_core.device import resolve_device
from kronos_core.fused_step import FusedBlocks, masked_attention
from kronos_core.graphed_decode import DEFAULT_GRAPH_BUCKETS, BucketedSteps, LoopBuffers, validate_buckets
from kronos_core.kv_cache import KVCache, key_mask, make_caches
from kronos_core.layers import SelfAttention
from kronos_core.model import Kronos
from kronos_core.packed_linear import PackedLinear, Quantize
from kronos_core.sampling import filter_logits
from kronos_core.shared_prefix import shared_prefix_attention
from kronos_core.tokenizer import KronosTokenizer

DecodeLoop = Literal["auto", "dynamic", "fixed", "graphed"]


@dataclass(frozen=True)
class SamplingParams:
    """Upstream's sampling knobs (same names and defaults as ``KronosPredictor.predict``)."""

    T: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    sample_count: int = 1

    def __post_init__(self) -> None:
        if not self.T > 0:
            raise ValueError(f"temperature T must be > 0, got {self.T}; use top_k=1 for greedy decoding")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.sample_count < 1:
            raise ValueError(f"sample_count must be >= 1, got {self.sample_count}")


@dataclass
class GenerationStats:
    """What the engine did (token-forwards per stage, wall time per stage)."""

    encode_tokens: int = 0
    given_tokens: int = 0  # context tokens handed in (ids another forecaster encoded), not encoded
    prefill_tokens: int = 0
    step_tokens: int = 0
    recompute_tokens: int = 0
    decode_tokens: int = 0
    sessions_moved: int = 0  # incremental: warm sessions moved inside the session pool
    # incremental: series served from a warm session (only the new bars ran), rebuilt from their
    # token cache (no warm session matched), or refreshed (new statistics, the whole window)
    series_warm: int = 0
    series_rebuilt: int = 0
    series_refreshed: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    decode_loops: list[str] = field(default_factory=list)  # the loop of each horizon ("fixed+shared", ...)
    # Called before a stage's time is read (e.g. torch.cuda.synchronize): on a GPU, work is queued
    # asynchronously, and without it the stage times say when work was queued, not when it ran.
    synchronize: Callable[[], None] | None = None

    def add_time(self, stage: str, since: float) -> None:
        if self.synchronize is not None:
            self.synchronize()
        self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + (time.perf_counter() - since) * 1e3


@dataclass
class DecodeState:
    """Everything generation needs after the context has been run through the predictor.

    One row per series. Token/stamp buffers index tokens from the start of the series' token
    sequence; while a row fits in ``max_context`` the token index is also its rotary position.
    """

    caches: list[KVCache]  # per layer, [B, H, T, D]
    last_logits: Tensor  # [B, V1] s1 logits after the last context token
    h_last: Tensor  # [B, d] last context row (after the final norm)
    dep_k: Tensor  # [B, Hd, T, Dd] dependency-layer keys of the context rows
    dep_v: Tensor  # [B, Hd, T, Dd]
    tok1: Tensor  # [B, L_max + H] s1 ids (context, then room for the horizon)
    tok2: Tensor  # [B, L_max + H]
    stamps: Tensor  # [B, L_max + H, 5] time features of context and horizon
    lengths: list[int]  # context tokens per row

    @property
    def cache_len(self) -> int:
        return self.dep_k.shape[2]


def _gather_windows(buf: Tensor, starts: Tensor, width: int) -> Tensor:
    """Rows ``buf[n, starts[n] : starts[n] + width]`` (indices clamped to the buffer).  # [N, width, ...]"""
    idx = (starts[:, None] + torch.arange(width, device=buf.device)[None, :]).clamp_(0, buf.shape[1] - 1)
    if buf.dim() == 2:
        return torch.gather(buf, 1, idx)
    return torch.gather(buf, 1, idx[:, :, None].expand(-1, -1, buf.shape[2]))


def _scatter_rows(buf: Tensor, positions: Tensor, values: Tensor) -> None:
    """``buf[n, :, positions[n, s]] = values[n, :, s]`` for a [N, H, T, D] buffer."""
    rows = torch.arange(buf.shape[0], device=buf.device)[:, None]
    buf.transpose(1, 2)[rows, positions] = values.transpose(1, 2)


class _Sampler:
    """One uniform per row and draw: counter-based (seeded), from a generator, or global."""

    def __init__(self, seeds: Tensor | None, generator: torch.Generator | None, n_rows: int, device: torch.device):
        self.seeds, self.generator, self.n_rows, self.device = seeds, generator, n_rows, device

    def draw(self, logits: Tensor, params: SamplingParams, counter: int | Tensor) -> Tensor:  # [N, 1]
        scaled = logits if params.T == 1.0 else logits / params.T  # x / 1.0 == x: one operator fewer
        probs = F.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)
        if self.seeds is not None:
            u = uniforms(self.seeds, counter)
        else:
            u = torch.rand(self.n_rows, generator=self.generator, dtype=torch.float64, device=self.device)
        return sample_inverse_cdf(probs, u)


class KronosEngine:
    """KV-cached, batched generation over a :class:`Kronos` predictor and its tokenizer."""

    def __init__(
        self,
        model: Kronos,
        tokenizer: KronosTokenizer,
        *,
        device: str | torch.device | None = None,
        max_context: int = 512,
        dtype: torch.dtype | None = None,
        packed: bool = True,
        decode_loop: DecodeLoop = "auto",
        compile_blocks: bool = False,
        graph_buckets: Sequence[int] | None = None,
        residual_fp32: bool = False,
        tokenizer_fp32: bool = False,
        quantize: Quantize | None = None,
    ) -> None:
        """``packed``: on CPU in fp32, run the predictor's matrix products with oneDNN-prepacked weights.

        ``decode_loop``: how generated steps run while no row outgrows ``max_context``.
        ``"dynamic"`` reads only the cache slots filled so far (cheapest per step on CPU);
        ``"fixed"`` keeps every shape the same from step to step (what a CUDA graph needs);
        ``"graphed"`` captures the fixed step as a CUDA graph once per batch shape and replays it
        (CUDA only); ``"auto"`` is ``"graphed"`` on CUDA and ``"dynamic"`` elsewhere, except that
        with several sample paths it takes the fixed-shape loop, where the paths of a series read
        one copy of the context's cache (:mod:`kronos_core.shared_prefix`). A horizon in which some
        row outgrows ``max_context`` always runs the dynamic loop.

        ``compile_blocks``: run the transformer blocks' products and elementwise work through
        ``torch.compile`` (the first calls compile; meant for CUDA, see :meth:`FusedBlocks.compile`).
        On CPU it needs ``packed=False`` and was measured slower than the eager engine.

        ``graph_buckets``: batch sizes (series per call) the graphed loop pads to
        (:mod:`kronos_core.graphed_decode`; default ``DEFAULT_GRAPH_BUCKETS``); :meth:`warm_up`
        captures them all. With ``decode_loop="fixed"`` they make the eager fixed loop run the same
        padded buffers (a CPU check of the padding); ``"auto"`` and ``"dynamic"`` on CPU ignore them.

        ``residual_fp32``: with a low-precision ``dtype``, keep the residual stream of every
        transformer stack (the running hidden state between blocks and its adds) in float32 while
        the products run in ``dtype`` (see :class:`FusedBlocks`). No effect in float32.

        ``tokenizer_fp32``: with a low-precision ``dtype``, run the tokenizer (encoder, quantizer,
        decoder and their caches) in float32 and only the predictor in ``dtype``. In bf16 the encoder
        puts some context bars into another bin than float32 does, which is most of bf16's drift
        (``results/bf16_residual.md``); the predictor only sees the ids.

        ``quantize="int8"`` (opt-in, CPU, float32 only): the transformer blocks' products of the
        predictor and the tokenizer run as int8 dynamic quantization (:class:`PackedLinear`); heads,
        embeddings and attention stay float32. Not exact: forecasts move by the quantization error
        (``kronos-stream bench inference --compare-int8`` measures by how much).
        """
        if max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {max_context}")
        if decode_loop not in ("auto", "dynamic", "fixed", "graphed"):
            raise ValueError(f"decode_loop must be auto, dynamic, fixed or graphed, got {decode_loop!r}")
        self.device = resolve_device(device)
        if quantize is not None and (self.device.type != "cpu" or (dtype or torch.float32) != torch.float32):
            raise ValueError(f"quantize={quantize!r} needs the CPU and float32, got {self.device} and {dtype}")
        self.quantize = quantize
        if decode_loop == "graphed" and self.device.type != "cuda":
            raise ValueError(f"decode_loop='graphed' needs a CUDA device, got {self.device}; use 'fixed' or 'dynamic'")
        self._auto_loop = decode_loop == "auto"
        if decode_loop == "auto":
            decode_loop = "graphed" if self.device.type == "cuda" else "dynamic"
        self.decode_loop: DecodeLoop = decode_loop
        buckets = None
        if decode_loop == "graphed":
            buckets = validate_buckets(graph_buckets if graph_buckets is not None else DEFAULT_GRAPH_BUCKETS)
        elif decode_loop == "fixed" and not self._auto_loop and graph_buckets is not None:
            buckets = validate_buckets(graph_buckets)
        self.graph_buckets = buckets  # None: the fixed loop runs unpadded
        self._graphs = (
            None if buckets is None
            else BucketedSteps(self.fixed_step, buckets, max_context=max_context, graphs=decode_loop == "graphed")
        )
        self.graph_captures_at_warm_up: int | None = None  # set by warm_up
        self.dtype = dtype or torch.float32
        if self.dtype != torch.float32:
            # A private low-precision copy; the caller's fp32 modules stay untouched.
            model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer_dtype = torch.float32 if tokenizer_fp32 else self.dtype
        self.tokenizer = tokenizer.to(self.device, self.tokenizer_dtype).eval()
        self.max_context = max_context
        m, tok = self.model, self.tokenizer
        self.residual_fp32 = residual_fp32 and self.dtype != torch.float32
        r32 = self.residual_fp32
        q8 = quantize
        self._fused = FusedBlocks(m.transformer, m.norm, pack=packed, residual_fp32=r32, quantize=q8)
        self._encoder = FusedBlocks(tok.encoder, pack=packed, residual_fp32=r32, quantize=q8) if len(tok.encoder) else None
        self._decoder = FusedBlocks(tok.decoder, pack=packed, residual_fp32=r32, quantize=q8) if len(tok.decoder) else None
        self.packed = self._fused.packed
        if compile_blocks and (self.packed or quantize is not None):
            raise ValueError(
                "compile_blocks cannot compile oneDNN-prepacked or int8 weights (inductor needs plain weight "
                "tensors); pass packed=False with it on CPU. Measured on a 2-core CPU it did not pay: "
                "results/bench_inference_compile_cpu.json"
            )
        if compile_blocks:
            for blocks in (self._fused, self._encoder, self._decoder):
                if blocks is not None:
                    blocks.compile()
        self.compiled = compile_blocks
        with torch.no_grad():  # the per-step products outside the blocks, prepacked too
            cross = m.dep_layer.cross_attn
            fusion = m.embedding.fusion_proj
            self._fusion = PackedLinear(fusion.weight, fusion.bias, pack=packed)
            self._head_s1 = PackedLinear(m.head.proj_s1.weight, m.head.proj_s1.bias, pack=packed)
            self._head_s2 = PackedLinear(m.head.proj_s2.weight, m.head.proj_s2.bias, pack=packed)
            self._dep_q = PackedLinear(cross.q_proj.weight, cross.q_proj.bias, pack=packed)
            self._dep_out = PackedLinear(cross.out_proj.weight, cross.out_proj.bias, pack=packed)
            self._dep_kv = PackedLinear(
                torch.cat([cross.k_proj.weight, cross.v_proj.weight]),
                torch.cat([cross.k_proj.bias, cross.v_proj.bias]),
                pack=packed,
            )

    @functools.cached_property
    def tokenizer_key(self) -> str:
        """A digest of the tokenizer's weights and of how this engine runs it (dtype, device kind,
        packing, quantization): two engines with the same key encode the same bars into the same ids."""
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{self.tokenizer_dtype}|{self.device.type}|{self.packed}|{self.quantize}".encode())
        for name, tensor in sorted(self.tokenizer.state_dict().items()):
            h.update(f"|{name}:{tensor.dtype}:{tuple(tensor.shape)}|".encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ cache factories

    def predictor_caches(self, rows: int, length: int) -> list[KVCache]:
        m = self.model
        return make_caches(m.n_layers, rows, m.n_heads, length, m.head_dim, device=self.device, dtype=self.dtype)

    def _coder_caches(self, blocks: torch.nn.ModuleList, rows: int, length: int) -> list[KVCache]:
        if len(blocks) == 0:
            return []
        attn = blocks[0].self_attn
        assert isinstance(attn, SelfAttention)
        return make_caches(
            len(blocks), rows, attn.n_heads, length, attn.head_dim, device=self.device, dtype=self.tokenizer_dtype
        )

    def encoder_caches(self, rows: int, length: int) -> list[KVCache]:
        return self._coder_caches(self.tokenizer.encoder, rows, length)

    def decoder_caches(self, rows: int, length: int) -> list[KVCache]:
        return self._coder_caches(self.tokenizer.decoder, rows, length)

    # ------------------------------------------------------------------ tokenizer pieces

    def encode(
        self,
        x: Tensor,  # [B, S, 6] normalised bars
        *,
        positions: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """s1, s2 ids [B, S]; with caches, rows are appended at ``positions`` (incremental encoding)."""
        z = self.tokenizer.embed(x.to(self.tokenizer_dtype))
        if self._encoder is not None:
            out = self._encoder.forward(z, self._positions(z, positions), list(caches) if caches else None, attn_mask)
            assert out is not None
            z = out
        _, _, ids = self.tokenizer.tokenizer(self.tokenizer.quant_embed(z), half=True, collect_metrics=False)
        return ids[0], ids[1]

    def decode_ids(
        self,
        s1: Tensor,
        s2: Tensor,  # [B, S]
        *,
        positions: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Bars [B, S, 6] (normalised) from ids through the full-code decoder path."""
        h = self._decoder_input(s1, s2)
        if self._decoder is not None:
            out = self._decoder.forward(h, self._positions(h, positions), list(caches) if caches else None, attn_mask)
            assert out is not None
            h = out
        return self.tokenizer.head(h).float()

    def fill_decoder_caches(
        self, s1: Tensor, s2: Tensor, positions: Tensor, caches: Sequence[KVCache], attn_mask: Tensor | None = None
    ) -> None:
        """Put the decoder keys/values of ids [B, S] into ``caches`` without decoding them (the causal
        decoder's later rows need them; their own outputs are not wanted)."""
        if self._decoder is None:
            return
        self._decoder.forward(self._decoder_input(s1, s2), positions, list(caches), attn_mask, kv_only=True)

    def _decoder_input(self, s1: Tensor, s2: Tensor) -> Tensor:
        """The decoder's input rows for ids [B, S]: their full code, embedded.  # [B, S, d]"""
        return self.tokenizer.post_quant_embed(self.tokenizer.indices_to_bits([s1, s2], half=True).to(self.tokenizer_dtype))

    def _positions(self, x: Tensor, positions: Tensor | None) -> Tensor:
        return torch.arange(x.shape[1], device=self.device) if positions is None else positions

    def embed(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> Tensor:
        """``Kronos.embed`` in inference (no token dropout) with the fusion product prepacked.  # [N, S, d]"""
        emb = self.model.embedding
        scale = math.sqrt(emb.d_model)
        x = self._fusion(torch.cat([emb.emb_s1(s1) * scale, emb.emb_s2(s2) * scale], dim=-1))
        return x + self.model.time_emb(stamp.to(self.dtype))

    def head_s1(self, h: Tensor) -> Tensor:
        """s1 logits of final-normed rows, float32.  # [..., V1]"""
        return self._head_s1(h).float()

    def dep_kv(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Dependency-layer keys and values of context rows [N, S, d] (unrotated).  # [N, Hd, S, Dd] each"""
        cross = self.model.dep_layer.cross_attn
        n, s, _ = ctx.shape
        kv = self._dep_kv(ctx).view(n, s, 2, cross.n_heads, cross.head_dim).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    # ------------------------------------------------------------------ predictor pieces

    def step(
        self,
        s1: Tensor,
        s2: Tensor,
        stamp: Tensor,
        positions: Tensor,
        caches: Sequence[KVCache],
        kv_len: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Feed tokens [N, S] at ``positions`` [N, S]: (s1 logits [N, V1], rows [N, S, d], dep k, dep v).

        ``kv_len`` (optional) bounds the cache slots attention reads: ``max(positions) + 1``.
        """
        kv_len = kv_len or caches[0].max_len
        x = self.embed(s1, s2, stamp)
        h = self._fused.forward(x, positions, list(caches), key_mask(positions, kv_len), kv_len)
        assert h is not None
        k, v = self.dep_kv(h)
        return self._head_s1(h[:, -1]).float(), h, k, v

    def _step_shared(
        self, s1: Tensor, s2: Tensor, stamp: Tensor, positions: Tensor, b: LoopBuffers, slot: Tensor, prefix_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`step` of one token per path [N, 1] with the context shared by the paths of a series:
        the new keys and values go to suffix slot ``slot`` [1]; attention reads the series' prefix
        (``prefix_mask`` [B, 1, 1, P]) and the path's suffix up to ``slot``."""
        assert b.suffix is not None
        suffix_mask = torch.arange(b.suffix[0].max_len, device=self.device) <= slot  # [G]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            assert b.suffix is not None
            sfx = b.suffix[i]
            sfx.k.index_copy_(2, slot, k)
            sfx.v.index_copy_(2, slot, v)
            pre = b.caches[i]
            return shared_prefix_attention(q, pre.k, pre.v, prefix_mask, sfx.k, sfx.v, suffix_mask, b.paths)

        h = self._fused.run(self.embed(s1, s2, stamp), positions, attend)
        assert h is not None
        k, v = self.dep_kv(h)
        return self._head_s1(h[:, -1]).float(), h, k, v

    def transformer(self, x: Tensor, caches: list[KVCache] | None) -> Tensor:
        """Prefill: embedded rows x [N, S, d] at positions 0..S-1, filling ``caches``.  # [N, S, d]"""
        out = self._fused.forward(x, torch.arange(x.shape[1], device=self.device), caches)
        assert out is not None
        return out

    def s2_logits(
        self, s1: Tensor, h_last: Tensor, dep_k: Tensor, dep_v: Tensor, n_keys: Tensor, kv_len: int | None = None
    ) -> Tensor:
        """Upstream's one-step ``decode_s2``, last row only.  # [N, V2]

        s1 [N, 1]; h_last [N, d] the last context row; dep_k/dep_v [N, H, T, D] projected context
        rows; n_keys [N] how many of them are valid for each row (``kv_len``: their maximum, when
        known, so unused cache slots are not read). With a one-row query upstream rotates query and
        keys to position 0, i.e. not at all (cos 0 = 1, sin 0 = 0): the rotation is skipped here,
        bit-identically, instead of being applied to every cached key at every step.
        """
        if kv_len is not None:
            dep_k, dep_v = dep_k[:, :, :kv_len], dep_v[:, :, :kv_len]
        valid = torch.arange(dep_k.shape[2], device=self.device)[None, :] < n_keys[:, None]  # [N, T]
        return self._s2_logits_with(s1, h_last, lambda q: masked_attention(q, dep_k, dep_v, valid[:, None, None, :]))

    def _s2_logits_with(self, s1: Tensor, h_last: Tensor, attend: Callable[[Tensor], Tensor]) -> Tensor:
        """:meth:`s2_logits` with the attention over the dependency keys left to ``attend(q)``,
        q [N, H, 1, D] -> [N, H, 1, D].  # [N, V2]"""
        cross = self.model.dep_layer.cross_attn
        query = self.model.embedding.emb_s1(s1)  # [N, 1, d], unscaled as upstream
        n, _, d = query.shape
        q = self._dep_q(query).view(n, 1, cross.n_heads, cross.head_dim).transpose(1, 2)  # [N, H, 1, D]
        attn = self._dep_out(attend(q).transpose(1, 2).reshape(n, 1, d))
        x2 = self.model.dep_layer.norm(h_last[:, None, :] + attn)
        return self._head_s2(x2)[:, 0].float()

    def _recompute_window(self, s1: Tensor, s2: Tensor, stamp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Upstream's full pass over windows [n, max_context]: (s1 logits, last row, dep k, dep v)."""
        ctx = self.transformer(self.embed(s1, s2, stamp), None)
        dep_k, dep_v = self.dep_kv(ctx)
        return self._head_s1(ctx[:, -1]).float(), ctx[:, -1], dep_k, dep_v

    # ------------------------------------------------------------------ generation

    def prefill(
        self,
        xs: Sequence[np.ndarray],
        x_stamps: Sequence[np.ndarray],
        y_stamps: Sequence[np.ndarray],
        horizon: int,
        stats: GenerationStats,
        given_ids: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> DecodeState:
        """Tokenise every context once and run its last ``max_context`` tokens through the predictor.

        ``given_ids[b]``, when not None: the (s1, s2) ids of ``xs[b]``, already encoded by a tokenizer
        of the same :attr:`tokenizer_key` (that row is not encoded again)."""
        dev, t0 = self.device, time.perf_counter()
        lengths = [len(x) for x in xs]
        if min(lengths) < 1:
            raise ValueError("every series needs at least one context row")
        n, l_max = len(xs), max(lengths)
        # Padded on the host and moved in one copy each (per-series copies cost ~10 us apiece on a GPU).
        x_np = np.zeros((n, l_max, 6), dtype=np.float32)
        stamps_np = np.zeros((n, l_max + horizon, 5), dtype=np.float32)
        for b, (x, xs_, ys_) in enumerate(zip(xs, x_stamps, y_stamps, strict=True)):
            x_np[b, : lengths[b]] = x
            stamps_np[b, : lengths[b]] = xs_
            stamps_np[b, lengths[b] : lengths[b] + horizon] = ys_
        x_pad, stamps = torch.from_numpy(x_np).to(dev), torch.from_numpy(stamps_np).to(dev)
        tok1 = torch.zeros(n, l_max + horizon, dtype=torch.long, device=dev)
        tok2 = torch.zeros_like(tok1)
        self._context_ids(x_pad, lengths, given_ids, tok1, tok2, stats)
        stats.add_time("encode", t0)

        t1 = time.perf_counter()
        length_t = torch.tensor(lengths, device=dev)
        window = length_t.clamp(max=self.max_context)
        w_max = int(window.max())
        starts = length_t - window
        p1, p2 = _gather_windows(tok1, starts, w_max), _gather_windows(tok2, starts, w_max)
        pst = _gather_windows(stamps, starts, w_max).to(self.dtype)
        cache_len = min(self.max_context, w_max + horizon)
        caches = self.predictor_caches(n, cache_len)
        ctx = self.transformer(self.embed(p1, p2, pst), caches)  # [B, W, d]
        rows = torch.arange(n, device=dev)
        h_last = ctx[rows, window - 1]  # [B, d]: only the last row's s1 logits are needed
        k_ctx, v_ctx = self.dep_kv(ctx)  # [B, Hd, W, Dd]
        dep_k = k_ctx.new_zeros(n, k_ctx.shape[1], cache_len, k_ctx.shape[3])
        dep_v = torch.zeros_like(dep_k)
        dep_k[:, :, :w_max], dep_v[:, :, :w_max] = k_ctx, v_ctx
        stats.prefill_tokens += int(window.sum())
        stats.add_time("prefill", t1)
        return DecodeState(
            caches=caches,
            last_logits=self._head_s1(h_last).float(),
            h_last=h_last,
            dep_k=dep_k,
            dep_v=dep_v,
            tok1=tok1,
            tok2=tok2,
            stamps=stamps,
            lengths=lengths,
        )

    def _context_ids(
        self,
        x_pad: Tensor,
        lengths: list[int],
        given_ids: Sequence[tuple[np.ndarray, np.ndarray] | None] | None,
        tok1: Tensor,
        tok2: Tensor,
        stats: GenerationStats,
    ) -> None:
        """The contexts' ids into ``tok1``/``tok2`` [:, :L_max]: those given copied, the others encoded
        in one call (right padding is harmless: the encoder is causal)."""
        n, l_max = x_pad.shape[0], x_pad.shape[1]
        given = list(given_ids) if given_ids is not None else [None] * n
        if len(given) != n:
            raise ValueError(f"got given_ids for {len(given)} series but {n} contexts; pass one entry (or None) each")
        todo = [b for b, g in enumerate(given) if g is None]
        if len(todo) == n:
            tok1[:, :l_max], tok2[:, :l_max] = self.encode(x_pad)
        elif todo:
            rows = torch.tensor(todo, device=x_pad.device)
            tok1[rows, :l_max], tok2[rows, :l_max] = self.encode(x_pad[rows])
        for b, g in enumerate(given):
            if g is None:
                continue
            s1, s2 = (np.asarray(ids) for ids in g)
            if s1.shape != (lengths[b],) or s2.shape != (lengths[b],):
                raise ValueError(
                    f"given_ids[{b}] has {s1.shape}/{s2.shape} ids for a context of {lengths[b]} bars; "
                    "pass the ids of exactly that context"
                )
            tok1[b, : lengths[b]] = torch.from_numpy(s1.astype(np.int64, copy=False)).to(tok1.device)
            tok2[b, : lengths[b]] = torch.from_numpy(s2.astype(np.int64, copy=False)).to(tok2.device)
        encoded = sum(lengths[b] for b in todo)
        stats.encode_tokens += encoded
        stats.given_tokens += sum(lengths) - encoded

    def run_horizon(
        self,
        state: DecodeState,
        horizon: int,
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        stats: GenerationStats,
        decoder_prefix: tuple[list[KVCache], Tensor] | None = None,
    ) -> np.ndarray:
        """Sample ``horizon`` tokens for every path and decode them.  # [B, S, H, 6] normalised

        ``decoder_prefix`` optionally gives ready decoder caches [B, ...] of the context tokens and
        the number of rows filled per series (incremental sessions keep these warm).
        """
        preds, _ = self.run_horizon_tokens(
            state, horizon, params, seeds=seeds, generator=generator, stats=stats, decoder_prefix=decoder_prefix
        )
        return preds

    def run_horizon_tokens(
        self,
        state: DecodeState,
        horizon: int,
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        stats: GenerationStats,
        decoder_prefix: tuple[list[KVCache], Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`run_horizon`, plus the generated (s1, s2) ids.  # [B, S, H, 6], [2, B, S, H]"""
        dev, n_paths = self.device, params.sample_count
        n_series = len(state.lengths)
        t0 = time.perf_counter()
        row_lengths = [n for n in state.lengths for _ in range(n_paths)]
        fits = max(row_lengths) + horizon - 1 <= self.max_context  # no row outgrows the window
        kind = self._loop_for(n_paths, fits, generator)
        seed_t = None
        if seeds is not None:
            if len(seeds) != n_series:
                raise ValueError(f"got {len(seeds)} seeds for {n_series} series; pass one seed per series")
            seed_t = path_seeds(torch.tensor([int(s) for s in seeds], dtype=torch.long, device=dev), n_paths)
        shared = kind != "dynamic" and n_paths > 1
        bucketed = kind != "dynamic" and self._graphs is not None and generator is None
        loop = self._loop_buffers(state, n_paths, horizon, seed_t, shared=shared, copy=not bucketed)
        stats.decode_loops.append(kind + ("+shared" if shared else "") + ("+bucketed" if bucketed else ""))
        if kind == "dynamic":
            self._dynamic_loop(loop, row_lengths, horizon, params, generator, stats)
        elif bucketed:
            assert self._graphs is not None
            loop.tok1, loop.tok2 = self._graphs.run(loop, params, horizon)
            stats.step_tokens += len(row_lengths) * (horizon - 1)
        else:
            for t in range(horizon):
                loop.t.fill_(t)
                self.fixed_step(loop, params, generator, feed=t + 1 < horizon)
            stats.step_tokens += len(row_lengths) * (horizon - 1)
        tok1, tok2, length_t = loop.tok1, loop.tok2, loop.length_t
        stats.add_time("generate", t0)

        t1 = time.perf_counter()
        preds = self._decode_horizon(tok1, tok2, length_t, horizon, n_paths, stats, decoder_prefix)
        stats.add_time("decode", t1)
        gen = torch.stack([_gather_windows(tok1, length_t, horizon), _gather_windows(tok2, length_t, horizon)])
        return (
            preds.reshape(n_series, n_paths, horizon, -1).cpu().numpy(),
            gen.reshape(2, n_series, n_paths, horizon).cpu().numpy(),
        )

    def _loop_for(self, n_paths: int, fits: bool, generator: torch.Generator | None) -> DecodeLoop:
        """Which loop generates this horizon: ``dynamic`` (also whenever a row will slide), ``fixed``
        or ``graphed``. With several sample paths, ``decode_loop="auto"`` takes the fixed-shape loop,
        whose paths share their context's cache (:mod:`kronos_core.shared_prefix`)."""
        if not fits or (self.decode_loop == "dynamic" and not (self._auto_loop and n_paths > 1)):
            return "dynamic"
        if self.decode_loop == "graphed" and generator is None:
            return "graphed"
        return "fixed"

    def _loop_buffers(
        self, state: DecodeState, n_paths: int, horizon: int, seeds: Tensor | None, *, shared: bool, copy: bool = True
    ) -> LoopBuffers:
        """One row per sample path (series-major). The state's tensors are not modified: what the
        loop writes is a copy, except the caches' unused slots (single path) that later writes of a
        session overwrite anyway. ``shared``: the paths of a series read one copy of the context's
        keys and values (the prefix); their generated rows get their own suffix caches.
        ``copy=False``: the loop only reads these buffers (the bucketed loop copies them into its
        static buffers), so the single-path dependency keys are not cloned."""
        dev, n_rows = self.device, len(state.lengths) * n_paths

        def per_path(t: Tensor) -> Tensor:
            return t.repeat_interleave(n_paths, 0) if n_paths > 1 else t.clone()

        caches, dep_k, dep_v = state.caches, state.dep_k, state.dep_v
        suffix: list[KVCache] | None = None
        dep_suffix: KVCache | None = None
        if shared:
            prefix = max(state.lengths)  # every row fits: the whole context is the window
            caches = [KVCache.wrap(c.k[:, :, :prefix], c.v[:, :, :prefix]) for c in caches]
            dep_k, dep_v = dep_k[:, :, :prefix], dep_v[:, :, :prefix]  # read only: writes go to the suffix
            suffix = self.predictor_caches(n_rows, horizon)
            dep_suffix = KVCache(n_rows, dep_k.shape[1], horizon, dep_k.shape[3], device=dev, dtype=dep_k.dtype)
        elif n_paths > 1:
            caches = [c.repeat_rows(n_paths) for c in caches]
            dep_k, dep_v = per_path(dep_k), per_path(dep_v)
        elif copy:
            dep_k, dep_v = dep_k.clone(), dep_v.clone()
        return LoopBuffers(
            caches=caches, last_logits=per_path(state.last_logits), h_last=per_path(state.h_last),
            dep_k=dep_k, dep_v=dep_v, tok1=per_path(state.tok1), tok2=per_path(state.tok2),
            stamps=per_path(state.stamps),
            length_t=torch.tensor(state.lengths, device=dev).repeat_interleave(n_paths, 0),
            seeds=seeds, t=torch.zeros((), dtype=torch.long, device=dev),
            suffix=suffix, dep_suffix=dep_suffix, paths=n_paths,
        )

    def _dynamic_loop(
        self,
        b: LoopBuffers,
        row_lengths: list[int],
        horizon: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        stats: GenerationStats,
    ) -> None:
        """Generate ``horizon`` tokens into ``b.tok1``/``b.tok2``, attention reading only the cache
        slots filled so far; rows that outgrow ``max_context`` are recomputed over their window."""
        dev, max_ctx, cache_len = self.device, self.max_context, b.dep_k.shape[2]
        n_rows = len(row_lengths)
        rows = torch.arange(n_rows, device=dev)
        sampler = _Sampler(b.seeds, generator, n_rows, dev)
        caches, last_logits, h_last, dep_k, dep_v = b.caches, b.last_logits, b.h_last, b.dep_k, b.dep_v
        tok1, tok2, stamps, length_t = b.tok1, b.tok2, b.stamps, b.length_t
        for t in range(horizon):
            cur = length_t + t  # tokens available per row  # [N]
            sliding = [n + t > max_ctx for n in row_lengths]
            s1_logits, h_cur, k_cur, v_cur, n_keys = last_logits, h_last, dep_k, dep_v, cur.clamp(max=cache_len)
            if any(sliding):
                # Upstream re-windows these rows: recompute their last max_context tokens.
                slide_rows = torch.tensor([i for i, s in enumerate(sliding) if s], device=dev)
                w_start = cur[slide_rows] - max_ctx
                r_logits, r_h, r_k, r_v = self._recompute_window(
                    _gather_windows(tok1[slide_rows], w_start, max_ctx),
                    _gather_windows(tok2[slide_rows], w_start, max_ctx),
                    _gather_windows(stamps[slide_rows], w_start, max_ctx),
                )
                stats.recompute_tokens += len(slide_rows) * max_ctx
                s1_logits, h_cur, n_keys = s1_logits.clone(), h_cur.clone(), n_keys.clone()
                s1_logits[slide_rows], h_cur[slide_rows], n_keys[slide_rows] = r_logits, r_h, max_ctx
                pad = max(0, max_ctx - k_cur.shape[2])
                k_cur, v_cur = F.pad(k_cur, (0, 0, 0, pad)), F.pad(v_cur, (0, 0, 0, pad))
                k_cur[slide_rows], v_cur[slide_rows] = r_k, r_v

            s1 = sampler.draw(s1_logits, params, 2 * t)  # [N, 1]
            kv_len = min(max(row_lengths) + t, k_cur.shape[2])  # keys any row may read this step
            s2 = sampler.draw(self.s2_logits(s1, h_cur, k_cur, v_cur, n_keys, kv_len), params, 2 * t + 1)
            tok1[rows, cur], tok2[rows, cur] = s1[:, 0], s2[:, 0]

            if t + 1 < horizon and not all(n + t + 1 > max_ctx for n in row_lengths):
                # Feed the new token (rows that will slide next step write a harmless clamped slot).
                pos = cur.clamp(max=cache_len - 1)[:, None]  # [N, 1]
                step_len = min(max(row_lengths) + t + 1, cache_len)
                last_logits, h_new, k_new, v_new = self.step(
                    s1, s2, stamps[rows, cur][:, None], pos, caches, kv_len=step_len
                )
                h_last = h_new[:, 0]
                _scatter_rows(dep_k, pos, k_new)
                _scatter_rows(dep_v, pos, v_new)
                stats.step_tokens += n_rows

    def fixed_step(
        self, b: LoopBuffers, params: SamplingParams, generator: torch.Generator | None, *, feed: bool
    ) -> None:
        """Generated step ``b.t`` with shapes that do not change from step to step (for CUDA graphs).

        Samples s1 then s2 for every row, writes them at the row's next token index and, with
        ``feed``, runs them through the predictor, updating the caches and ``b.last_logits`` /
        ``b.h_last`` in place. Every row must fit ``max_context`` for the whole horizon. No host
        synchronisation happens here: the step index is read from ``b.t`` on the device.
        """
        cache_len = b.dep_k.shape[2]
        rows = torch.arange(b.tok1.shape[0], device=self.device)
        cur = b.length_t + b.t  # [N] each row's next token index (its position too: no row slides)
        sampler = _Sampler(b.seeds, generator, rows.shape[0], self.device)
        s1 = sampler.draw(b.last_logits, params, 2 * b.t)  # [N, 1]
        if b.dep_suffix is None:
            s2_logits = self.s2_logits(s1, b.h_last, b.dep_k, b.dep_v, cur.clamp(max=cache_len))
        else:
            series_len = b.length_t[:: b.paths]  # [B] context rows of each series
            prefix_mask = (torch.arange(cache_len, device=self.device) < series_len[:, None])[:, None, None, :]
            dep_sfx = b.dep_suffix
            generated = torch.arange(dep_sfx.max_len, device=self.device) < b.t  # dependency keys written so far
            s2_logits = self._s2_logits_with(
                s1, b.h_last,
                lambda q: shared_prefix_attention(
                    q, b.dep_k, b.dep_v, prefix_mask, dep_sfx.k, dep_sfx.v, generated, b.paths
                ),
            )
        s2 = sampler.draw(s2_logits, params, 2 * b.t + 1)
        b.tok1[rows, cur], b.tok2[rows, cur] = s1[:, 0], s2[:, 0]
        if not feed:
            return
        pos, stamp = cur[:, None], b.stamps[rows, cur][:, None]  # [N, 1]
        if b.dep_suffix is None:
            logits, h_new, k_new, v_new = self.step(s1, s2, stamp, pos, b.caches, kv_len=cache_len)
            _scatter_rows(b.dep_k, pos, k_new)
            _scatter_rows(b.dep_v, pos, v_new)
        else:
            slot = b.t.view(1)
            logits, h_new, k_new, v_new = self._step_shared(s1, s2, stamp, pos, b, slot, prefix_mask)
            b.dep_suffix.k.index_copy_(2, slot, k_new)
            b.dep_suffix.v.index_copy_(2, slot, v_new)
        b.last_logits.copy_(logits)
        b.h_last.copy_(h_new[:, 0])

    def _decode_horizon(
        self,
        tok1: Tensor,
        tok2: Tensor,  # [N, L_max + H] rows per path
        length_t: Tensor,  # [N]
        horizon: int,
        n_paths: int,
        stats: GenerationStats,
        decoder_prefix: tuple[list[KVCache], Tensor] | None,
        *,
        share_prefix: bool = True,
    ) -> Tensor:
        """Decode each path's last ``min(L + H, max_context)`` tokens, keep the horizon rows.  # [N, H, 6]

        The context part of the decoded window is the same for every path of a series: it is
        decoded once per series into decoder caches, then each path decodes its horizon tokens
        against them (the decoder is causal, so this equals decoding the whole window); the paths
        read those caches without copies (``share_prefix=False``: from per-path copies).
        """
        dev = self.device
        total = length_t + horizon
        d_window = total.clamp(max=self.max_context)
        d_start = total - d_window
        prefix_len = d_window - horizon  # context rows inside the decoded window  # [N]
        series_rows = torch.arange(0, len(length_t), n_paths, device=dev)
        if decoder_prefix is not None:
            dec_caches, filled = decoder_prefix
            if not torch.equal(filled.to(dev), prefix_len[series_rows]):
                raise ValueError("decoder prefix caches do not cover the decoded window")
        else:
            p_max = int(prefix_len.max())
            dec_caches = self.decoder_caches(len(series_rows), int(d_window.max()))
            if p_max > 0 and dec_caches:
                starts = d_start[series_rows]
                self.fill_decoder_caches(
                    _gather_windows(tok1[series_rows], starts, p_max),
                    _gather_windows(tok2[series_rows], starts, p_max),
                    torch.arange(p_max, device=dev),
                    dec_caches,
                )
                stats.decode_tokens += int(prefix_len[series_rows].sum())
        pos = prefix_len[:, None] + torch.arange(horizon, device=dev)[None, :]  # [N, H]
        h1, h2 = _gather_windows(tok1, length_t, horizon), _gather_windows(tok2, length_t, horizon)  # generated
        stats.decode_tokens += int(len(length_t) * horizon)
        if n_paths > 1 and dec_caches and share_prefix:
            # The paths of a series read its context rows once; each path's rows attend causally.
            width = dec_caches[0].max_len
            prefix_mask = (torch.arange(width, device=dev) < prefix_len[series_rows][:, None])[:, None, None, :]
            causal = torch.ones(horizon, horizon, dtype=torch.bool, device=dev).tril()

            def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                c = dec_caches[i]
                return shared_prefix_attention(q, c.k, c.v, prefix_mask, k, v, causal, n_paths)

            assert self._decoder is not None
            out = self._decoder.run(self._decoder_input(h1, h2), pos, attend)
            assert out is not None
            return self.tokenizer.head(out).float()
        if n_paths > 1:
            dec_caches = [c.repeat_rows(n_paths) for c in dec_caches]
        return self.decode_ids(
            h1, h2, positions=pos, caches=dec_caches or None,
            attn_mask=key_mask(pos, dec_caches[0].max_len) if dec_caches else None,
        )

    @property
    def graph_captures(self) -> int:
        """CUDA graphs captured so far (0 without the graphed loop)."""
        return 0 if self._graphs is None else self._graphs.captures

    @torch.inference_mode()
    def warm_up(self, horizon: int, params: SamplingParams | None = None, *, seeded: bool = True) -> int:
        """Capture the graph of every bucket for ``horizon`` and ``params`` before real calls, so
        that no call of any size captures later (calls with seeds when ``seeded``, as the daemon
        makes them; a call without seeds is another graph). Runs one small generation per bucket;
        returns the graphs captured. Nothing to do (0) without buckets."""
        params = params or SamplingParams()
        if self._graphs is None or horizon < 1 or horizon >= self.max_context:
            return 0
        before = self._graphs.captures
        context = 2  # any length that fits: the graphs do not depend on it
        rng = np.random.default_rng(0)
        for bucket in self._graphs.buckets:
            xs = [rng.standard_normal((context, 6)).astype(np.float32) for _ in range(bucket)]
            stamps = np.zeros((context + horizon, 5), dtype=np.float32)
            self.generate(
                xs, [stamps[:context]] * bucket, [stamps[context:]] * bucket, horizon, params,
                seeds=list(range(bucket)) if seeded else None,
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.graph_captures_at_warm_up = self._graphs.captures
        return self._graphs.captures - before

    @torch.inference_mode()
    def generate(
        self,
        xs: Sequence[np.ndarray],
        x_stamps: Sequence[np.ndarray],
        y_stamps: Sequence[np.ndarray],
        pred_len: int,
        params: SamplingParams | None = None,
        *,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        stats: GenerationStats | None = None,
    ) -> np.ndarray:
        """Normalised forecasts of every sample path.  # [B, S, pred_len, 6] float32

        xs[b] [L_b, 6] normalised and clipped bars, x_stamps[b] [L_b, 5], y_stamps[b]
        [pred_len, 5] time features; lengths may differ between series.
        """
        params = params or SamplingParams()
        stats = stats if stats is not None else GenerationStats()
        if pred_len < 1:
            raise ValueError(f"pred_len must be >= 1, got {pred_len}")
        if len(xs) == 0:
            return np.zeros((0, params.sample_count, pred_len, 6), dtype=np.float32)
        t0 = time.perf_counter()
        state = self.prefill(xs, x_stamps, y_stamps, pred_len, stats)
        out = self.run_horizon(state, pred_len, params, seeds=seeds, generator=generator, stats=stats)
        stats.add_time("total", t0)
        return out
