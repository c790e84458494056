"""Tensor parallelism for MiniMax-Text-01 / VL-01 on transformers' distributed engine.

    torchrun --nproc-per-node 8 scripts/generate.py CHECKPOINT --prompt "..."   # tensor parallel over 8 ranks
    # in code, under torchrun (DistributedConfig from transformers.distributed):
    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                         distributed_config=DistributedConfig(tp_size=8))

The plan is `MiniMaxText01Config.base_model_tp_plan` (plus `lm_head` in the causal-LM class): Megatron-style, every
rank holds whole heads of every attention layer and a slice of every expert, so all ranks work on every token.
transformers' stock styles cover the linear layers; three things they cannot express are registered here:

- `minimax_lightning_norm`: the lightning RMSNorm normalises over all H * d channels of a token, across heads. Each
  rank holds its heads' channels and weights; the per-token sum of squares is all-reduced ([B, T, 1] per layer), and
  so is its gradient (every rank's channels were normalised by the total).
- `minimax_rowwise_partial`: an expert's w2, split by input columns (its w1 / w3 are split by rows), whose output
  stays this rank's partial sum, and `minimax_moe_sum`, which sums the MoE block's output over ranks once: one
  all-reduce per layer instead of one per active expert.
- `minimax_router`: the router stays replicated (every rank routes identically), but its routing weights scale
  this rank's partial expert outputs, so the gradient reaching its logits that way is partial: it is summed over
  ranks in the backward (the logits' own gradient, e.g. from the auxiliary loss, is replicated and counted once).

`prepare_distributed_model` runs in transformers' `maybe_distribute_model` step, before any weight is read: it
rejects the layouts this model cannot run (`check_parallel_layout`) and lets tensor and pipeline parallel combine.
The model code itself needs only local head counts (reshapes with -1) and the global indices of the heads a rank
holds, for their lightning decay rates: `record_tensor_parallel_place` sets them from the rank's place in the plan
when the plan is applied (never from the weights, which torchao or optimum-quanto quantization turns into plain local
shards); caches then hold only the local heads.
"""

import os

import torch
import torch.distributed as dist
from torch import nn

LIGHTNING_NORM = "minimax_lightning_norm"
ROWWISE_PARTIAL = "minimax_rowwise_partial"
MOE_SUM = "minimax_moe_sum"
ROUTER = "minimax_router"

if dist.is_available():
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from transformers.distributed.pipeline_parallel import PipelineIdentityLayer, apply_pipeline_parallelism
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES, TensorParallelLayer
else:  # a torch build without torch.distributed: nothing is ever sharded
    DTensor = TensorParallelLayer = None


def is_sharded(weight: torch.Tensor) -> bool:
    """True for a parameter the tensor-parallel engine split across ranks (a DTensor)."""
    return DTensor is not None and isinstance(weight, DTensor)


def tensor_parallel_place(mesh) -> tuple[int, int]:
    """(this rank's index in its tensor-parallel group, the group's size), from what transformers hands to
    `maybe_distribute_model`: a mesh manager (5.2x, `get_mesh("tp")`) or the device mesh itself (5.17, whose
    "tp" dimension is named when it has more than one)."""
    if hasattr(mesh, "get_mesh"):
        tp_mesh = mesh.get_mesh("tp")
    else:
        tp_mesh = mesh["tp"] if mesh.ndim > 1 else mesh
    return tp_mesh.get_local_rank(), tp_mesh.size()


def record_tensor_parallel_place(model, rank: int, size: int) -> None:
    """Tell every lightning layer which heads this rank holds (its `heads`, global indices): the plan splits
    qkv_proj / output_gate / norm by rows into `size` equal contiguous parts, rank r holding the r-th. Recorded here,
    once, from the rank's place in the plan, because after loading a weight need not say how it was split: a
    quantized shard (torchao, optimum-quanto) is a plain local tensor, not a DTensor."""
    for module in model.modules():
        if isinstance(getattr(module, "heads", None), range):  # MiniMaxText01LightningAttention
            share = len(module.heads) // size  # check_parallel_layout made sure `size` divides the heads
            module.heads = range(module.heads.start + rank * share, module.heads.start + (rank + 1) * share)


