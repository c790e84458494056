"""Lightning attention kernels: one contract, several implementations (a plain recurrent reference, the chunked
parallel prefill, the O(1) decode step, and flash-linear-attention's Triton kernel on CUDA).

Conventions: B batch, T tokens, H heads, d head_dim. Everything runs in fp32 at least (fp64 for fp64 inputs).
"""

import math

import torch

try:  # optional GPU kernels (flash-linear-attention >= 0.6: [B, T, H, d] layout, log-decay `g_gamma` per head or
    # `g` per token, packed segments through `cu_seqlens`)
    from fla.ops.simple_gla import chunk_simple_gla
except (ImportError, RuntimeError):  # not installed, or Triton without a usable GPU driver
    chunk_simple_gla = None


# One contract for every implementation:
#   (q, k, v [B, H, T, d], slopes [H] fp32, initial_state [B, H, d, d] fp32 or None) -> (out [B, H, T, d],
#   final_state [B, H, d, d]), both in fp32 (fp64 for fp64 inputs), computing per head, with lambda = exp(-slope):
#       S_t = lambda * S_{t-1} + k_t^T v_t,   o_t = q_t S_t.


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


def lightning_attention_step(q, k, v, slopes, state, decay=None):
    """O(1) decode: one recurrence step per token. q, k, v [B, H, 1, d]; state [B, H, d, d] fp32.
    `decay` = exp(-slopes) [H, 1, 1] in the compute dtype may be passed in precomputed (decode runs this per token)."""
    dtype = compute_dtype(q)
    if decay is None:
        decay = torch.exp(-slopes.to(dtype))[:, None, None]
    B, H, _, d = q.shape
    q, k, v = (x.to(dtype).reshape(B * H, 1, -1) for x in (q, k, v))
    # S = decay S + k^T v as one batched outer-product-accumulate over B * H
    state = torch.baddbmm((decay * state.to(dtype)).view(B * H, d, -1), k.transpose(1, 2), v)
    return torch.bmm(q, state).view(B, H, 1, -1), state.view(B, H, d, -1)


def lightning_attention_recurrent(q, k, v, slopes, initial_state=None):
    """Plain reference: the recurrence token by token (slow; the definition the fast paths are tested against)."""
    B, H, T, d = q.shape
    state = q.new_zeros(B, H, d, v.shape[-1], dtype=compute_dtype(q)) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        out, state = lightning_attention_step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], slopes, state)
        outputs.append(out)
    return torch.cat(outputs, dim=2), state


def _lightning_blocks(q, k, v, slopes, state):
    """Exact recurrence over n consecutive blocks of C tokens at once. q, k, v [B, H, n, C, d] fp32.

    Inside a block: o_i = sum_{j<=i} (q_i . k_j) lambda^(i-j) v_j + lambda^(i+1) q_i S_start.
    Block starts: S_start[b] = lambda^(C b) S_0 + sum_{b'<b} lambda^(C (b-1-b')) KV_b', with
    KV_b = sum_j lambda^(C-1-j) k_j^T v_j. Powers are exp(-slope * n) with n >= 0: nothing can overflow.
    """
    H, n, C = q.shape[1], q.shape[2], q.shape[3]
    s = slopes.view(H, 1, 1)
    pos = torch.arange(C, device=q.device, dtype=q.dtype)
    gap = pos[:, None] - pos[None, :]  # i - j
    intra_decay = torch.where(gap >= 0, torch.exp(-s * gap.clamp(min=0)), 0.0)  # [H, C, C]
    # in-place products on fresh matmul outputs (autograd-safe: matmul backward never reads its own output)
    out = (q @ k.transpose(-1, -2)).mul_(intra_decay[:, None]) @ v  # [B, H, n, C, d]

    q_decay = torch.exp(-s * (pos + 1)).view(1, H, 1, C, 1)
    k_decay = torch.exp(-s * (C - 1 - pos)).view(1, H, 1, C, 1)
    block_kv = (k * k_decay).transpose(-1, -2) @ v  # [B, H, n, d, d]
    idx = torch.arange(n, device=q.device, dtype=q.dtype)
    block_gap = idx[:, None] - 1 - idx[None, :]  # b - 1 - b'
    carry = torch.where(block_gap >= 0, torch.exp(-s * C * block_gap.clamp(min=0)), 0.0)  # [H, n, n]
    starts = torch.einsum("hbc,zhcde->zhbde", carry, block_kv)
    starts = starts + torch.exp(-s * C * idx.view(1, n, 1)).view(1, H, n, 1, 1) * state[:, :, None]
    out.add_((q @ starts).mul_(q_decay))  # q_decay scales rows: (q @ S) * q_decay == (q * q_decay) @ S
    final_state = torch.exp(-slopes * C).view(1, H, 1, 1) * starts[:, :, -1] + block_kv[:, :, -1]
    return out, final_state


