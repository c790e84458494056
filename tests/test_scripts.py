"""Tests for the helper scripts: device_map.py, quanto_config.py, generate.py, prepare_hub_repo.py (CPU only).

Byte counts are checked against closed-form sizes of the released architecture written out here (spec sections 1, 2,
4.2), not against the planner's own sizing; the balancer against a brute force over every split.
"""

import itertools
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

import device_map as dm
import generate as gen
import prepare_hub_repo as hub
import quanto_config as qc
from helpers import l2_rel_err
from minimax_code import REPO_ROOT

GIB = 2**30
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}

# ------------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------------


def load_tiny(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32, **kwargs).eval()


def token_ids(config, seed=0, shape=(2, 24)):
    return torch.randint(3, config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------------
# Closed-form sizes of the released text architecture (spec section 2)
# ------------------------------------------------------------------------------------------------------------------


def layer_linears(c, softmax: bool) -> list[tuple[int, int]]:
    """(out, in) of every quantizable Linear of one decoder layer."""
    D, hd, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    attn = [(hd, D), (kv, D), (kv, D), (D, hd)] if softmax else [(3 * hd, D), (hd, D), (D, hd)]
    experts = [(c.intermediate_size, D), (c.intermediate_size, D), (D, c.intermediate_size)] * c.num_local_experts
    return attn + experts


def layer_bytes(c, softmax: bool, int8: bool) -> int:
    D, hd = c.hidden_size, c.num_attention_heads * c.head_dim
    unquantized = 2 * D + c.num_local_experts * D + (0 if softmax else hd)  # two norms, router gate, lightning norm
    linears = layer_linears(c, softmax)
    if int8:  # 1 byte per weight + one bf16 scale per output row
        return 2 * unquantized + sum(o * i + 2 * o for o, i in linears)
    return 2 * (unquantized + sum(o * i for o, i in linears))


def released_bytes(c, int8: bool) -> tuple[int, list[int], int]:
    """(embed_tokens, per layer, norm + lm_head) bytes."""
    layers = [layer_bytes(c, t == 1, int8) for t in c.attn_type_list]
    return 2 * c.vocab_size * c.hidden_size, layers, 2 * c.hidden_size + 2 * c.vocab_size * c.hidden_size


def layer_cache(c, softmax: bool, tokens: int, batch: int = 1) -> int:
    if softmax:  # K and V, bf16, [B, 8, T, 128]
        return 2 * batch * c.num_key_value_heads * tokens * c.head_dim * 2
    return batch * c.num_attention_heads * c.head_dim**2 * 4  # fp32 [B, 64, 128, 128]


def gpu_layers(plan) -> list[list[int]]:
    return [[int(m.rsplit(".", 1)[1]) for m in s.modules if ".layers." in m] for s in plan.shares]


def check_whole_contiguous_layers(plan, n_layers):
    per_gpu = gpu_layers(plan)
    assert all(layers == list(range(layers[0], layers[-1] + 1)) for layers in per_gpu), "contiguous runs"
    assert [i for layers in per_gpu for i in layers] == list(range(n_layers)), "every layer once, in order"
    # whole layers: the map names layers, never their submodules
    assert all(k.split(".")[-1].isdigit() for k in plan.device_map if ".layers." in k)


# ------------------------------------------------------------------------------------------------------------------
# device_map.py
# ------------------------------------------------------------------------------------------------------------------


def test_released_text_int8_on_8x80(released_configs, released_meta_models):
    c = released_configs["text"]
    plan = dm.plan_device_map(c, gpus=8, gpu_memory="80GiB", dtype="int8", model=released_meta_models["text"])
    check_whole_contiguous_layers(plan, 80)
    device_map = plan.device_map
    assert device_map["model.embed_tokens"] == 0 and device_map["model.norm"] == 7 and device_map["lm_head"] == 7

    embed, layers, head = released_bytes(c, int8=True)
    for share, ids in zip(plan.shares, gpu_layers(plan)):
        expected = sum(layers[i] for i in ids) + (embed if share.gpu == 0 else 0) + (head if share.gpu == 7 else 0)
        assert share.weight_bytes == expected
        tokens = dm.DEFAULT_CONTEXT_LENGTH
        assert share.cache_bytes == sum(layer_cache(c, c.attn_type_list[i] == 1, tokens) for i in ids)
        assert share.weight_bytes + share.cache_bytes + 4 * GIB <= 80 * GIB  # headroom honoured
    weights = [s.weight_bytes for s in plan.shares]
    print("\n" + dm.format_plan(plan))
    assert max(weights) / min(weights) <= 1.25


def test_released_text_bf16_refused_on_8x80_and_fits_on_8x141(released_configs, released_meta_models):
    c, text_meta = released_configs["text"], released_meta_models["text"]
    # 456.1 B parameters (spec section 1) at 2 bytes
    embed, layers, head = released_bytes(c, int8=False)
    assert round((embed + sum(layers) + head) / 2 / 1e9, 1) == 456.1
    refusal = r"does not fit on 8 GPU.*80\.0 GiB in bfloat16.*needed 883\.\d GiB.*--dtype int8"
    with pytest.raises(ValueError, match=refusal):
        dm.plan_device_map(c, gpus=8, gpu_memory="80GiB", dtype="bfloat16", model=text_meta)
    plan = dm.plan_device_map(c, gpus=8, gpu_memory="141GiB", dtype="bfloat16", model=text_meta)
    check_whole_contiguous_layers(plan, 80)
    assert sum(s.weight_bytes for s in plan.shares) == embed + sum(layers) + head


def test_headroom_and_cache_are_reserved(released_configs, released_meta_models):
    c, text_meta = released_configs["text"], released_meta_models["text"]
    # 1M tokens of K/V: 4 GiB per softmax layer; 10 GiB headroom
    plan = dm.plan_device_map(c, 8, "141GiB", "bfloat16", headroom="10GiB", context_length=2**20, model=text_meta)
    for share, ids in zip(plan.shares, gpu_layers(plan)):
        assert share.cache_bytes == sum(layer_cache(c, c.attn_type_list[i] == 1, 2**20) for i in ids)
        assert share.weight_bytes + share.cache_bytes + 10 * GIB <= 141 * GIB
    # 40 GiB of headroom leaves 101 GiB per GPU: 849.5 GiB of bf16 weights cannot fit in 8 x 101
    with pytest.raises(ValueError, match=r"headroom 8 x 40\.0 GiB\).*smaller --context-length / --batch-size"):
        dm.plan_device_map(c, 8, "141GiB", "bfloat16", headroom="40GiB", model=text_meta)


def test_released_vl_plan(released_configs, released_meta_models):
    vl_config, model = released_configs["vl"], released_meta_models["vl"]
    plan = dm.plan_device_map(vl_config, gpus=8, gpu_memory="80GiB", dtype="int8", model=model)
    check_whole_contiguous_layers(plan, 80)
    device_map = plan.device_map
    for name in ["vision_tower", "multi_modal_projector", "image_newline", "language_model.model.embed_tokens"]:
        assert device_map[name] == 0
    assert device_map["language_model.model.norm"] == device_map["language_model.lm_head"] == 7
    # every parameter is placed by exactly one key
    for name, _ in model.named_parameters():
        owners = [k for k in device_map if name == k or name.startswith(k + ".")]
        assert len(owners) == 1, name
    # GPU 0 carries the vision side in bf16 (and CLIP's int64 position_ids buffer, 577 x 8 bytes) on top of the
    # text model's share
    vision = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("language_model.")) * 2 + 577 * 8
    embed, layers, _ = released_bytes(vl_config.text_config, int8=True)
    assert plan.shares[0].weight_bytes == vision + embed + sum(layers[i] for i in gpu_layers(plan)[0])
    weights = [s.weight_bytes for s in plan.shares]
    assert max(weights) / min(weights) <= 1.25


