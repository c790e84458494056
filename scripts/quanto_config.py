"""The int8 optimum-quanto configuration for MiniMax-Text-01 / MiniMax-M1 / MiniMax-VL-01.

    python scripts/quanto_config.py PATH [--weights int8] [--json]

PATH is a model folder or its `config.json`. Every expert (`w1`, `w3`, `w2`) and attention `nn.Linear` is
quantized; kept in the checkpoint dtype are the router gates (`block_sparse_moe.gate`), the shared-expert
`coefficient` gates, `embed_tokens` and `lm_head` (the released int8 recipe), and for VL-01 the whole vision side
(`vision_tower`, `multi_modal_projector`, `image_newline`). Without `--json` the skip list is summarised.

    from quanto_config import quanto_config
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16",
                                                 quantization_config=quanto_config(path), device_map=...)
    # or under torchrun, each rank quantizing its slice of every weight while loading (as scripts/torchao_config.py):
    #   ..., quantization_config=quanto_config(path), distributed_config=DistributedConfig(tp_size=8))

The skip entries are full module names (`model.layers.7.block_sparse_moe.gate`). transformers matches them against
module names as a prefix ending at a module boundary or as a suffix (5.24), or as a plain regex prefix or suffix
(5.17): with full names both versions skip exactly these modules. `load_config` here is shared by the other scripts.
"""

import argparse
import json
from pathlib import Path

from transformers import PreTrainedConfig, QuantoConfig

from minimax_code import load

# MiniMax-Text-01 (older released files say "MiniMaxText01"), MiniMax-M1 and transformers' native `minimax`
TEXT_MODEL_TYPES = ("minimax_text_01", *load("configuration_minimax_text_01").OTHER_MODEL_TYPES)
VL_MODEL_TYPE = "minimax_vl_01"
# The vision side of VL-01: kept unquantized, and placed on GPU 0 by device_map.py.
VISION_MODULES = ["vision_tower", "multi_modal_projector", "image_newline"]
WEIGHT_TYPES = ("int8", "float8", "int4", "int2")  # what transformers' QuantoConfig accepts; int8 is the tested one


def load_config(path) -> PreTrainedConfig:
    """A model folder or a `config.json` -> MiniMaxText01Config or MiniMaxVL01Config, built with this repo's code."""
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} is neither a model folder with a config.json nor a config.json file. "
            "Pass the checkpoint folder or the path of its config.json."
        )
    try:
        values = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not a JSON config file ({error}). Pass a model's config.json.") from None
    model_type = values.get("model_type") if isinstance(values, dict) else None
    if model_type in TEXT_MODEL_TYPES:
        return load("configuration_minimax_text_01").MiniMaxText01Config.from_dict(values)
    if model_type == VL_MODEL_TYPE:
        return load("configuration_minimax_vl_01").MiniMaxVL01Config.from_dict(values)
    raise ValueError(
        f"{config_file} has model_type {model_type!r}; these scripts handle MiniMax-01 models only "
        f"(model_type {', '.join(TEXT_MODEL_TYPES)} or {VL_MODEL_TYPE})."
    )


def is_vl(config) -> bool:
    return getattr(config, "text_config", None) is not None


def text_part(config):
    """(text config, module-name prefix of the language model): the VL model nests it under `language_model.`."""
    return (config.text_config, "language_model.") if is_vl(config) else (config, "")


def modules_to_not_convert(config) -> list[str]:
    """Full names of the modules quanto must leave unquantized (see the module docstring)."""
    text_config, prefix = text_part(config)
    names = [f"{prefix}lm_head", f"{prefix}model.embed_tokens"]
    for i in range(text_config.num_hidden_layers):
        # `coefficient` exists only with a shared expert; the released recipe lists it for every layer regardless.
        names += [f"{prefix}model.layers.{i}.coefficient", f"{prefix}model.layers.{i}.block_sparse_moe.gate"]
    return (VISION_MODULES if is_vl(config) else []) + names


def quanto_config_kwargs(config, weights: str = "int8") -> dict:
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"Unknown quanto weight type {weights!r}; use one of {', '.join(WEIGHT_TYPES)}.")
    return {"weights": weights, "modules_to_not_convert": modules_to_not_convert(config)}


def config_of(path_or_config) -> PreTrainedConfig:
    """A config object as it is; a model folder or a config.json path loaded (`load_config`)."""
    return path_or_config if isinstance(path_or_config, PreTrainedConfig) else load_config(path_or_config)


def quanto_config(path_or_config, weights: str = "int8") -> QuantoConfig:
    """The transformers QuantoConfig for a model folder, a config.json path or a config object."""
    return QuantoConfig(**quanto_config_kwargs(config_of(path_or_config), weights))


def recipe_cli(argv, description: str, weight_types: tuple[str, ...], library: str):
    """(arguments, model config) of a recipe command line: PATH [--weights TYPE] [--json] (also torchao_config.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="model folder or config.json")
    parser.add_argument("--weights", choices=weight_types, default=weight_types[0],
                        help=f"{library} weight type (default {weight_types[0]})")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the configuration as JSON")
    args = parser.parse_args(argv)
    try:
        return args, load_config(args.path)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))


def print_recipe(config, head: str) -> None:
    """`head` (the configuration) and the modules kept unquantized, summarised."""
    skipped, layers = modules_to_not_convert(config), text_part(config)[0].num_hidden_layers
    print(f"{head}, modules_to_not_convert=[{len(skipped)} names])")
    print(f"  kept unquantized: {', '.join(skipped[:-2 * layers])}, and per layer (x{layers}): coefficient, "
          "block_sparse_moe.gate")
    print("  quantized: every other nn.Linear (experts w1/w3/w2, attention projections)")


def main(argv=None):
    args, config = recipe_cli(argv, __doc__, WEIGHT_TYPES, "quanto")
    kwargs = quanto_config_kwargs(config, args.weights)
    if args.json:
        print(json.dumps(kwargs, indent=2))
        return
    print_recipe(config, f"QuantoConfig(weights={args.weights!r}")


if __name__ == "__main__":
    main()
