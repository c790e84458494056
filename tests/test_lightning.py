"""Lightning-attention kernels (chunked prefill, recurrent reference, decode step), with a constant or per-token
log-decay and packed-sequence starts, and slopes against float64 recurrences and the spec's slope recipe, written in tests/reference.py without the modeling code."""

import math

import pytest
import torch
from helpers import SLOPES, rel_err
from minimax_code import load
from reference import alibi_slopes, lightning_layer_slopes, lightning_recurrence

mm = load("modeling_minimax_text_01")
la = load("lightning_attention")

B, H, D = 2, 3, 8  # H matches the 3 heads of SLOPES


def random_qkv(T, seed=0, requires_grad=False):
    """q, k, v [B, H, T, D] fp32, SiLU'd like the model's (mostly positive, so the state grows with T)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.nn.functional.silu(torch.randn(B, H, T, D, generator=g)) for _ in range(3))
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def random_state(seed=1):
    return torch.randn(B, H, D, D, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("block_size", [256, 7])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 255, 256, 257, 1000])
def test_chunked_matches_float64_recurrence(T, with_state, block_size):
    q, k, v = random_qkv(T)
    state = random_state() if with_state else None
    out, final = la.lightning_attention_chunked(q, k, v, -SLOPES, state, block_size=block_size)
    ref_out, ref_final = lightning_recurrence(q, k, v, -SLOPES, state)

    assert out.shape == (B, H, T, D) and final.shape == (B, H, D, D)
    assert out.dtype == final.dtype == torch.float32
    assert rel_err(out, ref_out) < 2e-6
    assert rel_err(final, ref_final) < 2e-6


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 255, 256, 257, 1000])
def test_recurrent_matches_float64_recurrence(T, with_state):
    q, k, v = random_qkv(T)
    state = random_state() if with_state else None
    out, final = la.lightning_attention_recurrent(q, k, v, -SLOPES, state)
    ref_out, ref_final = lightning_recurrence(q, k, v, -SLOPES, state)
    assert out.dtype == final.dtype == torch.float32
    # a running fp32 sum: one rounding of the state per token, so the error grows like T * 2^-24
    tolerance = 2e-6 + T * 2.0**-24
    assert rel_err(out, ref_out) < tolerance
    assert rel_err(final, ref_final) < tolerance


def test_decode_step_is_one_recurrence_step():
    q, k, v = random_qkv(1)  # [B, H, 1, D]
    state = random_state()
    out, new_state = la.lightning_attention_step(q, k, v, torch.exp(-SLOPES), state)

    decay = torch.exp(-SLOPES.double()).view(1, H, 1, 1)
    expected_state = decay * state.double() + k.double().transpose(-1, -2) @ v.double()  # lambda S + k^T v
    assert new_state.dtype == torch.float32
    assert rel_err(new_state, expected_state) < 1e-6
    assert rel_err(out, q.double() @ expected_state) < 1e-6


def test_decode_steps_continue_a_chunked_prefill():
    """Prefill 300 tokens in blocks, then decode 20 one at a time: equals the float64 recurrence over all 320."""
    q, k, v = random_qkv(320)
    out, state = la.lightning_attention_chunked(q[:, :, :300], k[:, :, :300], v[:, :, :300], -SLOPES, block_size=64)
    outputs = [out]
    for t in range(300, 320):
        step = slice(t, t + 1)
        out, state = la.lightning_attention_step(q[:, :, step], k[:, :, step], v[:, :, step], SLOPES.neg().exp(), state)
        outputs.append(out)
    ref_out, ref_state = lightning_recurrence(q, k, v, -SLOPES)
    assert rel_err(torch.cat(outputs, dim=2), ref_out) < 2e-6
    assert rel_err(state, ref_state) < 2e-6


def test_chunked_gradients_match_float64_autograd_recurrence():
    q, k, v = random_qkv(300, requires_grad=True)
    state = random_state().requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    w_out, w_state = torch.randn(B, H, 300, D, generator=g), torch.randn(B, H, D, D, generator=g)

    out, final = la.lightning_attention_chunked(q, k, v, -SLOPES, state, block_size=64)
    ((out * w_out).sum() + (final * w_state).sum()).backward()
    grads = [x.grad for x in (q, k, v, state)]

    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v, state)]
    ref_out, ref_final = lightning_recurrence(*leaves[:3], -SLOPES, leaves[3])
    ((ref_out * w_out.double()).sum() + (ref_final * w_state.double()).sum()).backward()

    for name, grad, leaf in zip(["q", "k", "v", "initial_state"], grads, leaves):
        assert rel_err(grad, leaf.grad) < 1e-5, name


# ------------------------------------------------------------------------------------------------ per-token decay


def padded_and_packed(T, seed=3):
    """A per-token layout for B = 2 rows: row 0 has pads scattered anywhere (left, inside, right) and two packed
    sequences; row 1 is right-padded. Returns (token_mask [B, T], log_decay [B, T, H], sequence_starts [B, T])."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[1, T // 2 :] = False
    sequence_starts = torch.zeros(B, T, dtype=torch.bool)
    sequence_starts[0, T // 3] = sequence_starts[0, (2 * T) // 3] = True
    log_decay = -SLOPES.view(1, 1, H) * mask[..., None]  # pads: log-decay 0
    return mask, log_decay, sequence_starts


@pytest.mark.parametrize("block_size", [256, 16, 7])
@pytest.mark.parametrize("T", [2, 100, 300])
def test_chunked_per_token_decay_and_sequence_starts_match_float64_recurrence(T, block_size):
    """Pads anywhere (g = 0, v = 0) and packed-sequence starts, from an initial state, across block boundaries."""
    q, k, v = random_qkv(T)
    mask, log_decay, sequence_starts = padded_and_packed(T)
    v = v * mask[:, None, :, None]
    state = random_state()
    out, final = la.lightning_attention_chunked(
        q, k, v, log_decay, state, sequence_starts, block_size=block_size, blocks_per_group=4
    )
    ref_out, ref_final = lightning_recurrence(q, k, v, log_decay, state, sequence_starts)
    assert rel_err(out, ref_out) < 2e-6
    assert rel_err(final, ref_final) < 2e-6


def test_recurrent_and_step_take_per_token_decay_and_sequence_starts():
    q, k, v = random_qkv(40)
    mask, log_decay, sequence_starts = padded_and_packed(40)
    v = v * mask[:, None, :, None]
    out, final = la.lightning_attention_recurrent(q, k, v, log_decay, random_state(), sequence_starts)
    ref_out, ref_final = lightning_recurrence(q, k, v, log_decay, random_state(), sequence_starts)
    assert rel_err(out, ref_out) < 1e-6 and rel_err(final, ref_final) < 1e-6


def test_pads_leave_the_state_exactly_as_after_the_last_real_token():
    """A right-padded row's final state equals the state after its real tokens alone: pads neither add nor decay."""
    q, k, v = random_qkv(50)
    real = 30
    log_decay = (-SLOPES).view(1, 1, H).expand(B, 50, H).clone()
    log_decay[:, real:] = 0.0
    v_padded = v.clone()
    v_padded[:, :, real:] = 0.0
    _, padded_final = la.lightning_attention_chunked(q, k, v_padded, log_decay, block_size=16)
    _, unpadded_final = la.lightning_attention_chunked(q[:, :, :real], k[:, :, :real], v[:, :, :real], -SLOPES, block_size=16)
    torch.testing.assert_close(padded_final, unpadded_final, rtol=1e-6, atol=1e-6)


def test_reset_equals_running_the_sequences_separately():
    q, k, v = random_qkv(90)
    sequence_starts = torch.zeros(B, 90, dtype=torch.bool)
    sequence_starts[:, 37] = True
    out, final = la.lightning_attention_chunked(q, k, v, -SLOPES, random_state(), sequence_starts, block_size=16)
    first, _ = la.lightning_attention_chunked(q[:, :, :37], k[:, :, :37], v[:, :, :37], -SLOPES, random_state(), block_size=16)
    second, second_final = la.lightning_attention_chunked(q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], -SLOPES, block_size=16)
    torch.testing.assert_close(out, torch.cat((first, second), dim=2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final, second_final, rtol=1e-6, atol=1e-6)


def test_chunked_per_token_gradients_match_float64_autograd_recurrence():
    q, k, v = random_qkv(120, requires_grad=True)
    state = random_state().requires_grad_(True)
    mask, log_decay, sequence_starts = padded_and_packed(120)
    g = torch.Generator().manual_seed(7)
    w_out, w_state = torch.randn(B, H, 120, D, generator=g), torch.randn(B, H, D, D, generator=g)

    out, final = la.lightning_attention_chunked(
        q, k, v, log_decay, state, sequence_starts, block_size=16, blocks_per_group=3
    )
    ((out * w_out).sum() + (final * w_state).sum()).backward()
    grads = [x.grad for x in (q, k, v, state)]

    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v, state)]
    ref_out, ref_final = lightning_recurrence(*leaves[:3], log_decay, leaves[3], sequence_starts)
    ((ref_out * w_out.double()).sum() + (ref_final * w_state.double()).sum()).backward()
    for name, grad, leaf in zip(["q", "k", "v", "initial_state"], grads, leaves):
        assert rel_err(grad, leaf.grad) < 1e-5, name


