"""Bad input never gives a quiet wrong answer: configs, checkpoints, prompts, images, processor, scripts, hub repos.

Each case asserts the error type and a key phrase of its message (the problem, and where there is one the fix), or
checks the correct behaviour numerically (a 16-bit image gives the pixel values of its 8-bit equivalent, a photo
with an EXIF orientation those of the upright photo, a left-padded batch the rows run alone).
"""

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import device_map as dm
import generate as gen
import prepare_hub_repo as hub
from helpers import cache_of, edited_checkpoint, random_ids, random_image, sharded_copy
from make_tiny_checkpoint import tiny_text_config
from minimax_code import load
from released_configs import released_text_config, released_vl_config

text_config_module = load("configuration_minimax_text_01")
vl_config_module = load("configuration_minimax_vl_01")
mm = load("modeling_minimax_text_01")
vl = load("modeling_minimax_vl_01")
image_processing = load("image_processing_minimax_vl_01")


# ================================================================================================== configs


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(rope_theta=0), "rope_theta"),
        (dict(rope_theta=-10.0), "rope_theta"),
        (dict(rope_theta=float("inf")), "rope_theta"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size=-64), "hidden_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_attention_heads=0), "num_attention_heads"),
        (dict(num_key_value_heads=-2), "num_key_value_heads"),
        (dict(head_dim=0), "head_dim"),
        (dict(head_dim=-16), "head_dim"),
        (dict(head_dim=None, hidden_size=2, num_attention_heads=4), "head_dim"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(intermediate_size=-1), "intermediate_size"),
        (dict(num_local_experts=0, num_experts_per_tok=0), "num_local_experts"),
        (dict(num_hidden_layers=0, attn_type_list=[]), "num_hidden_layers"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(hidden_act="swiglu"), "hidden_act"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
        (dict(lightning_norm_eps=-1e-6), "lightning_norm_eps"),
        (dict(attention_dropout=1.5), "attention_dropout"),
        (dict(sliding_window=4096), "sliding_window"),
        (dict(pad_token_id=512), "pad_token_id"),
        (dict(eos_token_id=[1, 9999]), "eos_token_id"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else None,
)
def test_impossible_text_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"MiniMaxText01Config: `{key}`"):
        tiny_text_config(**overrides)


@pytest.mark.smoke
def test_head_dim_zero_is_reported_as_head_dim_not_rotary_dim():
    with pytest.raises(ValueError) as error:
        tiny_text_config(head_dim=0)
    assert "`head_dim` is 0" in str(error.value) and "rotary_dim" not in str(error.value)


@pytest.mark.parametrize(
    "typo, field",
    [("rope_thetha", "rope_theta"), ("num_experts_per_token", "num_experts_per_tok"),
     ("num_hidden_layer", "num_hidden_layers")],
)
def test_misspelt_config_key_is_not_quietly_ignored(typo, field):
    with pytest.raises(ValueError, match=rf"unknown key `{typo}`, which would be ignored\. Did you mean `{field}`\?"):
        # checked first: with num_hidden_layer=8 the 8-entry attn_type_list is not blamed on the layer count
        text_config_module.MiniMaxText01Config(attn_type_list=[0] * 7 + [1], **{typo: 8})


def test_unrelated_extra_keys_are_still_kept():
    """transformers' rule for unknown keys stays: kept as attributes (e.g. keys of other tools' configs)."""
    config = text_config_module.MiniMaxText01Config(use_sliding_window=False, moe_intermediate_size=3)
    assert config.use_sliding_window is False and config.moe_intermediate_size == 3


def test_unknown_hidden_act_lists_the_choices():
    with pytest.raises(ValueError, match=r"`hidden_act` is 'swiglu'.*'silu' in the release.*gelu.*silu"):
        tiny_text_config(hidden_act="swiglu")


@pytest.mark.smoke
@pytest.mark.parametrize(
    "overrides, key",
    [(dict(projector_hidden_act="gleu"), "projector_hidden_act"),
     (dict(vision_config=dict(hidden_act="nope")), "vision_config.hidden_act")],
)
def test_unknown_vl_activation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"MiniMaxVL01Config: `{key}`"):
        vl_config_module.MiniMaxVL01Config(**overrides)


def test_vl_text_config_is_validated_too():
    with pytest.raises(ValueError, match="MiniMaxText01Config: `rope_theta` is 0"):
        vl_config_module.MiniMaxVL01Config(text_config=dict(rope_theta=0))