def test_balanced_cuts_is_the_best_split():
    """Brute force over every split of 7 layers on 3 GPUs: the smallest sum of squared loads under the cap."""
    rng = random.Random(0)
    for _ in range(20):
        costs = [rng.randint(1, 9) for _ in range(7)]
        first, last, cap = rng.randint(0, 5), rng.randint(0, 5), rng.randint(10, 30)
        best = None
        for a, b in itertools.combinations(range(1, 7), 2):
            loads = [sum(costs[:a]) + first, sum(costs[a:b]), sum(costs[b:]) + last]
            if max(loads) <= cap and (best is None or sum(x * x for x in loads) < best[0]):
                best = (sum(x * x for x in loads), loads)
        cuts = dm.balanced_cuts(costs, first, last, 3, cap)
        if best is None:
            assert cuts is None
            continue
        loads = [sum(costs[i:j]) for i, j in zip(cuts, cuts[1:])]
        loads[0] += first
        loads[-1] += last
        assert sum(x * x for x in loads) == best[0] and max(loads) <= cap


def test_device_map_bad_inputs(tmp_path, tiny_text):
    config = qc.load_config(tiny_text)
    with pytest.raises(ValueError, match=r"--gpus must be between 1 and the number of decoder layers \(8\), got 0"):
        dm.plan_device_map(config, gpus=0)
    with pytest.raises(ValueError, match=r"--gpus must be between 1 and .* got 9"):
        dm.plan_device_map(config, gpus=9)
    with pytest.raises(ValueError, match=r"Unknown dtype 'int3'; use one of bfloat16, float16, float32, int8"):
        dm.plan_device_map(config, gpus=2, dtype="int3")
    with pytest.raises(ValueError, match=r"--gpu-memory 'lots' is not a size; write it like 80GiB"):
        dm.plan_device_map(config, gpus=2, gpu_memory="lots")
    with pytest.raises(ValueError, match=r"--headroom 4GiB leaves nothing of --gpu-memory 1GiB"):
        dm.plan_device_map(config, gpus=2, gpu_memory="1GiB")
    with pytest.raises(ValueError, match=r"one decoder layer with its cache needs \d+\.\d MiB but a GPU has 0\.1 MiB"):
        dm.plan_device_map(config, gpus=2, gpu_memory="0.1MiB", headroom="0GiB")
    with pytest.raises(FileNotFoundError, match="neither a model folder with a config.json nor a config.json file"):
        qc.load_config(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        qc.load_config(tmp_path)  # a folder without config.json
    (tmp_path / "notes.txt").write_text("not json")
    with pytest.raises(ValueError, match="is not a JSON config file"):
        qc.load_config(tmp_path / "notes.txt")
    (tmp_path / "llama.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'; these scripts handle MiniMax-01 models only"):
        qc.load_config(tmp_path / "llama.json")


def test_device_map_cli(tiny_text, capsys):
    dm.main([str(tiny_text / "config.json"), "--gpus", "2", "--gpu-memory", "1GiB", "--headroom", "0.5GiB", "--json"])
    device_map = json.loads(capsys.readouterr().out)
    assert device_map == {
        "model.embed_tokens": 0, **{f"model.layers.{i}": int(i >= 4) for i in range(8)}, "model.norm": 1, "lm_head": 1
    }
    dm.main([str(tiny_text), "--gpus", "2", "--dtype", "int8"])
    table = capsys.readouterr().out
    assert "int8 weights on 2 x 80.0 GiB" in table and "0-3" in table and "4-7" in table
    with pytest.raises(SystemExit):
        dm.main([str(tiny_text), "--gpus", "0"])
    assert "--gpus must be between 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dm.main([str(tiny_text), "--gpus", "2", "--dtype", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err


@pytest.mark.smoke
def test_offloaded_dispatch_matches_plain_model(tiny_text, tmp_path):
    """The planner's map, GPU 0 -> cpu and GPU 1 -> disk, dispatched by accelerate: same logits, same tokens."""
    plan = dm.plan_device_map(qc.load_config(tiny_text), gpus=2, gpu_memory="1GiB", headroom="0.5GiB")
    offload_map = {name: ["cpu", "disk"][gpu] for name, gpu in plan.device_map.items()}
    plain = load_tiny(tiny_text)
    offloaded = load_tiny(tiny_text, device_map=offload_map, offload_folder=str(tmp_path))
    assert offloaded.hf_device_map == offload_map
    # disk-offloaded weights stay on the meta device until their module runs (read from the safetensors file)
    layers = offloaded.model.layers
    assert offloaded.lm_head.weight.is_meta and layers[4].block_sparse_moe.experts[0].w1.weight.is_meta
    assert layers[3].block_sparse_moe.experts[0].w1.weight.device.type == "cpu"
    ids = token_ids(plain.config)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(ids).logits, plain(ids).logits, rtol=0, atol=0)
    greedy = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(offloaded.generate(ids[:1], **greedy), plain.generate(ids[:1], **greedy))


