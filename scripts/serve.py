"""Serve a MiniMax-01 checkpoint (Text-01, M1, VL-01) on transformers' own OpenAI-compatible server.

    python scripts/serve.py CHECKPOINT [--port 8000] [any other `transformers serve` option]

CHECKPOINT is a folder or a Hub repo with this repository's remote code (`auto_map` in its config.json). The server
is `transformers serve CHECKPOINT --trust-remote-code ...` (install it with `pip install "transformers[serving]"`),
with one addition: transformers' model loader looks the model class up by name among its own classes
(`getattr(transformers, config.architectures[0])`), and tells a vision-language model from a text model by finding
that name in its Auto-class tables, neither of which knows a remote-code class. This script registers the
checkpoint's own class in both before the server starts, so `/v1/chat/completions` serves plain and streamed
(SSE) answers, images given as URLs or data URLs to VL-01, and tool calls parsed by the tokenizer's
`response_template` when the tokenizer has one.

Continuous batching (`--continuous-batching`) is refused: transformers' paged cache has no layer type for the
lightning (linear-attention) layers, and fails with `Invalid layer type: linear_attention`, as it does for its own
native `minimax` model.
"""

import sys

from transformers import AutoConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.models.auto import modeling_auto

USAGE = "usage: python scripts/serve.py CHECKPOINT [--port N] [any other `transformers serve` option]"
# The Auto class a checkpoint's model loads with (the first its auto_map names), and the table of architecture names
# in which transformers' server looks up whether a model takes images
SERVED_AS = [
    ("AutoModelForImageTextToText", modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES),
    ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
]


def split_command_line(argv: list[str]) -> tuple[str, list[str]]:
    """argv (without the program) -> (CHECKPOINT, the `transformers serve` options)."""
    if not argv or argv[0].startswith("-"):
        sys.exit(f"{USAGE}\n(`transformers serve --help` lists the options)")
    checkpoint, options = argv[0], argv[1:]
    if "--continuous-batching" in options:
        sys.exit(
            "--continuous-batching: transformers' continuous batching keeps every layer's K/V in a paged cache, "
            "which has no layer type for MiniMax's lightning (linear-attention) layers (it fails with `Invalid "
            "layer type: linear_attention`, for transformers' native `minimax` too). Serve without it: requests "
            "then run one at a time through `generate()`."
        )
    return checkpoint, options


def register_for_serving(checkpoint: str) -> None:
    """Make transformers' server find CHECKPOINT's remote-code model class."""
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    auto_map = getattr(config, "auto_map", None) or {}
    served = [(auto_class, names) for auto_class, names in SERVED_AS if auto_class in auto_map]
    if not served:
        raise SystemExit(
            f"{checkpoint}: its config.json has no auto_map entry for AutoModelForCausalLM, so it does not load with "
            "this repository's remote code. A checkpoint in transformers' native `minimax` format is served by plain "
            "`transformers serve`; otherwise prepare the folder with scripts/prepare_hub_repo.py."
        )
    auto_class, architecture_names = served[0]
    model_class = get_class_from_dynamic_module(auto_map[auto_class], checkpoint)
    # The name config.json gives, which may differ from the class's: M1 names MiniMaxM1ForCausalLM, served by the
    # Text-01 class. The server's loader runs getattr(transformers, architecture), on the module in sys.modules:
    # importing transformers.processing_utils (the model code does) runs transformers' __init__ again, replacing it.
    architecture = (config.architectures or [model_class.__name__])[0]
    setattr(sys.modules["transformers"], architecture, model_class)
    architecture_names[config.model_type] = architecture


def main(argv: list[str]) -> None:
    from transformers.cli.transformers import app

    checkpoint, options = split_command_line(argv)
    register_for_serving(checkpoint)
    app(["serve", checkpoint, "--trust-remote-code", *options], prog_name="serve.py")


if __name__ == "__main__":
    main(sys.argv[1:])
elif __name__ == "__mp_main__":
    # Recent transformers (5.25) load the model in a process started with "spawn", which runs this file again under
    # this name, with the same command line: the class must be registered there too.
    register_for_serving(split_command_line(sys.argv[1:])[0])
