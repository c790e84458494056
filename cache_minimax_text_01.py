"""The hybrid caches of MiniMax-Text-01, built from transformers' own cache layers.

Every lightning layer holds one fp32 state [B, H, d, d] in a `LightningStateLayer`, transformers'
`LinearAttentionLayer` (its `recurrent_states[0]`; no conv state); every softmax layer holds K/V in a transformers
`DynamicLayer` (`GrowingKVLayer`) or `StaticLayer` (`StaticKVLayer`). So generic cache code (`is_linear`,
`get_mask_sizes`, offloading, beam reorder, `generate()` continuation) sees a standard cache.

- `MiniMaxText01Cache`: the default, dynamic cache. K/V grow, states are adopted as computed, the token count is
  a Python int. Not compileable (transformers' `generate()` then never tries to compile the forward).
- `MiniMaxText01StaticCache`: for `torch.compile` and CUDA graphs. K/V preallocated to `max_cache_len`, states of
  fixed shape written in place, the token count a device tensor; every buffer keeps its address. The softmax
  layers see all `max_cache_len` slots: `static_cache_attention_mask` excludes the unfilled ones.
  `generate(cache_implementation="static")` builds it (see `MiniMaxGenerationMixin`).

The model talks to both through `get_lightning_state` / `set_lightning_state` / `update` / `get_seq_length` and
increments `seen_tokens` by the number of new tokens after each forward (an int, or in place a device tensor).
Lightning states are fp32 whatever the model dtype: they are never cast with the model.
"""

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionLayer, StaticLayer
from transformers.modeling_outputs import MoeModelOutputWithPast

from .configuration_minimax_text_01 import SOFTMAX, MiniMaxText01Config

# transformers >= 5.2x names the cache `cache` (outputs, forward kwargs, generate's model_kwargs); 5.17 calls it
# `past_key_values`.
CACHE_FIELD = "cache" if "cache" in MoeModelOutputWithPast.__dataclass_fields__ else "past_key_values"


class GrowingKVLayer(DynamicLayer):
    """transformers' DynamicLayer with K/V kept in buffers [B, H_kv, capacity, d] that grow by a quarter (at least
    64 tokens) when full: a decode step writes one token instead of copying the whole cache with torch.cat, and the
    amortised copy cost per token is O(1). The first fill is exact, so a prefill allocates no spare room.

    `keys` / `values` are views of the filled part. Inherited methods that replace them (beam-search reorder, batch
    select / repeat, crop, offload) keep working: the next update sees tensors it did not hand out and adopts them.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None  # what `keys` / `values` were set to last
        self.reserved = 0  # tokens to make room for at the next allocation (a chunked prefill's whole prompt)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new_length = length + key_states.shape[-2]
        owned = self._views is not None and self._views[0] is self.keys and self._views[1] is self.values
        if not owned or new_length > self._buffers[0].shape[-2]:
            capacity = new_length if length == 0 else max(new_length, length + max(length // 4, 64))
            capacity = max(capacity, self.reserved)
            self._buffers = tuple(
                self._allocate(old, new, length, capacity)
                for old, new in ((self.keys, key_states), (self.values, value_states))
            )
        for buffer, new in zip(self._buffers, (key_states, value_states)):
            buffer[:, :, length:new_length].copy_(new)
        self.keys, self.values = (buffer[:, :, :new_length] for buffer in self._buffers)
        self._views = (self.keys, self.values)
        return self.keys, self.values

    @staticmethod
    def _allocate(old: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        """Empty buffer [B, H_kv, capacity, d] shaped like `new`, holding the `length` cached tokens of `old`."""
        buffer = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
        if length:
            buffer[:, :, :length].copy_(old)
        return buffer


class StaticKVLayer(StaticLayer):
    """transformers' StaticLayer (K/V [B, H_kv, max_cache_len, d], written at the running position) whose beam
    reorder writes in place, so the buffers keep the address a compiled graph or CUDA graph was recorded with."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            for buffer in (self.keys, self.values):
                buffer.copy_(buffer.index_select(0, beam_idx.to(buffer.device)))


