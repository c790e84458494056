"""Tensor parallel on transformers' distributed engine, on CPU with gloo: 2 and 4 ranks launched through
`torch.distributed.run`, each running tests/tp_worker.py (many checks per launch; see there), against the same
checkpoint loaded whole in each rank.

The tiny checkpoints have 8 heads and 4 KV heads, so both sizes split every layer; the prompts are left-padded to
49 tokens, crossing the lightning block boundary (32 tokens at head_dim 16). The 2-rank run is also part of the
oldest-version smoke run: transformers 5.17 has the same engine (and runs this plan unchanged).
"""

import json
import os
import subprocess
import sys

import pytest

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
    assert "quantized" in refused["int8"] and "int8" in refused["int8"]
    if "expert_parallel" in refused:
        assert f"ep_size={world_size}" in refused["expert_parallel"] and "nn.Linear" in refused["expert_parallel"]
    if world_size > 2:  # the default tiny model has 2 KV heads
        assert f"tp_size={world_size}" in refused["kv_heads"] and "num_key_value_heads=2" in refused["kv_heads"]
    else:
        assert refused["kv_heads"] is None


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


def test_planner_text_tp8_fits_141gb_and_is_refused_on_80gb_with_what_fits(released_configs, released_meta_models):
    import device_map as dm

    c, meta = released_configs["text"], released_meta_models["text"]
    plan = dm.plan_tensor_parallel(c, 8, gpu_memory="141GB", model=meta)
    (stage,) = plan.stages
    assert stage.weight_bytes == released_tp_weight_bytes(c, 8, range(80), True, True)
    assert abs(stage.weight_bytes / GIB - 106.2) < 0.05  # spec: 105.6 GiB + 0.6 GiB of split embedding / lm_head
    assert stage.kv_bytes == 10 * 2 * 1 * 128 * 32768 * 2  # 10 softmax layers, one KV head per GPU, bf16
    assert stage.state_bytes == 70 * 8 * 128 * 128 * 4  # 70 lightning layers, 8 heads per GPU, fp32
    assert plan.fits and 20 * GIB < plan.gpu_memory - stage.total(plan.headroom) < 21 * GIB

    with pytest.raises(ValueError) as refused:
        dm.plan_tensor_parallel(c, 8, gpu_memory="80GB", model=meta)
    message = str(refused.value)
    assert "does not fit GPUs of 74.5 GiB" in message and "needs 110.4 GiB" in message
    assert "--tp 8 --pp 2 (16 GPUs, 2 node(s) of 8)" in message  # more nodes
    assert "not --tp 16" in message and "8 KV heads" in message
    assert "--gpus 8 --dtype int8" in message  # int8 on one node, as a device map

    two_nodes = dm.plan_tensor_parallel(c, 8, pp=2, gpu_memory="80GB", model=meta)
    assert [s.layers for s in two_nodes.stages] == [range(0, 40), range(40, 80)]
    assert [s.weight_bytes for s in two_nodes.stages] == [
        released_tp_weight_bytes(c, 8, range(0, 40), True, False),
        released_tp_weight_bytes(c, 8, range(40, 80), False, True),
    ]


def test_planner_vl_keeps_the_vision_side_whole(released_configs, released_meta_models):
    import device_map as dm

    vl, text, meta = released_configs["vl"], released_configs["text"], released_meta_models["vl"]
    vision = sum(p.numel() * 2 for n, p in meta.named_parameters() if not n.startswith("language_model."))
    vision += sum(b.numel() * b.element_size() for n, b in meta.named_buffers() if not n.startswith("language_model."))
    (stage,) = dm.plan_tensor_parallel(vl, 8, gpu_memory="141GB", model=meta).stages
    assert stage.weight_bytes == released_tp_weight_bytes(vl.text_config, 8, range(80), True, True) + vision
    assert vl.text_config.num_hidden_layers == text.num_hidden_layers


def test_planner_refusals_and_cli(released_configs, released_config_files, capsys):
    import device_map as dm

    c = released_configs["text"]
    with pytest.raises(ValueError, match="int8 .* does not combine with tensor parallel"):
        dm.plan_tensor_parallel(c, 8, dtype="int8")
    with pytest.raises(ValueError, match="tp_size=16 does not divide num_key_value_heads=8"):
        dm.plan_tensor_parallel(c, 16)
    with pytest.raises(ValueError, match="Pipeline parallel"):
        dm.plan_tensor_parallel(released_configs["vl"], 8, pp=2)
    dm.main([str(released_config_files["text"]), "--tp", "8", "--gpu-memory", "141GB"])
    table = capsys.readouterr().out
    assert "tensor parallel 8 x 1 pipeline stage(s) = 8 GPUs of 131.3 GiB" in table and table.rstrip().endswith("Fits.")
    with pytest.raises(SystemExit):
        dm.main([str(released_config_files["text"]), "--tp", "8", "--json"])
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
    for extra in (["--int8"], ["--device-map", "auto"], ["--pp", "3"]):
        with pytest.raises(SystemExit):
            generate.main([str(tiny_text), "--prompt", "hi", *extra])
        assert "error:" in capsys.readouterr().err
