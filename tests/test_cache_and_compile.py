"""The hybrid caches on transformers' cache layers, the static cache, and compiled decode (torch.compile).

Compile tests use a 2-layer model (one lightning, one softmax layer) and compile once per model: fullgraph, with
a recompile limit of 1 that raises when hit, so a graph break or a recompilation fails the test.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transformers import CompileConfig
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer, StaticLayer

from make_tiny_checkpoint import tiny_text_config, tiny_vl_config
from minimax_code import load
from helpers import cache_of, random_ids, tiny_model
from tiny_tokenizer import build_tiny_tokenizer, special_token_ids

mm = load("modeling_minimax_text_01")
mc = load("cache_minimax_text_01")

PROMPT, STEPS = 10, 16


def left_padded_batch():
    """Two prompts of PROMPT tokens, the second left-padded by 3."""
    ids, mask = random_ids(2, PROMPT, seed=3), torch.ones(2, PROMPT, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask


def two_layer_model(**overrides):
    return tiny_model(num_hidden_layers=2, attn_type_list=[0, 1], **overrides).float()


def generate_kwargs(**extra):
    defaults = dict(max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0, output_logits=True,
                    return_dict_in_generate=True)  # fmt: skip
    return {**defaults, **extra}


def cpu_compile_config() -> CompileConfig:
    config = CompileConfig(fullgraph=True, mode="default")
    config._compile_all_devices = True  # transformers compiles on CPU only when asked
    return config


def strict_dynamo():
    """A graph break fails (fullgraph); a second compilation of a frame raises instead of falling back."""
    torch._dynamo.reset()
    counters.clear()
    return torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True)


def assert_same_run(actual_tokens, actual_logits, expected_tokens, expected_logits):
    assert torch.equal(actual_tokens, expected_tokens)
    rel = (actual_logits - expected_logits).abs().max() / expected_logits.abs().max()
    assert rel <= 1e-5, rel


# ------------------------------------------------------------------------------------------------ cache layers


@pytest.mark.smoke
def test_caches_are_made_of_transformers_layers():
    config = tiny_text_config()
    dynamic, static = mc.MiniMaxText01Cache(config), mc.MiniMaxText01StaticCache(config, max_cache_len=32)
    softmax = [t == "full_attention" for t in config.layer_types]
    for cache, kv_class in ((dynamic, DynamicLayer), (static, StaticLayer)):
        assert all(isinstance(layer, kv_class if s else LinearAttentionLayer) for layer, s in zip(cache.layers, softmax))
        assert cache.is_linear == [not s for s in softmax]  # what generate's prefill / mask code reads
    assert not dynamic.is_compileable and static.is_compileable
    assert static.get_mask_sizes(1, 0) == (32, 0) and static.get_max_length() == 32


@pytest.mark.smoke
def test_states_stay_fp32_with_a_bf16_model_in_both_caches():
    model = tiny_model().to(torch.bfloat16)
    ids = random_ids(2, 9)
    for cache in (mc.MiniMaxText01Cache(model.config), mc.MiniMaxText01StaticCache(model.config, max_cache_len=12)):
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
            model(ids[:, :1], past_key_values=cache, use_cache=True)
        lightning = [i for i, t in enumerate(model.config.attn_type_list) if t == 0]
        assert all(cache.get_lightning_state(i).dtype == torch.float32 for i in lightning)
        assert int(cache.get_seq_length()) == 10


# ------------------------------------------------------------------------------------------------ static cache, eager


@pytest.fixture(scope="module")
def model():
    return tiny_model().float()


@pytest.mark.smoke
@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_generate_equals_dynamic(model, num_beams):
    """Greedy and beam search (beam reorders of states and K/V in place), left padding: same tokens and scores."""
    ids, mask = left_padded_batch()
    kwargs = generate_kwargs(num_beams=num_beams, output_scores=True)
    with torch.no_grad():
        dynamic = model.generate(ids, attention_mask=mask, **kwargs)
        static = model.generate(ids, attention_mask=mask, cache_implementation="static", **kwargs)
    assert isinstance(cache_of(static), mc.MiniMaxText01StaticCache)
    assert isinstance(cache_of(dynamic), mc.MiniMaxText01Cache)
    assert torch.equal(static.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-5, atol=1e-5)
    if num_beams > 1:
        torch.testing.assert_close(static.sequences_scores, dynamic.sequences_scores, rtol=1e-5, atol=1e-5)


def manual_static_loop(model, forward, cache=None, steps=STEPS):
    """Left-padded batch 2: prefill (eager), then `steps - 1` single-token steps through `forward` with the
    fixed-length [B, max_cache_len] mask. Returns (tokens [B, steps], last-position logits [steps, B, V])."""
    ids, mask = left_padded_batch()
    length = PROMPT + steps
    cache = cache or mc.MiniMaxText01StaticCache(model.config, max_batch_size=2, max_cache_len=length, device="cpu")
    full_mask = torch.nn.functional.pad(mask, (0, steps), value=0)
    with torch.no_grad():
        out = model(ids, attention_mask=full_mask, past_key_values=cache, use_cache=True)
        tokens, logits = [out.logits[:, -1].argmax(-1, keepdim=True)], [out.logits[:, -1]]
        for t in range(steps - 1):
            full_mask[:, PROMPT + t] = 1
            out = forward(input_ids=tokens[-1], attention_mask=full_mask, past_key_values=cache, use_cache=True)
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
            logits.append(out.logits[:, -1])
    return torch.cat(tokens, dim=1), torch.stack(logits)


@pytest.mark.smoke
def test_manual_static_loop_equals_dynamic_cache_and_cache_resets(model):
    ids, mask = left_padded_batch()
    expected = model.generate(ids, attention_mask=mask, **generate_kwargs())
    cache = mc.MiniMaxText01StaticCache(model.config, max_batch_size=2, max_cache_len=PROMPT + STEPS, device="cpu")
    for _ in range(2):  # the second run reuses the buffers after reset()
        tokens, logits = manual_static_loop(model, model, cache)
        assert_same_run(tokens, logits, expected.sequences[:, PROMPT:], torch.stack(expected.logits))
        assert int(cache.get_seq_length()) == PROMPT + STEPS - 1
        cache.reset()
        assert int(cache.get_seq_length()) == 0 and cache.get_lightning_state(0) is None


@pytest.mark.smoke
def test_static_cache_preallocates_and_refuses_overflow_and_other_batches(model):
    cache = mc.MiniMaxText01StaticCache(model.config, max_batch_size=2, max_cache_len=12, device="cpu")
    softmax = model.config.attn_type_list.index(1)
    keys = cache.layers[softmax].keys
    assert keys.shape == (2, model.config.num_key_value_heads, 12, model.config.head_dim)
    state = cache.layers[0].recurrent_states[0]
    assert state.shape == (2, model.config.num_attention_heads, 16, 16) and state.dtype == torch.float32
    with torch.no_grad():
        model(random_ids(2, 12), past_key_values=cache, use_cache=True)
        assert cache.layers[softmax].keys is keys and cache.layers[0].recurrent_states[0] is state  # in place
        with pytest.raises(ValueError, match="holds 12 tokens; 12 are cached and 1 more"):
            model(random_ids(2, 1), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="holds batch 2, got 3 rows"):
            model(random_ids(3, 4), past_key_values=mc.MiniMaxText01StaticCache(model.config, 8, 2, "cpu"))


# ------------------------------------------------------------------------------------------------ MoE without host syncs


@pytest.mark.smoke
def test_sync_free_expert_paths_equal_the_eager_routing(model):
    """The compiled-decode MoE paths, run eagerly: gathered experts over the stacked weights (N k <= E) and every
    expert masked by its routing weight (larger N), against the eager expert-by-expert dispatch."""
    moe = model.model.layers[0].block_sparse_moe
    for tokens in (1, 2, 5):
        x = torch.randn(1, tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(tokens))
        with torch.no_grad():
            expected, _ = moe(x)
            probs = torch.softmax(moe.gate(x[0]), dim=-1)
            weights, experts = probs.topk(moe.top_k, dim=-1)
            weights = weights / weights.sum(-1, keepdim=True)
            masked = moe._dense_experts(x[0], weights, experts)
            stacks = moe.expert_weights.stacked_views(moe)
            gathered = mm.gathered_experts_forward(x[0], weights, experts, *stacks, moe.experts[0].act)
        torch.testing.assert_close(masked, expected[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gathered, expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.smoke
def test_expert_stacks_keep_one_copy_and_the_checkpoint_layout(tmp_path):
    model = tiny_model()
    moe = model.model.layers[0].block_sparse_moe
    names = list(model.state_dict())
    ids = random_ids(1, 6)
    with torch.no_grad():
        expected = model(ids).logits  # an eager prompt builds the stacks
    w1 = moe.expert_weights.stacked_views(moe)[0]
    assert all(e.w1.weight.data_ptr() == w1[i].data_ptr() for i, e in enumerate(moe.experts))  # views: one copy
    assert list(model.state_dict()) == names and type(moe.experts[0].w1) is torch.nn.Linear
    model.save_pretrained(tmp_path)
    reloaded = mm.MiniMaxText01ForCausalLM.from_pretrained(tmp_path).eval()
    model.double()  # new storage for every parameter: the stacks are dropped, then rebuilt from the new weights
    assert moe.expert_weights._stacks is None
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.float(), expected, rtol=1e-5, atol=1e-5)
        assert moe.expert_weights.stacked_views(moe)[0].dtype == torch.float64
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=0)
    moe.experts[1].w3.weight = torch.nn.Parameter(moe.experts[1].w3.weight.detach().clone())  # replaced: restacked
    assert moe.expert_weights.stacked_views(moe)[1][1].data_ptr() == moe.experts[1].w3.weight.data_ptr()


# ------------------------------------------------------------------------------------------------ compiled decode


@pytest.mark.slow
def test_fullgraph_compiled_decode_equals_eager_with_no_recompilation():
    """torch.compile(model.forward, fullgraph=True) over 15 static-cache decode steps (batch 2, left padding):
    one graph, compiled once, greedy tokens and every step's logits equal eager."""
    model = two_layer_model()
    expected_tokens, expected_logits = manual_static_loop(model, model)
    with strict_dynamo():
        tokens, logits = manual_static_loop(model, torch.compile(model.forward, fullgraph=True))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert_same_run(tokens, logits, expected_tokens, expected_logits)