def test_rope_tables_of_a_valid_config_are_finite():
    """The NaN that rope_theta 0 used to produce never reaches a model: every accepted theta gives finite tables."""
    rotary = mm.MiniMaxText01RotaryEmbedding(tiny_text_config(rope_theta=1.5))
    cos, sin = rotary(torch.arange(1000)[None])
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all()


def load_quietly(config_class, folder, caplog):
    """Load a config and return it with every warning it raised (Python warnings and transformers' log)."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        config = config_class.from_pretrained(folder)
    return config, [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]


@pytest.mark.smoke
def test_released_text_config_loads_unchanged_without_warnings(tmp_path, caplog):
    values = released_text_config()
    (tmp_path / "config.json").write_text(json.dumps(values))
    config, warned = load_quietly(text_config_module.MiniMaxText01Config, tmp_path, caplog)
    assert warned == []
    assert config.attn_type_list == values["attn_type_list"] and config.rope_theta == 1e7
    assert config.head_dim == 128 and config.hidden_act == "silu" and config.dtype == torch.bfloat16


@pytest.mark.smoke
def test_released_text_config_with_legacy_model_type_loads(tmp_path, caplog):
    values = {**released_text_config(), "model_type": "MiniMaxText01"}
    (tmp_path / "config.json").write_text(json.dumps(values))
    config, warned = load_quietly(text_config_module.MiniMaxText01Config, tmp_path, caplog)
    assert warned == [] and config.num_hidden_layers == 80 and config.layer_types.count("full_attention") == 10


@pytest.mark.smoke
def test_released_vl_config_loads_unchanged_without_warnings(tmp_path, caplog):
    values = released_vl_config()
    (tmp_path / "config.json").write_text(json.dumps(values))
    config, warned = load_quietly(vl_config_module.MiniMaxVL01Config, tmp_path, caplog)
    assert warned == []
    assert config.text_config.shared_intermediate_size == [0] and config.text_config.shared_expert_size == 0
    assert config.image_grid_pinpoints == values["image_grid_pinpoints"]


# ================================================================================================== checkpoints


@pytest.mark.smoke
def test_checkpoint_missing_one_expert_names_the_key(tiny_text, tmp_path):
    key = "model.layers.5.block_sparse_moe.experts.2.w3.weight"
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors={key: None})
    phrase = r"lacks 1 weight the model needs \(they would start at random\): " + key.replace(".", r"\.")
    with pytest.raises(ValueError, match=phrase):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_config_asking_for_a_shared_expert_the_checkpoint_lacks(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"shared_intermediate_size": 32})
    phrase = r"model\.layers\.\{0-7\}\.shared_mlp\.up_proj\.weight.*asks for a shared expert"
    with pytest.raises(ValueError, match=phrase):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_config_without_attn_type_list_against_a_different_pattern(tiny_text, tmp_path):
    """The released pattern (softmax at layer 7) replaces the tiny one (3 and 7): layer 3's weights do not fit."""
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"attn_type_list": None})
    phrase = r"lacks 4 weights the model needs.*model\.layers\.3\.self_attn\.qkv_proj\.weight.*attn_type_list"
    with pytest.raises(ValueError, match=phrase):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_config_without_num_hidden_layers_against_a_smaller_checkpoint(tiny_text, tmp_path):
    """Without num_hidden_layers (nor attn_type_list) the config falls back to the released 80 layers."""
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"num_hidden_layers": None, "attn_type_list": None})
    with pytest.raises(ValueError, match=r"model\.layers\.\{8-79\}\..*Decoder layers 8-79 are absent altogether"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


@pytest.mark.smoke
def test_unused_checkpoint_tensors_are_named(tiny_text, tmp_path):
    extra = {"model.layers.2.self_attn.rotary.inv_freq": torch.ones(4), "model.mtp_head.weight": torch.ones(2, 2)}
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors=extra)
    with pytest.raises(ValueError, match=r"holds 2 tensors this model does not use: model\.layers\.2\.self_attn"
                                         r"\.rotary\.inv_freq, model\.mtp_head\.weight"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_checkpoint_with_more_experts_than_the_config(tiny_text, tmp_path):
    extra = {f"model.layers.{i}.block_sparse_moe.experts.4.w1.weight": torch.zeros(64, 64) for i in range(8)}
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors=extra)
    phrase = r"model\.layers\.\{0-7\}\.block_sparse_moe\.experts\.4\.w1\.weight.*num_local_experts"
    with pytest.raises(ValueError, match=phrase):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_wrong_shape_names_key_and_shapes_and_ignore_mismatched_sizes_still_works(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"intermediate_size": 32})
    with pytest.raises(ValueError, match=r"experts\.0\.w1\.weight: checkpoint \(64, 64\) vs model \(32, 64\)"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)
    model, info = mm.MiniMaxText01ForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True,
                                                              output_loading_info=True)
    assert len(info["mismatched_keys"]) == 8 * 4 * 3  # every expert's w1, w2, w3 in 8 layers, re-initialised
    assert model.model.layers[0].block_sparse_moe.experts[0].w1.out_features == 32


