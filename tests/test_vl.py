"""MiniMax-VL-01: config, model (vs a float64 reference), generation, processor, tiny checkpoint.

The model runs with tiny widths but the released image geometry (336-px crops, patch 14, the 28 pinpoints), so
every image costs at least 2 crops and 626+ tokens: the images here are small and few.

Reference for the logits (independent of the modeling code): transformers' own CLIPVisionModel loaded with the
same weights in float64, the projector written as explicit formulas, the anyres pack as explicit loops from
spec 4.4, and the text model from tests/reference.py.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import CLIPVisionModel

from helpers import random_image
from minimax_code import load
from reference import reference_text_logits
from released_configs import released_vl_config

# The whole file is a smoke test: config sub-configs, generation and ProcessorMixin differ between transformers versions.
pytestmark = pytest.mark.smoke

config_module = load("configuration_minimax_vl_01")
modeling = load("modeling_minimax_vl_01")

TILE, PATCH, GRID = 336, 14, 24  # crop size, patch size, patches per crop side

# Images (width x height) and their spec 4.4 geometry, worked out by hand:
#   700x100 -> canvas 1008x336 (3 tiles in a row), 72x24 grid, new_h = floor(100*72/700) = 10, pad 7 -> 10 rows
#   100x700 -> canvas 336x1008 (3 tiles in a column), 24x72 grid, new_w = 10, pad 7 -> 10 cols, 72 rows
#   1000x40 -> canvas 1008x336, 72x24 grid, new_h = floor(40*72/1000) = 2, pad 11 -> 2 rows
#   40x1000 -> canvas 336x1008, 24x72 grid, new_w = 2, pad 11 -> 2 cols, 72 rows
#   336x20  -> canvas 336x336, 24x24 grid, new_h = floor(20*24/336) = 1, pad 11 -> 2 rows
#   20x336  -> canvas 336x336, 24x24 grid, new_w = 1, pad 11 -> 2 cols, 24 rows
# All but SQUARE, STRIP and NARROW cross tile borders; the thin ones keep the model tests short (few image tokens).
WIDE, TALL, SQUARE, PHOTO = (700, 100), (100, 700), (336, 336), (800, 600)
THIN_WIDE, THIN_TALL, STRIP, NARROW = (1000, 40), (40, 1000), (336, 20), (20, 336)
TOKENS = {
    WIDE: 576 + 73 * 10, TALL: 576 + 11 * 72, SQUARE: 1176, PHOTO: 3696,
    THIN_WIDE: 576 + 73 * 2, THIN_TALL: 576 + 3 * 72, STRIP: 576 + 25 * 2, NARROW: 576 + 3 * 24,
}  # fmt: skip
CROPS = {WIDE: 4, TALL: 4, SQUARE: 2, PHOTO: 7, THIN_WIDE: 4, THIN_TALL: 4, STRIP: 2, NARROW: 2}


# ------------------------------------------------------------------------------------------------ config


def test_released_config_loads_unchanged_and_round_trips(tmp_path):
    released = released_vl_config()
    config = config_module.MiniMaxVL01Config(**released)
    assert config.text_config.shared_intermediate_size == [0] and config.text_config.hidden_size == 6144
    assert config.text_config.max_position_embeddings == 8192
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert config.image_token_index == config.image_token_id == 200025
    assert config.image_grid_pinpoints == released["image_grid_pinpoints"] and len(config.image_grid_pinpoints) == 28
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "default")

    config.save_pretrained(tmp_path)
    reloaded = config_module.MiniMaxVL01Config.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert type(reloaded.text_config).__name__ == "MiniMaxText01Config"

    default = config_module.MiniMaxVL01Config()  # defaults are the released values
    assert default.vision_config.to_dict() == vision.to_dict()
    assert default.image_grid_pinpoints == config.image_grid_pinpoints


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"vision_feature_layer": 25}, "vision_feature_layer"),
        ({"vision_feature_layer": [-1, -2]}, "vision_feature_layer"),
        ({"image_grid_pinpoints": [[336, 500]]}, "multiples of the tile size 336"),
        ({"image_grid_pinpoints": []}, "image_grid_pinpoints"),
        ({"image_seq_length": 577}, "image_seq_length"),
        ({"image_token_index": 300000}, "outside the vocabulary"),
    ],
)
def test_config_rejects_unsupported_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_module.MiniMaxVL01Config(**overrides)


def test_released_config_on_meta_device_has_the_released_keys():
    config = config_module.MiniMaxVL01Config(**released_vl_config())
    with torch.device("meta"):
        model = modeling.MiniMaxVL01ForConditionalGeneration(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(shapes) == 8637
    vision = [k for k in shapes if k.startswith("vision_tower.")]
    assert len(vision) == 3 + 2 + 24 * 16 and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert sum(k.startswith("language_model.model.") for k in shapes) == 8242
    assert not [k for k in shapes if "post_layernorm" in k]
    assert shapes["vision_tower.vision_model.embeddings.position_embedding.weight"] == (577, 1024)
    assert shapes["vision_tower.vision_model.pre_layrnorm.weight"] == (1024,)
    assert shapes["multi_modal_projector.linear_1.weight"] == (6144, 1024)
    assert shapes["multi_modal_projector.linear_2.bias"] == (6144,)
    assert shapes["image_newline"] == (6144,)
    assert shapes["language_model.lm_head.weight"] == (200064, 6144)


# ------------------------------------------------------------------------------------------------ float64 reference


def reference_canvas(width, height, pinpoints):
    """Spec 4.3 step 1: largest effective resolution, then least waste, then list order. Returns (H, W)."""
    best = None
    for H, W in pinpoints:
        scale = min(W / width, H / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        key = (-effective, W * H - effective)
        if best is None or key < best[0]:
            best = (key, (H, W))
    return best[1]


def reference_pack(crops, width, height, newline, pinpoints):
    """Spec 4.4 with explicit loops. crops [1 + tiles, 576, D] float64 (thumbnail first)."""
    H, W = reference_canvas(width, height, pinpoints)
    tiles_per_row = W // TILE
    ch, cw = H // PATCH, W // PATCH
    rows, cols = range(ch), range(cw)
    if width / height > cw / ch:
        pad = (ch - math.floor(height * cw / width)) // 2
        rows = range(pad, ch - pad)
    else:
        pad = (cw - math.floor(width * ch / height)) // 2
        cols = range(pad, cw - pad)
    features = [crops[0][i] for i in range(GRID * GRID)]
    for r in rows:
        for c in cols:
            tile = 1 + (r // GRID) * tiles_per_row + c // GRID
            features.append(crops[tile][(r % GRID) * GRID + c % GRID])
        features.append(newline)
    return torch.stack(features)


def reference_image_features(model, pixel_values, sizes):
    """float64 per-image features: transformers' CLIPVisionModel (fresh instance, same weights), CLS dropped,
    last encoder layer before the post-layernorm; projector Linear -> GELU(erf) -> Linear; explicit pack."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    clip = CLIPVisionModel(model.config.vision_config)
    prefix = "vision_tower.vision_model."
    missing, unexpected = clip.load_state_dict(
        {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, strict=False
    )
    assert sorted(missing) == ["post_layernorm.bias", "post_layernorm.weight"] and not unexpected
    with torch.no_grad():
        hidden = clip.double().eval()(pixel_values.double()).last_hidden_state[:, 1:]  # [crops, 576, Dv]
    h = hidden @ sd["multi_modal_projector.linear_1.weight"].T + sd["multi_modal_projector.linear_1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    crops = h @ sd["multi_modal_projector.linear_2.weight"].T + sd["multi_modal_projector.linear_2.bias"]
    features, start, pinpoints = [], 0, model.config.image_grid_pinpoints
    for width, height in sizes:
        n = CROPS[(width, height)]
        features.append(reference_pack(crops[start : start + n], width, height, sd["image_newline"], pinpoints))
        start += n
    return features


def reference_vl_logits(model, inputs, sizes):
    sd = model.state_dict()
    features = torch.cat(reference_image_features(model, inputs["pixel_values"], sizes))
    ids = inputs["input_ids"]
    embeds = sd["language_model.model.embed_tokens.weight"].double()[ids]
    embeds[ids == model.config.image_token_index] = features  # row-major order = image order
    return reference_text_logits(
        sd, model.config.text_config, inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
        prefix="language_model.",
    )  # fmt: skip


def test_image_features_match_float64_reference(vl_model, vl_processor):
    sizes = [WIDE, TALL, SQUARE]
    pixels = vl_processor.image_processor([random_image(*s, i) for i, s in enumerate(sizes)], return_tensors="pt")
    with torch.no_grad():
        features = vl_model.get_image_features(pixels["pixel_values"], pixels["image_sizes"])
    expected = reference_image_features(vl_model, pixels["pixel_values"], sizes)
    assert [f.shape[0] for f in features] == [TOKENS[s] for s in sizes]
    for got, want in zip(features, expected):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_vl_logits_match_float64_reference(vl_model, vl_processor):
    """A left-padded batch: a wide image (3 tiles in a row) and a tall one (3 tiles in a column) with text."""
    texts = ["<image>A wide picture of the sea.", "Look: <image> and tell me what stands there, please."]
    inputs = vl_processor(images=[random_image(*THIN_WIDE, 1), random_image(*THIN_TALL, 2)], text=texts, return_tensors="pt")
    with torch.no_grad():
        logits = vl_model(**inputs).logits.double()
    expected = reference_vl_logits(vl_model, inputs, [THIN_WIDE, THIN_TALL])
    real = inputs["attention_mask"].bool()
    err = (logits - expected)[real].abs().max().item()
    rel = err / expected[real].abs().max().item()
    print(f"\nVL logits (fp32 model) vs float64 reference: max abs err {err:.3e}, max rel err {rel:.3e}")
    assert err < 1e-5 and rel < 1e-5


def test_earlier_vision_feature_layer(vl_model, vl_processor):
    pixels = vl_processor.image_processor([random_image(*SQUARE, 3)], return_tensors="pt")["pixel_values"]
    clip = CLIPVisionModel(vl_model.config.vision_config)
    missing, _ = clip.load_state_dict(vl_model.vision_tower.vision_model.state_dict(), strict=False)
    assert sorted(missing) == ["post_layernorm.bias", "post_layernorm.weight"]
    with torch.no_grad():
        expected = clip.eval()(pixels, output_hidden_states=True).hidden_states
        vl_model.config.vision_feature_layer = -2
        try:
            got = vl_model._crop_features(pixels)
        finally:
            vl_model.config.vision_feature_layer = -1
    torch.testing.assert_close(got, expected[-2][:, 1:])


# ------------------------------------------------------------------------------------------------ generation


def greedy(model, inputs, use_cache=True, steps=3, **kwargs):
    """(new tokens [B, steps], logits of every step [steps, B, vocab])."""
    out = model.generate(
        **inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=use_cache,
        output_logits=True, return_dict_in_generate=True, **kwargs,
    )  # fmt: skip
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits)


@pytest.mark.parametrize("speculation", ["prompt_lookup", "assistant"])
def test_speculative_decoding_with_images_equals_greedy(vl_model, vl_processor, speculation):
    """Drafts verified and rolled back (crop) over a prompt with an image: the tokens and logits of plain greedy.
    The draft model: the model itself (every draft step runs the same VL forward, images on its prompt)."""
    inputs = vl_processor(images=[random_image(*STRIP, 4)], text="<image> a b a b a b a b", return_tensors="pt")
    extra = {"prompt_lookup_num_tokens": 3} if speculation == "prompt_lookup" else {"assistant_model": vl_model}
    with torch.no_grad():
        plain, plain_logits = greedy(vl_model, inputs, steps=8)
        drafted, drafted_logits = greedy(vl_model, inputs, steps=8, **extra)
    assert torch.equal(drafted, plain)
    torch.testing.assert_close(drafted_logits, plain_logits, rtol=1e-4, atol=1e-4)


def test_generate_with_and_without_cache_give_the_same_tokens(vl_model, vl_processor):
    text = "First <image> then <image>: which one is wider?"
    inputs = vl_processor(images=[random_image(*STRIP, 4), random_image(*NARROW, 5)], text=text, return_tensors="pt")
    assert (inputs["input_ids"] == vl_model.config.image_token_index).sum() == TOKENS[STRIP] + TOKENS[NARROW]
    cached, cached_logits = greedy(vl_model, inputs, use_cache=True)
    uncached, uncached_logits = greedy(vl_model, inputs, use_cache=False)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-4, rtol=1e-4)


