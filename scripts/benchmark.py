"""Benchmark this project's MiniMax-Text-01 against transformers' native `minimax` on the same random weights.

    python scripts/benchmark.py                                   # CPU target: fp32, 2 threads
    python scripts/benchmark.py --prefill 4096 16384 --decode-context 2048 --reps 3 --threads 2
    python scripts/benchmark.py --device cuda --dtype bfloat16    # (GPU numbers need a GPU run)

One random checkpoint (default: hidden 256, 8 heads x 32, 8 layers with softmax every 4th, 8 experts x 512,
vocab 1024) is written with this project's code and loaded twice: with `MiniMaxText01ForCausalLM` and, after
converting config and weights, with transformers' `MiniMaxForCausalLM`. `rotary_dim = head_dim`, so both compute
the same function (native rotates every channel); the script checks the logits agree (prefill and decode) and
aborts otherwise. Then it times, for each implementation:
- prefill: one forward over T prompt tokens with a cache and `logits_to_keep=1` (what `generate` does), the
  fastest of `--reps` runs after one warm-up, native and project runs alternating (robust to other load);
- decode: ms per token for `--decode-tokens` single-token steps after a `--decode-context`-token prefill (only the
  steps are timed); on CPU also the weight-read floor: the same per-token weight bytes read by 1-row matvecs from
  DRAM, the part of a decode step no implementation can avoid; and the torch ops one step dispatches (counted with a
  dispatch mode), the per-step overhead that the rest of a small-batch decode step is made of;
- with `--compiled-decode`: the project's decode through `MiniMaxText01StaticCache` and
  `torch.compile(model.forward, fullgraph=True, mode=--compile-mode)` (the compiled steps are checked against the
  eager logits first), timed alternating with the eager runs, and the compile time (the first compiled step);
- with `--speculative`: greedy `generate()` on a copy-heavy prompt (a random segment repeated), plain vs prompt
  lookup vs assisted generation with a 2-layer draft (the target's first lightning and softmax layers): target
  forward passes and ms per new token (the rows compare plain, in the "native" column, with each);
- peak memory of one prefill: on CPU the peak-RSS growth (VmHWM after resetting it through
  /proc/self/clear_refs, minus VmRSS before) in a fresh subprocess per measurement, so no allocator cache
  from an earlier run hides memory; on CUDA torch.cuda.max_memory_allocated growth.
Ratios are native / project (above 1 = this project is faster or smaller).
Native is run in fp32 by default: in bf16 its decay tables are rounded (spec section 6).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import MiniMaxConfig, MiniMaxForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_checkpoint import tiny_text_config  # noqa: E402
from minimax_code import load  # noqa: E402
from cli_args import positive_int  # noqa: E402

modeling = load("modeling_minimax_text_01")
cache_module = load("cache_minimax_text_01")
layouts = load("checkpoint_layouts")

# the cache's name in outputs and forward kwargs for the installed transformers (both models accept it)
CACHE_ARG = modeling.CACHE_FIELD


# ------------------------------------------------------------------------------------------------ checkpoint


def bench_config(args):
    """The CPU target configuration (issue 5) with rotary_dim = head_dim."""
    return tiny_text_config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        rotary_dim=args.head_dim,
        intermediate_size=args.expert_size,
        num_local_experts=args.experts,
        max_position_embeddings=1 << 20,
        prefill_chunk_size=args.prefill_chunk_size,
    )


def build_checkpoint(out: Path, args) -> Path:
    torch.manual_seed(args.seed)
    modeling.MiniMaxText01ForCausalLM(bench_config(args)).save_pretrained(out)
    return out


def native_config(config) -> MiniMaxConfig:
    """This project's config -> transformers' MiniMaxConfig (same math when rotary_dim == head_dim)."""
    if config.rotary_dim != config.head_dim:
        raise ValueError("native minimax rotates every channel: use rotary_dim == head_dim to compare.")
    return MiniMaxConfig(**layouts.native_config_from_released(config.to_dict()))


def load_models(checkpoint: Path, which: str, dtype, device):
    """`which` in {"project", "native"}; both in eval mode on `device` in `dtype`."""
    project = modeling.MiniMaxText01ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if which == "project":
        return project.to(device=device, dtype=dtype).eval()
    native = MiniMaxForCausalLM(native_config(project.config))
    missing, unexpected = native.load_state_dict(layouts.native_state_dict_from_released(project.state_dict()), strict=False)
    buffers = {name for name, _ in native.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise RuntimeError(f"weight conversion incomplete: missing {missing}, unexpected {unexpected}")
    return native.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------ measurements


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill(model, ids):
    return model(ids, use_cache=True, logits_to_keep=1)


def decode(model, ids, context: int):
    """Prefill ids[:, :context], then feed ids[:, context:] one token at a time. Returns the logits of every step,
    [B, steps + 1, V]."""
    out = model(ids[:, :context], use_cache=True, logits_to_keep=1)
    return decode_steps(model, ids, context, getattr(out, CACHE_ARG), [out.logits[:, -1]])


def decode_steps(model, ids, context: int, cache, logits: list):
    """Single-token steps over ids[:, context:] from a cache holding ids[:, :context] (explicit positions: native's
    cache reports length 0 when layer 0 is a lightning layer)."""
    for pos in range(context, ids.shape[1]):
        position_ids = torch.full((ids.shape[0], 1), pos, device=ids.device)
        out = model(ids[:, pos : pos + 1], position_ids=position_ids, use_cache=True, **{CACHE_ARG: cache})
        logits.append(out.logits[:, -1])
        cache = getattr(out, CACHE_ARG)
    return torch.stack(logits, dim=1)


def best_seconds(fns: dict, reps: int, device, warmed_up: bool = False) -> dict:
    """{name: fn} -> {name: fastest of `reps` timed runs}, after one warm-up each (unless the caller ran each
    already: `warmed_up`). The runs of the different fns alternate and the minimum is kept, so load from other
    processes on a shared machine biases no side."""
    for fn in () if warmed_up else fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def eager_decoder(model, device):
    """A timed decode run: untimed prefill of `context` tokens (default dynamic cache), then the timed steps."""

    def run(ids, context: int) -> float:
        cache = getattr(prefill(model, ids[:, :context]), CACHE_ARG)
        sync(device)
        start = time.perf_counter()
        decode_steps(model, ids, context, cache, [])
        sync(device)
        return time.perf_counter() - start

    return run


def compiled_decoder(model, ids, context: int, device, mode: str):
    """The project's decode through `MiniMaxText01StaticCache` and `torch.compile(model.forward, fullgraph=True)`.
    Compiles on a first run whose steps are checked against the eager logits. Returns (timed run like
    `eager_decoder`'s, compile seconds (the first compiled step), max |logits diff| vs eager)."""
    cache = cache_module.MiniMaxText01StaticCache(
        model.config, max_cache_len=ids.shape[1], max_batch_size=ids.shape[0], device=device, dtype=model.dtype
    )
    step = torch.compile(model.forward, fullgraph=True, mode=mode)

    def run(ids, context: int, logits: list | None = None) -> float:
        cache.reset()  # the same buffers every run, as a compiled graph wants
        model(ids[:, :context], past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(device)
        start = time.perf_counter()
        for pos in range(context, ids.shape[1]):
            out = step(input_ids=ids[:, pos : pos + 1], past_key_values=cache, use_cache=True)
            if logits is not None:
                sync(device)
                logits.append((out.logits[:, -1].clone(), time.perf_counter() - start))
        sync(device)
        return time.perf_counter() - start

    steps = []
    run(ids, context, steps)
    expected = decode(model, ids, context)[:, 1:]  # eager, dynamic cache
    diff = max((logits - expected[:, i]).abs().max().item() for i, (logits, _) in enumerate(steps))
    return run, steps[0][1], diff


def time_decode_ms(decoders: dict, ids, context: int, reps: int) -> dict:
    """ms per decode token for each {name: run} (see `eager_decoder`): the runs of the different decoders
    alternate, fastest of `reps` after one warm-up, so load from other processes biases no side."""
    best = {name: float("inf") for name in decoders}
    for rep in range(reps + 1):
        for name, run in decoders.items():
            seconds = run(ids, context)
            if rep:  # rep 0 is the warm-up
                best[name] = min(best[name], seconds)
    return {name: 1000 * seconds / (ids.shape[1] - context) for name, seconds in best.items()}


class OpCounter(TorchDispatchMode):
    """Counts the torch ops dispatched inside the `with` block (after Python, before the kernels: the unit of
    per-step overhead that a decode step at small batch pays besides its weight reads)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_decode_step(model, ids, context: int) -> int:
    """Torch ops one single-token step dispatches after a prefill of `context` tokens."""
    cache = getattr(prefill(model, ids[:, :context]), CACHE_ARG)
    decode_steps(model, ids[:, : context + 1], context, cache, [])  # the first step may allocate
    with OpCounter() as counter:
        decode_steps(model, ids[:, : context + 2], context + 1, cache, [])
    return counter.count


def decode_weight_floor_ms(model, reps: int, l3_bytes: int = 32 << 20) -> tuple[float, float]:
    """(ms, MB) the weight reads of one decode token cost at the machine's single-stream matvec speed: one 1-row
    F.linear per matrix a token reads (per layer: attention projections, router, top-k experts; lm_head), over
    enough copies of those matrices (> 4x L3) that every read comes from DRAM, as in real decoding where the
    experts change per token. Both implementations do these reads with the same single-threaded matvec kernel."""
    matrices = [model.lm_head.weight]
    for layer in model.model.layers:
        attention = [p for p in layer.self_attn.parameters() if p.dim() == 2]
        moe = layer.block_sparse_moe
        experts = [w for e in moe.experts[: moe.top_k] for w in (e.w1.weight, e.w3.weight, e.w2.weight)]
        matrices += attention + [moe.gate.weight] + experts
    per_token = sum(w.numel() * w.element_size() for w in matrices)
    copies = max(2, -(-4 * l3_bytes // per_token))
    pool = [[w.clone() for w in matrices] for _ in range(copies)]
    rows = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in matrices}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps + 1):
            start = time.perf_counter()
            for ws in pool:
                for w in ws:
                    F.linear(rows[w.shape[1]], w)
            best = min(best, (time.perf_counter() - start) / copies)
    return 1000 * best, per_token / 1e6


def random_ids(vocab: int, length: int, device, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (1, length), generator=generator).to(device)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_prefill_memory_mib(model, ids, device) -> float:
    """Peak memory growth of one prefill (MiB); see the module docstring for what is measured."""
    with torch.inference_mode():
        prefill(model, ids[:, :16])  # initialise lazy state (thread pools, caches) outside the measurement
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            prefill(model, ids)
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - before) / 2**20
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        prefill(model, ids)
        return (_proc_status_kib("VmHWM") - before) / 1024


def memory_in_subprocess(args, checkpoint: Path, which: str, tokens: int, chunk: int | None = None) -> float:
    command = [sys.executable, __file__, "--memory-probe", which, str(tokens), "--checkpoint", str(checkpoint),
               "--dtype", args.dtype, "--device", args.device, "--threads", str(args.threads)]
    if chunk:
        command += ["--prefill-chunk-size", str(chunk)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_probe(args):
    """Subprocess entry: load one model, print {"peak_mib": ...} for one prefill of `tokens` tokens."""
    which, tokens = args.memory_probe[0], int(args.memory_probe[1])
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = load_models(args.checkpoint, which, dtype, device)
    model.config.prefill_chunk_size = args.prefill_chunk_size
    ids = random_ids(model.config.vocab_size, tokens, device)
    print(json.dumps({"peak_mib": peak_prefill_memory_mib(model, ids, device)}))


# ------------------------------------------------------------------------------------------------ main


def check_same_function(project, native, args, device):
    """Prefill across a block boundary, then decode steps: the two implementations must give the same logits."""
    ids = random_ids(project.config.vocab_size, project.config.block_size + 44 + 8, device, seed=2)
    context = ids.shape[1] - 8
    with torch.inference_mode():
        mine, theirs = decode(project, ids, context), decode(native, ids, context)
        full_mine = project(ids, use_cache=False).logits
        full_theirs = native(ids, use_cache=False).logits.float()
    diff = max((mine - theirs).abs().max().item(), (full_mine - full_theirs).abs().max().item())
    scale = full_theirs.abs().max().item()
    print(f"same function check: max |logits diff| = {diff:.3e} (max |logit| {scale:.2f}; prefill + 8 decode steps)")
    tolerance = 1e-3 if args.dtype == "float32" else 5e-2
    if not diff <= tolerance * max(1.0, scale):
        sys.exit(f"ABORT: the implementations disagree (max diff {diff:.3e} > {tolerance} x {max(1.0, scale):.2f}).")


def draft_model(target):
    """A 2-layer draft of the family for assisted generation: the target's first lightning layer and first softmax
    layer (weights shared, so its guesses follow the target's), embeddings, final norm and head."""
    config = target.config
    picked = [config.attn_type_list.index(0), config.attn_type_list.index(1)]
    small = modeling.MiniMaxText01ForCausalLM(
        type(config)(**{**config.to_dict(), "num_hidden_layers": 2, "attn_type_list": [0, 1], "layer_types": None})
    )
    state = {}
    for name, tensor in target.state_dict().items():
        if not name.startswith("model.layers."):
            state[name] = tensor
        elif int(name.split(".")[2]) in picked:
            index = picked.index(int(name.split(".")[2]))
            state[".".join(["model", "layers", str(index), *name.split(".")[3:]])] = tensor
    small.load_state_dict(state)
    return small.to(device=target.device, dtype=target.dtype).eval()


def speculative_rows(model, args, device) -> tuple[list, list]:
    """Greedy generate() on a copy-heavy prompt (a random segment repeated), plain vs prompt lookup vs assisted
    (the 2-layer `draft_model`): target forward passes and time per new token, runs alternating, fastest kept."""
    segment = random_ids(args.vocab, args.speculative_segment, device, seed=3)
    ids = segment.repeat(1, args.speculative_repeats)
    settings = dict(max_new_tokens=args.speculative_tokens, min_new_tokens=args.speculative_tokens, do_sample=False)
    draft = draft_model(model)
    modes = {"plain": {}, "prompt lookup": {"prompt_lookup_num_tokens": 8}, "assisted": {"assistant_model": draft}}
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    counts, outputs = {}, {}
    for name, extra in modes.items():
        forwards.clear()
        outputs[name] = model.generate(ids, **settings, **extra)
        counts[name] = len(forwards)
    hook.remove()
    same = all(torch.equal(out, outputs["plain"]) for out in outputs.values())
    runs = {name: lambda e=extra: model.generate(ids, **settings, **e) for name, extra in modes.items()}
    seconds = best_seconds(runs, args.reps, device, warmed_up=True)  # the counting runs above were the warm-ups
    ms = {name: 1000 * s / args.speculative_tokens for name, s in seconds.items()}
    rows = [(f"greedy, {ids.shape[1]}-token copy-heavy prompt, plain / {name} (ms per new token)", ms["plain"], ms[name],
             ".2f") for name in ("prompt lookup", "assisted")]
    notes = [f"speculative decoding ({args.speculative_tokens} new tokens, prompt = {args.speculative_segment} random "
             f"tokens x {args.speculative_repeats}): target forward passes plain {counts['plain']}, prompt lookup "
             f"{counts['prompt lookup']}, assisted {counts['assisted']}; tokens equal to plain greedy: {same}"]
    return rows, notes


def run(args):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or build_checkpoint(Path(tmp) / "bench-checkpoint", args)
        models = {which: load_models(checkpoint, which, dtype, device) for which in ("project", "native")}
        print(f"native experts implementation: {models['native'].config._experts_implementation}; "
              f"attention: project {models['project'].config._attn_implementation}, "
              f"native {models['native'].config._attn_implementation}")
        check_same_function(models["project"], models["native"], args, device)

        rows, notes = [], []
        with torch.inference_mode():
            for tokens in args.prefill:
                ids = random_ids(args.vocab, tokens, device)
                seconds = best_seconds({w: lambda m=m: prefill(m, ids) for w, m in models.items()}, args.reps, device)
                rows.append((f"prefill {tokens} tokens (s)", seconds["native"], seconds["project"], ".3f"))
            ids = random_ids(args.vocab, args.decode_context + args.decode_tokens, device)
            decoders = {name: eager_decoder(model, device) for name, model in models.items()}
            if args.compiled_decode:
                decoders["compiled"], compile_s, diff = compiled_decoder(
                    models["project"], ids, args.decode_context, device, args.compile_mode
                )
            ms = time_decode_ms(decoders, ids, args.decode_context, args.reps)
            rows.append((f"decode at {args.decode_context} context (ms/token)", ms["native"], ms["project"], ".2f"))
            ops = {name: ops_per_decode_step(model, ids, args.decode_context) for name, model in models.items()}
            rows.append(("torch ops dispatched per decode step", ops["native"], ops["project"], "d"))
            if args.compiled_decode:
                rows.append((f"decode at {args.decode_context} context, project static cache + torch.compile "
                             "(ms/token)", ms["native"], ms["compiled"], ".2f"))
                notes.append(f"compiled decode (fullgraph, mode={args.compile_mode!r}): {ms['compiled']:.2f} ms/token "
                             f"vs eager {ms['project']:.2f} ({ms['project'] / ms['compiled']:.2f}x faster); compile "
                             f"time {compile_s:.1f} s (the first step); max |logits diff| vs eager {diff:.1e}")
            if args.speculative:
                spec_rows, spec_notes = speculative_rows(models["project"], args, device)
                rows += spec_rows
                notes += spec_notes
        if device.type == "cpu":
            floor_ms, megabytes = decode_weight_floor_ms(models["project"], args.reps)
            notes.append(f"decode weight-read floor: {floor_ms:.2f} ms/token ({megabytes:.1f} MB of weights per token "
                         "read by 1-row matvecs from DRAM); best possible native / project = "
                         f"{ms['native'] / floor_ms:.2f}x; project eager decode / floor = {ms['project'] / floor_ms:.2f}x")
            if args.compiled_decode:
                notes.append(f"project compiled decode / floor = {ms['compiled'] / floor_ms:.2f}x")
        del models
        if not args.skip_memory:
            for tokens in args.prefill:
                mib = {w: memory_in_subprocess(args, checkpoint, w, tokens) for w in ("native", "project")}
                rows.append((f"prefill {tokens} tokens peak memory (MiB)", mib["native"], mib["project"], ".0f"))
            for chunk in args.memory_chunks:
                for tokens in args.prefill:
                    native_mib = next(r[1] for r in rows if r[0] == f"prefill {tokens} tokens peak memory (MiB)")
                    mib = memory_in_subprocess(args, checkpoint, "project", tokens, chunk)
                    rows.append((f"prefill {tokens} peak memory, project prefill_chunk_size={chunk} (MiB)",
                                 native_mib, mib, ".0f"))
    print_table(rows, notes, args)


def print_table(rows, notes, args):
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end; device {args.device}, "
          f"{args.dtype}, {args.threads} threads; torch {torch.__version__}, transformers {transformers.__version__}")
    print()
    print("| measurement | native | project | native / project |")
    print("|---|---|---|---|")
    for name, native, project, fmt in rows:
        print(f"| {name} | {native:{fmt}} | {project:{fmt}} | {native / project:.2f}x |")
    for note in notes:
        print(f"\n{note}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill", type=positive_int, nargs="+", default=[4096, 16384], help="prompt lengths to time")
    parser.add_argument("--decode-context", type=positive_int, default=2048)
    parser.add_argument("--decode-tokens", type=positive_int, default=32, help="decode steps timed after the context")
    parser.add_argument("--reps", type=positive_int, default=3,
                        help="timed repetitions (the fastest is kept), after one warm-up")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-chunks", type=positive_int, nargs="*", default=[2048],
                        help="also measure the project's prefill memory with these prefill_chunk_size values")
    parser.add_argument("--prefill-chunk-size", type=positive_int, default=None,
                        help="config.prefill_chunk_size of the project")
    parser.add_argument("--compiled-decode", action="store_true",
                        help="also time the project's static-cache decode under torch.compile(fullgraph=True)")
    parser.add_argument("--compile-mode", default="default",
                        help='torch.compile mode for --compiled-decode ("reduce-overhead": CUDA graphs on a GPU)')
    parser.add_argument("--speculative", action="store_true",
                        help="also time greedy generate() with prompt lookup / assisted generation vs plain")
    parser.add_argument("--speculative-segment", type=positive_int, default=64,
                        help="random tokens repeated into the prompt")
    parser.add_argument("--speculative-repeats", type=positive_int, default=8)
    parser.add_argument("--speculative-tokens", type=positive_int, default=64, help="new tokens per generate()")
    sizes = parser.add_argument_group("model sizes")
    sizes.add_argument("--hidden", type=positive_int, default=256)
    sizes.add_argument("--heads", type=positive_int, default=8)
    sizes.add_argument("--kv-heads", type=positive_int, default=2)
    sizes.add_argument("--head-dim", type=positive_int, default=32)
    sizes.add_argument("--experts", type=positive_int, default=8)
    sizes.add_argument("--expert-size", type=positive_int, default=512)
    sizes.add_argument("--vocab", type=positive_int, default=1024)
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse a checkpoint written by this script")
    parser.add_argument("--memory-probe", nargs=2, metavar=("WHICH", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:  # a GPU this machine lacks fails here, not after the checkpoint is built
        load("loading_checks").check_device_map(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