# ------------------------------------------------------------------------------------------------------------------
# quanto_config.py
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_quanto_int8_quantizes_experts_and_attention_only(tiny_text):
    from optimum.quanto import QModuleMixin

    c = qc.load_config(tiny_text)
    quantization_config = qc.quanto_config(tiny_text)
    skip = quantization_config.modules_to_not_convert
    model = load_tiny(tiny_text, quantization_config=quantization_config)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QModuleMixin)}
    n_softmax = sum(t == 1 for t in c.attn_type_list)
    expected = c.num_local_experts * 3 * c.num_hidden_layers + 4 * n_softmax + 3 * (c.num_hidden_layers - n_softmax)
    assert len(quantized) == expected == 4 * 3 * 8 + 4 * 2 + 3 * 6
    assert not quantized & set(skip)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - quantized == {"lm_head"} | {f"model.layers.{i}.block_sparse_moe.gate" for i in range(8)}

    plain = load_tiny(tiny_text)
    ids = token_ids(c)
    with torch.no_grad():
        reference, int8 = plain(ids).logits, model(ids).logits
    error = l2_rel_err(int8, reference)
    print(f"\nint8 vs fp32 logits: relative L2 error {error:.2e}, max abs {(int8 - reference).abs().max():.2e} "
          f"(max |logit| {reference.abs().max():.2f})")
    assert error < 1e-2  # per-row int8 weights; measured ~7e-4 on this checkpoint
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4) and torch.equal(out[:, : ids.shape[1]], ids[:1])


