"""MiniMax-Text-01 model tests on tiny configs: logits against the float64 reference of tests/reference.py (fp32
and bf16), cache and generation, padding, save/load, gradients, config validation, the released config on the
meta device, and bad input.

Print the measured errors against the float64 reference with
    python -m pytest tests/test_text_model.py -k reference -s
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import VOCAB, cache_of, errors, random_ids, tiny_model
from minimax_code import load
from make_tiny_checkpoint import tiny_text_config
from reference import lightning_layer_slopes, reference_text_logits, rope_inv_freq
from released_configs import released_text_config
from safetensors.torch import load_file, save_file

# Also run on the oldest supported transformers (make test-oldest): generation, the cache and config
# loading go through transformers APIs that differ between versions.
pytestmark = pytest.mark.smoke

mm = load("modeling_minimax_text_01")
mc = load("cache_minimax_text_01")
MiniMaxText01Config = load("configuration_minimax_text_01").MiniMaxText01Config


def logits(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


def assert_derived_tables_match_formulas(model):
    """RoPE inverse frequencies and every lightning layer's slopes: fp32 and equal to the spec formulas."""
    config = model.config
    inv_freq = model.model.rotary_emb.inv_freq(torch.device("cpu"))
    assert inv_freq.dtype == torch.float32
    expected = rope_inv_freq(config.rotary_dim, config.rope_theta)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-7, atol=0)
    for i, layer in enumerate(model.model.layers):
        if config.attn_type_list[i] == 0:
            log_decay, decay = layer.self_attn.decay_rates(torch.device("cpu"))
            expected = lightning_layer_slopes(config.num_attention_heads, i, config.num_hidden_layers)
            assert log_decay.dtype == decay.dtype == torch.float32
            torch.testing.assert_close(-log_decay.double(), expected, rtol=1e-7, atol=0)
            torch.testing.assert_close(decay.double(), torch.exp(-expected), rtol=1e-7, atol=0)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ------------------------------------------------------------------------------------------------ float64 reference


@pytest.mark.parametrize(
    ("overrides", "qkv_scale"),
    [
        ({}, 1.0),
        ({"shared_intermediate_size": 32}, 1.0),
        ({"postnorm": False}, 1.0),
        ({"attn_type_list": [1, 0, 0, 1, 0, 0, 1, 0]}, 1.0),
        # small lightning outputs, so the 1e-6 eps of the lightning RMSNorm (1e-5 in some ports) shows: ~10% error
        ({}, 0.1),
    ],
    ids=["released-structure", "shared-expert", "prenorm-residual", "softmax-first", "small-lightning-activations"],
)
def test_fp32_logits_match_float64_reference(overrides, qkv_scale):
    model = tiny_model(**overrides)
    with torch.no_grad():
        for layer, attn_type in zip(model.model.layers, model.config.attn_type_list):
            if attn_type == 0:
                layer.self_attn.qkv_proj.weight.mul_(qkv_scale)
    ids = random_ids(2, 45)  # 45 tokens = 5 full lightning blocks of 8 and a partial one
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids)
    max_abs, max_rel, rel_l2 = errors(logits(model, input_ids=ids), expected)
    print(f"\nfp32 vs float64 reference [{overrides}, qkv x{qkv_scale}]: max abs {max_abs:.2e}, "
          f"max abs / max |ref| {max_rel:.2e}, rel L2 {rel_l2:.2e}")
    assert max_rel < 1e-5 and rel_l2 < 1e-5