def lightning_attention_chunked(q, k, v, slopes, initial_state=None, block_size=256, blocks_per_step=16):
    """Chunked parallel prefill: vectorised over blocks, `blocks_per_step` blocks at a time so memory stays bounded
    (the per-block d x d states of a long sequence are never all materialised)."""
    B, H, T, d = q.shape
    dtype = compute_dtype(q)
    q, k, v, slopes = q.to(dtype), k.to(dtype), v.to(dtype), slopes.to(dtype)
    state = q.new_zeros(B, H, d, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    # written block by block, token-major: no concatenation, and the caller's [B, T, H * d] view needs no copy
    out = q.new_empty(B, T, H, v.shape[-1])
    step = block_size * blocks_per_step
    for start in range(0, T, step):
        length = min(step, T - start)
        n_full, tail = divmod(length, block_size)
        spans = [(start, n_full, block_size)] if n_full else []
        if tail:  # a last, shorter block
            spans.append((start + n_full * block_size, 1, tail))
        for begin, n, C in spans:
            sl = slice(begin, begin + n * C)
            # one contiguous copy per operand (strided views would be copied again by every matmul using them)
            blocks = [x[:, :, sl].reshape(B, H, n, C, x.shape[-1]).contiguous() for x in (q, k, v)]
            block_out, state = _lightning_blocks(*blocks, slopes, state)
            out[:, sl] = block_out.reshape(B, H, n * C, -1).transpose(1, 2)
    return out.transpose(1, 2), state


def lightning_block_length(block_size: int, head_dim: int) -> int:
    """Block length of the plain chunked prefill: `block_size`, capped at 2 * head_dim. Per token the intra-block
    term costs O(C d) and the inter-block term O(d^2), so C ~ 2d balances them (256 for the released d = 128; for
    small heads smaller blocks are several times faster on CPU). The result is exact for any C."""
    return min(block_size, 2 * head_dim)


def use_fla_prefill(q: torch.Tensor) -> bool:
    """The flash-linear-attention Triton kernel runs the prefill when it is installed and q is on CUDA."""
    return chunk_simple_gla is not None and q.is_cuda


def lightning_attention_fla(q, k, v, log_decay, initial_state=None, resets=None):
    """GPU prefill through fla's `chunk_simple_gla`, with the contract of the other kernels (q, k, v [B, H, T, d];
    log_decay [H] or [B, T, H]; resets bool [B, T] or None; fp32 out and state). fla wants [B, T, H, d], scale 1
    here; a per-head log-decay is its `g_gamma`, a per-token one its `g`.

    Resets: fla restarts the state at every segment of a packed batch-1 row (`cu_seqlens`). The rows are flattened
    into one row and cut at every row start and every reset; a row's initial state enters its first segment (unless
    the row resets at token 0), its final state is its last segment's.
    """
    B, H, T, _ = q.shape
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, d]
    decay = {"g_gamma": log_decay.float()} if log_decay.dim() == 1 else {"g": log_decay.float()}
    state = None if initial_state is None else initial_state.float()
    if resets is None:
        out, state = chunk_simple_gla(q, k, v, **decay, scale=1.0, initial_state=state, output_final_state=True)
        return out.transpose(1, 2).float(), state.float()

    segment_starts = resets.cpu().clone()  # one host copy: fla needs the segment bounds on the host anyway
    segment_starts[:, 0] = True
    per_row = segment_starts.sum(1)  # segments in each row
    last_segment = per_row.cumsum(0) - 1  # index of each row's last segment among all of them
    cu_seqlens_cpu = torch.cat((segment_starts.flatten().nonzero()[:, 0], torch.tensor([B * T])))
    if state is not None:  # segments after a row's first one start from zero
        state = state * (~resets[:, 0]).view(B, 1, 1, 1)  # a reset at token 0 drops the initial state too
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
