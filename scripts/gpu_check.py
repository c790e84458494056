"""One command for a GPU: check every GPU path against the plain path, then time single layers at the released sizes.

    python scripts/gpu_check.py                        # one CUDA GPU, under 5 minutes
    python scripts/gpu_check.py --device cpu --tiny    # the same run end to end on CPU at tiny sizes (tested in CI)

Part 1, checks (a tiny model in fp32, the same weights on both sides; exit status 1 if one fails or errors):
- fla prefill: the lightning prefill through flash-linear-attention's Triton kernel vs the plain chunked path, on a
  left-padded batch prefilled with a cache, a cached continuation and decode steps, and on packed sequences
  (logits and input gradient);
- grouped-mm experts (`config.moe_grouped_mm`) vs the per-expert loop;
- static-cache decode: `generate(..., cache_implementation="static")` vs the dynamic cache, eager and with
  `torch.compile(model.forward, fullgraph=True, mode="reduce-overhead")` (CUDA graphs); "not available" while the
  model has no static cache (generate then returns a cache that is not compileable);
- bf16 vs fp32 logits.
Paths that cannot run here (fla, grouped matmul and CUDA graphs need CUDA) are reported as skipped, with why.

Part 2, timings (single layers built from the released config, random weights, bf16 on GPU / fp32 on CPU), each
beside transformers' native `minimax` where it has the layer, and beside a floor:
- a lightning layer's prefill at 4K / 16K / 64K tokens vs its projection matmuls alone (timed);
- a 1M-token lightning prefill, whole and in 64K spans through the cache: time and peak memory;
- a lightning and a softmax decode step (batch 1; softmax at 4K context), eager and replayed as a CUDA graph, vs
  the weight-read floor (weights, plus the state or K/V cache, read once at the measured copy bandwidth);
- the MoE block at 1 and 4096 tokens vs its matmul floor: max(bytes of the experts used / bandwidth, FLOPs / the
  measured bf16 matmul rate);
- an expert matmul (6144 -> 9216) at 1 token: optimum-quanto int8 vs bf16, with the int8 / bf16 weight-read floors;
- with several GPUs, a decode step of a 2-layer model at the released widths on one GPU vs tensor parallel over the
  GPUs (transformers' engine under torchrun, scripts/tp_decode.py); on CPU (--tiny), 2 gloo ranks.
Times are medians of CUDA-event timings (GPU) or time.perf_counter (CPU) after warm-up runs.

Writes <out>/gpu_check.json, gpu_check.md and gpu_check.png (time vs tokens; the plot needs matplotlib), all
naming the device. fla and optimum-quanto are optional: their rows are skipped when they are not installed.
"""

import argparse
import copy
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers.models.minimax import modeling_minimax as native

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import native_config  # noqa: E402
from make_tiny_checkpoint import TEXT_AUTO_MAP, copy_remote_code, tiny_text_config  # noqa: E402
from minimax_code import REPO_ROOT, load  # noqa: E402
from cli_args import positive_int  # noqa: E402

modeling = load("modeling_minimax_text_01")
kernels = load("lightning_attention")
hybrid_cache = load("cache_minimax_text_01")
Config = load("configuration_minimax_text_01").MiniMaxText01Config

# the released config.json in the spec folder beside the checkout (or beside the worktrees' folder)
SPEC_CONFIG = Path("shared/spec/released-configs/minimax-text-01.config.json")
RELEASED_CONFIG = next((p / SPEC_CONFIG for p in REPO_ROOT.parents[:2] if (p / SPEC_CONFIG).is_file()), None)
LIGHTNING_LAYER, SOFTMAX_LAYER = 0, 7  # the first layer of each kind in the released model

# sizes: real (the released widths) and tiny (CPU, seconds)
REAL = dict(prefill=[4096, 16384, 65536], long=1 << 20, span=65536, context=4096, moe=[1, 4096], reps=10, warmup=2)
TINY = dict(prefill=[128, 512], long=2048, span=512, context=32, moe=[1, 128], reps=2, warmup=1)
TINY_WIDTHS = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rotary_dim=16,
                   intermediate_size=128, num_local_experts=4)


# ------------------------------------------------------------------------------------------------ measuring