class LightningStateLayer(LinearAttentionLayer):
    """transformers' linear-attention cache layer holding one recurrent state: the fp32 lightning state
    [B, H, d, d] (no conv state). `in_place=False` (dynamic cache): each new state is adopted, no copy.
    `in_place=True` (static cache): written into one fixed buffer, marked as a static address for CUDA graphs."""

    def __init__(self, in_place: bool = False):
        super().__init__(number_of_states=1)
        self.in_place = in_place

    @property
    def state(self) -> torch.Tensor | None:
        return self.recurrent_states[0] if self.has_previous_state[0] else None

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        if recurrent_states.dtype != torch.float32 and recurrent_states.dtype != torch.float64:
            raise TypeError(f"Lightning states are kept in fp32 (or fp64), got {recurrent_states.dtype}.")
        self.device = recurrent_states.device
        if self.in_place:
            super().update_recurrent_state(recurrent_states, state_idx)  # allocates once, then copies in place
        else:
            self.recurrent_states[0] = recurrent_states
            self.is_recurrent_states_initialized[0] = True
        self.has_previous_state[0] = True
        return self.recurrent_states[0]

    def allocate(self, batch_size: int, num_heads: int, head_dim: int, device) -> None:
        """Early allocation of the static state (zeros; `state` stays None until the first update)."""
        zeros = torch.zeros(batch_size, num_heads, head_dim, head_dim, dtype=torch.float32, device=device)
        self.lazy_initialization(recurrent_states=zeros)
        self.device = torch.device(device)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_recurrent_states_initialized[0]:
            state = self.recurrent_states[0]
            reordered = state.index_select(0, beam_idx.to(state.device))
            if self.in_place:
                state.copy_(reordered)
            else:
                self.recurrent_states[0] = reordered

    # transformers' linear-attention layer has no batch repeat / select (used e.g. by contrastive search)
    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = self.recurrent_states[0].repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = self.recurrent_states[0][indices]

    def reset(self) -> None:
        if self.in_place:
            super().reset()  # zeroes the buffer, keeps its address
        else:
            self.__init__()


class MiniMaxText01Cache(Cache):
    """The dynamic hybrid cache: `LightningStateLayer` per lightning layer, `GrowingKVLayer` (a transformers
    `DynamicLayer`) per softmax layer.

    Built by the model itself when `use_cache=True` (transformers' `generate()` builds no default cache for
    classes named MiniMax). Beam search reorders every layer, states included. Cropping is impossible: a
    lightning state cannot be rolled back (the model is declared stateful, so assisted generation is refused).
    """

    is_croppable = False
    _continuation_problem: str | None = None  # why the next forward cannot continue exactly, if so
    has_padding_holes = False  # some row has pads after real tokens (right padding or holes)

    def __init__(self, config: MiniMaxText01Config, **kwargs):
        layers = [GrowingKVLayer() if t == SOFTMAX else LightningStateLayer() for t in config.attn_type_list]
        super().__init__(layers=layers, **kwargs)
        self.seen_tokens = 0  # the model adds the new tokens after each forward

    def record_layout(self, padding_mask: torch.Tensor | None, packed: bool) -> None:
        """Note what the tokens being added leave behind: pads after real tokens, which later tokens must see
        through the attention mask, or packed sequences, whose K/V no later token may attend to."""
        if packed:
            self._continuation_problem = (
                "This cache was filled from packed sequences; it holds K/V of several sequences per row and cannot be "
                "continued. Build the cache from one sequence per row (padding is fine)."
            )
        elif padding_mask is not None and not self.has_padding_holes:
            seen_real = padding_mask.cummax(dim=-1).values
            self.has_padding_holes = bool((seen_real[:, :-1] & ~padding_mask[:, 1:]).any())

    def forget_layout(self) -> None:
        self._continuation_problem, self.has_padding_holes = None, False

    def check_continuation(self, has_attention_mask: bool) -> None:
        """Raise where continuing from this cache could not be exact (called before the next forward)."""
        if self._continuation_problem is not None:
            raise ValueError(self._continuation_problem)
        if self.has_padding_holes and not has_attention_mask:
            raise ValueError(
                "This cache holds rows with pads after real tokens (right padding): pass the attention_mask covering "
                "the cached and the new tokens, so that new tokens skip the pads and take positions after each row's "
                "last real token."
            )


    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reserve(self, total_tokens: int) -> None:
        """Make room for `total_tokens` cached tokens at once: a prompt fed in chunks then never regrows (and never
        copies) its K/V buffers."""
        for layer in self.layers:
            if isinstance(layer, GrowingKVLayer):
                layer.reserved = max(layer.reserved, total_tokens)

    def get_lightning_state(self, layer_idx: int) -> torch.Tensor | None:
        return self.layers[layer_idx].state

    def set_lightning_state(self, layer_idx: int, state: torch.Tensor) -> None:
        self.layers[layer_idx].update_recurrent_state(state)

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0
        self.forget_layout()

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot be cropped: a lightning-attention state has no rollback."
        )


