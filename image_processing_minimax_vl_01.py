"""Image processor for MiniMax-VL-01 ("anyres" tiling).

Each image becomes one 336x336 thumbnail (the whole image squashed to the tile size) followed by the
336x336 tiles of a high-resolution canvas. The canvas size is the best of `image_grid_pinpoints` for the
image's aspect ratio; the image is resized into it keeping its aspect ratio and centred on black.

The module also holds the geometry helpers the processor and the model share:

- `select_best_resolution` picks the canvas (height, width);
- `unpadded_feature_grid` gives the (rows, cols) of the tile feature map left after removing padding;
- `num_image_tokens` / `num_crops` give the placeholder-token and crop counts for an image.

All sizes are (height, width). Everything is done with PIL and NumPy, so results do not depend on whether
torchvision is installed.
"""

import os

import numpy as np
from PIL import Image, ImageOps

from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    load_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import is_torch_tensor

from .configuration_minimax_vl_01 import RELEASED_IMAGE_GRID_PINPOINTS


TILE_SIZE = 336
PATCH_SIZE = 14

# The released 28 (height, width) pairs, in the released order (the order breaks ties in
# `select_best_resolution`); defined once, with the VL config.
DEFAULT_IMAGE_GRID_PINPOINTS = RELEASED_IMAGE_GRID_PINPOINTS

# Same default as PIL's decompression-bomb warning threshold.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

_CHANNEL_COUNTS = (1, 3, 4)

EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera sets when the photo is stored rotated or mirrored

__all__ = [
    "DEFAULT_IMAGE_GRID_PINPOINTS",
    "MiniMaxVL01ImageProcessor",
    "num_crops",
    "num_image_tokens",
    "select_best_resolution",
    "unpadded_feature_grid",
]


# ----------------------------------------------------------------------------------------------------------
# Geometry (shared with the processor and the model)
# ----------------------------------------------------------------------------------------------------------


def _check_hw(original_hw) -> tuple[int, int]:
    height, width = (int(v) for v in original_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"Image size must be positive (height, width), got {tuple(original_hw)}.")
    return height, width


def select_best_resolution(original_hw, pinpoints) -> tuple[int, int]:
    """Return the (height, width) pinpoint that best fits an image of size `original_hw` = (height, width).

    Keeps the largest effective resolution (pixels the image keeps after an aspect-preserving fit, capped at
    its own size); ties go to the least wasted canvas area, then to list order.
    """
    height, width = _check_hw(original_hw)
    if not pinpoints:
        raise ValueError("`pinpoints` is empty; give at least one (height, width) pair.")
    best, best_effective, best_wasted = None, -1, None
    for target_h, target_w in pinpoints:
        # Float arithmetic and int() truncation on purpose: this is the released rule.
        scale = min(target_w / width, target_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = target_w * target_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(target_h), int(target_w)), effective, wasted
    return best


