"""Build a complete, offline MiniMax-01 checkpoint folder with tiny widths and the released layout.

    python scripts/make_tiny_checkpoint.py --model text --out tiny-text [--seed 0]
    python scripts/make_tiny_checkpoint.py --model vl --out tiny-vl [--seed 0]
    python scripts/make_tiny_checkpoint.py --model m1 --out tiny-m1 [--seed 0]
    python scripts/make_tiny_checkpoint.py --model text --out tiny-tp --heads 8 --kv-heads 4   # splits 2 or 4 ways

The folder holds what a real Hub repo holds: `config.json` with the released keys and `auto_map`,
`model.safetensors` with the released key names, the remote-code `.py` files, a small byte-level tokenizer with
the MiniMax special tokens and chat template, and `generation_config.json` (eos = `<end_of_sentence>`). It loads
with `AutoConfig` / `AutoTokenizer` / `AutoModel` / `AutoModelForCausalLM` and `trust_remote_code=True`, offline.
The VL folder adds the processor and image-processor configs (`AutoProcessor`); its CLIP tower and language model
are tiny, but the image geometry is the released one (336-px tiles, patch 14, the 28 pinpoints, 576 thumbnail
tokens), so image token counts equal the released model's. The M1 folder is the text model with MiniMax-M1's
identifiers (`model_type` "minimax_m1", `architectures` ["MiniMaxM1ForCausalLM"], an integer `rope_theta`, no dtype
key), M1's chat template and response template, and M1's recommended sampling in `generation_config.json`.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import GenerationConfig

from minimax_code import REMOTE_CODE_FILES, REPO_ROOT, TEXT_CODE_FILES, load
from tiny_tokenizer import build_tiny_tokenizer, special_token_ids
from cli_args import positive_int

TEXT_AUTO_MAP = {
    "AutoConfig": "configuration_minimax_text_01.MiniMaxText01Config",
    "AutoModel": "modeling_minimax_text_01.MiniMaxText01Model",
    "AutoModelForCausalLM": "modeling_minimax_text_01.MiniMaxText01ForCausalLM",
}


def tiny_text_config(vocab_size: int = 512, **overrides):
    """Released structure at tiny widths: 8 layers (softmax every 4th), 4 heads x 16 with partial RoPE on 8
    channels, GQA 4:2, 4 experts of width 64, top-2, DeepNorm alphas as released."""
    config_class = load("configuration_minimax_text_01").MiniMaxText01Config
    values = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rotary_dim=8,
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        attn_type_list=[1 if (i + 1) % 4 == 0 else 0 for i in range(8)],
        max_position_embeddings=8192,
    )
    values.update(overrides)
    return config_class(**values)


def copy_remote_code(out: Path, names=TEXT_CODE_FILES) -> None:
    for name in names:
        shutil.copy(REPO_ROOT / name, out / name)


# MiniMax-M1's recommended sampling (its README, "Inference Parameters"; tech report 6.1): temperature 1.0,
# top-p 0.95, no top-k (GenerationConfig's default top_k is None, so none is written)
M1_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}


def save_tokenizer_and_generation_config(out: Path, tokenizer, **sampling) -> None:
    tokenizer.save_pretrained(out)
    ids = special_token_ids(tokenizer)
    GenerationConfig(eos_token_id=ids["eos"], pad_token_id=ids["eos"], max_new_tokens=32, **sampling).save_pretrained(
        out
    )


# What a checkpoint folder of any kind holds (weights, configs, tokenizer, chat templates, remote code): cleared
# before a new checkpoint is written over an old one, so a text checkpoint written over a VL one keeps no processor
# config (which would make it look like VL-01) and no stale shards or templates.
CHECKPOINT_FILE_PATTERNS = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer*",
    "special_tokens_map.json", "chat_template.*", "processor_config.json", "preprocessor_config.json",
    *REMOTE_CODE_FILES,
)
CHECKPOINT_FOLDERS = ("additional_chat_templates",)


def prepare_out_folder(out: Path) -> None:
    """Create `out`; over an existing checkpoint, remove its files first. A non-empty folder that is no checkpoint
    (no config.json) is refused rather than mixed with."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise ValueError(f"--out {out} is not empty and holds no checkpoint; pass a new or empty folder.")
        for pattern in CHECKPOINT_FILE_PATTERNS:
            for path in out.glob(pattern):
                path.unlink()
        for name in CHECKPOINT_FOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def build_text_checkpoint(out: Path, seed: int = 0, kind: str = "text", **text_overrides) -> Path:
    """A tiny text model; `kind` "m1" gives it MiniMax-M1's tokenizer, chat format and sampling."""
    prepare_out_folder(out)
    tokenizer = build_tiny_tokenizer(model=kind)
    config = tiny_text_config(
        vocab_size=len(tokenizer), eos_token_id=special_token_ids(tokenizer)["eos"], **text_overrides
    )
    config.auto_map = TEXT_AUTO_MAP
    config.architectures = ["MiniMaxText01ForCausalLM"]
    torch.manual_seed(seed)
    model = load("modeling_minimax_text_01").MiniMaxText01ForCausalLM(config)
    model.save_pretrained(out)
    save_tokenizer_and_generation_config(out, tokenizer, **(M1_SAMPLING if kind == "m1" else {}))
    copy_remote_code(out)
    return out


