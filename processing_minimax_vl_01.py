"""Processor for MiniMax-VL-01: the tokenizer plus the anyres image processor.

Each `<image>` placeholder in the text becomes as many `<image>` tokens as its image has features (spec 4.4:
(cols + 1) * rows for the unpadded tile grid plus 576 for the thumbnail). Images are consumed in order across the
whole batch, so prompts may hold different numbers of images, or none.
"""

import inspect

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin, TextKwargs

from .image_processing_minimax_vl_01 import flatten_images

# Image-processor settings that change the tiling, hence the token counts: a call giving them gets its own
# configured image processor, whose geometry the placeholders are then expanded with.
GEOMETRY_KWARGS = ("image_grid_pinpoints", "patch_size", "size")


class MiniMaxVL01Processor(ProcessorMixin):
    r"""
    Args:
        image_processor (`MiniMaxVL01ImageProcessor`): crops images and counts their tokens.
        tokenizer (`PreTrainedTokenizerBase`): the MiniMax-01 tokenizer, which must know `image_token`.
        chat_template (`str`, *optional*): defaults to the tokenizer's chat template.
        image_token (`str`, *optional*, defaults to `"<image>"`): the placeholder, one per image.

    `processor(images=..., text=..., return_tensors="pt")` returns `input_ids`, `attention_mask` (padded to the
    longest prompt on the left unless `padding` / `padding_side` say otherwise), `pixel_values` and `image_sizes`.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {image_token!r} token; add it as a special token first.")

    def __call__(
        self, images=None, text=None, videos=None, audio=None, images_kwargs=None, text_kwargs=None, **kwargs
    ):
        """Expand the placeholders, tokenize, and process the images. `images`: one image, a flat list for the
        whole batch, or one list per prompt. Keyword arguments go where they belong: image-processor settings
        (`do_normalize`, `max_image_pixels`, `image_grid_pinpoints`, ...) to the image processor, tokenizer settings
        (`padding`, `max_length`, ...) to the tokenizer, `return_tensors` to both; `images_kwargs` / `text_kwargs`
        (dicts) may also name them. Anything else is refused rather than ignored."""
        if videos is not None or audio is not None:
            raise ValueError("MiniMax-VL-01 takes images and text only; remove `videos` / `audio`.")
        if text is None:
            raise ValueError("Pass `text` with one <image> placeholder per image.")
        images_kwargs, text_kwargs = self._route_kwargs(kwargs, images_kwargs or {}, text_kwargs or {})
        texts = [text] if isinstance(text, str) else list(text)
        flat_images = flatten_images(images) if images is not None else []
        self._check_placeholders(texts, images, flat_images)

        return_tensors = text_kwargs.get("return_tensors")
        image_inputs, token_counts = {}, []
        if flat_images:
            image_processor = self._image_processor_for(images_kwargs)
            other_kwargs = {k: v for k, v in images_kwargs.items() if k not in GEOMETRY_KWARGS}
            image_inputs = image_processor(flat_images, return_tensors=return_tensors, **other_kwargs)
            token_counts = [image_processor.num_image_tokens(hw) for hw in image_inputs["image_sizes"].tolist()]
            texts = self._expand_placeholders(texts, token_counts)

        # Batches pad to the longest prompt, on the left: generation continues every row from its last column.
        text_kwargs.setdefault("padding", True)
        text_kwargs.setdefault("padding_side", "left")
        text_inputs = self.tokenizer(texts, **text_kwargs)
        self._check_token_count(text_inputs["input_ids"], sum(token_counts))
        return BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)

    def _route_kwargs(self, kwargs: dict, images_kwargs: dict, text_kwargs: dict) -> tuple[dict, dict]:
        """Top-level keyword arguments -> (image processor's, tokenizer's), merged with the explicit dicts. A name
        neither takes (or one given twice) raises instead of vanishing into the tokenizer's `**kwargs`."""
        image_names = set(self.image_processor.valid_kwargs.__annotations__) - {"return_tensors"}
        text_names = set(TextKwargs.__annotations__) | set(inspect.signature(self.tokenizer.__call__).parameters)
        text_names -= {"self", "text", "kwargs", "tokenizer_kwargs"}
        for given, names, owner in ((images_kwargs, image_names, "images_kwargs"),
                                    (text_kwargs, text_names, "text_kwargs")):
            if unknown := sorted(set(given) - names - {"return_tensors"}):
                raise TypeError(f"MiniMaxVL01Processor: {owner} holds {unknown}, which the "
                                f"{'image processor' if owner == 'images_kwargs' else 'tokenizer'} does not take.")
        images_kwargs, text_kwargs = dict(images_kwargs), dict(text_kwargs)
        for name, value in kwargs.items():
            target = images_kwargs if name in image_names else text_kwargs if name in text_names else None
            if target is None:
                raise TypeError(
                    f"MiniMaxVL01Processor got an unexpected keyword argument {name!r}, which neither the image "
                    f"processor nor the tokenizer takes. Image processor settings: {sorted(image_names)}."
                )
            if name in target and target[name] != value:
                raise ValueError(f"MiniMaxVL01Processor: {name!r} is given twice with different values (at the top "
                                 "level and in images_kwargs / text_kwargs); give it once.")
            target[name] = value
        if "return_tensors" in images_kwargs:
            text_kwargs.setdefault("return_tensors", images_kwargs.pop("return_tensors"))
        return images_kwargs, text_kwargs

    def _image_processor_for(self, images_kwargs: dict):
        """This processor's image processor, or a copy set to the geometry (pinpoints, tile size, patch size) this
        call asks for, so that the pixel values and the image token counts follow the same tiling."""
        geometry = {k: images_kwargs[k] for k in GEOMETRY_KWARGS if k in images_kwargs}
        if not geometry:
            return self.image_processor
        return type(self.image_processor).from_dict({**self.image_processor.to_dict(), **geometry})

    def _check_placeholders(self, texts, images, flat_images) -> None:
        counts = [t.count(self.image_token) for t in texts]
        if flat_images and sum(counts) == 0:
            raise ValueError(
                f"{len(flat_images)} images were given but the text has no {self.image_token} placeholder. Put one "
                f"{self.image_token} where each image belongs (the chat template writes it for image items)."
            )
        if sum(counts) != len(flat_images):
            raise ValueError(
                f"The text has {sum(counts)} {self.image_token} placeholders (per prompt {counts}) but "
                f"{len(flat_images)} images were given. Pass exactly one image per placeholder, in order."
            )
        per_prompt = isinstance(images, (list, tuple)) and len(images) == len(texts) and len(texts) > 1
        if per_prompt and all(isinstance(item, (list, tuple)) for item in images):
            given = [len(flatten_images(item)) for item in images]
            if given != counts:
                raise ValueError(
                    f"Per prompt, the text has {counts} {self.image_token} placeholders but the image lists hold "
                    f"{given} images. Give each prompt as many images as placeholders."
                )

    def _expand_placeholders(self, texts: list[str], token_counts: list[int]) -> list[str]:
        """Replace the k-th placeholder of the batch by token_counts[k] image tokens."""
        counts = iter(token_counts)
        expanded = []
        for text in texts:
            pieces = text.split(self.image_token)
            out = [pieces[0]]
            for piece in pieces[1:]:
                out.append(self.image_token * next(counts) + piece)
            expanded.append("".join(out))
        return expanded

    def _check_token_count(self, input_ids, expected: int) -> None:
        """The tokenizer must keep every image token (truncation could cut some, which the model cannot use)."""
        found = sum(list(map(int, row)).count(self.image_token_id) for row in input_ids)
        if found != expected:
            raise ValueError(
                f"After tokenization the inputs hold {found} image tokens instead of {expected}. Do not truncate "
                "prompts with images (remove `truncation` / `max_length`), and make sure the tokenizer keeps "
                f"{self.image_token} as a single token."
            )

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


__all__ = ["MiniMaxVL01Processor"]
