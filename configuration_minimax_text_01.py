"""Configuration of MiniMax-Text-01: a hybrid lightning/softmax-attention MoE decoder.

The defaults are the released MiniMax-Text-01 values, and the released `config.json` loads unchanged: every
released key is a field here (`attn_type_list`, the DeepNorm `layernorm_*_alpha/beta`, `rotary_dim`, ...).
`layer_types` is derived from `attn_type_list` for transformers and is not written back to disk.

One class reads the whole family: MiniMax-M1 (`model_type` "minimax_m1" / "MiniMaxM1", the same keys) and
transformers' native `minimax` spelling of the `-hf` repositories (`layer_types`, `*_alpha_factor` /
`*_beta_factor`, `rope_parameters`; see checkpoint_layouts.py). A config that gives one setting in both spellings
with different values is refused, naming both keys. Settings the model cannot honour (RoPE scaling, a sliding
window, tied embeddings) are refused the same way on every path: constructor, `from_dict`, `from_pretrained`, and
`save_pretrained` after an attribute was changed.
"""

import difflib
import math

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

from .checkpoint_layouts import LAYER_TYPE_NAMES, NATIVE_CONFIG_KEYS

LIGHTNING, SOFTMAX = 0, 1
# the values of `lightning_impl` (lightning_attention.py's LIGHTNING_KERNELS, plus "auto"); kept here so that the
# configuration file stands alone, and checked against the kernel table by the tests
LIGHTNING_IMPLS = ("auto", "chunked", "recurrent", "fla")
# model_type values of the family's config files, all read by this class: Text-01's older files, MiniMax-M1
# (config.json and the class attribute), transformers' native `minimax`
OTHER_MODEL_TYPES = ("MiniMaxText01", "minimax_m1", "MiniMaxM1", "minimax")
# released values of the fields whose default is filled in `__post_init__` (None there = not given, so a value
# given in the native spelling can be told apart from the default)
RELEASED_ROPE_THETA = 10_000_000.0
RELEASED_DEEPNORM_ALPHA = 3.5565588200778455  # 160 ** 0.25 for 80 layers
RELEASED_ROTARY_DIM = 64


def released_attn_type_list(num_hidden_layers: int) -> list[int]:
    """The released pattern: every 8th layer (7, 15, ...) is softmax attention, the others lightning."""
    return [SOFTMAX if (i + 1) % 8 == 0 else LIGHTNING for i in range(num_hidden_layers)]


