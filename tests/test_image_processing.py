"""Tests for image_processing_minimax_vl_01 (spec §4.3-4.4). CPU only, a few seconds.

Expected values come from the spec's worked examples, from hand-derived numbers, or from the small
independent reference implementations below (plain Python / PIL / NumPy), never from the module itself.
"""

import io
import json
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from minimax_code import REPO_ROOT, load
from helpers import random_image
from released_configs import RELEASED_PINPOINTS

ipm = load("image_processing_minimax_vl_01")
MiniMaxVL01ImageProcessor = ipm.MiniMaxVL01ImageProcessor


# Fast and sensitive to the transformers image-processing API, so it also runs on the oldest version.
pytestmark = pytest.mark.smoke


# Spec §4.1, written out independently of the module's constant.
LLAVA_STYLE_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@pytest.fixture(scope="module")
def processor():
    return MiniMaxVL01ImageProcessor()


# --------------------------------------------------------------------------------------------------------
# Reference implementations (independent of the module)
# --------------------------------------------------------------------------------------------------------


def ref_best_resolution(height, width, pinpoints):
    """Spec §4.3 step 1, written as a sort key over all candidates."""
    candidates = []
    for index, (target_h, target_w) in enumerate(pinpoints):
        scale = min(target_w / width, target_h / height)
        kept = int(width * scale) * int(height * scale)
        effective = min(kept, width * height)
        candidates.append((-effective, target_w * target_h - effective, index, (target_h, target_w)))
    return min(candidates)[3]