def run_quanto_layers_on_local_shards(model) -> None:
    """optimum-quanto quantizes each rank's slice of a weight as it is read, leaving a plain local quantized tensor
    where the plan put a DTensor. transformers' split layers run on local inputs with such weights only when marked
    `_hf_quantized_needs_local_tp` (its torchao and FP8 loaders mark their layers, its quanto loader does not);
    unmarked, a forward with gradients enabled hands quanto's matmul a DTensor input and fails (measured, 5.24/5.25:
    `quanto.qbytes_mm got mixed torch.Tensor and DTensor`). Marked, the input gradient of a split layer is summed
    over ranks by transformers, as for torchao. Called before the quanto layers' weights are read."""
    if quant_method(getattr(model.config, "quantization_config", None)) != "quanto":
        return
    from optimum.quanto import QModuleMixin  # installed: transformers has just built the quanto layers with it

    for module in model.modules():
        if isinstance(module, QModuleMixin):
            module._hf_quantized_needs_local_tp = True


def prepare_distributed_model(model, distributed_config, mesh=None) -> None:
    """Check the layout; for tensor x pipeline parallel, drop the modules other pipeline stages run before the
    tensor-parallel plan is resolved, and the plan's rules for them. (transformers 5.24 expands the plan over all
    layers, then drops them, then looks the planned layers up: KeyError. Its own pipeline step then finds nothing
    left to drop.)"""
    check_parallel_layout(model.config, distributed_config)
    if distributed_config is None:
        return
    if (distributed_config.tp_size or 1) > 1:
        record_tensor_parallel_place(model, *tensor_parallel_place(mesh))
        run_quanto_layers_on_local_shards(model)
    if (distributed_config.tp_size or 1) > 1 and (distributed_config.pp_size or 1) > 1 and hasattr(mesh, "get_mesh"):
        apply_pipeline_parallelism(model, mesh.get_mesh("pp"))
        elsewhere = {name for name, module in model.named_modules() if isinstance(module, PipelineIdentityLayer)}
        model.tp_plan = {rule: style for rule, style in model.tp_plan.items() if rule not in elsewhere}


def check_parallel_layout(config, distributed_config) -> None:
    """Raise a clear error, before loading, for a distributed layout this model cannot run."""
    if distributed_config is None:
        return
    text_config = config.get_text_config()
    tp_size = distributed_config.tp_size or 1
    ep_size = getattr(distributed_config, "ep_size", None) or 1  # transformers >= 5.2x
    if (distributed_config.pp_size or 1) > 1 and text_config is not config:
        raise ValueError(
            f"Pipeline parallel (pp_size={distributed_config.pp_size}) covers MiniMax-Text-01 only: transformers "
            "splits the decoder layers of a causal LM, not a model with a vision tower. Use tensor parallel "
            "(distributed_config=DistributedConfig(tp_size=N)) for MiniMax-VL-01."
        )
    if ep_size > 1:
        raise ValueError(
            f"Expert parallel (ep_size={ep_size}) is not supported by MiniMax-01: its experts are separate nn.Linear "
            "layers (so that int8 quantizers see them), while transformers' expert-parallel styles need the experts "
            "stacked in one module. Use tensor parallel (DistributedConfig(tp_size=N)): it splits every expert across "
            "the ranks, which keeps all GPUs busy at batch 1."
        )
    if tp_size == 1:
        return
    check_quantization_under_tensor_parallel(getattr(config, "quantization_config", None))
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    if heads % tp_size:
        raise ValueError(
            f"tp_size={tp_size} does not divide num_attention_heads={heads}: every rank must hold whole heads. "
            f"Use a tensor-parallel size that divides {heads}."
        )
    if kv_heads % tp_size:
        raise ValueError(
            f"tp_size={tp_size} does not divide num_key_value_heads={kv_heads}: every rank must hold whole KV heads "
            "of the softmax layers, and replicating KV heads across ranks is not implemented. Use a tensor-parallel "
            f"size that divides {kv_heads} (e.g. {kv_heads} GPUs per node) and add nodes as pipeline stages "
            "(pp_size), or fit the weights with fewer bytes."
        )


