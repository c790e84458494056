"""`generate(inputs_embeds=...)` against `generate(input_ids=...)`, and `resize_token_embeddings`, text and VL.

For VL-01, `inputs_embeds` are the decoder's inputs: the image features already written at the image tokens. The
reference builds them here with public pieces (the embedding table, `get_image_features`) and plain indexing.
"""

import copy

import pytest
import torch

from helpers import random_image, tiny_model

pytestmark = pytest.mark.smoke  # generate()'s handling of inputs_embeds differs between transformers versions

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def vl(vl_model, vl_processor):
    """(model, image token id, pixel_values, image_sizes, image token count) for one 336x20 image (2 crops)."""
    image_processor = vl_processor.image_processor
    images = image_processor([random_image(336, 20, seed=1)], return_tensors="pt")
    count = image_processor.num_image_tokens(images["image_sizes"][0].tolist())
    return vl_model, vl_processor.image_token_id, images["pixel_values"], images["image_sizes"], count


def left_padded_batch(vocab_size: int, lengths=(19, 11), seed=0):
    """Random ids (no special tokens) of two lengths, left-padded with id 1; and the mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.ones(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(3, vocab_size, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids, mask


def greedy(model, **inputs):
    """(new tokens, per-step logits) of a greedy generate()."""
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    prompt = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0  # from embeddings: only the new tokens
    return out.sequences[:, prompt:], torch.stack(out.logits, dim=1)


def assert_same_generation(reference, candidate):
    (ref_tokens, ref_logits), (tokens, logits) = reference, candidate
    assert tokens.shape == ref_tokens.shape == (ref_tokens.shape[0], NEW_TOKENS)
    assert torch.equal(tokens, ref_tokens)
    assert (logits - ref_logits).abs().max() <= 1e-5 * ref_logits.abs().max()


def test_text_generate_from_inputs_embeds_equals_from_input_ids():
    model = tiny_model()
    ids, mask = left_padded_batch(model.config.vocab_size)
    reference = greedy(model, input_ids=ids, attention_mask=mask)
    embeds = model.get_input_embeddings()(ids).detach()
    assert_same_generation(reference, greedy(model, inputs_embeds=embeds, attention_mask=mask))


def test_vl_generate_from_inputs_embeds_with_the_image_features_written_in(vl):
    model, image_token, pixel_values, image_sizes, count = vl
    text, mask = left_padded_batch(model.config.text_config.vocab_size, lengths=(9,))
    ids = torch.cat([text, torch.full((1, count), image_token), text[:, :4]], dim=1)  # text, the image, text
    mask = torch.ones_like(ids)
    reference = greedy(model, input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes)

    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == image_token] = torch.cat(model.get_image_features(pixel_values, image_sizes))
    assert_same_generation(reference, greedy(model, inputs_embeds=embeds, attention_mask=mask))

    # the images are in the embeddings already: pixel_values beside them are refused, not merged a second time
    with pytest.raises(ValueError, match="pixel_values need input_ids"):
        model.generate(inputs_embeds=embeds, pixel_values=pixel_values, image_sizes=image_sizes, max_new_tokens=1)


@pytest.mark.parametrize("kind", ["text", "vl"])
def test_resize_token_embeddings_resizes_embeddings_and_head_together(kind, vl):
    model = tiny_model() if kind == "text" else copy.deepcopy(vl[0])  # the VL model is shared: resize a copy
    old, width = model.config.get_text_config().vocab_size, model.config.get_text_config().hidden_size
    ids, mask = left_padded_batch(old)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    heads = {"input": model.get_input_embeddings().weight.detach().clone(),
             "output": model.get_output_embeddings().weight.detach().clone()}  # fmt: skip

    new = old + 24
    model.resize_token_embeddings(new)
    assert model.config.get_text_config().vocab_size == new
    assert model.get_input_embeddings().weight.shape == model.get_output_embeddings().weight.shape == (new, width)
    assert torch.equal(model.get_input_embeddings().weight[:old], heads["input"])
    assert torch.equal(model.get_output_embeddings().weight[:old], heads["output"])
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert after.shape == (*before.shape[:2], new)
    assert torch.equal(after[..., :old], before)  # old tokens: the same logits

    # the new ids are accepted as inputs and as labels; the loss is the plain shifted cross-entropy
    new_ids = ids.clone()
    new_ids[:, -3:] = torch.tensor([new - 1, old, new - 2])
    labels = new_ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(input_ids=new_ids, attention_mask=mask, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, new).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(out.loss, expected, rtol=1e-5)