def test_fp32_left_padded_logits_match_float64_reference(model):
    ids = random_ids(2, 20)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # row 0 is left-padded by 6
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids, attention_mask=mask)
    actual = logits(model, input_ids=ids, attention_mask=mask, use_cache=False)
    real = mask.bool()
    max_abs, max_rel, _ = errors(actual[real], expected[real])
    print(f"\nfp32 left-padded vs float64 reference: max abs {max_abs:.2e}, max abs / max |ref| {max_rel:.2e}")
    assert max_rel < 1e-5


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_backends_match_float64_reference_with_padding_and_cache(implementation, padded, monkeypatch):
    """Both softmax-attention backends, a cached prefill and decode steps vs the float64 reference, with left
    padding (a mask) and without (sdpa: no mask, the decode steps take the CPU folded-GQA path)."""
    model = tiny_model()
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation  # transformers refuses classes it cannot switch
    after_cache = []
    original = mm.sdpa_chunk_after_cache
    monkeypatch.setattr(mm, "sdpa_chunk_after_cache", lambda q, *a: after_cache.append(q.shape[2]) or original(q, *a))
    ids = random_ids(2, 20, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :5] = int(not padded)  # row 1 is left-padded by 5
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        out = model(input_ids=ids[:, :14], attention_mask=mask[:, :14], use_cache=True)
        steps, cache = [out.logits], cache_of(out)
        for t in range(14, 20):
            out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache)
            steps.append(out.logits)
            cache = cache_of(out)
    actual = torch.cat(steps, dim=1)
    real = mask.bool()
    _, max_rel, _ = errors(actual[real], expected[real])
    assert max_rel < 1e-5
    assert after_cache == ([1] * 2 * 6 if implementation == "sdpa" and not padded else [])  # 2 softmax layers


def test_bf16_long_sequence_matches_float64_reference():
    """2,048 tokens, 1,536 prefilled and 512 decoded one by one, with the last layer lightning at the released near-1
    decays (slopes ~1e-5 s_h; exp(-s) is 1.0 in bf16). bf16 rounds each activation to within 2^-9 relative; ~10
    roundings per layer over 8 layers add up to ~2% rel L2, so 3e-2 is the bound, and it must hold at the end of
    the decode as at the start (a bf16 state or bf16 decays drift to ~9% there)."""
    model = tiny_model(attn_type_list=[0, 0, 0, 1, 0, 0, 0, 0], block_size=256).to(torch.bfloat16)
    ids = random_ids(1, 2048)
    # the reference uses the bf16-rounded weights: what is measured is the computation, not the weight rounding
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids)
    with torch.no_grad():
        output = model(input_ids=ids[:, :1536], use_cache=True)
        steps = [output.logits]
        for t in range(1536, 2048):
            output = model(input_ids=ids[:, t : t + 1], past_key_values=cache_of(output), use_cache=True)
            steps.append(output.logits)
    actual = torch.cat(steps, dim=1)
    max_abs, max_rel, rel_l2 = errors(actual, expected)
    first, last = (errors(actual[:, s], expected[:, s])[2] for s in (slice(0, 256), slice(-256, None)))
    print(f"\nbf16 vs float64 reference, 2048 tokens: max abs {max_abs:.2e}, max abs / max |ref| {max_rel:.2e}, "
          f"rel L2 {rel_l2:.2e} (first 256 tokens {first:.2e}, last 256 decoded {last:.2e})")
    assert rel_l2 < 3e-2 and last < 3e-2

    cache = cache_of(output)
    lightning_layers = [i for i, t in enumerate(model.config.attn_type_list) if t == 0]
    assert all(cache.get_lightning_state(i).dtype == torch.float32 for i in lightning_layers)


def test_bf16_model_keeps_slopes_and_decays_fp32():
    """`.to(bfloat16)` must not touch the derived tables: in bf16 every decay of the last layer would round to 1."""
    released_last_layer = lightning_layer_slopes(64, 79, 80)
    assert bool((torch.exp(-released_last_layer.bfloat16()) == 1).all())  # why fp32 matters
    assert_derived_tables_match_formulas(tiny_model().to(torch.bfloat16))


# ------------------------------------------------------------------------------------------------ cache, positions


def test_prefill_then_decode_equals_full_forward(model):
    ids = random_ids(2, 30)
    full = logits(model, input_ids=ids, use_cache=False)
    with torch.no_grad():
        prefill = model(input_ids=ids[:, :20], use_cache=True)
        steps, cache = [prefill.logits], cache_of(prefill)
        for t in range(20, 30):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = cache_of(out)
    assert cache.get_seq_length() == 30
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_token_by_token_without_position_ids_equals_full_forward(model):
    """Positions must come from the tokens already seen, although layer 0 is a lightning layer."""
    ids = random_ids(1, 12)
    full = logits(model, input_ids=ids)
    cache, steps = None, []
    with torch.no_grad():
        for t in range(12):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = cache_of(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pieces", [[3, 5, 7, 8], [1, 9, 13], [17, 6]])
def test_chunked_prefill_equals_whole_prompt(model, pieces):
    ids = random_ids(2, sum(pieces))
    full = logits(model, input_ids=ids)
    cache, outputs, start = mc.MiniMaxText01Cache(model.config), [], 0
    with torch.no_grad():
        for n in pieces:
            outputs.append(model(input_ids=ids[:, start : start + n], past_key_values=cache, use_cache=True).logits)
            start += n
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ generation


def greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs)[:, ids.shape[1] :]


