"""Lightning attention kernels: one contract, several implementations (a plain recurrent reference, the chunked
parallel prefill, the O(1) decode step, and flash-linear-attention's Triton kernel on CUDA).

`LIGHTNING_KERNELS` names the prefill implementations and `lightning_kernel` picks one from
`config.lightning_impl` ("auto" / "chunked" / "recurrent" / "fla"); adding a kernel is one entry there. A single
new token after cached ones always takes `lightning_attention_step` (one step of the recurrence, whatever the
setting).

Conventions: B batch, T tokens, H heads, d head_dim. Everything runs in fp32 at least (fp64 for fp64 inputs).
Words: a *block* is the chunked kernel's unit of C tokens (`block_size`); *groups* of blocks bound its memory.
"""

import math
from collections.abc import Callable

import torch

try:  # optional GPU kernels (flash-linear-attention >= 0.6: [B, T, H, d] layout, log-decay `g_gamma` per head or
    # `g` per token, packed segments through `cu_seqlens`)
    from fla.ops.simple_gla import chunk_simple_gla
except (ImportError, RuntimeError):  # not installed, or Triton without a usable GPU driver
    chunk_simple_gla = None


# One contract for every implementation:
#   fn(q, k, v [B, H, T, d], log_decay, initial_state [B, H, d, d] or None, sequence_starts [B, T] bool or None,
#      block_size) -> (out [B, H, T, d], final_state [B, H, d, d]), both fp32 (fp64 for fp64 inputs), per head:
#   S_t = a_t * S_{t-1} + k_t^T v_t,  o_t = q_t S_t,  a_t = 0 where sequence_starts[b, t] else exp(g_t).
# The log-decay g is [H] (every token alike: -slopes, the released model) or per token [B, T, H] (<= 0). A pad is
# g_t = 0 with v_t = 0: it neither adds to nor decays the state, wherever it sits. A sequence start marks the first
# token of a packed sequence: the state of the previous sequence is dropped. `block_size` is the configured block length; the
# chunked kernel caps it (`lightning_block_length`), kernels that do not work in blocks of it take it and ignore it.


