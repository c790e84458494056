"""A balanced multi-GPU device map for MiniMax-Text-01 / MiniMax-VL-01, planned from the config alone; or, with
--tp, the per-GPU memory of a tensor-parallel (x pipeline) layout.

    python scripts/device_map.py PATH --gpus 8 [--gpu-memory 80GiB] [--dtype bfloat16|float16|float32|int8]
                                 [--context-length 32768] [--batch-size 1] [--headroom 4GiB] [--json]
    python scripts/device_map.py PATH --tp 8 [--pp 2] [--gpu-memory 141GB] [--dtype ...] [--context-length ...]

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

With `--tp N [--pp M]` (N x M GPUs under torchrun, see scripts/generate.py) every tensor the model's tensor-parallel
plan splits costs 1/N per GPU, the others (norms, router gates; for VL-01 the vision side) their full size; the
decoder layers are cut into M stages of equal layer counts as transformers does (embeddings on the first, the final
norm and lm_head on the last). The cache is split by heads too. `--dtype int8` there means torchao int8 weight-only,
quantized while loading (scripts/torchao_config.py): 1 byte per weight and one fp32 scale per output row, a rank
holding the scales of its rows (split by rows) or of all rows (split by columns); optimum-quanto int8 under tensor
parallel (scripts/quanto_config.py) holds the same int8 shards with bf16 scales, so it fits wherever torchao does.
The activations are those of a prefill in chunks of `--prefill-chunk` tokens (default 8192; set `prefill_chunk_size`
for longer prompts). A layout whose GPU would exceed `--gpu-memory` is refused with layouts that fit.

    python scripts/device_map.py CONFIG --tp 8 --gpu-memory 80GB --dtype int8 --fit-table   # 32K / 128K / 1M tokens
"""

import argparse
import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate

import torch
from accelerate.utils import convert_file_size_to_int
from torch import nn
from transformers.distributed import DistributedConfig
from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES, TensorParallelLayer
from transformers.quantizers.quantizers_utils import should_convert_module

from minimax_code import load
from quanto_config import VISION_MODULES, is_vl, load_config, modules_to_not_convert, text_part
from cli_args import positive_int

tensor_parallel = load("tensor_parallel_minimax_text_01")

GIB = 2**30
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "int8": torch.bfloat16}
SCALE_BYTES = 2  # quanto keeps one bf16 scale per output row of an int8 weight
TORCHAO_SCALE_BYTES = 4  # torchao keeps one fp32 scale per output row (tensor parallel's int8)
SCALE_SUFFIX = ".weight_scale"  # the name a quantized weight's scales are sized under
DEFAULT_PREFILL_CHUNK = 8192
FIT_TABLE_CONTEXTS = (32768, 131072, 1048576)
# the dim each parameter-sharding style of the plan splits (0: output rows, 1: input columns)
SPLIT_DIMS = {"colwise": 0, "colwise_gather_output": 0, "embedding_rowwise": 0, tensor_parallel.LIGHTNING_NORM: 0,
              "rowwise": 1, tensor_parallel.ROWWISE_PARTIAL: 1}  # fmt: skip
DEFAULT_HEADROOM = "4GiB"
DEFAULT_CONTEXT_LENGTH = 32768
MAX_SUGGESTED_STAGES = 8  # a refused tensor-parallel layout suggests up to this many pipeline stages (nodes)


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


def tensor_bytes(model: nn.Module, dtype: str, skip: list[str], scale_bytes: int = SCALE_BYTES) -> dict[str, int]:
    """Bytes of every parameter and buffer at `dtype`, by full name; with int8, a quantized weight's scales (one per
    output row) under `<module>.weight_scale`."""
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    sizes = {}
    for module_name, module in model.named_modules():
        # transformers' own matching, given only the skip names found in this name (they are literal module names,
        # and matching all of them against each of the ~8,000 Linear layers takes seconds)
        quantized = dtype == "int8" and isinstance(module, nn.Linear) and should_convert_module(
            module_name, [name for name in skip if name in module_name]
        )
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if quantized and name.endswith(".weight"):
                sizes[name] = param.numel()
                sizes[module_name + SCALE_SUFFIX] = scale_bytes * module.out_features
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