QUANTIZE_WHILE_LOADING = (
    "from_pretrained(<the bf16 checkpoint>, distributed_config=DistributedConfig(tp_size=N), "
    "quantization_config=torchao_config(path)) "
    "(scripts/torchao_config.py: torchao int8 weight-only, each rank reading its slice and quantizing it while "
    "loading; quanto_config(path) from scripts/quanto_config.py does the same with optimum-quanto int8)"
)


def quant_method(quantization_config) -> str | None:
    """'torchao', 'quanto', ... for a transformers quantization config object or its dict form."""
    if isinstance(quantization_config, dict):
        return quantization_config.get("quant_method")
    method = getattr(quantization_config, "quant_method", None)
    return getattr(method, "value", method)


def check_quantization_under_tensor_parallel(quantization_config) -> None:
    """Tensor parallel shards full-precision weights and quantizes each rank's slice while loading, which
    transformers does for torchao and optimum-quanto (whose layers `run_quanto_layers_on_local_shards` marks): refuse
    the other quantizers, naming the way that works."""
    method = quant_method(quantization_config)
    if method in (None, "quanto"):
        return
    if method == "torchao":
        settings = quantization_config if isinstance(quantization_config, dict) else vars(quantization_config)
        if settings.get("include_input_output_embeddings"):  # measured: IndexError in the split embedding lookup
            raise ValueError(
                "torchao with include_input_output_embeddings=True does not combine with tensor parallel: "
                "transformers cannot run a quantized embedding split by vocabulary. Keep the embeddings and lm_head "
                f"in bf16, as {QUANTIZE_WHILE_LOADING} does."
            )
        return
    raise ValueError(
        f"Tensor parallel with {method} quantization is not supported: transformers shards quantized weights while "
        f"loading for torchao and optimum-quanto only. Use {QUANTIZE_WHILE_LOADING}."
    )


HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def check_checkpoint_for_tensor_parallel(config_class, args: tuple, kwargs: dict) -> None:
    """`from_pretrained(*args, **kwargs)`'s first step under tensor parallel: a checkpoint saved already quantized
    cannot be split across ranks (transformers cannot shard torchao's quantized tensors: `Int8Tensor` has no
    `aten.view` under DTensor); refuse it before anything loads, naming the way that works."""
    layout = kwargs.get("distributed_config")
    if kwargs.get("tp_plan") is None and (layout is None or (layout.tp_size or 1) == 1):
        return
    config = kwargs.get("config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        values = config.to_dict()
    else:
        path = config or (args[0] if args else kwargs["pretrained_model_name_or_path"])
        values, _ = config_class.get_config_dict(path, **{k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs})
    method = quant_method(values.get("quantization_config") or {})
    if method is not None:
        raise ValueError(
            f"This checkpoint was saved already quantized ({method}), and tensor parallel cannot split quantized "
            f"weights. Quantize while loading instead: {QUANTIZE_WHILE_LOADING}; or load this checkpoint without "
            "tensor parallel (device_map)."
        )


if TensorParallelLayer is not None:

    def _replace_param(module: nn.Module, name: str, mesh, placement) -> None:
        """Swap a meta parameter for its DTensor placeholder: the loader then reads only this rank's slice."""
        meta = module._parameters[name]
        module._parameters[name] = nn.Parameter(
            distribute_tensor(meta, mesh, [placement], src_data_rank=None), requires_grad=meta.requires_grad
        )

    class _SumOverRanks(torch.autograd.Function):
        """All-reduce (sum) of partial results whose consumers are replicated: the gradient passes unchanged."""

        @staticmethod
        def forward(ctx, x, group):
            x = x.clone()
            dist.all_reduce(x, group=group)
            return x

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    def sum_over_ranks(x: torch.Tensor, group) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SumOverRanks.apply(x, group)
        dist.all_reduce(x, group=group)  # in place: x is a fresh output nobody else holds
        return x

    class _SumGradOverRanks(torch.autograd.Function):
        """Identity forward; the backward sums the (partial) gradients of all ranks, or averages them (`mean`) for a
        gradient that is already the same on every rank and must count once in a later sum."""

        @staticmethod
        def forward(ctx, x, group, mean):
            ctx.group, ctx.mean = group, mean
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            if ctx.mean:
                return grad / dist.get_world_size(ctx.group), None, None
            grad = grad.clone()
            dist.all_reduce(grad, group=ctx.group)
            return grad, None, None

    def sum_grad_over_ranks(x: torch.Tensor, group, mean: bool = False) -> torch.Tensor:
        return _SumGradOverRanks.apply(x, group, mean) if torch.is_grad_enabled() and x.requires_grad else x

    class LightningNormParallel(TensorParallelLayer):
        """RMSNorm over channels split across ranks: weight split like the channels, per-token sum of squares
        all-reduced and divided by the full width (the module's `mean_square` is replaced on the instance)."""

        def should_use_local_tensors(self, module):
            return True  # the forward multiplies by this rank's slice of the weight

        def shard_param(self, module, param, mesh, **kwargs):  # 5.2x adds config=, mesh_manager=
            _replace_param(module, param, mesh, Shard(0))

        def install_forward(self, module, mesh, **kwargs):
            group, width = mesh.get_group(), module.weight.shape[0]  # a DTensor's shape is the full one

            def mean_square(x32: torch.Tensor) -> torch.Tensor:
                total = sum_over_ranks(x32.pow(2).sum(-1, keepdim=True), group)  # [B, T, 1]
                return sum_grad_over_ranks(total, group) / width

            module.mean_square = mean_square
            return super().install_forward(module, mesh, **kwargs)

    class RowwisePartialParallel(TensorParallelLayer):
        """nn.Linear split by input columns, run on the local slice of its input; the output is left as this rank's
        partial sum for an enclosing `minimax_moe_sum` to reduce."""

        def should_use_local_tensors(self, module):
            return True

        def shard_param(self, module, param, mesh, **kwargs):  # 5.2x adds config=, mesh_manager=
            if param != "weight":
                raise ValueError(f"{ROWWISE_PARTIAL} shards bias-free layers only; got a `{param}`.")
            _replace_param(module, param, mesh, Shard(1))

    class MoeSumParallel(TensorParallelLayer):
        """Sum the MoE block's partial output over ranks (every rank ran its slice of every routed expert); the
        router logits are already identical on every rank."""

        def transform_output_post_forward(self, module, output, mesh, **kwargs):  # 5.2x adds config=
            hidden_states, router_logits = output
            group = mesh.get_group()
            return sum_over_ranks(hidden_states, group), sum_grad_over_ranks(router_logits, group, mean=True)

    class RouterParallel(TensorParallelLayer):
        """The replicated router gate, whose logits' gradient through the partial expert outputs is summed."""

        def transform_output_post_forward(self, module, output, mesh, **kwargs):  # 5.2x adds config=
            return sum_grad_over_ranks(output, mesh.get_group())

    ALL_PARALLEL_STYLES.register(LIGHTNING_NORM, LightningNormParallel())
    ALL_PARALLEL_STYLES.register(ROWWISE_PARTIAL, RowwisePartialParallel())
    ALL_PARALLEL_STYLES.register(MOE_SUM, MoeSumParallel())
    ALL_PARALLEL_STYLES.register(ROUTER, RouterParallel())