def test_greedy_generate_with_and_without_cache_equals_manual_argmax_loop(model):
    ids = random_ids(1, 10)
    expected = ids
    for _ in range(8):  # full forward each step, no cache
        expected = torch.cat([expected, logits(model, input_ids=expected)[:, -1:].argmax(-1)], dim=1)
    assert greedy(model, ids, use_cache=True).tolist() == expected[:, 10:].tolist()
    assert greedy(model, ids, use_cache=False).tolist() == expected[:, 10:].tolist()


def test_left_padded_batch_equals_single_rows(model):
    prompts = [random_ids(1, 7, seed=1)[0], random_ids(1, 12, seed=2)[0]]
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, -len(prompt) :], mask[row, -len(prompt) :] = prompt, 1

    batch_logits = logits(model, input_ids=ids, attention_mask=mask)
    batch_tokens = greedy(model, ids, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        single = prompt[None]
        expected = logits(model, input_ids=single)[0]
        torch.testing.assert_close(batch_logits[row, -len(prompt) :], expected, rtol=1e-5, atol=1e-5)
        assert batch_tokens[row].tolist() == greedy(model, single)[0].tolist()


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_with_cache_equals_without_cache(model, num_beams):
    """Without a cache every step recomputes from the tokens: a wrongly reordered lightning state shows up."""
    ids = random_ids(2, 9)
    kwargs = dict(max_new_tokens=6, num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                  pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    cached, uncached = model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=1e-5, atol=1e-5)


def test_single_beam_equals_greedy(model):
    ids = random_ids(1, 9)
    assert greedy(model, ids, num_beams=1).tolist() == greedy(model, ids).tolist()


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    ids = random_ids(1, 9)

    def sample(**kwargs):
        torch.manual_seed(123)
        return model.generate(ids, max_new_tokens=8, do_sample=True, pad_token_id=0, **kwargs)[:, 9:]

    first, second = sample(), sample()
    assert first.shape == (1, 8) and first.tolist() == second.tolist()
    assert sample(top_k=1).tolist() == greedy(model, ids).tolist()


def test_generate_continues_from_returned_cache(model):
    ids = random_ids(1, 9)
    first = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    cache = cache_of(first)
    assert cache.get_seq_length() == 9 + 4 - 1  # the last generated token is not fed yet
    more = model.generate(first.sequences, max_new_tokens=4, do_sample=False, pad_token_id=0, **{mm.CACHE_FIELD: cache})
    assert more[:, 9:].tolist() == greedy(model, ids)[:, :8].tolist()


# ------------------------------------------------------------------------------------------------ padding


def test_right_padding_without_cache_is_exact_at_real_positions(model):
    ids, mask = random_ids(2, 14), torch.ones(2, 14, dtype=torch.long)
    mask[1, 9:] = 0
    padded = logits(model, input_ids=ids, attention_mask=mask, use_cache=False)
    torch.testing.assert_close(padded[1, :9], logits(model, input_ids=ids[1:, :9])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[0], logits(model, input_ids=ids[:1])[0], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert len(load_file(tmp_path / "model.safetensors")) == len(model.state_dict())  # no derived tables saved
    ids = random_ids(1, 20)

    loaded = mm.MiniMaxText01ForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, input_ids=ids), logits(model, input_ids=ids), rtol=0, atol=0)
    assert_derived_tables_match_formulas(loaded)

    loaded_bf16 = mm.MiniMaxText01ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert loaded_bf16.lm_head.weight.dtype == torch.bfloat16
    assert_derived_tables_match_formulas(loaded_bf16)
    expected = reference_text_logits(loaded_bf16.state_dict(), loaded_bf16.config, input_ids=ids)
    assert errors(logits(loaded_bf16, input_ids=ids), expected)[2] < 3e-2