def test_base_model_loads_from_a_full_checkpoint(tiny_text, text_model):
    """lm_head.weight belongs to the head, not to MiniMaxText01Model: no error, and the same hidden states."""
    base = mm.MiniMaxText01Model.from_pretrained(tiny_text, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(base(ids).last_hidden_state, text_model.model(ids).last_hidden_state)


def test_base_model_still_refuses_unused_tensors_of_its_own(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors={"model.extra.weight": torch.ones(3)})
    with pytest.raises(ValueError, match=r"does not use: model\.extra\.weight"):
        mm.MiniMaxText01Model.from_pretrained(folder)


def test_normal_load_reports_nothing(tiny_text, caplog):
    with caplog.at_level(logging.WARNING):
        _, info = mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_int8_quanto_loading_passes_the_key_checks(tiny_text):
    pytest.importorskip("optimum.quanto")
    from transformers import QuantoConfig

    model = mm.MiniMaxText01ForCausalLM.from_pretrained(
        tiny_text, quantization_config=QuantoConfig(weights="int8", modules_to_not_convert=["lm_head"])
    )
    assert type(model.model.layers[0].block_sparse_moe.experts[0].w1).__name__ == "QLinear"


@pytest.mark.smoke
def test_vl_checkpoint_missing_a_tensor_names_it(tiny_vl, tmp_path):
    folder = edited_checkpoint(tiny_vl, tmp_path / "ckpt", tensors={"image_newline": None})
    with pytest.raises(ValueError, match=r"lacks 1 weight .*image_newline.*text_config\.\* for VL-01"):
        vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(folder)


def test_vl_checkpoint_with_unused_tensors_names_them(tiny_vl, tmp_path):
    extra = {"vision_tower.vision_model.post_layernorm.weight": torch.ones(32)}
    folder = edited_checkpoint(tiny_vl, tmp_path / "ckpt", tensors=extra)
    with pytest.raises(ValueError, match=r"does not use: vision_tower\.vision_model\.post_layernorm\.weight"):
        vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(folder)


def test_vl_checkpoint_missing_a_language_model_expert(tiny_vl, tmp_path):
    key = "language_model.model.layers.1.block_sparse_moe.experts.0.w2.weight"
    folder = edited_checkpoint(tiny_vl, tmp_path / "ckpt", tensors={key: None})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(folder)


def test_vl_checkpoint_of_the_wrong_shape_names_key_and_shapes(tiny_vl, tmp_path):
    folder = edited_checkpoint(tiny_vl, tmp_path / "ckpt", tensors={"image_newline": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"image_newline: checkpoint \(32,\) vs model \(64,\)"):
        vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(folder)


def test_key_summary_folds_layer_indices():
    keys = [f"model.layers.{i}.mlp.w1.weight" for i in (0, 1, 2, 5)] + ["lm_head.weight", "layers.3.norm.weight"]
    assert load("loading_checks").summarize_keys(keys) == "model.layers.{0-2,5}.mlp.w1.weight, lm_head.weight, layers.3.norm.weight"
    assert load("loading_checks").summarize_keys([f"k{i}" for i in range(20)], limit=3) == "k0, k1, k2 and 17 more"


# ================================================================================================== prompts


@pytest.mark.smoke
@pytest.mark.parametrize("bad_id", [512, 100_000, -1, -100])
def test_token_ids_outside_the_vocabulary(text_model, bad_id):
    ids = random_ids(2, 5)
    ids[1, 3] = bad_id
    with pytest.raises(ValueError, match=r"token ids outside the vocabulary 0\.\.511"):
        text_model(input_ids=ids)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "make, error, phrase",
    [
        (lambda ids: ids[0], ValueError, r"must be 2-D \[batch, tokens\], got shape \(5,\)\. Add the batch dimension"),
        (lambda ids: ids[None], ValueError, r"must be 2-D \[batch, tokens\], got shape \(1, 2, 5\)"),
        (lambda ids: ids.float(), TypeError, r"must hold integers \(torch\.long\), got torch\.float32"),
        (lambda ids: ids.bool(), TypeError, r"must hold integers"),
        (lambda ids: ids.tolist(), TypeError, r"must be a torch tensor \[batch, tokens\], got list.*return_tensors"),
    ],
    ids=["1-D", "3-D", "float", "bool", "list"],
)
def test_malformed_input_ids(text_model, make, error, phrase):
    with pytest.raises(error, match=phrase):
        text_model(input_ids=make(random_ids(2, 5)))


def test_inputs_embeds_of_the_wrong_width(text_model):
    with pytest.raises(ValueError, match=r"`inputs_embeds` must have shape \[batch, tokens, 64\], got \(1, 3, 32\)"):
        text_model(inputs_embeds=torch.zeros(1, 3, 32))


def test_attention_mask_given_as_a_list(text_model):
    with pytest.raises(TypeError, match=r"`attention_mask` must be a torch tensor.*got list"):
        text_model(input_ids=random_ids(1, 3), attention_mask=[[1, 1, 1]])


@pytest.mark.smoke
def test_left_padded_batch_with_an_empty_row_is_named_not_called_right_padding(text_model):
    ids = random_ids(2, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError) as error:
        text_model(input_ids=ids, attention_mask=mask)
    assert "Rows [1] of `attention_mask` have no real token" in str(error.value)
    assert "Right padding" not in str(error.value)


def test_left_padded_batch_matches_each_row_alone(text_model):
    """The checks leave the normal padded path alone: each row's logits equal the unpadded row's."""
    ids, mask = random_ids(2, 6), torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        batched = text_model(input_ids=ids, attention_mask=mask).logits
        alone = text_model(input_ids=ids[:1, 2:]).logits
    torch.testing.assert_close(batched[0, 2:], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mask", [torch.tensor([[0.0, 0.0, 0.0, -float("inf"), -float("inf")]]),
                                  torch.tensor([[1, 1, 2, 1, 1]])], ids=["additive", "two"])
