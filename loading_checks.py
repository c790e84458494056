"""Checks of a checkpoint for MiniMax-Text-01 and VL-01: of its folder before loading, and of the loaded weights.

Before loading (`check_checkpoint_folder`): the folder's files that transformers would misread quietly or report
obscurely (another model kind, a truncated generation_config.json, an eos id outside the vocabulary, an unknown
dtype name, a malformed shard index, one tensor in two shards with different values), a missing local path (which
transformers reports as a bad Hub repo id), and a device map naming a GPU the machine lacks.
After loading (`check_loading_info`): transformers only logs missing, unused and wrong-shape tensors and leaves the
missing ones at random; here each raises an error naming the keys (layer indices folded) and what to fix.
"""

import json
import os
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.modeling_utils import PreTrainedModel

VL_MODEL_TYPE = "minimax_vl_01"
INDEX_FILE = "model.safetensors.index.json"


def check_checkpoint_folder(model_class, args: tuple, kwargs: dict) -> None:
    """Refuse, before transformers reads anything, what it would load wrongly or report obscurely. `args` /
    `kwargs` are those of `model_class.from_pretrained`."""
    check_device_map(kwargs.get("device_map"))
    check_dtype_name(kwargs.get("dtype", kwargs.get("torch_dtype")), "the `dtype` argument")
    path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    if not isinstance(path, (str, os.PathLike)):
        return
    folder = Path(path) / kwargs.get("subfolder", "")
    if not folder.is_dir():
        if looks_like_a_local_path(str(path)):
            raise FileNotFoundError(
                f"No checkpoint folder at {str(path)!r}. Check the path (a Hub repository id has the form 'org/name')."
            )
        return  # a Hub repository id: transformers fetches and reports it
    values = read_json(folder / "config.json", "config.json") if (folder / "config.json").is_file() else None
    if isinstance(values, dict) and "config" not in kwargs:
        check_model_kind(model_class, values, folder)
        sections = {"": values, **{f"{name}.": values.get(name) for name in ("text_config", "vision_config")}}
        for where, section in sections.items():
            for key in ("dtype", "torch_dtype"):
                if isinstance(section, dict):
                    check_dtype_name(section.get(key), f"{folder / 'config.json'}: `{where}{key}`")
        check_generation_config(folder, values)
    if (folder / INDEX_FILE).is_file():
        check_shards(folder)


def looks_like_a_local_path(path: str) -> bool:
    """A Hub repo id is `name` or `org/name`; anything absolute, relative to `.` / `~`, or deeper is a path."""
    return path.startswith((".", "~", os.sep, "/")) or path.count("/") > 1 or os.path.isabs(path) or path.endswith("/")


def check_device_map(device_map, name: str = "device_map") -> None:
    """A device map (or a device) naming a GPU fails deep inside torch on a machine without that GPU; refuse it by
    name. `name`: what the user called it, for the message."""
    if device_map is None or isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0",
                                                                            "sequential"):
        return
    devices = device_map.values() if isinstance(device_map, dict) else [device_map]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        if isinstance(device, str) and device in ("cpu", "disk", "meta"):
            continue
        try:
            device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"{name} names the device {device!r}, which torch does not know. Use 'cpu', "
                             "'cuda:N', a GPU index, 'disk' or 'auto'.") from None
        if device.type == "cuda" and (device.index or 0) >= available:
            raise ValueError(
                f"{name} names the GPU {str(device)!r}, but this machine has {available} CUDA GPU(s). Use "
                "device_map='auto' (or 'cpu'), or a map written for this machine (scripts/device_map.py)."
            )


def check_dtype_name(dtype, where: str) -> None:
    """A dtype given as text must name a torch dtype (transformers fails on `getattr(torch, name)` otherwise)."""
    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"{where} is {dtype!r}, which is not a torch dtype. Use 'bfloat16', 'float16', 'float32' "
                         "(or 'auto').")


def read_json(path: Path, name: str):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the file is truncated or damaged. Restore {name} "
                         "from the checkpoint's original repository.") from None


def check_model_kind(model_class, values: dict, folder: Path) -> None:
    """A MiniMax-VL-01 folder loaded with a text class (or the reverse) would fail on hundreds of keys."""
    wants_vl = model_class.config_class.model_type == VL_MODEL_TYPE
    is_vl = values.get("model_type") == VL_MODEL_TYPE or "vision_config" in values
    if wants_vl != is_vl:
        kind, other = ("MiniMax-VL-01", "MiniMaxVL01ForConditionalGeneration") if is_vl else \
            ("MiniMax-Text-01", "MiniMaxText01ForCausalLM")
        raise ValueError(
            f"{folder} holds a {kind} checkpoint, which {model_class.__name__} cannot load. Load it with {other} "
            "(or AutoModelForCausalLM with trust_remote_code=True, which picks the class from config.json)."
        )


