"""The checkpoint layouts of the MiniMax-01 family, and the conversions between them (both directions).

Two layouts exist for the same weights and the same architecture:
- released: what MiniMax-Text-01 / MiniMax-M1 were published with (`attn_type_list`, `layernorm_*_alpha/beta`,
  `rope_theta`; per-expert `block_sparse_moe.experts.E.w1/w2/w3` and `block_sparse_moe.gate`). This project's
  modules use it.
- native: transformers' own `minimax` model (the `-hf` repositories): `model_type` "minimax", `layer_types`,
  `*_alpha_factor` / `*_beta_factor`, `rope_parameters`; in memory the experts are fused into 3-D
  `mlp.experts.gate_up_proj` [E, 2I, D] (w1 rows, then w3) and `mlp.experts.down_proj` [E, D, I] and the router is
  `mlp.gate`. transformers writes the per-expert released names back when it saves, but also the lightning
  layers' persistent decay buffers (`slope_rate`, `query_decay`, `key_decay`, `diagonal_decay`).

The decay buffers are derived tables (and native's differ slightly from the released formula): this project
recomputes its own in fp32, so they are dropped, never loaded. Everything else converts without loss.

What happens at load time (nothing rewrites the weight files): the config class reads the native spellings
(`NATIVE_CONFIG_KEYS`, `layer_types`, `rope_parameters`); the model ignores the decay buffers
(`NATIVE_DERIVED_BUFFERS` in `_keys_to_ignore_on_load_unexpected`); and fused expert tensors, should a checkpoint
hold them, are split per expert by transformers' loader as it reads each one (`native_weight_conversions`).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming

NATIVE_MODEL_TYPE = "minimax"
# config keys: released spelling -> native spelling (one setting each)
NATIVE_CONFIG_KEYS = {
    "layernorm_full_attention_alpha": "full_attn_alpha_factor",
    "layernorm_full_attention_beta": "full_attn_beta_factor",
    "layernorm_linear_attention_alpha": "linear_attn_alpha_factor",
    "layernorm_linear_attention_beta": "linear_attn_beta_factor",
    "layernorm_mlp_alpha": "mlp_alpha_factor",
    "layernorm_mlp_beta": "mlp_beta_factor",
}
LAYER_TYPE_NAMES = {0: "linear_attention", 1: "full_attention"}  # attn_type_list value -> layer_types name
# the native lightning layers' persistent buffers, derived from the config (never loaded here)
NATIVE_DERIVED_BUFFERS = re.compile(r"(^|\.)self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")
_NATIVE_ROUTER = re.compile(r"\.mlp\.gate\.weight$")
_RELEASED_ROUTER = re.compile(r"\.block_sparse_moe\.gate\.weight$")
_NATIVE_EXPERTS = re.compile(r"^(.*)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_RELEASED_EXPERT = re.compile(r"^(.*)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")


# ---- config.json ----------------------------------------------------------------------------------------------


def released_config_from_native(values: dict) -> dict:
    """A native config dict in the released spelling (keys this project does not know are kept as they are).

    A setting given in both spellings with two values keeps both, for the config class to refuse naming them; a
    `rope_parameters` other than the default type is kept for it to refuse too.
    """
    out = dict(values)
    for released, native in NATIVE_CONFIG_KEYS.items():
        if native in out and out.get(released, out[native]) == out[native]:
            out[released] = out.pop(native)
    if "layer_types" in out:
        codes = {name: code for code, name in LAYER_TYPE_NAMES.items()}
        attn_type_list = [codes.get(name, name) for name in out["layer_types"]]
        if out.get("attn_type_list", attn_type_list) == attn_type_list:
            out["attn_type_list"] = attn_type_list
            del out["layer_types"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and set(rope) <= {"rope_type", "rope_theta"} and rope.get("rope_type") == "default":
        theta = rope.get("rope_theta", out.get("rope_theta"))
        if out.get("rope_theta", theta) == theta:
            del out["rope_parameters"]
            if theta is not None:
                out["rope_theta"] = theta
    if out.get("model_type") == NATIVE_MODEL_TYPE:
        out["model_type"] = "minimax_text_01"
    return out


def native_config_from_released(values: dict) -> dict:
    """A released config dict (e.g. `MiniMaxText01Config.to_dict()`) in the spelling of transformers' MiniMaxConfig.

    The native model rotates every channel of a head, so it computes the released math only when
    `rotary_dim == head_dim`; the released keys it does not know (`rotary_dim`, `postnorm`, ...) are kept, as the
    `-hf` repositories keep them.
    """
    out = {key: value for key, value in values.items() if key not in NATIVE_CONFIG_KEYS}
    out.update({native: values[released] for released, native in NATIVE_CONFIG_KEYS.items() if released in values})
    if "attn_type_list" in out:
        out["layer_types"] = [LAYER_TYPE_NAMES[code] for code in out.pop("attn_type_list")]
    if "rope_theta" in out:
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": out.pop("rope_theta")}
    out["model_type"] = NATIVE_MODEL_TYPE
    out["architectures"] = ["MiniMaxForCausalLM"]
    out.pop("auto_map", None)
    return out


def is_native_config(values: dict) -> bool:
    """A config dict in transformers' native spelling (model_type "minimax", or any native-only key)."""
    native_keys = {"layer_types", "rope_parameters", *NATIVE_CONFIG_KEYS.values()}
    return values.get("model_type") == NATIVE_MODEL_TYPE or bool(native_keys & set(values))


