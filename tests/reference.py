"""An independent float64 reference of the MiniMax-Text-01 forward, written from the spec (section 3) alone.

Nothing here imports the modeling code. Every function is the plainest float64 form of the math: the lightning
recurrence token by token, softmax attention with an explicit softmax and mask, RoPE written per channel pair,
the MoE evaluated densely (every expert on every token, unselected experts weighted 0). Weights come from a
state_dict with the released key names, sizes from the config values.

    logits = reference_text_logits(model.state_dict(), model.config, input_ids=ids, attention_mask=mask)
"""

import math
from types import SimpleNamespace

import torch

LIGHTNING_NORM_EPS = 1e-6  # spec 3.1: the norm inside lightning attention, not rms_norm_eps


# ------------------------------------------------------------------------------------------------ derived tables


def alibi_slopes(num_heads: int) -> list[float]:
    """Spec 3.2: 2^(-8(h+1)/H) for a power-of-two H; otherwise the p slopes of the largest power of two p < H,
    then the 1st, 3rd, 5th, ... slopes of the 2p list, cut to H - p entries."""

    def geometric(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    p = 1
    while 2 * p <= num_heads:
        p *= 2
    if p == num_heads:
        return geometric(num_heads)
    return geometric(p) + geometric(2 * p)[0::2][: num_heads - p]


def lightning_layer_slopes(num_heads: int, layer_idx: int, num_layers: int) -> torch.Tensor:
    """float64 [H]: s_h * (1 - l/(L-1) + 1e-5), global layer index l; the factor is 1 + 1e-5 when L = 1."""
    factor = 1.0 + 1e-5 if num_layers == 1 else 1.0 - layer_idx / (num_layers - 1) + 1e-5
    return torch.tensor([s * factor for s in alibi_slopes(num_heads)], dtype=torch.float64)


def rope_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """float64 [rotary_dim / 2]: theta^(-2j / rotary_dim)."""
    return torch.tensor([theta ** (-2.0 * j / rotary_dim) for j in range(rotary_dim // 2)], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ building blocks


def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def linear(x, weight):
    return x @ weight.T


def swiglu(x, gate_w, up_w, down_w):
    return linear(torch.nn.functional.silu(linear(x, gate_w)) * linear(x, up_w), down_w)


def lightning_recurrence(q, k, v, log_decay, state=None, sequence_starts=None):
    """Per head, token by token: S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, with S_{t-1} taken as zero
    where sequence_starts[b, t] is True (the first token of a packed sequence). q, k, v [B, H, T, d]; log_decay g is [H]
    (the same for every token: -slope) or per token [B, T, H].

    Returns (o [B, H, T, d], S_T [B, H, d, d]) in float64. Out-of-place, so autograd flows through it.
    """
    q, k, v = q.double(), k.double(), v.double()
    B, H, T, d = q.shape
    g = log_decay.double().expand(B, T, H) if log_decay.dim() == 1 else log_decay.double()
    S = q.new_zeros(B, H, d, v.shape[-1]) if state is None else state.double()
    outputs = []
    for t in range(T):
        decay = torch.exp(g[:, t]).view(B, H, 1, 1)
        if sequence_starts is not None:
            decay = decay * (~sequence_starts[:, t]).double().view(B, 1, 1, 1)
        S = decay * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # outer product k_t^T v_t
        outputs.append((q[:, :, t, :, None] * S).sum(-2))  # q_t S_t
    return torch.stack(outputs, dim=2), S


def packed_segments(position_ids, real):
    """Segment id [B, T] of every token: a new segment starts at each real token whose position id is 0 and that
    follows a real token of the same row (the layout of padding-free packed batches). Pads never start a segment."""
    B, T = real.shape
    starts = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        for t in range(1, T):
            starts[b, t] = bool(position_ids[b, t] == 0) and bool(real[b, t]) and bool(real[b, :t].any())
    return starts.long().cumsum(-1), starts


def rope(x, positions, rotary_dim, theta):
    """NeoX RoPE on channels [0, rotary_dim) of x [B, T, H, d] at positions [B, T]: channel c pairs with
    c + rotary_dim/2."""
    half = rotary_dim // 2
    angle = positions.double()[..., None] * rope_inv_freq(rotary_dim, theta)  # [B, T, half]
    cos, sin = angle.cos()[:, :, None, :], angle.sin()[:, :, None, :]
    first, second, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin, rest), dim=-1)


# ------------------------------------------------------------------------------------------------ layers


def lightning_attention(W, prefix, x, real, starts, slopes, c):
    """Spec 3.2. x [B, T, D] is the normed layer input; real [B, T] bool marks non-padded tokens, starts [B, T]
    the first tokens of packed sequences (the state resets there)."""
    B, T, _ = x.shape
    H, d = c.num_attention_heads, c.head_dim
    qkv = torch.nn.functional.silu(linear(x, W(prefix + "qkv_proj.weight"))).view(B, T, H, 3 * d)
    q, k, v = (qkv[..., i * d : (i + 1) * d].transpose(1, 2) for i in range(3))  # [B, H, T, d] each
    v = v * real[:, None, :, None]  # padded tokens add nothing to the state ...
    log_decay = -slopes.view(1, 1, H) * real[..., None]  # ... and do not decay it (spec of the padding contract)
    o, _ = lightning_recurrence(q, k, v, log_decay, sequence_starts=starts)
    o = o.transpose(1, 2).reshape(B, T, H * d)
    o = rms_norm(o, W(prefix + "norm.weight"), LIGHTNING_NORM_EPS)
    o = o * torch.sigmoid(linear(x, W(prefix + "output_gate.weight")))
    return linear(o, W(prefix + "out_proj.weight"))


def softmax_attention(W, prefix, x, real, positions, segments, c):
    """Spec 3.3: GQA, scale 1/sqrt(d), causal within each packed segment, padded keys masked, partial RoPE at
    `positions` [B, T]."""
    B, T, _ = x.shape
    H, H_kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = rope(linear(x, W(prefix + "q_proj.weight")).view(B, T, H, d), positions, c.rotary_dim, c.rope_theta)
    k = rope(linear(x, W(prefix + "k_proj.weight")).view(B, T, H_kv, d), positions, c.rotary_dim, c.rope_theta)
    v = linear(x, W(prefix + "v_proj.weight")).view(B, T, H_kv, d)
    kv_head = torch.arange(H) // (H // H_kv)  # query head h reads key/value head h // group
    k, v = k[:, :, kv_head], v[:, :, kv_head]  # [B, T, H, d]

    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    # a padded query still sees itself, so its (unused) row stays finite
    same_segment = segments[:, None, :, None] == segments[:, None, None, :]
    allowed = (s <= t)[None, None] & same_segment & (real[:, None, None, :] | (s == t)[None, None])
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, H * d)
    return linear(out, W(prefix + "o_proj.weight"))


def moe(W, prefix, x, c):
    """Spec 3.4: softmax over the gate logits, keep the top-k, renormalise, sum the weighted SwiGLU experts."""
    probs = torch.softmax(linear(x, W(prefix + "gate.weight")), dim=-1)  # [B, T, E]
    chosen = torch.zeros_like(probs).scatter(-1, probs.topk(c.num_experts_per_tok, dim=-1).indices, 1.0)
    weights = probs * chosen / (probs * chosen).sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(c.num_local_experts):
        ex = f"{prefix}experts.{e}."
        out = out + weights[..., e : e + 1] * swiglu(x, W(ex + "w1.weight"), W(ex + "w3.weight"), W(ex + "w2.weight"))
    return out


def shared_expert_size(c) -> int:
    size = c.shared_intermediate_size
    return size[0] if isinstance(size, (list, tuple)) else size


# ------------------------------------------------------------------------------------------------ the whole model


def reference_text_logits(
    state_dict, config, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, prefix=""
):
    """float64 logits [B, T, vocab] of MiniMax-Text-01 (spec 3). `config` is a config object or a dict of the
    released keys; `prefix` is prepended to every key (e.g. "language_model." for VL-01). `position_ids` default
    to 0..T-1 (the mask does not shift them); where they restart at 0 a new packed sequence begins."""
    c = SimpleNamespace(**config) if isinstance(config, dict) else config
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")

    def W(key):
        return state_dict[prefix + key].detach().to("cpu", torch.float64)

    x = W("model.embed_tokens.weight")[input_ids.cpu()] if input_ids is not None else inputs_embeds.cpu().double()
    B, T, _ = x.shape
    real = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
    positions = torch.arange(T).expand(B, T) if position_ids is None else position_ids.cpu()
    segments, starts = packed_segments(positions, real)

    for i, attn_type in enumerate(c.attn_type_list):
        p = f"model.layers.{i}."
        a = rms_norm(x, W(p + "input_layernorm.weight"), c.rms_norm_eps)
        if attn_type == 0:
            slopes = lightning_layer_slopes(c.num_attention_heads, i, c.num_hidden_layers)
            attn = lightning_attention(W, p + "self_attn.", a, real, starts, slopes, c)
            alpha, beta = c.layernorm_linear_attention_alpha, c.layernorm_linear_attention_beta
        else:
            attn = softmax_attention(W, p + "self_attn.", a, real, positions, segments, c)
            alpha, beta = c.layernorm_full_attention_alpha, c.layernorm_full_attention_beta
        y = alpha * (a if c.postnorm else x) + beta * attn

        b = rms_norm(y, W(p + "post_attention_layernorm.weight"), c.rms_norm_eps)
        ffn = moe(W, p + "block_sparse_moe.", b, c)
        if shared_expert_size(c) > 0:
            gate = torch.sigmoid(linear(b, W(p + "coefficient.weight")))  # [B, T, 1]
            shared = swiglu(b, *(W(f"{p}shared_mlp.{n}_proj.weight") for n in ("gate", "up", "down")))
            ffn = (1 - gate) * ffn + gate * shared
        x = c.layernorm_mlp_alpha * (b if c.postnorm else y) + c.layernorm_mlp_beta * ffn

    x = rms_norm(x, W("model.norm.weight"), c.rms_norm_eps)
    return linear(x, W("lm_head.weight"))