class Clock:
    """Median milliseconds of fn() over `reps` runs after `warmup` runs: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device, reps: int, warmup: int = 2):
        self.cuda = device.type == "cuda"
        self.reps, self.warmup = reps, warmup

    def ms(self, fn, reps: int | None = None) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(reps or self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                start = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - start))
        return statistics.median(times)


def cuda_graph_ms(clock: Clock, step) -> float:
    """Capture step() once in a CUDA graph (after warm-up on a side stream, as capture requires), time replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return clock.ms(graph.replay)


@contextmanager
def peak_memory(device: torch.device, result: dict):
    """result["peak_mib"] = peak CUDA memory allocated inside the block beyond what was allocated before it."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield
    torch.cuda.synchronize(device)
    result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure_ceilings(clock: Clock, device, dtype, tiny: bool) -> dict:
    """Copy bandwidth (bytes read + written per second) and matmul rate (FLOP/s) of this device in `dtype`."""
    src = torch.ones((4 if tiny else 1024) << 20, dtype=dtype, device=device)  # 2 GiB in bf16 at full size
    dst = torch.empty_like(src)
    copy_ms = clock.ms(lambda: dst.copy_(src))
    n = 256 if tiny else 8192
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    matmul_ms = clock.ms(lambda: a @ b)
    return {"copy_bytes_per_s": 2 * src.numel() * src.element_size() / (copy_ms / 1e3),
            "matmul_flop_per_s": 2 * n**3 / (matmul_ms / 1e3)}


def floor_ms(ceilings: dict, bytes_read: float = 0.0, flops: float = 0.0) -> float:
    return 1e3 * max(bytes_read / ceilings["copy_bytes_per_s"], flops / ceilings["matmul_flop_per_s"])


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ results


class Report:
    """Check results and timing rows; a failing step is recorded with its error instead of ending the run."""

    def __init__(self, device: torch.device):
        self.device, self.checks, self.rows = device, [], []

    def check(self, name: str, fn, tolerance: float):
        """fn() -> (error, note) or raises Skip / NotAvailable; passes when error <= tolerance."""
        entry = {"check": name, "tolerance": tolerance}
        try:
            error, note = fn()
            entry.update(status="pass" if error <= tolerance else "FAIL", error=error, note=note)
        except Skip as reason:
            entry.update(status="skipped", note=str(reason))
        except NotAvailable as reason:
            entry.update(status="not available", note=str(reason))
        except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
            entry.update(status="ERROR", note=f"{type(error).__name__}: {first_line(error)}")
        self.checks.append(entry)
        print(f"check  {name}: {entry['status']}" + (f", error {entry['error']:.1e}" if "error" in entry else "")
              + (f" ({entry['note']})" if entry.get("note") else ""), flush=True)

    def time(self, what: str, impl: str, tokens: int, fn, note: str = "", memory: bool = False):
        """fn() -> milliseconds (or raises Skip); with memory=True also the peak CUDA memory of the call."""
        row = {"what": what, "impl": impl, "tokens": tokens, "ms": None, "peak_mib": None, "status": "ok",
               "note": note}
        try:
            if memory:
                with peak_memory(self.device, row):
                    row["ms"] = fn()
            else:
                row["ms"] = fn()
        except Skip as reason:
            row.update(status="skipped", note=str(reason))
        except torch.OutOfMemoryError as error:
            row.update(status="out of memory", note=first_line(error))
        except Exception as error:  # noqa: BLE001
            row.update(status="ERROR", note=f"{type(error).__name__}: {first_line(error)}")
        free_memory()
        self.rows.append(row)
        shown = f"{row['ms']:.3f} ms" if row["ms"] is not None else row["status"]
        print(f"time   {what} | {impl} | {tokens} tokens: {shown}"
              + (f", peak {row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "")
              + (f" ({row['note']})" if row["note"] else ""), flush=True)

    @property
    def failed(self) -> bool:
        """A check failed or errored, or a path other than native minimax raised (native's own failures are only
        reported)."""
        return any(c["status"] in ("FAIL", "ERROR") for c in self.checks) or any(
            r["status"] == "ERROR" and not r["impl"].startswith("native") for r in self.rows)


class Skip(Exception):
    """This path cannot run on this machine (the message says why)."""


def skip(reason: str):
    raise Skip(reason)


class NotAvailable(Exception):
    """The project does not have this path yet."""


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# ------------------------------------------------------------------------------------------------ part 1: checks


def check_model(device, dtype=torch.float32, std=0.2) -> torch.nn.Module:
    """The tiny model, weights ~ N(0, std): 0.2 is 10x the init, so every term shows in a comparison."""
    torch.manual_seed(0)
    model = modeling.MiniMaxText01ForCausalLM(tiny_text_config()).eval()
    for p in model.parameters():
        p.data.normal_(0, std)
    return model.to(device=device, dtype=dtype)


def padded_prefill_continuation_decode(model, ids, mask, prefill: int):
    """Prefill ids[:, :prefill] with a cache (left-padded batch), continue with all but the last 2 tokens at once
    (from the cached state), then decode the last 2 one by one. Returns (logits [B, T, V], lightning states)."""
    T = ids.shape[1]
    with torch.no_grad():
        out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
        logits = [out.logits]
        for stop in (T - 2, T - 1, T):
            cache = getattr(out, modeling.CACHE_FIELD)
            start = cache.get_seq_length()
            out = model(ids[:, start:stop], attention_mask=mask[:, :stop], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
    cache = getattr(out, modeling.CACHE_FIELD)
    states = [layer.state for layer in cache.layers if isinstance(layer, hybrid_cache.LightningStateLayer)]
    return torch.cat(logits, dim=1), states


def padded_batch(device, length=70, padding=9, seed=3):
    ids = torch.randint(0, 512, (2, length), generator=torch.Generator().manual_seed(seed)).to(device)
    mask = torch.ones_like(ids)
    mask[0, :padding] = 0
    return ids, mask


def packed_batch(device, rows=((11, 30, 25), (40, 20)), seed=4):
    """Rows of packed sequences (position_ids restart at 0 where one begins), right-padded to one length:
    ids, position_ids, attention_mask [B, T]."""
    T = max(sum(row) for row in rows)
    ids = torch.randint(0, 512, (len(rows), T), generator=torch.Generator().manual_seed(seed))
    positions, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for b, lengths in enumerate(rows):
        positions[b, : sum(lengths)] = torch.cat([torch.arange(n) for n in lengths])
        mask[b, : sum(lengths)] = 1
    return ids.to(device), positions.to(device), mask.to(device)


def packed_logits_and_input_gradient(model, ids, positions, mask):
    """Logits of a packed batch (no cache) and the gradient of their sum over real tokens w.r.t. the embeddings."""
    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=False).logits
    logits[mask.bool()].sum().backward()
    return logits.detach(), embeds.grad


@contextmanager
def patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def check_fla_prefill(device):
    if device.type != "cuda":
        raise Skip("fla's Triton kernels run on CUDA only (on CPU `make test-triton` runs them in the interpreter)")
    if kernels.chunk_simple_gla is None:
        raise Skip("flash-linear-attention is not installed (pip install flash-linear-attention==0.6.0)")
    model = check_model(device)
    ids, mask = padded_batch(device)
    calls = []

    def counted(*args):
        calls.append(args[0].shape[2])
        return kernels.lightning_attention_fla(*args)

    packed = packed_batch(device)
    with patched(modeling, "lightning_attention_fla", counted):
        fla_logits, fla_states = padded_prefill_continuation_decode(model, ids, mask, 40)
        fla_packed, fla_grad = packed_logits_and_input_gradient(model, *packed)
    if not calls:
        raise RuntimeError("the model never called lightning_attention_fla on CUDA")
    with patched(modeling, "use_fla_prefill", lambda q: False):
        plain_logits, plain_states = padded_prefill_continuation_decode(model, ids, mask, 40)
        plain_packed, plain_grad = packed_logits_and_input_gradient(model, *packed)
    keep, keep_packed = mask.bool(), packed[2].bool()
    errors = {"logits": rel_err(fla_logits[keep], plain_logits[keep]),
              "states": max(rel_err(a, b) for a, b in zip(fla_states, plain_states)),
              "packed logits": rel_err(fla_packed[keep_packed], plain_packed[keep_packed]),
              "packed input gradient": rel_err(fla_grad, plain_grad)}
    return max(errors.values()), ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + f"; {len(calls)} fla calls"


def check_grouped_mm(device):
    if device.type != "cuda":
        raise Skip("the grouped-mm experts run on CUDA only")
    if modeling._grouped_mm is None:
        raise Skip(f"torch {torch.__version__} has no grouped matmul")
    model = check_model(device)
    ids, _ = padded_batch(device, length=37, padding=0)
    blocks = [m for m in model.modules() if isinstance(m, modeling.MiniMaxText01SparseMoeBlock)]
    grouped_forward, calls = modeling.grouped_experts_forward, []

    def counted(*args):
        calls.append(args[0].shape[0])
        return grouped_forward(*args)

    logits = {}
    for grouped in (True, False):
        for block in blocks:
            block.grouped_mm = grouped
        with torch.no_grad(), patched(modeling, "grouped_experts_forward", counted):
            logits[grouped] = model(ids, use_cache=False).logits
    if len(calls) != len(blocks):
        raise RuntimeError(f"the grouped path ran in {len(calls)} of {len(blocks)} MoE blocks")
    return rel_err(logits[True], logits[False]), f"{len(blocks)} MoE blocks took the grouped path"


def generated(model, ids, **kwargs):
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, output_scores=True,
                         return_dict_in_generate=True, disable_compile=True, **kwargs)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.sequences, torch.stack(out.scores, dim=1), cache


def check_static_cache(device, compiled: bool):
    if compiled and device.type != "cuda":
        raise Skip("CUDA graphs (mode='reduce-overhead') need a CUDA device")
    model = check_model(device)
    ids, _ = padded_batch(device, length=9, padding=0)
    with torch.no_grad():
        dynamic_tokens, dynamic_scores, _ = generated(model, ids)
        static_tokens, static_scores, cache = generated(model, ids, cache_implementation="static")
        if not getattr(cache, "is_compileable", False):
            raise NotAvailable(f"generate(cache_implementation='static') returned a {type(cache).__name__}, "
                               "which is not a compileable static cache")
        note = "eager"
        if compiled:
            model.forward = torch.compile(model.forward, fullgraph=True, mode="reduce-overhead")
            static_tokens, static_scores, _ = generated(model, ids, cache_implementation="static")
            note = "torch.compile(fullgraph=True, mode='reduce-overhead')"
    if not torch.equal(static_tokens, dynamic_tokens):
        raise RuntimeError(f"greedy tokens differ from the dynamic cache's ({note})")
    return rel_err(static_scores, dynamic_scores), f"{note}; greedy tokens equal; error of the scores"


def check_bf16(device):
    ids, mask = padded_batch(device)
    keep = mask.bool()
    with torch.no_grad():
        # the init's scale (0.02): with 10x larger weights bf16 rounding compounds to ~0.3 over 8 layers
        logits = {dtype: check_model(device, dtype, std=0.02)(ids, attention_mask=mask).logits for dtype in
                  (torch.float32, torch.bfloat16)}
    fp32, bf16 = logits[torch.float32][keep], logits[torch.bfloat16][keep]
    agree = (fp32.argmax(-1) == bf16.argmax(-1)).float().mean().item()
    return rel_err(bf16, fp32), f"top-1 token equal at {100 * agree:.0f} % of positions"


def run_checks(report: Report, device):
    report.check("fla prefill vs plain chunked path (padded, cached, decode; packed, gradient)",
                 lambda: check_fla_prefill(device), tolerance=1e-2)  # fla's fp32 tl.dot runs in TF32 on GPUs
    report.check("grouped-mm experts vs per-expert loop", lambda: check_grouped_mm(device), tolerance=1e-4)
    report.check("static-cache generate vs dynamic cache (eager)", lambda: check_static_cache(device, False),
                 tolerance=1e-4)
    report.check("static-cache compiled decode (CUDA graphs) vs dynamic cache",
                 lambda: check_static_cache(device, True), tolerance=1e-3)
    report.check("bf16 vs fp32 logits", lambda: check_bf16(device), tolerance=5e-2)


# ------------------------------------------------------------------------------------------------ part 2: timings


def layer_config(path: Path | None, tiny: bool) -> Config:
    """The released config (its file, or the config class's defaults, which are the released values)."""
    config = Config.from_json_file(path) if path else Config()
    if tiny:
        for key, value in TINY_WIDTHS.items():
            setattr(config, key, value)
    config._attn_implementation = "sdpa"
    return config


def native_layer_config(config: Config, device):
    """transformers' MiniMaxConfig for the same sizes (native rotates every channel: timing is unaffected)."""
    same_sizes = copy.deepcopy(config)
    same_sizes.rotary_dim = same_sizes.head_dim
    result = native_config(same_sizes)
    result._attn_implementation = "sdpa"
    result._experts_implementation = "grouped_mm" if device.type == "cuda" else "eager"
    return result


def build(cls, *args, device, dtype):
    """cls(*args) allocated on `device` in `dtype`, matrices ~ N(0, 0.02) (native leaves some uninitialised)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = cls(*args)
    finally:
        torch.set_default_dtype(default)
    for p in module.parameters():
        if p.dim() > 1:
            p.data.normal_(0, 0.02)
    return module.eval()


def hidden(tokens, config, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(1, tokens, config.hidden_size, generator=g, device=device, dtype=dtype)


def project_prefill_impl(device) -> str:
    return "project (fla)" if kernels.use_fla_prefill(torch.empty(0, device=device)) else "project (chunked)"


def time_lightning_prefill(report, clock, config, nconfig, sizes, device, dtype):
    what = "lightning layer prefill"
    layer = build(modeling.MiniMaxText01LightningAttention, config, LIGHTNING_LAYER, device=device, dtype=dtype)
    nlayer = build(native.MiniMaxLightningAttention, nconfig, LIGHTNING_LAYER, device=device, dtype=dtype)
    impl = project_prefill_impl(device)
    for tokens in sizes["prefill"]:
        x = hidden(tokens, config, device, dtype)
        report.time(what, impl, tokens, lambda: clock.ms(lambda: layer(x)))
        if impl == "project (fla)":
            with patched(modeling, "use_fla_prefill", lambda q: False):
                report.time(what, "project (chunked)", tokens, lambda: clock.ms(lambda: layer(x)))
        report.time(what, "native", tokens, lambda: clock.ms(lambda: nlayer(x, None, None)))
        inner = torch.randn(1, tokens, layer.out_proj.in_features, device=device, dtype=dtype)
        projections = lambda: (F.linear(x, layer.qkv_proj.weight), F.linear(x, layer.output_gate.weight),  # noqa: E731
                               F.linear(inner, layer.out_proj.weight))
        report.time(what, "floor", tokens, lambda: clock.ms(projections), "the three projection matmuls alone")
        del x, inner

    tokens, span = sizes["long"], sizes["span"]
    what = "lightning layer long prefill"
    x = hidden(tokens, config, device, dtype)
    report.time(what, f"{impl}, whole", tokens, lambda: clock.ms(lambda: layer(x), reps=1), memory=True)

    def in_spans():
        cache = hybrid_cache.MiniMaxText01Cache(config)
        out = torch.empty_like(x)
        for start in range(0, tokens, span):
            out[:, start : start + span] = layer(x[:, start : start + span], cache=cache)[0]
        return out

    report.time(what, f"{impl}, {span}-token spans", tokens, lambda: clock.ms(in_spans, reps=1),
                "state carried through the cache", memory=True)
    report.time(what, "native, whole", tokens, lambda: clock.ms(lambda: nlayer(x, None, None), reps=1), memory=True)


def state_kept_in_place(get, set_, forward):
    """A decode step whose state lives in one tensor, so a CUDA-graph replay advances it like an eager call."""
    static = get()

    def step():
        forward()
        static.copy_(get())
        set_(static)

    return step


def time_decode(report, clock, ceilings, config, nconfig, sizes, device, dtype):
    context = sizes["context"]
    x1 = hidden(1, config, device, dtype, seed=1)
    no_graphs = "CUDA graphs need a CUDA device"

    # lightning: the state is [1, H, d, d] fp32 whatever the context
    what = "lightning decode step"
    layer = build(modeling.MiniMaxText01LightningAttention, config, LIGHTNING_LAYER, device=device, dtype=dtype)
    cache = hybrid_cache.MiniMaxText01Cache(config)
    layer(hidden(context, config, device, dtype), cache=cache)
    step = state_kept_in_place(lambda: cache.get_lightning_state(LIGHTNING_LAYER),
                               lambda s: cache.set_lightning_state(LIGHTNING_LAYER, s), lambda: layer(x1, cache=cache))
    report.time(what, "project eager", 1, lambda: clock.ms(step))
    report.time(what, "project CUDA graph", 1, lambda: graph_or_skip(clock, step, device, no_graphs))
    nlayer = build(native.MiniMaxLightningAttention, nconfig, LIGHTNING_LAYER, device=device, dtype=dtype)
    ncache = native.MiniMaxCache()
    nlayer(hidden(context, config, device, dtype), None, None, **{modeling.CACHE_FIELD: ncache})
    nstep = state_kept_in_place(lambda: ncache.get_linear_cache(LIGHTNING_LAYER),
                                lambda s: ncache.set_linear_cache(LIGHTNING_LAYER, s),
                                lambda: nlayer(x1, None, None, **{modeling.CACHE_FIELD: ncache}))
    report.time(what, "native eager", 1, lambda: clock.ms(nstep))
    report.time(what, "native CUDA graph", 1, lambda: graph_or_skip(clock, nstep, device, no_graphs))
    state_bytes = 2 * cache.get_lightning_state(LIGHTNING_LAYER).numel() * 4  # fp32, read and written
    report.time(what, "floor", 1, lambda: floor_ms(ceilings, weight_bytes(layer) + state_bytes),
                "weights + fp32 state at the copy bandwidth")
    del layer, nlayer, cache, ncache

    # softmax at `context` tokens of K/V
    what = f"softmax decode step at {context} context"
    attn = build(modeling.MiniMaxText01Attention, config, SOFTMAX_LAYER, device=device, dtype=dtype)
    rotary = modeling.MiniMaxText01RotaryEmbedding(config)
    cache = hybrid_cache.MiniMaxText01Cache(config)
    positions = torch.arange(context, device=device)[None]
    attn(hidden(context, config, device, dtype), rotary(positions), cache=cache)
    step_rotary = rotary(torch.tensor([[context]], device=device))
    step = lambda: attn(x1, step_rotary, cache=cache)  # noqa: E731
    report.time(what, "project eager", 1, lambda: clock.ms(step))
    report.time(what, "project CUDA graph", 1, lambda: graph_or_skip(clock, step, device, no_graphs))
    nattn = build(native.MiniMaxAttention, nconfig, SOFTMAX_LAYER, device=device, dtype=dtype)
    nrotary = native.MiniMaxRotaryEmbedding(nconfig).to(device)
    ncache = native.MiniMaxCache()
    xc = hidden(context, config, device, dtype)
    nattn(xc, nrotary(xc, positions), None, **{modeling.CACHE_FIELD: ncache})
    nstep_rotary = nrotary(x1, torch.tensor([[context]], device=device))
    nstep = lambda: nattn(x1, nstep_rotary, None, **{modeling.CACHE_FIELD: ncache})  # noqa: E731
    report.time(what, "native eager", 1, lambda: clock.ms(nstep))
    report.time(what, "native CUDA graph", 1, lambda: graph_or_skip(clock, nstep, device, no_graphs))
    kv_bytes = 2 * context * config.num_key_value_heads * config.head_dim * torch.finfo(dtype).bits // 8
    report.time(what, "floor", 1, lambda: floor_ms(ceilings, weight_bytes(attn) + kv_bytes),
                "weights + K/V cache at the copy bandwidth")


def graph_or_skip(clock, step, device, reason):
    if device.type != "cuda":
        raise Skip(reason)
    return cuda_graph_ms(clock, step)


def time_moe(report, clock, ceilings, config, nconfig, sizes, device, dtype):
    what = "MoE block"
    moe = build(modeling.MiniMaxText01SparseMoeBlock, config, device=device, dtype=dtype)
    D, I, E, k = config.hidden_size, config.intermediate_size, config.num_local_experts, config.num_experts_per_tok
    expert_bytes = 3 * D * I * torch.finfo(dtype).bits // 8
    for tokens in sizes["moe"]:
        x = hidden(tokens, config, device, dtype)
        report.time(what, "project", tokens, lambda: clock.ms(lambda: moe(x)))
        if device.type == "cuda" and modeling._grouped_mm is not None and tokens > 1:
            with patched(moe, "grouped_mm", True):
                report.time(what, "project (grouped mm)", tokens, lambda: clock.ms(lambda: moe(x)))
        report.time(what, "floor", tokens, lambda: floor_ms(ceilings, min(E, k * tokens) * expert_bytes,
                                                              2 * tokens * k * 3 * D * I),
                    "max(expert bytes / bandwidth, FLOPs / matmul rate)")
    del moe
    free_memory()
    nmoe = build(native.MiniMaxSparseMoeBlock, nconfig, device=device, dtype=dtype)
    for tokens in sizes["moe"]:
        x = hidden(tokens, config, device, dtype)
        report.time(what, f"native ({nconfig._experts_implementation})", tokens, lambda: clock.ms(lambda: nmoe(x)))


def time_int8_expert(report, clock, ceilings, config, device, dtype):
    what = f"expert matmul {config.hidden_size}->{config.intermediate_size}"
    linear = build(torch.nn.Linear, config.hidden_size, config.intermediate_size, False, device=device, dtype=dtype)
    x = hidden(1, config, device, dtype)[0]
    report.time(what, "bf16" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch."), 1,
                lambda: clock.ms(lambda: linear(x)))

    def quantized():
        try:
            from optimum.quanto import freeze, qint8, quantize
        except ImportError:
            raise Skip("optimum-quanto is not installed") from None
        int8 = torch.nn.Sequential(copy.deepcopy(linear))  # quanto replaces child modules
        quantize(int8, weights=qint8)
        freeze(int8)
        return clock.ms(lambda: int8(x))

    report.time(what, "int8 (quanto)", 1, quantized)
    weights = linear.weight.numel()
    report.time(what, "floor", 1, lambda: floor_ms(ceilings, weights * linear.weight.element_size()),
                "weight read in the layer dtype")
    report.time(what, "int8 floor", 1, lambda: floor_ms(ceilings, weights), "int8 weight read")


def run_timings(report: Report, args, device, dtype):
    sizes = TINY if args.tiny else REAL
    clock = Clock(device, reps=args.reps or sizes["reps"], warmup=sizes["warmup"])
    ceilings = measure_ceilings(clock, device, dtype, args.tiny)
    print(f"ceilings: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), matmul "
          f"{ceilings['matmul_flop_per_s'] / 1e12:.1f} TFLOP/s", flush=True)
    config = layer_config(args.config, args.tiny)
    nconfig = native_layer_config(config, device)
    with torch.inference_mode():
        for part in (lambda: time_lightning_prefill(report, clock, config, nconfig, sizes, device, dtype),
                     lambda: time_decode(report, clock, ceilings, config, nconfig, sizes, device, dtype),
                     lambda: time_moe(report, clock, ceilings, config, nconfig, sizes, device, dtype),
                     lambda: time_int8_expert(report, clock, ceilings, config, device, dtype)):
            part()
            free_memory()
    time_tp_decode(report, config, args.tiny, device, dtype)
    return ceilings


def tp_decode_checkpoint(out: Path, config: Config, tiny: bool, dtype) -> Path:
    """A 2-layer model (one lightning, one softmax layer) at the timed layer widths with 4 experts (a decode step
    reads 2 of them, whatever their number) and a 32K vocabulary: a few GB at the released widths."""
    widths = {key: getattr(config, key) for key in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                    "head_dim", "rotary_dim", "intermediate_size")}
    text = tiny_text_config(vocab_size=512 if tiny else 32768, num_hidden_layers=2, attn_type_list=[0, 1],
                            num_local_experts=4, **widths)
    text.auto_map, text.architectures = TEXT_AUTO_MAP, ["MiniMaxText01ForCausalLM"]
    torch.manual_seed(0)
    modeling.MiniMaxText01ForCausalLM(text).to(dtype).save_pretrained(out)
    copy_remote_code(out)
    return out


def time_tp_decode(report: Report, config: Config, tiny: bool, device, dtype):
    """Decode steps of a 2-layer model at the timed widths: one device vs tensor parallel over all GPUs (NCCL),
    each in its own processes (scripts/tp_decode.py). On CPU (--tiny) 2 gloo ranks run the same path."""
    what = "decode step, 2-layer model, tensor parallel"
    ranks = torch.cuda.device_count() if device.type == "cuda" else 2
    if ranks < 2:
        reason = f"tensor parallel needs 2 or more GPUs (one per rank); this machine has {ranks}"
        for impl in ("1 device", "tensor parallel"):
            report.time(what, impl, 1, lambda: skip(reason))
        return
    ranks = min(ranks, config.num_key_value_heads)  # the heads must split evenly
    worker = Path(__file__).resolve().parent / "tp_decode.py"
    dtype_name = str(dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tp_decode_checkpoint(Path(tmp) / "checkpoint", config, tiny, dtype)

        def run(world: int) -> float:
            launcher = [sys.executable] if world == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
            out = Path(tmp) / f"tp{world}.json"
            command = launcher + [str(worker), str(checkpoint), "--out", str(out), "--dtype", dtype_name]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:6])} failed: {done.stderr.strip().splitlines()[-1:]}")
            return json.loads(out.read_text())["ms_per_token"]

        report.time(what, "1 device", 1, lambda: run(1))
        report.time(what, f"tensor parallel {ranks}", 1, lambda: run(ranks))


# ------------------------------------------------------------------------------------------------ output


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def write_outputs(report: Report, meta: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({**meta, "checks": report.checks, "timings": report.rows},
                                                   indent=1))
    lines = [f"# GPU-path check on {meta['device']}", "",
             f"torch {meta['torch']}, transformers {meta['transformers']}, fla {meta['fla']}, dtype {meta['dtype']}, "
             f"{'tiny' if meta['tiny'] else 'released'} layer sizes; copy {meta['copy_TB_per_s']:.2f} TB/s, "
             f"matmul {meta['matmul_TFLOP_per_s']:.1f} TFLOP/s (measured)", "",
             "| check | status | error | tolerance | note |", "|---|---|---|---|---|"]
    for c in report.checks:
        error = f"{c['error']:.1e}" if "error" in c else ""
        lines.append(f"| {c['check']} | {c['status']} | {error} | {c['tolerance']:.0e} | {c.get('note', '')} |")
    lines += ["", "| what | implementation | tokens | ms | peak MiB | note |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        ms = f"{r['ms']:.3f}" if r["ms"] is not None else r["status"]
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else ""
        lines.append(f"| {r['what']} | {r['impl']} | {r['tokens']} | {ms} | {peak} | {r['note']} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return plot(report, meta, out / "gpu_check.png")


def line_style(impl: str) -> dict:
    """The same colour for an implementation in every panel: project blue (its fast variant green), native orange,
    floors grey and dashed."""
    if impl.startswith("floor"):
        return {"color": "0.4", "linestyle": "--"}
    if impl.startswith("native"):
        return {"color": "tab:orange"}
    return {"color": "tab:green" if "fla" in impl or "grouped" in impl else "tab:blue"}


def plot(report: Report, meta: dict, path: Path) -> str:
    """Time vs tokens (project, native, floor) for the lightning prefill and the MoE block."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, what in zip(axes, ("lightning layer prefill", "MoE block")):
        rows = [r for r in report.rows if r["what"] == what and r["ms"] is not None]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            points = sorted((r["tokens"], r["ms"]) for r in rows if r["impl"] == impl)
            ax.plot(*zip(*points), marker="o", label=impl, **line_style(impl))
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="ms", title=what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"{meta['device']}, {meta['dtype']}, {'tiny' if meta['tiny'] else 'released'} sizes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot: {path}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny layer sizes and token counts (CPU, seconds)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="timing dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--reps", type=positive_int, default=None, help="timed repetitions per row (default 10, tiny 3)")
    parser.add_argument("--config", type=Path, default=RELEASED_CONFIG,
                        help="released config.json for the layer sizes (default: the spec's copy if found, else the "
                             "config class's defaults, which are the released values)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "gpu-check", help="output folder")
    parser.add_argument("--skip-checks", action="store_true", help="timings only")
    parser.add_argument("--skip-timings", action="store_true", help="checks only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("No CUDA device here: run on a GPU, or use --device cpu --tiny.")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    print(f"device: {device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}",
          flush=True)
    report, ceilings, started = Report(device), None, time.perf_counter()
    if not args.skip_checks:
        run_checks(report, device)
    if not args.skip_timings:
        ceilings = run_timings(report, args, device, dtype)
    fla = sys.modules.get("fla")
    meta = {"device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "fla": getattr(fla, "__version__", "not installed") if kernels.chunk_simple_gla else "not installed",
            "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny,
            "config": str(args.config) if args.config else "config class defaults (the released values)",
            "copy_TB_per_s": ceilings["copy_bytes_per_s"] / 1e12 if ceilings else float("nan"),
            "matmul_TFLOP_per_s": ceilings["matmul_flop_per_s"] / 1e12 if ceilings else float("nan"),
            "seconds": time.perf_counter() - started}
    print(write_outputs(report, meta, args.out))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} in {meta['seconds']:.0f} s")
    if report.failed:
        print("FAILED: a check failed or a path raised an error (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
