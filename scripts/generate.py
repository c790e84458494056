"""Chat with a MiniMax-Text-01 / MiniMax-VL-01 / MiniMax-M1 checkpoint: tokens stream as they are generated.

    python scripts/generate.py CHECKPOINT --prompt "What is lightning attention?" [--system TEXT]
                               [--image photo.jpg ...] [--tools TOOLS.json] [--max-new-tokens 128]
                               [--dtype auto|bfloat16|float16|float32] [--device-map auto|MAP.json]
                               [--int8 | --torchao int8|int8-dynamic|float8]
    torchrun --nproc-per-node 8 scripts/generate.py CHECKPOINT --prompt ...            # tensor parallel, 8 GPUs
    torchrun --nproc-per-node 8 scripts/generate.py CHECKPOINT --torchao int8 ...      # 8-bit weights, 8 x 80 GB
    torchrun --nproc-per-node 8 scripts/generate.py CHECKPOINT --int8 ...              # the same with optimum-quanto
    torchrun --nnodes 2 --nproc-per-node 8 ... scripts/generate.py CHECKPOINT --pp 2 ...  # TP 8 x 2 pipeline stages

CHECKPOINT is a local folder (weights, config, tokenizer or processor, remote code). It is loaded with the Auto
classes and `trust_remote_code=True`; a folder with a processor config (VL-01) is read with `AutoProcessor`, which
takes the images, otherwise with `AutoTokenizer`. The prompt goes through the checkpoint's chat template (one
`<image>` item per --image, before the text), with the tools of `--tools` (a JSON list of tool definitions, as
`apply_chat_template(tools=...)` takes them). When the tokenizer has a `response_template` (the tiny checkpoints,
MiniMax-M1 repositories from scripts/prepare_hub_repo.py), the reply is parsed as it streams: the model's thinking
(M1) is shown apart from its answer, and each tool call is printed as `tool call: NAME {arguments}`.
`--device-map` takes "auto" or a JSON file written by
`scripts/device_map.py --json`; without it the model goes to the first GPU, or the CPU. `--int8` quantizes the
experts and attention projections with optimum-quanto (`scripts/quanto_config.py`); `--torchao TYPE` does the same
with torchao (`scripts/torchao_config.py`); both quantize while loading, in one process or under torchrun. Status
lines go to stderr, the conversation to stdout.

Under torchrun (WORLD_SIZE > 1) the model is loaded sharded by transformers' distributed engine: tensor parallel
over WORLD_SIZE / --pp ranks (`DistributedConfig(tp_size=...)`), times --pp pipeline stages (text only); NCCL on GPUs, gloo on CPU.
Every rank runs the same generation; only rank 0 prints. `--device-map` does not combine with it; 8-bit weights under
torchrun come from `--torchao int8` or `--int8` on the full-precision checkpoint (each rank quantizes its slice).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from jinja2 import TemplateError
from PIL import Image, UnidentifiedImageError
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, TextStreamer
from transformers.distributed import DistributedConfig
from transformers.utils import logging as hf_logging

from quanto_config import quanto_config
from cli_args import positive_int
from minimax_code import load
from torchao_config import WEIGHT_TYPES as TORCHAO_TYPES
from torchao_config import torchao_config

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = ("auto", "bfloat16", "float16", "float32")


def read_images(paths: list[str]) -> list[Image.Image]:
    """Decode every image up front, so a bad path fails before the model is loaded. The images stay as decoded
    (mode, EXIF orientation): the processor turns them upright and converts them to RGB."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (OSError, UnidentifiedImageError) as error:  # missing, unreadable, not an image
            raise ValueError(f"Cannot read image {path}: {error}. Pass an existing PNG/JPEG/... file.") from None
    return images


def read_device_map(value: str | None):
    """None, "auto", or the {module: device} dict in a JSON file."""
    if value in (None, "auto"):
        return value
    try:
        device_map = json.loads(Path(value).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--device-map {value}: not 'auto' nor a readable JSON file ({error}).") from None
    if not isinstance(device_map, dict):
        raise ValueError(f"--device-map {value} must hold a JSON object {{module name: device}}.")
    load("loading_checks").check_device_map(device_map)  # a GPU this machine lacks, before anything is loaded
    return device_map


def read_tools(path: str | None) -> list[dict] | None:
    """The tool definitions of a JSON file: a list of objects ({"type": "function", "function": {...}} or bare
    {"name", "description", "parameters"})."""
    if path is None:
        return None
    try:
        tools = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--tools {path}: not a readable JSON file ({error}).") from None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise ValueError(f"--tools {path} must hold a JSON list of tool definitions (objects), e.g. "
                         '[{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}].')
    return tools


def has_processor(checkpoint: Path) -> bool:
    return any((checkpoint / name).is_file() for name in PROCESSOR_FILES)