class MiniMaxText01StaticCache(MiniMaxText01Cache):
    """The static hybrid cache for `torch.compile` (fullgraph) and CUDA graphs: `StaticKVLayer` (K/V
    [B, H_kv, max_cache_len, d]) per softmax layer, in-place fp32 `LightningStateLayer` per lightning layer, and
    `seen_tokens` a 0-dim int64 device tensor, so a decode step has fixed shapes and addresses and no host sync.

    Arguments follow transformers' StaticCache (`config`, `max_cache_len`, `offloading`), plus `max_batch_size`,
    `device` and `dtype` (the K/V dtype): with `max_batch_size` and `device` every buffer is allocated here;
    without them on the first forward, from its inputs (heads as the model computes them, e.g. local heads under
    tensor parallelism). A forward past `max_cache_len` tokens raises in eager mode (inside a compiled graph the
    check cannot run: size the cache for prompt + new tokens). Batch changes (`batch_repeat_interleave`,
    `batch_select_indices`) are not supported: build a cache per batch size.
    """

    def __init__(
        self,
        config: MiniMaxText01Config,
        max_cache_len: int,
        max_batch_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offloading: bool = False,
        **kwargs,
    ):
        config = config.get_text_config(decoder=True)
        layers = [
            StaticKVLayer(max_cache_len) if t == SOFTMAX else LightningStateLayer(in_place=True)
            for t in config.attn_type_list
        ]
        Cache.__init__(self, layers=layers, offloading=offloading)
        self._max_cache_len, self._max_batch_size = max_cache_len, max_batch_size
        self.seen_tokens = torch.zeros((), dtype=torch.long, device=device)
        torch._dynamo.mark_static_address(self.seen_tokens)
        if max_batch_size is not None and device is not None:
            self._allocate(config, max_batch_size, torch.device(device), dtype or torch.get_default_dtype())

    def _allocate(self, config, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        kv = torch.empty(batch_size, config.num_key_value_heads, 0, config.head_dim, dtype=dtype, device=device)
        for layer in self.layers:
            if isinstance(layer, StaticKVLayer):
                layer.lazy_initialization(kv, kv)
            else:
                layer.allocate(batch_size, config.num_attention_heads, config.head_dim, device)

    # properties: transformers 5.17's Cache defines both names as deprecated read-only properties
    @property
    def max_cache_len(self) -> int:
        return self._max_cache_len

    @property
    def max_batch_size(self) -> int | None:
        return self._max_batch_size

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor:
        """Tokens cached so far, as a 0-dim device tensor (reading it as a Python int is a host sync)."""
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_cache_len, 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self._follow_device(key_states.device)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def set_lightning_state(self, layer_idx: int, state: torch.Tensor) -> None:
        self._follow_device(state.device)
        super().set_lightning_state(layer_idx, state)

    def _follow_device(self, device: torch.device) -> None:
        """A cache built without a device moves its token count to the model's device on the first forward."""
        if self.seen_tokens.device != device:
            self.seen_tokens = self.seen_tokens.to(device)
            if not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(self.seen_tokens)

    def check_inputs(self, batch_size: int, new_tokens: int) -> None:
        """Raise before a forward with another batch size (the first forward fixes it when the cache was built
        without one), or one that would overflow the K/V buffers (eager only: reading the count is a host sync)."""
        if self._max_batch_size is None:
            self._max_batch_size = batch_size
        if batch_size != self.max_batch_size:
            raise ValueError(
                f"This static cache holds batch {self.max_batch_size}, got {batch_size} rows. Build one with "
                "max_batch_size equal to the batch (times num_beams / num_return_sequences)."
            )
        if not torch.compiler.is_compiling() and int(self.seen_tokens) + new_tokens > self.max_cache_len:
            raise ValueError(
                f"The static cache holds {self.max_cache_len} tokens; {int(self.seen_tokens)} are cached and "
                f"{new_tokens} more were passed. Build it with a larger max_cache_len."
            )

    def reset(self) -> None:
        Cache.reset(self)
        self.seen_tokens.zero_()
        self.forget_layout()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("A static cache has a fixed batch size: build one per batch size.")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("A static cache has a fixed batch size: build one per batch size.")


def static_cache_attention_mask(padding_mask, cache_position, max_cache_len):
    """bool [B or 1, 1, T, max_cache_len] (True = attend) for the softmax layers over a static cache's K/V slots.

    `cache_position` [T] (device tensor) holds the slots of the T new tokens; slot j is visible to query i when
    j <= cache_position[i] (causal, and every unfilled slot lies beyond), and, with `padding_mask` bool
    [B, max_cache_len], when slot j is not a pad. As in the modeling file's `causal_attention_mask`, a padded query
    always sees itself. Fixed shapes, no host sync: the same graph serves every decode step.
    """
    slots = torch.arange(max_cache_len, device=cache_position.device)
    allowed = (slots[None, :] <= cache_position[:, None])[None, None]  # [1, 1, T, L]
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :]
    return allowed | (slots[None, :] == cache_position[:, None])


