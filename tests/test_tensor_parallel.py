"""Tensor parallel on transformers' distributed engine, on CPU with gloo: 2 and 4 ranks launched through
`torch.distributed.run`, each running tests/tp_worker.py (many checks per launch; see there), against the same
checkpoint loaded whole in each rank.

The same launch loads the text and VL checkpoints with 8-bit weights quantized while loading (torchao and
optimum-quanto), sharded and in one process (`check_int8_tensor_parallel`). The tiny checkpoints have 8 heads and 4
KV heads, so both sizes split every layer; the prompts are left-padded to 49 tokens, crossing the lightning block
boundary (32 tokens at head_dim 16). The 2-rank run is also part of the oldest-version smoke run: transformers 5.17
has the same engine (and runs this plan unchanged).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from make_tiny_checkpoint import build_text_checkpoint, build_vl_checkpoint
from minimax_code import REPO_ROOT, load

tp = load("tensor_parallel_minimax_text_01")
config_module = load("configuration_minimax_text_01")
TOLERANCE = 1e-5  # fp32, relative to the largest logit


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_text):
    root = tmp_path_factory.mktemp("tp")
    return {
        "text": build_text_checkpoint(root / "text", num_attention_heads=8, num_key_value_heads=4),
        "vl": build_vl_checkpoint(root / "vl", num_attention_heads=8, num_key_value_heads=4),
        "small_kv": tiny_text,  # the default tiny model: 2 KV heads
    }


def launch(world_size: int, checkpoints, out) -> dict:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
        str(REPO_ROOT / "tests" / "tp_worker.py"),
        str(checkpoints["text"]), str(checkpoints["vl"]), str(checkpoints["small_kv"]), str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads(out.read_text())


def check_shards(report: dict, world_size: int, split_prefixes: dict[str, int]) -> None:
    """Every parameter under a split prefix is split on the expected dim with a local shape of 1/N (checked in the
    worker), every other parameter is whole."""
    assert report and all(entry["ok"] for entry in report.values()), {k: v for k, v in report.items() if not v["ok"]}
    for name, entry in report.items():
        expected = next((dim for key, dim in split_prefixes.items() if key in name), None)
        assert entry["split"] == expected, (name, entry)


# parameter name fragment -> split dim (0: output rows, 1: input columns)
TEXT_SPLITS = {
    "embed_tokens": 0, "lm_head": 0,
    "qkv_proj": 0, "output_gate": 0, "self_attn.norm": 0, "out_proj": 1,
    "q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1,
    ".w1.": 0, ".w3.": 0, ".w2.": 1,
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [pytest.param(2, marks=pytest.mark.smoke), 4])  # 5.17 runs the 2-rank one
def test_tensor_parallel_matches_single_process(world_size, checkpoints, tmp_path):
    result = launch(world_size, checkpoints, tmp_path / "result.json")
    measured = {key: result[key] for key in ("logits_rel_err", "cached_vs_uncached_rel_err", "vl_logits_rel_err")}
    print(f"TP {world_size}:", measured, "pipeline:", result.get("pipeline"), "grads:", result["grad_rel_err"])
    assert result["world_size"] == world_size
    check_shards(result["text_shards"], world_size, TEXT_SPLITS)
    assert max(result["text_lengths"]) > 32 > min(result["text_lengths"])  # left-padded, across a lightning block
    assert result["logits_rel_err"] <= TOLERANCE
    assert result["logits_identical_on_ranks"]
    assert result["cached_vs_uncached_rel_err"] <= TOLERANCE
    assert result["cache_heads"] == {"lightning": 8 // world_size, "softmax_kv": 4 // world_size}  # local heads only
    for mode, outcome in result["generate"].items():  # greedy, sampling (same seed), beam search
        assert outcome == {"equal": True, "identical_on_ranks": True}, mode
    assert result["grad_rel_err"] and max(result["grad_rel_err"].values()) <= TOLERANCE, result["grad_rel_err"]

    # VL: the language model split as above, the vision side whole
    vision = {name: entry for name, entry in result["vl_shards"].items() if not name.startswith("language_model.")}
    assert vision and all(entry["split"] is None for entry in vision.values())
    language = {n.removeprefix("language_model."): e for n, e in result["vl_shards"].items() if n not in vision}
    check_shards(language, world_size, TEXT_SPLITS)
    assert result["vl_logits_rel_err"] <= TOLERANCE
    assert result["vl_generate_equal"]

    if "pipeline" in result:  # transformers >= 5.2x: N/2-way tensor parallel x 2 pipeline stages
        pipeline = result["pipeline"]
        assert pipeline["layers_here"] == pipeline["layers"] // 2 and pipeline["tp_size"] == world_size // 2
        assert pipeline["logits_rel_err"] <= TOLERANCE and pipeline["generate_equal"]

    for name, cli in result["generate_cli"].items():  # scripts/generate.py under torchrun, text and VL
        assert cli["others_silent"], name
        assert cli["single_process"] and cli["rank0"].endswith(cli["single_process"]), (name, cli)
        assert cli["rank0"].startswith("user: ") and "assistant: " in cli["rank0"], (name, cli)

    refused = result["refused"]
    if "expert_parallel" in refused:
        assert f"ep_size={world_size}" in refused["expert_parallel"] and "nn.Linear" in refused["expert_parallel"]
    if world_size > 2:  # the default tiny model has 2 KV heads
        assert f"tp_size={world_size}" in refused["kv_heads"] and "num_key_value_heads=2" in refused["kv_heads"]
    else:
        assert refused["kv_heads"] is None


    assert "text_quanto_int8" in result["generate_cli"]
    has_torchao = importlib.util.find_spec("torchao") is not None  # a requirement; absent only in the oldest venv
    if has_torchao:
        assert "text_torchao_int8" in result["generate_cli"]
        assert "include_input_output_embeddings=True" in result["refused"]["torchao_embeddings"]
    check_int8_tensor_parallel(result, world_size, ("int8", "int8-dynamic", "float8") if has_torchao else ())


def check_int8_tensor_parallel(result: dict, world_size: int, torchao: tuple[str, ...]) -> None:
    """8-bit weights quantized while loading (the torchao weight types named in `torchao`, optimum-quanto int8),
    tensor parallel vs the same quantization in one process."""
    print(f"TP {world_size} 8-bit:", result["quantized"], "VL:", result["vl_int8"], "quanto gradients:",
          result["quanto_gradients"], "layouts:", {k: {"bytes": v["bytes"], "rows": v["row_split_equal_one_process"]}
                                                 for k, v in result["int8_layout"].items()})  # fmt: skip
    int8 = ("int8", "quanto-int8") if torchao else ("quanto-int8",)
    assert sorted(result["quantized"]) == sorted((*torchao, "quanto-int8"))
    assert sorted(result["int8_layout"]) == sorted(int8) and sorted(result["vl_int8"]) == sorted(int8)
    for weights, measured in result["quantized"].items():
        # within the quantization's own error against the exact model (w2 / o_proj / out_proj are quantized per
        # output channel over this rank's input columns only, so their scales differ from the whole model's)
        assert measured["tp_vs_alone"] <= measured["alone_vs_exact"], (weights, measured)
        assert 1e-4 < measured["alone_vs_exact"] < 1e-2, (weights, measured)  # quantized, and not broken
        assert measured["identical_on_ranks"] and measured["inference_mode_equal"], (weights, measured)
    # greedy tokens: equal for the int8 variants; float8's 4e-3 error flips near-ties of this random tiny model
    assert all(m["generate_equal"] for w, m in result["quantized"].items() if w != "float8"), result["quantized"]

    for weights, layout in result["int8_layout"].items():
        # every quantized weight is stored in 8 bits and holds exactly 1/N of its full weight along its split dim
        shards = layout["shards"]
        check_shards(shards, world_size, TEXT_SPLITS)
        assert all(entry["dtype"] == "int8" for entry in shards.values()), (weights, shards)
        rows = layout["row_split_equal_one_process"]  # qkv_proj, output_gate, q/k/v, w1, w3: per-row scales, as alone
        assert rows["count"] > 0 and rows["all"], (weights, rows)
        kept = {".".join("*" if part.isdigit() else part for part in n.split(".")) for n in layout["unquantized"]}
        assert kept == {"lm_head", "model.layers.*.block_sparse_moe.gate"}, kept  # the recipe's high-precision modules
        sizes = layout["bytes"]
        assert len(set(sizes["per_rank"])) == 1 and sizes["per_rank"][0] < sizes["alone"] / world_size * 1.1, sizes
        assert sizes["alone"] < sizes["fp32"] / 2.5, sizes
        # the lightning decay rates come from the rank's own heads (the quantized shards are no DTensors)
        heads_per_rank = 8 // world_size
        for rank, layers in enumerate(layout["lightning_heads"]):
            assert layers and all(h == list(range(rank * heads_per_rank, (rank + 1) * heads_per_rank)) for h in layers)

    for weights, vl in result["vl_int8"].items():
        assert vl["quantized_count"] > 0 and vl["quantized_outside_language_model"] == []  # the vision side stays whole
        assert vl["tp_vs_alone"] <= result["quantized"][weights]["alone_vs_exact"] * 2 and vl["generate_equal"], vl

    # quanto in training mode: the gradients of the full-precision parameters, through the frozen int8 weights, are
    # as close to one process's as that is to the exact model's
    grads = result["quanto_gradients"]
    assert grads["quantized_without_grad"] and len(grads["tp_vs_alone"]) == 6, grads  # the 6 parameters it names
    for name, error in grads["tp_vs_alone"].items():
        assert error <= 2 * grads["alone_vs_exact"][name] and grads["tp_vs_exact"][name] < 3e-2, (name, grads)


@pytest.mark.smoke
def test_layout_check_names_the_numbers():
    """The released config (64 heads, 8 KV heads): TP 8 passes, TP 16 and TP 3 are refused with both numbers; expert
    parallel is refused (where transformers has it), and pipeline parallel for VL-01."""
    from transformers.distributed import DistributedConfig

    config = config_module.MiniMaxText01Config()
    tp.check_parallel_layout(config, DistributedConfig(tp_size=8))
    tp.check_parallel_layout(config, DistributedConfig(tp_size=8, pp_size=2))
    tp.check_parallel_layout(config, None)
    with pytest.raises(ValueError, match="tp_size=16 does not divide num_key_value_heads=8"):
        tp.check_parallel_layout(config, DistributedConfig(tp_size=16))
    with pytest.raises(ValueError, match="tp_size=3 does not divide num_attention_heads=64"):
        tp.check_parallel_layout(config, DistributedConfig(tp_size=3))
    if "ep_size" in DistributedConfig.__dataclass_fields__:
        with pytest.raises(ValueError, match=r"Expert parallel \(ep_size=8\) is not supported"):
            tp.check_parallel_layout(config, DistributedConfig(tp_size=8, ep_size=8))
    vl_config = load("configuration_minimax_vl_01").MiniMaxVL01Config()
    tp.check_parallel_layout(vl_config, DistributedConfig(tp_size=8))
    with pytest.raises(ValueError, match="Pipeline parallel"):
        tp.check_parallel_layout(vl_config, DistributedConfig(tp_size=4, pp_size=2))


def test_lightning_heads_come_from_the_rank_place_in_the_plan():
    """Recording rank r of N gives every lightning layer the global heads [r H/N, (r+1) H/N) and their decay rates,
    whatever its weights look like (here plain, unsplit tensors, as torchao's quantized shards are)."""
    modeling = load("modeling_minimax_text_01")
    kernels = load("lightning_attention")
    config = config_module.MiniMaxText01Config(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=8, rotary_dim=4,
        intermediate_size=32, num_local_experts=2, vocab_size=64, attn_type_list=[0, 0, 0, 1],
    )  # fmt: skip
    model = modeling.MiniMaxText01ForCausalLM(config)
    tp.record_tensor_parallel_place(model, 2, 4)
    for i, layer in enumerate(model.model.layers[:3]):
        assert layer.self_attn.heads == range(4, 6)
        expected = kernels.lightning_slopes(8, i, 4)[4:6]
        assert torch.equal(-layer.self_attn.decay_rates(torch.device("cpu"))[0], expected)
        assert not torch.equal(expected, kernels.lightning_slopes(8, i, 4)[:2])  # rank 0's rates differ
    assert not hasattr(model.model.layers[3].self_attn, "heads")  # softmax layers: local head counts only


def test_quantizers_other_than_torchao_and_quanto_are_refused_under_tensor_parallel():
    """Tensor parallel quantizes each rank's slice while loading, which transformers does for torchao and
    optimum-quanto: the others are refused before loading, naming both ways; without tensor parallel they pass."""
    from transformers.distributed import DistributedConfig

    config = config_module.MiniMaxText01Config()
    config.quantization_config = {"quant_method": "torchao", "include_input_output_embeddings": True}
    with pytest.raises(ValueError, match="include_input_output_embeddings=True does not combine with tensor parallel"):
        tp.check_parallel_layout(config, DistributedConfig(tp_size=8))
    for method in ("torchao", "quanto", "bitsandbytes", "fp8"):
        config.quantization_config = {"quant_method": method}
        tp.check_parallel_layout(config, DistributedConfig(tp_size=1, pp_size=2))
        if method in ("torchao", "quanto"):
            tp.check_parallel_layout(config, DistributedConfig(tp_size=8))
            continue
        with pytest.raises(ValueError) as refused:
            tp.check_parallel_layout(config, DistributedConfig(tp_size=8))
        message = str(refused.value)
        assert f"{method} quantization is not supported" in message, message
        assert "DistributedConfig(tp_size=N), quantization_config=torchao_config(path)" in message, message
        assert "quanto_config(path)" in message, message


def test_quanto_layers_are_marked_to_run_on_local_shards():
    """Under tensor parallel every optimum-quanto layer is marked for transformers' local-shard path (the flag its
    torchao loader sets, its quanto loader does not): without it a forward with gradients enabled hands quanto's local
    int8 shards DTensor inputs and fails (`qbytes_mm got mixed torch.Tensor and DTensor`); tests/tp_worker.py checks
    the gradients with it. Other layers and other quantizers: no mark."""
    from optimum.quanto import QModuleMixin
    from quanto_config import quanto_config
    from transformers.integrations import replace_with_quanto_layers

    modeling = load("modeling_minimax_text_01")
    config = config_module.MiniMaxText01Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8, rotary_dim=4,
        intermediate_size=32, num_local_experts=2, vocab_size=64, attn_type_list=[0, 1],
    )  # fmt: skip
    quanto = quanto_config(config)
    for quantization, marked in ((quanto, True), ({"quant_method": "torchao"}, False)):
        model = modeling.MiniMaxText01ForCausalLM(config)
        # what transformers does before maybe_distribute_model
        replace_with_quanto_layers(model, quanto, quanto.modules_to_not_convert)
        model.config.quantization_config = quantization
        tp.run_quanto_layers_on_local_shards(model)
        layers = [m for m in model.modules() if isinstance(m, QModuleMixin)]
        assert len(layers) == 3 + 4 + 2 * 2 * 3  # lightning's 3 projections, softmax's 4, 2 x 2 experts' w1, w3, w2
        assert all(getattr(m, "_hf_quantized_needs_local_tp", False) == marked for m in layers)
        assert not any(hasattr(m, "_hf_quantized_needs_local_tp") for m in model.modules() if m not in layers)