def test_batched_generation_matches_single_prompts(vl_model, vl_processor):
    """Different image sizes, a text-only prompt, left padding (several images per prompt: the test above)."""
    prompts = [
        ("<image>: describe it.", [random_image(*NARROW, 6)]),
        ("A prompt without any image at all.", []),
        ("Only <image>.", [random_image(*STRIP, 8)]),
    ]
    images = [im for _, ims in prompts for im in ims]
    batch = vl_processor(images=images, text=[text for text, _ in prompts], return_tensors="pt")
    assert batch["image_sizes"].tolist() == [[336, 20], [20, 336]] and batch["pixel_values"].shape[0] == 4
    assert batch["attention_mask"][:, -1].all() and batch["attention_mask"][1, 0] == 0  # left padded
    batch_tokens, batch_logits = greedy(vl_model, batch)
    for i, (text, images) in enumerate(prompts):
        tokens, logits = greedy(vl_model, vl_processor(images=images or None, text=text, return_tensors="pt"))
        assert torch.equal(batch_tokens[i], tokens[0])
        torch.testing.assert_close(batch_logits[:, i], logits[:, 0], atol=1e-4, rtol=1e-4)


def test_beam_search_repeats_each_prompts_images(vl_model, vl_processor):
    """num_beams / num_return_sequences repeat batch rows; the flat crop tensor must follow its rows."""
    prompts = [("<image> and <image>", [random_image(*NARROW, 14), random_image(*STRIP, 15)]), ("Only <image>.", [random_image(*STRIP, 16)])]

    def beams(images, text):
        """(tokens [rows * 2, 2], prefill logits [rows * 2, vocab])"""
        inputs = vl_processor(images=images, text=text, return_tensors="pt")
        out = vl_model.generate(
            **inputs, max_new_tokens=2, min_new_tokens=2, num_beams=2, num_return_sequences=2,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        return out.sequences[:, -2:], out.logits[0]

    batch_tokens, batch_logits = beams([im for _, ims in prompts for im in ims], [text for text, _ in prompts])
    assert torch.equal(batch_tokens, torch.cat([beams(images, text)[0] for text, images in prompts]))
    with torch.no_grad():  # every beam starts from its prompt's plain forward
        plain = [vl_model(**vl_processor(images=ims, text=text, return_tensors="pt")).logits[0, -1] for text, ims in prompts]
    torch.testing.assert_close(batch_logits, torch.stack(plain).repeat_interleave(2, dim=0), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ processor


def test_processor_expands_each_placeholder_to_its_image_tokens(vl_processor):
    image_id = vl_processor.image_token_id
    texts = ["<image> photo then <image> square", "no image here", "<image>"]
    sizes = [PHOTO, SQUARE, TALL]
    images = [[random_image(*PHOTO, 9), random_image(*SQUARE, 10)], [], [random_image(*TALL, 11)]]  # one list per prompt
    out = vl_processor(images=images, text=texts, return_tensors="pt")
    assert out["pixel_values"].shape == (sum(CROPS[s] for s in sizes), 3, 336, 336)
    assert out["image_sizes"].tolist() == [[h, w] for w, h in sizes]
    per_prompt = (out["input_ids"] == image_id).sum(-1).tolist()
    assert per_prompt == [3696 + 1176, 0, TOKENS[TALL]]  # spec worked examples: 800x600 -> 3696, 336x336 -> 1176
    row = out["input_ids"][0][out["attention_mask"][0].bool()].tolist()
    first = row.index(image_id)
    assert row[first : first + 3696] == [image_id] * 3696 and row[first + 3696] != image_id  # one run per image
    assert out["attention_mask"][1, 0] == 0 and out["attention_mask"][:, -1].all()  # left padding


def test_processor_chat_template_with_image_items_and_plain_strings(vl_processor):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ]
    prompt = vl_processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        "<beginning_of_sentence>system ai_setting=assistant\nBe brief.<end_of_sentence>\n"
        "<beginning_of_sentence>user name=user\n<image>What is this?<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
    )
    messages[1]["content"][0]["image"] = random_image(*SQUARE, 12)  # the image travels inside the conversation
    out = vl_processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert (out["input_ids"] == vl_processor.image_token_id).sum() == 1176 and out["pixel_values"].shape[0] == 2
    assert vl_processor.tokenizer.decode(out["input_ids"][0]) == prompt.replace("<image>", "<image>" * 1176)


