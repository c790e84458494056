"""MiniMax-M1 as released and transformers' native `-hf` layout: tiny checkpoints in each layout load through this
project's classes, `prepare_hub_repo.py` and the Auto classes, with logits equal to the released-layout model and
to the float64 reference of the released math (tests/reference.py)."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, MiniMaxConfig, MiniMaxForCausalLM
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from helpers import rel_err
from minimax_code import load
from prepare_hub_repo import prepare_repo
from quanto_config import quanto_config
from reference import reference_text_logits

layouts = load("checkpoint_layouts")
modeling = load("modeling_minimax_text_01")
CODE_FILES = ("configuration_minimax_m1.py", "modeling_minimax_m1.py")
M1_AUTO_MAP = {
    "AutoConfig": "configuration_minimax_m1.MiniMaxM1Config",
    "AutoModelForCausalLM": "modeling_minimax_m1.MiniMaxM1ForCausalLM",
}
# Stands in for the code M1 was released with (Text-01's transformers-4.45 code renamed), which does not import on
# transformers 5: loading the folder as it was downloaded runs it.
STALE_CODE = (
    "raise ImportError('stale MiniMax-M1 remote code written for transformers 4.45')\n"
    "class MiniMaxM1Config: ...\nclass MiniMaxM1ForCausalLM: ...\n"
    "class MiniMaxText01Config: ...\nclass MiniMaxText01ForCausalLM: ...\n"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 200, (2, 11), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def model_type_warnings(load_fn):
    """Run `load_fn`; return (its result, transformers' log lines about a model type mismatch)."""
    logger = logging.get_logger("transformers.configuration_utils")
    with CaptureLogger(logger) as captured:
        result = load_fn()
    return result, [line for line in captured.out.splitlines() if "model of type" in line]


def native_values(model) -> dict:
    """The model's config in transformers' native spelling."""
    return layouts.native_config_from_released(model.config.to_dict())


def copy_tokenizer(source, folder):
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)


# ---- the conversions themselves ----------------------------------------------------------------------------------


def test_config_converts_both_ways_and_transformers_reads_the_native_one(text_model):
    values = text_model.config.to_dict()
    native = layouts.native_config_from_released(values)
    assert "attn_type_list" not in native and native["layer_types"] == text_model.config.layer_types
    assert native["mlp_alpha_factor"] == values["layernorm_mlp_alpha"] and native["model_type"] == "minimax"
    transformers_config = MiniMaxConfig(**native)  # transformers' own class accepts it
    assert transformers_config.full_attn_alpha_factor == values["layernorm_full_attention_alpha"]
    assert transformers_config.rope_parameters["rope_theta"] == values["rope_theta"]
    back = layouts.released_config_from_native(transformers_config.to_dict())
    config_class = type(text_model.config)
    def settings(config):  # the class names differ by design: native has no auto_map and names its own class
        return {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "architectures")}

    assert settings(config_class(**back)) == settings(text_model.config)