def load_reader(checkpoint: Path, config):
    """The processor (VL-01) or tokenizer, checked against the model config, before any weight is read."""
    if not any((checkpoint / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{checkpoint} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy them from the "
                         "checkpoint's original repository.")
    reader_class = AutoProcessor if has_processor(checkpoint) else AutoTokenizer
    try:
        reader = reader_class.from_pretrained(checkpoint, trust_remote_code=True)
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"Cannot load the {reader_class.__name__.removeprefix('Auto').lower()} of {checkpoint} "
                         f"({type(error).__name__}: {error}). Check its tokenizer files.") from None
    image_processor = getattr(reader, "image_processor", None)
    if image_processor is not None:
        processor_geometry = (image_processor.tile_size, image_processor.image_grid_pinpoints)
        if processor_geometry != (config.tile_size, config.image_grid_pinpoints):
            raise ValueError(
                f"{checkpoint}: the image processor's tile size / image_grid_pinpoints {processor_geometry} differ "
                f"from config.json's {(config.tile_size, config.image_grid_pinpoints)}; images would be tiled "
                "differently from what the model expects. Make preprocessor_config.json agree with config.json."
            )
    return reader


def distributed_layout(world_size: int, pp_size: int = 1) -> DistributedConfig | None:
    """Under torchrun: tensor parallel over world_size / pp_size ranks x pp_size pipeline stages; else None."""
    if world_size == 1:
        return None
    if pp_size < 1 or world_size % pp_size:
        raise ValueError(f"--pp {pp_size} must divide the number of processes ({world_size}).")
    return DistributedConfig(tp_size=world_size // pp_size, pp_size=pp_size)


def load_model(checkpoint: Path, dtype: str = "auto", device_map=None, int8: bool = False, distributed_config=None,
               torchao: str | None = None):
    """(model, processor or tokenizer), both from the Auto classes with the checkpoint's remote code. With a
    `distributed_config` (under torchrun) transformers shards the model and places it on this rank's device.
    `int8`: optimum-quanto int8; `torchao`: a torchao weight type, quantized while loading."""
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    reader = load_reader(checkpoint, config)
    kwargs = {"dtype": dtype, "trust_remote_code": True}
    if int8:
        kwargs["quantization_config"] = quanto_config(config)
    elif torchao is not None:
        kwargs["quantization_config"] = torchao_config(config, torchao)
    if distributed_config is not None:
        kwargs["distributed_config"] = distributed_config
    elif device_map is None:
        device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map, **kwargs)
    return model.eval(), reader


def chat_messages(prompt: str, n_images: int = 0, system: str | None = None) -> list[dict]:
    """The conversation as list-of-items content: an image item per image, then the text."""
    user = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return messages + [{"role": "user", "content": user}]


def build_inputs(reader, messages: list[dict], images: list[Image.Image], tools: list[dict] | None = None):
    """Token ids (and pixel values) for the chat prompt, ending with the assistant's generation prompt."""
    if not hasattr(reader, "image_processor"):  # a tokenizer
        return reader.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)  # fmt: skip
    text = reader.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return reader(text=text, images=images or None, return_tensors="pt")


class ParsedReplyPrinter(TextStreamer):
    """Streams the reply through the tokenizer's `response_template` parser: the thinking and the answer each under
    its own heading, every tool call when it closes, and a note on stderr for each malformed tool-call line the
    parser skipped. `message` is the parsed reply once the stream has ended."""

    HEADINGS = {"reasoning_content": "thinking: ", "content": "assistant: "}

    def __init__(self, tokenizer, prompt: str, tools: list[dict] | None = None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)  # the parser reads the end token
        self.parser = tokenizer.get_response_parser(prefix=prompt, tools=tools)
        self.section, self.skipped, self.message = None, "", None
        self.trailing = ""  # whitespace at the end of the section so far: printed only if more text follows
        self.show(self.parser.initial_events)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.show(self.parser.feed(text) if text else [])
        if stream_end:
            self.message, events = self.parser.finalize()
            self.show(events)
            if self.section is None:  # nothing was said: still show the (empty) answer
                print(self.HEADINGS["content"], end="")
            print(flush=True)

    def show(self, events: list[dict]) -> None:
        for event in events:
            field, kind = event["field"], event["type"]
            if kind == "region_chunk" and field in self.HEADINGS:
                self.write(field, event["text"])
            elif kind == "region_chunk" and field == "skipped_tool_call_line":
                self.skipped += event["text"]
            elif kind == "region_close" and field == "tool_calls":
                function, newline = event["value"]["function"], "\n" if self.section else ""
                arguments = json.dumps(function["arguments"], ensure_ascii=False)
                print(f"{newline}tool call: {function['name']} {arguments}", end="", flush=True)
                self.section = "tool_calls"
            elif kind == "region_close" and field == "skipped_tool_call_line" and self.skipped.strip():
                status(f"skipped a malformed tool-call line: {self.skipped.strip()!r}")
                self.skipped = ""

    def write(self, field: str, text: str) -> None:
        """Print a chunk of a section, without the newlines around <think> and </think>."""
        if field != self.section:
            text = text.lstrip()
            if not text:
                return
            print(("\n" if self.section else "") + self.HEADINGS[field], end="")
            self.section, self.trailing = field, ""
        body = text.rstrip()
        if body:
            print(self.trailing + body, end="", flush=True)
            self.trailing = text[len(body) :]
        else:
            self.trailing += text


