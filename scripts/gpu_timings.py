"""Part 2 of scripts/gpu_check.py, the timings: single layers built from the released config (random weights, bf16
on GPU / fp32 on CPU), each beside transformers' native `minimax` where it has the layer, and beside a floor:
- a lightning layer's prefill at 4K / 16K / 64K tokens vs its projection matmuls alone (timed);
- a 1M-token lightning prefill, whole and in 64K spans through the cache: time and peak memory;
- a lightning and a softmax decode step (batch 1; softmax at 4K context), eager and replayed as a CUDA graph, vs
  the weight-read floor (weights, plus the state or K/V cache, read once at the measured copy bandwidth);
- the MoE block at 1 and 4096 tokens vs its matmul floor: max(bytes of the experts used / bandwidth, FLOPs / the
  measured bf16 matmul rate);
- an expert matmul (6144 -> 9216) at 1 token: optimum-quanto int8 vs bf16, with the int8 / bf16 weight-read floors;
- with several GPUs, a decode step of a 2-layer model at the released widths on one GPU vs tensor parallel over the
  GPUs (transformers' engine under torchrun, scripts/tp_decode.py); on CPU (--tiny), 2 gloo ranks;
- the same decode step with 8-bit weights quantized while loading, beside the unquantized one: torchao int8 on one
  GPU and tensor parallel (when there are several GPUs; 2 gloo ranks on CPU), FineGrainedFP8 on a GPU with FP8.
Times are medians of CUDA-event timings (GPU) or time.perf_counter (CPU) after warm-up runs.
"""

import copy
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.models.minimax import modeling_minimax as native

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import native_config  # noqa: E402
from gpu_report import Report, Skip, free_memory, patched, skip  # noqa: E402
from make_tiny_checkpoint import TEXT_AUTO_MAP, copy_remote_code, tiny_text_config  # noqa: E402
from minimax_code import load  # noqa: E402

modeling = load("modeling_minimax_text_01")
kernels = load("lightning_attention")
hybrid_cache = load("cache_minimax_text_01")
Config = load("configuration_minimax_text_01").MiniMaxText01Config

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


# ------------------------------------------------------------------------------------------------ layers and timings


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
    return f"project ({kernels.lightning_impl_name('auto', device)})"


def time_lightning_prefill(report, clock, config, nconfig, sizes, device, dtype):
    what = "lightning layer prefill"
    layer = build(modeling.MiniMaxText01LightningAttention, config, LIGHTNING_LAYER, device=device, dtype=dtype)
    nlayer = build(native.MiniMaxLightningAttention, nconfig, LIGHTNING_LAYER, device=device, dtype=dtype)
    impl = project_prefill_impl(device)
    for tokens in sizes["prefill"]:
        x = hidden(tokens, config, device, dtype)
        report.time(what, impl, tokens, lambda: clock.ms(lambda: layer(x)))
        if impl == "project (fla)":
            with patched(layer.config, "lightning_impl", "chunked"):
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
    time_2layer_decode(report, config, args.tiny, device, dtype)
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


def tp_decode_ms(checkpoint: Path, world: int, dtype_name: str, quantize: str | None = None) -> float:
    """scripts/tp_decode.py on `checkpoint`: one process, or `world` ranks under torchrun -> ms per decode step."""
    launcher = [sys.executable] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]  # fmt: skip
    out = checkpoint.parent / f"tp{world}-{quantize}.json"
    command = launcher + [str(Path(__file__).resolve().parent / "tp_decode.py"), str(checkpoint), "--out", str(out),
                          "--dtype", dtype_name] + (["--quantize", quantize] if quantize else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())["ms_per_token"]


def time_2layer_decode(report: Report, config: Config, tiny: bool, device, dtype):
    """Decode steps of a 2-layer model at the timed widths, each in its own processes (scripts/tp_decode.py): one
    device vs tensor parallel, and with 8-bit weights. The checkpoint is built once, and the unquantized one-device
    step measured once, for both sets of rows."""
    dtype_name = str(dtype).removeprefix("torch.")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 2
    ranks = min(gpus, config.num_key_value_heads)  # the heads must split evenly
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tp_decode_checkpoint(Path(tmp) / "checkpoint", config, tiny, dtype)
        one_device = functools.cache(lambda: tp_decode_ms(checkpoint, 1, dtype_name))  # read by both sets of rows
        time_tp_decode(report, checkpoint, gpus, ranks, one_device, dtype_name)
        time_8bit_decode(report, checkpoint, ranks, one_device, dtype_name, device)


def no_tensor_parallel(ranks: int) -> str:
    return f"tensor parallel needs 2 or more GPUs (one per rank); this machine has {ranks}"


def time_tp_decode(report: Report, checkpoint: Path, gpus: int, ranks: int, one_device, dtype_name: str):
    """One device vs tensor parallel over `ranks` of the `gpus` GPUs (NCCL); on CPU (--tiny) 2 gloo ranks run the
    same path."""
    what = "decode step, 2-layer model, tensor parallel"
    if gpus < 2:
        for impl in ("1 device", "tensor parallel"):
            report.time(what, impl, 1, lambda: skip(no_tensor_parallel(gpus)))
        return
    report.time(what, "1 device", 1, one_device)
    report.time(what, f"tensor parallel {ranks}", 1, lambda: tp_decode_ms(checkpoint, ranks, dtype_name))


def time_8bit_decode(report: Report, checkpoint: Path, ranks: int, one_device, dtype_name: str, device):
    """The decode step with 8-bit weights quantized while loading, beside the same step unquantized: torchao int8
    on one device and tensor parallel (several GPUs; 2 gloo ranks on CPU), FineGrainedFP8 on one GPU with FP8
    (compute capability 8.9 or newer)."""
    what = "decode step, 2-layer model, 8-bit weights"
    has_fp8 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    report.time(what, f"{dtype_name}, 1 device", 1, one_device)
    report.time(what, "int8 (torchao), 1 device", 1, lambda: tp_decode_ms(checkpoint, 1, dtype_name, "int8"))
    multi = (lambda: tp_decode_ms(checkpoint, ranks, dtype_name, "int8")) if ranks > 1 else (
        lambda: skip(no_tensor_parallel(ranks)))
    report.time(what, f"int8 (torchao), tensor parallel {max(ranks, 2)}", 1, multi)
    fp8 = (lambda: tp_decode_ms(checkpoint, 1, dtype_name, "fp8")) if has_fp8 else (
        lambda: skip("FineGrainedFP8 needs a CUDA GPU with FP8 (compute capability 8.9+)"))
    report.time(what, "FP8 (FineGrainedFP8), 1 device", 1, fp8)