def check_generation_config(folder: Path, config_values: dict) -> None:
    """generation_config.json must parse (transformers silently falls back to defaults otherwise) and its special
    token ids must be inside the vocabulary (an eos outside it never stops generation)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    values = read_json(path, "generation_config.json")
    vocab = (config_values.get("text_config") or config_values).get("vocab_size")
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        ids = values.get(key)
        ids = ids if isinstance(ids, list) else [ids]
        bad = [i for i in ids if i is not None and not (isinstance(i, int) and vocab and 0 <= i < vocab)]
        if bad:
            raise ValueError(
                f"{path}: `{key}` {values[key]} is not a token id of the vocabulary (0..{vocab - 1}). Set it to the "
                "tokenizer's id of that token (e.g. tokenizer.convert_tokens_to_ids('<end_of_sentence>') for eos)."
            )


def check_shards(folder: Path) -> None:
    """The shard index must parse, and no tensor may sit in two shards with different values (which copy
    transformers keeps depends on the order it reads the files)."""
    index = read_json(folder / INDEX_FILE, INDEX_FILE)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{folder / INDEX_FILE} has no `weight_map` {{tensor name: shard file}}. Restore the index "
                         "from the checkpoint's original repository.")
    keys_of = {}  # shard file -> the tensor names it holds
    for shard in sorted(set(weight_map.values())):
        if (folder / shard).is_file():  # (transformers names a missing shard itself)
            with safe_open(folder / shard, framework="pt") as handle:
                keys_of[shard] = set(handle.keys())
    seen: dict[str, str] = {}
    for shard, keys in keys_of.items():
        for key in sorted(keys):
            if key in seen and not _same_tensor(folder, key, seen[key], shard):
                raise ValueError(
                    f"{folder}: the tensor {key} is in both {seen[key]} and {shard}, with different values. "
                    f"Keep it in the shard the index names ({weight_map.get(key)}) and remove it from the other."
                )
            seen.setdefault(key, shard)
    misplaced = sorted(k for k, shard in weight_map.items() if shard in keys_of and k not in keys_of[shard])
    unlisted = sorted(set(seen) - set(weight_map))
    if misplaced or unlisted:
        problem = (f"the index names {summarize_keys(misplaced)} in shards that do not hold them" if misplaced else
                   f"the shards hold {summarize_keys(unlisted)}, which the index does not list (they would be ignored)")
        raise ValueError(f"{folder / INDEX_FILE} does not match the shards: {problem}. Regenerate the index from the "
                         "shards, or restore it from the checkpoint's original repository.")


def _same_tensor(folder: Path, key: str, shard_a: str, shard_b: str) -> bool:
    tensors = []
    for shard in (shard_a, shard_b):
        with safe_open(folder / shard, framework="pt") as handle:
            tensors.append(handle.get_tensor(key))
    a, b = tensors
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def check_loading_info(model: PreTrainedModel, info: dict, ignore_mismatched_sizes: bool, allow_missing: bool,
                       allow_unused: bool) -> None:
    """Raise unless every weight of `model` came from the checkpoint and every checkpoint tensor was used.

    `info` is transformers' loading info (already free of what quantizers add and of what tensor- or
    pipeline-parallel loading skips on purpose). Tolerated: wrong shapes with `ignore_mismatched_sizes` (those are
    re-initialised, as the flag asks), a model head's tensors when only the base model is loaded, and missing /
    unused tensors where the caller allows them (`from_pretrained(output_loading_info=True)` asks to be handed both;
    `from_pretrained(None, config=..., state_dict=...)` leaves the weights it lacks to `_init_weights`).
    """
    fix = (
        "Check that config.json belongs to these weights: num_hidden_layers, attn_type_list, num_local_experts and "
        "shared_intermediate_size (text_config.* for VL-01) decide which tensors exist; or re-download an incomplete "
        "checkpoint."
    )
    fused_suffixes = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
    if fused := sorted(key for key in info["unexpected_keys"] if key.endswith(fused_suffixes)):
        raise ValueError(
            f"The checkpoint holds fused expert tensors ({summarize_keys(fused)}, transformers' native layout), "
            "which are split while loading except with a quantization_config: load once without it, "
            "save_pretrained (the released layout), then quantize that."
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
    missing = sorted(info["missing_keys"])
    if missing and not allow_missing:
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
    if unexpected and not allow_unused:
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