def build_m1_checkpoint(out: Path, seed: int = 0, **text_overrides) -> Path:
    """The tiny text model under MiniMax-M1's identifiers, as its released config.json writes them."""
    build_text_checkpoint(out, seed, kind="m1", **text_overrides)
    config = json.loads((out / "config.json").read_text())
    config.pop("dtype", None)  # M1 names no dtype: dtype="auto" follows the weights
    config.update(model_type="minimax_m1", architectures=["MiniMaxM1ForCausalLM"], rope_theta=int(config["rope_theta"]))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


VL_AUTO_MAP = {
    "AutoConfig": "configuration_minimax_vl_01.MiniMaxVL01Config",
    "AutoModel": "modeling_minimax_vl_01.MiniMaxVL01Model",
    "AutoModelForCausalLM": "modeling_minimax_vl_01.MiniMaxVL01ForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_minimax_vl_01.MiniMaxVL01ForConditionalGeneration",
}


def tiny_vl_config(image_token_index: int, vocab_size: int = 512, text_overrides=None, **overrides):
    """Tiny widths (CLIP: hidden 32, 2 layers, 2 heads; the tiny text model) with the released image geometry."""
    config_class = load("configuration_minimax_vl_01").MiniMaxVL01Config
    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=14, image_size=336, hidden_act="gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    # shared_intermediate_size [0]: as in the VL release
    text_config = tiny_text_config(vocab_size=vocab_size, shared_intermediate_size=[0], **(text_overrides or {}))
    return config_class(
        text_config=text_config, vision_config=vision_config, image_token_index=image_token_index, **overrides
    )


def build_vl_checkpoint(out: Path, seed: int = 0, **text_overrides) -> Path:
    prepare_out_folder(out)
    tokenizer = build_tiny_tokenizer(with_image_token=True)
    ids = special_token_ids(tokenizer)
    config = tiny_vl_config(image_token_index=ids["image"], vocab_size=len(tokenizer), text_overrides=text_overrides)
    config.text_config.eos_token_id = ids["eos"]
    config.auto_map = VL_AUTO_MAP
    config.architectures = ["MiniMaxVL01ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = load("modeling_minimax_vl_01").MiniMaxVL01ForConditionalGeneration(config)
    model.save_pretrained(out)
    save_tokenizer_and_generation_config(out, tokenizer)
    processor_module = load("processing_minimax_vl_01")
    image_processor = load("image_processing_minimax_vl_01").MiniMaxVL01ImageProcessor()
    processor_module.MiniMaxVL01Processor.register_for_auto_class("AutoProcessor")
    processor_module.MiniMaxVL01Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json too: not every version nests it in the processor's
    copy_remote_code(out, REMOTE_CODE_FILES)
    return out


BUILDERS = {"text": build_text_checkpoint, "vl": build_vl_checkpoint, "m1": build_m1_checkpoint}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(BUILDERS), default="text")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write (created if missing; an old checkpoint there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--heads", type=positive_int, help="attention heads of the text model (default 4)")
    parser.add_argument("--kv-heads", type=positive_int, help="KV heads of its softmax layers (default 2)")
    args = parser.parse_args(argv)
    overrides = {"num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads}
    try:
        path = BUILDERS[args.model](args.out, args.seed, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:  # a bad --out, or heads the config refuses
        parser.error(str(error))
    print(f"wrote a tiny MiniMax-{args.model} checkpoint to {path}")


if __name__ == "__main__":
    main()
