"""Needle in a haystack: the pass-key test over context lengths x needle depths, with a heatmap.

    python scripts/needle.py CHECKPOINT --lengths 1K 2K 4K --depths 0 0.25 0.5 0.75 1 --samples 20 --out DIR
                             [--seed 0] [--chat] [--prefill-chunk 4096] [--dtype ...] [--device-map auto|MAP.json]
    python scripts/needle.py CHECKPOINT --lengths 4K 16K 64K --samples 20 4 1 --out DIR   # fewer at long lengths
    torchrun --nproc-per-node 8 scripts/needle.py CHECKPOINT ... --out DIR      # tensor parallel, 8 GPUs
    python scripts/needle.py --merge DIR1 DIR2 --out DIR        # one table and heatmap from several sweeps

Each prompt is the pass-key task of scripts/passkey.py: an intro, the filler repeated, the needle ("The pass key
is KEY. ...", KEY a fresh random 5-digit number) after a fraction `depth` of the filler, more filler, and the
question; the filler is repeated as often as brings the prompt closest to the length asked for, counted in the
checkpoint's own tokens. The model answers greedily through `generate()` with chunked prefill (`--prefill-chunk`
tokens at a time, so memory stays bounded however long the prompt); the answer is right when the first five
digits it generates are the key. `--chat` wraps the prompt in the checkpoint's chat template (for the released,
instruction-tuned models). Loading is scripts/generate.py's: `--device-map`, `--dtype`, and tensor parallel
under torchrun (every rank runs the same prompts, rank 0 writes).

Writes DIR/needle.json (the settings and one record per prompt: length in tokens, depth, key, generated text,
correct, prefill seconds (time to the first new token), peak memory), DIR/needle.md (exact-match table, depth x
length) and DIR/needle.png (the same as a heatmap).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from cli_args import positive_int
from generate import DTYPES, chat_messages, distributed_layout, load_model, read_device_map, status
from passkey import answer_digits, filler_repetitions, passkey_text, random_key

DEFAULT_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def parse_length(text: str) -> int:
    """"4096", "4K" or "4k" (= 4096) -> tokens."""
    scale = 1024 if text[-1:] in ("k", "K") else 1
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"length {text!r}: give tokens as an integer, or with K (1K = 1024).")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"length {text!r} must be positive.")
    return value


def parse_depth(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"depth {text!r}: give the fraction of the filler before the needle, 0 to 1.")
    return value


class FirstTokenClock(BaseStreamer):
    """generate() hands a streamer the prompt, then each new token: the time of the first new token is the
    prefill time (plus one greedy pick)."""

    def __init__(self):
        self.calls, self.first_token_at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self):
        pass


class PeakMemory:
    """Peak memory (MiB) while a prompt runs: allocated memory on a GPU, the process's resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        status_file = Path("/proc/self/status")
        if not status_file.exists():
            return None  # not Linux: no cheap peak-RSS reading
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


