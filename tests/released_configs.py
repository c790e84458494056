"""The released MiniMax-Text-01 and MiniMax-VL-01 `config.json` contents, written out as values (spec sections 1
and 4), so the tests that need a released configuration run in any clone. Support module, not a test module.

Each function returns a fresh dict (the tests edit their copies); `write_config` saves one as a config.json for the
scripts that take a path.
"""

import json
from pathlib import Path

TEXT_LAYERS = 80
SOFTMAX_EVERY = 8  # layers 7, 15, ..., 79 are softmax attention (1); the other 70 are lightning attention (0)
RESIDUAL_ALPHA = 3.5565588200778455  # (2 * 80 layers) ** 0.25, DeepNet's residual scale, as the release writes it

# The VL image processor's tile grids, [height, width] in pixels: tiles of 336, 1 to 6 a side and at most 18 in all,
# in the release's order (by height, then width): 28 grids.
RELEASED_PINPOINTS = [[336 * rows, 336 * cols] for rows in range(1, 7) for cols in range(1, 7) if rows * cols <= 18]


def released_text_values() -> dict:
    """The text model's values, shared by Text-01 and the VL-01 text config (which differ only where noted)."""
    return {
        "model_type": "minimax_text_01",
        "vocab_size": 200064,
        "hidden_size": 6144,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rotary_dim": 64,
        "rope_theta": 10000000.0,
        "intermediate_size": 9216,
        "num_local_experts": 32,
        "num_experts_per_tok": 2,
        "attn_type_list": [int(i % SOFTMAX_EVERY == SOFTMAX_EVERY - 1) for i in range(TEXT_LAYERS)],
        "postnorm": True,
        "layernorm_full_attention_alpha": RESIDUAL_ALPHA,
        "layernorm_full_attention_beta": 1.0,
        "layernorm_linear_attention_alpha": RESIDUAL_ALPHA,
        "layernorm_linear_attention_beta": 1.0,
        "layernorm_mlp_alpha": RESIDUAL_ALPHA,
        "layernorm_mlp_beta": 1.0,
        "shared_intermediate_size": 0,
        "shared_moe_mode": "sigmoid",
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "max_position_embeddings": 10240000,
        "bos_token_id": None,
        "eos_token_id": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "initializer_range": 0.02,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "output_router_logits": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "use_cache": True,
    }


def released_text_config() -> dict:
    """MiniMax-Text-01's config.json."""
    values = released_text_values()
    return {
        "architectures": ["MiniMaxText01ForCausalLM"],
        "model_type": values.pop("model_type"),
        "auto_map": {
            "AutoConfig": "configuration_minimax_text_01.MiniMaxText01Config",
            "AutoModelForCausalLM": "modeling_minimax_text_01.MiniMaxText01ForCausalLM",
        },
        **values,
    }


def released_vl_config() -> dict:
    """MiniMax-VL-01's config.json: a CLIP ViT-L/14-336 tower, a projector and the text model."""
    text = released_text_values()
    text.update(shared_intermediate_size=[0], max_position_embeddings=8192)  # as the VL release writes them
    return {
        "architectures": ["MiniMaxVL01ForConditionalGeneration"],
        "model_type": "minimax_vl_01",
        "auto_map": {
            "AutoConfig": "configuration_minimax_vl_01.MiniMaxVL01Config",
            "AutoModelForCausalLM": "modeling_minimax_vl_01.MiniMaxVL01ForConditionalGeneration",
        },
        "image_token_index": 200025,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "image_grid_pinpoints": [list(p) for p in RELEASED_PINPOINTS],
        "image_seq_length": 576,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 336,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-05,
            "projection_dim": 6144,
            "vocab_size": 32000,
            "num_channels": 3,
        },
        "text_config": text,
    }


def write_config(values: dict, folder: Path) -> Path:
    """values saved as folder/config.json; returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(values, indent=2))
    return path