@dataclass
class StageShare:
    """What one GPU of a pipeline stage holds (every GPU of a stage holds the same amount)."""

    stage: int
    layers: range
    weight_bytes: int  # without the scales of int8 weights
    scale_bytes: int
    kv_bytes: int
    state_bytes: int
    activation_bytes: int  # a prefill chunk's peak (prefill_chunk_activation_bytes)

    def total(self, headroom: int) -> int:
        return (self.weight_bytes + self.scale_bytes + self.kv_bytes + self.state_bytes + self.activation_bytes
                + headroom)  # fmt: skip

    def breakdown(self, headroom: int) -> str:
        """What `total` adds up, in words."""
        return (f"weights {size(self.weight_bytes)}, scales {size(self.scale_bytes)}, K/V {size(self.kv_bytes)}, "
                f"lightning states {size(self.state_bytes)}, activations {size(self.activation_bytes)}, headroom "
                f"{size(headroom)}")


@dataclass
class TensorParallelPlan:
    model_name: str
    dtype: str
    tp: int
    gpu_memory: int
    headroom: int
    context_length: int
    batch_size: int
    prefill_chunk: int
    stages: list[StageShare]

    @property
    def fits(self) -> bool:
        return all(stage.total(self.headroom) <= self.gpu_memory for stage in self.stages)

    @property
    def fullest_stage(self) -> StageShare:
        return max(self.stages, key=lambda stage: stage.total(self.headroom))


def split_dims(model: nn.Module) -> dict[str, int]:
    """{parameter name: the dim the model's tensor-parallel plan splits it on}, for the parameters whose rule (naming
    the parameter or its module, `*` for layer and expert indices) has a style that shards parameters (the router's
    style, e.g., only adjusts gradients)."""
    plan = model.tp_plan
    split = {}
    for name, _ in model.named_parameters():
        generic = re.sub(r"\.\d+(?=\.|$)", ".*", name)
        style = plan.get(generic, plan.get(generic.rsplit(".", 1)[0]))
        if style is None or type(ALL_PARALLEL_STYLES[style]).shard_param is TensorParallelLayer.shard_param:
            continue
        if style not in SPLIT_DIMS:
            raise RuntimeError(f"The plan's style {style!r} splits {name}; device_map.SPLIT_DIMS must name its dim.")
        split[name] = SPLIT_DIMS[style]
    return split


