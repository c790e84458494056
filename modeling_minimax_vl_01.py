"""MiniMax-VL-01: transformers' CLIP vision tower + a two-layer projector + the MiniMax-Text-01 decoder.

Reading order: projector -> pretrained base (weights init, no-split modules) -> the base model (`AutoModel`):
image features (CLIP -> drop CLS -> projector), the anyres pack (thumbnail, stitched and unpadded tile grid, a
newline per row), the merge into the text embeddings, forward -> the model with the LM head: generation, forward.

The parameter names are the released checkpoint keys, with no renaming on load or save:
`vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`, `image_newline`, `language_model.model.*`,
`language_model.lm_head.weight`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .configuration_minimax_vl_01 import MiniMaxVL01Config
from .image_processing_minimax_vl_01 import (
    num_crops,
    num_image_tokens,
    select_best_resolution,
    unpadded_feature_grid,
)
from .cache_minimax_text_01 import MiniMaxGenerationMixin, MiniMaxText01Cache
from .modeling_minimax_text_01 import MiniMaxPreTrainedMixin, MiniMaxText01ForCausalLM, MiniMaxText01Model


# The two ways the processor's output can disagree with the model's image geometry.
PROCESSOR_MISMATCH_FIX = (
    "Either the image processor's image_grid_pinpoints / tile size differ from the model config's (load the processor "
    "from the model's folder, or give it image_grid_pinpoints=model.config.image_grid_pinpoints), or the "
    "pixel_values, image_sizes and input_ids come from different processor calls."
)


def images_by_token_count(totals: list[int], tokens_per_image: list[int]) -> list[range] | None:
    """Split the images, in order, into consecutive groups whose token counts add up to each of `totals` (the image
    tokens of each prompt, or of each unbroken run): one range of image indices per total, or None if no such split
    exists (an image would straddle two totals)."""
    groups, image = [], 0
    for remaining in totals:
        first = image
        while remaining > 0 and image < len(tokens_per_image):
            remaining -= tokens_per_image[image]
            image += 1
        if remaining != 0:
            return None
        groups.append(range(first, image))
    return groups


class MiniMaxVL01MultiModalProjector(nn.Module):
    """linear_1 -> act (GELU, erf form) -> linear_2, both with biases: vision width -> text width."""

    def __init__(self, config: MiniMaxVL01Config):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_hidden, bias=True)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=True)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MiniMaxVL01VisionModel(CLIPVisionModel):
    """transformers' CLIP vision model without the post-layernorm.

    The image features are taken before CLIP's post-layernorm (which only feeds the pooled CLS output, unused here)
    and the release ships no weights for it. Being defined in remote code also keeps transformers' checkpoint
    renaming for `CLIPVisionModel` (it strips a `vision_model.` level on load) off these released keys.
    """

    def __init__(self, config: CLIPVisionConfig):
        super().__init__(config)
        self.post_layernorm = nn.Identity()


class MiniMaxVL01PreTrainedModel(MiniMaxPreTrainedMixin, PreTrainedModel):
    config_class = MiniMaxVL01Config
    config: MiniMaxVL01Config
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMaxText01DecoderLayer", "CLIPEncoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # with MiniMaxText01StaticCache (generate(cache_implementation="static"))
    _is_stateful = True  # the language model's lightning states cannot be rolled back

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniMaxVL01Model):
            # one learned vector of embedding scale, appended after every row of the tile grid
            init.normal_(module.image_newline, mean=0.0, std=self.config.text_config.hidden_size**-0.5)


class MiniMaxVL01Model(MiniMaxVL01PreTrainedModel):
    """The base model (`AutoModel`): vision tower, projector and the text decoder without its LM head; returns the
    decoder's hidden states. Its parameter names are the released ones less `language_model.lm_head.weight`, so it
    loads from a MiniMax-VL-01 checkpoint as it is. MiniMaxVL01ForConditionalGeneration adds the head."""

    _keys_to_ignore_on_load_unexpected = [r"^language_model\.lm_head\."]  # the head's weight, unused here

    def __init__(self, config: MiniMaxVL01Config):
        super().__init__(config)
        # a container, so that the parameter names carry the released `vision_tower.vision_model.` prefix
        self.vision_tower = nn.ModuleDict({"vision_model": MiniMaxVL01VisionModel._from_config(config.vision_config)})
        self.multi_modal_projector = MiniMaxVL01MultiModalProjector(config)
        self.image_newline = nn.Parameter(torch.empty(config.text_config.hidden_size))
        self.language_model = self._build_language_model(config)
        self.post_init()

    @staticmethod
    def _build_language_model(config: MiniMaxVL01Config) -> nn.Module:
        # a container again: `language_model.model.*`, the released names of the text decoder
        return nn.ModuleDict({"model": MiniMaxText01Model._from_config(config.text_config)})

    def get_input_embeddings(self):
        return self.language_model.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.model.set_input_embeddings(value)

    # -- image features -----------------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """pixel_values [total_crops, 3, S, S] (per image: thumbnail, then tiles row-major) and image_sizes
        [num_images, 2] original (height, width) -> one [num_image_tokens_i, hidden] tensor per image."""
        sizes, crops_per_image = self._check_pixel_inputs(pixel_values, image_sizes)
        crops = self.multi_modal_projector(self._crop_features(pixel_values))  # [total_crops, P*P, D]
        return [self._pack_image(image_crops, hw) for image_crops, hw in zip(crops.split(crops_per_image), sizes)]

    def _crop_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP hidden states of the configured encoder layer (before any post-layernorm), CLS dropped:
        [crops, 3, S, S] -> [crops, (S / patch)^2, vision_hidden]."""
        layer = self.config.vision_feature_layer
        clip = self.vision_tower.vision_model
        pixel_values = pixel_values.to(clip.dtype)
        if layer == -1:  # the released choice: the encoder output, no need to keep every layer
            hidden = clip(pixel_values).last_hidden_state
        else:
            hidden = clip(pixel_values, output_hidden_states=True).hidden_states[layer]
        return hidden[:, 1:]

    def _pack_image(self, crops: torch.Tensor, original_hw) -> torch.Tensor:
        """crops [1 + tiles, P*P, D] (thumbnail first) -> [P*P + (cols + 1) * rows, D]: the thumbnail features,
        then the tile grid stitched into one map, unpadded, with `image_newline` after every row."""
        P, D = self.config.patches_per_side, crops.shape[-1]
        target_h, target_w = select_best_resolution(original_hw, self.config.image_grid_pinpoints)
        grid_h, grid_w = target_h // self.config.tile_size, target_w // self.config.tile_size
        # [gh * gw, P*P, D] -> [gh, gw, P, P, D] -> [gh, P, gw, P, D] -> one [gh*P, gw*P, D] feature map
        tiles = crops[1:].view(grid_h, grid_w, P, P, D).permute(0, 2, 1, 3, 4).reshape(grid_h * P, grid_w * P, D)
        rows, cols = unpadded_feature_grid(original_hw, (target_h, target_w), self.config.vision_config.patch_size)
        top, left = (grid_h * P - rows) // 2, (grid_w * P - cols) // 2  # the padding is cut symmetrically
        tiles = tiles[top : top + rows, left : left + cols]
        newline = self.image_newline.to(tiles.device, tiles.dtype).expand(rows, 1, D)
        return torch.cat((crops[0], torch.cat((tiles, newline), dim=1).reshape(-1, D)))

    def _num_image_tokens(self, original_hw) -> int:
        config = self.config
        patch = config.vision_config.patch_size
        return num_image_tokens(original_hw, config.image_grid_pinpoints, config.tile_size, patch)

    def _check_pixel_inputs(self, pixel_values, image_sizes) -> tuple[list[tuple[int, int]], list[int]]:
        """Validate the image inputs; return the original (height, width) and the crop count of each image."""
        S = self.config.tile_size
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch tensor, got {type(pixel_values).__name__}. Call the "
                            "processor with return_tensors='pt'.")
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, S, S):
            raise ValueError(
                f"pixel_values must have shape [total_crops, 3, {S}, {S}], got {tuple(pixel_values.shape)}. Use the "
                "MiniMax-VL-01 image processor, which returns the crops of all images concatenated."
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be the image processor's normalised float crops, got {pixel_values.dtype}. Pass "
                "the images through the MiniMax-VL-01 image processor."
            )
        if image_sizes is None:
            raise ValueError("pixel_values need image_sizes (the original (height, width) of each image); pass both.")
        image_sizes = torch.as_tensor(image_sizes)
        if image_sizes.dim() != 2 or image_sizes.shape[-1] != 2 or image_sizes.is_floating_point():
            raise ValueError(f"image_sizes must be an integer tensor [num_images, 2] of (height, width) rows, got "
                             f"shape {tuple(image_sizes.shape)} ({image_sizes.dtype}). Pass the processor's "
                             "image_sizes.")
        sizes = [tuple(int(v) for v in hw) for hw in image_sizes.tolist()]
        expected = [num_crops(hw, self.config.image_grid_pinpoints, S) for hw in sizes]
        if sum(expected) != pixel_values.shape[0]:
            def fits(candidate):
                crops = sum(num_crops(hw, self.config.image_grid_pinpoints, S) for hw in candidate)
                return crops == pixel_values.shape[0]
            raise ValueError(
                f"pixel_values holds {pixel_values.shape[0]} crops, but image_sizes {sizes} need {sum(expected)} "
                f"under this model's image_grid_pinpoints (per image {expected}: one thumbnail plus the tiles of its "
                f"canvas).{self._swapped_size_hint(sizes, fits)} {PROCESSOR_MISMATCH_FIX}"
            )
        return sizes, expected

    def _merge_image_features(
        self, input_ids, inputs_embeds, image_features: list[torch.Tensor], image_sizes=None
    ) -> torch.Tensor:
        """Write the image features, in order, into the positions where input_ids == image_token_index
        (`image_sizes`: the images' (height, width) rows, for the error messages)."""
        image_mask = input_ids == self.config.image_token_index  # [B, T]
        num_tokens = int(image_mask.sum())
        features = torch.cat(image_features)  # [sum of N_i, D]
        if num_tokens == 0:
            raise ValueError(
                f"pixel_values were given, but input_ids contain no image token (id {self.config.image_token_index}). "
                "Put one <image> placeholder per image in the text and expand it with the MiniMax-VL-01 processor."
            )
        tokens_per_image = [f.shape[0] for f in image_features]
        if num_tokens != features.shape[0]:
            def fits(candidate):
                return sum(self._num_image_tokens(hw) for hw in candidate) == num_tokens
            sizes = [tuple(hw) for hw in torch.as_tensor(image_sizes).tolist()] if image_sizes is not None else []
            raise ValueError(
                f"input_ids contain {num_tokens} image tokens, but the {len(image_features)} images give "
                f"{features.shape[0]} features under this model's image_grid_pinpoints (per image "
                f"{tokens_per_image}). Each <image> must be expanded to its image's token count by the MiniMax-VL-01 "
                f"processor.{self._swapped_size_hint(sizes, fits)} {PROCESSOR_MISMATCH_FIX}"
            )
        if not torch.compiler.is_compiling():
            self._check_image_runs(image_mask, tokens_per_image)
        mask = image_mask[..., None].to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.device, inputs_embeds.dtype))

    def _check_no_image_tokens(self, input_ids, text_inputs: dict) -> None:
        """Image tokens without pixel_values would run as the plain embedding of `<image>`: refuse them in a
        prompt. (A single decode step may hold one: the model may generate that token, and generate() passes the
        images to the prefill only.)"""
        if input_ids is None or not isinstance(input_ids, torch.Tensor) or torch.compiler.is_compiling():
            return
        cache = text_inputs.get("past_key_values")
        cache = cache if cache is not None else text_inputs.get("cache")
        decoding = cache is not None and cache.get_seq_length() > 0 and input_ids.shape[-1] == 1
        if not decoding and bool((input_ids == self.config.image_token_index).any()):
            count = int((input_ids == self.config.image_token_index).sum())
            raise ValueError(
                f"input_ids hold {count} image tokens (id {self.config.image_token_index}) but no pixel_values were "
                "given. Pass the processor's pixel_values and image_sizes with them (model(**processor(...)) or "
                "generate(**inputs)), or remove the <image> placeholders from a text-only prompt."
            )

    @staticmethod
    def _image_token_runs(image_mask: torch.Tensor) -> list[int]:
        """Lengths of the runs of consecutive image tokens, row by row: bool [B, T] -> [run lengths]."""
        edges = F.pad(image_mask.int(), (1, 1)).flatten().diff()  # the padding ends every run at its row's end
        return ((edges == -1).nonzero() - (edges == 1).nonzero()).flatten().tolist()

    def _check_image_runs(self, image_mask: torch.Tensor, tokens_per_image: list[int]) -> None:
        """Each image's tokens must be one unbroken run (adjacent images may share a run): the processor writes
        them so, and text inside a run would shift every later feature onto the wrong token."""
        runs = self._image_token_runs(image_mask)
        if images_by_token_count(runs, tokens_per_image) is None:
            raise ValueError(
                f"The image tokens do not form one unbroken run per image: runs of {runs} tokens for images of "
                f"{tokens_per_image} tokens, so an image's run is split by other tokens. Keep each expanded <image> "
                "intact (do not insert or truncate text inside it)."
            )

    def _swapped_size_hint(self, sizes, fits) -> str:
        """A hint when image_sizes rows read as (width, height) fit the inputs and the rows as given do not."""
        swapped = [(w, h) for h, w in sizes]
        if swapped != sizes and fits(swapped):
            return (" With each image_sizes row read as (width, height) the counts match: image_sizes rows must be "
                    "(height, width), as the processor returns them.")
        return ""

    # -- forward ------------------------------------------------------------------------------------------------

    def _language_model_inputs(self, input_ids, pixel_values, image_sizes, inputs_embeds, **text_inputs) -> dict:
        """The opening of both VL forwards -> the language model's keyword arguments: the output flags defaulted
        from this config or its text config (`output_flags`), and with images, the text embeddings with the image
        features written at the image tokens (input_ids None); without, the inputs unchanged. `text_inputs`: the
        language model's other arguments (mask, positions, cache, the flags, ...), passed on."""
        flags = ("output_attentions", "output_hidden_states", "output_router_logits")
        text_inputs.update(zip(flags, self.output_flags(**{name: text_inputs.get(name) for name in flags})))
        if pixel_values is None:
            self._check_no_image_tokens(input_ids, text_inputs)
        else:
            if input_ids is None or inputs_embeds is not None:
                raise ValueError(
                    "pixel_values need input_ids (the image tokens mark where the features go); pass input_ids "
                    "instead of inputs_embeds, or inputs_embeds that already hold the image features (written at "
                    "the image tokens from get_image_features) and no pixel_values."
                )
            # the language model's input checks would only see embeddings: they run here on the ids
            checked = ("attention_mask", "position_ids", "past_key_values", "cache")
            self.language_model.model.check_inputs(input_ids, None, **{name: text_inputs[name] for name in checked})
            image_features = self.get_image_features(pixel_values, image_sizes)
            text_embeds = self.get_input_embeddings()(input_ids)
            input_ids, inputs_embeds = None, self._merge_image_features(
                input_ids, text_embeds, image_features, image_sizes
            )
        return dict(input_ids=input_ids, inputs_embeds=inputs_embeds, return_dict=True, **text_inputs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: MiniMaxText01Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        cache: MiniMaxText01Cache | None = None,  # the name transformers >= 5.2x uses for past_key_values
        **kwargs,
    ) -> MoeModelOutputWithPast:
        """The text decoder's output (MiniMaxText01Model: last_hidden_state and the optional outputs it documents)."""
        return self.language_model.model(**self._language_model_inputs(
            input_ids, pixel_values, image_sizes, inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits, cache=cache, **kwargs,
        ))  # fmt: skip


