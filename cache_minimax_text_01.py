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
from .lightning_attention import lightning_state_after

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
        if torch.compiler.is_compiling():
            # torch.compile(model.forward) with this dynamic cache: writing into a buffer that `keys` views makes
            # aliased, mutated graph inputs of growing size, which inductor cannot compile; transformers' torch.cat
            # can (the next eager update adopts the result)
            return super().update(key_states, value_states, *args, **kwargs)
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

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `tokens_to_remove` (a negative count, as transformers passes it) tokens: the views shrink,
        the buffer stays, so the next token is written in place (speculative decoding crops every round)."""
        owned = self._views is not None and self._views[0] is self.keys and self._views[1] is self.values
        super().crop(tokens_to_remove)
        if owned and tokens_to_remove != 0:
            length = self.keys.shape[-2]
            self.keys, self.values = (buffer[:, :, :length] for buffer in self._buffers)
            self._views = (self.keys, self.values)

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


# While recording (speculative decoding), a forward records at least its last this many tokens, so a crop may
# remove up to this many (or `recurrent_states_to_keep`, if larger) after a prompt; short forwards record all.
RECORDED_TOKENS_MIN = 256


class LightningStateLayer(LinearAttentionLayer):
    """transformers' linear-attention cache layer holding one recurrent state: the fp32 lightning state
    [B, H, d, d] (no conv state). `in_place=False` (dynamic cache): each new state is adopted, no copy.
    `in_place=True` (static cache): written into one fixed buffer, marked as a static address for CUDA graphs."""

    def __init__(self, in_place: bool = False):
        super().__init__(number_of_states=1)
        self.in_place = in_place
        # Rollback (speculative decoding), while past recording is active: the state before the recorded tokens,
        # and each recorded forward's (k, v [B, H, T, d], log_decay [B, T, H]). A crop replays the kept ones.
        self.state_before_record: torch.Tensor | None = None
        self.recorded_tokens: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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

    # -- rollback: transformers' past recording (`activate_past_recording`, then `crop`) --------------------------

    @property
    def is_croppable(self) -> bool:
        """A crop can restore the state only while the layer records its tokens (dynamic cache)."""
        return self.record_past and not self.in_place

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None) -> None:
        if self.in_place:
            raise NotImplementedError(
                "The static MiniMax cache cannot roll back its lightning states (speculative decoding): use the default "
                "dynamic cache (no cache_implementation) with assistant_model= or prompt_lookup_num_tokens=."
            )
        self.record_past, self.recurrent_states_to_keep = True, recurrent_states_to_keep
        self.forget_record()

    @property
    def longest_record(self) -> int:
        """The most tokens a crop may remove: RECORDED_TOKENS_MIN, or `recurrent_states_to_keep` if larger."""
        return max(RECORDED_TOKENS_MIN, self.recurrent_states_to_keep or 0)

    @property
    def recorded_length(self) -> int:
        return sum(k.shape[2] for k, _, _ in self.recorded_tokens)

    def tokens_to_record(self, new_tokens: int) -> int:
        """How many of a forward's last tokens to record: all of a short forward (a verification chunk, a draft
        step), the last `longest_record` of a prompt."""
        return min(new_tokens, self.longest_record) if self.record_past else 0

    def record(self, state_before: torch.Tensor | None, k, v, log_decay, whole_forward: bool) -> None:
        """Note the last tokens of a forward (called before its state is set): their (k, v [B, H, T, d], log_decay
        [B, T, H]) and the state before them. A forward whose earlier tokens go unrecorded (`whole_forward` False)
        restarts the record: a crop cannot reach past them. So does a record that would outgrow the most a crop may
        remove (decoding on without crops keeps memory bounded)."""
        continues = whole_forward and self.recorded_tokens and state_before is self.state
        if not continues or self.recorded_length + k.shape[2] > self.longest_record:
            self.state_before_record, self.recorded_tokens = state_before, []
        self.recorded_tokens.append((k, v, log_decay))

    def forget_record(self) -> None:
        self.state_before_record, self.recorded_tokens = None, []

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens: the state becomes the one after the kept recorded tokens,
        replayed from the state before the record (`lightning_state_after`). Ends the record (crop(0) too)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the negative number of tokens to remove, got {tokens_to_remove}.")
        remove = -tokens_to_remove
        if remove and not self.record_past:
            raise RuntimeError(
                "This lightning-attention layer records no tokens, so it cannot be rolled back: call "
                "`cache.activate_past_recording()` before the forward whose tokens a crop may remove."
            )
        if remove:
            recorded = self.recorded_length
            if remove > recorded:
                raise ValueError(
                    f"Cannot remove {remove} tokens: the lightning state can roll back only the {recorded} tokens "
                    "recorded since the last crop (the last ones of a long prompt, or `recurrent_states_to_keep`)."
                )
            k, v, log_decay = (torch.cat(parts, dim=dim) for parts, dim in zip(zip(*self.recorded_tokens), (2, 2, 1)))
            keep = recorded - remove
            self.update_recurrent_state(
                lightning_state_after(self.state_before_record, k[:, :, :keep], v[:, :, :keep], log_decay[:, :keep])
            )
        self.forget_record()

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
        self.forget_record()

    # transformers' linear-attention layer has no batch repeat / select (used e.g. by contrastive search)
    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = self.recurrent_states[0].repeat_interleave(repeats, dim=0)
        self.forget_record()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = self.recurrent_states[0][indices]
        self.forget_record()

    def reset(self) -> None:
        if self.in_place:
            super().reset()  # zeroes the buffer, keeps its address
        else:
            self.__init__()
        self.forget_record()


class MiniMaxText01Cache(Cache):
    """The dynamic hybrid cache: `LightningStateLayer` per lightning layer, `GrowingKVLayer` (a transformers
    `DynamicLayer`) per softmax layer.

    Built by the model itself when `use_cache=True`, or by `generate()` through `MiniMaxGenerationMixin`
    (transformers' `generate()` builds no default cache for classes named MiniMax). Beam search reorders every
    layer, states included. Speculative decoding (assisted generation, prompt lookup) rolls it back as transformers
    does its own linear-attention caches: `activate_past_recording()` makes the lightning layers record the tokens
    of each forward, `crop(-n)` drops the last n tokens (K/V cut, states replayed from the record).
    """
    def __init__(self, config: MiniMaxText01Config, **kwargs):
        layers = [GrowingKVLayer() if t == SOFTMAX else LightningStateLayer() for t in config.attn_type_list]
        super().__init__(layers=layers, **kwargs)
        self.seen_tokens = 0  # the model adds the new tokens after each forward
        self.forget_layout()

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
        # why the next forward cannot continue exactly, if so; whether some row has pads after real tokens (right
        # padding or holes). Instance attributes from the start, so a reset changes no compiled-graph guard.
        self._continuation_problem: str | None = None
        self.has_padding_holes = False

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

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs) -> None:
        """transformers' switch before speculative decoding: the lightning layers record the tokens a crop may remove
        (at least `recurrent_states_to_keep` of a prompt). Defined here: transformers 5.17's takes no arguments."""
        for layer in self.layers:
            if isinstance(layer, LightningStateLayer):
                layer.activate_past_recording(recurrent_states_to_keep)

    def tokens_to_record(self, layer_idx: int, new_tokens: int) -> int:
        """How many of the new tokens the lightning layer records for a rollback (0 unless recording)."""
        return self.layers[layer_idx].tokens_to_record(new_tokens)

    def record_lightning_tokens(self, layer_idx: int, state_before, k, v, log_decay, whole_forward: bool) -> None:
        """Record the last tokens of a forward for `crop` (before setting its state): k, v [B, H, T, d], log_decay
        [H] or [B, T, H], and the state before them."""
        B, _, T, _ = k.shape
        log_decay = log_decay.expand(B, T, -1) if log_decay.dim() == 1 else log_decay
        self.layers[layer_idx].record(state_before, k, v, log_decay, whole_forward)

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0
        self.forget_layout()

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens (transformers' convention: a negative count) from every
        layer; the lightning layers must have recorded them (`activate_past_recording`)."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop takes the negative number of tokens to remove (crop(-n)), got {tokens_to_remove}."
            )
        if -tokens_to_remove > self.seen_tokens:
            raise ValueError(f"Cannot remove {-tokens_to_remove} tokens from a cache holding {self.seen_tokens}.")
        super().crop(tokens_to_remove)
        self.seen_tokens += tokens_to_remove


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
        self.forget_layout()
        self._max_cache_len, self._max_batch_size, self.kv_dtype = max_cache_len, max_batch_size, dtype
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

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "The static MiniMax cache cannot be cropped (its lightning states are written in place): use the default "
            "dynamic cache for speculative decoding."
        )

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
            model_kwargs[CACHE_FIELD] = self._static_cache_for(text_config, rows, max_cache_len)
            return
        if wants_cache:
            # built here, not by the first forward: transformers' chunked prefill and assisted generation need the
            # cache before the prompt runs
            model_kwargs[CACHE_FIELD] = MiniMaxText01Cache(text_config)
            if getattr(generation_config, "is_assistant", False):  # a draft model: rolled back after verification
                model_kwargs[CACHE_FIELD].activate_past_recording(
                    recurrent_states_to_keep=generation_config.num_assistant_tokens
                )
            return
        return super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )

    def _static_cache_for(self, text_config, rows: int, max_cache_len: int) -> MiniMaxText01StaticCache:
        """The static cache of the previous generate() call, reset, when it fits this one (same rows, device and
        dtype, at least `max_cache_len` slots): its shapes and addresses stay, so a compiled decode does not
        recompile for another request length. Otherwise a new one, as long as the longest request so far (as
        transformers sizes its own StaticCache), kept for the next call."""
        cache = getattr(self, "_minimax_static_cache", None)
        fits = (
            cache is not None and cache.max_batch_size == rows and cache.max_cache_len >= max_cache_len
            and cache.seen_tokens.device == self.device and cache.kv_dtype == self.dtype
        )
        if fits:
            cache.reset()
            return cache
        if cache is not None and cache.max_batch_size == rows:
            max_cache_len = max(max_cache_len, cache.max_cache_len)
        # under tensor parallel each rank holds only its heads: the buffers are then allocated at the first forward,
        # from the shapes the layers compute, instead of here from the config's global head counts
        sharded = (getattr(self, "tp_size", None) or 1) > 1
        cache = MiniMaxText01StaticCache(
            text_config, max_cache_len=max_cache_len, max_batch_size=rows, device=None if sharded else self.device,
            dtype=self.dtype,
        )
        self._minimax_static_cache = cache
        return cache

    def prepare_inputs_for_generation(self, *args, inputs_embeds=None, **kwargs):
        """generate() continues positions by one from each row's last position, pads included; after a right-padded
        prompt (or one that ends in the pad id, which transformers then masks) that skips the row's real tokens, so
        there the model derives the positions from the attention mask instead. (`inputs_embeds` is named: generate()
        reads this signature to decide whether the model accepts embeddings as the prompt.)

        A forward on an empty dynamic cache is a prefill even where transformers says otherwise (a draft model's
        first forward in assisted generation): the images (`pixel_values`) then go along."""
        cache = kwargs.get(CACHE_FIELD)
        if type(cache) is MiniMaxText01Cache and cache.seen_tokens == 0:
            kwargs["is_first_iteration"] = True
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