def test_attention_mask_that_is_not_zeros_and_ones(text_model, mask):
    with pytest.raises(ValueError, match=r"`attention_mask` must hold 1 for real tokens and 0 for padding"):
        text_model(input_ids=random_ids(1, 5), attention_mask=mask)


def decode_setup(model):
    ids = random_ids(1, 6)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return ids, cache_of(out)


@pytest.mark.smoke
@pytest.mark.parametrize("position", [0, 3])
def test_position_ids_restarting_during_cached_decode(text_model, position):
    ids, cache = decode_setup(text_model)
    with pytest.raises(ValueError, match=rf"`position_ids` restart .*at position {position} with 6 tokens cached"):
        text_model(input_ids=random_ids(1, 1, seed=1), past_key_values=cache, position_ids=torch.tensor([[position]]))


def test_continuing_position_ids_during_cached_decode_are_accepted(text_model):
    ids, cache = decode_setup(text_model)
    step = random_ids(1, 1, seed=1)
    with torch.no_grad():
        given = text_model(input_ids=step, past_key_values=cache, position_ids=torch.tensor([[6]])).logits
        full = text_model(input_ids=torch.cat([ids, step], dim=1)).logits[:, -1:]
    torch.testing.assert_close(given, full, atol=2e-5, rtol=1e-4)


def test_left_padded_generate_is_not_mistaken_for_a_restart(text_model):
    """generate() gives a left-padded row the positions of its real tokens, fewer than the cached length."""
    ids, mask = random_ids(2, 6), torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    out = text_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    alone = text_model.generate(input_ids=ids[:1, 3:], max_new_tokens=3, do_sample=False)
    assert out[0, 6:].tolist() == alone[0, 3:].tolist()


@pytest.mark.parametrize(
    "positions, error, phrase",
    [(torch.zeros(2, 4, dtype=torch.long), ValueError, r"`position_ids` must have shape \[2, 5\] \(or \[1, 5\]\)"),
     (torch.arange(5.0)[None], TypeError, r"`position_ids` must hold integers")],
    ids=["shape", "float"],
)
def test_malformed_position_ids(text_model, positions, error, phrase):
    with pytest.raises(error, match=phrase):
        text_model(input_ids=random_ids(2, 5), position_ids=positions)