@pytest.mark.slow
def test_generate_auto_compiles_static_decode_once_and_equals_eager():
    """transformers' own auto-compile in generate (asked for on CPU through CompileConfig): compiled once, reused
    by a second generate with a fresh cache; tokens and logits equal the eager dynamic-cache run."""
    model = two_layer_model()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, **generate_kwargs())
        with strict_dynamo():
            runs = [
                model.generate(ids, attention_mask=mask, cache_implementation="static",
                               compile_config=cpu_compile_config(), **generate_kwargs())
                for _ in range(2)
            ]  # fmt: skip
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for run in runs:
        assert_same_run(run.sequences, torch.stack(run.logits), eager.sequences, torch.stack(eager.logits))


def test_dynamic_cache_is_never_auto_compiled():
    """The default dynamic cache is not compileable, so generate() does not compile (no recompilation storm from
    the growing K/V and the MoE's host syncs): even with a compile_config nothing is traced."""
    model = two_layer_model()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, **generate_kwargs())
        torch._dynamo.reset()
        counters.clear()
        asked = model.generate(ids, attention_mask=mask, compile_config=cpu_compile_config(), **generate_kwargs())
    assert not counters["stats"] and not hasattr(model, "_compiled_call")
    assert torch.equal(asked.sequences, eager.sequences)