def reply_streamer(tokenizer, inputs, tools: list[dict] | None = None) -> TextStreamer:
    """A parsing printer when the tokenizer has a response template, else the raw text as it comes."""
    if getattr(tokenizer, "response_template", None) is None:
        print("assistant: ", end="", flush=True)
        return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    prompt = tokenizer.decode(inputs["input_ids"][0])
    return ParsedReplyPrinter(tokenizer, prompt, tools)


def generate(model, reader, inputs, max_new_tokens: int, tools: list[dict] | None = None) -> tuple[int, float]:
    """Stream the answer to stdout; returns (new tokens, seconds)."""
    tokenizer = getattr(reader, "tokenizer", reader)
    streamer = reply_streamer(tokenizer, inputs, tools)
    inputs = inputs.to(model.device)
    start = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer)  # runs under no_grad
    seconds = time.perf_counter() - start
    return output.shape[-1] - inputs["input_ids"].shape[-1], seconds


def status(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"[{text}]", file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="local checkpoint folder")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", help="an optional system message")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeat for several; VL-01 only)")
    parser.add_argument("--tools", help="a JSON file with a list of tool definitions for the chat template")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128,
                        help="most tokens to generate (default 128)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weight dtype (default: the checkpoint's)")
    parser.add_argument("--device-map", help='"auto" or a JSON file from scripts/device_map.py --json')
    quantize = parser.add_mutually_exclusive_group()
    quantize.add_argument("--int8", action="store_true", help="int8 weights with optimum-quanto, quantized while "
                          "loading; also under torchrun (tensor parallel)")  # fmt: skip
    quantize.add_argument("--torchao", choices=TORCHAO_TYPES, help="8-bit weights with torchao, quantized while "
                          "loading; also under torchrun (tensor parallel)")  # fmt: skip
    parser.add_argument("--pp", type=positive_int, default=1, help="pipeline stages under torchrun (default 1: tensor "
                        "parallel over all processes)")  # fmt: skip
    args = parser.parse_args(argv)

    if not args.checkpoint.exists():
        parser.error(f"{args.checkpoint} does not exist. Pass the path of a local checkpoint folder.")
    if not (args.checkpoint / "config.json").is_file():
        parser.error(f"{args.checkpoint} is not a checkpoint folder (no config.json in it).")
    if args.image and not has_processor(args.checkpoint):
        parser.error(f"{args.checkpoint} has no processor config, so it cannot read images; --image needs VL-01.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and args.device_map:
        parser.error("--device-map does not combine with torchrun, which loads the model tensor parallel; run it in a "
                     "single process; for 8-bit weights under torchrun use --torchao int8 or --int8.")  # fmt: skip
    try:
        images = read_images(args.image)
        tools = read_tools(args.tools)
        device_map = read_device_map(args.device_map)
        distributed_config = distributed_layout(world_size, args.pp)
    except ValueError as error:
        parser.error(str(error))
    if os.environ.get("RANK", "0") != "0":  # every rank generates, rank 0 prints
        sys.stdout = open(os.devnull, "w")

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    try:
        model, reader = load_model(args.checkpoint, args.dtype, device_map, args.int8, distributed_config, args.torchao)
    except ValueError as error:
        parser.error(str(error))
    n_params = sum(p.numel() for p in model.parameters())
    quantized = ", int8" if args.int8 else f", torchao {args.torchao}" if args.torchao else ""
    dtype = str(model.dtype).removeprefix("torch.") + quantized
    where = str(model.device)
    if distributed_config is not None:  # parameters: those of this rank's pipeline stage, at full size
        where += f" in each of {world_size} processes (tensor parallel {distributed_config.tp_size} x {args.pp} stages)"
    status(f"{args.checkpoint.name}: {type(model).__name__}, {n_params / 1e6:,.1f} M parameters, {dtype} on "
           f"{where}, loaded in {time.perf_counter() - start:.1f} s")

    try:
        inputs = build_inputs(reader, chat_messages(args.prompt, len(images), args.system), images, tools)
    except TemplateError as error:  # the chat template refused the conversation or the tools
        parser.error(f"the chat template refused the input: {error}")
    if args.system:
        print(f"system: {args.system}")
    if tools:
        print(f"tools: {', '.join(str(tool.get('function', tool).get('name')) for tool in tools)}")
    print(f"user: {''.join(f'<image {Path(p).name}> ' for p in args.image)}{args.prompt}")
    n_tokens, seconds = generate(model, reader, inputs, args.max_new_tokens, tools)
    status(f"{n_tokens} new tokens in {seconds:.2f} s: {n_tokens / seconds:.1f} tokens/s "
           f"(prompt {inputs['input_ids'].shape[-1]} tokens)")


if __name__ == "__main__":
    main()