def test_config_conversion_keeps_disagreeing_spellings_for_the_config_class_to_refuse():
    native = {"model_type": "minimax", "mlp_alpha_factor": 2.0, "layernorm_mlp_alpha": 3.0, "rope_theta": 5.0,
              "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}, "full_attn_beta_factor": 0.5}
    released = layouts.released_config_from_native(native)
    assert released["mlp_alpha_factor"] == 2.0 and released["layernorm_mlp_alpha"] == 3.0
    assert released["rope_parameters"] == native["rope_parameters"] and released["rope_theta"] == 5.0
    assert released["layernorm_full_attention_beta"] == 0.5 and "full_attn_beta_factor" not in released
    with pytest.raises(ValueError, match="`layernorm_mlp_alpha` .* `mlp_alpha_factor`"):
        load("configuration_minimax_text_01").MiniMaxText01Config(**released)


def test_state_dict_converts_both_ways_to_transformers_native_names(text_model):
    state = text_model.state_dict()
    native = layouts.native_state_dict_from_released(state)
    native_model = MiniMaxForCausalLM(MiniMaxConfig(**native_values(text_model)))
    expected = {k: v.shape for k, v in native_model.state_dict().items()
                if not layouts.NATIVE_DERIVED_BUFFERS.search(k)}
    assert {k: v.shape for k, v in native.items()} == expected
    back = layouts.released_state_dict_from_native({**native, **{k: v for k, v in native_model.state_dict().items()
                                                                  if layouts.NATIVE_DERIVED_BUFFERS.search(k)}})
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


# ---- native layout: a checkpoint written by transformers' MiniMaxForCausalLM ----------------------------------


@pytest.fixture(scope="module")
def native_saved(tiny_text, text_model, tmp_path_factory):
    """The released model's weights in transformers' MiniMaxForCausalLM, written by its own save_pretrained."""
    native_model = MiniMaxForCausalLM(MiniMaxConfig(**native_values(text_model)))
    missing, unexpected = native_model.load_state_dict(
        layouts.native_state_dict_from_released(text_model.state_dict()), strict=False)
    assert not unexpected and all(layouts.NATIVE_DERIVED_BUFFERS.search(k) for k in missing)
    folder = tmp_path_factory.mktemp("native") / "ckpt"
    native_model.save_pretrained(folder)
    copy_tokenizer(tiny_text, folder)
    return folder


def test_native_save_holds_released_expert_names_and_decay_buffers(native_saved):
    """What transformers writes (the facts the loader relies on): per-expert names, plus the decay buffers."""
    keys = set(safe_open(native_saved / "model.safetensors", "pt").keys())
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in keys
    assert "model.layers.0.self_attn.slope_rate" in keys and not any(".mlp.experts." in k for k in keys)
    assert json.loads((native_saved / "config.json").read_text())["model_type"] == "minimax"


def test_native_saved_checkpoint_loads_with_the_released_math(native_saved, tiny_text, text_model, ids):
    model, warnings = model_type_warnings(
        lambda: modeling.MiniMaxText01ForCausalLM.from_pretrained(native_saved).eval())
    assert warnings == []
    assert model.config.attn_type_list == text_model.config.attn_type_list
    assert model.config.layernorm_mlp_alpha == text_model.config.layernorm_mlp_alpha
    assert torch.equal(logits(model, ids), logits(text_model, ids))
    reference = reference_text_logits(load_file(tiny_text / "model.safetensors"), text_model.config, input_ids=ids)
    assert rel_err(logits(model, ids), reference) < 1e-5


def test_prepare_hub_repo_converts_a_native_folder(native_saved, text_model, ids, tmp_path):
    out = prepare_repo(native_saved, tmp_path / "repo")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "minimax_text_01" and config["architectures"] == ["MiniMaxText01ForCausalLM"]
    assert "layer_types" not in config and "mlp_alpha_factor" not in config and "rope_parameters" not in config
    assert config["attn_type_list"] == text_model.config.attn_type_list
    assert "converted from transformers' native" in (out / "README.md").read_text()
    model, warnings = model_type_warnings(
        lambda: AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval())
    assert warnings == [] and type(model).__name__ == "MiniMaxText01ForCausalLM"
    assert torch.equal(logits(model, ids), logits(text_model, ids))


def test_hf_repo_layout_native_config_with_released_tensors_loads(tiny_text, text_model, ids, tmp_path):
    """What the Text-01-hf repository became by a config-only commit: native config.json, released tensor names."""
    shutil.copy(tiny_text / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(native_values(text_model)))
    model = modeling.MiniMaxText01ForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(model, ids), logits(text_model, ids))


def test_plain_transformers_native_config_loads_and_matches_native_and_reference(tmp_path, ids):
    """A config exactly as transformers' MiniMaxConfig writes it (no rotary_dim): the default rotary_dim is then
    head_dim (64 capped at head_dim), which is what native computes, so native's own logits are a second check."""
    config = MiniMaxConfig(vocab_size=256, hidden_size=32, intermediate_size=24, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=3,
                           layer_types=["linear_attention", "full_attention", "linear_attention"], block_size=4,
                           full_attn_alpha_factor=1.5, linear_attn_alpha_factor=1.25, mlp_beta_factor=0.75)
    torch.manual_seed(0)
    native_model = MiniMaxForCausalLM(config).eval()
    native_model.save_pretrained(tmp_path)
    model = modeling.MiniMaxText01ForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.rotary_dim == 8 and model.config.layernorm_full_attention_alpha == 1.5
    state = layouts.released_state_dict_from_native(native_model.state_dict())
    reference = reference_text_logits(state, model.config, input_ids=ids)
    ours = logits(model, ids)
    assert rel_err(ours, reference) < 1e-5
    # native's slopes use l / (L - 1 + 1e-5) instead of l / (L - 1): a ~1e-5 relative difference, no more
    assert rel_err(logits(native_model, ids), reference) < 1e-3


