"""Where users meet the transformers ecosystem: optional outputs (attention weights, hidden states, router logits)
and the config flags behind them, tuple outputs, assisted generation / prompt lookup (transformers runs them),
`AutoModel`, the chat template's generation markers (assistant-token masks), and the model card of
prepare_hub_repo.py.

Expected values come from float64 formulas written here with tests/reference.py's building blocks (attention
weights, hidden states), from forward hooks on module inputs (router logits), or from decoded text (masks).
"""

import logging
import math
import re
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

import prepare_hub_repo as hub
from device_map import build_meta_model
from helpers import VOCAB, cache_of, random_ids, random_image, tiny_model
from make_tiny_checkpoint import tiny_vl_config
from minimax_code import load
from quanto_config import load_config
from reference import linear, reference_text_logits, rms_norm, rope
from tiny_tokenizer import build_tiny_tokenizer

# Also on the oldest supported transformers (make test-oldest): generation outputs, the sdpa warning, auto classes,
# chat-template masks and loading reports all differ between versions.
pytestmark = pytest.mark.smoke

vl_modeling = load("modeling_minimax_vl_01")


def tiny_vl_model(**overrides):
    torch.manual_seed(0)
    return vl_modeling.MiniMaxVL01ForConditionalGeneration(tiny_vl_config(image_token_index=VOCAB - 1, **overrides)).eval()


def vl_base_of(vl):
    """The VL base model with the weights of `vl` (all but the LM head)."""
    base = vl_modeling.MiniMaxVL01Model(vl.config).eval()
    missing, unexpected = base.load_state_dict(vl.state_dict(), strict=False)
    assert not missing and unexpected == ["language_model.lm_head.weight"]
    return base


def softmax_layers(config):
    return [i for i, kind in enumerate(config.attn_type_list) if kind == 1]


def reference_attention_weights(state_dict, config, layer, layer_input, past=None):
    """float64 softmax weights [B, H, T, P+T] of softmax layer `layer` given its input hidden states [B, T, D]
    (`past`: the inputs of the P earlier tokens, whose keys are in the cache). No padding: plain causal."""
    c = config
    x = layer_input if past is None else torch.cat((past, layer_input), dim=1)
    x = rms_norm(x.double(), state_dict[f"model.layers.{layer}.input_layernorm.weight"].double(), c.rms_norm_eps)
    B, S, _ = x.shape
    T = layer_input.shape[1]
    H, H_kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    W = {name: state_dict[f"model.layers.{layer}.self_attn.{name}_proj.weight"].double() for name in "qk"}
    positions = torch.arange(S).expand(B, S)
    q = rope(linear(x, W["q"]).view(B, S, H, d), positions, c.rotary_dim, c.rope_theta)[:, S - T :]
    k = rope(linear(x, W["k"]).view(B, S, H_kv, d), positions, c.rotary_dim, c.rope_theta)
    k = k[:, :, torch.arange(H) // (H // H_kv)]
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d)
    causal = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


# ------------------------------------------------------------------------------------------------------------------
# 1. Optional outputs: attention weights, hidden states, router logits
# ------------------------------------------------------------------------------------------------------------------


def test_eager_attention_weights_of_softmax_layers_match_float64_formula():
    """One [B, H, T, T] tensor per softmax layer (lightning layers have none), equal to softmax(q k^T / sqrt d)
    computed in float64 from the layer's input hidden state."""
    model = tiny_model(attn_implementation="eager")
    ids = random_ids(2, 13)
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
    layers = softmax_layers(model.config)
    assert len(layers) == 2 and len(out.attentions) == len(layers)
    for weights, layer in zip(out.attentions, layers):
        assert weights.shape == (2, model.config.num_attention_heads, 13, 13)
        assert weights[:, :, 4:].amax() > 0.5  # not near-uniform: the comparison below can tell rows apart
        expected = reference_attention_weights(model.state_dict(), model.config, layer, out.hidden_states[layer])
        torch.testing.assert_close(weights.double(), expected, rtol=0, atol=1e-5)


