"""The GPU prefill (flash-linear-attention's Triton `chunk_simple_gla`, through `lightning_attention_fla`) run on
CPU tensors by Triton's interpreter, against the float64 recurrence of tests/reference.py and the plain model path.

    make test-triton    # a venv with CPU torch, triton and flash-linear-attention; TRITON_INTERPRET=1

They run only with TRITON_INTERPRET=1 (the normal suite skips them, with or without triton installed); there a
missing triton or fla fails the run instead of skipping it. fp32 only: the interpreter's bf16 `tl.dot` is wrong
(see tests/triton_interpreter.py). fla works in chunks of 64 tokens: lengths straddle those boundaries.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton-interpreter tests: run `make test-triton` (TRITON_INTERPRET=1)", allow_module_level=True)

import triton_interpreter  # noqa: E402, F401  (the interpreter's workarounds; they act when a kernel first runs)
from fla.ops.simple_gla import chunk_simple_gla  # noqa: E402, F401  (installed, or this run fails)

import gpu_checks  # noqa: E402
import torch  # noqa: E402
from minimax_code import load  # noqa: E402
from reference import lightning_recurrence  # noqa: E402
from helpers import SLOPES, rel_err, tiny_model  # noqa: E402

pytestmark = pytest.mark.triton

la = load("lightning_attention")

B, H, D = 2, 3, 16  # fla's tl.dot needs head dims >= 16 on a GPU; keep the interpreter run to the same shapes
TOLERANCE = 1e-5  # fp32: measured <= 4.3e-7 for the kernel vs float64, <= 4.1e-6 through the whole model


def random_inputs(T, seed=0, requires_grad=False):
    """q, k, v [B, H, T, D] fp32 (SiLU'd like the model's) and an initial state [B, H, D, D]."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.nn.functional.silu(torch.randn(B, H, T, D, generator=g)) for _ in range(3))
    state = torch.randn(B, H, D, D, generator=g)
    return [x.requires_grad_(requires_grad) for x in (q, k, v, state)]