@pytest.mark.parametrize(
    "text, n_images, match",
    [
        ("<image> and <image>", 1, "2 <image> placeholders .* but 1 images"),
        ("<image>", 2, "1 <image> placeholders .* but 2 images"),
        ("no placeholder", 1, "no <image> placeholder"),
        ("<image>", 0, "1 <image> placeholders .* but 0 images"),
    ],
)
def test_processor_rejects_placeholder_image_mismatch(vl_processor, text, n_images, match):
    images = [random_image(*SQUARE, i) for i in range(n_images)] or None
    with pytest.raises(ValueError, match=match):
        vl_processor(images=images, text=text)


def test_processor_rejects_per_prompt_mismatch_and_corrupt_images(vl_processor, tmp_path):
    with pytest.raises(ValueError, match=r"Per prompt, the text has \[1, 0\] .* hold \[0, 1\]"):
        vl_processor(images=[[], [random_image(*SQUARE, 0)]], text=["<image>", "text"])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="Could not read an image"):
        vl_processor(images=[str(corrupt)], text="<image>")


# ------------------------------------------------------------------------------------------------ model bad inputs


def test_model_rejects_inconsistent_image_inputs(vl_model, vl_processor):
    inputs = vl_processor(images=[random_image(*SQUARE, 0)], text="<image> hello", return_tensors="pt")
    ids, pixels, sizes = inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"]
    image_id = vl_model.config.image_token_index
    with pytest.raises(ValueError, match="holds 1 crops, but image_sizes .* need 2"):
        vl_model(input_ids=ids, pixel_values=pixels[:1], image_sizes=sizes)
    with pytest.raises(ValueError, match="holds 2 crops, but image_sizes .* need 4"):
        vl_model(input_ids=ids, pixel_values=pixels, image_sizes=torch.tensor([[336, 336], [336, 336]]))
    with pytest.raises(ValueError, match="no image token"):
        vl_model(input_ids=ids[ids != image_id][None], pixel_values=pixels, image_sizes=sizes)
    with pytest.raises(ValueError, match="contain 1175 image tokens, but the 1 images give 1176"):
        vl_model(input_ids=ids[:, 1:], pixel_values=pixels, image_sizes=sizes)
    with pytest.raises(ValueError, match="need image_sizes"):
        vl_model(input_ids=ids, pixel_values=pixels)
    with pytest.raises(ValueError, match=r"shape \[total_crops, 3, 336, 336\]"):
        vl_model(input_ids=ids, pixel_values=pixels[:, :, :224, :224], image_sizes=sizes)
    with pytest.raises(ValueError, match="pass input_ids instead of inputs_embeds"):
        vl_model(inputs_embeds=torch.zeros(1, 3, 64), pixel_values=pixels, image_sizes=sizes)


