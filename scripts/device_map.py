"""A balanced multi-GPU device map for MiniMax-Text-01 / MiniMax-VL-01, planned from the config alone.

    python scripts/device_map.py PATH --gpus 8 [--gpu-memory 80GiB] [--dtype bfloat16|float16|float32|int8]
                                 [--context-length 32768] [--batch-size 1] [--headroom 4GiB] [--json]

PATH is a model folder or a `config.json`. The model is built on the meta device (no weights), its parameters are
sized at the chosen dtype (int8: the `nn.Linear` weights quanto quantizes cost 1 byte per weight plus one scale per
output row; the modules in `quanto_config.modules_to_not_convert` stay bf16), and whole decoder layers are split
into contiguous runs, one per GPU, as evenly as possible (smallest sum of squared per-GPU bytes). The embeddings
(and for VL-01 the vision tower, projector and `image_newline`) go on GPU 0, the final norm and `lm_head` on the
last GPU.

Headroom, per GPU: the cache of the layers placed there — the softmax layers' K/V for `--context-length` tokens and
the lightning layers' fp32 states [H, d, d], times `--batch-size` — plus `--headroom` (default 4 GiB) for
activations, the CUDA context and allocator slack. A plan whose GPU would exceed `--gpu-memory` is refused.

`--json` prints `{module name: GPU index}`, ready for `from_pretrained(..., device_map=json.load(f))`; the default
output is a per-GPU table.
"""

import argparse
import json
from dataclasses import dataclass
from itertools import accumulate

import torch
from accelerate.utils import convert_file_size_to_int
from torch import nn
from transformers.quantizers.quantizers_utils import should_convert_module

from minimax_code import load
from quanto_config import VISION_MODULES, is_vl, load_config, modules_to_not_convert, text_part

GIB = 2**30
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "int8": torch.bfloat16}
SCALE_BYTES = 2  # quanto keeps one bf16 scale per output row of an int8 weight
DEFAULT_HEADROOM = "4GiB"
DEFAULT_CONTEXT_LENGTH = 32768


@dataclass
class GpuShare:
    gpu: int
    modules: list[str]  # placement units, in model order
    layers: range  # decoder layer indices
    weight_bytes: int
    cache_bytes: int

    def total(self, headroom: int) -> int:
        return self.weight_bytes + self.cache_bytes + headroom


@dataclass
class DevicePlan:
    model_name: str
    dtype: str
    gpu_memory: int
    headroom: int
    context_length: int
    batch_size: int
    shares: list[GpuShare]

    @property
    def device_map(self) -> dict[str, int]:
        return {name: share.gpu for share in self.shares for name in share.modules}


def parse_size(value, flag: str) -> int:
    """'80GiB', '80GB' or a byte count ('85899345920', as accelerate's parser takes only an int for bytes) -> bytes."""
    text = str(value).strip()
    try:
        size = int(text) if text.lstrip("-").isdigit() else convert_file_size_to_int(text)
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a size; write it like 80GiB, 141GB or a number of bytes.") from None
    if size < 0:
        raise ValueError(f"{flag} must not be negative, got {value!r}.")
    return size


def build_meta_model(config) -> nn.Module:
    """The full model on the meta device: every parameter has its shape and dtype but no storage."""
    if is_vl(config):
        model_class = load("modeling_minimax_vl_01").MiniMaxVL01ForConditionalGeneration
    else:
        model_class = load("modeling_minimax_text_01").MiniMaxText01ForCausalLM
    with torch.device("meta"):
        return model_class(config)


def placement_units(config) -> tuple[list[str], list[str], list[str]]:
    """(units on GPU 0, one unit per decoder layer, units on the last GPU), as device-map keys."""
    text_config, prefix = text_part(config)
    first = (VISION_MODULES if is_vl(config) else []) + [f"{prefix}model.embed_tokens"]
    layers = [f"{prefix}model.layers.{i}" for i in range(text_config.num_hidden_layers)]
    return first, layers, [f"{prefix}model.norm", f"{prefix}lm_head"]


