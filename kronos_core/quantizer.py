"""Binary spherical quantization (BSQ) for the Kronos tokenizer.

The latent vector is L2-normalised, each channel is replaced by its sign (straight-through
estimator for the gradient) and scaled by ``1/sqrt(dim)``, so every code lies on the unit
sphere. Bits map to integer ids least-significant-bit first: channel ``i`` carries ``2**i``.

Module names (``tokenizer.bsq.basis``, ``tokenizer.bsq.group_basis``) mirror the published
state dict; the two integer buffers are stored there but the maths below does not need them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_EPS = 1e-8


def sign_ste(z: Tensor) -> Tensor:
    """``+1`` where ``z > 0`` else ``-1``; the backward pass lets the gradient through unchanged."""
    hard = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
    return z + (hard - z).detach()


def bits_to_indices(bits: Tensor) -> Tensor:
    """Integer ids of sign codes [..., n_bits] (non-negative = 1), bit ``i`` weighs ``2**i``.  # [...]"""
    weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.long, device=bits.device)
    return ((bits >= 0).long() * weights).sum(-1)


def indices_to_codes(indices: Tensor, n_bits: int) -> Tensor:
    """Inverse of :func:`bits_to_indices`: ids [...] to ``±1`` float codes [..., n_bits]."""
    weights = 2 ** torch.arange(n_bits, dtype=torch.long, device=indices.device)
    on = (indices.long().unsqueeze(-1) & weights) != 0
    return on.float() * 2 - 1


def _binary_entropy_terms(p: Tensor) -> Tensor:
    """Entropy of the two-outcome distributions ``(p, 1 - p)``, elementwise."""
    return -(p * torch.log(p + _LOG_EPS) + (1 - p) * torch.log(1 - p + _LOG_EPS))


@dataclass(frozen=True)
class BSQLossWeights:
    beta: float  # commitment
    gamma0: float  # per-sample entropy
    gamma: float  # codebook entropy
    zeta: float  # whole entropy penalty


def bsq_loss(z: Tensor, zq: Tensor, weights: BSQLossWeights) -> Tensor:
    """Upstream BSQ training loss for unit-norm latents ``z`` and their scaled codes ``zq``.

    ``beta * commitment + zeta * (gamma0 * per_sample_entropy - gamma * codebook_entropy)``.

    Upstream's "analytical" soft entropy is reproduced: each bit is a Bernoulli with
    ``p = sigmoid(-4 z / sqrt(dim))``. The per-sample entropy is the sum over bits, averaged
    over samples. The codebook entropy is the entropy of each bit's *batch-averaged*
    Bernoulli, summed over bits: upstream overwrites its group-codebook distribution with
    these per-bit probabilities before averaging, so ``group_size`` plays no part.
    """
    dim = z.shape[-1]
    p = torch.sigmoid(-4 * z / dim**0.5)  # [..., C]
    per_sample = _binary_entropy_terms(p).sum(dim=-1).mean()
    mean_p = p.reshape(-1, dim).mean(dim=0)  # [C]
    codebook = _binary_entropy_terms(mean_p).sum()
    commitment = ((zq.detach() - z) ** 2).sum(dim=-1).mean()
    penalty = weights.gamma0 * per_sample - weights.gamma * codebook
    return weights.beta * commitment + weights.zeta * penalty


class _SphericalQuantizer(nn.Module):
    """Holds the persistent ``basis``/``group_basis`` buffers of the published layout."""

    basis: Tensor
    group_basis: Tensor

    def __init__(self, dim: int, group_size: int) -> None:
        super().__init__()
        self.register_buffer("basis", 2 ** torch.arange(dim - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))


class BSQCodec(nn.Module):
    """L2-normalise, quantise to scaled sign codes, report ids and (optionally) the BSQ loss."""

    def __init__(
        self, s1_bits: int, s2_bits: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int
    ) -> None:
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.codebook_dim = s1_bits + s2_bits
        self.weights = BSQLossWeights(beta=beta, gamma0=gamma0, gamma=gamma, zeta=zeta)
        self.bsq = _SphericalQuantizer(self.codebook_dim, group_size)

    def forward(
        self, z: Tensor, half: bool = False, collect_metrics: bool = True
    ) -> tuple[Tensor, Tensor, Tensor | list[Tensor]]:
        """z [B, S, C] -> ``(loss, quantized [B, S, C], ids)``.

        ``ids`` is one tensor [B, S] over all bits, or with ``half`` the pair
        ``[s1_ids, s2_ids]`` from the first ``s1_bits`` and the remaining bits.
        Without ``collect_metrics`` the loss is a zero scalar (not computed).
        """
        z = F.normalize(z, dim=-1)
        quantized = sign_ste(z) * (1.0 / self.codebook_dim**0.5)  # [B, S, C]
        loss = bsq_loss(z, quantized, self.weights) if collect_metrics else quantized.new_zeros(())
        ids: Tensor | list[Tensor]
        if half:
            ids = [bits_to_indices(quantized[..., : self.s1_bits]), bits_to_indices(quantized[..., self.s1_bits :])]
        else:
            ids = bits_to_indices(quantized)
        return loss, quantized, ids