def test_fused_expert_tensors_are_split_while_loading(text_model, tiny_text, ids, tmp_path):
    """transformers' in-memory native layout written to disk as it is (fused 3-D experts, `mlp.gate`): each fused
    tensor is split per expert as the loader reads it; the loaded model saves the released layout."""
    folder = tmp_path / "fused"
    folder.mkdir()
    native = layouts.native_state_dict_from_released(text_model.state_dict())
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in native)
    save_file({k: v.contiguous() for k, v in native.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(native_values(text_model)))
    model = modeling.MiniMaxText01ForCausalLM.from_pretrained(folder).eval()
    assert torch.equal(logits(model, ids), logits(text_model, ids))
    model.save_pretrained(tmp_path / "resaved")
    assert set(load_file(tmp_path / "resaved" / "model.safetensors")) == set(text_model.state_dict())
    copy_tokenizer(tiny_text, folder)
    repo = prepare_repo(folder, tmp_path / "repo")  # weights copied as they are, split again when loaded
    auto_model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
    assert torch.equal(logits(auto_model, ids), logits(text_model, ids))
    with pytest.raises(ValueError, match="fused expert tensors.*without it, save_pretrained"):
        modeling.MiniMaxText01ForCausalLM.from_pretrained(folder, quantization_config=quanto_config(folder))
    # the conversions were registered only while loading: a model built from scratch saves the released layout too
    modeling.MiniMaxText01ForCausalLM(text_model.config).save_pretrained(tmp_path / "fresh")
    assert set(load_file(tmp_path / "fresh" / "model.safetensors")) == set(text_model.state_dict())


# ---- MiniMax-M1 as released ----------------------------------------------------------------------------------------


def make_m1_folder(released, folder, variant="m1"):
    """The tiny checkpoint dressed as a downloaded M1 repository: M1 names in config.json (the M1-40k variant names
    Text-01 classes inside the M1 files), an integer rope_theta, no torch_dtype, bf16 weights, the stale remote
    code, no generation_config.json."""
    folder.mkdir()
    copy_tokenizer(released, folder)
    config = json.loads((released / "config.json").read_text())
    for key in ("torch_dtype", "dtype", "transformers_version"):
        config.pop(key, None)
    classes = ("MiniMaxM1Config", "MiniMaxM1ForCausalLM") if variant == "m1" else ("MiniMaxText01Config",
                                                                                   "MiniMaxText01ForCausalLM")
    config.update(model_type="minimax_m1", architectures=[classes[1]], rope_theta=10_000_000,
                  auto_map={"AutoConfig": f"configuration_minimax_m1.{classes[0]}",
                            "AutoModelForCausalLM": f"modeling_minimax_m1.{classes[1]}"},
                  transformers_version="4.45.2")
    (folder / "config.json").write_text(json.dumps(config))
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(released / "model.safetensors").items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for name in CODE_FILES:
        (folder / name).write_text(STALE_CODE)
    return folder


def test_m1_folder_with_its_stale_code_fails_to_load(tiny_text, tmp_path):
    folder = make_m1_folder(tiny_text, tmp_path / "m1")
    with pytest.raises(ImportError, match="stale MiniMax-M1 remote code"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)


@pytest.mark.parametrize("variant", ["m1", "m1-40k"])
def test_prepare_hub_repo_turns_an_m1_folder_into_a_working_repo(tiny_text, text_model, ids, tmp_path, variant):
    folder = make_m1_folder(tiny_text, tmp_path / "m1", variant)
    out = prepare_repo(folder, tmp_path / "repo")
    assert not any((out / name).exists() for name in CODE_FILES)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_minimax_text_01.MiniMaxText01ForCausalLM"
    assert config["rope_theta"] == 10_000_000 and "torch_dtype" not in config and "dtype" not in config
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    # tokenizer_config.json: as released, but for the chat format (the chat side's, see test_m1_chat.py)
    source_tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    prepared_tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    chat_keys = ("chat_template", "response_template")
    assert {k: v for k, v in prepared_tokenizer.items() if k not in chat_keys} == {
        k: v for k, v in source_tokenizer.items() if k not in chat_keys}
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.do_sample, generation.temperature, generation.top_p) == (True, 1.0, 0.95)
    eos = json.loads((folder / "tokenizer_config.json").read_text())["eos_token"]
    vocab_ids = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    assert generation.eos_token_id == vocab_ids[eos]
    card = (out / "README.md").read_text()
    assert "# MiniMax-M1" in card and "configuration_minimax_m1.py, modeling_minimax_m1.py" in card
    assert "MiniMaxAI/MiniMax-M1-80k" in card  # default base model
    assert "`auto_map` points at this repository's classes (it named ['configuration_minimax_m1." in card

    loaded_config, warnings = model_type_warnings(lambda: AutoConfig.from_pretrained(out, trust_remote_code=True))
    assert warnings == [] and loaded_config.rope_theta == 10_000_000
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype="auto").eval()
    assert model.dtype == torch.bfloat16  # no torch_dtype in config.json: "auto" follows the weights
    expected = modeling.MiniMaxText01ForCausalLM.from_pretrained(tiny_text, dtype=torch.bfloat16).eval()
    assert torch.equal(logits(model, ids), logits(expected, ids))