def static_cache_padding_mask(attention_mask, batch_size: int, max_cache_len: int):
    """A 2-D attention mask for a static cache -> bool [B, max_cache_len] (slots beyond the mask count as pads).

    Accepts the fixed-length mask that `generate()` passes (see `MiniMaxGenerationMixin.create_masks_for_generate`)
    or the usual [B, cached + new] mask (padded here: its length changes every step, so a compiled manual loop
    should pass the fixed-length one)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] > max_cache_len:
        raise ValueError(
            f"With a static cache, attention_mask must have shape (batch, up to max_cache_len) = ({batch_size}, "
            f"<= {max_cache_len}), got {tuple(attention_mask.shape)}."
        )
    return F.pad(attention_mask.bool(), (0, max_cache_len - attention_mask.shape[1]), value=False)


def check_prefill_chunk_size(value) -> None:
    """None (the config's default) or a positive token count; 0, negatives, floats and bools are refused."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"prefill_chunk_size must be an int token count or None, got {value!r} "
                        f"({type(value).__name__}).")
    if value <= 0:
        raise ValueError(f"prefill_chunk_size must be a positive token count, got {value}. Pass None for the "
                         "config's default (no chunking unless config.prefill_chunk_size is set).")


class MiniMaxGenerationMixin:
    """`generate()` hooks for the hybrid caches (inherited by the text and VL models before GenerationMixin).

    transformers builds no cache for classes named MiniMax (`_supports_default_dynamic_cache` is False), so the
    model builds the dynamic one itself; for `cache_implementation="static"` this builds `MiniMaxText01StaticCache`
    sized for the whole generation, and hands the compiled forward a fixed-length 2-D mask.
    """

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
    ):
        check_prefill_chunk_size(getattr(generation_config, "prefill_chunk_size", None))
        wants_cache = generation_config.use_cache is not False and model_kwargs.get(CACHE_FIELD) is None
        text_config = self.config.get_text_config(decoder=True)
        if wants_cache and generation_config.cache_implementation == "static":
            max_cache_len = max(max_cache_length, getattr(generation_config, "max_cache_len", None) or 0)
            rows = max(generation_config.num_beams, generation_config.num_return_sequences) * batch_size
            model_kwargs[CACHE_FIELD] = MiniMaxText01StaticCache(
                text_config, max_cache_len=max_cache_len, max_batch_size=rows, device=self.device, dtype=self.dtype
            )
            return
        if wants_cache and getattr(generation_config, "prefill_chunk_size", None):
            # transformers' chunked prefill feeds the prompt through a cache it must find before the first chunk
            model_kwargs[CACHE_FIELD] = MiniMaxText01Cache(text_config)
            return
        return super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )

    def prepare_inputs_for_generation(self, *args, inputs_embeds=None, **kwargs):
        """generate() continues positions by one from each row's last position, pads included; after a right-padded
        prompt (or one that ends in the pad id, which transformers then masks) that skips the row's real tokens, so
        there the model derives the positions from the attention mask instead. (`inputs_embeds` is named: generate()
        reads this signature to decide whether the model accepts embeddings as the prompt.)"""
        inputs = super().prepare_inputs_for_generation(*args, inputs_embeds=inputs_embeds, **kwargs)
        if getattr(inputs.get(CACHE_FIELD), "has_padding_holes", False):
            inputs["position_ids"] = None
        return inputs

    def create_masks_for_generate(self, attention_mask=None, cache=None, past_key_values=None, **kwargs):
        """Called by `prepare_inputs_for_generation` for compileable caches instead of transformers' 4-D mask
        builder: the 2-D mask padded to max_cache_len, so every decode step has the same input shapes.
        (transformers 5.17 passes the cache as `past_key_values`.)"""
        cache = cache if cache is not None else past_key_values
        if attention_mask is None or not isinstance(cache, MiniMaxText01StaticCache):
            return attention_mask
        return F.pad(attention_mask, (0, cache.max_cache_len - attention_mask.shape[1]), value=0)

