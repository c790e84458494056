"""One tensor-parallel worker, launched N times by tests/test_tensor_parallel.py:

    python -m torch.distributed.run --standalone --nproc-per-node N tests/tp_worker.py TEXT VL SMALL_KV OUT.json

TEXT and VL are tiny checkpoints whose heads split N ways. Every rank loads each twice, whole (the reference) and
sharded (`distributed_config=DistributedConfig(tp_plan="auto")`, gloo on CPU), runs the same checks on both, and
rank 0 writes the measurements to OUT.json for the test to assert on; the same with 8-bit weights quantized while
loading (torchao, and optimum-quanto int8 with its gradients); SMALL_KV (fewer KV heads than N, or None) must be
refused. Many checks per launch: starting N processes costs far more than the checks themselves.
"""

import contextlib
import importlib.util
import io
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer
from transformers.distributed import DistributedConfig
from transformers.utils import logging as hf_logging

# A deprecation the project's own code triggers fails the run: warnings attributed to this worker, scripts/generate.py
# or a remote-code module (imported as transformers_modules.<checkpoint>.<file>, or minimax01.<file> from scripts).
PROJECT_MODULES = (r"(__main__|generate|.*\.(configuration|modeling|cache|tensor_parallel|processing|image_processing)"
                   r"_minimax_\w+|.*\.lightning_attention|.*\.loading_checks)$")  # fmt: skip
for category in (DeprecationWarning, FutureWarning):
    warnings.filterwarnings("error", category=category, module=PROJECT_MODULES)
hf_logging.set_verbosity_error()
torch.set_num_threads(1)

TEXT, VL, SMALL_KV, OUT = sys.argv[1:5]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import generate as generate_script  # noqa: E402  (scripts/generate.py)
from helpers import rel_err  # noqa: E402  (tests/helpers.py: this folder is sys.path[0])
from quanto_config import quanto_config  # noqa: E402  (scripts/quanto_config.py)
from torchao_config import torchao_config  # noqa: E402  (scripts/torchao_config.py)

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None  # a requirement; absent in the oldest-version venv

PROMPTS = ["Lightning attention keeps a running state per head, so decoding costs the same at every length.",
           "Softmax layers keep K and V."]  # fmt: skip


def identical_on_all_ranks(x: torch.Tensor) -> bool:
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return all(torch.equal(g, gathered[0]) for g in gathered)


def tensor_parallel() -> DistributedConfig:
    """The non-deprecated way to ask for tensor parallel: the config's plan over all ranks (tp_size = WORLD_SIZE)."""
    return DistributedConfig(tp_plan="auto")


def load_pair(path, quantization_config=None):
    """(whole model, tensor-parallel model), fp32 (quantized while loading with `quantization_config`), eval."""
    load = dict(trust_remote_code=True, dtype=torch.float32, quantization_config=quantization_config)
    whole = AutoModelForCausalLM.from_pretrained(path, **load).eval()
    sharded = AutoModelForCausalLM.from_pretrained(path, **load, distributed_config=tensor_parallel())
    return whole, sharded.eval()


def shard_report(whole, sharded, world: int) -> dict:
    """Every split parameter: its full shape, which dim is split, whether the local part is 1/N of it."""
    full = dict(whole.named_parameters())
    report = {}
    for name, param in sharded.named_parameters():
        if not hasattr(param, "placements"):
            report[name] = {"split": None, "ok": tuple(param.shape) == tuple(full[name].shape)}
            continue
        dim = param.placements[0].dim if param.placements[0].is_shard() else None
        local, expected = tuple(param.to_local().shape), list(full[name].shape)
        if dim is not None:
            expected[dim] //= world
        report[name] = {"split": dim, "ok": local == tuple(expected) and tuple(param.shape) == tuple(full[name].shape)}
    return report