def test_this_projects_class_reads_an_unprepared_m1_folder(tiny_text, tmp_path, ids):
    """Without prepare_hub_repo (the stale code is never run): M1's model_type is read without a warning."""
    folder = make_m1_folder(tiny_text, tmp_path / "m1")
    model, warnings = model_type_warnings(lambda: modeling.MiniMaxText01ForCausalLM.from_pretrained(folder).eval())
    assert warnings == [] and model.dtype == torch.bfloat16 and model.config.rope_theta == 10_000_000
    reference = reference_text_logits(load_file(folder / "model.safetensors"), model.config, input_ids=ids)
    assert rel_err(logits(model, ids), reference) < 2e-2  # bf16 weights and activations vs float64


# ---- the planner, the quanto config and gpu_check read M1 and native configs ---------------------------------------


@pytest.fixture(scope="module")
def released_size_configs(tmp_path_factory):
    """config.json files of the released size: Text-01, M1 (its identifiers, integer rope_theta, no torch_dtype)
    and the native `-hf` spelling."""
    folder = tmp_path_factory.mktemp("configs")
    text = load("configuration_minimax_text_01").MiniMaxText01Config().to_dict()
    m1 = {**text, "model_type": "minimax_m1", "architectures": ["MiniMaxM1ForCausalLM"], "rope_theta": 10_000_000,
          "auto_map": M1_AUTO_MAP}
    m1.pop("dtype", None)
    native = layouts.native_config_from_released(text)
    paths = {}
    for name, values in {"text": text, "m1": m1, "native": native}.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(values))
    return paths


def test_planner_and_quanto_config_treat_m1_and_native_as_text_01(released_size_configs):
    import device_map as dm
    import quanto_config as qc

    configs = {name: qc.load_config(path) for name, path in released_size_configs.items()}
    skips = {name: qc.modules_to_not_convert(config) for name, config in configs.items()}
    assert skips["m1"] == skips["native"] == skips["text"] and len(skips["text"]) == 2 + 80 * 2
    model = dm.build_meta_model(configs["text"])
    plans = {name: dm.plan_device_map(config, gpus=8, gpu_memory="141GiB", dtype="bfloat16", model=model).device_map
             for name, config in configs.items()}
    assert plans["m1"] == plans["native"] == plans["text"]


def test_gpu_check_reads_m1_and_native_configs(released_size_configs):
    import gpu_timings

    for path in released_size_configs.values():
        config = gpu_timings.layer_config(path, tiny=False)
        assert (config.num_hidden_layers, config.rotary_dim, config.rope_theta) == (80, 64, 10_000_000)
        assert config.layernorm_mlp_alpha == load("configuration_minimax_text_01").RELEASED_DEEPNORM_ALPHA
