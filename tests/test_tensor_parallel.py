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
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    return {
        "text": build_text_checkpoint(root / "text", num_attention_heads=8, num_key_value_heads=4),
        "vl": build_vl_checkpoint(root / "vl", num_attention_heads=8, num_key_value_heads=4),
        "small_kv": build_text_checkpoint(root / "small-kv"),  # the default tiny model: 2 KV heads
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


@pytest.mark.parametrize("world_size", [pytest.param(2, marks=pytest.mark.smoke), 4])  # 5.17 runs the 2-rank one
def test_tensor_parallel_matches_single_process(world_size, checkpoints, tmp_path):
    result = launch(world_size, checkpoints, tmp_path / "result.json")
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
    names = {tp_name for tp_name, _ in model.named_modules()}
    generic = {".".join("*" if part.isdigit() else part for part in name.split(".")) for name in names}
    plan = {**config.base_model_tp_plan, **modeling.MiniMaxText01ForCausalLM._tp_plan}
    for rule, style in plan.items():
        assert style in ALL_PARALLEL_STYLES, style
        assert rule in {name.removeprefix("model.") for name in generic} | generic, rule