# ================================================================================================== images


def gray8(height=40, width=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def pixel_values(image):
    return image_processing.MiniMaxVL01ImageProcessor()(image, return_tensors="pt")["pixel_values"]


@pytest.mark.smoke
@pytest.mark.parametrize(
    "to_wide",
    [
        lambda a: Image.fromarray(a.astype(np.uint16) * 257),  # I;16
        lambda a: Image.fromarray(a.astype(np.uint16) * 257).convert("I"),  # I (32-bit int)
        lambda a: Image.frombytes("I;16B", a.shape[::-1], (a.astype(">u2") * 257).tobytes()),  # big-endian
        lambda a: Image.fromarray(a.astype(np.float32) / 255),  # F in [0, 1]
    ],
    ids=["I;16", "I", "I;16B", "F"],
)
def test_wide_grayscale_gives_the_pixels_of_its_8_bit_equivalent(to_wide):
    pixels = gray8()
    wide = to_wide(pixels)
    assert wide.mode in ("I;16", "I", "I;16B", "F")
    torch.testing.assert_close(pixel_values(wide), pixel_values(Image.fromarray(pixels)), atol=1e-5, rtol=0)


def test_uint16_arrays_give_the_pixels_of_their_8_bit_equivalent():
    """16-bit PNGs read by imageio / OpenCV arrive as uint16 arrays: read as 0..65535, like PIL's I;16."""
    colour = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    torch.testing.assert_close(pixel_values(colour.astype(np.uint16) * 257), pixel_values(colour), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "image, phrase",
    [(Image.fromarray(np.full((8, 8), 2.0, dtype=np.float32)), r"mode 'F' must hold values in 0\.\.1"),
     (Image.fromarray(np.full((8, 8), -5, dtype=np.int32)), r"mode 'I' must hold values in 0\.\.65535"),
     (Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)), r"mode 'F' must hold values in 0\.\.1")],
    ids=["F-above-1", "I-negative", "F-nan"],
)
def test_wide_grayscale_out_of_range_is_refused(image, phrase):
    with pytest.raises(ValueError, match=phrase):
        pixel_values(image)


def with_orientation(image: Image.Image, orientation: int, path: Path) -> Image.Image:
    """The image saved losslessly with an EXIF orientation tag, reopened from disk."""
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)
    return Image.open(path)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "orientation, upright",
    [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
     (2, Image.Transpose.FLIP_LEFT_RIGHT)],
)
def test_exif_orientation_is_applied_like_a_photo_viewer(tmp_path, orientation, upright):
    stored = random_image(50, 30)
    tagged = with_orientation(stored, orientation, tmp_path / "photo.png")
    processor = image_processing.MiniMaxVL01ImageProcessor()
    out, expected = processor(tagged, return_tensors="pt"), processor(stored.transpose(upright), return_tensors="pt")
    assert out["image_sizes"].tolist() == expected["image_sizes"].tolist()
    torch.testing.assert_close(out["pixel_values"], expected["pixel_values"], atol=0, rtol=0)


def test_exif_orientation_is_applied_to_file_paths_too(tmp_path):
    with_orientation(random_image(50, 30), 6, tmp_path / "photo.png").close()
    out = image_processing.MiniMaxVL01ImageProcessor()(str(tmp_path / "photo.png"), return_tensors="pt")
    assert out["image_sizes"].tolist() == [[50, 30]]  # (height, width) of the upright photo


def test_image_without_orientation_is_unchanged(tmp_path):
    image = random_image(50, 30)
    image.save(tmp_path / "plain.png")
    torch.testing.assert_close(pixel_values(Image.open(tmp_path / "plain.png")), pixel_values(image), atol=0, rtol=0)


@pytest.mark.smoke
def test_closed_pil_image_gets_a_clear_message(tmp_path):
    random_image(50, 30).save(tmp_path / "photo.png")
    with Image.open(tmp_path / "photo.png") as image:
        pass
    with pytest.raises(ValueError, match=r"PIL image was closed before processing.*image\.copy\(\)"):
        pixel_values(image)