def tensor_bytes(model: nn.Module, dtype: str, skip: list[str]) -> dict[str, int]:
    """Bytes of every parameter and buffer at `dtype`, by full name."""
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    sizes = {}
    for module_name, module in model.named_modules():
        quantized = dtype == "int8" and isinstance(module, nn.Linear) and should_convert_module(module_name, skip)
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if quantized and name.endswith(".weight"):
                sizes[name] = param.numel() + SCALE_BYTES * module.out_features
            else:
                sizes[name] = param.numel() * (element if param.is_floating_point() else param.element_size())
        for name, buffer in module.named_buffers(prefix=module_name, recurse=False):
            sizes[name] = buffer.numel() * buffer.element_size()
    return sizes


def unit_bytes(sizes: dict[str, int], units: list[str]) -> list[int]:
    """Sum the tensors under each unit; every tensor must fall under exactly one unit."""
    totals = dict.fromkeys(units, 0)
    for name, size in sizes.items():
        owner = next((unit for unit in units if name == unit or name.startswith(unit + ".")), None)
        if owner is None:
            raise RuntimeError(f"{name} belongs to no placement unit; device_map.placement_units must cover it.")
        totals[owner] += size
    return [totals[unit] for unit in units]


def layer_cache_bytes(text_config, context_length: int, batch_size: int, element: int) -> list[int]:
    """Cache bytes of each decoder layer: softmax K and V [B, H_kv, T, d] at the activation dtype, lightning
    states [B, H, d, d] in fp32."""
    d = text_config.head_dim
    kv = 2 * batch_size * text_config.num_key_value_heads * context_length * d * element
    state = batch_size * text_config.num_attention_heads * d * d * 4
    return [kv if t == "full_attention" else state for t in text_config.layer_types]


def balanced_cuts(costs: list[int], first: int, last: int, gpus: int, capacity: int) -> list[int] | None:
    """Cut points c_0 = 0 < c_1 < ... < c_gpus = len(costs): GPU g holds costs[c_g:c_{g+1}] (plus `first` on GPU 0
    and `last` on the last GPU), every GPU's load <= capacity, smallest sum of squared loads. None if impossible."""
    n = len(costs)
    prefix = [0, *accumulate(costs)]

    def load(g: int, i: int, j: int) -> int:
        return prefix[j] - prefix[i] + (first if g == 0 else 0) + (last if g == gpus - 1 else 0)

    best = {0: (0, [0])}  # layers placed on the GPUs so far -> (sum of squared loads, cuts)
    for g in range(gpus):
        step = {}
        for j in range(g + 1, n - (gpus - g - 1) + 1):  # leave at least one layer per remaining GPU
            options = [
                (score + load(g, i, j) ** 2, cuts + [j])
                for i, (score, cuts) in best.items()
                if i < j and load(g, i, j) <= capacity
            ]
            if options:
                step[j] = min(options)
        best = step
    return best[n][1] if n in best else None