def test_checkpoint_saved_quantized_is_refused_under_tensor_parallel(tiny_text, tmp_path):
    """A torchao int8 checkpoint saved already quantized loads in one process (same logits as the model it was saved
    from), and is refused under tensor parallel before anything loads, naming quantization while loading."""
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig
    from torchao_config import torchao_config

    pytest.importorskip("torchao")
    quantized = AutoModelForCausalLM.from_pretrained(tiny_text, trust_remote_code=True, dtype=torch.float32,
                                                     quantization_config=torchao_config(tiny_text))  # fmt: skip
    quantized.save_pretrained(tmp_path / "int8")
    saved = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "torchao"
    with pytest.raises(ValueError, match=r"saved already quantized \(torchao\).*quantization_config=torchao_config"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "int8", trust_remote_code=True,
                                             distributed_config=DistributedConfig(tp_size=2))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8", trust_remote_code=True)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, quantized(ids).logits)


@pytest.mark.smoke
def test_plan_names_only_real_modules_and_registered_styles():
    """Every rule of the plan matches a module of the released layer types, and every style is registered."""
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES

    modeling = load("modeling_minimax_text_01")
    config = config_module.MiniMaxText01Config(
        hidden_size=64, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=8, rotary_dim=4,
        intermediate_size=32, num_local_experts=4, vocab_size=128,
    )  # fmt: skip
    model = modeling.MiniMaxText01ForCausalLM(config)
    modules = {".".join("*" if part.isdigit() else part for part in name.split(".")) for name, _ in model.named_modules()}
    for rule, style in config.base_model_tp_plan.items():  # relative to the base model
        assert style in ALL_PARALLEL_STYLES and f"model.{rule}" in modules, (rule, style)
    for rule, style in modeling.MiniMaxText01ForCausalLM._tp_plan.items():
        assert style in ALL_PARALLEL_STYLES and rule in modules, (rule, style)
    assert set(model.tp_plan.values()) <= set(ALL_PARALLEL_STYLES)  # what transformers merged from both


