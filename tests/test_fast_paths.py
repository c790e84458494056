"""Every fast path equals a plain reference written here (float64 loops), on CPU.

Fast paths: the MoE dispatch (per-expert scatter, single-token decode, grouped matmul math; in-place products
only without autograd), the lightning prefill block length, lightning layers run in token pieces on CPU, the fla
wrapper's argument plumbing and packed-sequence segments (with a stand-in kernel), the K/V cache layer
with preallocated growing buffers, and chunked prefill (`prefill_chunk_size`). GPU-only selections are checked to
stay off on CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer
from helpers import cache_of, tiny_model
from make_tiny_checkpoint import tiny_text_config

from minimax_code import load
from reference import lightning_recurrence

mm = load("modeling_minimax_text_01")
mc = load("cache_minimax_text_01")
la = load("lightning_attention")


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
    moe = tiny_model(dtype=torch.float64).model.layers[0].block_sparse_moe
    x = torch.randn(1, tokens, moe.gate.in_features, dtype=torch.float64)
    with torch.no_grad():
        out, logits = moe(x)
    torch.testing.assert_close(out[0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits, x[0] @ moe.gate.weight.T)


def test_one_token_moe_reads_current_stacks_and_falls_back_to_the_modules():
    """The eager one-token decode reads the chosen experts from the stacked views once an eager prompt built them;
    an expert whose weight was replaced since is run through its modules. Both equal the per-token reference."""
    moe = tiny_model(dtype=torch.float64).model.layers[0].block_sparse_moe
    D = moe.gate.in_features
    with torch.no_grad():
        moe(torch.randn(1, 3, D, dtype=torch.float64))  # a prompt: builds the stacks
        assert moe.expert_weights._stacks is not None
        for seed in range(4):
            x = torch.randn(1, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            e = moe.route(x[0])[2][0, 0].item()
            assert moe.expert_weights.stacked_weights_of(moe.experts[e], e) is not None  # the fast path runs
            torch.testing.assert_close(moe(x)[0][0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)
        expert = moe.experts[e]
        calls = []  # a hook on one of its layers: the fast path steps aside, so the hook sees the layer run
        handle = expert.w2.register_forward_hook(lambda module, args, out: calls.append(out.shape))
        assert moe.expert_weights.stacked_weights_of(expert, e) is None
        torch.testing.assert_close(moe(x)[0][0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)
        assert calls == [(1, D)]
        handle.remove()
        assert moe.expert_weights.stacked_weights_of(expert, e) is not None
        expert.w2.weight = nn.Parameter(expert.w2.weight.detach() * 2)  # no longer a view of the stack
        assert moe.expert_weights.stacked_weights_of(expert, e) is None
        torch.testing.assert_close(moe(x)[0][0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tokens", [1, 13])
def test_moe_dispatch_with_autograd_matches_reference_gradients(tokens):
    """With autograd on, the dispatch takes its out-of-place branches: outputs and gradients (input and router)
    equal autograd through the per-token reference."""
    moe = tiny_model(dtype=torch.float64).model.layers[0].block_sparse_moe
    x = torch.randn(1, tokens, moe.gate.in_features, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, tokens, moe.gate.in_features, dtype=torch.float64)
    out, _ = moe(x)
    (out * upstream).sum().backward()
    x_grad, gate_grad = x.grad.clone(), moe.gate.weight.grad.clone()
    x.grad = None
    moe.gate.weight.grad = None
    (moe_reference(moe, x[0]) * upstream[0]).sum().backward()
    torch.testing.assert_close(out[0], moe_reference(moe, x[0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x_grad, x.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gate_grad, moe.gate.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(mm._grouped_mm is None, reason="this torch has no grouped matmul")
def test_grouped_experts_math_matches_per_expert_loop():
    moe = tiny_model().model.layers[0].block_sparse_moe
    counts = torch.tensor([3, 0, 7, 2])  # an expert with no tokens too
    x = torch.randn(int(counts.sum()), moe.gate.in_features)
    with torch.no_grad():
        w13, w2 = moe.expert_weights.grouped_mm_copy(moe)
        out = mm.grouped_experts_forward(x, counts, w13, w2, moe.experts[0].act)
        expected, start = [], 0
        for e, n in enumerate(counts.tolist()):  # explicit formula per expert, from the nn.Linear weights
            ex, rows = moe.experts[e], x[start : start + n]
            expected.append((F.silu(rows @ ex.w1.weight.T) * (rows @ ex.w3.weight.T)) @ ex.w2.weight.T)
            start += n
    torch.testing.assert_close(out, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert w13.shape == (4, 64, 128) and w2.shape == (4, 64, 64)


def test_grouped_path_is_off_on_cpu_and_for_quantized_experts():
    moe = tiny_model(dtype=torch.float64).model.layers[0].block_sparse_moe
    assert not moe.grouped_mm  # opt-in: its weights are a second copy of the experts
    moe.grouped_mm = True
    assert not mm.use_grouped_mm(moe, torch.zeros(1))  # CPU tensors keep the per-expert loop
    assert mm.experts_are_plain_linear(moe)

    class NotALinear(nn.Linear):  # what a quantizer's replacement layer looks like to the dispatcher
        pass

    moe.experts[1].w2 = NotALinear(64, 64, bias=False)
    assert not mm.experts_are_plain_linear(moe)


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
    assert la.lightning_block_length(256, 128) == 256  # the released block
    assert la.lightning_block_length(256, 32) == 64
    assert la.lightning_block_length(16, 32) == 16


@pytest.mark.parametrize("length", [1, 40, 70])
def test_chunked_prefill_with_capped_blocks_matches_recurrence(length):
    B, H, d = 2, 3, 8
    q, k, v = (torch.randn(B, length, H, d, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor([0.9, 0.3, 0.01])
    block = la.lightning_block_length(256, d)  # 16: several blocks and a short tail
    out, state = la.lightning_attention_chunked(*(x.transpose(1, 2) for x in (q, k, v)), -slopes, None, None, block, 2)
    ref_out, ref_state = recurrence_reference(q, k, v, slopes)
    torch.testing.assert_close(out.transpose(1, 2), ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)


def fake_chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                          cu_seqlens=None, cu_seqlens_cpu=None):
    """Stand-in for fla's kernel with its documented interface, float64 loops: [B, T, H, d] layout, log-decay
    `g` [B, T, H] or `g_gamma` [H]; with `cu_seqlens`, one batch-1 row of N segments, each run from its own
    initial state [N, H, d, d] (zero if None), returning N final states."""
    assert scale == 1.0 and output_final_state and (g is None) != (g_gamma is None)

    def run(q, k, v, log_decay, state):
        out, final = lightning_recurrence(*(x.transpose(1, 2) for x in (q, k, v)), log_decay, state)
        return out.transpose(1, 2), final

    if cu_seqlens is None:
        return run(q, k, v, g_gamma if g is None else g, initial_state)
    assert q.shape[0] == 1 and torch.equal(cu_seqlens.cpu(), cu_seqlens_cpu)
    bounds = cu_seqlens_cpu.tolist()
    segments = [
        run(q[:, a:b], k[:, a:b], v[:, a:b], g_gamma if g is None else g[:, a:b],
            None if initial_state is None else initial_state[n : n + 1])
        for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    return torch.cat([out for out, _ in segments], dim=1), torch.cat([final for _, final in segments])


@pytest.mark.parametrize("per_token", [False, True], ids=["per-head-decay", "per-token-decay"])
@pytest.mark.parametrize("with_sequence_starts", [False, True], ids=["no-starts", "starts"])
def test_fla_wrapper_passes_layout_decay_states_and_segments(monkeypatch, per_token, with_sequence_starts):
    """With a stand-in kernel: the wrapper's layout, decay argument, and packed-sequence plumbing (rows flattened
    into segments at row and sequence starts, initial state into each row's first segment unless it resets at token
    0, final state from each row's last segment) give the contract's recurrence."""
    monkeypatch.setattr(la, "chunk_simple_gla", fake_chunk_simple_gla)
    B, H, T, d = 3, 2, 9, 4
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
    state = torch.randn(B, H, d, d, dtype=torch.float64)
    slopes = torch.tensor([0.5, 0.05])
    log_decay = -slopes * torch.rand(B, T, H) if per_token else -slopes
    sequence_starts = None
    if with_sequence_starts:  # row 0: two starts; row 1: none; row 2: at token 0 (drops its initial state) and later
        sequence_starts = torch.zeros(B, T, dtype=torch.bool)
        sequence_starts[0, [3, 4]] = sequence_starts[2, [0, 6]] = True
    out, final = la.lightning_attention_fla(q, k, v, log_decay, state, sequence_starts)
    ref_out, ref_final = lightning_recurrence(q, k, v, log_decay, state, sequence_starts)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final.double(), ref_final, rtol=1e-6, atol=1e-6)
    assert out.dtype == final.dtype == torch.float32
    assert la.lightning_impl_name("auto", q.device) == "chunked"  # CPU tensors never take the Triton path by default


@pytest.mark.parametrize("impl", ["chunked", "fla"])  # a new entry of la.LIGHTNING_KERNELS: one more parameter
def test_every_lightning_impl_equals_the_recurrent_reference_through_the_model(monkeypatch, impl):
    """`config.lightning_impl` selects the prefill kernel: a left-padded prefill and a cached 5-token continuation
    (initial state, per-token decay at the pads) give the logits and lightning states of the token-by-token
    reference. fla runs here through the float64 stand-in of its kernel (its Triton kernel: test_triton_interpreter)."""
    if impl == "fla":  # the stand-in, installed or not: these are CPU tensors
        monkeypatch.setattr(la, "chunk_simple_gla", fake_chunk_simple_gla)
    model = tiny_model(dtype=torch.float64)
    ids = torch.randint(0, 512, (2, 21), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    calls = []
    kernel = la.LIGHTNING_KERNELS[impl]
    monkeypatch.setitem(la.LIGHTNING_KERNELS, impl, lambda *a: calls.append(a[0].shape[2]) or kernel(*a))  # a spy

    def run(setting):
        model.config.lightning_impl = setting
        with torch.no_grad():
            first = model(ids[:, :16], attention_mask=mask[:, :16], use_cache=True)
            rest = model(ids[:, 16:], attention_mask=mask, past_key_values=cache_of(first))
        layers = cache_of(rest).layers
        states = [layer.state for layer in layers if isinstance(layer, mc.LightningStateLayer)]
        return torch.cat((first.logits, rest.logits), dim=1), states

    reference_logits, reference_states = run("recurrent")
    logits, states = run(impl)
    assert calls == [16] * len(states) + [5] * len(states)  # the selected kernel ran every lightning prefill
    keep = mask.bool()
    # the fla wrapper hands fla fp32, as fla's kernels compute in it: over 40 random prompts the fp32 logits were at
    # most 1.4e-6 from the float64 reference (logits up to 4), so 1e-5 leaves a margin without hiding a wrong kernel
    tolerance = 1e-5 if impl == "fla" else 1e-9
    torch.testing.assert_close(logits[keep], reference_logits[keep], rtol=tolerance, atol=tolerance)
    for a, b in zip(states, reference_states):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, check_dtype=False)


def test_lightning_impl_is_validated_and_auto_is_chunked_on_cpu():
    assert la.LIGHTNING_IMPLS == load("configuration_minimax_text_01").LIGHTNING_IMPLS  # one list of names
    with pytest.raises(ValueError, match="lightning_impl.*'auto', 'chunked', 'recurrent', 'fla'"):
        tiny_text_config(lightning_impl="triton")
    assert la.lightning_impl_name("auto", torch.device("cpu")) == "chunked"
    model = tiny_model()
    model.config.lightning_impl = "fast"  # set after loading: refused at the forward
    with pytest.raises(ValueError, match="lightning_impl='fast' is not a lightning-attention implementation"):
        model(torch.randint(0, 512, (1, 4)))


# ------------------------------------------------------------------------------------------------ whole model


def test_prefill_chunk_size_equals_whole_prompt_with_left_padding():
    model = tiny_model(dtype=torch.float64)
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
    assert cache_of(chunked).get_seq_length() == 23 and cache_of(no_cache) is None
    for layer_a, layer_b in zip(cache_of(chunked).layers, cache_of(whole).layers):
        if isinstance(layer_a, mc.LightningStateLayer):
            torch.testing.assert_close(layer_a.state, layer_b.state, rtol=1e-9, atol=1e-9)
        else:
            torch.testing.assert_close(layer_a.keys, layer_b.keys)


def test_lightning_layers_in_cpu_pieces_equal_whole_prompt():
    """Long inputs reach the CPU lightning kernels in pieces of `cpu_max_tokens` tokens (state carried over): with
    5-token pieces the logits, lightning states and input gradients equal the unsplit layers (left padding too)."""
    model = tiny_model(dtype=torch.float64)
    ids = torch.randint(0, 512, (2, 23))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0

    def run():
        embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
        out.logits[mask.bool()].sum().backward()
        return out, embeds.grad

    whole, whole_grad = run()
    for layer in model.model.layers:
        if isinstance(layer.self_attn, mm.MiniMaxText01LightningAttention):
            layer.self_attn.cpu_max_tokens = 5
    pieces, pieces_grad = run()
    keep = mask.bool()
    torch.testing.assert_close(pieces.logits[keep], whole.logits[keep], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pieces_grad, whole_grad, rtol=1e-9, atol=1e-9)
    for a, b in zip(cache_of(pieces).layers, cache_of(whole).layers):
        if isinstance(a, mc.LightningStateLayer):
            torch.testing.assert_close(a.state, b.state, rtol=1e-9, atol=1e-9)


def test_decode_steps_equal_one_forward():
    """Prefill 11 tokens, then 6 single-token steps (lightning recurrence step, single-token MoE, cached K/V):
    the logits equal one uncached forward over all 17 tokens."""
    model = tiny_model(dtype=torch.float64)
    ids = torch.randint(0, 512, (1, 17))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :11], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(11, 17):
            out = model(ids[:, t : t + 1], past_key_values=cache_of(out), use_cache=True)
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 10:], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------ K/V cache


def test_growing_kv_layer_equals_concatenation_through_beam_and_batch_ops():
    """Prefill, decode steps, a multi-token update, beam reorder, batch repeat / select and crop: keys and values
    always equal the plain torch.cat history with the same operations applied; decode steps write in place."""
    layer = mc.GrowingKVLayer()
    expected_k = expected_v = None

    def update(length):
        nonlocal expected_k, expected_v
        k, v = torch.randn(2 if expected_k is None else expected_k.shape[0], 3, length, 4), None
        v = torch.randn_like(k)
        keys, values = layer.update(k, v)
        expected_k = k if expected_k is None else torch.cat((expected_k, k), dim=2)
        expected_v = v if expected_v is None else torch.cat((expected_v, v), dim=2)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
        assert layer.get_seq_length() == expected_k.shape[2]

    update(5)
    assert layer._buffers[0].shape[2] == 5  # the first fill is exact: a prefill allocates no spare room
    update(1)
    buffer = layer._buffers[0]
    for _ in range(20):
        update(1)
    assert layer._buffers[0] is buffer and buffer.shape[2] >= 26  # grown once, then written in place
    update(70)  # past the capacity: grows again
    beams = torch.tensor([1, 1])
    layer.reorder_cache(beams)
    expected_k, expected_v = expected_k[beams], expected_v[beams]
    update(1)
    layer.batch_repeat_interleave(2)
    expected_k, expected_v = expected_k.repeat_interleave(2, 0), expected_v.repeat_interleave(2, 0)
    update(1)
    keep = torch.tensor([0, 3])
    layer.batch_select_indices(keep)
    expected_k, expected_v = expected_k[keep], expected_v[keep]
    update(2)
    layer.crop(-3)
    expected_k, expected_v = expected_k[:, :, :-3], expected_v[:, :, :-3]
    update(1)


def test_cache_uses_growing_kv_layers_and_generate_equals_plain_dynamic_layers(monkeypatch):
    """Greedy and beam-search generate with the growing K/V layers give the same tokens and scores as with
    transformers' torch.cat-based DynamicLayer."""
    model = tiny_model()
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    cache = mc.MiniMaxText01Cache(model.config)
    assert [type(layer) for layer in cache.layers] == [
        mc.GrowingKVLayer if t == "full_attention" else mc.LightningStateLayer for t in model.config.layer_types
    ]
    with torch.no_grad():
        ours = [model.generate(ids, num_beams=beams, **kwargs) for beams in (1, 3)]
        monkeypatch.setattr(mc, "GrowingKVLayer", DynamicLayer)
        plain = [model.generate(ids, num_beams=beams, **kwargs) for beams in (1, 3)]
    for a, b in zip(ours, plain):
        assert torch.equal(a.sequences, b.sequences)
        torch.testing.assert_close(torch.stack(a.scores), torch.stack(b.scores), rtol=1e-5, atol=1e-5)


def test_fp32_rms_norm_fast_path_equals_the_float64_formula_and_yields_to_a_replaced_mean_square():
    """fp32 takes F.rms_norm (one op, for decode's dispatch cost); the float64 formula is the reference. A norm whose
    `mean_square` is replaced (tensor parallel sums it over ranks) keeps the explicit path, which calls it."""
    norm = mm.MiniMaxText01RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)) * 3
    x64 = x.double()
    expected = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-6, atol=1e-6)
    norm.mean_square = lambda x32: 4 * x32.pow(2).mean(-1, keepdim=True)  # as if over 4 equal ranks' squares
    torch.testing.assert_close(norm(x).double(), expected / 2, rtol=1e-6, atol=1e-6)