def per_rank_bytes(sizes: dict[str, int], split: dict[str, int], tp: int) -> dict[str, int]:
    """`sizes` as one of `tp` ranks holds them: a split tensor 1/tp, and the scales of a weight split by rows too
    (those of a weight split by columns cover all its output rows on every rank)."""
    def ways(name: str) -> int:
        if name.endswith(SCALE_SUFFIX):
            return tp if split.get(name.removesuffix(SCALE_SUFFIX) + ".weight") == 0 else 1
        return tp if name in split else 1

    return {name: -(-size // ways(name)) for name, size in sizes.items()}


def stage_layers(n_layers: int, pp: int) -> list[range]:
    """transformers' pipeline split: equal layer counts, the remainder one each to the first stages."""
    per_stage, extra = divmod(n_layers, pp)
    starts = [s * per_stage + min(s, extra) for s in range(pp + 1)]
    return [range(a, b) for a, b in zip(starts, starts[1:])]


def plan_tensor_parallel(
    config,
    tp: int,
    pp: int = 1,
    gpu_memory="141GB",
    dtype: str = "bfloat16",
    headroom=DEFAULT_HEADROOM,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    batch_size: int = 1,
    model: nn.Module | None = None,
    check_fit: bool = True,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> TensorParallelPlan:
    """Per-GPU bytes of tensor parallel over `tp` GPUs x `pp` pipeline stages (int8: torchao, quantized while
    loading). Raises for a layout the model cannot run and, with `check_fit`, for one that does not fit (the message
    lists layouts that do)."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    text_config, _ = text_part(config)
    if tp < 1 or not 1 <= pp <= text_config.num_hidden_layers:
        raise ValueError(f"--tp must be >= 1 and --pp between 1 and the layer count, got {tp} and {pp}.")
    if context_length < 1 or batch_size < 1 or prefill_chunk < 1:
        raise ValueError(f"--context-length, --batch-size and --prefill-chunk must be positive, got {context_length}, "
                         f"{batch_size} and {prefill_chunk}.")  # fmt: skip
    tensor_parallel.check_parallel_layout(config, DistributedConfig(tp_size=tp, pp_size=pp))
    memory, reserve = parse_size(gpu_memory, "--gpu-memory"), parse_size(headroom, "--headroom")

    model = model if model is not None else build_meta_model(config)
    skip = modules_to_not_convert(config) if dtype == "int8" else []
    sizes = per_rank_bytes(tensor_bytes(model, dtype, skip, TORCHAO_SCALE_BYTES), split_dims(model), tp)
    first, layers, last = placement_units(config)
    units = first + layers + last

    def per_unit(names) -> tuple[int, list[int], int]:  # (first GPU's units, each layer, last GPU's units)
        totals = unit_bytes({name: sizes[name] for name in names}, units)
        return sum(totals[: len(first)]), totals[len(first) : -len(last)], sum(totals[-len(last) :])

    weights = per_unit([name for name in sizes if not name.endswith(SCALE_SUFFIX)])
    scales = per_unit([name for name in sizes if name.endswith(SCALE_SUFFIX)])
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()  # of the activations and K/V (bf16 for int8)
    caches = [c // tp for c in layer_cache_bytes(text_config, context_length, batch_size, element)]  # heads split
    softmax = [t == "full_attention" for t in text_config.layer_types]
    chunk = min(prefill_chunk, context_length)
    activations = prefill_chunk_activation_bytes(config, chunk, tp, batch_size, element)

    def stage_sum(parts: tuple[int, list[int], int], s: int, run: range) -> int:
        return sum(parts[1][i] for i in run) + (parts[0] if s == 0 else 0) + (parts[2] if s == pp - 1 else 0)

    stages = []
    for s, run in enumerate(stage_layers(len(layers), pp)):
        kv = sum(caches[i] for i in run if softmax[i])
        states = sum(caches[i] for i in run if not softmax[i])
        weight, scale = stage_sum(weights, s, run), stage_sum(scales, s, run)
        stages.append(StageShare(s, run, weight, scale, kv, states, activations))
    name = (config.architectures or [type(model).__name__])[0]
    plan = TensorParallelPlan(name, dtype, tp, memory, reserve, context_length, batch_size, chunk, stages)
    if check_fit and not plan.fits:
        raise ValueError(tensor_parallel_no_fit_message(plan, config, model))
    return plan


def tensor_parallel_no_fit_message(plan: TensorParallelPlan, config, model) -> str:
    """Why `plan` does not fit, and layouts of GPUs of the same size that do."""
    worst = plan.fullest_stage
    problem = (
        f"Tensor parallel {plan.tp} x {len(plan.stages)} stage(s) does not fit GPUs of {size(plan.gpu_memory)} in "
        f"{plan.dtype}: stage {worst.stage} needs {size(worst.total(plan.headroom))} per GPU "
        f"({worst.breakdown(plan.headroom)})"
    )
    options = []
    text_config, _ = text_part(config)
    most_stages = min(text_config.num_hidden_layers, MAX_SUGGESTED_STAGES)
    for tp in sorted({plan.tp, text_config.num_key_value_heads}):  # this split and the widest, with more stages
        pp = next((pp for pp in range(len(plan.stages) + 1, most_stages + 1) if _fits(config, model, plan, tp, pp)),
                  None)  # fmt: skip
        if pp is not None:
            options.append(f"--tp {tp} --pp {pp} ({tp * pp} GPUs, {math.ceil(tp * pp / 8)} node(s) of 8)")
    kv_heads = text_config.num_key_value_heads
    if plan.tp * 2 > kv_heads:
        options.append(f"(not --tp {plan.tp * 2}: tensor parallel splits the {kv_heads} KV heads, at most {kv_heads} ways)")
    if plan.dtype != "int8" and _fits(config, model, plan, plan.tp, len(plan.stages), "int8"):
        options.append(f"int8 weights under tensor parallel: --tp {plan.tp} --pp {len(plan.stages)} --dtype int8 "
                       "(torchao, quantized while loading)")  # fmt: skip
    try:
        gpus = plan.tp * len(plan.stages)
        plan_device_map(config, gpus, plan.gpu_memory, "int8", plan.headroom, plan.context_length, plan.batch_size,
                        model)  # fmt: skip
        options.append(f"int8 weights without tensor parallel: --gpus {gpus} --dtype int8 (a device map)")
    except ValueError:
        pass
    return f"{problem}. What fits: {'; '.join(options) or 'larger GPUs'}."


def _fits(config, model, plan: TensorParallelPlan, tp: int, pp: int, dtype: str | None = None) -> bool:
    try:
        return plan_tensor_parallel(config, tp, pp, plan.gpu_memory, dtype or plan.dtype, plan.headroom,
                                    plan.context_length, plan.batch_size, model, False, plan.prefill_chunk).fits
    except ValueError:
        return False


def format_tensor_parallel_plan(plan: TensorParallelPlan) -> str:
    def gib(n: int) -> str:
        return f"{n / GIB:8.2f}"

    gpus = plan.tp * len(plan.stages)
    dtype = "int8 (torchao, quantized while loading)" if plan.dtype == "int8" else plan.dtype
    lines = [
        f"{plan.model_name}: {dtype}, tensor parallel {plan.tp} x {len(plan.stages)} pipeline stage(s) = "
        f"{gpus} GPUs of {plan.gpu_memory / GIB:.1f} GiB; cache for {plan.context_length:,} tokens x batch "
        f"{plan.batch_size}, activations of a {plan.prefill_chunk:,}-token prefill chunk, {plan.headroom / GIB:.1f} "
        "GiB headroom per GPU",
        f"{'stage':>5}  {'layers':>7}  {'weights':>8}  {'scales':>8}  {'K/V':>8}  {'states':>8}  {'activ.':>8}  "
        f"{'+headroom':>9}  {'free':>8}",
    ]
    for stage in plan.stages:
        total = stage.total(plan.headroom)
        lines.append(
            f"{stage.stage:>5}  {f'{stage.layers.start}-{stage.layers.stop - 1}':>7}  {gib(stage.weight_bytes)}  "
            f"{gib(stage.scale_bytes)}  {gib(stage.kv_bytes)}  {gib(stage.state_bytes)}  "
            f"{gib(stage.activation_bytes)}  {gib(total):>9}  {gib(plan.gpu_memory - total)}"
        )
    lines.append(f"GiB per GPU (each of the {plan.tp} GPUs of a stage holds the same). "
                 + ("Fits." if plan.fits else "Does NOT fit."))  # fmt: skip
    return "\n".join(lines)


def prefill_chunk_activation_bytes(config, chunk: int, tp: int = 1, batch_size: int = 1, element: int = 2) -> int:
    """Peak activation bytes per GPU of a prefill fed in chunks of `chunk` tokens (`prefill_chunk_size`): what one
    decoder layer holds at once for one chunk, the largest of the three layer parts, on top of the residual stream.

    Residual stream: the layer input, its norm and the residual, [B, C, D] each. Lightning: qkv, q / k / v and the
    output in fp32, the gate, the projection: [B, C, H d / tp]-sized, plus [B, C, D]. Softmax: q, k, v and the
    log-sum-exp merge's fp32 partial outputs. MoE: the router's fp32 probabilities, and at worst one expert taking
    every token: its gathered input [B C, D] and w1 / w3 outputs [B C, I / tp], plus the [B, C, D] sum. Nothing
    here grows with the cached context (the K/V is counted as cache)."""
    text_config, _ = text_part(config)
    rows = batch_size * chunk
    D, inner = text_config.hidden_size, text_config.num_attention_heads * text_config.head_dim // tp
    kv_inner = text_config.num_key_value_heads * text_config.head_dim // tp
    residual = 3 * rows * D * element
    lightning = rows * inner * (4 * element + 4 * 4) + rows * D * element
    softmax = rows * (inner + 2 * kv_inner) * element + 3 * rows * inner * 4
    moe = rows * text_config.num_local_experts * 4 + rows * (2 * D + 2 * text_config.intermediate_size // tp) * element
    return residual + max(lightning, softmax, moe)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="model folder or config.json")
    layout = parser.add_mutually_exclusive_group(required=True)
    layout.add_argument("--gpus", type=int, help="number of GPUs (ids 0..N-1) for a device map")
    layout.add_argument("--tp", type=int, help="tensor-parallel GPUs per pipeline stage (per-GPU memory table)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages with --tp (default 1)")
    parser.add_argument("--gpu-memory", default="80GiB",
                        help="memory of each GPU: 80GiB, 141GB or a byte count (default 80GiB)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="weight dtype (int8: quanto int8 with --gpus; with --tp torchao int8, whose fp32 scales "
                        "bound quanto's)")  # fmt: skip
    parser.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH,
                        help=f"tokens of K/V cache to reserve per sequence (default {DEFAULT_CONTEXT_LENGTH})")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences decoded at once (default 1)")
    parser.add_argument("--headroom", default=DEFAULT_HEADROOM,
                        help=f"per-GPU reserve for activations and the CUDA context (default {DEFAULT_HEADROOM})")
    parser.add_argument("--prefill-chunk", type=positive_int, default=None,
                        help="also estimate the activations of a prefill in chunks of this many tokens, per GPU "
                        f"(with --tp they are in the table: default {DEFAULT_PREFILL_CHUNK})")
    parser.add_argument("--fit-table", action="store_true",
                        help="with --tp: whether the layout holds " + ", ".join(f"{n:,}" for n in FIT_TABLE_CONTEXTS)
                        + " tokens of context")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print {module name: GPU index} as JSON")
    args = parser.parse_args(argv)
    if args.tp is not None and args.json:
        parser.error("--json prints a device map; a tensor-parallel layout needs none (torchrun + DistributedConfig(tp_size=N)).")
    if args.fit_table and args.tp is None:
        parser.error("--fit-table goes with --tp.")
    try:
        config = load_config(args.path)
        if args.tp is not None:
            chunk = args.prefill_chunk or DEFAULT_PREFILL_CHUNK
            if args.fit_table:
                print(format_fit_table(config, args.tp, args.pp, args.gpu_memory, args.dtype, args.headroom,
                                       args.batch_size, chunk))  # fmt: skip
                return
            plan = plan_tensor_parallel(config, args.tp, args.pp, args.gpu_memory, args.dtype, args.headroom,
                                        args.context_length, args.batch_size, prefill_chunk=chunk)  # fmt: skip
            print(format_tensor_parallel_plan(plan))
            return
        plan = plan_device_map(config, args.gpus, args.gpu_memory, args.dtype, args.headroom, args.context_length,
                               args.batch_size)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(json.dumps(plan.device_map, indent=1) if args.json else format_plan(plan))
    if not args.json:
        print_chunk_activations(args, config, plan.headroom)


def format_fit_table(config, tp: int, pp: int, gpu_memory, dtype: str, headroom, batch_size: int, chunk: int) -> str:
    """Whether tensor parallel `tp` x `pp` holds the model at each of FIT_TABLE_CONTEXTS tokens: per GPU (of the
    fullest stage) the total and what is left."""
    name = (getattr(config, "architectures", None) or ["the model"])[0]
    memory = size(parse_size(gpu_memory, "--gpu-memory"))
    lines = [f"{name}, {dtype}, tensor parallel {tp} x {pp} stage(s), GPUs of {memory} (batch {batch_size}, prefill "
             f"chunks of {chunk:,} tokens, per GPU):"]  # fmt: skip
    model = build_meta_model(config)
    for context in FIT_TABLE_CONTEXTS:
        plan = plan_tensor_parallel(config, tp, pp, gpu_memory, dtype, headroom, context, batch_size, model, False,
                                    chunk)  # fmt: skip
        worst = plan.fullest_stage
        total = worst.total(plan.headroom)
        left = plan.gpu_memory - total
        verdict = f"fits, {size(left)} free" if plan.fits else f"does NOT fit, {size(-left)} short"
        lines.append(f"  {context:>9,} tokens: {size(total)} ({worst.breakdown(plan.headroom)}): {verdict}")
    return "\n".join(lines)


def print_chunk_activations(args, config, headroom: int) -> None:
    """A device map's (one GPU at a time) activation peak of a chunked prefill against the headroom."""
    if args.prefill_chunk is None:
        return
    element = 4 if args.dtype == "float32" else 2
    need = prefill_chunk_activation_bytes(config, args.prefill_chunk, 1, args.batch_size, element)
    verdict = "within" if need <= headroom else "MORE than"
    print(f"A prefill in chunks of {args.prefill_chunk:,} tokens holds about {need / GIB:.2f} GiB of activations per "
          f"GPU at its peak, {verdict} the {headroom / GIB:.1f} GiB headroom (independent of the context length).")


if __name__ == "__main__":
    main()
