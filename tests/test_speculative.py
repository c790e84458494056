"""Speculative decoding: the dynamic cache rolls back (crop) K/V and lightning states, so transformers' prompt
lookup and assisted generation run and give the tokens of plain greedy decoding.

References: the state after `crop` is compared with the state after feeding only the kept tokens (float64), and
generated tokens with plain greedy `generate()` on the same model."""

import pytest
import torch

from minimax_code import load
from helpers import random_ids, tiny_model

mc = load("cache_minimax_text_01")
la = load("lightning_attention")


def run(model, ids, cache, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)


def assert_same_cache(cropped, reference):
    assert cropped.get_seq_length() == reference.get_seq_length()
    # float64 model, but RoPE runs in fp32: the K/V (and the states after them) agree to fp32 rounding
    for a, b in zip(cropped.layers, reference.layers):
        lightning = isinstance(a, mc.LightningStateLayer)
        for x, y in [(a.state, b.state)] if lightning else [(a.keys, b.keys), (a.values, b.values)]:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_state_after_closed_form_equals_the_recurrence():
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 3, 7, 4
    k, v = (torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for _ in range(2))
    log_decay = -torch.rand(B, T, H, generator=g, dtype=torch.float64)
    log_decay[1, 2] = 0.0  # a pad: neither decays nor (with v = 0 at the caller) adds
    state = torch.randn(B, H, d, d, generator=g, dtype=torch.float64)
    _, expected = la.lightning_attention_recurrent(torch.zeros_like(k), k, v, log_decay, state)
    torch.testing.assert_close(la.lightning_state_after(state, k, v, log_decay), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prompt_len", [5, 40])  # 40: a prompt longer than the recorded tail (see below)
@pytest.mark.parametrize("remove", [0, 1, 3, 6])
def test_crop_equals_feeding_only_the_kept_tokens(prompt_len, remove, monkeypatch):
    """prompt, then a verification chunk of 6 tokens; crop(-remove) == prompt + the first 6 - remove tokens."""
    monkeypatch.setattr(mc, "RECORDED_TOKENS_MIN", 8)  # a prompt records only its last tokens
    model = tiny_model(num_hidden_layers=4, attn_type_list=[0, 1, 0, 0]).double()
    prompt, chunk = random_ids(1, prompt_len, seed=1), random_ids(1, 6, seed=2)
    cache = mc.MiniMaxText01Cache(model.config)
    cache.activate_past_recording(recurrent_states_to_keep=6)
    assert cache.is_croppable
    run(model, prompt, cache)
    run(model, chunk, cache)
    cache.crop(-remove)
    reference = mc.MiniMaxText01Cache(model.config)
    run(model, torch.cat([prompt, chunk[:, : 6 - remove]], dim=1), reference)
    assert_same_cache(cache, reference)
    # and the next token continues exactly
    nxt = random_ids(1, 1, seed=3)
    torch.testing.assert_close(run(model, nxt, cache).logits, run(model, nxt, reference).logits, rtol=1e-5, atol=1e-5)


def test_crop_across_several_decode_steps_and_into_the_prompt_tail():
    """A draft model's record: a prompt then single-token steps; crop reaches back over several forwards."""
    model = tiny_model(num_hidden_layers=2, attn_type_list=[0, 1]).double()
    ids = random_ids(1, 12, seed=4)
    cache = mc.MiniMaxText01Cache(model.config)
    cache.activate_past_recording(recurrent_states_to_keep=4)
    run(model, ids[:, :8], cache)
    for t in range(8, 12):
        run(model, ids[:, t : t + 1], cache)
    cache.crop(-6)  # the 4 steps and 2 prompt tokens
    reference = mc.MiniMaxText01Cache(model.config)
    run(model, ids[:, :6], reference)
    assert_same_cache(cache, reference)


def test_crop_refuses_what_it_cannot_undo():
    model = tiny_model(num_hidden_layers=2, attn_type_list=[0, 1])
    cache = mc.MiniMaxText01Cache(model.config)
    run(model, random_ids(1, 6), cache)
    assert not cache.is_croppable
    with pytest.raises(RuntimeError, match="activate_past_recording"):
        cache.crop(-1)
    cache.activate_past_recording()
    run(model, random_ids(1, 2), cache)
    with pytest.raises(ValueError, match="only the 2 tokens recorded"):
        cache.crop(-3)
    with pytest.raises(ValueError, match="negative number of tokens"):
        cache.crop(5)
    static = mc.MiniMaxText01StaticCache(model.config, max_cache_len=16)
    with pytest.raises(NotImplementedError, match="dynamic cache"):
        static.activate_past_recording()


def count_forwards(model):
    """A list that grows by one entry (the number of new tokens) per forward of `model`."""
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    return calls


REPETITIVE = [5, 6, 7, 8, 9, 10, 11, 12] * 4  # prompt lookup finds every n-gram in the prompt


def greedy(model, ids, **kwargs):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0, **kwargs)