# ------------------------------------------------------------------------------------------------------------------
# The tensor-parallel planner (scripts/device_map.py --tp), on the released configs
# ------------------------------------------------------------------------------------------------------------------

GIB = 2**30


def released_tp_weight_bytes(c, tp: int, layers: range, first: bool, last: bool) -> int:
    """bf16 bytes per GPU, in closed form (spec section 1): every Linear, the lightning norm, the embedding and
    lm_head split `tp` ways; the layer norms, router gates and the final norm whole."""
    D, hd, kvd, E, I = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, \
        c.num_local_experts, c.intermediate_size  # fmt: skip
    split = replicated = 0
    for i in layers:
        softmax = c.attn_type_list[i] == 1
        split += (hd * D + 2 * kvd * D + D * hd) if softmax else (3 * hd * D + hd * D + D * hd + hd)
        split += E * 3 * I * D
        replicated += 2 * D + E * D
    split += c.vocab_size * D * (first + last)
    replicated += D * last
    return 2 * (split // tp + replicated)


def released_tp_int8_bytes(c, tp: int) -> tuple[int, int]:
    """(weight bytes, scale bytes) per GPU of torchao int8 at TP `tp`, one stage, in closed form: every attention
    and expert Linear 1 byte per weight, split `tp` ways, with one fp32 scale per output row of this rank's part
    (a weight split by rows: 1/tp of its rows; by columns, the out_proj / o_proj / w2: all rows); the embedding,
    lm_head, lightning norm (split), layer norms and router gates (whole) in bf16."""
    D, hd, kvd, E, I = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, \
        c.num_local_experts, c.intermediate_size  # fmt: skip
    int8 = bf16 = scale_rows = 0
    for kind in c.attn_type_list:
        if kind == 1:  # q, k, v by rows, o_proj by columns
            int8 += (hd * D + 2 * kvd * D) // tp + D * hd // tp
            scale_rows += (hd + 2 * kvd) // tp + D
        else:  # qkv_proj, output_gate by rows, out_proj by columns; the lightning norm split in bf16
            int8 += 4 * hd * D // tp + D * hd // tp
            scale_rows += 4 * hd // tp + D
            bf16 += hd // tp
        int8 += E * 3 * I * D // tp  # w1, w3 by rows, w2 by columns
        scale_rows += E * (2 * I // tp + D)
        bf16 += 2 * D + E * D  # the two layer norms, the router gate
    bf16 += 2 * c.vocab_size * D // tp + D  # embedding, lm_head, final norm
    return int8 + 2 * bf16, 4 * scale_rows


def test_planner_text_tp8_fits_141gb_and_is_refused_on_80gb_with_what_fits(released_configs, released_meta_models):
    import device_map as dm

    c, meta = released_configs["text"], released_meta_models["text"]
    plan = dm.plan_tensor_parallel(c, 8, gpu_memory="141GB", model=meta)
    (stage,) = plan.stages
    assert stage.weight_bytes == released_tp_weight_bytes(c, 8, range(80), True, True) and stage.scale_bytes == 0
    assert abs(stage.weight_bytes / GIB - 106.2) < 0.05  # spec: 105.6 GiB + 0.6 GiB of split embedding / lm_head
    assert stage.kv_bytes == 10 * 2 * 1 * 128 * 32768 * 2  # 10 softmax layers, one KV head per GPU, bf16
    assert stage.state_bytes == 70 * 8 * 128 * 128 * 4  # 70 lightning layers, 8 heads per GPU, fp32
    assert stage.activation_bytes == dm.prefill_chunk_activation_bytes(c, 8192, 8)  # a chunk of 8,192 tokens
    assert plan.fits and 20 * GIB < plan.gpu_memory - stage.total(plan.headroom) < 21 * GIB

    with pytest.raises(ValueError) as refused:
        dm.plan_tensor_parallel(c, 8, gpu_memory="80GB", model=meta)
    message = str(refused.value)
    assert "does not fit GPUs of 74.5 GiB" in message and "needs 111.0 GiB" in message
    assert "--tp 8 --pp 2 (16 GPUs, 2 node(s) of 8)" in message  # more nodes
    assert "not --tp 16" in message and "8 KV heads" in message
    assert "--tp 8 --pp 1 --dtype int8 (torchao" in message  # int8 on one node, tensor parallel
    assert "--gpus 8 --dtype int8" in message  # int8 on one node, as a device map

    two_nodes = dm.plan_tensor_parallel(c, 8, pp=2, gpu_memory="80GB", model=meta)
    assert [s.layers for s in two_nodes.stages] == [range(0, 40), range(40, 80)]
    assert [s.weight_bytes for s in two_nodes.stages] == [
        released_tp_weight_bytes(c, 8, range(0, 40), True, False),
        released_tp_weight_bytes(c, 8, range(40, 80), False, True),
    ]


def test_planner_int8_tp8_holds_text01_on_8x80gb_at_32k_128k_1m(released_configs, released_meta_models):
    """torchao int8 at TP 8: the weights and scales per GPU equal the closed form, and 8 x 80 GB holds the model with
    1M tokens of context; bf16 does not fit there at any length."""
    import device_map as dm

    c, meta = released_configs["text"], released_meta_models["text"]
    weights, scales = released_tp_int8_bytes(c, 8)
    for context in (32768, 131072, 1048576):
        plan = dm.plan_tensor_parallel(c, 8, gpu_memory="80GB", dtype="int8", context_length=context, model=meta)
        (stage,) = plan.stages
        assert (stage.weight_bytes, stage.scale_bytes) == (weights, scales)
        assert stage.kv_bytes == 10 * 2 * 1 * 128 * context * 2 and stage.state_bytes == 70 * 8 * 128 * 128 * 4
        assert plan.fits and not dm.plan_tensor_parallel(c, 8, gpu_memory="80GB", context_length=context,
                                                         model=meta, check_fit=False).fits  # fmt: skip
    assert 53 * GIB < weights < 54 * GIB and 80 * 2**20 < scales < 90 * 2**20  # about half of bf16's 106.2 GiB


def test_planner_vl_keeps_the_vision_side_whole(released_configs, released_meta_models):
    import device_map as dm

    vl, text, meta = released_configs["vl"], released_configs["text"], released_meta_models["vl"]
    vision = sum(p.numel() * 2 for n, p in meta.named_parameters() if not n.startswith("language_model."))
    vision += sum(b.numel() * b.element_size() for n, b in meta.named_buffers() if not n.startswith("language_model."))
    (stage,) = dm.plan_tensor_parallel(vl, 8, gpu_memory="141GB", model=meta).stages
    assert stage.weight_bytes == released_tp_weight_bytes(vl.text_config, 8, range(80), True, True) + vision
    assert vl.text_config.num_hidden_layers == text.num_hidden_layers
    (int8,) = dm.plan_tensor_parallel(vl, 8, gpu_memory="80GB", dtype="int8", model=meta).stages
    weights, scales = released_tp_int8_bytes(text, 8)
    assert (int8.weight_bytes, int8.scale_bytes) == (weights + vision, scales)  # the vision side stays bf16


def test_planner_refusals_and_cli(released_configs, released_meta_models, released_config_files, capsys):
    import device_map as dm

    c, path = released_configs["text"], str(released_config_files["text"])
    with pytest.raises(ValueError, match="tp_size=16 does not divide num_key_value_heads=8"):
        dm.plan_tensor_parallel(c, 16, model=released_meta_models["text"])
    with pytest.raises(ValueError, match="Pipeline parallel"):
        dm.plan_tensor_parallel(released_configs["vl"], 8, pp=2)
    dm.main([path, "--tp", "8", "--gpu-memory", "141GB"])
    table = capsys.readouterr().out
    assert "tensor parallel 8 x 1 pipeline stage(s) = 8 GPUs of 131.3 GiB" in table and table.rstrip().endswith("Fits.")
    dm.main([path, "--tp", "8", "--gpu-memory", "80GB", "--dtype", "int8", "--fit-table"])
    rows = capsys.readouterr().out.splitlines()
    assert "int8, tensor parallel 8 x 1 stage(s), GPUs of 74.5 GiB" in rows[0]
    assert [row.split(" tokens:")[0].strip() for row in rows[1:]] == ["32,768", "131,072", "1,048,576"]
    assert all(": fits, " in row for row in rows[1:]), rows
    with pytest.raises(SystemExit):
        dm.main([path, "--tp", "8", "--json"])
    assert "needs none" in capsys.readouterr().err


def test_generate_script_layout_under_torchrun(monkeypatch, capsys, tiny_text):
    """generate.py: no layout in one process, TP x PP from WORLD_SIZE and --pp, refusals before anything loads."""
    import generate

    assert generate.distributed_layout(1) is None
    layout = generate.distributed_layout(4, 2)
    assert (layout.tp_size, layout.pp_size) == (2, 2)
    with pytest.raises(ValueError, match="--pp 3 must divide the number of processes"):
        generate.distributed_layout(4, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for extra in (["--device-map", "auto"], ["--pp", "3"]):  # --int8 is allowed: quanto int8 runs tensor parallel
        with pytest.raises(SystemExit):
            generate.main([str(tiny_text), "--prompt", "hi", *extra])
        assert "error:" in capsys.readouterr().err