def lightning_slopes(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """Per-head decay rates of one layer, fp32 [H]: ALiBi slopes scaled by (1 - l/(L-1) + 1e-5).

    `layer_idx` is the global index (softmax layers count). With a single layer the released formula divides by
    zero; we use the factor 1 + 1e-5 there.
    """

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        base = power_of_two_slopes(num_heads)
    else:
        p = 2 ** math.floor(math.log2(num_heads))
        base = power_of_two_slopes(p) + power_of_two_slopes(2 * p)[0::2][: num_heads - p]
    factor = 1.0 + 1e-5 if num_layers == 1 else 1.0 - layer_idx / (num_layers - 1) + 1e-5
    return torch.tensor(base, dtype=torch.float32) * factor


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 at least: bf16/fp16 activations never touch the decays or the state."""
    return torch.promote_types(x.dtype, torch.float32)


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), without a dispatched call when x has it already (a decode step runs dozens of these)."""
    return x if x.dtype == dtype else x.to(dtype)


def lightning_attention_step(q, k, v, decay, state, sequence_starts=None):
    """O(1) decode: one recurrence step S = decay S + k^T v. q, k, v [B, H, 1, d]; decay (e^log_decay) [H] or
    [B, 1, H]; state [B, H, d, d]."""
    dtype = compute_dtype(q)
    B, H, _, d = q.shape
    decay = as_dtype(decay, dtype).view(-1, H, 1, 1)  # [1 or B, H, 1, 1]
    if sequence_starts is not None:
        decay = decay * ~sequence_starts.view(B, 1, 1, 1)
    # S = decay S + k^T v as one batched outer-product-accumulate over B * H (one token: k^T is k as a column)
    k = as_dtype(k, dtype).reshape(B * H, d, 1)
    q, v = (as_dtype(x, dtype).reshape(B * H, 1, -1) for x in (q, v))
    state = torch.baddbmm((decay * as_dtype(state, dtype)).view(B * H, d, -1), k, v)
    return torch.bmm(q, state).view(B, H, 1, -1), state.view(B, H, d, -1)


def lightning_state_after(state, k, v, log_decay):
    """The state after T more tokens, without outputs (a rollback replays the kept tokens of a verification chunk).
    state [B, H, d, d] (None = zeros); k, v [B, H, T, d]; log_decay [B, T, H] -> [B, H, d, d].

    Closed form of the recurrence: with G_t = g_1 + ... + g_t (float64), S_T = e^(G_T) S_0 + sum_t e^(G_T - G_t) k_t^T v_t.
    """
    dtype = compute_dtype(k)
    B, H, T, d = k.shape
    if state is None:
        state = k.new_zeros(B, H, d, v.shape[-1], dtype=dtype)
    if T == 0:
        return state.to(dtype)
    G = log_decay.double().cumsum(1).transpose(1, 2)  # [B, H, T]
    weights = torch.exp(G[..., -1:] - G).to(dtype)  # decay of token t's contribution up to the last token
    added = (k.to(dtype) * weights[..., None]).transpose(-1, -2) @ v.to(dtype)  # [B, H, d, d]
    return torch.exp(G[..., -1]).to(dtype)[..., None, None] * state.to(dtype) + added


def lightning_attention_recurrent(q, k, v, log_decay, initial_state=None, sequence_starts=None, block_size=None):
    """Plain reference: the recurrence token by token (slow; the definition the fast paths are tested against).
    `block_size`: unused (no blocks)."""
    B, H, T, d = q.shape
    state = q.new_zeros(B, H, d, v.shape[-1], dtype=compute_dtype(q)) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        g = log_decay if log_decay.dim() == 1 else log_decay[:, t : t + 1]
        decay = torch.exp(as_dtype(g, compute_dtype(q)))
        start = None if sequence_starts is None else sequence_starts[:, t]
        out, state = lightning_attention_step(*(x[:, :, t : t + 1] for x in (q, k, v)), decay, state, start)
        outputs.append(out)
    return torch.cat(outputs, dim=2), state


def _lightning_blocks(q, k, v, log_decay, state, sequence_starts):
    """Exact recurrence over n consecutive blocks of C tokens at once. q, k, v [B, H, n, C, d] fp32; log_decay
    float64 [1, H, 1, C] (constant per head) or [B, H, n, C]; sequence_starts None or bool [B, 1, n, C].

    With G_i = g_0 + ... + g_i the running log-decay inside a block (float64: differences stay exact):
      o_i = sum_{j<=i} (q_i . k_j) e^(G_i - G_j) v_j + e^(G_i) q_i S_start,
      KV_b = sum_j e^(G_last - G_j) k_j^T v_j,   S_start[b] = e^(A_b-1) S_start[b-1] + KV_b-1  (A_b = G_last of block b).
    A sequence start at token r removes every term that reaches across it (masks, never -inf in a running sum).
    Exponents are differences G_i - G_j <= 0: nothing overflows.
    """
    n, C, dtype = q.shape[2], q.shape[3], q.dtype
    G = log_decay.cumsum(-1)  # [., H, n or 1, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    intra = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))  # [., H, ., C, C]
    q_decay, k_decay = torch.exp(G), torch.exp(G[..., -1:] - G)  # [., H, ., C]
    block_log_decay = G[..., -1].expand(-1, -1, n)  # [., H, n]
    if sequence_starts is not None:
        count = sequence_starts.cumsum(-1)  # sequence starts so far inside the block, [B, 1, n, C]
        intra = intra * (count[..., :, None] == count[..., None, :])  # no start in (j, i]
        q_decay = q_decay * (count == 0)  # no start in [block start, i]
        k_decay = k_decay * (count == count[..., -1:])  # no start in (j, block end]
        crossed = count[..., -1] > 0  # [B, 1, n]: the state does not pass this block
    out = (q @ k.transpose(-1, -2)).mul_(intra.to(dtype)) @ v  # [B, H, n, C, d]
    block_kv = (k * k_decay.to(dtype)[..., None]).transpose(-1, -2) @ v  # [B, H, n, d, d]

    # carry[b, b'] = decay from the end of block b' to the start of block b (through blocks b'+1 .. b-1)
    inclusive = block_log_decay.cumsum(-1)
    exclusive = inclusive - block_log_decay
    later = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)  # b' < b
    carry = torch.exp((exclusive[..., :, None] - inclusive[..., None, :]).masked_fill(~later, float("-inf")))
    from_initial = torch.exp(exclusive)  # decay of S_0 up to the start of block b, [., H, n]
    if sequence_starts is not None:
        crossed_incl = crossed.cumsum(-1)
        crossed_excl = crossed_incl - crossed.long()
        carry = carry * (crossed_excl[..., :, None] == crossed_incl[..., None, :])
        from_initial = from_initial * (crossed_excl == 0)
    starts = torch.einsum("zhbc,zhcde->zhbde", carry.to(dtype), block_kv)
    starts = starts + from_initial.to(dtype)[..., None, None] * state[:, :, None]
    out.add_((q @ starts).mul_(q_decay.to(dtype)[..., None]))  # (q @ S) * q_decay == (q * q_decay) @ S
    last_decay = torch.exp(block_log_decay[..., -1])  # [., H]
    if sequence_starts is not None:
        last_decay = last_decay * ~crossed[..., -1]
    final_state = last_decay.to(dtype)[..., None, None] * starts[:, :, -1] + block_kv[:, :, -1]
    return out, final_state


