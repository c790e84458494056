"""MiniMax-Text-01: a hybrid lightning/softmax-attention MoE decoder, faithful to the released checkpoints.

Reading order: RMSNorm -> attention modules -> MoE -> decoder layer -> pretrained base (shared with VL) -> token
layout and masks -> model -> causal-LM head. The lightning attention kernels live in `lightning_attention.py`, the
hybrid cache in `cache_minimax_text_01.py`.

Conventions: B batch, T new tokens, P tokens already in the cache, H heads, d head_dim, D hidden_size. Words: a
*chunk* is a piece of a long prompt run through the cache (`prefill_chunk_size`); a *block* the lightning kernel's
unit of tokens (`block_size`); `cache_position` the new tokens' cache slots; `sequence_starts` the first tokens of
packed sequences.
Every derived table (RoPE frequencies, lightning slopes) is computed in fp32 from the config, never stored in
the checkpoint and never cast with the model, so `.to(bfloat16)` and `from_pretrained` cannot corrupt it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils import can_return_tuple, logging

from .cache_minimax_text_01 import (
    CACHE_FIELD,
    MiniMaxGenerationMixin,
    MiniMaxText01Cache,
    MiniMaxText01StaticCache,
    check_prefill_chunk_size,
    static_cache_attention_mask,
    static_cache_padding_mask,
)
from .checkpoint_layouts import NATIVE_DERIVED_BUFFERS, forget_native_conversions, native_layout_conversions
from .configuration_minimax_text_01 import SOFTMAX, MiniMaxText01Config, refuse_sliding_window
from .lightning_attention import as_dtype, compute_dtype, lightning_attention_step, lightning_kernel, lightning_slopes
from .loading_checks import check_checkpoint_folder, check_loading_info
from .tensor_parallel_minimax_text_01 import (
    check_checkpoint_for_tensor_parallel,
    is_sharded,
    prepare_distributed_model,
)

logger = logging.get_logger(__name__)


class MiniMaxText01RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) computed in fp32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32 and "mean_square" not in self.__dict__:
            # fp32 and all channels here: the same math as one fused op (a decode step runs 2 per layer; the six ops
            # below cost more in dispatch than in arithmetic)
            return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
        x32 = x.float()
        normed = x32 * torch.rsqrt(self.mean_square(x32) + self.variance_epsilon)
        return self.weight * normed.to(x.dtype)

    def mean_square(self, x32: torch.Tensor) -> torch.Tensor:
        """Per-token mean of x^2 [..., 1]. Under tensor parallel the lightning norm holds only its rank's channels, and
        its `mean_square` is replaced by one summing over ranks (tensor_parallel_minimax_text_01.py)."""
        return x32.pow(2).mean(-1, keepdim=True)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


# ---------------------------------------------------------------------------------------------------------------
# Attention modules
# ---------------------------------------------------------------------------------------------------------------


# CPU: longer inputs reach the lightning kernels in pieces of at most this many tokens, so no temporary (qkv is
# [tokens, 3 H d]) outgrows glibc's 32 MiB mmap ceiling; larger buffers are page-faulted afresh on every allocation,
# about 20 % of a 16K-token layer on the benchmark machine. (Each layer's `cpu_max_tokens`; exact for any value.)
LIGHTNING_CPU_MAX_TOKENS = 4096


class MiniMaxText01LightningAttention(nn.Module):
    """Linear attention with per-head exponential decay (released names: qkv_proj, output_gate, norm, out_proj).
    The prefill kernel is the one `config.lightning_impl` names (lightning_attention.py's `LIGHTNING_KERNELS`)."""

    def __init__(self, config: MiniMaxText01Config, layer_idx: int):
        super().__init__()
        self.config = config  # read at every forward: `lightning_impl` and `block_size` may be changed after loading
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.num_layers = config.num_hidden_layers
        self.cpu_max_tokens = LIGHTNING_CPU_MAX_TOKENS
        # global indices of the heads this module holds: all, or under tensor parallel this rank's share, set from
        # the rank's place when the plan is applied (`record_tensor_parallel_place`)
        self.heads = range(self.num_heads)
        inner = self.num_heads * self.head_dim
        # rows are head-major: head h owns [3d h, 3d h + 3d) = q | k | v
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        self.output_gate = nn.Linear(config.hidden_size, inner, bias=False)
        self.norm = MiniMaxText01RMSNorm(inner, eps=config.lightning_norm_eps)
        self.out_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self._decay_rates: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def decay_rates(self, device: torch.device, dtype: torch.dtype = torch.float32):
        """(log decay -s_h in fp32, decay e^(-s_h) computed in `dtype` (the compute dtype, fp32 or fp64)) [H_local]
        of the heads this module holds (`self.heads`: their global indices set the slopes s_h). Kept per device
        and dtype, so a decode step computes neither."""
        if (device, dtype) not in self._decay_rates:
            heads = slice(self.heads.start, self.heads.stop)
            log_decay = -lightning_slopes(self.num_heads, self.layer_idx, self.num_layers)[heads].to(device)
            self._decay_rates[device, dtype] = (log_decay, log_decay.to(dtype).exp())
        return self._decay_rates[device, dtype]

    def forward(self, x, token_mask=None, sequence_starts=None, cache: MiniMaxText01Cache | None = None, **kwargs):
        """x [B, T, D]; token_mask bool [B, T] (False = pad) or None; sequence_starts bool [B, T] (first tokens of
        packed sequences) or None. While the cache records tokens for a rollback (speculative decoding), the last
        ones of this forward are run as their own piece and recorded with the state before them."""
        state = cache.get_lightning_state(self.layer_idx) if cache is not None else None
        T = x.shape[1]
        recorded = cache.tokens_to_record(self.layer_idx, T) if cache is not None and sequence_starts is None else 0
        piece = T if x.is_cuda else self.cpu_max_tokens
        # pieces: exact, the state carries over from piece to piece
        cuts = sorted({*range(0, T, piece), T - recorded} - {T})
        out = None if len(cuts) == 1 else x.new_empty(*x.shape[:2], self.out_proj.out_features)
        for start, end in zip(cuts, cuts[1:] + [T]):
            sl = slice(start, end)
            state_before = state
            if end - start == T:  # one piece (every decode step): the inputs as they are, no slicing ops
                piece_out, state, tokens = self._forward_tokens(x, token_mask, sequence_starts, state)
            else:
                piece_out, state, tokens = self._forward_tokens(
                    x[:, sl], *(m[:, sl] if m is not None else None for m in (token_mask, sequence_starts)), state
                )
            if out is None:
                out = piece_out
            else:
                out[:, sl] = piece_out
        if recorded:  # the last piece holds exactly the recorded tokens
            cache.record_lightning_tokens(self.layer_idx, state_before, *tokens, whole_forward=recorded == T)
        if cache is not None:
            cache.set_lightning_state(self.layer_idx, state)
        return out, None  # no attention matrix: (output, weights) like the softmax layers, with weights None

    def _forward_tokens(self, x, token_mask, sequence_starts, state):
        """The layer on x [B, T, D] from `state` (None = zeros) -> (output [B, T, D], final state, (k, v
        [B, H, T, d], log_decay [H] or [B, T, H]): what a rollback replays)."""
        B, T, _ = x.shape
        d = self.head_dim  # H below: the heads this module holds (a rank's share under tensor parallel)
        inplace = not torch.is_grad_enabled()  # fresh large buffers cost page faults on CPU; autograd needs copies
        qkv = F.silu(self.qkv_proj(x), inplace=inplace).view(B, T, -1, 3 * d)  # SiLU on q, k and v alike
        q, k, v = qkv.transpose(1, 2).split(d, dim=-1)  # [B, H, T, d] each
        log_decay, decay = self.decay_rates(x.device, compute_dtype(x))  # [H]: every token decays the state alike ...
        if token_mask is not None:  # ... except pads, which neither add to the state nor decay it
            v = v.masked_fill(~token_mask[:, None, :, None], 0.0)
            log_decay = log_decay * token_mask[..., None]  # [B, T, H]

        if T == 1 and state is not None:  # decode: one step of the recurrence, O(1)
            decay = decay if token_mask is None else log_decay.exp()
            out, state = lightning_attention_step(q, k, v, decay, state, sequence_starts)
        else:
            kernel = lightning_kernel(self.config.lightning_impl, q.device)
            out, state = kernel(q, k, v, log_decay, state, sequence_starts, self.config.block_size)
        out = out.transpose(1, 2).reshape(B, T, -1)  # [B, T, H d] heads concatenated, fp32
        gate = self.output_gate(x)
        gate = gate.sigmoid_() if inplace else gate.sigmoid()
        out = as_dtype(self.norm(out), x.dtype)
        return self.out_proj(out.mul_(gate) if inplace else out * gate), state, (k, v, log_decay)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX-style RoPE in fp32 on the first cos.shape[-1] channels of x [B, H, T, d]; the rest pass through."""
    r = cos.shape[-1]
    rot = as_dtype(x[..., :r], torch.float32)
    rot = as_dtype(torch.addcmul(rotate_half(rot).mul_(sin), rot, cos), x.dtype)  # rot * cos + rotate_half(rot) * sin
    return rot if r == x.shape[-1] else torch.cat((rot, x[..., r:]), dim=-1)


class MiniMaxText01RotaryEmbedding(nn.Module):
    """cos/sin tables [B, 1, T, rotary_dim] in fp32 for given positions; inv_freq_j = theta^(-2j / rotary_dim)."""

    def __init__(self, config: MiniMaxText01Config):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.theta = config.rope_theta
        self._inv_freq: torch.Tensor | None = None

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if self._inv_freq is None or self._inv_freq.device != device:
            exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64) / self.rotary_dim
            self._inv_freq = (1.0 / self.theta**exponents).float().to(device)
        return self._inv_freq

    def forward(self, position_ids: torch.LongTensor):
        freqs = position_ids.float()[..., None] * self.inv_freq(position_ids.device)  # [B, T, rotary_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]
        return angles.cos(), angles.sin()


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Explicit softmax attention with GQA. attention_mask: bool [B, 1, T, P+T] (True = attend) or None = causal."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is None and query.shape[2] > 1:
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril(
            key.shape[2] - query.shape[2]
        )
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def sdpa_chunk_after_cache(query, key, value, scaling):
    """Causal attention of T queries that follow S - T cached keys (the last query sees every key), with no mask.
    query [B, H, T, d], key / value [B, H_kv, S, d] -> [B, T, H, d].

    CUDA: sdpa with PyTorch's lower-right causal bias, which its fused kernels apply without a mask. CPU: the cached
    prefix (every query sees all of it) and the chunk's own causal square are attended separately by the CPU flash
    kernel, which returns their log-sum-exps, and merged; GQA folds the query heads of one K/V head into the query
    length, so K/V are never repeated. Memory: O(T) per head, never O(T x S)."""
    B, H, T, d = query.shape
    H_kv, S = key.shape[1], key.shape[2]
    groups = H // H_kv
    if query.is_cuda:
        bias = causal_lower_right(T, S)
        key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling).transpose(1, 2)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    folded = query.reshape(B, H_kv, groups * T, d)  # query heads h = g * groups + i share K/V head g
    if T == 1:  # a decode step: its one query sees every key, one call (3x faster than sdpa's GQA path on CPU)
        out, _ = flash(folded, key, value, 0.0, False, scale=scaling)
        return out.reshape(B, H, 1, d).transpose(1, 2)
    prefix = S - T
    out_prefix, lse_prefix = flash(folded, key[:, :, :prefix], value[:, :, :prefix], 0.0, False, scale=scaling)
    own_key, own_value = (x[:, :, prefix:].repeat_interleave(groups, dim=1) for x in (key, value))  # [B, H, T, d]
    out_own, lse_own = flash(query, own_key, own_value, 0.0, True, scale=scaling)
    out_prefix, lse_prefix = out_prefix.reshape(B, H, T, d), lse_prefix.reshape(B, H, T)
    top = torch.maximum(lse_prefix, lse_own)
    w_prefix, w_own = torch.exp(lse_prefix - top)[..., None], torch.exp(lse_own - top)[..., None]
    out = (w_prefix * out_prefix.float() + w_own * out_own.float()) / (w_prefix + w_own)
    return out.to(query.dtype).transpose(1, 2)


class MiniMaxText01Attention(nn.Module):
    """Softmax attention: GQA, RoPE on the first `rotary_dim` channels, any transformers attention backend."""

    def __init__(self, config: MiniMaxText01Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # read by transformers' sdpa backend
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, rotary, attention_mask=None, cache: MiniMaxText01Cache | None = None, **kwargs):
        B, T, _ = x.shape  # heads: all, or this rank's share under tensor parallel
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H_kv, T, d]
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, H_kv, P+T, d]

        implementation = self.config._attn_implementation or "eager"
        dropout = self.config.attention_dropout if self.training else 0.0
        # queries after cached tokens: a prefill chunk (transformers' sdpa would align causality to the first key)
        # or a CPU decode step (folded GQA is faster); a CUDA decode step keeps sdpa's own GQA kernel
        after_cache = T < k.shape[2] and (T > 1 or not q.is_cuda)
        if implementation == "sdpa" and attention_mask is None and dropout == 0.0 and after_cache:
            out, weights = sdpa_chunk_after_cache(q, k, v, self.scaling), None
        else:
            attend: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            # weights [B, H, T, P+T] from eager; None from backends that cannot return them (sdpa warns, as in
            # transformers)
            out, weights = attend(self, q, k, v, attention_mask, scaling=self.scaling, dropout=dropout, **kwargs)
        return self.o_proj(out.reshape(B, T, -1)), weights


# ---------------------------------------------------------------------------------------------------------------
# Mixture of experts
# ---------------------------------------------------------------------------------------------------------------


class MiniMaxText01Expert(nn.Module):
    """SwiGLU expert: w2(act(w1 x) * w3 x). Plain nn.Linear so int8 quantizers (quanto) see every expert."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = ACT2FN[act]

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.w2(self.act(self.w1(x)) * self.w3(x))
        # inference: the product in place; every fresh [N, I] buffer costs page faults on CPU (about 10 % here)
        return self.w2(self.act(self.w1(x)).mul_(self.w3(x)))


class MiniMaxText01SharedMLP(nn.Module):
    """The optional shared expert (absent from the released checkpoints): gate_proj / up_proj / down_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = ACT2FN[act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def experts_are_plain_linear(moe: nn.Module) -> bool:
    """False once a quantizer replaced the expert layers (e.g. quanto's QLinear): those keep the per-expert loop."""
    return all(type(layer) is nn.Linear for expert in moe.experts for layer in (expert.w1, expert.w3, expert.w2))


def stackable_experts(moe: nn.Module) -> bool:
    """Plain nn.Linear experts holding plain Parameters (not quanto's QLinear, not DTensor shards, not meta
    placeholders of an offloaded model), all on one device in one dtype."""
    weights = [layer.weight for expert in moe.experts for layer in (expert.w1, expert.w3, expert.w2)]
    return (
        experts_are_plain_linear(moe)
        and all(type(w) is nn.Parameter and not is_sharded(w) and not w.is_meta for w in weights)
        and len({(w.device, w.dtype) for w in weights}) == 1
    )


def use_grouped_mm(moe: nn.Module, x: torch.Tensor) -> bool:
    """Grouped matmul for the experts: opted into (`config.moe_grouped_mm`, since it needs the extra copy of
    `ExpertWeights.grouped_mm_copy`), on CUDA, in inference, when torch has it and the experts can be stacked."""
    return (
        moe.grouped_mm and _grouped_mm is not None and x.is_cuda and not torch.is_grad_enabled()
        and stackable_experts(moe)
    )


def has_forward_hooks(*modules: nn.Module) -> bool:
    """Forward (pre-)hooks on any of `modules`, or global ones: a fast path that skips the module calls must not
    run then."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


class ExpertWeights:
    """The one owner of the expert weights' layouts beyond the checkpoint's (one nn.Linear per expert and matrix,
    which keeps the released names, quantizers and tensor-parallel plans working):

    - `stacked_views`: (w1 [E, I, D], w3 [E, I, D], w2 [E, D, I]), no copy: each expert's `weight` becomes a view
      into two stacks, w13 [E, 2I, D] (w1 | w3 of each expert next to each other) and w2. The compiled decode
      gathers the chosen experts' rows from them; the eager one-token decode runs w1 and w3 as one matvec.
    - `grouped_mm_copy`: (w13 [E, D, 2I] (w1 | w3), w2 [E, I, D]), the only extra copy of the experts, made only
      for `config.moe_grouped_mm`: grouped matmul wants each expert's matrix input-major with w1 and w3 fused, a
      layout no view of the per-expert [I, D] weights gives.

    Both are inference-only (later weight updates are not seen) and dropped by `forget` when the block is moved or
    cast (`.to()` gives every parameter new storage).
    """

    LAYERS = ("w1", "w3", "w2")

    def __init__(self):
        self._stacks: tuple[torch.Tensor, torch.Tensor] | None = None  # (w13 [E, 2I, D], w2 [E, D, I])
        # per expert, from when the stacks were made: ((layer name, weight, data_ptr) of w1, w3, w2), and its
        # (w13^T [D, 2I], w2^T [I, D]) views of the stacks
        self._slots: list[tuple[tuple[tuple[str, nn.Parameter, int], ...], tuple[torch.Tensor, torch.Tensor]]] = []
        self._copy: tuple[torch.Tensor, torch.Tensor] | None = None

    def forget(self) -> None:
        self._stacks, self._slots, self._copy = None, [], None

    def stacked_views(self, moe: nn.Module):
        """(w1 [E, I, D], w3 [E, I, D], w2 [E, D, I]) viewing the stacks, or None when the experts cannot be stacked.
        Built in eager mode: every eager inference forward of more than one token (e.g. the prefill before a
        compiled decode) checks that each expert weight is still the stacked Parameter viewing its slot, and
        restacks otherwise. A compiled graph uses them as they were at the last eager prompt (reading the per-expert
        weights would add a dynamo guard each)."""
        if not torch.compiler.is_compiling() and (self._stacks is None or not self._views_in_use(moe)):
            self._stacks = self._stack(moe) if stackable_experts(moe) else None
        if self._stacks is None:
            return None
        w13, w2 = self._stacks
        I = w13.shape[1] // 2
        return w13[:, :I], w13[:, I:], w2

    def grouped_mm_copy(self, moe: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13 [E, D, 2I], w2 [E, I, D]) for `grouped_experts_forward`, copied once per device and dtype. Not for
        models offloaded by accelerate (the copy would stay on the GPU)."""
        w1 = moe.experts[0].w1.weight
        if self._copy is None or (self._copy[0].device, self._copy[0].dtype) != (w1.device, w1.dtype):
            w13 = torch.stack([torch.cat((e.w1.weight, e.w3.weight)).T for e in moe.experts])
            w2 = torch.stack([e.w2.weight.T for e in moe.experts])
            self._copy = (w13.contiguous(), w2.contiguous())
        return self._copy

    def stacked_weights_of(self, expert: nn.Module, e: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Expert e's transposed weights (w13^T [D, 2I] (w1 | w3), w2^T [I, D]), views of the stacks, when these were
        built and its layers' weights are still the stacked Parameters viewing their slots (so: plain, real,
        unsharded nn.Linear weights), else None; None too while forward hooks are registered on its modules (they
        must see the modules run). For the eager one-token decode: checks only the chosen experts, never restacks."""
        if self._stacks is None or not self._slot_in_use(expert, e):
            return None
        return None if has_forward_hooks(expert, *expert._modules.values()) else self._slots[e][1]

    def _slot_in_use(self, expert: nn.Module, e: int) -> bool:
        """Expert e's layer weights are still the Parameters that were stacked, still viewing their slots. Reads the
        module dicts directly: nn.Module.__getattr__ would cost more than the rest of this check."""
        layers = expert._modules
        return all(
            layers[name]._parameters.get("weight") is weight and weight.data_ptr() == ptr
            for name, weight, ptr in self._slots[e][0]
        )

    def _views_in_use(self, moe) -> bool:
        """Every expert weight is still the Parameter that was stacked, still viewing its slot of the stack."""
        return len(moe.experts) == len(self._slots) and all(
            self._slot_in_use(expert, e) for e, expert in enumerate(moe.experts)
        )

    @torch.no_grad()
    def _stack(self, moe):
        w13 = torch.stack([torch.cat((expert.w1.weight, expert.w3.weight)) for expert in moe.experts])
        w2 = torch.stack([expert.w2.weight for expert in moe.experts])
        I = w13.shape[1] // 2
        self._slots = []
        for expert, expert_w13, expert_w2 in zip(moe.experts, w13, w2):  # the per-expert storage is freed
            expert.w1.weight.data, expert.w3.weight.data = expert_w13[:I], expert_w13[I:]
            expert.w2.weight.data = expert_w2
            weights = [(name, getattr(expert, name).weight) for name in self.LAYERS]
            self._slots.append((tuple((name, w, w.data_ptr()) for name, w in weights), (expert_w13.T, expert_w2.T)))
        for stack in (w13, w2):
            torch._dynamo.mark_static_address(stack)  # a fixed input of CUDA graphs, never copied per replay
        return w13, w2


def grouped_experts_forward(x_sorted, counts, w13, w2, act):
    """All experts in two grouped matmuls. x_sorted [S, D] grouped by expert, counts [E] rows per expert,
    w13 [E, D, 2I] (w1 | w3), w2 [E, I, D] -> [S, D], row for row what the per-expert loop computes."""
    offsets = counts.cumsum(0).to(torch.int32)
    gate, up = _grouped_mm(x_sorted, w13, offs=offsets).chunk(2, dim=-1)
    return _grouped_mm(act(gate) * up, w2, offs=offsets)


def one_token_expert(x, w13_t, w2_t, act, weight: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """out (None: 0) + weight * MiniMaxText01Expert's inference math, w2(act(w1 x) * w3 x), on x [1, D], with its
    weights passed as transposed views (w13^T [D, 2I] = (w1 | w3)^T, w2^T [I, D]): no module calls, w1 and w3 in
    one matvec, one `mm` per matrix (F.linear dispatches three more ops each), the weighted sum inside the last."""
    gate, up = torch.mm(x, w13_t).chunk(2, dim=-1)
    hidden = act(gate).mul_(up)
    return torch.mm(hidden, w2_t).mul_(weight) if out is None else torch.addmm(out, hidden, w2_t, alpha=weight)


def gathered_experts_forward(x, weights, experts, w1, w3, w2, act):
    """The k chosen experts of each of N tokens, reading only the chosen rows of the stacked weights: no host sync,
    no data-dependent shape. x [N, D], weights / experts [N, k]; w1 / w3 [E, I, D], w2 [E, D, I] -> [N, D].
    Written as products and sums over gathered weights, which inductor fuses into reductions that read each
    chosen weight once; used only inside torch.compile (eager would materialise [N k, I, D])."""
    idx = experts.flatten()  # [S = N k]
    xs = x.repeat_interleave(experts.shape[1], dim=0)[:, None, :]  # [S, 1, D]
    h = act((w1[idx] * xs).sum(-1)) * (w3[idx] * xs).sum(-1)  # [S, I]
    y = (w2[idx] * h[:, None, :]).sum(-1)  # [S, D]
    return (y.view(*experts.shape, -1) * weights[..., None]).sum(1)


class MiniMaxText01SparseMoeBlock(nn.Module):
    """Top-k routing with an fp32 softmax and renormalised weights; no capacity limit, no router bias.

    forward = `route` (which experts, with which weights) + `run_experts` (the dispatch path `dispatch_path` names).
    The expert weights' extra layouts belong to `expert_weights` (ExpertWeights).
    """

    def __init__(self, config: MiniMaxText01Config):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.grouped_mm = config.moe_grouped_mm
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            MiniMaxText01Expert(config.hidden_size, config.intermediate_size, config.hidden_act)
            for _ in range(self.num_experts)
        )
        self.expert_weights = ExpertWeights()

    def _apply(self, fn, recurse=True):
        self.expert_weights.forget()  # .to() / .half() / ... give every parameter new storage: rebuild when needed
        return super()._apply(fn, recurse)

    def forward(self, x):
        """x [B, T, D] -> (output [B, T, D], router logits [B * T, E])."""
        B, T, D = x.shape
        x = x.reshape(-1, D)
        if self.training and self.jitter_noise > 0:  # the router and the experts see the same jittered input
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        router_logits, weights, experts = self.route(x)
        if T > 1 and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self.expert_weights.stacked_views(self)  # built or refreshed in an eager prompt, for a compiled decode
        return self.run_experts(x, weights, experts).view(B, T, D), router_logits

    def route(self, x):
        """x [N, D] -> (router logits [N, E], routing weights [N, k] in x's dtype, expert indices [N, k])."""
        router_logits = self.gate(x)  # [N, E]
        probs = torch.softmax(as_dtype(router_logits, torch.float32), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # [N, k]
        return router_logits, as_dtype(weights / weights.sum(dim=-1, keepdim=True), x.dtype), experts

    def dispatch_path(self, x) -> str:
        """How the experts run on x [N, D]:

        - "gathered" / "dense": under torch.compile in inference (the static-cache decode) no path may sync with
          the host: up to `num_experts` (token, expert) pairs gather the chosen rows of the stacked weights; larger
          inputs, or experts that cannot be stacked (quanto, tensor-parallel shards), run every expert on every
          token, weighted by the routing weight (0 where not chosen);
        - "one token": an eager decode of one token runs its k experts directly;
        - "grouped mm": CUDA inference with `config.moe_grouped_mm`, two grouped matmuls over all experts;
        - "per expert": otherwise, tokens grouped by expert, each expert once on its tokens.
        """
        if not torch.is_grad_enabled():
            if torch.compiler.is_compiling():
                stackable = x.shape[0] * self.top_k <= self.num_experts
                return "gathered" if stackable and self.expert_weights.stacked_views(self) is not None else "dense"
            if x.shape[0] == 1:
                return "one token"
        return "grouped mm" if use_grouped_mm(self, x) else "per expert"

    def run_experts(self, x, weights, experts):
        """x [N, D], routing weights / expert indices [N, k] -> the weighted sum of the chosen experts [N, D]."""
        path = self.dispatch_path(x)
        if path == "gathered":
            stacks = self.expert_weights.stacked_views(self)
            return gathered_experts_forward(x, weights, experts, *stacks, self.experts[0].act)
        if path == "dense":
            return self._dense_experts(x, weights, experts)
        if path == "one token":
            return self._one_token_experts(x, weights, experts)
        return self._experts_by_group(x, weights, experts, grouped_mm=path == "grouped mm")

    def _one_token_experts(self, x, weights, experts):
        """x [1, D]: its k experts one after the other, weighted by Python scalars (no 0-dim tensor ops). While the
        expert weights are the stacked views an eager prompt built (plain, real weights), `one_token_expert` runs
        on them without the modules' call overhead (a decode step runs 3 k linear layers per MoE block); otherwise
        each expert module runs (`self.experts[e]`, the reference it is tested against)."""
        out = None
        for w, e in zip(weights.tolist()[0], experts.tolist()[0]):
            expert = self.experts[e]
            stacked = self.expert_weights.stacked_weights_of(expert, e)
            if stacked is not None:
                out = one_token_expert(x, *stacked, expert.act, w, out)
            else:
                y = expert(x)
                out = y * w if out is None else torch.add(out, y, alpha=w)
        return out

    def _experts_by_group(self, x, weights, experts, grouped_mm: bool):
        """The (token, slot) pairs grouped by expert, each expert run once on its tokens (or all of them in two
        grouped matmuls), the results scattered back weighted. x [N, D] -> [N, D]."""
        order = experts.flatten().argsort(stable=True)
        tokens = order // self.top_k
        sorted_weights = weights.flatten().index_select(0, order)[:, None]  # [N * k, 1]
        counts = torch.bincount(experts.flatten(), minlength=self.num_experts)
        out = torch.zeros_like(x)
        if grouped_mm:
            w13, w2 = self.expert_weights.grouped_mm_copy(self)
            expert_out = grouped_experts_forward(x[tokens], counts, w13, w2, self.experts[0].act)
            return out.index_add_(0, tokens, expert_out * sorted_weights)
        # expert by expert, scattering each result at once (no [N * k, D] gather / concatenation / product
        # buffers: large fresh buffers cost page faults on CPU); weighted in place when autograd is off
        counts = counts.tolist()
        for e, (expert_tokens, pair_weights) in enumerate(zip(tokens.split(counts), sorted_weights.split(counts))):
            if counts[e] > 0:
                y = self.experts[e](x.index_select(0, expert_tokens))  # index_select: 4x faster than x[idx]
                y = y * pair_weights if torch.is_grad_enabled() else y.mul_(pair_weights)
                out.index_add_(0, expert_tokens, y)
        return out

    def _dense_experts(self, x, weights, experts):
        """Every expert on every token, weighted by its routing weight (0 where not chosen): no host sync, no
        data-dependent shape. x [N, D] -> [N, D]."""
        dense = torch.zeros(x.shape[0], self.num_experts, dtype=x.dtype, device=x.device).scatter(1, experts, weights)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * dense[:, e : e + 1]
        return out


# ---------------------------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------------------------


def scaled_residual(residual: torch.Tensor, alpha: float, update: torch.Tensor, beta: float) -> torch.Tensor:
    """alpha * residual + beta * update: one op when beta == 1 (the released value), two otherwise."""
    return torch.add(update if beta == 1 else beta * update, residual, alpha=alpha)


class MiniMaxText01DecoderLayer(GradientCheckpointingLayer):
    """DeepNorm-style post-norm block: out = alpha * residual + beta * f(norm(x)), residual = norm(x) when postnorm."""

    def __init__(self, config: MiniMaxText01Config, layer_idx: int):
        super().__init__()
        self.is_softmax = config.attn_type_list[layer_idx] == SOFTMAX
        if self.is_softmax:
            self.self_attn = MiniMaxText01Attention(config, layer_idx)
            self.attn_alpha = config.layernorm_full_attention_alpha
            self.attn_beta = config.layernorm_full_attention_beta
        else:
            self.self_attn = MiniMaxText01LightningAttention(config, layer_idx)
            self.attn_alpha = config.layernorm_linear_attention_alpha
            self.attn_beta = config.layernorm_linear_attention_beta
        self.mlp_alpha, self.mlp_beta = config.layernorm_mlp_alpha, config.layernorm_mlp_beta
        self.postnorm = config.postnorm
        self.input_layernorm = MiniMaxText01RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MiniMaxText01RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = MiniMaxText01SparseMoeBlock(config)
        if config.shared_expert_size > 0:
            self.shared_mlp = MiniMaxText01SharedMLP(config.hidden_size, config.shared_expert_size, config.hidden_act)
            self.coefficient = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(
        self, hidden_states, rotary, softmax_mask=None, token_mask=None, sequence_starts=None, cache=None, **kwargs
    ):
        """-> (hidden states, router logits [B * T, E], attention weights [B, H, T, P+T] or None: lightning layers
        and backends other than eager have none)."""
        normed = self.input_layernorm(hidden_states)
        residual = normed if self.postnorm else hidden_states
        if self.is_softmax:
            attn, attn_weights = self.self_attn(normed, rotary, attention_mask=softmax_mask, cache=cache, **kwargs)
        else:
            attn, attn_weights = self.self_attn(normed, token_mask=token_mask, sequence_starts=sequence_starts, cache=cache)
        hidden_states = scaled_residual(residual, self.attn_alpha, attn, self.attn_beta)

        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.postnorm else hidden_states
        ffn, router_logits = self.block_sparse_moe(normed)
        if hasattr(self, "shared_mlp"):
            gate = torch.sigmoid(self.coefficient(normed).float())
            ffn = ((1 - gate) * ffn.float() + gate * self.shared_mlp(normed).float()).to(normed.dtype)
        return scaled_residual(residual, self.mlp_alpha, ffn, self.mlp_beta), router_logits, attn_weights


class MiniMaxPreTrainedMixin:
    """What MiniMax-Text-01 and MiniMax-VL-01 add to transformers' PreTrainedModel alike (listed before it in the
    bases): strict loading, tensor-parallel checks before loading, and the output-flag defaults."""

    @classmethod
    def from_pretrained(cls, *args, ignore_mismatched_sizes: bool = False, output_loading_info: bool = False, **kwargs):
        """As transformers', but a checkpoint that does not fit the config raises an error naming the keys (see
        `check_loading_info`) instead of leaving weights at random behind a logged report. The folder is checked
        first (`check_checkpoint_folder`: model kind, JSON files, dtype name, shards, device map). Checkpoints in
        transformers' native `minimax` layout load too (converted per tensor, see checkpoint_layouts.py), except
        fused experts with a `quantization_config`: quanto quantizes each tensor as it is read, before any split."""
        check_checkpoint_folder(cls, args, kwargs)
        check_checkpoint_for_tensor_parallel(cls.config_class, args, kwargs)
        converted = [] if "quantization_config" in kwargs else [cls.__name__, MiniMaxText01Model.__name__]
        with native_layout_conversions(converted):
            model, info = super().from_pretrained(*args, ignore_mismatched_sizes=True, output_loading_info=True,
                                                  **kwargs)
        forget_native_conversions(model)
        # `from_pretrained(None, config=..., state_dict=...)`: the caller's own tensors, no checkpoint folder; what
        # they leave out is initialised by `_init_weights` (transformers' documented way to build a model from them)
        own_tensors = (args[0] if args else kwargs.get("pretrained_model_name_or_path")) is None
        check_loading_info(model, info, ignore_mismatched_sizes, allow_missing=output_loading_info or own_tensors,
                           allow_unused=output_loading_info)
        return (model, info) if output_loading_info else model

    @classmethod
    def maybe_distribute_model(cls, model, distributed_config, *args, **kwargs):
        """transformers' step between building the model and reading the weights (tp_plan / distributed_config):
        a layout this model cannot run is refused here, before any weight is loaded. The text decoder is split by
        heads and expert widths; a VL model's vision tower, projector and `image_newline` stay replicated."""
        prepare_distributed_model(model, distributed_config, *args)
        return super().maybe_distribute_model(model, distributed_config, *args, **kwargs)

    def output_flags(self, **flags: bool | None) -> tuple[bool, ...]:
        """Each output flag as passed, or, when None, on when the config (or a VL config's text config) sets the
        flag of the same name."""
        configs = (self.config, self.config.get_text_config(decoder=True))
        return tuple(
            any(getattr(c, name, False) for c in configs) if flag is None else flag for name, flag in flags.items()
        )


class MiniMaxText01PreTrainedModel(MiniMaxPreTrainedMixin, PreTrainedModel):
    config_class = MiniMaxText01Config
    config: MiniMaxText01Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMaxText01DecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # with MiniMaxText01StaticCache (generate(cache_implementation="static"))
    # not stateful: the dynamic cache rolls its lightning states back (crop), so transformers runs assisted
    # generation and prompt lookup
    _is_stateful = False
    # checkpoints saved by transformers' native `minimax` also hold its derived decay tables; ours are computed
    _keys_to_ignore_on_load_unexpected = [NATIVE_DERIVED_BUFFERS.pattern]


# ---------------------------------------------------------------------------------------------------------------
# Token layout and masks
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TokenLayout:
    """Where the T new tokens of a forward sit: what the layers need besides the hidden states.

    `padding_mask` bool [B, P+T] (static cache: [B, max_cache_len], its slots) or None when nothing is padded;
    `token_mask` its entries of the new tokens [B, T]; `position_ids` [B or 1, T]; `cache_position` [T] the new
    tokens' cache slots P .. P+T-1; `sequence_starts` bool [B, T] (the first tokens of packed sequences) or None;
    `past_len` the tokens cached before (static cache: a 0-dim device tensor); `static_len` the static cache's
    max_cache_len, or None."""

    padding_mask: torch.Tensor | None
    token_mask: torch.Tensor | None
    position_ids: torch.LongTensor
    cache_position: torch.LongTensor
    sequence_starts: torch.Tensor | None
    past_len: int | torch.Tensor
    static_len: int | None

    def chunk(self, start: int, end: int) -> "TokenLayout":
        """The layout of new tokens start .. end-1 (a prefill chunk): the keys it sees end with it."""
        sl = slice(start, end)
        padding_mask = self.padding_mask
        if padding_mask is not None and self.static_len is None:
            padding_mask = padding_mask[:, : self.past_len + end]
        token_mask, starts = (m[:, sl] if m is not None else None for m in (self.token_mask, self.sequence_starts))
        return TokenLayout(padding_mask, token_mask, self.position_ids[:, sl], self.cache_position[sl], starts,
                           self.past_len + start, self.static_len)


def token_layout(attention_mask, position_ids, cache, batch_size: int, new_tokens: int, device, chunked: bool):
    """The layout of the new tokens from the 2-D attention mask (any padding: left, right, holes), the position ids
    (None: derived) and the cache. Packed sequences are refused where their starts cannot hold: after cached
    tokens, in a static cache, or run in chunks (`chunked`)."""
    past_len = cache.get_seq_length() if cache is not None else 0  # static: a device tensor
    static_len = cache.max_cache_len if isinstance(cache, MiniMaxText01StaticCache) else None
    if static_len is not None:  # bool [B, max_cache_len]: fixed shape for every step
        padding_mask = static_cache_padding_mask(attention_mask, batch_size, static_len)
    else:
        padding_mask = padding_mask_of(attention_mask, batch_size, past_len + new_tokens)
    cache_position = torch.arange(new_tokens, device=device) + past_len
    if position_ids is None:
        position_ids = default_position_ids(padding_mask, cache_position, batch_size)
    token_mask = padding_mask.index_select(1, cache_position) if padding_mask is not None else None
    sequence_starts = packed_sequence_starts(position_ids, token_mask)
    if sequence_starts is not None and (static_len is not None or past_len > 0 or chunked):
        raise ValueError(
            "Packed sequences (position_ids restarting at 0 inside a row) cannot follow cached tokens, run in "
            "prefill chunks or fill a static cache. Run a packed batch without a cache, or unpack it into rows."
        )
    return TokenLayout(padding_mask, token_mask, position_ids, cache_position, sequence_starts, past_len, static_len)


def padding_mask_of(attention_mask, batch_size, total_len):
    """2-D attention mask (any padding: left, right, holes) -> bool [B, P+T], or None when nothing is padded."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape != (batch_size, total_len):
        raise ValueError(
            f"attention_mask must have shape (batch, cached + new tokens) = ({batch_size}, {total_len}), got "
            f"{tuple(attention_mask.shape)}. Pass the 2-D padding mask covering the cached tokens too."
        )
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


def packed_sequence_starts(position_ids: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B, T]: the real tokens (after the first) whose position id is 0, where a new sequence of a packed,
    padding-free batch begins (the layout of TRL's flattening collators). None when no row is packed."""
    if position_ids.shape[1] < 2:
        return None
    starts = position_ids == 0
    starts[:, 0] = False
    if token_mask is not None:  # generate() gives pads position 0 too: only a real token after real ones starts one
        real_before = F.pad(token_mask[:, :-1], (1, 0)).cummax(dim=-1).values
        starts = starts & token_mask & real_before
    return starts if bool(starts.any()) else None


def default_position_ids(padding_mask, cache_position, batch_size) -> torch.LongTensor:
    """[B, T] for the new tokens at `cache_position` [T]: without padding they count on from the cache; with padding
    each real token's position counts the real tokens before it (as generate() does), so a right-padded or holed
    row continues exactly. RoPE is relative, so for left padding this is the released math (which counts pads) to
    rounding."""
    if padding_mask is None:
        return cache_position.expand(batch_size, -1)
    return (padding_mask.long().cumsum(-1) - 1).clamp(min=0).index_select(1, cache_position)


def softmax_attention_mask(layout: TokenLayout, batch_size: int, attn_implementation: str | None):
    """The softmax layers' mask for the new tokens of `layout`, in the form the backend takes -> (mask, extra
    keyword arguments for the attention functions):

    - static cache: bool [B or 1, 1, T, max_cache_len] over its slots (`static_cache_attention_mask`);
    - flash backends: the 2-D padding mask, since they apply causality themselves; packed sequences they find from
      the position ids, which then go along;
    - otherwise bool [B, 1, T, P+T] (`causal_attention_mask`), or None when plain causal attention is exact.
    """
    if layout.static_len is not None:  # K/V slots [max_cache_len]; the new tokens at `cache_position`
        return static_cache_attention_mask(layout.padding_mask, layout.cache_position, layout.static_len), {}
    if (attn_implementation or "").startswith("flash"):
        packed = {"position_ids": layout.position_ids} if layout.sequence_starts is not None else {}
        return layout.padding_mask, packed
    query_len = layout.cache_position.shape[0]
    mask = causal_attention_mask(layout.padding_mask, layout.sequence_starts, batch_size, query_len, layout.past_len,
                                 layout.cache_position.device)
    return mask, {}


def causal_attention_mask(padding_mask, sequence_starts, batch_size, query_len, past_len, device):
    """bool [B, 1, T, P+T] (True = attend), or None when plain causal attention (the last query sees every key, so a
    chunk after cached tokens needs no mask) is exact. Causal, padded keys masked, and block-diagonal over packed
    sequences (`sequence_starts`, only without cached tokens).

    A padded query always sees itself, so no row is fully masked (that would give NaN, and NaN times the zeroed
    lightning value is still NaN).
    """
    if padding_mask is None and sequence_starts is None:  # causal, aligned to the last key: backends apply it
        return None
    q_pos = torch.arange(past_len, past_len + query_len, device=device)[:, None]
    k_pos = torch.arange(past_len + query_len, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None].expand(batch_size, 1, -1, -1)
    if sequence_starts is not None:
        sequence = sequence_starts.cumsum(-1)  # [B, T]: index of each token's packed sequence
        allowed = allowed & (sequence[:, None, :, None] == sequence[:, None, None, :])
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :]
    return allowed | (k_pos == q_pos)


def join_chunk_attentions(chunk_attentions: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-chunk attention weights (chunk c: one [B, H, T_c, P + end_c] tensor per softmax layer) -> one
    [B, H, T, P + T] tensor per layer, as an unchunked forward gives: the keys a chunk has not reached yet get
    weight 0 (causal), then the chunks' rows are stacked."""
    total_keys = chunk_attentions[-1][0].shape[-1] if chunk_attentions[-1] else 0
    return [
        torch.cat([F.pad(weights, (0, total_keys - weights.shape[-1])) for weights in per_chunk], dim=2)
        for per_chunk in zip(*chunk_attentions)
    ]


IMAGE_INPUTS = ("pixel_values", "image_sizes", "images")


def refuse_image_inputs(extra_inputs: dict) -> None:
    """Image inputs reaching the text-only model would be swallowed by `**kwargs` and ignored."""
    given = [name for name in IMAGE_INPUTS if extra_inputs.get(name) is not None]
    if given:
        raise ValueError(
            f"MiniMax-Text-01 is text-only and would ignore {', '.join(given)}. Use a MiniMax-VL-01 checkpoint with "
            "MiniMaxVL01ForConditionalGeneration for images, or drop the image inputs."
        )


def check_logits_to_keep(logits_to_keep, labels, num_tokens: int) -> None:
    """0 (every token), a positive count of last tokens, or a 1-D tensor of positions; with labels, every token."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.is_floating_point() or logits_to_keep.dim() != 1:
            raise TypeError("logits_to_keep as a tensor must be a 1-D integer tensor of token positions.")
    elif isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int):
        raise TypeError(f"logits_to_keep must be an int (0 = all tokens, N = the last N) or a 1-D tensor of "
                        f"positions, got {logits_to_keep!r}.")
    elif logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be 0 (all tokens) or a positive count of last tokens, got "
                         f"{logits_to_keep}.")
    keeps_all = isinstance(logits_to_keep, int) and (logits_to_keep == 0 or logits_to_keep >= num_tokens)
    if labels is not None and not keeps_all:
        raise ValueError("labels need the logits of every token; leave logits_to_keep at 0 when passing labels.")


def check_labels(labels, batch_size: int, num_tokens: int, vocab_size: int, ignore_index: int = -100) -> None:
    """labels: integer [batch, tokens] like input_ids, holding token ids or `ignore_index` (-100)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch tensor [batch, tokens], got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold token ids (torch.long), got {labels.dtype}. Convert with labels.long().")
    if tuple(labels.shape) != (batch_size, num_tokens):
        raise ValueError(f"labels must have the shape of input_ids ({batch_size}, {num_tokens}), got "
                         f"{tuple(labels.shape)}. Give one label per input token (the model shifts them itself), "
                         f"{ignore_index} where no loss is wanted.")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"labels hold {labels[bad][:4].tolist()}, outside the vocabulary 0..{vocab_size - 1}. Use "
                         f"token ids, and {ignore_index} for tokens without a loss.")


def causal_lm_loss(loss_function, logits, labels, vocab_size: int, **kwargs) -> torch.Tensor:
    """transformers' causal-LM loss, except that a batch with no token to predict (every shifted label ignored)
    gives a loss of 0 with zero gradients instead of NaN (0 / 0), so one fully masked batch cannot poison training."""
    ignore_index = kwargs.get("ignore_index", -100)
    targets = kwargs.get("shift_labels")
    targets = targets if targets is not None else labels[..., 1:]
    if not bool((targets != ignore_index).any()):  # (also when num_items_in_batch is 0: 0 / 0 again)
        return logits.sum() * 0.0
    return loss_function(logits, labels, vocab_size, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ChunkOutputs:
    """What one pass of the decoder stack returns: the final-normed hidden states [B, T_c, D] and, when requested,
    every layer's input plus the final output, the router logits [B * T_c, E] per layer, and the softmax layers'
    attention weights (when the backend computes them)."""

    hidden_states: torch.Tensor | None  # None: none of this chunk's tokens is kept
    all_hidden_states: list[torch.Tensor]
    router_logits: list[torch.Tensor]
    attentions: list[torch.Tensor]


class MiniMaxText01Model(MiniMaxText01PreTrainedModel):
    """The decoder stack without the LM head. Optional outputs, as in transformers' native models (each flag defaults
    to the config's `output_hidden_states` / `output_attentions` / `output_router_logits`; `return_dict=False`, or
    `config.return_dict = False`, gives `output.to_tuple()`, which leaves out the fields that are None):

    - `hidden_states`: num_hidden_layers + 1 tensors [B, T, D]: the embeddings, every layer's output, and the last
      one after the final norm (equal to `last_hidden_state`).
    - `attentions`: one tensor [B, H, T, P+T] per *softmax* layer, in layer order
      (`config.attn_type_list[i] == 1`): lightning layers have no attention matrix and are left out, as transformers'
      output recorder leaves out layers that return None. Only the eager backend computes the weights
      (`attn_implementation="eager"`); sdpa and flash warn and return none, as in transformers.
    - `router_logits`: num_hidden_layers tensors [B * T, num_local_experts], the router's logits before softmax.

    They are collected in the layer loop rather than by transformers' output-capturing hooks (`capture_outputs`),
    because a chunked prefill runs every layer once per chunk and the chunks' outputs are joined afterwards.
    """

    def __init__(self, config: MiniMaxText01Config):
        super().__init__(config)
        refuse_sliding_window(getattr(config, "sliding_window", None))  # set after the config was built
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(MiniMaxText01DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MiniMaxText01RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = MiniMaxText01RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: MiniMaxText01Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        cache: MiniMaxText01Cache | None = None,  # the name transformers >= 5.2x uses for past_key_values
        prefill_chunk_size: int | None = None,
        hidden_states_to_keep: int = 0,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        r"""
        prefill_chunk_size (`int`, *optional*): run prompts longer than this through the cache in chunks of this
            many tokens (default `config.prefill_chunk_size`); memory is then bounded by the chunk plus the cache.
            Not while autograd records: the prompt then runs whole (with a warning).
        hidden_states_to_keep (`int`, defaults to 0): return the last hidden state of only the last this many
            tokens (0 = all); with chunking, the others are never held at once.
        """
        output_attentions, output_hidden_states, output_router_logits = self.output_flags(
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        cache = self._validated_cache(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cache,
                                      prefill_chunk_size, kwargs)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        # Long prompts run in chunks of `prefill_chunk_size` tokens through the cache: activation memory is bounded
        # by the chunk (each chunk is embedded on its own), total memory grows only with the K/V cache.
        chunk_length = self._chunk_length(prefill_chunk_size, T)

        layout = token_layout(attention_mask, position_ids, cache, B, T, device, chunked=chunk_length < T)
        if cache is not None or use_cache or chunk_length < T:  # chunks need a cache even when none is returned
            cache = self._prepared_cache(cache, layout, T, reserve=chunk_length < T)

        chunks = self._forward_chunks(input_ids, inputs_embeds, layout, cache, chunk_length, hidden_states_to_keep,
                                      output_hidden_states, output_router_logits, output_attentions, **kwargs)
        return MoeModelOutputWithPast(
            last_hidden_state=chunks.hidden_states,
            **{CACHE_FIELD: cache if use_cache else None},
            hidden_states=tuple(chunks.all_hidden_states) if output_hidden_states else None,
            attentions=tuple(chunks.attentions) if output_attentions else None,
            router_logits=tuple(chunks.router_logits) if output_router_logits else None,
        )

    def check_inputs(
        self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cache, prefill_chunk_size=None,
        extra_inputs=None,
    ) -> None:
        """Refuse inputs that would fail obscurely inside torch or quietly give wrong numbers. `extra_inputs`: the
        forward's other keyword arguments (image inputs there would be ignored by this text-only model).

        The value checks (token ids inside the vocabulary, a 0/1 attention mask without empty rows, positions that
        continue the cache) cost one host sync together; they are skipped while compiling or capturing a CUDA graph.
        """
        def check_integer_tensor(name, value, shape_text):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch tensor {shape_text}, got {type(value).__name__}. Use "
                                f"the tokenizer with return_tensors='pt', or torch.tensor([...]).")
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise TypeError(f"`{name}` must hold integers (torch.long), got {value.dtype}. Convert with "
                                f"`{name}.long()`.")

        check_prefill_chunk_size(prefill_chunk_size)
        refuse_image_inputs(extra_inputs or {})
        if input_ids is not None:
            check_integer_tensor("input_ids", input_ids, "[batch, tokens]")
            if input_ids.dim() != 2:
                fix = " Add the batch dimension: input_ids[None]." if input_ids.dim() == 1 else ""
                raise ValueError(f"`input_ids` must be 2-D [batch, tokens], got shape {tuple(input_ids.shape)}.{fix}")
        if inputs_embeds is not None:
            if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
                raise TypeError("`inputs_embeds` must be a floating-point tensor [batch, tokens, hidden_size].")
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"`inputs_embeds` must have shape [batch, tokens, {self.config.hidden_size}], got "
                                 f"{tuple(inputs_embeds.shape)}.")
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is None:
            return  # reported by the caller
        B, T = tokens.shape[:2]
        if position_ids is not None:
            check_integer_tensor("position_ids", position_ids, "[batch, tokens]")
            if position_ids.dim() != 2 or position_ids.shape[0] not in (1, B) or position_ids.shape[1] != T:
                raise ValueError(f"`position_ids` must have shape [{B}, {T}] (or [1, {T}]) like the input, got "
                                 f"{tuple(position_ids.shape)}.")
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise TypeError(
                f"`attention_mask` must be a torch tensor [batch, tokens], got {type(attention_mask).__name__}."
            )
        capturing = tokens.is_cuda and torch.cuda.is_current_stream_capturing()
        if torch.compiler.is_compiling() or capturing:
            return

        cache = past_key_values if past_key_values is not None else cache
        past_len = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        mask = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else None
        vocab = self.config.vocab_size
        bad_ids = ((input_ids < 0) | (input_ids >= vocab)).any() if input_ids is not None else None
        not_binary = ((attention_mask != 0) & (attention_mask != 1)).any() if mask is not None else None
        empty_rows = ~mask.any(-1) if mask is not None else None
        restarts = None
        if position_ids is not None and past_len > 0:  # the first new token must come after the cached ones
            cached = mask[:, :past_len].sum(-1) if mask is not None and mask.shape[-1] > past_len else past_len
            cached = torch.as_tensor(cached, device=position_ids.device).expand(B)  # real cached tokens per row
            restarts = position_ids[:, 0] < cached
        flags = [f.any().to(tokens.device) if f is not None else tokens.new_zeros((), dtype=torch.bool)
                 for f in (bad_ids, not_binary, empty_rows, restarts)]
        bad_ids, not_binary, empty_rows_found, restart_found = torch.stack(flags).tolist()  # the one host sync
        if not_binary:
            raise ValueError(
                f"`attention_mask` must hold 1 for real tokens and 0 for padding, found the values "
                f"{attention_mask.unique()[:6].tolist()}. Pass the tokenizer's mask, not an additive (0 / -inf) one."
            )
        if bad_ids:
            raise ValueError(
                f"`input_ids` hold token ids outside the vocabulary 0..{vocab - 1} (smallest {int(input_ids.min())}, "
                f"largest {int(input_ids.max())}). Use the tokenizer of this checkpoint, and pad with a real token id "
                "(not -100 or -1, which are for labels)."
            )
        if empty_rows_found:
            rows = empty_rows.nonzero().flatten().tolist()
            raise ValueError(
                f"Rows {rows} of `attention_mask` have no real token: an empty prompt in the batch. Drop empty "
                "prompts, or give each at least one token."
            )
        if restart_found:
            row = int(restarts.nonzero()[0])
            raise ValueError(
                f"`position_ids` restart while the cache holds earlier tokens: row {row} starts at position "
                f"{int(position_ids[min(row, position_ids.shape[0] - 1), 0])} with {int(cached[row])} tokens cached. "
                "Continue the positions after the cached tokens (or omit position_ids), or start a new sequence with "
                "past_key_values=None."
            )

    # -- the steps of the forward, in order -----------------------------------------------------------------------

    def _validated_cache(
        self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cache, prefill_chunk_size,
        extra_inputs,
    ):
        """Every check of the inputs that does not need the token layout; -> the cache passed (under either name)
        or None."""
        self.check_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, cache, prefill_chunk_size,
            extra_inputs,
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if cache is not None and past_key_values is not None:
            raise ValueError("Pass the cache as `past_key_values` or as `cache`, not both.")
        cache = past_key_values if past_key_values is not None else cache
        if cache is not None and not isinstance(cache, MiniMaxText01Cache):
            raise TypeError(
                f"MiniMax-Text-01 needs a MiniMaxText01Cache (lightning states + K/V), got {type(cache).__name__}. "
                "Pass `past_key_values=None` to let the model create it."
            )
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if T == 0:
            raise ValueError("Empty input: the sequence has no tokens.")
        if isinstance(cache, MiniMaxText01StaticCache):
            if (self.config._attn_implementation or "").startswith("flash"):
                raise ValueError(
                    "The static cache needs a masked attention backend over its max_cache_len slots: load the model "
                    "with attn_implementation='sdpa' or 'eager', or use the default dynamic cache with flash attention."
                )
            cache.check_inputs(B, T)
        else:
            past_len = cache.get_seq_length() if cache is not None else 0
            if past_len + T > self.config.max_position_embeddings:
                logger.warning_once(
                    f"Sequence length {past_len + T} exceeds max_position_embeddings "
                    f"({self.config.max_position_embeddings}); the model runs, but quality beyond the trained context "
                    "is not guaranteed."
                )
        if cache is not None:
            cache.check_continuation(has_attention_mask=attention_mask is not None)
        return cache

    def _chunk_length(self, prefill_chunk_size: int | None, new_tokens: int) -> int:
        check_prefill_chunk_size(self.config.prefill_chunk_size)  # the argument was checked; this may be set later
        chunk_length = prefill_chunk_size or self.config.prefill_chunk_size or new_tokens
        if chunk_length < new_tokens and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            # Chunks write the cache in place, which autograd cannot backpropagate through, and autograd keeps every
            # chunk's activations anyway: the whole prompt at once gives the same result and gradients.
            logger.warning_once(
                "prefill_chunk_size is not applied while autograd records (training, or a forward outside "
                "torch.no_grad()): the prompt runs whole. Run inference under torch.no_grad() to feed it in chunks."
            )
            return new_tokens
        return chunk_length

    def _prepared_cache(self, cache, layout: TokenLayout, new_tokens: int, reserve: bool) -> MiniMaxText01Cache:
        """The cache to run through (created when None), with room reserved for a chunked prompt and the layout
        the new tokens leave behind recorded (padding holes, packed rows: what a later forward must know)."""
        cache = cache if cache is not None else MiniMaxText01Cache(self.config)
        if reserve:
            cache.reserve(layout.past_len + new_tokens)
        if new_tokens > 1 and not torch.compiler.is_compiling():  # (a host sync: prompts only)
            mask = layout.padding_mask
            filled = mask[:, : int(layout.past_len) + new_tokens] if mask is not None else None
            cache.record_layout(filled, packed=layout.sequence_starts is not None)
        return cache

    def _forward_chunks(self, input_ids, inputs_embeds, layout, cache, chunk_length, hidden_states_to_keep,
                        output_hidden_states, output_router_logits, output_attentions, **kwargs) -> ChunkOutputs:
        """The decoder stack on the new tokens, `chunk_length` at a time, and the chunks' outputs joined as one
        forward over all of them gives them (hidden states: only the last `hidden_states_to_keep`, if > 0)."""
        T = layout.cache_position.shape[0]
        keep_from = T - hidden_states_to_keep if 0 < hidden_states_to_keep < T else 0
        parts = []
        for start in range(0, T, chunk_length):
            end = min(start + chunk_length, T)
            if inputs_embeds is not None:
                embeds = inputs_embeds[:, start:end]
            else:  # each chunk embedded on its own
                embeds = self.embed_tokens(input_ids[:, start:end])
            out = self._forward_chunk(embeds, layout.chunk(start, end), cache, output_hidden_states,
                                      output_router_logits, output_attentions, **kwargs)
            if end <= keep_from:  # only the kept tail of the prompt outlives its chunk
                out.hidden_states = None
            elif start < keep_from:
                out.hidden_states = out.hidden_states[:, keep_from - start :]
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        B = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        return ChunkOutputs(
            hidden_states=torch.cat([p.hidden_states for p in parts if p.hidden_states is not None], dim=1),
            all_hidden_states=[torch.cat(states, dim=1) for states in zip(*(p.all_hidden_states for p in parts))],
            router_logits=[  # [B * T, E] per layer, batch-major like an unchunked forward
                torch.cat([logits.view(B, -1, logits.shape[-1]) for logits in per_chunk], dim=1).flatten(0, 1)
                for per_chunk in zip(*(p.router_logits for p in parts))
            ],
            attentions=join_chunk_attentions([p.attentions for p in parts]),
        )

    def _forward_chunk(self, inputs_embeds, layout: TokenLayout, cache, output_hidden_states, output_router_logits,
                       output_attentions, **kwargs) -> ChunkOutputs:
        """The decoder stack on T consecutive new tokens [B, T, D] laid out as `layout`."""
        B, T, _ = inputs_embeds.shape
        rotary = self.rotary_emb(layout.position_ids)
        softmax_mask, backend_kwargs = softmax_attention_mask(layout, B, self.config._attn_implementation)
        kwargs = {**kwargs, **backend_kwargs}

        hidden_states = inputs_embeds
        all_hidden_states, all_router_logits, all_attentions = [], [], []
        for layer in self.layers:
            if not isinstance(layer, MiniMaxText01DecoderLayer):  # pipeline parallel: another stage runs this layer
                continue
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, router_logits, attn_weights = layer(
                hidden_states, rotary, softmax_mask, layout.token_mask, layout.sequence_starts, cache=cache,
                output_attentions=output_attentions, **kwargs,
            )  # fmt: skip
            if output_router_logits:
                all_router_logits.append(router_logits)
            if output_attentions and attn_weights is not None:  # kept only on request: [B, H, T, P+T] each
                all_attentions.append(attn_weights)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        if cache is not None:
            cache.seen_tokens += T
        return ChunkOutputs(hidden_states, all_hidden_states, all_router_logits, all_attentions)


class MiniMaxText01ForCausalLM(MiniMaxGenerationMixin, MiniMaxText01PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # split by vocabulary, full logits on every rank
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: MiniMaxText01Config):
        super().__init__(config)
        self.model = MiniMaxText01Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: MiniMaxText01Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: MiniMaxText01Cache | None = None,
        output_attentions: bool | None = None,
        prefill_chunk_size: int | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""Logits (fp32) over the vocabulary; the optional outputs are the base model's (see MiniMaxText01Model).

        prefill_chunk_size (`int`, *optional*): run prompts longer than this through the cache in chunks of this
            many tokens (default `config.prefill_chunk_size`).
        labels (`torch.LongTensor` [batch, tokens], *optional*): the input ids (shifted inside), -100 where no loss is
            wanted. A batch with no token left to predict gets a loss of 0 (zero gradients), not NaN.
        """
        (output_router_logits,) = self.output_flags(output_router_logits=output_router_logits)  # the loss needs it
        tokens = input_ids if input_ids is not None else inputs_embeds
        num_tokens = tokens.shape[1] if isinstance(tokens, torch.Tensor) and tokens.dim() >= 2 else 0
        check_logits_to_keep(logits_to_keep, labels, num_tokens)
        if labels is not None and num_tokens:
            check_labels(labels, tokens.shape[0], num_tokens, self.config.vocab_size, kwargs.get("ignore_index", -100))
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            cache=cache,
            prefill_chunk_size=prefill_chunk_size,
            hidden_states_to_keep=logits_to_keep if isinstance(logits_to_keep, int) else 0,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = as_dtype(self.lm_head(hidden_states[:, keep, :]), torch.float32)  # fp32 logits, as released

        loss = aux_loss = None
        if labels is not None:
            # the config's vocabulary size, which resize_token_embeddings keeps up to date
            loss = causal_lm_loss(self.loss_function, logits, labels, self.config.vocab_size, **kwargs)
        if output_router_logits:
            aux_loss = load_balancing_loss_func(
                outputs.router_logits, self.config.num_local_experts, self.config.num_experts_per_tok, attention_mask
            )
            if labels is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)

        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )


__all__ = ["MiniMaxText01ForCausalLM", "MiniMaxText01Model", "MiniMaxText01PreTrainedModel"]