@strict(accept_kwargs=True)
class MiniMaxText01Config(PreTrainedConfig):
    r"""
    attn_type_list (`list[int]`): one entry per layer, 0 = lightning (linear) attention, 1 = softmax attention.
    rotary_dim (`int`): RoPE is applied to the first `rotary_dim` channels of each head only (64 of 128).
        Default: 64, or head_dim (rounded down to even) when that is smaller.
    rope_theta (`float`): the RoPE base (1e7). transformers 5's `rope_parameters` {"rope_type": "default",
        "rope_theta": ...} is read too; other RoPE types (and `rope_scaling`) are refused: not implemented.
    postnorm (`bool`): residual taken from the normalised input (the released DeepNorm-style blocks).
    layernorm_{full_attention,linear_attention,mlp}_{alpha,beta} (`float`): out = alpha * residual + beta * f(x).
        Native spelling: {full_attn,linear_attn,mlp}_{alpha,beta}_factor.
    shared_intermediate_size (`int` or one-element `list[int]`): width of the optional shared expert, 0 = none.
    shared_moe_mode (`str`): how the shared expert is mixed in; only "sigmoid" exists in the released code.
    block_size (`int`): lightning-attention block length (not in the released file; 256 there). Any length gives the
        same result; the plain PyTorch prefill caps it at 2 * head_dim, the fastest length on CPU.
    lightning_impl (`str`): the lightning-attention prefill kernel: "auto" (flash-linear-attention's Triton kernel
        on CUDA when installed, else "chunked"), "chunked" (plain PyTorch, block-parallel), "recurrent" (token by
        token, the slow reference) or "fla". Decoding one token after cached ones is always one recurrence step.
    moe_grouped_mm (`bool`): on CUDA in inference, run the experts as two grouped matmuls over stacked weights (a
        second copy of the expert weights: only where GPU memory allows it; not with cpu/disk offload).
    prefill_chunk_size (`int` or None): feed prompts longer than this through the cache in pieces of this many
        tokens, bounding activation memory; None = the whole prompt at once.
    lightning_norm_eps (`float`): eps of the RMSNorm inside lightning attention (1e-6 in the released code).
    """

    model_type = "minimax_text_01"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_experts": "num_local_experts"}
    # Tensor parallel (`from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))` under torchrun): every
    # layer split by heads, every expert split in its intermediate width. The `minimax_*` styles are registered by
    # tensor_parallel_minimax_text_01.py, which also checks the layout against the head counts before loading.
    base_model_tp_plan = {
        "embed_tokens": "embedding_rowwise",  # by vocabulary
        # lightning attention: qkv_proj rows are head-major (q | k | v per head), so a row split gives whole heads
        "layers.*.self_attn.qkv_proj": "colwise",
        "layers.*.self_attn.output_gate": "colwise",
        "layers.*.self_attn.norm": "minimax_lightning_norm",  # weight by heads, sum of squares over all ranks
        "layers.*.self_attn.out_proj": "rowwise",
        # softmax attention: q by heads, k / v by KV heads
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        # expert tensor parallel: w1 / w3 rows and w2 columns; one sum over ranks per MoE block, not per expert
        "layers.*.block_sparse_moe.experts.*.w1": "colwise",
        "layers.*.block_sparse_moe.experts.*.w3": "colwise",
        "layers.*.block_sparse_moe.experts.*.w2": "minimax_rowwise_partial",
        "layers.*.block_sparse_moe": "minimax_moe_sum",
        "layers.*.block_sparse_moe.gate": "minimax_router",  # replicated; its gradient summed over ranks
    }  # layer norms, the router, shared expert and `coefficient` stay replicated
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 200064
    hidden_size: int = 6144
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int | None = 128
    rotary_dim: int | None = None
    rope_theta: float | int | None = None
    intermediate_size: int = 9216
    num_local_experts: int = 32
    num_experts_per_tok: int = 2
    attn_type_list: list[int] | None = None
    postnorm: bool = True
    layernorm_full_attention_alpha: float | int | None = None
    layernorm_full_attention_beta: float | int | None = None
    layernorm_linear_attention_alpha: float | int | None = None
    layernorm_linear_attention_beta: float | int | None = None
    layernorm_mlp_alpha: float | int | None = None
    layernorm_mlp_beta: float | int | None = None
    shared_intermediate_size: int | list[int] = 0
    shared_moe_mode: str = "sigmoid"
    rms_norm_eps: float = 1e-5
    lightning_norm_eps: float = 1e-6
    block_size: int = 256
    prefill_chunk_size: int | None = None
    lightning_impl: str = "auto"
    moe_grouped_mm: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int = 10_240_000
    initializer_range: float = 0.02
    router_aux_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0
    output_router_logits: bool = False
    attention_dropout: float | int = 0.0
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # `layer_types` is derived; a config that carries it (e.g. converted from transformers' native `minimax`)
        # must agree with `attn_type_list`, or define it when `attn_type_list` is absent.
        layer_types = kwargs.pop("layer_types", None)
        self._read_native_spellings(kwargs)
        self._read_rope_settings(kwargs.pop("rope_parameters", None), kwargs.pop("rope_scaling", None))
        _refuse_misspelt_keys(kwargs, type(self))
        refuse_sliding_window(kwargs.pop("sliding_window", None))
        if self.attn_type_list is None and layer_types is not None:
            self.attn_type_list = [_layer_type_to_int(t) for t in layer_types]
        if self.attn_type_list is None:
            self.attn_type_list = released_attn_type_list(self.num_hidden_layers)
        if self.head_dim is None and self.num_attention_heads > 0:  # a non-positive count is reported below
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rotary_dim is None and self.head_dim is not None:  # the largest even count up to 64
            self.rotary_dim = min(RELEASED_ROTARY_DIM, self.head_dim // 2 * 2)
        self._validate()  # before the base class, which already reads `layer_types`
        super().__post_init__(**kwargs)
        if layer_types is not None and list(layer_types) != self.layer_types:
            raise ValueError(
                "`layer_types` disagrees with `attn_type_list`; drop `layer_types` (it is derived from `attn_type_list`)."
            )

    def _read_native_spellings(self, kwargs: dict) -> None:
        """`mlp_alpha_factor` etc. (transformers' native names) set the released fields; both spellings of one
        setting must agree."""
        for released, native in NATIVE_CONFIG_KEYS.items():
            if native not in kwargs:
                continue
            value = kwargs.pop(native)
            given = getattr(self, released)
            if given is not None and given != value:
                raise ValueError(f"MiniMaxText01Config: `{released}` ({given}) and `{native}` ({value}) disagree; they "
                                 "are the released and transformers-native names of one setting. Keep one of them.")
            setattr(self, released, value)
        for key in NATIVE_CONFIG_KEYS:
            if getattr(self, key) is None:
                setattr(self, key, RELEASED_DEEPNORM_ALPHA if key.endswith("_alpha") else 1.0)

    def _read_rope_settings(self, rope_parameters, rope_scaling) -> None:
        """`rope_theta` may come inside transformers 5's `rope_parameters`; RoPE scaling of any kind is refused (this
        model implements the released, unscaled partial RoPE), so no setting is dropped silently."""
        for key, values in (("rope_scaling", rope_scaling), ("rope_parameters", rope_parameters)):
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ValueError(f"MiniMaxText01Config: `{key}` is {values!r}; give a dict such as "
                                 '{"rope_type": "default", "rope_theta": 10000000.0}, or leave it out.')
            rope_type = values.get("rope_type", values.get("type", "default"))
            extra = sorted(set(values) - {"rope_type", "type", "rope_theta"})
            if rope_type != "default" or extra:
                what = f"RoPE type {rope_type!r}" if rope_type != "default" else f"the entries {extra}"
                raise ValueError(f"MiniMaxText01Config: `{key}` asks for {what}, which this model does not implement "
                                 f"(the released model uses plain, unscaled RoPE). Remove `{key}`"
                                 + (", or set its rope_type to 'default' with only a rope_theta." if key ==
                                    "rope_parameters" else "."))
            if "rope_theta" in values:
                if self.rope_theta is not None and self.rope_theta != values["rope_theta"]:
                    raise ValueError(f"MiniMaxText01Config: `rope_theta` ({self.rope_theta}) and `{key}.rope_theta` "
                                     f"({values['rope_theta']}) disagree. Keep one of them.")
                self.rope_theta = values["rope_theta"]
        if self.rope_theta is None:
            self.rope_theta = RELEASED_ROPE_THETA

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """Read the family's other model types (older Text-01 files, MiniMax-M1, native `minimax`) as this class,
        without transformers' warning about loading another model type."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in OTHER_MODEL_TYPES:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def validate_minimax_fields(self):
        """transformers' validation hook (run again by `save_pretrained`): a field changed after construction is
        checked as the constructor checks it, so a saved config always loads back."""
        self._validate()

    @property
    def layer_types(self) -> list[str]:
        return [LAYER_TYPE_NAMES[t] for t in self.attn_type_list]

    @property
    def shared_expert_size(self) -> int:
        """`shared_intermediate_size` as an int (the VL release writes it as a one-element list)."""
        size = self.shared_intermediate_size
        return size[0] if isinstance(size, list) else size

    def _validate(self):
        def fail(key, problem, fix):
            raise ValueError(f"MiniMaxText01Config: `{key}` {problem}. {fix}")

        # sizes that would otherwise fail deep inside torch, or (rope_theta, eps) give NaN quietly
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "intermediate_size", "num_local_experts", "max_position_embeddings"):
            if getattr(self, key) <= 0:
                fail(key, f"is {getattr(self, key)}", "It must be a positive integer"
                     + (" (hidden_size // num_attention_heads when head_dim is null)." if key == "head_dim" else "."))
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            fail("rope_theta", f"is {self.rope_theta}", "RoPE needs a positive base (1e7 in the release).")
        for key in ("rms_norm_eps", "lightning_norm_eps"):
            if not getattr(self, key) > 0:
                fail(key, f"is {getattr(self, key)}", "Use a small positive number (1e-5 / 1e-6 in the release); "
                     "an all-zero input, such as a zero pad embedding, would divide by zero.")
        if self.hidden_act not in ACT2FN:
            fail("hidden_act", f"is {self.hidden_act!r}", f"Use one of transformers' activations ('silu' in the "
                 f"release): {', '.join(sorted(ACT2FN))}.")
        if not 0 <= self.attention_dropout < 1:
            fail("attention_dropout", f"is {self.attention_dropout}", "Use a probability in [0, 1).")
        if self.tie_word_embeddings:
            fail("tie_word_embeddings", "is true", "MiniMax-Text-01 keeps separate input-embedding and lm_head weights "
                 "(both are in the checkpoint); set it to false.")
        refuse_sliding_window(getattr(self, "sliding_window", None))  # set on the config after it was built
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, key)
            ids = value if isinstance(value, list) else [value]
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                fail(key, f"({value}) is outside the vocabulary (size {self.vocab_size})",
                     "Use a token id of the tokenizer, or null.")

        types = self.attn_type_list
        if len(types) != self.num_hidden_layers:
            fail("attn_type_list", f"has {len(types)} entries but num_hidden_layers is {self.num_hidden_layers}",
                 "Give one entry per layer.")
        bad = sorted({t for t in types if t not in LAYER_TYPE_NAMES})
        if bad:
            fail("attn_type_list", f"contains unknown layer types {bad}",
                 "Use 0 for lightning attention and 1 for softmax attention.")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            fail("rotary_dim", f"is {self.rotary_dim}", "It must be a positive even number.")
        if self.rotary_dim > self.head_dim:
            fail("rotary_dim", f"({self.rotary_dim}) exceeds head_dim ({self.head_dim})", "Use rotary_dim <= head_dim.")
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"({self.num_key_value_heads}) does not divide num_attention_heads "
                 f"({self.num_attention_heads})", "Pick a divisor of the number of query heads.")
        if not 0 < self.num_experts_per_tok <= self.num_local_experts:
            fail("num_experts_per_tok", f"({self.num_experts_per_tok}) is not within 1..num_local_experts "
                 f"({self.num_local_experts})", "Route each token to at most the number of experts.")
        size = self.shared_intermediate_size
        if isinstance(size, list) and (len(size) != 1 or not isinstance(size[0], int)):
            fail("shared_intermediate_size", f"is {size}", "Give an int or a one-element list of int, e.g. 0 or [0].")
        if self.shared_expert_size < 0:
            fail("shared_intermediate_size", f"is negative ({size})", "Use 0 for no shared expert.")
        if self.shared_moe_mode != "sigmoid":
            fail("shared_moe_mode", f"is {self.shared_moe_mode!r}", 'Only "sigmoid" exists in the released model.')
        if self.prefill_chunk_size is not None and self.prefill_chunk_size <= 0:
            fail("prefill_chunk_size", f"is {self.prefill_chunk_size}", "Use a positive token count, or None.")
        if self.lightning_impl not in LIGHTNING_IMPLS:
            fail("lightning_impl", f"is {self.lightning_impl!r}",
                 f"Use one of {', '.join(map(repr, LIGHTNING_IMPLS))} ('auto' picks the fastest available).")
        if self.block_size <= 0:
            fail("block_size", f"is {self.block_size}", "Use a positive block length (256 in the release).")


def refuse_sliding_window(sliding_window) -> None:
    """There is no sliding-window attention, so `sliding_window` is no field: a null one (as transformers' native
    `minimax` config writes) is dropped, any other value refused, alike from the constructor, `from_dict` and
    `from_pretrained`, and when set on a config afterwards (by `save_pretrained` and the model's constructor)."""
    if sliding_window is not None:
        raise ValueError(f"MiniMaxText01Config: `sliding_window` is {sliding_window}. MiniMax-Text-01 has no "
                         "sliding-window attention (its softmax layers see the whole context); set it to null.")


def _refuse_misspelt_keys(extra_keys, config_class) -> None:
    """Unknown config keys are kept and ignored (transformers' rule), so `rope_thetha` would quietly leave the default
    rope_theta in place: refuse an unknown key that is one typo away from a MiniMax-Text-01 field."""
    own_fields = [name for name in config_class.__annotations__ if name not in PreTrainedConfig.__annotations__]
    for key in extra_keys:
        if key not in own_fields and (close := difflib.get_close_matches(key, own_fields, n=1, cutoff=0.9)):
            raise ValueError(f"MiniMaxText01Config: unknown key `{key}`, which would be ignored. Did you mean "
                             f"`{close[0]}`?")


def _layer_type_to_int(name: str) -> int:
    for code, type_name in LAYER_TYPE_NAMES.items():
        if name == type_name:
            return code
    raise ValueError(f"Unknown layer type {name!r} in `layer_types`; expected 'linear_attention' or 'full_attention'.")


__all__ = ["MiniMaxText01Config"]