def test_hidden_states_are_the_embeddings_and_each_layer_output():
    """num_hidden_layers + 1 states: embeddings, then layer i's output (checked, up to its RMS scale, against the
    float64 reference run through the first i layers), the last one normed and equal to last_hidden_state."""
    model = tiny_model()
    ids = random_ids(2, 9)
    with torch.no_grad():
        out = model.model(ids, output_hidden_states=True)
    c, L = model.config, model.config.num_hidden_layers
    assert len(out.hidden_states) == L + 1
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    # the reference's output with the final norm weight 1 and an identity head = RMS-normalised hidden state
    sd = {**model.state_dict(), "model.norm.weight": torch.ones(c.hidden_size), "lm_head.weight": torch.eye(c.hidden_size)}
    ones = torch.ones(c.hidden_size, dtype=torch.float64)
    for i in range(1, L):
        partial = {**c.to_dict(), "attn_type_list": c.attn_type_list[:i]}  # slopes still use all L layers
        expected = reference_text_logits(sd, partial, input_ids=ids)
        actual = rms_norm(out.hidden_states[i].double(), ones, c.rms_norm_eps)
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_router_logits_are_each_gate_on_its_moe_input():
    """num_hidden_layers tensors [B * T, E]: layer i's gate applied to the input its MoE block received."""
    model = tiny_model()
    moe_inputs = []
    hooks = [layer.block_sparse_moe.register_forward_hook(lambda m, args, out: moe_inputs.append(args[0]))
             for layer in model.model.layers]  # fmt: skip
    ids = random_ids(2, 7)
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    for hook in hooks:
        hook.remove()
    assert len(out.router_logits) == model.config.num_hidden_layers
    for logits, layer, x in zip(out.router_logits, model.model.layers, moe_inputs):
        assert logits.shape == (2 * 7, model.config.num_local_experts)
        torch.testing.assert_close(logits, layer.block_sparse_moe.gate(x.reshape(-1, x.shape[-1])))


def test_outputs_through_chunked_prefill_and_cache_equal_one_forward():
    """Prefill in chunks (prefill_chunk_size) gives the outputs of one forward; a decode step's weights cover the
    cached keys ([B, H, 1, P+1]) and match the float64 formula."""
    model = tiny_model(attn_implementation="eager")
    ids = random_ids(2, 11)
    flags = dict(output_attentions=True, output_hidden_states=True, output_router_logits=True)
    with torch.no_grad():
        whole = model(ids, use_cache=False, **flags)
        model.config.prefill_chunk_size = 4
        chunked = model(ids, use_cache=False, **flags)
        model.config.prefill_chunk_size = None
        prefill = model(ids[:, :10], use_cache=True, **flags)
        step = model(ids[:, 10:], past_key_values=cache_of(prefill), use_cache=True, **flags)
    for name in flags:
        field = name.removeprefix("output_")
        for a, b in zip(getattr(whole, field), getattr(chunked, field), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for weights, layer in zip(step.attentions, softmax_layers(model.config), strict=True):
        assert weights.shape == (2, model.config.num_attention_heads, 1, 11)
        expected = reference_attention_weights(
            model.state_dict(), model.config, layer, step.hidden_states[layer], past=prefill.hidden_states[layer]
        )
        torch.testing.assert_close(weights.double(), expected, rtol=0, atol=1e-5)


def test_generate_returns_attentions_and_hidden_states_per_step():
    model = tiny_model(attn_implementation="eager")
    ids = random_ids(1, 6)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                             output_attentions=True, output_hidden_states=True)  # fmt: skip
        full = model(out.sequences[:, :-1], output_attentions=True)
    H, L = model.config.num_attention_heads, model.config.num_hidden_layers
    assert len(out.attentions) == 3 and all(len(step) == 2 for step in out.attentions)
    assert [step[0].shape for step in out.attentions] == [(1, H, 6, 6), (1, H, 1, 7), (1, H, 1, 8)]
    assert all(len(step) == L + 1 for step in out.hidden_states)
    for s, step in enumerate(out.attentions):  # each step's rows are the full sequence's rows at those positions
        rows = slice(0, 6) if s == 0 else slice(5 + s, 6 + s)
        for weights, expected in zip(step, full.attentions):
            torch.testing.assert_close(weights, expected[:, :, rows, : weights.shape[-1]], rtol=1e-5, atol=1e-5)


def test_sdpa_warns_and_returns_no_weights_as_transformers_does(caplog):
    """sdpa cannot return weights: transformers' own sdpa function warns, the tuple is empty (it holds only
    the weights layers returned); the config flag itself is refused by transformers for sdpa."""
    model = tiny_model(attn_implementation="sdpa")
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = model(random_ids(1, 5), output_attentions=True)
    assert out.attentions == ()
    assert "does not support `output_attentions=True`" in caplog.text
    with pytest.raises(ValueError, match="output_attentions"):
        model.config.output_attentions = True


@pytest.mark.parametrize("module", ["base", "causal_lm"])
def test_config_output_flags_are_honoured_and_arguments_win(module):
    model = tiny_model(attn_implementation="eager", output_hidden_states=True, output_attentions=True,
                       output_router_logits=True)  # fmt: skip
    target = model.model if module == "base" else model
    ids = random_ids(1, 5)
    with torch.no_grad():
        on = target(ids)
        off = target(ids, output_hidden_states=False, output_attentions=False, output_router_logits=False)
    L = model.config.num_hidden_layers
    assert (len(on.hidden_states), len(on.attentions), len(on.router_logits)) == (L + 1, 2, L)
    assert (off.hidden_states, off.attentions, off.router_logits) == (None, None, None)
    if module == "causal_lm":
        assert on.aux_loss is not None and off.aux_loss is None


