"""Every tensor of golden.safetensors (produced by upstream Kronos) is reproduced."""

from __future__ import annotations

import pytest
import torch

from kronos_core import Kronos, KronosTokenizer

RTOL, ATOL = 1e-4, 1e-5


def _outputs(tok: KronosTokenizer, model: Kronos, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, stamp = g["x"], g["stamp"]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        (z_pre, z), bsq_loss, quantized, ids = tok(x)
        out |= {
            "tok_forward_z_pre": z_pre,
            "tok_forward_z": z,
            "tok_forward_bsq_loss": bsq_loss,
            "tok_forward_quantized": quantized,
            "tok_forward_indices": ids,
        }
        s1, s2 = tok.encode(x, half=True)
        out |= {"tok_encode_s1": s1, "tok_encode_s2": s2, "tok_encode_full": tok.encode(x, half=False)}
        out["tok_decode_half"] = tok.decode([s1, s2], half=True)

        logits, context = model.decode_s1(s1, s2, stamp)
        out |= {"pred_decode_s1_logits": logits, "pred_decode_s1_context": context}
        out["pred_decode_s2_s1_ids"] = g["pred_decode_s2_s1_ids"]
        out["pred_decode_s2_logits"] = model.decode_s2(context, g["pred_decode_s2_s1_ids"])

        s1_logits, s2_logits = model(
            s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=True, s1_targets=s1[:, 1:]
        )
        out |= {"pred_tf_s1_logits": s1_logits, "pred_tf_s2_logits": s2_logits}
        out["pred_tf_loss"] = torch.stack(model.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:]))
        out["pred_no_stamp_s1_logits"] = model.decode_s1(s1, s2, None)[0]
    out |= {"x": x, "stamp": stamp}
    return out


@pytest.fixture(scope="module")
def outputs(tiny_tokenizer, tiny_model, golden) -> dict[str, torch.Tensor]:
    return _outputs(tiny_tokenizer, tiny_model, golden)


def test_every_golden_tensor_is_covered(golden, outputs) -> None:
    assert set(golden) == set(outputs)


GOLDEN_NAMES = [
    "tok_forward_z_pre", "tok_forward_z", "tok_forward_bsq_loss", "tok_forward_quantized", "tok_forward_indices",
    "tok_encode_s1", "tok_encode_s2", "tok_encode_full", "tok_decode_half",
    "pred_decode_s1_logits", "pred_decode_s1_context", "pred_decode_s2_logits",
    "pred_tf_s1_logits", "pred_tf_s2_logits", "pred_tf_loss", "pred_no_stamp_s1_logits",
]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_tensor(name: str, golden, outputs) -> None:
    expected, actual = golden[name], outputs[name].reshape(golden[name].shape)
    if expected.dtype == torch.int64:
        assert torch.equal(actual.long(), expected)
    else:
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_decode_s2_one_step_matches_last_row_semantics(tiny_model, golden) -> None:
    """A one-row query: no rotation, attends to all keys, residual broadcast over the context."""
    context = golden["pred_decode_s1_context"]  # [3, 20, d]
    s1_next = golden["pred_decode_s2_s1_ids"][:, -1:]  # [3, 1]
    model = tiny_model
    with torch.no_grad():
        got = model.decode_s2(context, s1_next)  # [3, 20, V2]
        attn = model.dep_layer.cross_attn
        q = attn.q_proj(model.embedding.emb_s1(s1_next))  # unrotated
        k, v = attn.k_proj(context), attn.v_proj(context)
        b, n, d = context.shape
        h = attn.n_heads
        qh = q.view(b, 1, h, d // h).transpose(1, 2)
        kh = k.view(b, n, h, d // h).transpose(1, 2)
        vh = v.view(b, n, h, d // h).transpose(1, 2)
        weights = torch.softmax(qh @ kh.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)  # no mask
        mixed = (weights @ vh).transpose(1, 2).reshape(b, 1, d)
        expected = model.head.cond_forward(model.dep_layer.norm(context + attn.out_proj(mixed)))
    assert got.shape == (3, 20, 2**model.s2_bits)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
