"""Hide a fresh random pass key in a long haystack and ask a checkpoint for it; then a small needle heatmap.

    python scripts/passkey_demo.py checkpoints/tiny-passkey --out build/needle-demo [--length 2048]

The checkpoint is loaded with the Auto classes and `trust_remote_code=True` (scripts/generate.py's loader). The
key and the needle's depth are drawn fresh every run; the prompt is the pass-key task of scripts/passkey.py at
`--length` of the checkpoint's own tokens. Then a small sweep (1K and 2K tokens x 3 depths x 2 keys) through
scripts/needle.py's code writes OUT/needle.json, needle.md and needle.png.
"""

import argparse
import random
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from generate import load_model, status
from needle import answer, PeakMemory, plan_prompts, prompt_ids, run_sweep, write_results
from passkey import answer_digits, filler_repetitions, passkey_text, random_key


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="local checkpoint folder (e.g. checkpoints/tiny-passkey)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the small heatmap sweep")
    parser.add_argument("--length", type=int, default=2048, help="haystack length in tokens (default 2048)")
    args = parser.parse_args(argv)

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.checkpoint)
    rng = random.SystemRandom()  # a fresh key every run
    key, depth = random_key(rng), rng.random()
    ids = prompt_ids(tokenizer, passkey_text(filler_repetitions(tokenizer, args.length), depth, key), chat=False)
    print(f"haystack: {ids.shape[1]:,} tokens; the pass key {key} is hidden at depth {depth:.0%}")
    start = time.perf_counter()
    text, _, _ = answer(model, tokenizer, ids, 8, None, PeakMemory(model.device))
    found = answer_digits(text)
    verdict = "RIGHT" if found == str(key) else "WRONG"
    print("question: What is the pass key? The pass key is ...")
    print(f"model generated {text.strip()!r}: answer {found or '(no digits)'}, {verdict} "
          f"({time.perf_counter() - start:.1f} s)")

    plan = plan_prompts(tokenizer, [1024, 2048], [0.0, 0.5, 1.0], [2], rng.randrange(2**31), chat=False)
    records, memory_kind = run_sweep(model, tokenizer, plan, 8, None, show=False)
    settings = {"checkpoint": str(args.checkpoint), "lengths": [1024, 2048], "depths": [0.0, 0.5, 1.0],
                "samples": 2, "seed": None, "chat": False, "peak_memory": memory_kind}  # fmt: skip
    write_results(args.out, settings, records)
    status(f"needle sweep: {sum(r['correct'] for r in records)}/{len(records)} right; "
           f"heatmap in {args.out / 'needle.png'}")


if __name__ == "__main__":
    main()