def test_quanto_skip_lists_name_real_modules(released_configs, released_meta_models, released_config_files, capsys):
    text_config = released_configs["text"]
    skip = qc.modules_to_not_convert(text_config)
    assert skip[:2] == ["lm_head", "model.embed_tokens"] and len(skip) == 2 + 2 * 80
    assert "model.layers.79.coefficient" in skip and "model.layers.79.block_sparse_moe.gate" in skip
    # `coefficient` exists only with a shared expert (absent from the release); every other name is a module
    modules = dict(released_meta_models["text"].named_modules())
    assert all(name in modules for name in skip if not name.endswith("coefficient"))
    vl_skip = qc.modules_to_not_convert(released_configs["vl"])
    assert vl_skip[:5] == [
        "vision_tower", "multi_modal_projector", "image_newline", "language_model.lm_head",
        "language_model.model.embed_tokens",
    ]  # fmt: skip
    assert "language_model.model.layers.0.block_sparse_moe.gate" in vl_skip
    qc.main([str(released_config_files["vl"]), "--json"])
    assert json.loads(capsys.readouterr().out) == {"weights": "int8", "modules_to_not_convert": vl_skip}
    with pytest.raises(ValueError, match="Unknown quanto weight type 'int3'"):
        qc.quanto_config(text_config, weights="int3")


