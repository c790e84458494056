"""Every fast path equals a plain reference written here (float64 loops), on CPU.

Fast paths: the MoE dispatch (grouped loop, single-token decode, grouped matmul math), the lightning prefill
block length, the fla wrapper's argument plumbing (with a stand-in kernel), and chunked prefill
(`prefill_chunk_size`). GPU-only selections are checked to stay off on CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from make_tiny_checkpoint import tiny_text_config
from minimax_code import load

mm = load("modeling_minimax_text_01")


def tiny_model(**overrides):
    torch.manual_seed(0)
    model = mm.MiniMaxText01ForCausalLM(tiny_text_config(**overrides)).double().eval()
    for p in model.parameters():  # larger weights than the 0.02 init, so every term matters in the comparison
        p.data.normal_(0, 0.2)
    return model


# ------------------------------------------------------------------------------------------------ MoE


def moe_reference(moe, x):
    """Token by token: fp32 softmax over the experts (spec 3.4), top-k, renormalise in fp32, cast to the model
    dtype, sum_k w_k * w2(silu(w1 x) * w3 x)."""
    rows = []
    for token in x:
        probs = torch.softmax((token @ moe.gate.weight.T).float(), dim=-1)
        top = sorted(range(len(probs)), key=lambda e: -probs[e].item())[: moe.top_k]
        total = sum(probs[e] for e in top)
        out = torch.zeros_like(token)
        for e in top:
            ex = moe.experts[e]
            hidden = F.silu(token @ ex.w1.weight.T) * (token @ ex.w3.weight.T)
            out += (probs[e] / total).to(token.dtype) * (hidden @ ex.w2.weight.T)
        rows.append(out)
    return torch.stack(rows)


@pytest.mark.parametrize("tokens", [1, 2, 13])
def test_moe_dispatch_matches_per_token_loop(tokens):
    moe = tiny_model().model.layers[0].block_sparse_moe
    x = torch.randn(1, tokens, moe.gate.in_features, dtype=torch.float64)
    with torch.no_grad():
        out, logits = moe(x)
    torch.testing.assert_close(out[0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits, x[0] @ moe.gate.weight.T)


@pytest.mark.skipif(mm._grouped_mm is None, reason="this torch has no grouped matmul")
def test_grouped_experts_math_matches_per_expert_loop():
    moe = tiny_model().float().model.layers[0].block_sparse_moe
    counts = torch.tensor([3, 0, 7, 2])  # an expert with no tokens too
    x = torch.randn(int(counts.sum()), moe.gate.in_features)
    with torch.no_grad():
        out = mm.grouped_experts_forward(x, counts, *moe.stacked_weights(), moe.experts[0].act)
        w13, w2 = moe.stacked_weights()
        expected, start = [], 0
        for e, n in enumerate(counts.tolist()):  # explicit formula per expert, from the nn.Linear weights
            ex, rows = moe.experts[e], x[start : start + n]
            expected.append((F.silu(rows @ ex.w1.weight.T) * (rows @ ex.w3.weight.T)) @ ex.w2.weight.T)
            start += n
    torch.testing.assert_close(out, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert w13.shape == (4, 64, 128) and w2.shape == (4, 64, 64)


def test_grouped_path_is_off_on_cpu_and_for_quantized_experts():
    moe = tiny_model().model.layers[0].block_sparse_moe
    assert not mm.use_grouped_mm(moe, torch.zeros(1))

    class NotALinear(nn.Linear):  # what a quantizer's replacement layer looks like to the dispatcher
        pass

    moe.experts[1].w2 = NotALinear(64, 64, bias=False)
    fake_cuda = torch.zeros(1)
    assert not mm.use_grouped_mm(moe, fake_cuda)


# ------------------------------------------------------------------------------------------------ lightning


def recurrence_reference(q, k, v, slopes):
    """S_t = exp(-s) S_{t-1} + k_t^T v_t, o_t = q_t S_t, per head; float64 loops. q, k, v [B, T, H, d]."""
    B, T, H, d = q.shape
    out = torch.zeros(B, T, H, d, dtype=torch.float64)
    state = torch.zeros(B, H, d, d, dtype=torch.float64)
    decay = torch.exp(-slopes.double())
    for t in range(T):
        for h in range(H):
            state[:, h] = decay[h] * state[:, h] + k[:, t, h, :, None] * v[:, t, h, None, :]
            out[:, t, h] = (q[:, t, h, None, :] @ state[:, h])[:, 0]
    return out, state


def test_lightning_block_length_caps_at_twice_head_dim():
    assert mm.lightning_block_length(256, 128) == 256  # the released block
    assert mm.lightning_block_length(256, 32) == 64
    assert mm.lightning_block_length(16, 32) == 16


@pytest.mark.parametrize("length", [1, 40, 70])
def test_chunked_prefill_with_capped_blocks_matches_recurrence(length):
    B, H, d = 2, 3, 8
    q, k, v = (torch.randn(B, length, H, d, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor([0.9, 0.3, 0.01])
    block = mm.lightning_block_length(256, d)  # 16: several blocks and a short tail
    out, state = mm.lightning_attention_chunked(*(x.transpose(1, 2) for x in (q, k, v)), slopes, None, block, 2)
    ref_out, ref_state = recurrence_reference(q, k, v, slopes)
    torch.testing.assert_close(out.transpose(1, 2), ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)


def fake_chunk_simple_gla(q, k, v, g_gamma, scale, initial_state, output_final_state):
    """Stand-in for fla's kernel with its documented layout ([B, T, H, d], log-decay g_gamma [H]), float64 loops."""
    assert scale == 1.0 and output_final_state and initial_state is None
    return recurrence_reference(q * scale, k, v, -g_gamma)


