"""BSQ codes, ids and the straight-through estimator."""

from __future__ import annotations

import torch

from kronos_core.quantizer import bits_to_indices, indices_to_codes, sign_ste


def test_ids_round_trip_lsb_first() -> None:
    codes = indices_to_codes(torch.arange(32), 5)
    assert codes[1].tolist() == [1, -1, -1, -1, -1]  # bit 0 is channel 0
    assert torch.equal(bits_to_indices(codes), torch.arange(32))


def test_sign_ste_forward_is_sign_and_backward_is_identity() -> None:
    z = torch.tensor([-0.5, 0.0, 0.25], requires_grad=True)
    out = sign_ste(z)
    assert out.tolist() == [-1.0, -1.0, 1.0]
    out.sum().backward()
    assert z.grad is not None and z.grad.tolist() == [1.0, 1.0, 1.0]


def test_indices_to_bits_inverts_encode(tiny_tokenizer, golden) -> None:
    x = golden["x"]
    with torch.no_grad():
        _, _, quantized, ids = tiny_tokenizer(x)
        s1, s2 = tiny_tokenizer.encode(x, half=True)
    assert torch.equal(tiny_tokenizer.indices_to_bits(ids), quantized)
    assert torch.equal(tiny_tokenizer.indices_to_bits([s1, s2], half=True), quantized)


def test_tokenizer_encoder_is_causal(tiny_tokenizer, golden) -> None:
    """A prefix encodes to the prefix of the tokens (what incremental streaming builds on)."""
    x = golden["x"]
    with torch.no_grad():
        full = tiny_tokenizer.encode(x)
        prefix = tiny_tokenizer.encode(x[:, :11])
    assert torch.equal(prefix, full[:, :11])