def lightning_attention_chunked(
    q, k, v, log_decay, initial_state=None, sequence_starts=None, block_size=256, blocks_per_group=16
):
    """Chunked parallel prefill: vectorised over blocks of `block_size` tokens, `blocks_per_group` blocks at a time
    so memory stays bounded (the per-block d x d states of a long sequence are never all materialised)."""
    B, H, T, d = q.shape
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    per_token = log_decay.dim() == 3
    g = log_decay.double().transpose(1, 2) if per_token else log_decay.double().view(1, H, 1)  # [B, H, T] or [1, H, 1]
    state = q.new_zeros(B, H, d, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    # written block by block, token-major: no concatenation, and the caller's [B, T, H * d] view needs no copy
    out = q.new_empty(B, T, H, v.shape[-1])
    group = block_size * blocks_per_group
    for start in range(0, T, group):
        length = min(group, T - start)
        n_full, tail = divmod(length, block_size)
        runs = [(start, n_full, block_size)] if n_full else []  # (first token, blocks, block length)
        if tail:  # a last, shorter block
            runs.append((start + n_full * block_size, 1, tail))
        for begin, n, C in runs:
            sl = slice(begin, begin + n * C)
            # one contiguous copy per operand (strided views would be copied again by every matmul using them)
            blocks = [x[:, :, sl].reshape(B, H, n, C, x.shape[-1]).contiguous() for x in (q, k, v)]
            block_g = g[:, :, sl].reshape(B, H, n, C) if per_token else g.expand(1, H, C)[:, :, None]
            block_starts = None if sequence_starts is None else sequence_starts[:, None, sl].reshape(B, 1, n, C)
            block_out, state = _lightning_blocks(*blocks, block_g, state, block_starts)
            out[:, sl] = block_out.reshape(B, H, n * C, -1).transpose(1, 2)
    return out.transpose(1, 2), state


def lightning_attention_blocks(q, k, v, log_decay, initial_state=None, sequence_starts=None, block_size=256):
    """The chunked kernel with the configured block length capped by `lightning_block_length`."""
    return lightning_attention_chunked(
        q, k, v, log_decay, initial_state, sequence_starts, lightning_block_length(block_size, q.shape[-1])
    )


def lightning_block_length(block_size: int, head_dim: int) -> int:
    """Block length of the plain chunked prefill: `block_size`, capped at 2 * head_dim. Per token the intra-block
    term costs O(C d) and the inter-block term O(d^2), so C ~ 2d balances them (256 for the released d = 128; for
    small heads smaller blocks are several times faster on CPU). The result is exact for any C."""
    return min(block_size, 2 * head_dim)


def lightning_attention_fla(q, k, v, log_decay, initial_state=None, sequence_starts=None, block_size=None):
    """GPU prefill through fla's `chunk_simple_gla`, with the contract of the other kernels (q, k, v [B, H, T, d];
    log_decay [H] or [B, T, H]; sequence_starts bool [B, T] or None; fp32 out and state). fla wants [B, T, H, d],
    scale 1 here; a per-head log-decay is its `g_gamma`, a per-token one its `g`. `block_size`: unused (fla picks
    its own chunk length).

    Sequence starts: fla restarts the state at every segment of a packed batch-1 row (`cu_seqlens`). The rows are
    flattened into one row and cut at every row start and every sequence start; a row's initial state enters its first segment
    (unless a sequence starts at the row's token 0), its final state is its last segment's.
    """
    B, H, T, _ = q.shape
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, d]
    decay = {"g_gamma": log_decay.float()} if log_decay.dim() == 1 else {"g": log_decay.float()}
    state = None if initial_state is None else initial_state.float()
    if sequence_starts is None:
        out, state = chunk_simple_gla(q, k, v, **decay, scale=1.0, initial_state=state, output_final_state=True)
        return out.transpose(1, 2).float(), state.float()

    segment_starts = sequence_starts.cpu().clone()  # one host copy: fla needs the segment bounds on the host anyway
    segment_starts[:, 0] = True
    per_row = segment_starts.sum(1)  # segments in each row
    last_segment = per_row.cumsum(0) - 1  # index of each row's last segment among all of them
    cu_seqlens_cpu = torch.cat((segment_starts.flatten().nonzero()[:, 0], torch.tensor([B * T])))
    if state is not None:  # segments after a row's first one start from zero
        state = state * (~sequence_starts[:, 0]).view(B, 1, 1, 1)  # a start at token 0 drops the initial state too
        first_segment = (last_segment - per_row + 1).to(q.device)
        state = state.new_zeros(len(cu_seqlens_cpu) - 1, *state.shape[1:]).index_copy(0, first_segment, state)
    if "g" in decay:
        decay["g"] = decay["g"].reshape(1, B * T, H)
    out, final_states = chunk_simple_gla(
        *(x.reshape(1, B * T, H, -1) for x in (q, k, v)),
        **decay,
        scale=1.0,
        initial_state=state,
        output_final_state=True,
        cu_seqlens=cu_seqlens_cpu.to(q.device),
        cu_seqlens_cpu=cu_seqlens_cpu,
    )
    return out.view(B, T, H, -1).transpose(1, 2).float(), final_states[last_segment.to(q.device)].float()