def prompt_ids(tokenizer, text: str, chat: bool) -> torch.Tensor:
    """[1, T] token ids of the prompt: the plain text, or the user turn of the chat template plus the generation
    prompt."""
    if chat:
        if not tokenizer.chat_template:
            raise ValueError("--chat: this checkpoint's tokenizer has no chat template; run without --chat.")
        return tokenizer.apply_chat_template(
            chat_messages(text), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def plan_prompts(tokenizer, lengths, depths, samples: list[int], seed: int, chat: bool) -> list[dict]:
    """Every prompt of the sweep, in order (length, depth, sample), each with its fresh key; samples[i] prompts per
    depth at lengths[i] (one number: the same for every length)."""
    rng = random.Random(seed)
    plan = []
    for length, count in zip(lengths, samples if len(samples) > 1 else samples * len(lengths)):
        repetitions = filler_repetitions(tokenizer, length)
        for depth in depths:
            for _ in range(count):
                key = random_key(rng)
                ids = prompt_ids(tokenizer, passkey_text(repetitions, depth, key), chat)
                plan.append({"target_length": length, "depth": depth, "key": key, "ids": ids})
    return plan


@torch.inference_mode()
def answer(model, tokenizer, ids: torch.Tensor, max_new_tokens: int, prefill_chunk: int | None, memory: PeakMemory):
    """Greedy answer to one prompt -> (generated text, prefill seconds, peak memory MiB)."""
    clock = FirstTokenClock()
    memory.reset()
    ids = ids.to(model.device)
    start = time.perf_counter()
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        prefill_chunk_size=prefill_chunk,
        streamer=clock,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    prefill_seconds = (clock.first_token_at or time.perf_counter()) - start
    text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    return text, prefill_seconds, memory.peak_mib()


def run_sweep(model, tokenizer, plan: list[dict], max_new_tokens: int, prefill_chunk: int | None, show: bool):
    memory = PeakMemory(model.device)
    records = []
    bar = tqdm(total=sum(p["ids"].shape[1] for p in plan), unit="tok", unit_scale=True, disable=not show,
               desc="needle", dynamic_ncols=True)  # fmt: skip
    for prompt in plan:
        text, seconds, peak = answer(model, tokenizer, prompt["ids"], max_new_tokens, prefill_chunk, memory)
        digits = answer_digits(text)
        records.append({
            "target_length": prompt["target_length"],
            "length": prompt["ids"].shape[1],
            "depth": prompt["depth"],
            "key": prompt["key"],
            "generated": text,
            "answer": digits,
            "correct": digits == str(prompt["key"]),
            "prefill_seconds": round(seconds, 4),
            "peak_memory_mib": None if peak is None else round(peak, 1),
        })  # fmt: skip
        bar.update(prompt["ids"].shape[1])
        bar.set_postfix(exact=f"{sum(r['correct'] for r in records) / len(records):.0%}")
    bar.close()
    return records, memory.kind


def accuracy_table(records: list[dict]):
    """-> (lengths, depths, {(length, depth): (correct, total)}, {length: mean tokens}), keyed by target length."""
    lengths = sorted({r["target_length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    cells = {}
    for r in records:
        hit, total = cells.get((r["target_length"], r["depth"]), (0, 0))
        cells[(r["target_length"], r["depth"])] = (hit + r["correct"], total + 1)
    mean_tokens = {}
    for length in lengths:
        sizes = [r["length"] for r in records if r["target_length"] == length]
        mean_tokens[length] = round(sum(sizes) / len(sizes))
    return lengths, depths, cells, mean_tokens


def markdown_table(records: list[dict], title: str) -> str:
    lengths, depths, cells, mean_tokens = accuracy_table(records)
    header = "| depth | " + " | ".join(f"{mean_tokens[n]:,} tokens" for n in lengths) + " |"
    lines = [f"## {title}", "", "Exact match (% of prompts whose first five generated digits are the key; "
             "prompts per cell in brackets).", "", header, "|---" * (len(lengths) + 1) + "|"]  # fmt: skip
    for depth in depths:
        row = [f"{100 * cells[(n, depth)][0] / cells[(n, depth)][1]:.0f} % ({cells[(n, depth)][1]})" for n in lengths]
        lines.append(f"| {depth:g} | " + " | ".join(row) + " |")
    overall = []
    for n in lengths:
        hit = sum(cells[(n, d)][0] for d in depths)
        total = sum(cells[(n, d)][1] for d in depths)
        overall.append(f"**{100 * hit / total:.0f} %** ({total})")
    lines.append("| all | " + " | ".join(overall) + " |")
    seconds = {n: [r["prefill_seconds"] for r in records if r["target_length"] == n] for n in lengths}
    lines.append("| prefill s (mean) | " + " | ".join(f"{sum(s) / len(s):.2f}" for s in seconds.values()) + " |")
    return "\n".join(lines) + "\n"


def heatmap(records: list[dict], path: Path, title: str) -> None:
    """Depth (rows, top = start of the haystack) x length (columns), colour = exact match, red 0 % to green
    100 %, as in the release's needle figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths, cells, mean_tokens = accuracy_table(records)
    grid = [[cells[(n, d)][0] / cells[(n, d)][1] for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)), dpi=100)
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{mean_tokens[n] / 1024:.1f}K" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="exact match")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(out: Path, settings: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "needle.json").write_text(json.dumps({"settings": settings, "records": records}, indent=1) + "\n")
    title = f"Pass key: {Path(settings['checkpoint']).name}" + (" (chat)" if settings["chat"] else "")
    (out / "needle.md").write_text(markdown_table(records, title))
    heatmap(records, out / "needle.png", title)


def merge_sweeps(sweeps: list[Path], out: Path) -> None:
    """One needle.json / .md / .png from several sweeps' records (settings: a list, one per sweep)."""
    results = [json.loads((sweep / "needle.json").read_text()) for sweep in sweeps]
    checkpoints = {r["settings"]["checkpoint"] for r in results}
    if len(checkpoints) > 1:
        raise SystemExit(f"--merge: the sweeps tested different checkpoints {sorted(checkpoints)}; merge one model's.")
    settings = results[0]["settings"] | {"merged": [r["settings"] for r in results]}
    write_results(out, settings, [record for r in results for record in r["records"]])
    status(f"wrote {out / 'needle.json'}, needle.md, needle.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="?", help="local checkpoint folder")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="SWEEP_DIR",
                        help="instead of running: join the records of earlier sweeps (of one checkpoint) into --out")
    parser.add_argument("--lengths", type=parse_length, nargs="+", default=[1024, 2048, 4096],
                        help="prompt lengths in the checkpoint's tokens (1K = 1024; default 1K 2K 4K)")
    parser.add_argument("--depths", type=parse_depth, nargs="+", default=DEFAULT_DEPTHS,
                        help="needle depths, fractions of the filler before it (default 0 .25 .5 .75 1)")
    parser.add_argument("--samples", type=positive_int, nargs="+", default=[10],
                        help="prompts (fresh keys) per length and depth: one number, or one per length")
    parser.add_argument("--out", type=Path, required=True, help="folder for needle.json / .md / .png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    parser.add_argument("--prefill-chunk", type=int, default=4096, help="prefill chunk in tokens (0 = whole prompt)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=16, help="tokens generated per answer")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weight dtype (default: the checkpoint's)")
    parser.add_argument("--device-map", help='"auto" or a JSON file from scripts/device_map.py --json')
    parser.add_argument("--pp", type=positive_int, default=1, help="pipeline stages under torchrun")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)  # fmt: skip

    if args.merge:
        merge_sweeps(args.merge, args.out)
        return
    if args.checkpoint is None or not (args.checkpoint / "config.json").is_file():
        parser.error(f"{args.checkpoint} is not a checkpoint folder (no config.json in it).")
    if len(args.samples) not in (1, len(args.lengths)):
        parser.error(f"--samples {args.samples}: give one count >= 1, or one per length ({len(args.lengths)}).")
    if args.prefill_chunk < 0:
        parser.error(f"--prefill-chunk must be a token count >= 0 (0 = whole prompt), got {args.prefill_chunk}.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and args.device_map:
        parser.error("--device-map does not combine with torchrun, which loads the model tensor parallel.")
    try:
        device_map = read_device_map(args.device_map)
        distributed_config = distributed_layout(world_size, args.pp)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    is_writer = os.environ.get("RANK", "0") == "0"

    hf_logging.disable_progress_bar()
    try:
        model, tokenizer = load_model(args.checkpoint, args.dtype, device_map, False, distributed_config)
    except ValueError as error:
        parser.error(str(error))
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # VL-01: the processor's tokenizer
    try:
        plan = plan_prompts(tokenizer, args.lengths, args.depths, args.samples, args.seed, args.chat)
    except ValueError as error:
        parser.error(str(error))
    status(f"{len(plan)} prompts, {sum(p['ids'].shape[1] for p in plan):,} tokens, on {model.device}")
    records, memory_kind = run_sweep(
        model, tokenizer, plan, args.max_new_tokens, args.prefill_chunk or None, show=is_writer
    )
    settings = {
        "checkpoint": str(args.checkpoint), "lengths": args.lengths, "depths": args.depths,
        "samples": args.samples, "seed": args.seed, "chat": args.chat, "prefill_chunk": args.prefill_chunk,
        "max_new_tokens": args.max_new_tokens, "device": str(model.device), "world_size": world_size,
        "threads": torch.get_num_threads(), "peak_memory": memory_kind,
    }  # fmt: skip
    if is_writer:
        write_results(args.out, settings, records)
        sys.stdout.write(markdown_table(records, f"Pass key: {args.checkpoint.name}"))
        status(f"wrote {args.out / 'needle.json'}, needle.md, needle.png")


if __name__ == "__main__":
    main()
