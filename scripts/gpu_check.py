"""One command for a GPU: check every GPU path against the plain path, then time single layers at the released sizes.

    python scripts/gpu_check.py                        # one CUDA GPU, under 5 minutes
    python scripts/gpu_check.py --device cpu --tiny    # the same run end to end on CPU at tiny sizes (make test-slow)

Part 1, the checks (scripts/gpu_checks.py): every GPU path (fla prefill, grouped-mm experts, static-cache decode
with CUDA graphs, bf16) against the plain path on a tiny model in fp32; exit status 1 if one fails or errors.
Paths that cannot run here are reported as skipped, with why.

Part 2, the timings (scripts/gpu_timings.py): single layers at the released sizes (lightning prefill and decode,
softmax decode, the MoE block, an int8 expert matmul, tensor-parallel decode) beside transformers' native `minimax`
and beside a measured floor (copy bandwidth, matmul rate).

Writes <out>/gpu_check.json, gpu_check.md and gpu_check.png (time vs tokens; the plot needs matplotlib), all
naming the device. fla and optimum-quanto are optional: their rows are skipped when they are not installed.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_checks import run_checks  # noqa: E402
from gpu_report import Report  # noqa: E402
from gpu_timings import run_timings  # noqa: E402
from minimax_code import REPO_ROOT, load  # noqa: E402
from cli_args import positive_int  # noqa: E402

kernels = load("lightning_attention")


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
    parser.add_argument("--reps", type=positive_int, default=None,
                        help="timed repetitions per row (default 10, tiny 3)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a config.json for the layer sizes, e.g. the released checkpoint's (default: the config "
                             "class's defaults, which are the released MiniMax-Text-01 values)")
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