def text_checks(results: dict) -> None:
    whole, sharded = load_pair(TEXT)
    world = dist.get_world_size()
    results["text_shards"] = shard_report(whole, sharded, world)
    tokenizer = AutoTokenizer.from_pretrained(TEXT, trust_remote_code=True)
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    results["text_lengths"] = batch["attention_mask"].sum(-1).tolist()
    with torch.no_grad():
        reference = whole(**batch, use_cache=False).logits
        logits = sharded(**batch, use_cache=False).logits
        results["logits_rel_err"] = rel_err(logits, reference)
        results["logits_identical_on_ranks"] = identical_on_all_ranks(logits)

        # cached prefill of all but the last 5 tokens, then 5 decode steps, against the uncached forward
        split = batch["input_ids"].shape[1] - 5
        out = sharded(input_ids=batch["input_ids"][:, :split], attention_mask=batch["attention_mask"][:, :split])
        steps, cache = [out.logits], out.past_key_values
        for t in range(split, batch["input_ids"].shape[1]):
            out = sharded(input_ids=batch["input_ids"][:, t : t + 1], attention_mask=batch["attention_mask"][:, : t + 1],
                          past_key_values=cache)  # fmt: skip
            steps.append(out.logits)
            cache = out.past_key_values
        results["cached_vs_uncached_rel_err"] = rel_err(torch.cat(steps, dim=1), logits)
        lightning = next(i for i, t in enumerate(sharded.config.attn_type_list) if t == 0)
        softmax = sharded.config.attn_type_list.index(1)
        results["cache_heads"] = {"lightning": cache.layers[lightning].state.shape[1],
                                  "softmax_kv": cache.layers[softmax].keys.shape[1]}  # fmt: skip

    generated = {}
    for mode, kwargs in {
        "greedy": dict(do_sample=False),
        "greedy, static cache": dict(do_sample=False, cache_implementation="static"),  # buffers of the local heads
        "sample": dict(do_sample=True, top_k=20, temperature=0.8),
        "beam": dict(do_sample=False, num_beams=3),
    }.items():
        tokens = []
        for model in (whole, sharded):
            torch.manual_seed(1234)  # same seed on every rank, so sampling draws the same tokens everywhere
            tokens.append(model.generate(**batch, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id, **kwargs))
        generated[mode] = {"equal": torch.equal(*tokens), "identical_on_ranks": identical_on_all_ranks(tokens[1])}
    results["generate"] = generated

    # training: the gradients of the split weights equal the matching slices of the whole model's gradients
    for model in (whole, sharded):
        backward(model, batch)
    results["grad_rel_err"] = gradient_errors(sharded, whole, (
        "layers.0.self_attn.norm", "layers.0.self_attn.qkv_proj", "layers.3.self_attn.q_proj",
        "layers.0.block_sparse_moe.experts.0.w2", "layers.0.block_sparse_moe.gate"))  # fmt: skip


def backward(model, batch) -> None:
    """One training step's backward (no optimizer step), with the router's auxiliary loss weighted up so that its
    replicated gradient would show if counted N times."""
    model.zero_grad()
    model.config.router_aux_loss_coef = 1.0
    model(**batch, labels=batch["input_ids"], use_cache=False, output_router_logits=True).loss.backward()


def gradient_errors(model, reference, keys) -> dict:
    """rel_err of each gradient of `model` whose name contains one of `keys` (a split one gathered whole) against the
    same parameter's gradient in `reference`."""
    full = dict(reference.named_parameters())
    errors = {}
    for name, param in model.named_parameters():
        if param.grad is not None and any(key in name for key in keys):
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            errors[name] = rel_err(grad, full[name].grad)
    return errors


def vl_checks(results: dict) -> None:
    whole, sharded = load_pair(VL)
    results["vl_shards"] = shard_report(whole, sharded, dist.get_world_size())
    processor = AutoProcessor.from_pretrained(VL, trust_remote_code=True)
    pixels = torch.Generator().manual_seed(0)
    picture = Image.fromarray(torch.randint(0, 256, (20, 336, 3), dtype=torch.uint8, generator=pixels).numpy())
    inputs = processor(text="<image>Describe the picture.", images=[picture], return_tensors="pt")
    with torch.no_grad():
        results["vl_logits_rel_err"] = rel_err(sharded(**inputs).logits, whole(**inputs).logits)
    tokens = [model.generate(**inputs, max_new_tokens=6, do_sample=False) for model in (whole, sharded)]
    results["vl_generate_equal"] = torch.equal(*tokens)


