"""Time batch-1 decode steps of a checkpoint, in one process or tensor parallel under torchrun.

    python scripts/tp_decode.py CHECKPOINT --out one.json                                   # one device
    python -m torch.distributed.run --standalone --nproc-per-node N scripts/tp_decode.py CHECKPOINT --out tp.json
    ... scripts/tp_decode.py CHECKPOINT --out int8.json --quantize int8     # torchao int8, also under torchrun

Under torchrun the model is loaded with transformers' engine (`DistributedConfig(tp_size=WORLD_SIZE)`: NCCL on GPUs,
one per rank; gloo on CPU). A `--prompt`-token prefill is followed by `--steps` greedy single-token steps, each timed
after a device sync and the slowest rank's time kept; rank 0 writes {"world_size", "ms_per_token", "steps"} to
`--out`. `--quantize` quantizes while loading: `int8` with torchao (scripts/torchao_config.py), `fp8` with
transformers' FineGrainedFP8Config (a GPU with FP8, one process), both with the recipe's modules kept in high
precision.
`scripts/gpu_check.py` runs it on a 2-layer model at the released widths when the machine has several GPUs.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, FineGrainedFP8Config
from transformers.distributed import DistributedConfig
from transformers.utils import logging as hf_logging
from cli_args import positive_int

from quanto_config import load_config, modules_to_not_convert
from torchao_config import torchao_config


def quantization_config(checkpoint: Path, quantize: str | None):
    if quantize is None:
        return None
    config = load_config(checkpoint)
    if quantize == "fp8":
        return FineGrainedFP8Config(modules_to_not_convert=modules_to_not_convert(config))
    return torchao_config(config, quantize)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", type=positive_int, default=64, help="prefill tokens (default 64)")
    parser.add_argument("--steps", type=positive_int, default=32, help="timed decode steps (default 32)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--quantize", choices=["int8", "fp8"], help="torchao int8 or FineGrainedFP8 weights")
    args = parser.parse_args(argv)

    hf_logging.set_verbosity_error()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs = {"trust_remote_code": True, "dtype": getattr(torch, args.dtype),
              "quantization_config": quantization_config(args.checkpoint, args.quantize)}  # fmt: skip
    if world > 1:
        kwargs["distributed_config"] = DistributedConfig(tp_size=world)
    else:
        kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, **kwargs).eval()
    device = model.device
    ids = torch.randint(3, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    with torch.inference_mode():
        out = model(ids, logits_to_keep=1)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(args.steps + 2):  # the first two steps warm up
            sync()
            start = time.perf_counter()
            out = model(token, past_key_values=cache, logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - start)
    step_ms = torch.tensor(times[2:], dtype=torch.float64) * 1e3
    if world > 1:  # the slowest rank sets the pace
        dist.all_reduce(step_ms, op=dist.ReduceOp.MAX)
    if int(os.environ.get("RANK", "0")) == 0:
        result = {"world_size": world, "ms_per_token": statistics.median(step_ms.tolist()), "steps": args.steps}
        args.out.write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
