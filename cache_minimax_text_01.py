"""The hybrid cache of MiniMax-Text-01: an fp32 state per lightning layer, K/V per softmax layer."""

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .configuration_minimax_text_01 import SOFTMAX, MiniMaxText01Config

# The count of tokens seen sets positions, so it is right even though layer 0 is a lightning layer.


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


class LightningStateLayer:
    """Cache entry of one lightning layer: the fp32 state [B, H, d, d] (None before the first token)."""

    is_sliding = False

    def __init__(self):
        self.state: torch.Tensor | None = None

    def get_seq_length(self) -> int:
        return 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(0, beam_idx.to(self.state.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self.state = self.state.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state[indices]

    def reset(self) -> None:
        self.state = None


class MiniMaxText01Cache(Cache):
    """K/V (`GrowingKVLayer`, a transformers `DynamicLayer`) for softmax layers, an fp32 state for lightning layers.

    Built by the model itself when `use_cache=True` (transformers' `generate()` does not build a default cache for
    classes named MiniMax). Beam search reorders every layer, states included. Cropping is impossible: a
    lightning state cannot be rolled back.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config: MiniMaxText01Config):
        layers = [GrowingKVLayer() if t == SOFTMAX else LightningStateLayer() for t in config.attn_type_list]
        super().__init__(layers=layers)
        self.seen_tokens = 0
        self._continuation_problem: str | None = None  # why the next forward cannot continue exactly, if so
        self.has_padding_holes = False  # some row has pads after real tokens (right padding or holes)

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

    @property
    def is_linear(self) -> list[bool]:
        return [isinstance(layer, LightningStateLayer) for layer in self.layers]

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

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
        self.layers[layer_idx].state = state

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return self.layers[layer_idx].update(key_states, value_states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(indices)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset() if isinstance(layer, LightningStateLayer) else layer.__init__()
        self.seen_tokens = 0
        self._continuation_problem, self.has_padding_holes = None, False

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("MiniMaxText01Cache cannot be cropped: a lightning-attention state has no rollback.")