def pipeline_checks(results: dict) -> None:
    """Tensor x pipeline parallel (N/2 x 2 stages; N = 2: pipeline alone) on transformers >= 5.2x."""
    if "ep_size" not in DistributedConfig.__dataclass_fields__:  # 5.17 cannot combine them
        return
    world = dist.get_world_size()
    layout = DistributedConfig(tp_size=world // 2, pp_size=2)
    whole = AutoModelForCausalLM.from_pretrained(TEXT, trust_remote_code=True, dtype=torch.float32).eval()
    staged = AutoModelForCausalLM.from_pretrained(TEXT, trust_remote_code=True, dtype=torch.float32,
                                                  distributed_config=layout).eval()  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(TEXT, trust_remote_code=True)
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        err = rel_err(staged(**batch, use_cache=False).logits, whole(**batch, use_cache=False).logits)
    tokens = [m.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
              for m in (whole, staged)]  # fmt: skip
    layers = sum(type(layer).__name__ == "MiniMaxText01DecoderLayer" for layer in staged.model.layers)
    results["pipeline"] = {"tp_size": world // 2, "logits_rel_err": err, "generate_equal": torch.equal(*tokens),
                           "layers_here": layers, "layers": len(staged.model.layers)}  # fmt: skip


# the tensors a quantized weight is stored in: (quantized data, scales), torchao's and optimum-quanto's names
QUANTIZED_STORAGE = (("qdata", "scale"), ("_data", "_scale"))


def quantized_storage(param) -> tuple | None:
    """(data, scales) of a torchao- or optimum-quanto-quantized weight; None for any other parameter."""
    names = next((names for names in QUANTIZED_STORAGE if hasattr(param, names[0])), None)
    return None if names is None else tuple(getattr(param, name) for name in names)


def weight_bytes(model) -> int:
    """Bytes of this process's share of the parameters: a quantized weight's 8-bit data and scales, a DTensor's local
    part, every other parameter whole."""
    total = 0
    for param in model.parameters():
        param = param.to_local() if hasattr(param, "to_local") else param
        total += sum(part.numel() * part.element_size() for part in quantized_storage(param) or [param])
    return total


def quantized_shards(whole, sharded, world: int) -> dict:
    """Every quantized weight this rank holds (torchao or optimum-quanto): its storage dtype, the dim it is split on
    (where its shape differs from the full weight's) and whether it holds exactly 1/N of that dim."""
    full = dict(whole.named_parameters())
    report = {}
    for name, param in sharded.named_parameters():
        storage = quantized_storage(param)
        if storage is None:
            continue
        data = storage[0]
        local, expected = tuple(data.shape), tuple(full[name].shape)
        split = [dim for dim in range(len(expected)) if local[dim] != expected[dim]]
        ok = len(split) == 1 and local[split[0]] * world == expected[split[0]]
        report[name] = {"dtype": str(data.dtype).removeprefix("torch."), "split": split[0] if ok else None,
                        "ok": ok}  # fmt: skip
    return report


def quantization_configs(path, torchao_weights=("int8", "int8-dynamic", "float8")) -> dict:
    """name -> a config of 8-bit weights quantized while loading: torchao's `torchao_weights` types (where torchao is
    installed) and optimum-quanto int8, each with the recipe's modules kept in full precision."""
    torchao = torchao_weights if HAS_TORCHAO else ()
    return {**{weights: torchao_config(path, weights) for weights in torchao}, "quanto-int8": quanto_config(path)}


INT8 = ("int8", "quanto-int8")  # the configs whose shards, bytes and kept modules are reported too
QUANTO_GRADIENTS = ("embed_tokens", "layers.0.self_attn.norm", "layers.0.input_layernorm",
                    "layers.3.post_attention_layernorm", "layers.0.block_sparse_moe.gate", "lm_head")  # fmt: skip


def quantized_checks(results: dict) -> None:
    """8-bit weights, quantized while loading: the tensor-parallel model (every rank quantizing its slice of the fp32
    checkpoint) against the single-process quantized model and the exact one; torchao int8 weight-only and quanto
    int8 in full (text and VL, quanto's gradients too), torchao's int8-activation and float8 variants on the text
    model."""
    tokenizer = AutoTokenizer.from_pretrained(TEXT, trust_remote_code=True)
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    exact = AutoModelForCausalLM.from_pretrained(TEXT, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = exact(**batch, use_cache=False).logits
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    measured, layouts = {}, {}
    for name, quantization in quantization_configs(TEXT).items():
        pair = load_pair(TEXT, quantization)
        with torch.no_grad():
            alone, sharded = (model(**batch, use_cache=False).logits for model in pair)
        with torch.inference_mode():
            inference_mode = pair[1](**batch, use_cache=False).logits
        tokens = [model.generate(**batch, **greedy) for model in pair]
        measured[name] = {
            "alone_vs_exact": rel_err(alone, reference), "tp_vs_alone": rel_err(sharded, alone),
            "tp_vs_exact": rel_err(sharded, reference), "generate_equal": torch.equal(*tokens),
            "identical_on_ranks": identical_on_all_ranks(sharded),
            "inference_mode_equal": torch.equal(inference_mode, sharded),
        }  # fmt: skip
        if name in INT8:
            layouts[name] = int8_layout(exact, *pair)
        if name == "quanto-int8":
            results["quanto_gradients"] = quanto_gradients(exact, *pair, batch)
    results["quantized"], results["int8_layout"] = measured, layouts

    # VL-01: the language model quantized and split, the vision side in full precision and whole
    processor = AutoProcessor.from_pretrained(VL, trust_remote_code=True)
    picture = Image.fromarray(torch.full((30, 336, 3), 120, dtype=torch.uint8).numpy())
    inputs = processor(text="<image>Describe the picture.", images=[picture], return_tensors="pt")
    results["vl_int8"] = {}
    for name, quantization in quantization_configs(VL, torchao_weights=("int8",)).items():  # the INT8 ones
        vl = load_pair(VL, quantization)
        with torch.no_grad():
            alone, sharded = (model(**inputs).logits for model in vl)
        tokens = [model.generate(**inputs, max_new_tokens=6, do_sample=False) for model in vl]
        quantized = [n for n, param in vl[1].named_parameters() if quantized_storage(param) is not None]
        results["vl_int8"][name] = {
            "tp_vs_alone": rel_err(sharded, alone), "generate_equal": torch.equal(*tokens),
            "quantized_outside_language_model": [n for n in quantized if not n.startswith("language_model.")],
            "quantized_count": len(quantized),
        }  # fmt: skip


def int8_layout(exact, alone, sharded) -> dict:
    """Where an int8 tensor-parallel model's weights are: its quantized shards, whether those split by rows are this
    rank's rows of the one-process model's int8 data and scales, bit for bit (one scale per row: nothing else can
    differ), the Linear layers left unquantized, every rank's lightning heads, and the parameter bytes per rank, in
    one process and in fp32."""
    world, rank = dist.get_world_size(), dist.get_rank()
    heads, sizes = [None] * world, [None] * world
    dist.all_gather_object(heads, [list(layer.self_attn.heads) for layer in sharded.model.layers
                                   if hasattr(layer.self_attn, "heads")])  # fmt: skip
    dist.all_gather_object(sizes, weight_bytes(sharded))
    shards, whole = quantized_shards(exact, sharded, world), dict(alone.named_parameters())
    rows_equal = []
    for name, param in sharded.named_parameters():
        if shards.get(name, {}).get("split") == 0:
            local, full = quantized_storage(param), quantized_storage(whole[name])
            rows = slice(rank * len(local[0]), (rank + 1) * len(local[0]))
            rows_equal.append(all(torch.equal(part, whole_part[rows]) for part, whole_part in zip(local, full)))
    return {
        "shards": shards,
        "row_split_equal_one_process": {"count": len(rows_equal), "all": all(rows_equal)},
        "unquantized": sorted(name for name, module in sharded.named_modules()
                              if isinstance(module, torch.nn.Linear) and quantized_storage(module.weight) is None),
        "lightning_heads": heads,
        "bytes": {"per_rank": sizes, "alone": weight_bytes(alone), "fp32": weight_bytes(exact)},
    }  # fmt: skip


def quanto_gradients(exact, alone, sharded, batch) -> dict:
    """optimum-quanto int8 in training mode: a backward through the frozen int8 weights into the full-precision
    parameters (norms, router gates, embeddings, lm_head), tensor parallel against one process and both against the
    exact model; and whether every quantized weight stayed without a gradient, as in one process."""
    for model in (exact, alone, sharded):
        model.train()
        backward(model, batch)
        model.eval()
    return {
        "tp_vs_alone": gradient_errors(sharded, alone, QUANTO_GRADIENTS),
        "alone_vs_exact": gradient_errors(alone, exact, QUANTO_GRADIENTS),
        "tp_vs_exact": gradient_errors(sharded, exact, QUANTO_GRADIENTS),
        "quantized_without_grad": all(param.grad is None for param in sharded.parameters()
                                      if quantized_storage(param) is not None),
    }  # fmt: skip


def generate_cli(results: dict) -> None:
    """scripts/generate.py under torchrun (tensor parallel over all ranks) prints on rank 0 what the same script's
    functions print in one process, and nothing on the other ranks; text, VL, and text with torchao int8 and with
    optimum-quanto int8 weights."""
    image = Path(OUT).parent / "picture.png"
    Image.fromarray(torch.full((40, 336, 3), 90, dtype=torch.uint8).numpy()).save(image)
    outputs = {}
    # (name, checkpoint, images, quantization flags, the same as load_model's arguments)
    cases = [("text", TEXT, [], [], {}), ("vl", VL, [str(image)], [], {}),
             ("text_quanto_int8", TEXT, [], ["--int8"], {"int8": True})]  # fmt: skip
    cases += [("text_torchao_int8", TEXT, [], ["--torchao", "int8"], {"torchao": "int8"})] if HAS_TORCHAO else []
    for name, path, images, flags, quantization in cases:
        extra = [arg for picture in images for arg in ("--image", picture)] + flags
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            generate_script.main([str(path), "--prompt", "Hello there", "--max-new-tokens", "6", *extra])
        printed = [None] * dist.get_world_size()
        dist.all_gather_object(printed, stdout.getvalue())
        model, reader = generate_script.load_model(Path(path), "float32", **quantization)  # one process, whole model
        pictures = generate_script.read_images(images)
        messages = generate_script.chat_messages("Hello there", len(pictures))
        inputs = generate_script.build_inputs(reader, messages, pictures)
        alone = io.StringIO()
        with contextlib.redirect_stdout(alone):
            generate_script.generate(model, reader, inputs, 6)
        outputs[name] = {"rank0": printed[0], "others_silent": not any(printed[1:]), "single_process": alone.getvalue()}
    results["generate_cli"] = outputs


def refusals(results: dict) -> None:
    """Layouts refused before any weight is read: the error messages, or None where loading went through."""
    world = dist.get_world_size()
    cases = {}
    if "ep_size" in DistributedConfig.__dataclass_fields__:  # transformers >= 5.2x
        cases["expert_parallel"] = (TEXT, dict(distributed_config=DistributedConfig(tp_size=world, ep_size=world)))
    if SMALL_KV != "None":
        cases["kv_heads"] = (SMALL_KV, dict(distributed_config=tensor_parallel()))
    if HAS_TORCHAO:  # quantized embeddings cannot be split by vocabulary
        embeddings = torchao_config(TEXT)
        embeddings.include_input_output_embeddings = True
        cases["torchao_embeddings"] = (TEXT, dict(distributed_config=tensor_parallel(), quantization_config=embeddings))
    errors = {}
    for name, (path, kwargs) in cases.items():
        try:
            AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32, **kwargs)
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    results["refused"] = errors


def main():
    results = {"world_size": int(os.environ["WORLD_SIZE"])}  # the process group starts with the first sharded load
    text_checks(results)
    vl_checks(results)
    quantized_checks(results)
    pipeline_checks(results)
    generate_cli(results)
    refusals(results)
    if dist.get_rank() == 0:
        Path(OUT).write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