def test_vl_config_output_flags_and_base_model():
    model = tiny_vl_model()
    model.set_attn_implementation("eager")
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    model.config.text_config.output_router_logits = True  # the text config's flag counts too
    ids = random_ids(1, 5)
    with torch.no_grad():
        out = model(ids)
        off = model(ids, output_hidden_states=False)
    L = model.config.text_config.num_hidden_layers
    assert (len(out.hidden_states), len(out.attentions), len(out.router_logits)) == (L + 1, 2, L)
    assert off.hidden_states is None


@pytest.mark.parametrize("how", ["argument", "config"])
def test_return_dict_false_gives_the_tuple_of_the_fields_set(how):
    model = tiny_model()
    vl = tiny_vl_model()
    ids = random_ids(1, 5)
    for target in (model.model, model, vl, vl_base_of(vl)):
        with torch.no_grad():
            expected = target(ids, output_hidden_states=True).to_tuple()
            if how == "config":
                target.config.return_dict = False
                result = target(ids, output_hidden_states=True)
                target.config.return_dict = True
            else:
                result = target(ids, output_hidden_states=True, return_dict=False)
        assert isinstance(result, tuple) and len(result) == len(expected)
        assert torch.equal(result[0], expected[0])  # logits or last_hidden_state
        assert all(torch.equal(a, b) for a, b in zip(result[-1], expected[-1]))  # hidden states


# ------------------------------------------------------------------------------------------------------------------
# 2. Not stateful: transformers runs assisted generation and prompt lookup (the cache rolls back)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_model, tiny_vl_model], ids=["text", "vl"])
def test_assisted_generation_and_prompt_lookup_equal_greedy(make):
    model = make()
    ids = random_ids(1, 6)
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        plain = model.generate(ids, **settings)
        assert torch.equal(model.generate(ids, assistant_model=make(), **settings), plain)
        assert torch.equal(model.generate(ids, prompt_lookup_num_tokens=2, **settings), plain)


# ------------------------------------------------------------------------------------------------------------------
# 3. AutoModel
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tiny_text, tiny_vl):
    return {"text": tiny_text, "vl": tiny_vl}


def test_automodel_text_loads_the_base_model_with_the_heads_hidden_states(checkpoints):
    base = AutoModel.from_pretrained(checkpoints["text"], trust_remote_code=True)
    head = AutoModelForCausalLM.from_pretrained(checkpoints["text"], trust_remote_code=True)
    assert type(base).__name__ == "MiniMaxText01Model"
    ids = random_ids(2, 7)
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
        torch.testing.assert_close(hidden, head(ids, output_hidden_states=True).hidden_states[-1], rtol=0, atol=0)
        torch.testing.assert_close(head.lm_head(hidden).float(), head(ids).logits, rtol=0, atol=0)