def plan_device_map(
    config,
    gpus: int,
    gpu_memory="80GiB",
    dtype: str = "bfloat16",
    headroom=DEFAULT_HEADROOM,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    batch_size: int = 1,
    model: nn.Module | None = None,
) -> DevicePlan:
    """Plan whole-layer placement on GPUs 0..gpus-1. `model`: the meta model of `config`, if already built."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    text_config, _ = text_part(config)
    n_layers = text_config.num_hidden_layers
    if not 1 <= gpus <= n_layers:
        raise ValueError(f"--gpus must be between 1 and the number of decoder layers ({n_layers}), got {gpus}.")
    if context_length < 1 or batch_size < 1:
        raise ValueError(f"--context-length and --batch-size must be positive, got {context_length} and {batch_size}.")
    memory, reserve = parse_size(gpu_memory, "--gpu-memory"), parse_size(headroom, "--headroom")
    if reserve >= memory:
        raise ValueError(f"--headroom {headroom} leaves nothing of --gpu-memory {gpu_memory} ({memory} bytes); lower "
                         "--headroom, or give --gpu-memory with its unit (a plain number is a byte count).")

    model = model if model is not None else build_meta_model(config)
    first, layers, last = placement_units(config)
    sizes = tensor_bytes(model, dtype, modules_to_not_convert(config) if dtype == "int8" else [])
    weights = unit_bytes(sizes, first + layers + last)
    first_w, layer_w, last_w = sum(weights[: len(first)]), weights[len(first) : -len(last)], sum(weights[-len(last) :])
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    caches = layer_cache_bytes(text_config, context_length, batch_size, element)
    costs = [w + c for w, c in zip(layer_w, caches)]

    cuts = balanced_cuts(costs, first_w, last_w, gpus, memory - reserve)
    if cuts is None:
        raise ValueError(no_fit_message(sum(weights), sum(caches), max(costs), gpus, memory, reserve, dtype))
    shares = []
    for g, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        modules = (first if g == 0 else []) + layers[start:stop] + (last if g == gpus - 1 else [])
        weight = sum(layer_w[start:stop]) + (first_w if g == 0 else 0) + (last_w if g == gpus - 1 else 0)
        shares.append(GpuShare(g, modules, range(start, stop), weight, sum(caches[start:stop])))
    name = (config.architectures or [type(model).__name__])[0]
    return DevicePlan(name, dtype, memory, reserve, context_length, batch_size, shares)


def size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def no_fit_message(weights: int, cache: int, largest_layer: int, gpus: int, memory: int, reserve: int, dtype: str):
    needed, available, usable = weights + cache + gpus * reserve, gpus * memory, memory - reserve
    fixes = [] if dtype == "int8" else ["--dtype int8 (about half the weight bytes)"]
    if largest_layer > usable:  # more GPUs cannot help
        problem = (f"one decoder layer with its cache needs {size(largest_layer)} but a GPU has {size(usable)} "
                   "after headroom")
    else:
        problem = (f"needed {size(needed)} (weights {size(weights)} + cache {size(cache)} + headroom {gpus} x "
                   f"{size(reserve)}), available {gpus} x {size(memory)} = {size(available)}")
        if needed <= available:
            problem += ", but not as whole layers with the embeddings on the first GPU and lm_head on the last"
        at_least = max(gpus + 1, -(-(weights + cache) // usable))  # a lower bound: whole layers may need more
        fixes.append(f"more GPUs (at least {at_least} of this size)")
    fixes += ["a larger --gpu-memory", "a smaller --context-length / --batch-size / --headroom"]
    fits = f"{gpus} GPU(s) of {size(memory)} in {dtype}"
    return f"The model does not fit on {fits}: {problem}. Use {', or '.join(fixes)}."


def format_plan(plan: DevicePlan) -> str:
    def gib(n: int) -> str:
        return f"{n / GIB:8.2f}"

    lines = [
        f"{plan.model_name}: {plan.dtype} weights on {len(plan.shares)} x {plan.gpu_memory / GIB:.1f} GiB; "
        f"cache for {plan.context_length:,} tokens x batch {plan.batch_size}, "
        f"{plan.headroom / GIB:.1f} GiB headroom per GPU",
        f"{'GPU':>3}  {'layers':>7}  {'weights':>8}  {'cache':>8}  {'+headroom':>9}  {'free':>8}  also",
    ]
    for share in plan.shares:
        extras = ", ".join(m.rsplit(".", 1)[-1] for m in share.modules if ".layers." not in m)
        layers = f"{share.layers.start}-{share.layers.stop - 1}"
        total = share.total(plan.headroom)
        row = (
            f"{share.gpu:>3}  {layers:>7}  {gib(share.weight_bytes)}  {gib(share.cache_bytes)}  {gib(total):>9}  "
            f"{gib(plan.gpu_memory - total)}  {extras}"
        )
        lines.append(row.rstrip())
    weights = [share.weight_bytes for share in plan.shares]
    lines.append(
        f"GiB per GPU. Weights: total {sum(weights) / GIB:.1f}, min {min(weights) / GIB:.1f}, "
        f"max {max(weights) / GIB:.1f} (max/min {max(weights) / min(weights):.3f})"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="model folder or config.json")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs (ids 0..N-1)")
    parser.add_argument("--gpu-memory", default="80GiB",
                        help="memory of each GPU: 80GiB, 141GB or a byte count (default 80GiB)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weight dtype (int8 = quanto int8)")
    parser.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH,
                        help=f"tokens of K/V cache to reserve per sequence (default {DEFAULT_CONTEXT_LENGTH})")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences decoded at once (default 1)")
    parser.add_argument("--headroom", default=DEFAULT_HEADROOM,
                        help=f"per-GPU reserve for activations and the CUDA context (default {DEFAULT_HEADROOM})")
    parser.add_argument("--json", action="store_true", help="print {module name: GPU index} as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.path)
        plan = plan_device_map(config, args.gpus, args.gpu_memory, args.dtype, args.headroom, args.context_length,
                               args.batch_size)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(json.dumps(plan.device_map, indent=1) if args.json else format_plan(plan))


if __name__ == "__main__":
    main()