def ref_token_count(height, width, pinpoints, tile=336, patch=14):
    """Spec §4.4: build the feature grid, slice away the padding like the model does, count."""
    target_h, target_w = ref_best_resolution(height, width, pinpoints)
    grid = np.zeros((target_h // patch, target_w // patch))
    ch, cw = grid.shape
    if Fraction(width, height) > Fraction(cw, ch):
        pad = (ch - int(Fraction(height * cw, width))) // 2
        grid = grid[pad : ch - pad, :]
    else:
        pad = (cw - int(Fraction(width * ch, height))) // 2
        grid = grid[:, pad : cw - pad]
    rows, cols = grid.shape
    crops = 1 + (target_h // tile) * (target_w // tile)
    return (target_h, target_w), (rows, cols), rows * (cols + 1) + (tile // patch) ** 2, crops


def ref_normalise(pixels_hwc_uint8):
    x = pixels_hwc_uint8.astype(np.float32) / 255.0
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def ref_crops(image, target_hw, resized_wh):
    """Thumbnail + tiles built with plain PIL/NumPy, from hand-derived target and resized sizes."""
    target_h, target_w = target_hw
    new_w, new_h = resized_wh
    thumbnail = ref_normalise(np.asarray(image.resize((336, 336), Image.BICUBIC)))
    canvas = np.zeros((target_h, target_w, 3), dtype=np.uint8)
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image.resize((new_w, new_h), Image.BICUBIC))
    tiles = [
        ref_normalise(canvas[r * 336 : (r + 1) * 336, c * 336 : (c + 1) * 336])
        for r in range(target_h // 336)
        for c in range(target_w // 336)
    ]
    return [thumbnail] + tiles


# --------------------------------------------------------------------------------------------------------
# Token and crop counts
# --------------------------------------------------------------------------------------------------------

# Spec §4.4 worked examples: (w, h) -> target (W, H), crops, N.
WORKED_EXAMPLES = [
    ((336, 336), (336, 336), 2, 1176),
    ((800, 600), (1008, 672), 7, 3696),
    ((1024, 768), (1344, 1008), 13, 7560),
    ((1920, 1080), (2016, 1008), 19, 9864),
    ((500, 2000), (672, 2016), 13, 5904),
]


@pytest.mark.parametrize("wh, target_wh, crops, tokens", WORKED_EXAMPLES)
def test_spec_worked_examples(processor, wh, target_wh, crops, tokens):
    (w, h), (tw, th) = wh, target_wh
    assert ipm.select_best_resolution((h, w), RELEASED_PINPOINTS) == (th, tw)
    assert ipm.num_crops((h, w), RELEASED_PINPOINTS) == crops
    assert ipm.num_image_tokens((h, w), RELEASED_PINPOINTS) == tokens
    assert processor.num_crops((h, w)) == crops
    assert processor.num_image_tokens((h, w)) == tokens


def test_default_pinpoints_are_the_released_ones(processor):
    assert processor.image_grid_pinpoints == RELEASED_PINPOINTS
    assert ipm.DEFAULT_IMAGE_GRID_PINPOINTS == RELEASED_PINPOINTS


def _sweep_sizes():
    sizes = {(1, 1), (17, 3000), (3000, 17), (1, 5000), (5000, 1), (2, 3)}
    for h, w in RELEASED_PINPOINTS:  # exact pinpoints and their neighbours
        sizes |= {(h, w), (w, h), (h - 1, w), (h, w + 1), (h + 1, w - 1)}
    sizes |= {(2017, 2017), (3000, 4000), (4000, 3000), (2160, 3840), (50, 10000), (4321, 2017)}
    # odd sizes, including ones where float arithmetic misrounds the unpadding floor
    sizes |= {(333, 777), (777, 333), (47, 141), (44, 99), (55, 22), (47, 1128), (601, 799), (1079, 1921)}
    rng = np.random.RandomState(1234)
    for _ in range(400):
        sizes.add(tuple(int(v) for v in np.exp(rng.uniform(0, np.log(6000), 2)).round().clip(1)))
    for _ in range(200):
        sizes.add(tuple(int(v) for v in rng.randint(1, 2500, 2)))
    return sorted(sizes)


@pytest.mark.parametrize("pinpoints", [RELEASED_PINPOINTS, LLAVA_STYLE_PINPOINTS], ids=["released", "llava"])
def test_counts_match_bruteforce_sweep(pinpoints):
    for h, w in _sweep_sizes():
        target, grid, tokens, crops = ref_token_count(h, w, pinpoints)
        assert ipm.select_best_resolution((h, w), pinpoints) == target, (h, w)
        assert ipm.unpadded_feature_grid((h, w), target, 14) == grid, (h, w)
        assert ipm.num_image_tokens((h, w), pinpoints) == tokens, (h, w)
        assert ipm.num_crops((h, w), pinpoints) == crops, (h, w)


def test_unpadding_uses_exact_floor():
    # 141 wide x 47 high on a 672x1008 canvas (48x72 grid): 47*72/141 = 24 exactly, while the float
    # product 47 * (72/141) is 23.999...; the floor rule must give 24 rows -> pad 12 -> 24 rows kept.
    assert ipm.unpadded_feature_grid((47, 141), (672, 1008), 14) == (24, 72)


def test_ties_follow_list_order():
    # A square image fits 336x672 and 672x336 equally well (same effective, same waste): first listed wins.
    assert ipm.select_best_resolution((336, 336), [[672, 336], [336, 672]]) == (672, 336)
    assert ipm.select_best_resolution((336, 336), [[336, 672], [672, 336]]) == (336, 672)
    # Same effective resolution, less waste wins regardless of order.
    assert ipm.select_best_resolution((100, 100), [[672, 672], [336, 336]]) == (336, 336)


# --------------------------------------------------------------------------------------------------------
# Pixel values
# --------------------------------------------------------------------------------------------------------


def test_pixels_800x600_thumbnail_and_tiles(processor):
    image = random_image(800, 600, seed=3)
    out = processor(image, return_tensors="pt")
    pixel_values = out["pixel_values"]
    assert pixel_values.shape == (7, 3, 336, 336) and pixel_values.dtype == torch.float32
    # Target 1008x672 (W x H); 800/600 < 1008/672, so height fills: 896 x 672, pasted at x = 56.
    expected = ref_crops(image, target_hw=(672, 1008), resized_wh=(896, 672))
    np.testing.assert_allclose(pixel_values[0].numpy(), expected[0], atol=1e-5, rtol=0)  # thumbnail
    tile_r1_c2 = 1 + 1 * 3 + 2  # thumbnail first, then row-major tiles of a 2x3 grid
    np.testing.assert_allclose(pixel_values[tile_r1_c2].numpy(), expected[tile_r1_c2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(pixel_values.numpy(), np.stack(expected), atol=1e-5, rtol=0)
    # Left border of tile (0, 0) is black padding.
    black = (0.0 - CLIP_MEAN) / CLIP_STD
    left_border = pixel_values[1, :, :, :56].numpy()
    np.testing.assert_allclose(left_border, np.broadcast_to(black[:, None, None], (3, 336, 56)), atol=1e-6)


@pytest.mark.parametrize(
    "height, width, target_hw, resized_wh",
    [
        # 1000/301 > 1008/336: width fills, 1008 x floor(1008*301/1000) = 303; free 33 -> y offset 16.
        (301, 1000, (336, 1008), (1008, 303)),
        # 801/600 < 1008/672: height fills, floor(672*801/600) = 897 x 672; free 111 -> x offset 55.
        (600, 801, (672, 1008), (897, 672)),
        # 500/2000 < 672/2016: height fills, 504 x 2016; free 168 -> x offset 84.
        (2000, 500, (2016, 672), (504, 2016)),
        # 1008*333/1000 = 335.66 is floored, not rounded: one black row at the bottom (offset 0).
        (333, 1000, (336, 1008), (1008, 335)),
    ],
)
def test_pixels_against_reference(processor, height, width, target_hw, resized_wh):
    image = random_image(width, height, seed=4)
    out = processor([image], return_tensors="np")
    expected = np.stack(ref_crops(image, target_hw, resized_wh))
    assert out["pixel_values"].shape == expected.shape and out["pixel_values"].dtype == np.float32
    np.testing.assert_allclose(out["pixel_values"], expected, atol=1e-5, rtol=0)


def test_tiny_and_extreme_images_process(processor):
    for h, w in [(1, 1), (17, 3000), (3000, 17), (5, 4000)]:
        out = processor(random_image(w, h), return_tensors="pt")
        crops = ref_token_count(h, w, RELEASED_PINPOINTS)[3]
        assert out["pixel_values"].shape == (crops, 3, 336, 336)
        assert torch.isfinite(out["pixel_values"]).all()


# --------------------------------------------------------------------------------------------------------
# Input modes
# --------------------------------------------------------------------------------------------------------


def _pv(processor, image, **kwargs):
    return processor(image, return_tensors="pt", **kwargs)["pixel_values"]


def test_modes_convert_to_rgb(processor):
    rgb = random_image(400, 300, seed=5)
    rgb_array = np.asarray(rgb)
    reference = _pv(processor, rgb)
    assert reference.shape == (1 + 2, 3, 336, 336)  # 400x300 (W x H) -> 672x336 canvas

    # numpy HWC and torch CHW / HWC of the same pixels
    assert torch.equal(_pv(processor, rgb_array), reference)
    assert torch.equal(_pv(processor, torch.from_numpy(rgb_array.copy()).permute(2, 0, 1)), reference)
    assert torch.equal(_pv(processor, torch.from_numpy(rgb_array.copy())), reference)

    # RGBA: alpha is dropped, colour channels kept as stored
    alpha = np.random.RandomState(6).randint(0, 256, (300, 400, 1), dtype=np.uint8)
    rgba_array = np.concatenate([rgb_array, alpha], axis=-1)
    assert torch.equal(_pv(processor, Image.fromarray(rgba_array, "RGBA")), reference)
    assert torch.equal(_pv(processor, rgba_array), reference)

    # grayscale: PIL L, numpy HW, numpy HW1, torch 1HW, and LA all equal the replicated RGB image
    gray = rgb.convert("L")
    gray_array = np.asarray(gray)
    gray_reference = _pv(processor, Image.fromarray(np.repeat(gray_array[..., None], 3, axis=-1)))
    gray_tensor = torch.from_numpy(gray_array.copy())[None]
    for variant in (gray, gray_array, gray_array[..., None], gray_tensor, gray.convert("LA")):
        assert torch.equal(_pv(processor, variant), gray_reference)

    # palette (with and without transparency) and CMYK equal their PIL RGB conversions
    palette = rgb.quantize(colors=32)
    assert torch.equal(_pv(processor, palette), _pv(processor, palette.convert("RGB")))
    palette.info["transparency"] = 0
    assert torch.equal(_pv(processor, palette), _pv(processor, palette.convert("RGBA").convert("RGB")))
    cmyk = rgb.convert("CMYK")
    assert torch.equal(_pv(processor, cmyk), _pv(processor, cmyk.convert("RGB")))

    # all of them are [., 3, 336, 336] float32
    assert _pv(processor, cmyk).dtype == torch.float32


def test_lists_nested_lists_and_image_sizes(processor):
    a, b = random_image(800, 600, seed=7), random_image(500, 2000, seed=8)
    out = processor([[a], [b, a]], return_tensors="pt")
    assert out["image_sizes"].dtype == torch.int64
    assert out["image_sizes"].tolist() == [[600, 800], [2000, 500], [600, 800]]  # (height, width)
    assert out["pixel_values"].shape == (7 + 13 + 7, 3, 336, 336)
    single = processor(b, return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"][7:20], single)
    # a 4-D batch of equal-size images is split into images
    batch = np.stack([np.asarray(a), np.asarray(a)])
    assert processor(batch, return_tensors="pt")["image_sizes"].tolist() == [[600, 800], [600, 800]]


def test_file_path_input(processor, tmp_path):
    image = random_image(50, 40, seed=9)
    path = tmp_path / "img.png"
    image.save(path)
    assert torch.equal(_pv(processor, str(path)), _pv(processor, image))


# --------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------


def _truncated_png():
    buffer = io.BytesIO()
    random_image(64, 64, seed=10).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (Image.new("RGB", (0, 10)), "empty image"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((10, 0), np.uint8), "empty image"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "channel"),
        (np.zeros((10, 10, 10), np.uint8), "channel axis"),
        (np.zeros((10,), np.uint8), "2-D"),
        (np.zeros((2, 2, 10, 10, 3), np.uint8), "2-D"),
        (torch.zeros(3, 10, 10, dtype=torch.bfloat16), "uint8"),
        (42, "Unsupported image type"),
        ({"image": 1}, "Unsupported image type"),
        ("/nonexistent/file.png", "Could not read"),
        (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10000, 20000, 3)), "max_image_pixels"),
        ([], "No images"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_bad_inputs_raise(processor, bad, message):
    with pytest.raises(ValueError, match=message):
        processor(bad, return_tensors="pt")


def test_corrupt_files_raise(processor, tmp_path):
    with pytest.raises(ValueError, match="Could not decode"):
        processor(_truncated_png())
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="Could not read"):
        processor(str(garbage))


def test_pixel_limit_is_configurable():
    small = MiniMaxVL01ImageProcessor(max_image_pixels=1000)
    with pytest.raises(ValueError, match="exceeds max_image_pixels=1000"):
        small(random_image(40, 30))  # 1200 pixels
    assert small(random_image(40, 25), return_tensors="pt")["pixel_values"].shape[0] == 2
    with pytest.raises(ValueError, match="max_image_pixels"):
        MiniMaxVL01ImageProcessor()(random_image(40, 30), max_image_pixels=100)
    unlimited = MiniMaxVL01ImageProcessor(max_image_pixels=0)  # 0 disables the guard
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10000, 20000, 3))
    with pytest.raises(ValueError, match="max_image_pixels"):
        MiniMaxVL01ImageProcessor()(huge)
    assert unlimited.max_image_pixels == 0
    assert unlimited(random_image(40, 30), return_tensors="pt")["image_sizes"].tolist() == [[30, 40]]


def test_no_rgb_conversion_rejects_non_rgb():
    with pytest.raises(ValueError, match="do_convert_rgb=False"):
        MiniMaxVL01ImageProcessor(do_convert_rgb=False)(random_image(20, 20).convert("L"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_grid_pinpoints": [[336, 500]]}, "multiples of the tile size 336"),
        ({"image_grid_pinpoints": [[336]]}, "pair"),
        ({"image_grid_pinpoints": [336, 672]}, "invalid"),
        ({"image_grid_pinpoints": [[0, 336]]}, "positive multiples"),
        ({"image_grid_pinpoints": []}, "empty"),
        ({"patch_size": 15}, "patch_size"),
        ({"size": {"height": 336, "width": 672}}, "square"),
    ],
)
def test_bad_geometry_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MiniMaxVL01ImageProcessor(**kwargs)


def test_bad_geometry_at_call_time_raises(processor):
    with pytest.raises(ValueError, match="multiples of the tile size"):
        processor(random_image(20, 20), image_grid_pinpoints=[[100, 100]])


def test_geometry_helpers_reject_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        ipm.num_image_tokens((0, 10), RELEASED_PINPOINTS)
    with pytest.raises(ValueError, match="positive"):
        ipm.select_best_resolution((10, -1), RELEASED_PINPOINTS)


# --------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    original = MiniMaxVL01ImageProcessor(image_grid_pinpoints=LLAVA_STYLE_PINPOINTS, max_image_pixels=10**8)
    original.save_pretrained(tmp_path)
    with open(tmp_path / "preprocessor_config.json") as f:
        saved = json.load(f)
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_minimax_vl_01.MiniMaxVL01ImageProcessor"}
    assert saved["image_processor_type"] == "MiniMaxVL01ImageProcessor"
    assert saved["image_grid_pinpoints"] == LLAVA_STYLE_PINPOINTS
    assert saved["size"] == {"height": 336, "width": 336} and saved["patch_size"] == 14
    assert saved["resample"] == 3  # PIL bicubic

    loaded = MiniMaxVL01ImageProcessor.from_pretrained(tmp_path)
    assert loaded.image_grid_pinpoints == LLAVA_STYLE_PINPOINTS
    assert loaded.patch_size == 14 and loaded.max_image_pixels == 10**8
    assert loaded.to_dict() == original.to_dict()
    assert loaded.num_image_tokens((600, 800)) == ref_token_count(600, 800, LLAVA_STYLE_PINPOINTS)[2]
    image = random_image(800, 600, seed=11)
    assert torch.equal(_pv(loaded, image), _pv(original, image))

    # Saving again keeps a single, identical auto_map entry.
    loaded.save_pretrained(tmp_path / "again")
    with open(tmp_path / "again" / "preprocessor_config.json") as f:
        assert json.load(f)["auto_map"] == saved["auto_map"]


def test_clip_style_shortest_edge_size_is_the_square_tile(tmp_path):
    config = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
              "image_grid_pinpoints": RELEASED_PINPOINTS, "patch_size": 14}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    loaded = MiniMaxVL01ImageProcessor.from_pretrained(tmp_path)
    assert (loaded.size.height, loaded.size.width) == (336, 336)
    image = random_image(800, 600, seed=5)
    assert torch.equal(_pv(loaded, image), _pv(MiniMaxVL01ImageProcessor(), image))


def copy_image_processor_code(folder):
    """The image processor module and the sibling modules it imports (the configurations, and the checkpoint-layout
    table the text configuration reads), as in a Hub repo."""
    for name in ("image_processing_minimax_vl_01.py", "configuration_minimax_vl_01.py",
                 "configuration_minimax_text_01.py", "checkpoint_layouts.py"):
        shutil.copy(REPO_ROOT / name, folder)


def test_auto_map_resolves_as_remote_code(tmp_path):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    MiniMaxVL01ImageProcessor(image_grid_pinpoints=LLAVA_STYLE_PINPOINTS).save_pretrained(tmp_path)
    copy_image_processor_code(tmp_path)
    with open(tmp_path / "preprocessor_config.json") as f:
        reference = json.load(f)["auto_map"]["AutoImageProcessor"]
    cls = get_class_from_dynamic_module(reference, str(tmp_path))
    assert cls.__name__ == "MiniMaxVL01ImageProcessor"
    assert cls.from_pretrained(tmp_path).image_grid_pinpoints == LLAVA_STYLE_PINPOINTS


def test_auto_image_processor_loads_saved_folder(tmp_path):
    from transformers import AutoImageProcessor

    MiniMaxVL01ImageProcessor(image_grid_pinpoints=LLAVA_STYLE_PINPOINTS).save_pretrained(tmp_path)
    copy_image_processor_code(tmp_path)

    try:
        loaded = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    except ImportError as err:  # transformers 5.17's AutoImageProcessor insists on torchvision
        pytest.skip(f"AutoImageProcessor unavailable here: {err}")
    assert type(loaded).__name__ == "MiniMaxVL01ImageProcessor"
    assert loaded.image_grid_pinpoints == LLAVA_STYLE_PINPOINTS