@pytest.mark.slow
def test_vl_generate_auto_compiles_static_decode_and_equals_eager():
    """MiniMax-VL-01: images in an eager prefill, then the compiled static-cache decode (batch 2, left padded)."""
    from PIL import Image

    vl = load("modeling_minimax_vl_01")
    processing, image_processing = load("processing_minimax_vl_01"), load("image_processing_minimax_vl_01")
    tokenizer = build_tiny_tokenizer(with_image_token=True)
    processor = processing.MiniMaxVL01Processor(image_processing.MiniMaxVL01ImageProcessor(), tokenizer)
    config = tiny_vl_config(image_token_index=special_token_ids(tokenizer)["image"], vocab_size=len(tokenizer))
    config.text_config.num_hidden_layers, config.text_config.attn_type_list = 2, [0, 1]
    torch.manual_seed(0)
    model = vl.MiniMaxVL01ForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(1)
    images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy())
              for w, h in ((336, 20), (20, 336))]  # fmt: skip
    inputs = processor(images=images, text=["<image> short", "a longer prompt: <image>"], return_tensors="pt")
    assert inputs["attention_mask"][0, 0] == 0  # left padded
    kwargs = generate_kwargs(pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        eager = model.generate(**inputs, **kwargs)
        with strict_dynamo():
            compiled = model.generate(**inputs, cache_implementation="static", compile_config=cpu_compile_config(),
                                      **kwargs)  # fmt: skip
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert_same_run(compiled.sequences, torch.stack(compiled.logits), eager.sequences, torch.stack(eager.logits))


@pytest.mark.slow
def test_compiled_forward_with_the_default_dynamic_cache_equals_eager():
    """`model.forward = torch.compile(model.forward)` then generate() with the default (growing) cache: graph
    breaks and recompilations allowed, the tokens and logits are eager's."""
    model = two_layer_model()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, **generate_kwargs())
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward)
        compiled = model.generate(ids, attention_mask=mask, **generate_kwargs())
    assert_same_run(compiled.sequences, torch.stack(compiled.logits), eager.sequences, torch.stack(eager.logits))


@pytest.mark.slow
def test_static_cache_is_reused_by_the_next_request_without_recompiling():
    """A second, shorter request reuses the first one's static cache (the same object, reset), so the compiled
    decode runs again without recompiling (recompile limit 1 raises); a longer one gets a new, larger cache."""
    model = two_layer_model()
    ids, mask = left_padded_batch()
    requests = [(ids, mask, STEPS), (ids[:, 2:], mask[:, 2:], STEPS - 4)]
    with torch.no_grad():
        eager = [model.generate(i, attention_mask=m, **generate_kwargs(max_new_tokens=n, min_new_tokens=n))
                 for i, m, n in requests]  # fmt: skip
        with strict_dynamo():
            caches, runs = [], []
            for i, m, n in requests:
                run = model.generate(i, attention_mask=m, cache_implementation="static", compile_config=cpu_compile_config(),
                                     **generate_kwargs(max_new_tokens=n, min_new_tokens=n))  # fmt: skip
                caches.append(cache_of(run))
                runs.append(run)
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert caches[0] is caches[1]
    for run, expected in zip(runs, eager):
        assert_same_run(run.sequences, torch.stack(run.logits), expected.sequences, torch.stack(expected.logits))
    longer = model._static_cache_for(model.config, rows=2, max_cache_len=caches[0].max_cache_len + 1)
    assert longer is not caches[0] and longer.max_cache_len == caches[0].max_cache_len + 1
