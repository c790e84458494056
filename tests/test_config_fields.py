"""Config fields (issue 21): a setting the model cannot honour is refused on every path (constructor, from_dict,
from_pretrained, save_pretrained after an attribute change), naming only keys the user wrote; the settings it can
honour in another spelling (rope_theta inside rope_parameters, transformers' native names, an integer rope_theta)
change the model's computation as they should."""

import json

import pytest
import torch

from helpers import rel_err
from make_tiny_checkpoint import tiny_text_config, tiny_vl_config
from minimax_code import load
from reference import reference_text_logits, rope_inv_freq

config_module = load("configuration_minimax_text_01")
Config = config_module.MiniMaxText01Config
modeling = load("modeling_minimax_text_01")
OTHER_KEYS = ["rotary_dim", "rope_theta", "layernorm_mlp_alpha", "attn_type_list", "sliding_window",
              "rope_scaling", "rope_parameters", "tie_word_embeddings", "mlp_alpha_factor"]  # fmt: skip

# (settings, the keys the error must name): none of them can be honoured
REFUSED = {
    "sliding window": ({"sliding_window": 4}, ["sliding_window"]),
    "rope_scaling linear": ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, ["rope_scaling"]),
    "rope_scaling legacy type": ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, ["rope_scaling"]),
    "rope_parameters yarn": ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e7, "factor": 4.0}},
                             ["rope_parameters"]),
    "rope_parameters default with a factor": ({"rope_parameters": {"rope_type": "default", "factor": 2.0}},
                                              ["rope_parameters"]),
    "rope_parameters not a dict": ({"rope_parameters": 5}, ["rope_parameters"]),
    "tied embeddings": ({"tie_word_embeddings": True}, ["tie_word_embeddings"]),
    "both alpha spellings disagree": ({"layernorm_mlp_alpha": 3.0, "mlp_alpha_factor": 2.0},
                                      ["layernorm_mlp_alpha", "mlp_alpha_factor"]),
    "layer_types and attn_type_list disagree": ({"layer_types": ["linear_attention"] * 8},
                                                ["layer_types", "attn_type_list"]),
    "both theta spellings disagree": ({"rope_theta": 1e6, "rope_parameters": {"rope_theta": 1e4}},
                                      ["rope_theta", "rope_parameters.rope_theta"]),
}


def assert_names_only(error, written: list[str]):
    message = str(error.value)
    for key in written:
        assert f"`{key}`" in message, message
    named = {key for key in OTHER_KEYS if f"`{key}`" in message}
    assert named <= {k.split(".")[0] for k in written} | set(written), message


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_setting_is_refused_on_every_path(case, tmp_path):
    settings, named = REFUSED[case]
    with pytest.raises(ValueError) as error:
        tiny_text_config(**settings)
    assert_names_only(error, named)

    values = {**tiny_text_config().to_dict(), **settings}
    with pytest.raises(ValueError) as error:
        Config.from_dict(values)
    assert_names_only(error, named)

    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError) as error:
        Config.from_pretrained(tmp_path)
    assert_names_only(error, named)


@pytest.mark.parametrize("key, value", [("sliding_window", 4), ("tie_word_embeddings", True)])
def test_attribute_changed_after_construction_is_refused_when_saved(key, value, tmp_path):
    """A config that saves always loads back: save_pretrained runs the same checks as the constructor."""
    config = tiny_text_config()
    setattr(config, key, value)
    with pytest.raises(Exception, match=f"`{key}`"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_vl_refuses_the_same_settings_in_text_config_and_at_the_top(tmp_path):
    with pytest.raises(ValueError, match="`rope_scaling`"):
        tiny_vl_config(image_token_index=5, text_overrides={"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="`tie_word_embeddings`"):
        tiny_vl_config(image_token_index=5, tie_word_embeddings=True)
    config = tiny_vl_config(image_token_index=5)
    config.text_config.sliding_window = 8
    with pytest.raises(Exception, match="`sliding_window`"):
        config.save_pretrained(tmp_path)


def test_rope_theta_inside_rope_parameters_is_honoured():
    """transformers 5 writes rope_theta only inside rope_parameters: the model's frequencies and logits follow it."""
    theta = 500.0
    nested = tiny_text_config(rope_parameters={"rope_type": "default", "rope_theta": theta})
    assert nested.rope_theta == theta and "rope_parameters" not in nested.to_dict()
    rotary = modeling.MiniMaxText01RotaryEmbedding(nested)
    torch.testing.assert_close(rotary.inv_freq(torch.device("cpu")).double(),
                               rope_inv_freq(nested.rotary_dim, theta), rtol=1e-6, atol=0)

    torch.manual_seed(0)
    model = modeling.MiniMaxText01ForCausalLM(nested).eval()
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids).logits
    state = model.state_dict()
    reference = reference_text_logits(state, nested, input_ids=ids)
    released_theta = reference_text_logits(state, tiny_text_config(), input_ids=ids)
    error = rel_err(out, reference)
    assert error < 1e-5
    assert rel_err(released_theta, reference) > 100 * error  # theta mattered


def test_integer_rope_theta_and_native_spellings_are_read_and_saved_in_the_released_spelling(tmp_path):
    config = tiny_text_config(rope_theta=10_000_000, mlp_alpha_factor=2.0, full_attn_beta_factor=0.5,
                              attn_type_list=None, layer_types=["linear_attention"] * 7 + ["full_attention"])
    assert (config.layernorm_mlp_alpha, config.layernorm_full_attention_beta) == (2.0, 0.5)
    assert config.attn_type_list == [0] * 7 + [1] and config.rope_theta == 10_000_000
    saved = config.to_dict()
    assert not {"mlp_alpha_factor", "full_attn_beta_factor", "layer_types"} & set(saved)
    # unchanged settings keep the released defaults; both spellings agreeing is fine
    assert config.layernorm_linear_attention_alpha == config_module.RELEASED_DEEPNORM_ALPHA
    assert tiny_text_config(layernorm_mlp_alpha=2.0, mlp_alpha_factor=2.0).layernorm_mlp_alpha == 2.0
    config.save_pretrained(tmp_path)
    assert Config.from_pretrained(tmp_path).to_dict() == saved


def test_rotary_dim_default_is_64_capped_at_head_dim():
    assert Config().rotary_dim == 64
    assert tiny_text_config(rotary_dim=None, head_dim=16).rotary_dim == 16
    assert tiny_text_config(rotary_dim=None, head_dim=5).rotary_dim == 4  # RoPE pairs channels: an even count
    with pytest.raises(ValueError) as error:  # reported as the key written, not as the derived rotary_dim
        Config(num_attention_heads=0, head_dim=None)
    assert_names_only(error, ["num_attention_heads"])