def test_corrupt_image_still_reports_decoding(tmp_path):
    random_image(50, 30).save(tmp_path / "photo.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "photo.png").read_bytes()[:200])
    with pytest.raises(ValueError, match="Could not decode the image"):
        pixel_values(Image.open(tmp_path / "cut.png"))


# ================================================================================================== processor


@pytest.fixture(scope="module")
def vl_model_and_ids(tiny_vl):
    model = vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(tiny_vl, dtype=torch.float32).eval()
    return model, model.config.image_token_index


@pytest.mark.smoke
def test_processor_with_other_pinpoints_than_the_model_gets_an_accurate_message(vl_model_and_ids):
    model, image_token = vl_model_and_ids
    other = image_processing.MiniMaxVL01ImageProcessor(image_grid_pinpoints=[[336, 672]])
    inputs = other(random_image(336, 336), return_tensors="pt")  # 1 + 2 crops; the model's pinpoints give 1 + 1
    ids = torch.full((1, 1176), image_token)
    with pytest.raises(ValueError, match=r"holds 3 crops, but image_sizes .* need 2 under this model's "
                                         r"image_grid_pinpoints.*processor's image_grid_pinpoints / tile size differ"):
        model(input_ids=ids, **inputs)


def test_image_token_count_mismatch_mentions_the_pinpoints(vl_model_and_ids):
    model, image_token = vl_model_and_ids
    inputs = image_processing.MiniMaxVL01ImageProcessor()(random_image(336, 336), return_tensors="pt")
    with pytest.raises(ValueError, match=r"contain 1000 image tokens, but the 1 images give 1176 features under "
                                         r"this model's image_grid_pinpoints"):
        model(input_ids=torch.full((1, 1000), image_token), **inputs)


def test_vl_prompt_with_token_ids_outside_the_vocabulary(vl_model_and_ids):
    model, image_token = vl_model_and_ids
    inputs = image_processing.MiniMaxVL01ImageProcessor()(random_image(336, 336), return_tensors="pt")
    ids = torch.cat([torch.tensor([[600]]), torch.full((1, 1176), image_token)], dim=1)
    with pytest.raises(ValueError, match=r"token ids outside the vocabulary 0\.\.\d+ \(smallest \d+, largest 600\)"):
        model(input_ids=ids, **inputs)


def test_pixel_values_as_lists_ask_for_tensors(vl_model_and_ids):
    model, image_token = vl_model_and_ids
    inputs = image_processing.MiniMaxVL01ImageProcessor()(random_image(336, 336))  # no return_tensors: NumPy arrays
    with pytest.raises(TypeError, match=r"pixel_values must be a torch tensor, got ndarray.*return_tensors='pt'"):
        model(input_ids=torch.full((1, 1176), image_token), **inputs)


def test_raw_uint8_crops_are_refused(vl_model_and_ids):
    model, image_token = vl_model_and_ids
    inputs = image_processing.MiniMaxVL01ImageProcessor(do_rescale=False, do_normalize=False)(random_image(336, 336),
                                                                                             return_tensors="pt")
    with pytest.raises(TypeError, match=r"pixel_values must be the image processor's normalised float crops"):
        model(input_ids=torch.full((1, 1176), image_token), pixel_values=inputs["pixel_values"].to(torch.uint8),
              image_sizes=inputs["image_sizes"])


def test_generate_script_refuses_a_processor_with_other_pinpoints_before_loading(tiny_vl, tmp_path, monkeypatch):
    folder = tmp_path / "vl"
    shutil.copytree(tiny_vl, folder)
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            values = json.loads(path.read_text())
            target = values.get("image_processor", values) if name == "processor_config.json" else values
            target["image_grid_pinpoints"] = [[336, 672]]
            path.write_text(json.dumps(values))
    monkeypatch.setattr(gen.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    phrase = r"image processor's tile size / image_grid_pinpoints \(336, \[\[336, 672\]\]\) differ from config\.json's"
    with pytest.raises(ValueError, match=phrase):
        gen.load_model(folder)


# ================================================================================================== scripts


@pytest.mark.smoke
@pytest.mark.parametrize("value, expected", [("85899345920", 80 * 2**30), (85899345920, 80 * 2**30),
                                             ("80GiB", 80 * 2**30), (" 141GB ", 141 * 10**9)])
def test_gpu_memory_accepts_byte_counts_and_units(value, expected):
    assert dm.parse_size(value, "--gpu-memory") == expected


def test_device_map_cli_accepts_a_byte_count(released_config_files, capsys):
    dm.main([str(released_config_files["text"]), "--gpus", "8", "--gpu-memory", str(141 * 10**9),
             "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert sorted(set(plan.values())) == list(range(8))


@pytest.mark.parametrize("value, phrase", [("eighty", "is not a size"), ("-5", "must not be negative")])
def test_gpu_memory_bad_values(value, phrase):
    with pytest.raises(ValueError, match=phrase):
        dm.parse_size(value, "--gpu-memory")


def test_gpu_memory_given_as_a_bare_small_number_hints_at_the_unit(tiny_text):
    config = text_config_module.MiniMaxText01Config.from_pretrained(tiny_text)
    with pytest.raises(ValueError, match=r"nothing of --gpu-memory 80 \(80 bytes\).*a plain number is a byte count"):
        dm.plan_device_map(config, 2, gpu_memory="80")


@pytest.mark.smoke
def test_generate_without_tokenizer_files_fails_before_loading_the_model(tiny_text, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_text, folder)
    for path in folder.glob("*"):
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            path.unlink()
    monkeypatch.setattr(gen.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(SystemExit) as exit_info:
        gen.main([str(folder), "--prompt", "hi"])
    assert exit_info.value.code == 2
    assert "has no tokenizer files" in capsys.readouterr().err


def test_generate_with_a_broken_tokenizer_fails_before_loading_the_model(tiny_text, tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_text, folder)
    (folder / "tokenizer.json").write_text("{not json")
    monkeypatch.setattr(gen.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ValueError, match=r"Cannot load the tokenizer of .*Check its tokenizer files"):
        gen.load_model(folder)


def test_generate_script_reports_a_bad_checkpoint_as_a_usage_error(tiny_text, tmp_path, capsys):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors={"model.norm.weight": None})
    with pytest.raises(SystemExit) as exit_info:
        gen.main([str(folder), "--prompt", "hi"])
    assert exit_info.value.code == 2 and "lacks 1 weight the model needs" in capsys.readouterr().err


def test_read_images_keeps_the_orientation_for_the_processor(tmp_path):
    with_orientation(random_image(50, 30), 6, tmp_path / "photo.png").close()
    (image,) = gen.read_images([str(tmp_path / "photo.png")])
    out = image_processing.MiniMaxVL01ImageProcessor()(image, return_tensors="pt")
    assert out["image_sizes"].tolist() == [[50, 30]]


# ================================================================================================== hub packaging


def test_sharded_checkpoint_is_assembled(tiny_text, tmp_path):
    repo = hub.prepare_repo(sharded_copy(tiny_text, tmp_path / "ckpt"), tmp_path / "repo")
    assert (repo / "model-00002-of-00002.safetensors").is_file() and (repo / hub.INDEX_FILE).is_file()


@pytest.mark.smoke
def test_truncated_safetensors_is_refused_before_assembly(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated or damaged: its header describes \d+ bytes"):
        hub.prepare_repo(folder, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_safetensors_with_a_garbage_header_is_refused(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt")
    for header in (b"\xff" * 100, b'{"w": {"dtype": "F32"}}', b"[1, 2]"):
        (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(ValueError, match="is not a valid safetensors header"):
            hub.prepare_repo(folder, tmp_path / "repo")


@pytest.mark.smoke
def test_index_naming_a_missing_shard_is_refused_and_not_pushed(tiny_text, tmp_path, monkeypatch, capsys):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    (folder / "model-00002-of-00002.safetensors").unlink()
    monkeypatch.setattr(hub, "push", lambda *a, **k: pytest.fail("pushed"))
    with pytest.raises(SystemExit) as exit_info:
        hub.main([str(folder), str(tmp_path / "repo"), "--push", "me/repo"])
    assert exit_info.value.code == 2
    assert "names shards that are not in" in capsys.readouterr().err


def test_index_placing_a_tensor_in_the_wrong_shard(tiny_text, tmp_path):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    index = json.loads((folder / hub.INDEX_FILE).read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors" if index["weight_map"][
        "lm_head.weight"].startswith("model-00001") else "model-00001-of-00002.safetensors"
    (folder / hub.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"places tensors in shards that do not hold them: \['lm_head\.weight'\]"):
        hub.prepare_repo(folder, tmp_path / "repo")


def test_shard_missing_from_the_index(tiny_text, tmp_path):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    save_file({"x": torch.ones(1)}, folder / "stray.safetensors")
    with pytest.raises(ValueError, match=r"stray\.safetensors not named in model\.safetensors\.index\.json"):
        hub.prepare_repo(folder, tmp_path / "repo")


def test_several_safetensors_without_an_index(tiny_text, tmp_path):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    (folder / hub.INDEX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="holds 2 safetensors files but no model.safetensors.index.json"):
        hub.prepare_repo(folder, tmp_path / "repo")


def test_weights_that_do_not_fit_the_config_are_refused(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"num_hidden_layers": 9,
                                                                     "attn_type_list": [0, 0, 0, 1, 0, 0, 0, 1, 0]})
    with pytest.raises(ValueError, match=r"do not fit its config\.json: missing 19 tensors the model needs: "
                                         r"model\.layers\.8\."):
        hub.prepare_repo(folder, tmp_path / "repo")


def test_vl_weights_with_an_unused_tensor_are_refused(tiny_vl, tmp_path):
    folder = edited_checkpoint(tiny_vl, tmp_path / "ckpt", tensors={"extra.weight": torch.ones(2)})
    with pytest.raises(ValueError, match=r"1 tensor the model does not use: extra\.weight"):
        hub.prepare_repo(folder, tmp_path / "repo")


# ============================================ a field the model cannot honour, asked-for loading info


def test_sliding_window_is_refused_on_every_path(tiny_text, tmp_path):
    """Constructor (above), from_dict, from_pretrained of config and model, and a value set on a built config."""
    values = json.loads((tiny_text / "config.json").read_text())
    with pytest.raises(ValueError, match=r"`sliding_window` is 4\. .*set it to null"):
        text_config_module.MiniMaxText01Config.from_dict({**values, "sliding_window": 4})
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"sliding_window": 4})
    for from_pretrained in (text_config_module.MiniMaxText01Config.from_pretrained,
                            mm.MiniMaxText01ForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=r"`sliding_window` is 4\."):
            from_pretrained(folder)
    config = tiny_text_config()
    config.sliding_window = 4
    with pytest.raises(ValueError, match=r"`sliding_window` is 4\."):
        mm.MiniMaxText01ForCausalLM(config)


def test_null_sliding_window_is_dropped_and_not_written_back(tmp_path):
    """transformers' native `minimax` config writes `sliding_window: null`: read, then neither kept nor saved."""
    config = text_config_module.MiniMaxText01Config.from_dict({**tiny_text_config().to_dict(), "sliding_window": None})
    assert not hasattr(config, "sliding_window")
    config.save_pretrained(tmp_path)
    assert "sliding_window" not in json.loads((tmp_path / "config.json").read_text())


def test_output_loading_info_hands_back_missing_and_unused_tensors_instead_of_raising(tiny_text, tmp_path):
    missing = "model.layers.5.block_sparse_moe.experts.2.w3.weight"
    tensors = {missing: None, "model.extra.weight": torch.ones(3)}
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", tensors=tensors)
    model, info = mm.MiniMaxText01ForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert sorted(info["missing_keys"]) == [missing] and sorted(info["unexpected_keys"]) == ["model.extra.weight"]
    kept = "model.layers.5.block_sparse_moe.experts.2.w1.weight"  # the tensors present are the checkpoint's
    torch.testing.assert_close(model.state_dict()[kept], load_file(folder / "model.safetensors")[kept])


def test_output_loading_info_still_refuses_wrong_shapes(tiny_text, tmp_path):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={"intermediate_size": 32})
    with pytest.raises(ValueError, match=r"experts\.0\.w1\.weight: checkpoint \(64, 64\) vs model \(32, 64\)"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder, output_loading_info=True)


def test_own_state_dict_without_a_checkpoint_leaves_the_rest_to_init_weights():
    """transformers' `from_pretrained(None, config=..., state_dict=...)`: the given tensors are used, the others
    initialised by `_init_weights` (RMSNorm weights to 1); a tensor the model does not use still raises."""
    config = tiny_text_config()
    embed = torch.randn(config.vocab_size, config.hidden_size, generator=torch.Generator().manual_seed(0))
    given = {"model.embed_tokens.weight": embed}
    model = mm.MiniMaxText01ForCausalLM.from_pretrained(None, config=config, state_dict=given)
    torch.testing.assert_close(model.model.embed_tokens.weight.detach(), embed, rtol=0, atol=0)
    assert torch.equal(model.model.norm.weight.detach(), torch.ones(config.hidden_size))
    assert model.lm_head.weight.abs().max() > 0 and torch.isfinite(model.lm_head.weight).all()
    with pytest.raises(ValueError, match=r"does not use: model\.extra\.weight"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(None, config=config, state_dict={"model.extra.weight": embed})