@pytest.fixture(scope="module")
def copying_model():
    """A tiny model whose greedy continuation of REPETITIVE repeats it (trained for a few steps to copy), so drafts
    from the prompt are accepted and verification saves forward passes."""
    torch.manual_seed(0)
    model = tiny_model(num_hidden_layers=3, attn_type_list=[0, 1, 0]).train()
    ids = torch.tensor([REPETITIVE * 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_prompt_lookup_equals_greedy_with_fewer_forwards(copying_model):
    ids = torch.tensor([REPETITIVE])
    calls = count_forwards(copying_model)
    plain = greedy(copying_model, ids)
    plain_forwards = len(calls)
    calls.clear()
    lookup = greedy(copying_model, ids, prompt_lookup_num_tokens=4)
    assert torch.equal(lookup, plain)
    assert max(calls[1:]) > 1  # drafts were verified several tokens at once
    assert plain_forwards == 16 and len(calls) < plain_forwards, (plain_forwards, calls)


def test_assisted_generation_equals_greedy(copying_model):
    """The draft: a 2-layer model of the family (same vocabulary), random, so drafts are mostly rejected and
    crops reach back over several draft steps on both caches."""
    ids = random_ids(1, 12, seed=5)
    assistant = tiny_model(seed=1, num_hidden_layers=2, attn_type_list=[0, 1])
    outputs = dict(output_logits=True, return_dict_in_generate=True)
    plain = greedy(copying_model, ids, **outputs)
    assisted = greedy(copying_model, ids, assistant_model=assistant, **outputs)
    assert torch.equal(assisted.sequences, plain.sequences)
    # the target's logits too: a state rolled back wrongly shows here even where the argmax survives
    torch.testing.assert_close(torch.stack(assisted.logits), torch.stack(plain.logits), rtol=1e-4, atol=1e-4)
    # the target itself as its own draft: every draft accepted, fewer target forwards
    calls = count_forwards(copying_model)
    ids = torch.tensor([REPETITIVE])
    plain = greedy(copying_model, ids)
    plain_forwards = len(calls)
    calls.clear()
    copy = tiny_model(num_hidden_layers=3, attn_type_list=[0, 1, 0])
    copy.load_state_dict(copying_model.state_dict())
    assisted = greedy(copying_model, ids, assistant_model=copy.eval())
    assert torch.equal(assisted, plain)
    assert len(calls) < plain_forwards, (plain_forwards, calls)


def test_record_stays_bounded_when_decoding_on_without_crops(monkeypatch):
    """A recording cache used for plain decoding keeps at most RECORDED_TOKENS_MIN tokens per lightning layer; a
    crop within them is still exact."""
    monkeypatch.setattr(mc, "RECORDED_TOKENS_MIN", 4)
    model = tiny_model(num_hidden_layers=2, attn_type_list=[0, 1]).double()
    ids = random_ids(1, 14, seed=6)
    cache = mc.MiniMaxText01Cache(model.config)
    cache.activate_past_recording()
    run(model, ids[:, :6], cache)
    for t in range(6, 14):
        run(model, ids[:, t : t + 1], cache)
        recorded = sum(k.shape[2] for k, _, _ in cache.layers[0].recorded_tokens)
        assert 1 <= recorded <= 4
    cache.crop(-recorded)
    reference = mc.MiniMaxText01Cache(model.config)
    run(model, ids[:, : 14 - recorded], reference)
    assert_same_cache(cache, reference)