def unpadded_feature_grid(original_hw, target_hw, patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """Return (rows, cols) of the canvas feature grid once the black padding is cut away.

    The grid is (target_h / patch) x (target_w / patch); the padded side is cut symmetrically using integer
    floors, so rows/cols can be one more than the exact image extent (the released rule).
    """
    height, width = _check_hw(original_hw)
    grid_h, grid_w = int(target_hw[0]) // patch_size, int(target_hw[1]) // patch_size
    # Exact integer arithmetic: floats misround values like 47*72/141 to 23.999... .
    if width * grid_h > height * grid_w:  # image wider than the grid: rows are padded
        new_h = height * grid_w // width
        pad = (grid_h - new_h) // 2
        return grid_h - 2 * pad, grid_w
    new_w = width * grid_h // height
    pad = (grid_w - new_w) // 2
    return grid_h, grid_w - 2 * pad


def num_image_tokens(original_hw, pinpoints, tile_size: int = TILE_SIZE, patch_size: int = PATCH_SIZE) -> int:
    """Number of `<image>` tokens for one image: (cols + 1) * rows for the tile grid (one newline per row),
    plus (tile_size // patch_size) ** 2 for the thumbnail."""
    target_hw = select_best_resolution(original_hw, pinpoints)
    rows, cols = unpadded_feature_grid(original_hw, target_hw, patch_size)
    return (cols + 1) * rows + (tile_size // patch_size) ** 2


def num_crops(original_hw, pinpoints, tile_size: int = TILE_SIZE) -> int:
    """Number of 336x336 crops for one image: the thumbnail plus the canvas tiles."""
    target_h, target_w = select_best_resolution(original_hw, pinpoints)
    return 1 + (target_h // tile_size) * (target_w // tile_size)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_valid_pinpoint(pair, tile: int) -> bool:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return False
    return all(_is_int(v) and v > 0 and v % tile == 0 for v in pair)


def _validate_geometry(tile_hw, patch_size, pinpoints) -> list[list[int]]:
    """Check tile/patch/pinpoint consistency; return the pinpoints as a list of [h, w] lists."""
    tile_h, tile_w = tile_hw
    if tile_h != tile_w or tile_h <= 0:
        raise ValueError(f"`size` must be a positive square tile, got height={tile_h}, width={tile_w}.")
    if not _is_int(patch_size) or patch_size <= 0 or tile_h % patch_size:
        raise ValueError(f"`patch_size` ({patch_size}) must be a positive integer dividing the tile size {tile_h}.")
    if not pinpoints:
        raise ValueError("`image_grid_pinpoints` is empty; give at least one [height, width] pair.")
    checked = []
    for pair in pinpoints:
        if not _is_valid_pinpoint(pair, tile_h):
            raise ValueError(
                f"`image_grid_pinpoints` entry {pair!r} is invalid: each must be a [height, width] pair of "
                f"positive multiples of the tile size {tile_h} (e.g. [{tile_h}, {2 * tile_h}])."
            )
        checked.append([int(pair[0]), int(pair[1])])
    return checked


# ----------------------------------------------------------------------------------------------------------
# Input conversion: anything accepted -> PIL RGB image
# ----------------------------------------------------------------------------------------------------------


def _check_pixel_count(height: int, width: int, max_image_pixels: int | None) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(
            f"Got an empty image (height={height}, width={width}); every image needs at least one pixel per side."
        )
    if max_image_pixels and height * width > max_image_pixels:  # 0 or None: no limit
        raise ValueError(
            f"Image of {width}x{height} = {width * height} pixels exceeds max_image_pixels={max_image_pixels} "
            "(decompression-bomb guard). Downscale the image first, or raise `max_image_pixels` on the "
            "image processor if the input is trusted."
        )


def _channels_last(array: np.ndarray, prefer_first: bool, data_format) -> np.ndarray:
    """Return a 3-D array as (H, W, C), inferring the channel axis unless `data_format` says it."""
    if data_format is not None:
        first = ChannelDimension(data_format) == ChannelDimension.FIRST
    else:
        first_ok, last_ok = array.shape[0] in _CHANNEL_COUNTS, array.shape[-1] in _CHANNEL_COUNTS
        if not (first_ok or last_ok):
            raise ValueError(
                f"Cannot find the channel axis of an image array of shape {tuple(array.shape)}: expected "
                "(height, width, C) or (C, height, width) with C in 1, 3 or 4."
            )
        # Ambiguous shapes such as (3, H, 3) follow the library convention: CHW for torch, HWC for numpy.
        first = first_ok and (prefer_first or not last_ok)
    return np.moveaxis(array, 0, -1) if first else array


def _array_to_rgb(array: np.ndarray, prefer_first: bool, data_format, do_convert_rgb: bool) -> Image.Image:
    """Turn a uint8 (or 16-bit uint16) HW / HWC / CHW array into a PIL RGB image (grayscale replicated, alpha
    dropped)."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Image arrays must be 2-D (height, width) or 3-D (height, width, C) / (C, height, width); got shape "
            f"{tuple(array.shape)}. Pass a batch as a list of images."
        )
    if array.dtype == np.uint16:  # 16-bit PNG / TIFF as read by imageio or OpenCV: 65535 is white, as 255
        array = np.round(array / 257.0).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(
            f"Image arrays must be uint8 with values 0-255 (or uint16, 16-bit), got dtype {array.dtype}. Convert "
            "first, e.g. `(x * 255).round().clip(0, 255).astype(np.uint8)` for floats in [0, 1]."
        )
    if array.ndim == 3:
        array = _channels_last(array, prefer_first, data_format)
        if array.shape[-1] not in _CHANNEL_COUNTS:
            raise ValueError(f"Image arrays need 1, 3 or 4 channels, got shape {tuple(array.shape)} (as HWC).")
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if channels != 3 and not do_convert_rgb:
        raise ValueError(f"Got a {channels}-channel image with do_convert_rgb=False; pass RGB or enable it.")
    if array.ndim == 2 or channels == 1:
        array = np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def _pil_to_rgb(image: Image.Image, do_convert_rgb: bool) -> Image.Image:
    """Decode a PIL image, turn it upright by its EXIF orientation and convert it to RGB; transparency is dropped,
    not composited."""
    try:
        image.load()  # lazily opened files decode here; truncated data fails here
    except Exception as err:
        # closed before decoding (its file is gone, tiles are left), or after (PIL released the pixels)
        if (getattr(image, "tile", None) and getattr(image, "fp", True) is None) or "closed image" in str(err):
            raise ValueError(
                "The PIL image was closed before processing (for example opened in a `with Image.open(...)` block "
                "that has ended). Process it inside the block, or keep a loaded copy: `image.copy()` within the block."
            ) from err
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(f"Could not decode the image ({reason}); the file may be corrupt or truncated.") from err
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # a phone photo stored sideways: show it as a viewer would
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if not do_convert_rgb:
        raise ValueError(f"Got a PIL image in mode {image.mode!r} with do_convert_rgb=False; pass RGB or enable it.")
    if image.mode.startswith("I") or image.mode == "F":
        image = _wide_gray_to_8bit(image)
    try:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # palette transparency lives in the alpha band; dropped below
        return image.convert("RGB")
    except Exception as err:
        raise ValueError(f"Cannot convert a PIL image in mode {image.mode!r} to RGB: {err}") from err


def _wide_gray_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grayscale (modes I;16*, I) read as 0..65535, float grayscale (mode F) as 0..1,
    rescaled to 8 bits. PIL's own conversion clips them to 0..255 instead (nearly all white, or all black)."""
    values = np.asarray(image).astype(np.float64)
    low, high = (0.0, 1.0) if image.mode == "F" else (0.0, 65535.0)
    if values.size and not (np.isfinite(values).all() and low <= values.min() and values.max() <= high):
        reading = "float grayscale" if image.mode == "F" else "16-bit grayscale"
        raise ValueError(
            f"A PIL image in mode {image.mode!r} must hold values in {low:g}..{high:g} (read as {reading}); found "
            f"{values.min():g}..{values.max():g}. Convert it to an 8-bit image (mode 'L' or 'RGB') first."
        )
    return Image.fromarray(np.round(values * (255.0 / high)).astype(np.uint8))  # mode "L"


def _open_path(source) -> Image.Image:
    """Open a local file lazily (so the size check runs before decoding) or fetch a URL / data URI."""
    source = os.fspath(source)
    try:
        if source.startswith(("http://", "https://", "data:")):
            return load_image(source)
        return Image.open(source)
    except Exception as err:
        raise ValueError(f"Could not read an image from {source[:200]!r} ({type(err).__name__}: {err}).") from err


def _to_rgb_image(image, do_convert_rgb: bool = True, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, data_format=None):
    """Validate one input image (PIL, NumPy, torch, or a path/URL) and return it as a PIL RGB image."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_path(image)
    if isinstance(image, Image.Image):
        _check_pixel_count(image.height, image.width, max_image_pixels)  # before decoding any pixels
        return _pil_to_rgb(image, do_convert_rgb)
    prefer_first = is_torch_tensor(image)
    if prefer_first:
        if str(image.dtype) != "torch.uint8":  # checked here: .numpy() cannot even convert bfloat16
            raise ValueError(
                f"Image tensors must be uint8 with values 0-255, got {image.dtype}. Convert first, e.g. "
                "`(x * 255).round().clamp(0, 255).to(torch.uint8)` for floats in [0, 1]."
            )
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"Unsupported image type {type(image).__name__}; pass a PIL image, a uint8 NumPy array, a uint8 "
            "torch tensor, or a file path/URL."
        )
    if image.ndim in (2, 3):
        spatial = image.shape[:2] if image.ndim == 2 else _channels_last(image, prefer_first, data_format).shape[:2]
        _check_pixel_count(spatial[0], spatial[1], max_image_pixels)
    return _array_to_rgb(image, prefer_first, data_format, do_convert_rgb)


def flatten_images(images) -> list:
    """Flatten an image, a list of images, or a list of per-prompt lists; split 4-D batches."""
    if isinstance(images, (list, tuple)):
        return [img for item in images for img in flatten_images(item)]
    if (isinstance(images, np.ndarray) or is_torch_tensor(images)) and images.ndim == 4:
        return list(images)
    return [images]


# ----------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------


class MiniMaxVL01ImageProcessorKwargs(ImagesKwargs, total=False):
    """Extra keyword arguments of `MiniMaxVL01ImageProcessor`.

    image_grid_pinpoints: candidate canvas sizes, a list of [height, width] multiples of the tile size.
    patch_size: vision patch size (14); sets the feature grid used for token counts.
    max_image_pixels: reject images with more pixels than this (0 disables the check).
    """

    image_grid_pinpoints: list | tuple | None
    patch_size: int | None
    max_image_pixels: int | None


class MiniMaxVL01ImageProcessor(PilBackend):
    r"""Image processor for MiniMax-VL-01 (LLaVA-style "anyres" tiling, PIL backend).

    Output of `__call__(images, return_tensors="pt")`:

    - `pixel_values`: float32 `[total_crops, 3, 336, 336]`. For each image in input order: first the
      thumbnail (the whole image resized to 336x336, aspect ratio not kept), then the canvas tiles row-major
      (top row left to right, then the next row). Image *i* has `num_crops((h_i, w_i))` crops.
    - `image_sizes`: int64 `[num_images, 2]`, the original (height, width) of each image.

    Inputs: a single image, a list, or a list of per-prompt lists (flattened in order). Each image may be a PIL
    image, a uint8 (or 16-bit uint16) NumPy array (HWC or HW grayscale; CHW accepted when unambiguous), a uint8
    torch tensor (CHW or HWC; CHW wins when ambiguous), or a file path/URL. `input_data_format` forces the channel axis.
    With `do_convert_rgb` (default), grayscale, palette and CMYK become RGB; alpha is **dropped** (the colour
    channels are kept as stored, not composited on any background), matching `PIL.Image.convert("RGB")`.
    16-bit / 32-bit integer grayscale PIL images (modes I;16, I) are read as 0..65535 and float ones (mode F) as
    0..1, both rescaled to 8 bits. A PIL image with an EXIF orientation tag is first turned upright, as a photo
    viewer shows it (`PIL.ImageOps.exif_transpose`); `image_sizes` are then the upright (height, width).

    Canvas: the best pinpoint (see `select_best_resolution`); the image is resized with PIL bicubic keeping its
    aspect ratio (the limiting side fills the canvas, the other is floored, at least 1 pixel) and pasted
    centred on black with offset `free // 2`. Crops are then scaled by `rescale_factor` (1/255) and normalised
    with the CLIP mean/std in float32.

    Bad inputs (empty images, unsupported types/shapes/dtypes, undecodable files, closed PIL images, more than
    `max_image_pixels` pixels; 0 disables that guard) raise `ValueError`.
    """

    model_input_names = ["pixel_values", "image_sizes"]
    valid_kwargs = MiniMaxVL01ImageProcessorKwargs

    size = {"height": TILE_SIZE, "width": TILE_SIZE}
    patch_size = PATCH_SIZE
    image_grid_pinpoints = DEFAULT_IMAGE_GRID_PINPOINTS
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS

    _AUTO_MAP = {"AutoImageProcessor": "image_processing_minimax_vl_01.MiniMaxVL01ImageProcessor"}

    def __init__(self, **kwargs: Unpack[MiniMaxVL01ImageProcessorKwargs]):
        size = kwargs.get("size")
        if isinstance(size, dict) and "shortest_edge" in size and "height" not in size:
            # LLaVA/CLIP-style configs give {"shortest_edge": 336}: anyres tiles are square, so it is the tile side
            kwargs["size"] = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        super().__init__(**kwargs)
        self.image_grid_pinpoints = _validate_geometry(
            (self.size.height, self.size.width), self.patch_size, self.image_grid_pinpoints
        )

    # -- geometry with the configured values ----------------------------------------------------------------

    @property
    def tile_size(self) -> int:
        return self.size.height

    def num_image_tokens(self, original_hw) -> int:
        """Image tokens for an image of original (height, width) under this processor's geometry."""
        # Inside a method the bare name resolves to the module-level function.
        return num_image_tokens(original_hw, self.image_grid_pinpoints, self.tile_size, self.patch_size)

    def num_crops(self, original_hw) -> int:
        """Crops (thumbnail + tiles) for an image of original (height, width)."""
        return num_crops(original_hw, self.image_grid_pinpoints, self.tile_size)

    # -- framework hooks --------------------------------------------------------------------------------------

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        flat = flatten_images(images)
        if not flat:
            raise ValueError("No images were given; pass at least one image.")
        return flat

    def preprocess(self, images, *args, **kwargs) -> BatchFeature:
        """transformers' preprocess, after refusing the generic settings given to this call that anyres tiling
        cannot honour (saved configs may carry CLIP-style values such as a 336 center crop: those are no-ops)."""
        _refuse_unsupported_settings(kwargs, self.tile_size)
        return super().preprocess(images, *args, **kwargs)

    def process_image(
        self, image, do_convert_rgb=None, input_data_format=None, max_image_pixels=None, **kwargs
    ) -> Image.Image:
        """Convert one raw input into a PIL RGB image (validated)."""
        return _to_rgb_image(image, bool(do_convert_rgb), max_image_pixels, input_data_format)

    def _preprocess(
        self,
        images: list[Image.Image],
        size,
        patch_size,
        image_grid_pinpoints,
        resample,
        do_rescale,
        rescale_factor,
        do_normalize,
        image_mean,
        image_std,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        tile = size.height
        pinpoints = _validate_geometry((size.height, size.width), patch_size, image_grid_pinpoints)
        scale = rescale_factor if do_rescale else None
        mean_std = (image_mean, image_std) if do_normalize else None

        crops, image_sizes = [], []
        for image in images:
            target_hw = select_best_resolution((image.height, image.width), pinpoints)
            thumbnail = image.resize((tile, tile), resample=resample)
            canvas = _fit_on_canvas(image, target_hw, resample)
            crops.append(_normalise(np.asarray(thumbnail), scale, mean_std)[None])
            crops.append(_split_tiles(_normalise(np.asarray(canvas), scale, mean_std), tile))
            image_sizes.append((image.height, image.width))

        data = {
            "pixel_values": np.concatenate(crops, axis=0),
            "image_sizes": np.asarray(image_sizes, dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def to_dict(self):
        output = super().to_dict()
        output["image_processor_type"] = type(self).__name__
        # Always carry the remote-code entry so a saved folder loads with AutoImageProcessor.
        output["auto_map"] = {**output.get("auto_map", {}), **self._AUTO_MAP}
        return output


# ----------------------------------------------------------------------------------------------------------
# Pixel helpers
# ----------------------------------------------------------------------------------------------------------


def _refuse_unsupported_settings(settings: dict, tile: int) -> None:
    """transformers' generic image settings that anyres tiling cannot honour would otherwise be ignored."""
    crop = settings.get("crop_size")
    crop_is_tile = crop is None or (isinstance(crop, dict) and set(crop.values()) == {tile})
    refused = {
        "do_resize": (settings.get("do_resize") is False,
                      "anyres tiling always resizes (the thumbnail and the canvas)"),
        "do_pad": (settings.get("do_pad") is False, "the canvas is always padded to the chosen grid resolution"),
        "pad_size": (settings.get("pad_size") is not None, "the canvas size is the chosen image_grid_pinpoints entry"),
        "crop_size": (not crop_is_tile, f"the crops are the thumbnail and the canvas tiles, {tile} x {tile}"),
        "do_center_crop": (bool(settings.get("do_center_crop")) and not crop_is_tile,
                           f"the crops are the thumbnail and the canvas tiles, {tile} x {tile}"),
        "image_seq_length": (settings.get("image_seq_length") is not None,
                             "each image's token count follows from its size (num_image_tokens)"),
        "data_format": (settings.get("data_format") not in (None, "channels_first", ChannelDimension.FIRST),
                        "pixel_values are always [crops, 3, H, W]"),
        "device": (settings.get("device") not in (None, "cpu"), "this PIL-backed processor returns CPU tensors; "
                   "move them with `.to(device)`"),
    }
    for name, (is_refused, why) in refused.items():
        if is_refused:
            raise ValueError(f"MiniMaxVL01ImageProcessor cannot honour {name}={settings[name]!r}: {why}. Remove it.")


def _fit_on_canvas(image: Image.Image, target_hw, resample) -> Image.Image:
    """Resize keeping the aspect ratio to fit (height, width) `target_hw`; paste centred on black."""
    target_h, target_w = target_hw
    width, height = image.size
    # Integer floors equal the released int(W * h / w) exactly (no float rounding involved).
    if width * target_h > height * target_w:
        new_w, new_h = target_w, max(1, target_w * height // width)
    else:
        new_w, new_h = max(1, target_h * width // height), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), resample=resample), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def _normalise(pixels: np.ndarray, scale, mean_std) -> np.ndarray:
    """uint8 HWC -> float32 CHW, scaled and normalised per channel."""
    out = pixels.astype(np.float32)
    if scale is not None:
        out *= np.float32(scale)
    if mean_std is not None:
        mean, std = (np.asarray(v, dtype=np.float32).reshape(-1) for v in mean_std)
        out = (out - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _split_tiles(canvas: np.ndarray, tile: int) -> np.ndarray:
    """[C, H, W] -> [(H/tile)*(W/tile), C, tile, tile], row-major."""
    channels, height, width = canvas.shape
    grid = canvas.reshape(channels, height // tile, tile, width // tile, tile)
    return np.ascontiguousarray(grid.transpose(1, 3, 0, 2, 4).reshape(-1, channels, tile, tile))