def test_automodel_vl_loads_the_base_model_with_the_heads_hidden_states(checkpoints, caplog):
    path = checkpoints["vl"]
    with caplog.at_level(logging.WARNING):
        base = AutoModel.from_pretrained(path, trust_remote_code=True)
    assert "UNEXPECTED" not in caplog.text  # the unused head weight is ignored by declaration, not reported
    head = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    assert type(base).__name__ == "MiniMaxVL01Model" and not hasattr(base, "lm_head")
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    inputs = processor(text="<image> describe", images=[random_image(336, 20)], return_tensors="pt")
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
        out = head(**inputs, output_hidden_states=True)
    torch.testing.assert_close(hidden, out.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(head.language_model.lm_head(hidden).float(), out.logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# 4. The chat template's generation markers
# ------------------------------------------------------------------------------------------------------------------


def test_assistant_tokens_mask_covers_exactly_the_assistant_replies():
    tokenizer = build_tiny_tokenizer(with_image_token=False)
    replies = ["Hello! How can I help?", "It rains, 12 degrees."]
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": replies[1]}]},
    ]
    encoded = tokenizer.apply_chat_template(conversation, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    spans, start = [], None  # the maximal runs of 1s, decoded
    for position, bit in enumerate(mask + [0]):
        if bit and start is None:
            start = position
        elif not bit and start is not None:
            spans.append(tokenizer.decode(ids[start:position]))
            start = None
    assert spans == [reply + "<end_of_sentence>" for reply in replies]
    # everything else is prompt: the text without the masked tokens is the conversation without the replies
    unmasked = tokenizer.decode([i for i, bit in zip(ids, mask) if not bit])
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert unmasked == rendered.replace(spans[0], "").replace(spans[1], "")


# ------------------------------------------------------------------------------------------------------------------
# 5. The model card of prepare_hub_repo.py
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repos(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return {kind: hub.prepare_repo(path, root / kind) for kind, path in checkpoints.items()}


def card_of(repo):
    from huggingface_hub import ModelCard

    return ModelCard.load(repo / "README.md", ignore_metadata_errors=False)


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_card_metadata_parses_with_huggingface_hub(repos, kind):
    data = card_of(repos[kind]).data.to_dict()
    assert data["license"] == "other" and data["license_name"] and data["license_link"].startswith("https://")
    assert data["base_model"] == {"text": "MiniMaxAI/MiniMax-Text-01", "vl": "MiniMaxAI/MiniMax-VL-01"}[kind]
    assert data["library_name"] == "transformers" and "custom_code" in data["tags"]
    assert data["pipeline_tag"] == {"text": "text-generation", "vl": "image-text-to-text"}[kind]


def test_card_keeps_the_source_checkpoints_license_and_base_model(checkpoints, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(checkpoints["text"], source)  # with its named chat templates (additional_chat_templates/)
    (source / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: someone/fine-tune\n---\n# a card\n")
    data = card_of(hub.prepare_repo(source, tmp_path / "repo")).data.to_dict()
    assert (data["license"], data["base_model"]) == ("apache-2.0", "someone/fine-tune")
    assert "license_name" not in data


@pytest.mark.parametrize(
    "edit, missing",
    [(lambda m: m.pop("license"), "license"), (lambda m: m.pop("license_link"), "license_link"),
     (lambda m: m.pop("base_model"), "base_model")],
)  # fmt: skip
def test_card_metadata_check_names_what_is_missing(edit, missing):
    from huggingface_hub import ModelCardData

    metadata = hub.card_metadata("text", source={})
    edit(metadata)
    card = f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n# card\n"
    with pytest.raises(ValueError, match=missing):
        hub.check_card_metadata(card)
    with pytest.raises(ValueError):  # a metadata block that is not a mapping: huggingface_hub's own error
        hub.check_card_metadata("---\n- a\n- list\n---\n")


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_card_text_usage_int8_and_device_map_snippets_run(repos):
    """The text snippet and the int8 snippet run as written (path filled in, fewer new tokens); the device-map
    snippet's map places every parameter of the model."""
    card = (repos["text"] / "README.md").read_text()
    usage, device_map, int8 = python_blocks(card)
    scope = {}
    exec(usage.replace("REPO_ID_OR_FOLDER", str(repos["text"])).replace("max_new_tokens=200", "max_new_tokens=2"),
         scope)  # fmt: skip
    exec(int8, scope)
    assert type(scope["model"].model.layers[0].block_sparse_moe.experts[0].w1).__name__ == "QLinear"
    assert_device_map_places_every_parameter(device_map, load_config(repos["text"]), gpus=3)


def test_card_vl_usage_and_device_map_snippets_run(repos, tmp_path, monkeypatch):
    card = (repos["vl"] / "README.md").read_text()
    usage, device_map, _ = python_blocks(card)
    monkeypatch.chdir(tmp_path)
    random_image(336, 20).save("photo.jpg")
    exec(usage.replace("REPO_ID_OR_FOLDER", str(repos["vl"])).replace("max_new_tokens=200", "max_new_tokens=2"), {})
    assert_device_map_places_every_parameter(device_map, load_config(repos["vl"]), gpus=2)


def assert_device_map_places_every_parameter(snippet, config, gpus):
    """Run the snippet up to the load, with `gpus` GPUs counted: every parameter falls under exactly one entry."""
    build = snippet[: snippet.index("model = ")]
    scope = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "device_count", lambda: gpus)
        exec(build, scope)
    device_map = scope["device_map"]
    for name, _ in build_meta_model(config).named_parameters():
        owners = [key for key in device_map if name == key or name.startswith(key + ".")]
        assert len(owners) == 1, (name, owners)
    assert set(device_map.values()) == set(range(gpus))


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_card_says_what_users_trip_over(repos, kind):
    card = (repos[kind] / "README.md").read_text()
    assert re.search(r"`trust_remote_code=True` to `AutoTokenizer`", card)
    assert "Plain `transformers serve` cannot load this model" in card and "scripts/serve.py CHECKPOINT" in card
    assert "AutoModel" in card


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_prepared_repo_has_automodel_in_auto_map_and_loads_it(repos, kind):
    config = load_config(repos[kind])
    assert config.auto_map["AutoModel"].endswith({"text": "MiniMaxText01Model", "vl": "MiniMaxVL01Model"}[kind])
    model = AutoModel.from_pretrained(repos[kind], trust_remote_code=True)
    assert type(model).__name__ == config.auto_map["AutoModel"].rpartition(".")[2]