FRESH_PROCESS_LOAD = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(1)  # as in this process (conftest): the same reduction order, so bit-identical logits
    folder, out = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tokenizer("Hello, MiniMax!", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.save({"config_class": type(config).__name__, "model_class": type(model).__name__, "ids": ids,
                "logits": logits}, out)
    """
)


@pytest.mark.slow
def test_fresh_process_offline_load(tiny_text, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_LOAD, str(tiny_text), str(tmp_path / "out.pt")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = torch.load(tmp_path / "out.pt")
    assert fresh["config_class"] == "MiniMaxText01Config" and fresh["model_class"] == "MiniMaxText01ForCausalLM"

    in_process = mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text).eval()
    torch.testing.assert_close(fresh["logits"], logits(in_process, input_ids=fresh["ids"]), rtol=0, atol=0)
    expected = reference_text_logits(in_process.state_dict(), in_process.config, input_ids=fresh["ids"])
    assert errors(fresh["logits"], expected)[1] < 1e-5


# ------------------------------------------------------------------------------------------------ training


def test_input_gradients_match_float64_reference_autograd(model):
    """Backward through every layer (lightning included) against autograd through the float64 reference."""
    ids = random_ids(1, 20)
    weights = torch.randn(1, 20, VOCAB, generator=torch.Generator().manual_seed(3))
    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    (model(inputs_embeds=embeds, use_cache=False).logits * weights).sum().backward()

    embeds64 = embeds.detach().double().requires_grad_(True)
    reference = reference_text_logits(model.state_dict(), model.config, inputs_embeds=embeds64)
    (reference * weights.double()).sum().backward()
    assert errors(embeds.grad, embeds64.grad)[1] < 1e-5


def test_backward_reaches_every_parameter():
    model = tiny_model().train()
    ids = random_ids(2, 40)
    model(input_ids=ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_loss_is_shifted_cross_entropy(model):
    ids = random_ids(2, 16)
    labels = ids.clone()
    labels[0, :5] = -100  # ignored positions
    with torch.no_grad():
        output = model(input_ids=ids, labels=labels)
    log_probs = torch.log_softmax(output.logits.double(), dim=-1)
    terms = [-log_probs[b, t, labels[b, t + 1]] for b in range(2) for t in range(15) if labels[b, t + 1] != -100]
    assert output.loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def switch_load_balancing_loss(router_logits, num_experts, top_k):
    """Switch loss over all layers' tokens: E * sum_e (share of the top-k picks that go to e) * (mean prob of e),
    where the share counts every (token, slot) pick over the number of tokens."""
    probs = torch.softmax(torch.cat(router_logits).double(), dim=-1)  # [layers * tokens, E]
    picks = torch.bincount(probs.topk(top_k, dim=-1).indices.flatten(), minlength=num_experts)
    return num_experts * ((picks / probs.shape[0]) * probs.mean(0)).sum()


def test_aux_loss_is_switch_load_balancing(model):
    ids = random_ids(2, 16)
    with torch.no_grad():
        plain = model(input_ids=ids, labels=ids)
        routed = model(input_ids=ids, labels=ids, output_router_logits=True)
    config = model.config
    assert len(routed.router_logits) == config.num_hidden_layers
    expected = switch_load_balancing_loss(routed.router_logits, config.num_local_experts, config.num_experts_per_tok)
    assert routed.aux_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with_aux = plain.loss.item() + config.router_aux_loss_coef * expected.item()
    assert routed.loss.item() == pytest.approx(with_aux, rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, 24)

    def gradients(checkpointing):
        model = tiny_model().train()
        if checkpointing:  # transformers >= 5.2x renamed it activation_checkpointing_enable
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"attn_type_list": [0, 1]}, "attn_type_list"),
        ({"attn_type_list": [0, 0, 0, 2, 0, 0, 0, 1]}, "attn_type_list"),
        ({"rotary_dim": 7}, "rotary_dim"),
        ({"rotary_dim": 32}, "rotary_dim"),  # > head_dim 16
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
        ({"shared_intermediate_size": [32, 32]}, "shared_intermediate_size"),
        ({"shared_intermediate_size": -1}, "shared_intermediate_size"),
    ],
    ids=["types-length", "types-unknown", "rotary-odd", "rotary-too-wide", "kv-heads", "top-k", "shared-list",
         "shared-negative"],
)
def test_config_validation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=f"`{key}`"):
        tiny_text_config(**overrides)


def test_config_accepts_one_element_shared_size_list():
    assert tiny_text_config(shared_intermediate_size=[32]).shared_expert_size == 32


def test_legacy_model_type_is_accepted(tmp_path):
    values = released_text_config()
    values.update(model_type="MiniMaxText01", num_hidden_layers=8, attn_type_list=[0, 0, 0, 1, 0, 0, 0, 1])
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = MiniMaxText01Config.from_pretrained(tmp_path)
    assert config.layer_types[3] == "full_attention" and config.layer_types[0] == "linear_attention"
    assert config.num_hidden_layers == 8


# ------------------------------------------------------------------------------------------------ released config


def test_released_config_state_dict_keys_and_shapes(released_meta_models):
    shapes = {k: tuple(v.shape) for k, v in released_meta_models["text"].state_dict().items()}
    assert len(shapes) == 8243
    expected = {
        "model.embed_tokens.weight": (200064, 6144),
        "model.norm.weight": (6144,),
        "lm_head.weight": (200064, 6144),
        "model.layers.0.input_layernorm.weight": (6144,),
        "model.layers.0.post_attention_layernorm.weight": (6144,),
        "model.layers.0.self_attn.qkv_proj.weight": (24576, 6144),
        "model.layers.0.self_attn.output_gate.weight": (8192, 6144),
        "model.layers.0.self_attn.norm.weight": (8192,),
        "model.layers.0.self_attn.out_proj.weight": (6144, 8192),
        "model.layers.7.self_attn.q_proj.weight": (8192, 6144),
        "model.layers.7.self_attn.k_proj.weight": (1024, 6144),
        "model.layers.7.self_attn.v_proj.weight": (1024, 6144),
        "model.layers.7.self_attn.o_proj.weight": (6144, 8192),
        "model.layers.79.block_sparse_moe.gate.weight": (32, 6144),
        "model.layers.79.block_sparse_moe.experts.31.w1.weight": (9216, 6144),
        "model.layers.79.block_sparse_moe.experts.31.w3.weight": (9216, 6144),
        "model.layers.79.block_sparse_moe.experts.0.w2.weight": (6144, 9216),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    softmax_layers = sorted({int(k.split(".")[2]) for k in shapes if ".q_proj." in k})
    assert softmax_layers == list(range(7, 80, 8))
    assert not any("rotary" in k or "slope" in k or "decay" in k or "bias" in k for k in shapes)


def test_released_config_parameter_counts(released_meta_models):
    """Total 456.1 B; active 45.9 B = total - embed_tokens - lm_head - the (experts - top_k) idle experts per layer."""
    model = released_meta_models["text"]
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    embeddings = 2 * config.vocab_size * config.hidden_size  # embed_tokens + lm_head (untied)
    per_expert = 3 * config.hidden_size * config.intermediate_size
    idle = config.num_hidden_layers * (config.num_local_experts - config.num_experts_per_tok) * per_expert
    active = total - embeddings - idle
    print(f"\nreleased config: total {total / 1e9:.2f} B, active excl. embeddings {active / 1e9:.2f} B")
    assert total == pytest.approx(456.1e9, rel=3e-3)
    assert active == pytest.approx(45.9e9, rel=3e-3)


# ------------------------------------------------------------------------------------------------ bad input


def test_needs_exactly_one_of_ids_and_embeds(model):
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match="exactly one of `input_ids` or `inputs_embeds`"):
        model(input_ids=ids, inputs_embeds=model.model.embed_tokens(ids))
    with pytest.raises(ValueError, match="exactly one of `input_ids` or `inputs_embeds`"):
        model()


def test_empty_input_is_refused(model):
    with pytest.raises(ValueError, match="Empty input"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_attention_mask_of_wrong_length_is_refused(model):
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(1, 5\).* got \(1, 4\)"):
        model(input_ids=random_ids(1, 5), attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_checkpoint_tensor_of_wrong_shape_names_key_and_shapes(model, tmp_path):
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "model.layers.2.self_attn.out_proj.weight"
    tensors[key] = torch.zeros(64, 32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{key}.*\(64, 32\).*\(64, 64\)"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(tmp_path)


def test_prompt_longer_than_max_position_embeddings_warns_and_runs(caplog):
    model = tiny_model(max_position_embeddings=16)
    ids = random_ids(1, 20)
    with caplog.at_level("WARNING"):
        output = logits(model, input_ids=ids)
    assert "exceeds max_position_embeddings (16)" in caplog.text
    assert output.shape == (1, 20, VOCAB) and torch.isfinite(output).all()
