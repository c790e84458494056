"""Configuration of MiniMax-VL-01: a CLIP vision tower, a two-layer projector and the MiniMax-Text-01 decoder.

The defaults are the released values and the released `config.json` loads unchanged. `text_config` is a
`MiniMaxText01Config` and `vision_config` transformers' `CLIPVisionConfig`; both are built from dicts here (the
same code on every supported transformers version: 5.17 lists sub-configs in `sub_configs`, later versions in
`sub_configs_defaults`).
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

from .configuration_minimax_text_01 import MiniMaxText01Config

# The released 28 (height, width) canvases: every multiple of 336 up to 2016 per side with at most 18 tiles.
RELEASED_IMAGE_GRID_PINPOINTS = [
    [336, 336], [336, 672], [336, 1008], [336, 1344], [336, 1680], [336, 2016],
    [672, 336], [672, 672], [672, 1008], [672, 1344], [672, 1680], [672, 2016],
    [1008, 336], [1008, 672], [1008, 1008], [1008, 1344], [1008, 1680], [1008, 2016],
    [1344, 336], [1344, 672], [1344, 1008], [1344, 1344],
    [1680, 336], [1680, 672], [1680, 1008],
    [2016, 336], [2016, 672], [2016, 1008],
]  # fmt: skip

# The released CLIP ViT-L/14 at 336 px (576 patches + CLS).
RELEASED_VISION_CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=336,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=6144,
    vocab_size=32000,
    num_channels=3,
)

SUB_CONFIGS = {"text_config": MiniMaxText01Config, "vision_config": CLIPVisionConfig}


@strict(accept_kwargs=True)
class MiniMaxVL01Config(PreTrainedConfig):
    r"""
    text_config (`dict` or `MiniMaxText01Config`): the language model (released: MiniMax-Text-01 widths).
    vision_config (`dict` or `CLIPVisionConfig`): the vision tower (released: CLIP ViT-L/14, 336 px).
    image_token_index (`int`): id of the `<image>` token; each one is replaced by one image feature.
    projector_hidden_act (`str`): activation between the two projector linears ("gelu", the erf form).
    vision_feature_layer (`int`): encoder layer whose hidden states are the image features (-1 = last layer,
        taken before any post-layernorm; 0 = the embeddings after the pre-layernorm).
    vision_feature_select_strategy (`str`): "default" drops the CLS token; it is the only strategy the anyres
        grid supports (the tile features must form a square patch grid).
    image_grid_pinpoints (`list[list[int]]`): candidate (height, width) canvases, multiples of the tile size.
    image_seq_length (`int`): features per crop, (image_size / patch_size) ** 2 = 576 (the thumbnail's count).
    """

    model_type = "minimax_vl_01"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs = SUB_CONFIGS  # read by transformers 5.17
    sub_configs_defaults = SUB_CONFIGS  # read by later versions (which derive `sub_configs` from it)

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 200025
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int | list[int] = -1  # a list (multi-layer features) is rejected with a clear error
    vision_feature_select_strategy: str = "default"
    image_grid_pinpoints: list | None = None
    image_seq_length: int = 576
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # Build the sub-configs before the base class looks at them, so every version sees config objects.
        if not isinstance(self.text_config, PreTrainedConfig):
            self.text_config = MiniMaxText01Config(**_without_model_type(self.text_config or {}))
        if not isinstance(self.vision_config, PreTrainedConfig):
            values = self.vision_config if self.vision_config is not None else RELEASED_VISION_CONFIG
            self.vision_config = CLIPVisionConfig(**_without_model_type(values))
        if self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = [list(pair) for pair in RELEASED_IMAGE_GRID_PINPOINTS]
        super().__post_init__(**kwargs)
        self._validate()

    def validate_minimax_vl_fields(self):
        """transformers' validation hook, run again by `save_pretrained`: a field changed after construction is
        checked as the constructor checks it."""
        self._validate()
        self.text_config.validate()

    @property
    def tile_size(self) -> int:
        return self.vision_config.image_size

    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    def _validate(self):
        def fail(key, problem, fix):
            raise ValueError(f"MiniMaxVL01Config: `{key}` {problem}. {fix}")

        vision = self.vision_config
        if not isinstance(vision, CLIPVisionConfig):
            fail("vision_config", f"is a {type(vision).__name__}",
                 "Give a CLIP vision config (model_type 'clip_vision_model').")
        if not isinstance(vision.image_size, int) or not isinstance(vision.patch_size, int):
            fail("vision_config.image_size", f"is {vision.image_size!r} (patch_size {vision.patch_size!r})",
                 "Use square crops given as single ints, e.g. image_size=336, patch_size=14.")
        if vision.image_size % vision.patch_size:
            fail("vision_config.image_size",
                 f"({vision.image_size}) is not a multiple of patch_size ({vision.patch_size})",
                 "The crop must split into whole patches (336 / 14 in the release).")
        activations = {"projector_hidden_act": self.projector_hidden_act, "vision_config.hidden_act": vision.hidden_act}
        for key, act in activations.items():
            if act not in ACT2FN:
                fail(key, f"is {act!r}", f"Use one of transformers' activations ('gelu' in the release): "
                     f"{', '.join(sorted(ACT2FN))}.")
        if self.vision_feature_select_strategy != "default":
            fail("vision_feature_select_strategy", f"is {self.vision_feature_select_strategy!r}",
                 'Only "default" (drop the CLS token) is supported: the anyres merge needs a square patch grid.')
        layers = vision.num_hidden_layers
        if not isinstance(self.vision_feature_layer, int) or not -(layers + 1) <= self.vision_feature_layer <= layers:
            fail("vision_feature_layer", f"is {self.vision_feature_layer!r}",
                 f"Give one layer index in -{layers + 1}..{layers} (-1 = last encoder layer, the released value).")
        patches = self.patches_per_side**2
        if self.image_seq_length != patches:
            fail("image_seq_length", f"({self.image_seq_length}) is not (image_size / patch_size)^2 = {patches}",
                 "Set it to the number of patches per crop.")
        pinpoints = self.image_grid_pinpoints
        if not pinpoints:
            fail("image_grid_pinpoints", "is empty", "Give at least one [height, width] canvas.")
        for pair in pinpoints:
            valid = isinstance(pair, (list, tuple)) and len(pair) == 2
            if not valid or any(not isinstance(v, int) or v <= 0 or v % self.tile_size for v in pair):
                fail("image_grid_pinpoints", f"contains {pair!r}", "Every entry must be a [height, width] pair of "
                     f"positive multiples of the tile size {self.tile_size}.")
        if self.tie_word_embeddings:
            fail("tie_word_embeddings", "is true", "The language model keeps separate input-embedding and lm_head "
                 "weights (both are in the checkpoint); set it to false.")
        vocab = self.text_config.vocab_size
        if not isinstance(self.image_token_index, int) or not 0 <= self.image_token_index < vocab:
            fail("image_token_index", f"({self.image_token_index}) is outside the vocabulary (size {vocab})",
                 "Use the id of the tokenizer's <image> token.")


def _without_model_type(values: dict) -> dict:
    """The sub-config dicts carry their `model_type`, which the config classes set themselves."""
    return {key: value for key, value in values.items() if key != "model_type"}


__all__ = ["MiniMaxVL01Config"]