# name -> prefill implementation (the contract above). "auto" is not an entry: it resolves to one of them.
LIGHTNING_KERNELS: dict[str, Callable] = {
    "chunked": lightning_attention_blocks,  # plain PyTorch, any device: the default off CUDA
    "recurrent": lightning_attention_recurrent,  # token by token: the reference, slow
    "fla": lightning_attention_fla,  # flash-linear-attention's Triton kernel: the default on CUDA when installed
}
LIGHTNING_IMPLS = ("auto", *LIGHTNING_KERNELS)


def lightning_impl_name(impl: str, device: torch.device) -> str:
    """The implementation `impl` ("auto" or a `LIGHTNING_KERNELS` name) stands for on `device`: "auto" is fla on
    CUDA when it is installed, else chunked."""
    if impl not in LIGHTNING_IMPLS:
        raise ValueError(f"lightning_impl={impl!r} is not a lightning-attention implementation; use one of "
                         f"{', '.join(map(repr, LIGHTNING_IMPLS))}.")
    if impl == "auto":
        return "fla" if chunk_simple_gla is not None and device.type == "cuda" else "chunked"
    if impl == "fla" and chunk_simple_gla is None:
        raise ValueError("lightning_impl='fla' needs flash-linear-attention (pip install flash-linear-attention); "
                         "or use lightning_impl='auto' / 'chunked'.")
    return impl


def lightning_kernel(impl: str, device: torch.device) -> Callable:
    """The prefill implementation `impl` selects on `device` (see `lightning_impl_name`)."""
    return LIGHTNING_KERNELS[lightning_impl_name(impl, device)]