# ------------------------------------------------------------------------------------------------ slopes


@pytest.mark.parametrize(
    ("num_heads", "expected"),
    [
        (64, [2.0 ** (-(h + 1) / 8) for h in range(64)]),  # spec: 2^(-(h+1)/8) for 64 heads
        (8, [2.0 ** -(h + 1) for h in range(8)]),
        # 6 heads: the 4-head list, then the 1st and 3rd of the 8-head list
        (6, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]),
    ],
    ids=["64-heads", "8-heads", "6-heads"],
)
def test_alibi_slopes_worked_examples(num_heads, expected):
    assert alibi_slopes(num_heads) == pytest.approx(expected, rel=1e-12)  # the test-side recipe itself
    slopes = la.lightning_slopes(num_heads, layer_idx=0, num_layers=2)  # factor 1 - 0 + 1e-5
    assert slopes.dtype == torch.float32
    torch.testing.assert_close(slopes.double(), torch.tensor(expected, dtype=torch.float64) * (1 + 1e-5),
                               rtol=1e-7, atol=0)


@pytest.mark.parametrize("num_heads", [1, 3, 5, 12, 48, 64])
@pytest.mark.parametrize(
    ("layer_idx", "num_layers", "factor"),
    [(0, 80, 1 + 1e-5), (7, 80, 1 - 7 / 79 + 1e-5), (79, 80, 1e-5), (5, 8, 1 - 5 / 7 + 1e-5), (0, 1, 1 + 1e-5)],
    ids=["first", "layer-7", "last", "tiny-layer-5", "single-layer"],
)
def test_layer_slopes_follow_the_spec(num_heads, layer_idx, num_layers, factor):
    slopes = la.lightning_slopes(num_heads, layer_idx, num_layers)
    expected = torch.tensor(alibi_slopes(num_heads), dtype=torch.float64) * factor
    assert slopes.dtype == torch.float32
    torch.testing.assert_close(slopes.double(), expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(lightning_layer_slopes(num_heads, layer_idx, num_layers), expected, rtol=1e-12, atol=0)
    assert math.isfinite(float(slopes.min())) and float(slopes.min()) > 0