class MiniMaxVL01ForConditionalGeneration(MiniMaxGenerationMixin, MiniMaxVL01Model, GenerationMixin):
    """Image-text-to-text model: MiniMaxVL01Model with the language model's LM head (`language_model` is a
    MiniMaxText01ForCausalLM). In `generate()`, transformers itself (5.17 and later) passes `pixel_values` to the
    prefill only when a cache is used, and at every step without a cache, so `prepare_inputs_for_generation` is
    inherited unchanged; `image_sizes` alone is ignored."""

    _tied_weights_keys = {}

    @staticmethod
    def _build_language_model(config: MiniMaxVL01Config) -> nn.Module:
        return MiniMaxText01ForCausalLM._from_config(config.text_config)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the language model builds its own MiniMaxText01Cache (lightning states + K/V)

    def get_output_embeddings(self):
        return self.language_model.lm_head

    def set_output_embeddings(self, new_embeddings):  # resize_token_embeddings resizes the head here
        self.language_model.lm_head = new_embeddings

    # -- generation ---------------------------------------------------------------------------------------------

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Beam search and several sequences per prompt repeat every batch row `expand_size` times. The crops of
        all images form one flat tensor, so the base class (which repeats each crop) is bypassed for them: each
        row's images are repeated with the row."""
        images = {}
        if expand_size > 1 and model_kwargs.get("pixel_values") is not None:
            pixel_values, image_sizes = model_kwargs.pop("pixel_values"), model_kwargs.pop("image_sizes", None)
            images = self._repeat_images_per_row(input_ids, pixel_values, image_sizes, expand_size)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **images}

    def _repeat_images_per_row(self, input_ids, pixel_values, image_sizes, times: int) -> dict:
        """pixel_values / image_sizes for the batch rows repeated `times` times each (rows keep their images)."""
        sizes, crops_per_image = self._check_pixel_inputs(pixel_values, image_sizes)
        config = self.config
        tokens = [self._num_image_tokens(hw) for hw in sizes]
        images_of_row = images_by_token_count((input_ids == config.image_token_index).sum(-1).tolist(), tokens)
        if images_of_row is None:
            raise ValueError(
                f"The image tokens of each prompt do not add up to its images' token counts {tokens}; expand "
                "every <image> with the MiniMax-VL-01 processor."
            )
        order = [i for row in images_of_row for _ in range(times) for i in row]
        crops = pixel_values.split(crops_per_image)
        return {
            "pixel_values": torch.cat([crops[i] for i in order]),
            "image_sizes": torch.tensor([sizes[i] for i in order], device=pixel_values.device),
        }

    # -- forward ------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: MiniMaxText01Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: MiniMaxText01Cache | None = None,  # the name transformers >= 5.2x uses for past_key_values
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """The language model's output (MiniMaxText01ForCausalLM) on the text embeddings with the image features
        written at the image tokens. Each optional output is on when requested, or by default when this config or its
        text config sets the flag; `return_dict=False` (or `config.return_dict = False`) gives a tuple."""
        return self.language_model(**self._language_model_inputs(
            input_ids, pixel_values, image_sizes, inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, labels=labels, use_cache=use_cache,
            output_router_logits=output_router_logits, output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep, cache=cache, output_attentions=output_attentions, **kwargs,
        ))  # fmt: skip


__all__ = ["MiniMaxVL01ForConditionalGeneration", "MiniMaxVL01Model", "MiniMaxVL01PreTrainedModel"]
