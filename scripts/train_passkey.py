"""Train, from scratch on CPU, a tiny MiniMax-Text-01 checkpoint that finds a pass key hidden in a long haystack.

    python scripts/train_passkey.py --out checkpoints/tiny-passkey [--seed 0] [--threads 1]

The model is this project's own MiniMaxText01ForCausalLM, 0.28 M parameters: three lightning-attention layers and
one softmax layer last, hidden 64, a mixture of experts (top-2 of 4) in every layer, partial RoPE (8 of 16 channels,
base 1e7) as released. One change from the release: pre-norm blocks (`postnorm` false, residual alphas 1); in a
feasibility run the released DeepNorm-style post-norm stayed at chance on this task for the minutes it was given.
One thread by default: on a busy shared machine a second thread mostly waits for its partner.

The task (scripts/passkey.py) is the needle-in-a-haystack pass key, in the exact prompt format needle.py tests;
the loss covers the answer only (the space token and the five key digits). A length curriculum: prompts of up to
128 tokens first, then up to 256, 512, 1024, 2048 (from 256 on, lengths drawn from [max/2, max]); the next stage
starts when the exact-match rate of the last 10 training batches (fresh keys every batch, so a held-out measure)
reaches 90 %. At the last stage, once that rate reaches 98 %, the learning rate decays to zero over
`--final-steps` steps and training ends. Every random choice comes from the seed, so a run is reproducible on
the same machine and thread count (CPU matmuls may round differently with other thread counts).

The output folder is a complete checkpoint like the released ones: config.json (with auto_map),
model.safetensors, the word-level tokenizer (one token per word, digit and punctuation mark),
generation_config.json, the remote-code modules (symlinks to the repository's own files, so they never go stale;
`--copy-code` copies them instead, for a folder meant to leave the repository) and train_log.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from make_tiny_checkpoint import TEXT_AUTO_MAP
from minimax_code import REPO_ROOT, TEXT_CODE_FILES, load
from passkey import KEY_DIGITS, build_passkey_tokenizer, filler_repetitions, passkey_text, random_key

STAGES = [128, 256, 512, 1024, 2048]  # curriculum: longest prompt (tokens) of each stage
ADVANCE_AT = 0.90  # exact-match rate over the last WINDOW batches that moves to the next stage
FINISH_AT = 0.98  # ... and that starts the final learning-rate decay at the last stage
WINDOW = 10


def passkey_config(vocab_size: int, eos_token_id: int, hidden_size: int = 64, intermediate_size: int = 64):
    """4 layers (lightning, lightning, lightning, softmax), 4 heads of hidden_size / 4 channels (GQA 4:2 in the
    softmax layer), RoPE on half of each head's channels with base 1e7 (as released), 4 experts, top-2; pre-norm."""
    head_dim = hidden_size // 4
    config = load("configuration_minimax_text_01").MiniMaxText01Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=4,
        attn_type_list=[0, 0, 0, 1],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        rotary_dim=head_dim // 2,
        rope_theta=10_000_000.0,
        intermediate_size=intermediate_size,
        num_local_experts=4,
        num_experts_per_tok=2,
        postnorm=False,
        **{f"layernorm_{part}_alpha": 1.0 for part in ("full_attention", "linear_attention", "mlp")},
        max_position_embeddings=1 << 20,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    config.auto_map = TEXT_AUTO_MAP
    config.architectures = ["MiniMaxText01ForCausalLM"]
    return config


class PasskeyBatches:
    """Deterministic training batches: (input_ids [B, T], labels [B, T] with -100 outside the answer)."""

    def __init__(self, tokenizer, seed: int, tokens_per_step: int, stages: list[int]):
        self.tokenizer, self.rng, self.tokens_per_step = tokenizer, random.Random(seed), tokens_per_step
        self.stages = stages

    def repetition_range(self, stage: int) -> tuple[int, int]:
        longest = self.stages[stage]
        shortest = longest // 2 if stage > 0 else 0
        return filler_repetitions(self.tokenizer, shortest), filler_repetitions(self.tokenizer, longest)

    def batch(self, stage: int):
        repetitions = self.rng.randint(*self.repetition_range(stage))
        rows = []
        while not rows or len(rows) * len(rows[0][0]) < self.tokens_per_step:
            key = random_key(self.rng)
            prompt = self.tokenizer(passkey_text(repetitions, self.rng.random(), key))["input_ids"]
            answer = self.tokenizer(f" {key}")["input_ids"]  # "▁" then the five digits
            rows.append((prompt + answer, len(answer)))
        input_ids = torch.tensor([ids for ids, _ in rows])
        labels = torch.full_like(input_ids, -100)
        answer_len = rows[0][1]
        labels[:, -answer_len:] = input_ids[:, -answer_len:]
        return input_ids, labels