def test_fla_wrapper_passes_layout_decay_and_scale(monkeypatch):
    monkeypatch.setattr(mm, "chunk_simple_gla", fake_chunk_simple_gla)
    B, H, T, d = 1, 2, 5, 4
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor([0.5, 0.05])
    out, state = mm.lightning_attention_fla(q, k, v, slopes)
    ref_out, ref_state = recurrence_reference(*(x.transpose(1, 2) for x in (q, k, v)), slopes)
    torch.testing.assert_close(out.double(), ref_out.transpose(1, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state.double(), ref_state, rtol=1e-6, atol=1e-6)
    assert not mm.use_fla_prefill(q)  # CPU tensors never take the Triton path


# ------------------------------------------------------------------------------------------------ whole model


def test_prefill_chunk_size_equals_whole_prompt_with_left_padding():
    model = tiny_model()
    ids = torch.randint(0, 512, (2, 23))
    mask = torch.ones_like(ids)
    mask[0, :9] = 0  # more padding than one chunk: the first chunk of row 0 is all padding
    with torch.no_grad():
        whole = model(ids, attention_mask=mask, use_cache=True, output_router_logits=True, output_hidden_states=True)
        model.config.prefill_chunk_size = 5
        chunked = model(ids, attention_mask=mask, use_cache=True, output_router_logits=True, output_hidden_states=True)
        no_cache = model(ids, attention_mask=mask, use_cache=False)
    keep = mask.bool()  # padded positions are don't-care outputs
    torch.testing.assert_close(chunked.logits[keep], whole.logits[keep], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(no_cache.logits[keep], whole.logits[keep], rtol=1e-9, atol=1e-9)
    for a, b in zip(chunked.hidden_states, whole.hidden_states):
        torch.testing.assert_close(a[keep], b[keep], rtol=1e-9, atol=1e-9)
    flat_keep = keep.flatten()
    for a, b in zip(chunked.router_logits, whole.router_logits):
        torch.testing.assert_close(a[flat_keep], b[flat_keep], rtol=1e-9, atol=1e-9)
    field = mm.CACHE_FIELD
    assert getattr(chunked, field).get_seq_length() == 23 and getattr(no_cache, field) is None
    for layer_a, layer_b in zip(getattr(chunked, field).layers, getattr(whole, field).layers):
        if isinstance(layer_a, mm.LightningStateLayer):
            torch.testing.assert_close(layer_a.state, layer_b.state, rtol=1e-9, atol=1e-9)
        else:
            torch.testing.assert_close(layer_a.keys, layer_b.keys)


def test_decode_steps_equal_one_forward():
    """Prefill 11 tokens, then 6 single-token steps (lightning recurrence step, single-token MoE, cached K/V):
    the logits equal one uncached forward over all 17 tokens."""
    model = tiny_model()
    ids = torch.randint(0, 512, (1, 17))
    field = mm.CACHE_FIELD
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :11], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(11, 17):
            out = model(ids[:, t : t + 1], past_key_values=getattr(out, field), use_cache=True)
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 10:], rtol=1e-9, atol=1e-9)
