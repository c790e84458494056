"""Checks of a loaded checkpoint against the model the config describes, for MiniMax-Text-01 and VL-01.

transformers only logs missing, unused and wrong-shape tensors and leaves the missing ones at random; here each
raises an error naming the keys (layer indices folded) and what to fix.
"""

import re
from collections import Counter

from transformers.modeling_utils import PreTrainedModel


def check_loading_info(model: PreTrainedModel, info: dict, ignore_mismatched_sizes: bool,
                       output_loading_info: bool) -> None:
    """Raise unless every weight of `model` came from the checkpoint and every checkpoint tensor was used.

    `info` is transformers' loading info (already free of what quantizers add and of what tensor- or
    pipeline-parallel loading skips on purpose). Tolerated: wrong shapes with `ignore_mismatched_sizes` (those are
    re-initialised, as the flag asks), a model head's tensors when only the base model is loaded, and, with
    `output_loading_info` (the caller asked to be handed the missing and unused keys), missing and unused tensors.
    """
    fix = (
        "Check that config.json belongs to these weights: num_hidden_layers, attn_type_list, num_local_experts and "
        "shared_intermediate_size (text_config.* for VL-01) decide which tensors exist; or re-download an incomplete "
        "checkpoint."
    )
    if info["mismatched_keys"] and not ignore_mismatched_sizes:
        details = "; ".join(
            f"{key}: checkpoint {tuple(ckpt_shape)} vs model {tuple(model_shape)}"
            for key, ckpt_shape, model_shape in sorted(info["mismatched_keys"], key=lambda m: m[0])
        )
        raise ValueError(
            f"Checkpoint tensors of the wrong shape: {details}. Check that config.json belongs to these weights "
            "(or pass ignore_mismatched_sizes=True to re-initialise them)."
        )
    if output_loading_info:
        return
    missing = sorted(info["missing_keys"])
    if missing:
        hint = ""
        if absent := _absent_layers(model, missing):
            hint += (f" Decoder layers {_ranges(absent)} are absent altogether: the config has more layers "
                     f"({len(absent)} more) than the checkpoint.")
        if any(".shared_mlp." in key or key.endswith(".coefficient.weight") for key in missing):
            hint += " The config asks for a shared expert (shared_intermediate_size > 0) that the checkpoint lacks."
        raise ValueError(
            f"The checkpoint lacks {len(missing)} weight{'s' * (len(missing) > 1)} the model needs (they would "
            f"start at random): {summarize_keys(missing)}.{hint} {fix}"
        )
    unexpected = sorted(key for key in info["unexpected_keys"] if not _is_head_tensor(model, key))
    if unexpected:
        raise ValueError(
            f"The checkpoint holds {len(unexpected)} tensor{'s' * (len(unexpected) > 1)} this model does not use: "
            f"{summarize_keys(unexpected)}. {fix}"
        )


_DECODER_LAYER = re.compile(r"^(?:language_model\.)?(?:model\.)?layers\.(\d+)\.")


def _absent_layers(model: PreTrainedModel, missing: list[str]) -> list[int]:
    """Decoder layers none of whose weights are in the checkpoint."""
    def layer_of(key):
        match = _DECODER_LAYER.match(key)
        return int(match.group(1)) if match else None

    counts = Counter(layer_of(key) for key in model.state_dict())
    missing_counts = Counter(layer_of(key) for key in missing)
    return sorted(i for i, n in missing_counts.items() if i is not None and n == counts[i])


def _is_head_tensor(model: PreTrainedModel, key: str) -> bool:
    """A head's tensor (e.g. `lm_head.weight`) seen while loading just the base model from a full checkpoint."""
    is_base_model = not hasattr(model, model.base_model_prefix)
    top = key.split(".")[0]
    return is_base_model and top != model.base_model_prefix and not hasattr(model, top)


def summarize_keys(keys: list[str], limit: int = 12) -> str:
    """Checkpoint keys with the layer index folded: `model.layers.{0-3,6}.mlp.w1.weight`, at most `limit` lines."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        layer = re.search(r"(?:^|\.)layers\.(\d+)\.", key)
        pattern = key[: layer.start(1)] + "{}" + key[layer.end(1) :] if layer else key
        groups.setdefault(pattern, []).append(int(layer.group(1)) if layer else -1)
    shown = [
        pattern.replace("{}", str(numbers[0]) if len(numbers) == 1 else "{" + _ranges(numbers) + "}")
        for pattern, numbers in list(groups.items())[:limit]
    ]
    more = len(groups) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    numbers, runs = sorted(numbers), []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