def exact_matches(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """bool [B]: the five digits predicted at the end (teacher forced, equal to greedy when all are right)."""
    predicted = logits[:, -KEY_DIGITS - 1 : -1].argmax(-1)
    return (predicted == input_ids[:, -KEY_DIGITS:]).all(-1)


def link_remote_code(out: Path, copy: bool) -> None:
    """The remote-code modules in `out`: relative symlinks to the repository's files, or copies."""
    for name in TEXT_CODE_FILES:
        target = out / name
        if target.is_symlink() or target.exists():
            target.unlink()
        if copy:
            shutil.copy(REPO_ROOT / name, target)
        else:
            target.symlink_to(os.path.relpath(REPO_ROOT / name, out.resolve()))


def save_checkpoint(model, tokenizer, out: Path, log: dict, copy_code: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    eos = tokenizer.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=eos, max_new_tokens=8, do_sample=False).save_pretrained(out)
    link_remote_code(out, copy_code)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")


def write_model_card(out: Path, sweep: Path) -> None:
    """README.md of the checkpoint: what it is, how it was trained (from train_log.json) and its needle scores
    (the needle.md that scripts/needle.py wrote into `sweep`)."""
    log = json.loads((out / "train_log.json").read_text())
    config = json.loads((out / "config.json").read_text())
    args = log["args"]
    stages = "\n".join(
        f"| {s['max_length']} | {s['step']} | {s['seconds'] / 60:.1f} |" for s in log["stages"]
    )
    decay = log.get("decay_start")
    decay_line = (f"The final learning-rate decay started at step {decay['step']} ({decay['seconds'] / 60:.1f} min)."
                  if decay else "The final decay started at the step cap (`--max-steps`).")  # fmt: skip
    sweep_table = (sweep / "needle.md").read_text().split("\n", 1)[1].strip()
    settings = json.loads((sweep / "needle.json").read_text())["settings"]
    sweep_commands = "\n".join(
        f"- `--lengths {' '.join(map(str, run['lengths']))} --samples {' '.join(map(str, run['samples']))} "
        f"--seed {run['seed']} --prefill-chunk {run['prefill_chunk']}` ({run['threads']} thread)"
        for run in settings.get("merged", [settings])
    )
    c = config
    card = f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [minimax-text-01, lightning-attention, mixture-of-experts, passkey-retrieval, tiny]
---

# tiny-passkey: a {log['parameters'] / 1e6:.2f} M-parameter MiniMax-Text-01 that finds a pass key

A checkpoint of this repository's own `MiniMaxText01ForCausalLM`, trained from scratch on CPU for one task: the \
pass-key test (a 5-digit key hidden in a haystack of repeated filler, asked for at the end). It shows the \
released architecture doing long-context retrieval; it knows nothing else.

## Architecture

{c['num_hidden_layers']} layers, `attn_type_list` {c['attn_type_list']}: three lightning-attention layers, one \
softmax layer last. Hidden {c['hidden_size']}, {c['num_attention_heads']} heads of {c['head_dim']} channels \
({c['num_key_value_heads']} key/value heads in the softmax layer), RoPE on {c['rotary_dim']} of them with base \
{c['rope_theta']:.0e} (partial, as released); a mixture of {c['num_local_experts']} experts of width \
{c['intermediate_size']}, top-{c['num_experts_per_tok']}, in every layer. One departure from the release: pre-norm \
blocks (`postnorm` false, residual alphas 1); in a feasibility run the released DeepNorm-style post-norm stayed at \
chance on this task for the minutes it was given. The tokenizer is word level ({c['vocab_size']} ids): one token \
per word, per digit and per `.` / `?`, so one filler repetition is 24 tokens and a key 5.

Load it like a released checkpoint:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("checkpoints/tiny-passkey", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("checkpoints/tiny-passkey", trust_remote_code=True)
```

The remote-code `.py` files are symlinks to the repository's top-level modules (copy them, e.g. with \
`scripts/prepare_hub_repo.py`, before moving the folder elsewhere).

## Training

`python scripts/train_passkey.py --out checkpoints/tiny-passkey` (`make train-passkey` runs it, then the sweeps \
below, then writes this card): seed {args['seed']}, {args['threads']} thread, AdamW (peak learning rate \
{args['lr']}, {args['warmup']} warm-up steps), {args['tokens_per_step']} tokens per step, loss on the answer only \
(the space and the five digits) plus the router's load-balancing loss. Every prompt is the exact test format with \
a fresh key and a uniform random depth. Length curriculum: the next stage starts when the exact-match rate over \
the last {WINDOW} batches reaches {ADVANCE_AT:.0%}; at the last stage, at {FINISH_AT:.0%}, the learning rate \
decays to zero over {args['final_steps']} steps. {decay_line}

| longest prompt (tokens) | from step | at minute |
|---|---|---|
{stages}

{log['total_steps']} steps, {log['total_seconds'] / 60:.1f} minutes in all \
({log.get('machine', 'load not recorded')}). \
The run is deterministic for the seed on one machine and thread count.

## Needle in a haystack (`scripts/needle.py`, greedy, CPU)

{sweep_commands}

{sweep_table}
"""
    (out / "README.md").write_text(card)


def learning_rate(step: int, peak: float, warmup: int, decay_start: int | None, final_steps: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    if decay_start is None:
        return peak
    progress = min(1.0, (step - decay_start) / final_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def machine_load() -> str:
    """The 1/5/15-minute load averages and CPU count, to read the training time against."""
    try:
        loads = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"{os.cpu_count()} CPUs, load average {loads[0]:.1f} / {loads[1]:.1f} / {loads[2]:.1f} at the end"


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_passkey_tokenizer()
    model = load("modeling_minimax_text_01").MiniMaxText01ForCausalLM(
        passkey_config(len(tokenizer), tokenizer.eos_token_id, args.hidden_size, args.intermediate_size)
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    stages = args.stages
    batches = PasskeyBatches(tokenizer, args.seed, args.tokens_per_step, stages)
    parameters = sum(p.numel() for p in model.parameters())
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "parameters": parameters, "stages": [], "steps": []}
    print(f"{parameters:,} parameters; curriculum {stages}", flush=True)

    stage, recent, decay_start, start = 0, [], None, time.perf_counter()
    log["stages"].append({"max_length": stages[0], "step": 0, "seconds": 0.0})
    for step in range(args.max_steps):
        if decay_start is None and step == args.max_steps - args.final_steps:
            decay_start = step  # out of steps: decay anyway
        if decay_start is not None and step >= decay_start + args.final_steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup, decay_start, args.final_steps)
        input_ids, labels = batches.batch(stage)
        out = model(input_ids=input_ids, labels=labels, use_cache=False, output_router_logits=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        recent = (recent + [exact_matches(out.logits.detach(), input_ids).float().mean().item()])[-WINDOW:]
        rate, seconds = sum(recent) / len(recent), time.perf_counter() - start
        if step % args.log_every == 0:
            row = {"step": step, "stage": stage, "length": input_ids.shape[1], "batch": input_ids.shape[0],
                   "loss": round(out.loss.item(), 4), "exact": round(rate, 3), "seconds": round(seconds, 1),
                   "load": round(os.getloadavg()[0], 1)}  # fmt: skip
            log["steps"].append(row)
            print(json.dumps(row), flush=True)
        if len(recent) == WINDOW and decay_start is None:
            if stage + 1 < len(stages) and rate >= ADVANCE_AT:
                stage, recent = stage + 1, []
                log["stages"].append({"max_length": stages[stage], "step": step + 1, "seconds": round(seconds, 1)})
                print(f"step {step + 1}: stage {stage}, prompts up to {stages[stage]} tokens", flush=True)
                save_checkpoint(model, tokenizer, args.out, log, args.copy_code)
            elif stage + 1 == len(stages) and rate >= FINISH_AT:
                decay_start = step + 1
                log["decay_start"] = {"step": step + 1, "seconds": round(seconds, 1)}
                print(f"step {step + 1}: final learning-rate decay over {args.final_steps} steps", flush=True)

    log["total_steps"], log["total_seconds"] = step, round(time.perf_counter() - start, 1)
    log["machine"] = machine_load()
    model.eval()
    save_checkpoint(model, tokenizer, args.out, log, args.copy_code)
    print(f"wrote {args.out} after {log['total_seconds']} s, {step} steps", flush=True)
    return log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the committed run: 1)")
    parser.add_argument("--hidden-size", type=int, default=64, help="model width (4 heads of a quarter each)")
    parser.add_argument("--intermediate-size", type=int, default=64, help="width of each expert")
    parser.add_argument("--stages", type=int, nargs="+", default=STAGES, help="curriculum: longest prompt per stage")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tokens-per-step", type=int, default=2048, help="batch size in tokens")
    parser.add_argument("--max-steps", type=int, default=3000, help="hard cap on the optimizer steps")
    parser.add_argument("--final-steps", type=int, default=200, help="steps of the final learning-rate decay")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--copy-code", action="store_true", help="copy the remote code instead of symlinking it")
    parser.add_argument("--card", type=Path, metavar="SWEEP_DIR",
                        help="only (re)write OUT/README.md from OUT/train_log.json and SWEEP_DIR/needle.md")
    args = parser.parse_args(argv)
    if args.card:
        write_model_card(args.out, args.card)
    else:
        train(args)


if __name__ == "__main__":
    main()