def test_torchao_recipe_quantizes_what_quanto_does(tiny_text, capsys):
    """scripts/torchao_config.py: the same modules kept as the quanto recipe; int8 weights (torchao Int8Tensor) on
    exactly the expert and attention Linear layers; logits close to fp32."""
    pytest.importorskip("torchao")
    import torchao_config as tc

    c = qc.load_config(tiny_text)
    assert tc.torchao_config(c).modules_to_not_convert == qc.modules_to_not_convert(c)
    model = load_tiny(tiny_text, quantization_config=tc.torchao_config(tiny_text))
    quantized = {name.removesuffix(".weight"): p for name, p in model.named_parameters() if hasattr(p, "qdata")}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - set(quantized) == {"lm_head"} | {f"model.layers.{i}.block_sparse_moe.gate" for i in range(8)}
    assert {p.qdata.dtype for p in quantized.values()} == {torch.int8}
    plain = load_tiny(tiny_text)
    ids = token_ids(c)
    with torch.no_grad():
        reference, int8 = plain(ids).logits, model(ids).logits
    error = l2_rel_err(int8, reference)
    assert 1e-5 < error < 1e-2, error  # quantized, per-row int8 weights

    tc.main([str(tiny_text), "--json", "--weights", "int8-dynamic"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["quant_method"] == "torchao"
    assert printed["quant_type"]["default"]["_type"] == "Int8DynamicActivationInt8WeightConfig"
    with pytest.raises(ValueError, match="Unknown torchao weight type 'int4'"):
        tc.torchao_config(c, weights="int4")


# ------------------------------------------------------------------------------------------------------------------
# generate.py
# ------------------------------------------------------------------------------------------------------------------


def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=OFFLINE_ENV,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.mark.slow
def test_generate_cli_text(tiny_text):
    result = run_script("scripts/generate.py", tiny_text, "--prompt", "Tell me about lightning attention.",
                        "--system", "Be brief.", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["system: Be brief.", "user: Tell me about lightning attention."]
    assert lines[2].startswith("assistant: ")
    assert "MiniMaxText01ForCausalLM" in result.stderr and "tokens/s" in result.stderr


@pytest.mark.slow
def test_generate_cli_image(tiny_vl, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(image)
    result = run_script("scripts/generate.py", tiny_vl, "--prompt", "Describe this image.", "--image", image,
                        "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "user: <image red.png> Describe this image." in result.stdout and "tokens/s" in result.stderr

    result = run_script("scripts/generate.py", tiny_vl, "--prompt", "hi", "--image", tmp_path / "missing.png")
    assert result.returncode == 2 and f"Cannot read image {tmp_path / 'missing.png'}" in result.stderr
    assert "assistant:" not in result.stdout  # nothing generated


def test_generate_helpers(tiny_text, tmp_path):
    with pytest.raises(ValueError, match=r"Cannot read image .*missing\.jpg: .*No such file"):
        gen.read_images([str(tmp_path / "missing.jpg")])
    (tmp_path / "photo.png").write_text("plain text")
    with pytest.raises(ValueError, match=r"Cannot read image .*photo\.png: cannot identify image file"):
        gen.read_images([str(tmp_path / "photo.png")])
    (tmp_path / "map.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"must hold a JSON object \{module name: device\}"):
        gen.read_device_map(str(tmp_path / "map.json"))
    with pytest.raises(ValueError, match="not 'auto' nor a readable JSON file"):
        gen.read_device_map(str(tmp_path / "nothing.json"))
    assert gen.chat_messages("hi", 2, "sys") == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]},
    ]
    with pytest.raises(SystemExit):
        gen.main([str(tiny_text), "--prompt", "hi", "--image", "x.png"])  # a text checkpoint cannot take images


# ------------------------------------------------------------------------------------------------------------------
# prepare_hub_repo.py
# ------------------------------------------------------------------------------------------------------------------

LOAD_REPO = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer
    text, vl, ids_file, out_file = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(text, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(text, trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.load(ids_file)).logits
    processor = AutoProcessor.from_pretrained(vl, trust_remote_code=True)
    vl_config = AutoConfig.from_pretrained(vl, trust_remote_code=True)
    torch.save({"logits": logits, "tokenizer": type(tokenizer).__name__, "processor": type(processor).__name__,
                "vl_config": type(vl_config).__name__}, out_file)
    """
)


@pytest.mark.slow
def test_prepared_repos_load_offline(tiny_text, tiny_vl, tmp_path):
    text_repo = hub.prepare_repo(tiny_text, tmp_path / "text-repo")
    vl_repo = hub.prepare_repo(tiny_vl, tmp_path / "vl-repo")
    config = json.loads((text_repo / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_minimax_text_01.MiniMaxText01Config",
        "AutoModel": "modeling_minimax_text_01.MiniMaxText01Model",
        "AutoModelForCausalLM": "modeling_minimax_text_01.MiniMaxText01ForCausalLM",
    }
    code = "modeling_minimax_text_01.py"
    assert (text_repo / code).read_text() == (REPO_ROOT / code).read_text()  # this repo's code, not the checkpoint's
    processor = json.loads((vl_repo / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_minimax_vl_01.MiniMaxVL01Processor"}
    card = (text_repo / "README.md").read_text()
    for needed in ["transformers>=5.17,<6", "trust_remote_code=True", "native `minimax`", "published with the release",
                   'range(8) for m in ("coefficient", "block_sparse_moe.gate")']:
        assert needed in card

    plain = load_tiny(tiny_text)
    ids = token_ids(plain.config)
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "load_repo.py"
    script.write_text(LOAD_REPO)
    env = {**OFFLINE_ENV, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, script, text_repo, vl_repo, tmp_path / "ids.pt", tmp_path / "out.pt"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded["logits"], plain(ids).logits, rtol=0, atol=0)
    assert loaded["processor"] == "MiniMaxVL01Processor" and loaded["vl_config"] == "MiniMaxVL01Config"


def test_prepare_repo_bad_inputs(tiny_text, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        hub.prepare_repo(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        hub.prepare_repo(tiny_text, tmp_path / "busy")
    repo = hub.prepare_repo(tiny_text, tmp_path / "repo")
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_minimax_text_01.NoSuchModel"
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="AutoModelForCausalLM -> modeling_minimax_text_01.NoSuchModel, but "
                                         "modeling_minimax_text_01.py does not define NoSuchModel"):
        hub.validate_auto_maps(repo)


# ------------------------------------------------------------------------------------------------------------------
# benchmark.py
# ------------------------------------------------------------------------------------------------------------------


def test_op_counter_counts_dispatched_ops():
    import benchmark

    x = torch.ones(3)
    with benchmark.OpCounter() as counter:
        (x * 2 + 1).sum()
    assert counter.count == 3  # mul, add, sum


def test_benchmark_runs_end_to_end_and_reports_fewer_decode_ops_than_native(capsys):
    """A tiny run of the comparison: the same-function check passes, every row is printed, and a decode step of
    this project dispatches fewer torch ops than native's (deterministic, unlike the timings)."""
    import benchmark

    sizes = ["--hidden", "32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--experts", "4",
             "--expert-size", "16", "--vocab", "64"]  # fmt: skip
    benchmark.main(["--prefill", "16", "--decode-context", "24", "--decode-tokens", "2", "--reps", "1",
                    "--skip-memory", "--threads", "1", *sizes])  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}  # fmt: skip
    assert {"prefill 16 tokens (s)", "decode at 24 context (ms/token)"} <= set(rows)
    native_ops, project_ops = (int(n) for n in rows["torch ops dispatched per decode step"][:2])
    assert 0 < project_ops < native_ops