# ---- weights: whole state dicts (tests, benchmarks, conversions in memory) --------------------------------------


def released_state_dict_from_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native tensors -> released names: fused experts split per expert, the router renamed, the derived decay
    buffers dropped. Released names pass through, so a re-saved native checkpoint (released MoE names plus the
    buffers) converts too."""
    out = {}
    for key, value in state.items():
        if NATIVE_DERIVED_BUFFERS.search(key):
            continue
        if experts := _NATIVE_EXPERTS.match(key):
            prefix, name = experts.groups()
            out.update({prefix + suffix: weight for suffix, weight in split_fused_experts(name, value).items()})
        else:
            out[_NATIVE_ROUTER.sub(".block_sparse_moe.gate.weight", key)] = value
    return out


def split_fused_experts(name: str, fused: torch.Tensor) -> dict[str, torch.Tensor]:
    """One fused native tensor -> the per-expert released tensors, named from the layer on
    (`.block_sparse_moe.experts.{e}.w1.weight`). `gate_up_proj` [E, 2I, D] holds w1 rows then w3 rows per expert;
    `down_proj` [E, D, I] holds w2."""
    if name.endswith("gate_up_proj"):
        return {f".block_sparse_moe.experts.{e}.{w}.weight": half
                for e, pair in enumerate(fused) for w, half in zip(("w1", "w3"), pair.chunk(2, dim=0))}
    return {f".block_sparse_moe.experts.{e}.w2.weight": weight for e, weight in enumerate(fused)}


def native_state_dict_from_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released tensors -> the names and shapes of transformers' MiniMaxForCausalLM in memory (fused experts,
    `mlp.gate`). The decay buffers are not produced: the native model computes them."""
    out, experts = {}, {}
    for key, value in state.items():
        if expert := _RELEASED_EXPERT.match(key):
            prefix, e, name = expert.groups()
            experts.setdefault(prefix, {}).setdefault(name, {})[int(e)] = value
        else:
            out[_RELEASED_ROUTER.sub(".mlp.gate.weight", key)] = value
    for prefix, w in experts.items():
        order = sorted(w["w1"])
        out[f"{prefix}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat((w["w1"][e], w["w3"][e])) for e in order])
        out[f"{prefix}.mlp.experts.down_proj"] = torch.stack([w["w2"][e] for e in order])
    return out


# ---- weights: while transformers loads a checkpoint -------------------------------------------------------------


class SplitFusedExperts(ConversionOps):
    """transformers' loader op: a fused expert tensor of one layer -> its per-expert tensors (split_fused_experts)."""

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs) -> dict[str, torch.Tensor]:
        ((source, tensors),) = input_dict.items()
        return split_fused_experts(source, tensors[0] if isinstance(tensors, list) else tensors)


class NativeRouterRenaming(WeightRenaming):
    """`mlp.gate.weight` -> `block_sparse_moe.gate.weight` (a class of its own, so a loaded model can forget it)."""

    __slots__ = ()


class NativeExpertSplit(WeightConverter):
    """A fused expert tensor -> per-expert weights. The loader files the result under one existing parameter
    (expert 0's); SplitFusedExperts returns every expert's, which the loader then sets one by one."""

    __slots__ = ()


NATIVE_TRANSFORMS = (NativeRouterRenaming, NativeExpertSplit)


def native_weight_conversions() -> list:
    """transformers weight transforms from native names to released ones, applied per tensor while loading."""
    return [
        NativeRouterRenaming(r"\.mlp\.gate\.weight$", ".block_sparse_moe.gate.weight"),
        NativeExpertSplit(".mlp.experts.gate_up_proj", ".block_sparse_moe.experts.0.w1.weight", [SplitFusedExperts()]),
        NativeExpertSplit(".mlp.experts.down_proj", ".block_sparse_moe.experts.0.w2.weight", [SplitFusedExperts()]),
    ]


@contextmanager
def native_layout_conversions(class_names: list[str]) -> Iterator[None]:
    """Within the block, transformers' loader applies `native_weight_conversions` to models of these classes.

    Registered only while loading: registered for good, transformers would also try to apply their reverse when
    saving any model of these classes. After loading, `forget_native_conversions` makes the model save in the
    released layout.
    """
    cache = conversion_mapping._checkpoint_conversion_mapping_cache or {}
    previous = {name: cache.get(name) for name in class_names}
    for name in class_names:
        conversion_mapping.register_checkpoint_conversion_mapping(name, native_weight_conversions(), overwrite=True)
    try:
        yield
    finally:
        for name, mapping in previous.items():
            if mapping is None:
                conversion_mapping._checkpoint_conversion_mapping_cache.pop(name, None)
                conversion_mapping.USER_REGISTERED_MAPPINGS.discard(name)
            else:
                conversion_mapping._checkpoint_conversion_mapping_cache[name] = mapping


def forget_native_conversions(model) -> None:
    """transformers records the conversions a load used and reverses them on save; these have no reverse (this
    project saves the released layout), so the loaded model forgets them."""
    if used := getattr(model, "_weight_conversions", None):
        model._weight_conversions = [c for c in used if not isinstance(c, NATIVE_TRANSFORMS)]
