"""The torchao 8-bit configuration for MiniMax-Text-01 / M1 / VL-01, also under tensor parallel.

    python scripts/torchao_config.py PATH [--weights int8|int8-dynamic|float8] [--json]

    from torchao_config import torchao_config
    # under torchrun --nproc-per-node 8: each rank reads its slice of every bf16 weight and quantizes it while loading
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16",
                                                 distributed_config=DistributedConfig(tp_size=8),
                                                 quantization_config=torchao_config(path))

The same modules as in the quanto recipe (scripts/quanto_config.py) stay in the checkpoint dtype: the router gates,
the shared-expert `coefficient` gates, `embed_tokens`, `lm_head` and VL-01's vision side; every other nn.Linear
(experts, attention projections) is quantized. Weight types:

- `int8`: torchao `Int8WeightOnlyConfig`, per-channel int8 weights, activations in bf16 (runs on CPU and GPU);
- `int8-dynamic`: `Int8DynamicActivationInt8WeightConfig`, activations quantized per token at run time as well;
- `float8`: `Float8WeightOnlyConfig` (float8 e4m3 weights).

Tensor parallel needs a full-precision checkpoint: a checkpoint saved already quantized cannot be split.
"""

import json

from transformers import TorchAoConfig

from quanto_config import config_of, modules_to_not_convert, print_recipe, recipe_cli


# --weights name -> the name of its torchao.quantization config class (imported when used: torchao is needed only then)
TORCHAO_WEIGHT_CONFIGS = {
    "int8": "Int8WeightOnlyConfig",
    "int8-dynamic": "Int8DynamicActivationInt8WeightConfig",
    "float8": "Float8WeightOnlyConfig",
}
WEIGHT_TYPES = tuple(TORCHAO_WEIGHT_CONFIGS)


def torchao_config(path_or_config, weights: str = "int8") -> TorchAoConfig:
    """The transformers TorchAoConfig for a model folder, a config.json path or a config object."""
    if weights not in WEIGHT_TYPES:
        raise ValueError(f"Unknown torchao weight type {weights!r}; use one of {', '.join(WEIGHT_TYPES)}.")
    import torchao.quantization

    weight_config = getattr(torchao.quantization, TORCHAO_WEIGHT_CONFIGS[weights])()
    return TorchAoConfig(weight_config, modules_to_not_convert=modules_to_not_convert(config_of(path_or_config)))


def main(argv=None):
    args, config = recipe_cli(argv, __doc__, WEIGHT_TYPES, "torchao")
    quantization = torchao_config(config, args.weights)
    if args.json:
        print(json.dumps(quantization.to_dict(), indent=2))
        return
    print_recipe(config, f"TorchAoConfig({type(quantization.quant_type).__name__}()")


if __name__ == "__main__":
    main()
