"""Chunked prefill (`prefill_chunk_size`): any chunk size equals the whole-prompt forward, and a chunk after
cached tokens builds no [chunk, cached + chunk] mask when nothing is padded.

Chunk sizes cover 1, sizes that do not divide the prompt, and chunks crossing lightning block boundaries (the
plain prefill's block is min(block_size, 2 * head_dim): 32 for the tiny heads, the released 256 for heads of 128).
"""

import pytest
import torch
from helpers import VOCAB, cache_of, l2_rel_err, random_ids, random_image, tiny_model
from minimax_code import load

mm = load("modeling_minimax_text_01")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def passes(monkeypatch):
    """The token count of every pass through the decoder stack (each chunk, each decode step), in order."""
    lengths = []
    real_chunk = mm.MiniMaxText01Model._forward_chunk
    monkeypatch.setattr(mm.MiniMaxText01Model, "_forward_chunk",
                        lambda self, embeds, *a, **k: lengths.append(embeds.shape[1]) or real_chunk(self, embeds, *a, **k))
    return lengths


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("chunk", [1, 7, 32, 45])
def test_any_chunk_size_equals_the_whole_prompt(model, chunk, padded):
    T = 70 if chunk == 1 else 140
    ids, mask = random_ids(2, T), torch.ones(2, T, dtype=torch.long)
    if padded:
        mask[1, :50] = 0  # more pads than several chunks: some chunks of row 1 are all padding
    real = mask.bool()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits
        chunked = model(input_ids=ids, attention_mask=mask, prefill_chunk_size=chunk)
    assert l2_rel_err(chunked.logits[real], whole[real]) < 1e-5
    assert cache_of(chunked).get_seq_length() == T


def test_chunks_cross_the_released_256_token_lightning_block():
    """Heads of 128 channels: the plain prefill runs the released 256-token blocks; chunks of 100 straddle them."""
    model = tiny_model(num_attention_heads=2, num_key_value_heads=1, head_dim=128, rotary_dim=64)
    ids = random_ids(1, 300, seed=1)
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        chunked = model(input_ids=ids, prefill_chunk_size=100).logits
    assert l2_rel_err(chunked, whole) < 1e-5


def test_unpadded_chunks_build_no_mask_and_attend_through_the_cache(model, monkeypatch):
    """Every chunk after the first runs the mask-free path (cached prefix + causal square, merged by log-sum-exp):
    no [chunk, cached + chunk] mask is ever built, and the result equals the whole prompt."""
    masks, merged = [], []
    real_mask, real_merge = mm.softmax_attention_mask, mm.sdpa_chunk_after_cache
    monkeypatch.setattr(mm, "softmax_attention_mask", lambda *a: masks.append(real_mask(*a)) or masks[-1])
    monkeypatch.setattr(mm, "sdpa_chunk_after_cache", lambda *a: merged.append(a[1].shape[2]) or real_merge(*a))
    ids = random_ids(2, 100, seed=2)
    with torch.no_grad():
        chunked = model(input_ids=ids, prefill_chunk_size=30).logits
        whole = model(input_ids=ids).logits
    assert [mask for mask, _ in masks] == [None] * 5  # 4 chunks + the whole-prompt run
    assert merged == [60, 60, 90, 90, 100, 100]  # keys seen by the 2 softmax layers in chunks 2, 3 and 4
    assert l2_rel_err(chunked, whole) < 1e-5


def test_chunked_prefill_keeps_only_the_hidden_states_the_head_needs(model):
    """logits_to_keep=1 (what generate does): the model returns the last position's hidden state only, so no
    [T, hidden] tensor for the whole prompt outlives its chunk."""
    ids = random_ids(1, 90, seed=3)
    with torch.no_grad():
        out = model.model(input_ids=ids, prefill_chunk_size=20, hidden_states_to_keep=1)
        whole = model.model(input_ids=ids)
        logits = model(input_ids=ids, prefill_chunk_size=20, logits_to_keep=1).logits
    assert out.last_hidden_state.shape == (1, 1, 64)
    assert l2_rel_err(out.last_hidden_state, whole.last_hidden_state[:, -1:]) < 1e-5
    assert logits.shape == (1, 1, VOCAB)


def test_generate_runs_a_long_prompt_in_chunks_when_the_config_asks(model, passes, monkeypatch):
    ids = random_ids(1, 50, seed=4)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    unchunked = model.generate(input_ids=ids, **settings)
    passes.clear()
    monkeypatch.setattr(model.config, "prefill_chunk_size", 16)
    chunked = model.generate(input_ids=ids, **settings)
    assert passes == [16, 16, 16, 2] + [1] * 4  # the prompt in chunks, then single-token steps
    assert chunked.tolist() == unchunked.tolist()


def test_generate_takes_transformers_prefill_chunk_size(model, passes):
    """generate(prefill_chunk_size=N): transformers' own chunked prefill, through the cache the model builds."""
    ids = random_ids(2, 50, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :11] = 0
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, attention_mask=mask)
    unchunked = model.generate(input_ids=ids, **settings)
    passes.clear()
    chunked = model.generate(input_ids=ids, prefill_chunk_size=16, **settings)
    assert passes == [16, 16, 16, 2] + [1] * 4
    assert chunked.tolist() == unchunked.tolist()


@pytest.mark.parametrize("padded", [False, True], ids=["one-prompt", "left-padded-batch"])
def test_vl_image_straddling_a_chunk_boundary(vl_model, vl_processor, padded):
    texts = ["Look <image> here, and say what it shows."] + (["A short one."] if padded else [])
    inputs = vl_processor(images=[random_image(1000, 40, seed=7)], text=texts, return_tensors="pt")  # 722 tokens
    T = inputs["input_ids"].shape[1]
    image_positions = (inputs["input_ids"][0] == vl_model.config.image_token_index).nonzero().flatten()
    chunk = int(image_positions[0]) + 100  # a boundary inside the image's tokens
    assert image_positions[0] < chunk < image_positions[-1] < T
    real = inputs["attention_mask"].bool()
    assert bool(real.all()) != padded  # the text-only prompt is left-padded to the image prompt's length
    with torch.no_grad():
        whole = vl_model(**inputs).logits
        vl_model.config.text_config.prefill_chunk_size = chunk
        try:
            chunked = vl_model(**inputs).logits
        finally:
            vl_model.config.text_config.prefill_chunk_size = None
    assert l2_rel_err(chunked[real], whole[real]) < 1e-5


def test_training_with_a_chunk_size_in_the_config_runs_whole_and_backpropagates():
    """Chunks write the cache in place, which autograd cannot go back through (it raised "modified by an inplace
    operation"): while autograd records, the prompt runs whole, so gradients and the hidden states' own gradients
    (retain_grad) equal the unchunked run's."""
    ids = random_ids(2, 11)
    runs = []
    for chunk in (None, 4):
        model = tiny_model(dtype=torch.float64, prefill_chunk_size=chunk).train()
        out = model(ids, labels=ids, output_hidden_states=True)
        first_hidden = out.hidden_states[1]
        first_hidden.retain_grad()
        out.loss.backward()
        runs.append((out.loss.detach(), first_hidden.grad, model.model.embed_tokens.weight.grad))
    (loss, hidden_grad, embed_grad), (chunked_loss, chunked_hidden_grad, chunked_embed_grad) = runs
    assert chunked_hidden_grad is not None and chunked_hidden_grad.abs().sum() > 0
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked_hidden_grad, hidden_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked_embed_grad, embed_grad, rtol=1e-10, atol=1e-12)