def padded_packed_decays(T, seed=0):
    """A batch in the kernel contract's per-token form: real [B, T] (row 0 left-padded with a hole, row 1
    right-padded), sequence_starts [B, T] (row 0 at a chunk boundary and mid-chunk, row 1 at token 0 and mid-chunk), and
    per-token log-decays [B, T, H] around -SLOPES, 0 at pads."""
    real = torch.ones(B, T, dtype=torch.bool)
    real[0, : T // 10] = False
    real[0, T // 2 : T // 2 + 3] = False
    real[1, T - T // 7 :] = False
    sequence_starts = torch.zeros(B, T, dtype=torch.bool)
    for row, positions in ((0, (64, 100)), (1, (0, 37))):
        sequence_starts[row, [t for t in positions if t < T]] = True
    jitter = torch.empty(B, T, H).uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(seed))
    log_decay = -SLOPES * jitter * real[..., None]
    return real, sequence_starts, log_decay


# ------------------------------------------------------------------------------------------------ kernel


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_fla_prefill_matches_float64_recurrence(T, with_state, report_error):
    q, k, v, state = random_inputs(T)
    state = state if with_state else None
    out, final = la.lightning_attention_fla(q, k, v, -SLOPES, state)
    ref_out, ref_final = lightning_recurrence(q, k, v, -SLOPES, state)
    assert out.shape == (B, H, T, D) and final.shape == (B, H, D, D)
    assert out.dtype == final.dtype == torch.float32
    report_error({"out": rel_err(out, ref_out), "final state": rel_err(final, ref_final)})
    assert rel_err(out, ref_out) < TOLERANCE and rel_err(final, ref_final) < TOLERANCE


@pytest.mark.parametrize("T", [65, 200])
def test_fla_prefill_per_token_decay_pads_and_sequence_starts_match_float64_recurrence(T, report_error):
    """Per-token log-decay (fla's `g`) with pads (g = 0, v = 0) and packed-sequence resets (fla's `cu_seqlens`),
    from an initial state; also the constant per-head decay (`g_gamma`) with the same sequence_starts."""
    q, k, v, state = random_inputs(T)
    real, sequence_starts, log_decay = padded_packed_decays(T)
    v = v * real[:, None, :, None]
    for name, decay in (("per-token", log_decay), ("per-head", -SLOPES)):
        out, final = la.lightning_attention_fla(q, k, v, decay, state, sequence_starts)
        ref_out, ref_final = lightning_recurrence(q, k, v, decay, state, sequence_starts)
        report_error({f"{name} decay: out": rel_err(out, ref_out), "final state": rel_err(final, ref_final)})
        assert rel_err(out, ref_out) < TOLERANCE and rel_err(final, ref_final) < TOLERANCE


@pytest.mark.parametrize("packed", [False, True], ids=["per-head", "per-token-packed"])
@pytest.mark.parametrize("T", [65, 200])
def test_fla_prefill_gradients_match_float64_recurrence(T, packed, report_error):
    """Gradients of q, k, v and the initial state through fla's backward kernels, against autograd through the
    float64 recurrence, for an upstream gradient on both the output and the final state."""
    inputs = random_inputs(T, requires_grad=True)
    if packed:
        _, sequence_starts, log_decay = padded_packed_decays(T)
    else:
        sequence_starts, log_decay = None, -SLOPES
    g = torch.Generator().manual_seed(2)
    up_out, up_state = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, D, D, generator=g)

    def gradients(kernel):
        out, final = kernel(*inputs[:3], log_decay, inputs[3], sequence_starts)
        return torch.autograd.grad((out * up_out).sum() + (final * up_state).sum(), inputs)

    ours = gradients(la.lightning_attention_fla)
    expected = gradients(lightning_recurrence)
    errors = {f"d {name}": rel_err(a, b) for name, a, b in zip(("q", "k", "v", "initial state"), ours, expected)}
    report_error(errors)
    assert max(errors.values()) < TOLERANCE, errors


# ------------------------------------------------------------------------------------------------ whole model


def test_model_with_fla_prefill_equals_plain_path_padded_and_cached(monkeypatch, report_error):
    """The tiny model (fp32) with its lightning prefill through fla (`lightning_impl="fla"`, which CPU tensors take
    too, here in Triton's interpreter) vs the plain chunked path (`lightning_impl="chunked"`): a left-padded batch
    prefilled with a cache, a 28-token cached continuation (fla from the cached state), then 2 decode steps
    (scripts/gpu_checks.py runs the same comparison on a GPU)."""
    model = tiny_model()
    model.config.lightning_impl = "chunked"
    ids, mask = gpu_checks.padded_batch(torch.device("cpu"))  # 70 tokens, row 0 left-padded
    plain_logits, plain_states = gpu_checks.padded_prefill_continuation_decode(model, ids, mask, prefill=40)
    fla_calls = []

    def counted_fla(*args):
        fla_calls.append(args[0].shape[2])
        return la.lightning_attention_fla(*args)

    monkeypatch.setitem(la.LIGHTNING_KERNELS, "fla", counted_fla)  # a spy: the setting below picks the kernel
    model.config.lightning_impl = "fla"
    fla_logits, fla_states = gpu_checks.padded_prefill_continuation_decode(model, ids, mask, prefill=40)

    lightning_layers = len(plain_states)
    assert fla_calls == [40] * lightning_layers + [28] * lightning_layers  # prefill and continuation took fla
    keep = mask.bool()  # padded positions are don't-care outputs
    errors = {
        "logits": rel_err(fla_logits[keep], plain_logits[keep]),
        "lightning states (worst layer)": max(rel_err(a, b) for a, b in zip(fla_states, plain_states)),
    }
    report_error(errors)
    assert max(errors.values()) < TOLERANCE, errors


def test_model_with_fla_prefill_equals_plain_path_on_packed_sequences(monkeypatch, report_error):
    """Packed rows (position_ids restarting, right-padded): fla's segments (`cu_seqlens`) inside the model vs the
    plain path's sequence starts, logits and the gradient w.r.t. the input embeddings (the backward through fla)."""
    model = tiny_model()
    model.config.lightning_impl = "chunked"
    packed = gpu_checks.packed_batch(torch.device("cpu"))  # rows of 3 and 2 sequences, 66 tokens
    plain_logits, plain_grad = gpu_checks.packed_logits_and_input_gradient(model, *packed)
    starts_seen = []

    def counted_fla(q, k, v, log_decay, state, sequence_starts, block_size):
        starts_seen.append(int(sequence_starts.sum()))
        return la.lightning_attention_fla(q, k, v, log_decay, state, sequence_starts, block_size)

    monkeypatch.setitem(la.LIGHTNING_KERNELS, "fla", counted_fla)  # a spy: the setting below picks the kernel
    model.config.lightning_impl = "fla"
    fla_logits, fla_grad = gpu_checks.packed_logits_and_input_gradient(model, *packed)
    assert starts_seen == [3] * len(starts_seen) and starts_seen  # 2 + 1 sequence starts after each row's first
    keep = packed[2].bool()
    errors = {"logits": rel_err(fla_logits[keep], plain_logits[keep]), "input gradient": rel_err(fla_grad, plain_grad)}
    report_error(errors)
    assert max(errors.values()) < TOLERANCE, errors
