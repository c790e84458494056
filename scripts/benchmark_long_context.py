"""Whole-model prefill memory and time against prompt length, with and without chunked prefill, on CPU.

    python scripts/benchmark_long_context.py                       # 16K .. 128K tokens, chunks of 4096
    python scripts/benchmark_long_context.py --lengths 16384 65536 --chunk 2048

A small random model (the tiny checkpoints' shape: hidden 64, 8 layers with softmax attention every 4th, 4 heads of
16, GQA 4:2, 4 experts of 64) runs one prefill of T tokens with a cache and `logits_to_keep=1`, as generate() does.
Each measurement runs in a fresh subprocess: the peak-RSS growth (VmHWM after resetting it, minus VmRSS before the
prefill; the weights are loaded before) less the cache the prefill leaves behind (K/V and lightning states) is the
memory the prefill itself needs. With chunks of C tokens that should stay flat as T grows; the time should grow no
faster than the softmax layers' quadratic term predicts, t(T) <= t(T0) * (T / T0)^2.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import _proc_status_kib, random_ids  # noqa: E402
from make_tiny_checkpoint import tiny_text_config  # noqa: E402
from minimax_code import load  # noqa: E402
from cli_args import positive_int  # noqa: E402

modeling = load("modeling_minimax_text_01")


def cache_bytes(cache) -> int:
    """Bytes the cache holds: the K/V buffers (filled or reserved) and the lightning states."""
    total = 0
    for layer in cache.layers:
        tensors = getattr(layer, "_buffers", None) or [getattr(layer, "state", None)]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


def probe(tokens: int, chunk: int | None, threads: int) -> dict:
    """One prefill in this (fresh) process: seconds, peak growth and cache size in MiB."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = tiny_text_config(max_position_embeddings=1 << 23, prefill_chunk_size=chunk)
    model = modeling.MiniMaxText01ForCausalLM(config).eval()
    ids = random_ids(config.vocab_size, tokens, torch.device("cpu"))
    with torch.inference_mode():
        model(ids[:, :64], logits_to_keep=1)  # thread pools and lazy tables outside the measurement
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        start = time.perf_counter()
        out = model(ids, logits_to_keep=1)
        seconds = time.perf_counter() - start
        peak = (_proc_status_kib("VmHWM") - before) / 1024
    cache = cache_bytes(getattr(out, modeling.CACHE_FIELD)) / 2**20
    return {"seconds": seconds, "peak_mib": peak, "cache_mib": cache}


def measure(tokens: int, chunk: int | None, threads: int) -> dict:
    command = [sys.executable, __file__, "--probe", str(tokens), str(chunk or 0), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--chunk", type=positive_int, default=4096, help="prefill_chunk_size of the chunked runs")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--no-unchunked", action="store_true", help="skip the whole-prompt runs")
    parser.add_argument("--probe", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        tokens, chunk = args.probe
        print(json.dumps(probe(tokens, chunk or None, args.threads)))
        return

    rows = []
    for chunk in ([None] if not args.no_unchunked else []) + [args.chunk]:
        for tokens in args.lengths:
            r = measure(tokens, chunk, args.threads)
            rows.append((tokens, chunk, r))
            print(f"measured {tokens} tokens, chunk {chunk}: {r}", file=sys.stderr)

    print(f"torch {torch.__version__}, {args.threads} threads; tiny model (hidden 64, 8 layers, 2 softmax)\n")
    print("| prompt tokens | prefill_chunk_size | time (s) | peak growth (MiB) | cache (MiB) | peak above cache (MiB) |")
    print("|---|---|---|---|---|---|")
    for tokens, chunk, r in rows:
        above = r["peak_mib"] - r["cache_mib"]
        print(f"| {tokens} | {chunk or 'none'} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['cache_mib']:.1f} | "
              f"{above:.0f} |")
    chunked = [(t, r) for t, c, r in rows if c == args.chunk]
    (t0, r0), (t1, r1) = chunked[0], chunked[-1]
    flat = (r1["peak_mib"] - r1["cache_mib"]) / (r0["peak_mib"] - r0["cache_mib"])
    print(f"\nchunks of {args.chunk}: peak above cache at {t1} / at {t0} tokens = {flat:.2f}x (target <= 1.2x)")
    print(f"chunks of {args.chunk}: time at {t1} / at {t0} tokens = {r1['seconds'] / r0['seconds']:.1f}x; "
          f"the quadratic bound (T ratio squared) is {(t1 / t0) ** 2:.0f}x, linear {t1 / t0:.0f}x")


if __name__ == "__main__":
    main()