# ------------------------------------------------------------------------------------------------ tiny checkpoint


@pytest.mark.slow
def test_tiny_checkpoint_loads_offline_in_a_fresh_process(tiny_vl, tmp_path):
    from safetensors import safe_open

    keys = list(safe_open(str(tiny_vl / "model.safetensors"), "pt").keys())
    assert sum(k.startswith("vision_tower.vision_model.") for k in keys) == 3 + 2 + 2 * 16
    assert {"image_newline", "multi_modal_projector.linear_2.bias", "language_model.lm_head.weight"} <= set(keys)
    script = textwrap.dedent(
        f"""
        from PIL import Image
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tiny_vl)!r}, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained({str(tiny_vl)!r}, trust_remote_code=True)
        same = AutoModelForImageTextToText.from_pretrained({str(tiny_vl)!r}, trust_remote_code=True)
        assert type(same).__name__ == type(model).__name__
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Hi"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.new("RGB", (336, 20), (90, 20, 200)), text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
        print(type(processor).__name__, type(model).__name__, image_tokens, out.shape[1] - inputs["input_ids"].shape[1])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = ["MiniMaxVL01Processor", "MiniMaxVL01ForConditionalGeneration", str(TOKENS[STRIP]), "3"]
    assert result.stdout.split()[-4:] == expected


# accelerate looks for a submodule named like each key; `image_newline` is a parameter of the root module
@pytest.mark.filterwarnings("ignore:The following device_map keys do not match any submodules")
def test_accelerate_device_map_with_disk_offload(tiny_vl, vl_processor, tmp_path):
    """Offloaded modules are only reached through module calls (accelerate's hooks load their weights)."""
    from transformers import AutoModelForCausalLM

    inputs = vl_processor(images=random_image(*STRIP, 13), text="<image> offloaded?", return_tensors="pt")
    reference = AutoModelForCausalLM.from_pretrained(tiny_vl, trust_remote_code=True)
    device_map = {
        "vision_tower": "cpu", "image_newline": "cpu", "multi_modal_projector": "disk",
        "language_model.model.embed_tokens": "disk",
        "language_model.model.layers": "cpu", "language_model.model.norm": "cpu", "language_model.lm_head": "disk",
    }  # fmt: skip
    offloaded = AutoModelForCausalLM.from_pretrained(
        tiny_vl, trust_remote_code=True, device_map=device_map, offload_folder=str(tmp_path)
    )
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, reference(**inputs).logits)
