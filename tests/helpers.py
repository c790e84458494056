"""What the test modules share: tiny random models, random token ids and images, and error measures. Support module, not a test
module (test modules import from here, never from each other); the shared fixtures (tiny checkpoints, released
config files) are in conftest.py.
"""

import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from make_tiny_checkpoint import tiny_text_config
from minimax_code import load

mm = load("modeling_minimax_text_01")

VOCAB = 512  # the tiny models' vocabulary; in the tiny VL models the last id is the image token
# lightning decay rates for kernel tests: one fast-decaying head, one medium, one nearly 1 (the last layer of the
# release has slopes ~1e-5 s_h)
SLOPES = torch.tensor([0.5, 0.01, 2e-6])
# an OpenAI-style tool definition, for the chat-template, tool-call and serving tests
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# ------------------------------------------------------------------------------------------------ models


def unit_scale_weights(model, seed=0):
    """Unit-scale random weights, so every term of the math shows in the logits: norm weights 1 + 0.2 N(0, 1),
    matrices N(0, 1/fan_in), and router gates 4x larger so top-k choices are decisive (no near-ties for rounding
    to flip in bf16)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                scale = 4.0 if name.endswith("block_sparse_moe.gate.weight") else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


def tiny_model(seed=0, dtype=torch.float32, **overrides):
    """A tiny eval-mode MiniMaxText01ForCausalLM (make_tiny_checkpoint's config: 8 layers, softmax every 4th, width
    64) with unit-scale random weights in `dtype`; block_size 8 so short prompts cross several lightning blocks.
    `overrides` are config values."""
    overrides.setdefault("block_size", 8)
    model = mm.MiniMaxText01ForCausalLM(tiny_text_config(vocab_size=VOCAB, **overrides))
    return unit_scale_weights(model, seed).to(dtype).eval()


def cache_of(output):
    """The cache a model output returns (its field name differs between transformers versions)."""
    return getattr(output, mm.CACHE_FIELD)


# ------------------------------------------------------------------------------------------------ checkpoint copies


def _update_json(path: Path, values: dict) -> None:
    """Set the keys of `values` in the JSON file at `path`; a value None removes its key."""
    data = json.loads(path.read_text())
    for key, value in values.items():
        data.pop(key, None) if value is None else data.__setitem__(key, value)
    path.write_text(json.dumps(data))


def edited_checkpoint(source: Path, out: Path, config=None, tensors=None, generation_config=None) -> Path:
    """A copy of `source` with config.json / generation_config.json values updated / removed (None) and tensors
    changed / removed (None)."""
    shutil.copytree(source, out)
    if config:
        _update_json(out / "config.json", config)
    if generation_config:
        _update_json(out / "generation_config.json", generation_config)
    if tensors:
        weights = load_file(out / "model.safetensors")
        for key, value in tensors.items():
            weights.pop(key, None) if value is None else weights.__setitem__(key, value)
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def sharded_copy(source: Path, out: Path, duplicate=None) -> Path:
    """A copy of `source` split into two shards with an index, as large checkpoints are: shard 1 holds the tensors
    of even rank in name order (the first name among them), shard 2 the others. With `duplicate` (a function of a
    tensor), shard 2 also holds duplicate(tensor) under the first name, which the index places in shard 1."""
    shutil.copytree(source, out)
    weights = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    names = sorted(weights)
    halves = {SHARDS[0]: names[::2], SHARDS[1]: names[1::2]}
    for shard, keys in halves.items():
        tensors = {k: weights[k] for k in keys}
        if duplicate is not None and shard == SHARDS[1]:
            tensors[names[0]] = duplicate(weights[names[0]])
        save_file(tensors, out / shard, metadata={"format": "pt"})
    weight_map = {key: shard for shard, keys in halves.items() for key in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


# ------------------------------------------------------------------------------------------------ inputs


def random_ids(batch, length, seed=0):
    """Token ids [batch, length] in 3 .. VOCAB - 2: no special id (0-2), and not the tiny VL models' image token."""
    return torch.randint(3, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed))


def random_image(width, height, seed=0) -> Image.Image:
    """A width x height RGB image of uniformly random pixels."""
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy())


def render(tokenizer, messages, **kwargs) -> str:
    """The chat template's rendering of `messages`, as text."""
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


# ------------------------------------------------------------------------------------------------ error measures


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64: the error relative to the largest value."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def l2_rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected||, in float64: the error relative to the typical value."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


def errors(actual, expected) -> tuple[float, float, float]:
    """(max abs error, rel_err, l2_rel_err) of `actual` against a float64 reference."""
    max_abs = (actual.double() - expected.double()).abs().max().item()
    return max_abs, rel_err(actual, expected), l2_rel_err(actual, expected)
