"""Assemble a Hub-ready model repository from a MiniMax-Text-01 / MiniMax-M1 / MiniMax-VL-01 checkpoint folder.

    python scripts/prepare_hub_repo.py CHECKPOINT OUT [--base-model REPO_ID] [--push REPO_ID [--private]]

OUT (new or empty) receives: the safetensors weights (and their index), `generation_config.json`, the tokenizer and
processor files, the remote-code `.py` files of this repository (not the checkpoint's copies), `config.json` with
the canonical `model_type` and a validated `auto_map`, the processor configs with their `auto_map` (VL-01), and a
model card `README.md` saying what changed. Every `auto_map` entry is checked to name a class defined in a file of
OUT. The checkpoint's own `.py` files (MiniMax-M1 ships Text-01's transformers-4.45 code renamed
`*_minimax_m1.py`, which does not import on transformers 5) are not copied. Also handled:
- MiniMax-M1 (`model_type` "minimax_m1", `MiniMaxM1ForCausalLM`, or the M1-40k variant naming Text-01 classes in
  M1-named files): config.json gets this repository's class names; a `generation_config.json` with M1's
  recommended sampling (temperature 1.0, top-p 0.95) is written when the checkpoint has none.
- transformers' native layout (`-hf` repositories, or a model saved by `MiniMaxForCausalLM`): config.json is
  written in the released spelling (checkpoint_layouts.py); the weights are copied unchanged (fused expert
  tensors are split and the native decay buffers ignored when loading). Before anything
is written, the weights are checked from the safetensors headers alone: every file complete, every shard the index
names present and holding its tensors, and the tensors exactly those (and of the shapes) config.json describes.
`--push` uploads OUT with huggingface_hub's `upload_folder` (the token comes from `hf auth login` or HF_TOKEN), only
after all checks passed.
"""

import argparse
import ast
import json
import math
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from transformers import GenerationConfig

from chat_format import RESPONSE_TEMPLATES, named_chat_templates
from device_map import build_meta_model
from generate import PROCESSOR_FILES
from make_tiny_checkpoint import M1_SAMPLING, TEXT_AUTO_MAP, VL_AUTO_MAP, copy_remote_code
from minimax_code import REMOTE_CODE_FILES, TEXT_CODE_FILES, load
from quanto_config import is_vl, load_config, text_part

TOKENIZER_FILES = [
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "chat_template.json",
]  # fmt: skip
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_minimax_vl_01.MiniMaxVL01Processor"}
IMAGE_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "image_processing_minimax_vl_01.MiniMaxVL01ImageProcessor",
    **PROCESSOR_AUTO_MAP,
}
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # transformers' folder of named chat templates
TRANSFORMERS_RANGE = ">=5.17,<6"
INDEX_FILE = "model.safetensors.index.json"
# bytes per element of the safetensors dtypes a checkpoint may hold
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# The released repositories: the default `base_model`, and their licence (MiniMax's own model licence, not an SPDX
# one: on the Hub that is `license: other` with a name and a link). A checkpoint's own README.md metadata wins.
BASE_MODELS = {"text": "MiniMaxAI/MiniMax-Text-01", "vl": "MiniMaxAI/MiniMax-VL-01", "m1": "MiniMaxAI/MiniMax-M1-80k"}
NAMES = {"text": "MiniMax-Text-01", "vl": "MiniMax-VL-01", "m1": "MiniMax-M1"}
M1_MODEL_TYPES = ("minimax_m1", "MiniMaxM1")
RELEASED_LICENSE = {
    "license": "other",
    "license_name": "minimax-model-license",
    "license_link": "https://github.com/MiniMax-AI/MiniMax-01/blob/main/LICENSE-MODEL",
}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")


def check_paths(checkpoint: Path, out: Path) -> None:
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (no config.json). Pass the model folder.")
    if out.resolve() == checkpoint.resolve():
        raise ValueError("OUT must differ from CHECKPOINT: the repository is assembled in a new folder.")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass a new or empty folder as OUT.")


def safetensors_header(path: Path) -> dict:
    """{tensor name: {dtype, shape, data_offsets}} of a safetensors file, checked to be complete: the header parses
    and the file is exactly as long as its tensors need."""
    size = path.stat().st_size
    damaged = f"{path.name} is truncated or damaged"
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if size < 8 or length > size - 8:
            raise ValueError(f"{damaged}: {size} bytes, too short for its header. Download or convert it again.")
        try:
            header = json.loads(file.read(length))
            header.pop("__metadata__", None)
            spans = {name: (t["dtype"], t["shape"], *t["data_offsets"]) for name, t in header.items()}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{damaged}: its header is not a valid safetensors header. Download or convert it "
                             "again.") from None
    for name, (dtype, shape, start, end) in spans.items():
        element = DTYPE_BYTES.get(dtype)
        if element is not None and end - start != element * math.prod(shape):
            raise ValueError(f"{damaged}: tensor {name} {dtype} {shape} has {end - start} bytes.")
    needed = 8 + length + max((end for *_, end in spans.values()), default=0)
    if needed != size:
        raise ValueError(f"{damaged}: its header describes {needed} bytes but the file has {size}. Download or "
                         "convert it again.")
    return header


def check_weights(checkpoint: Path, config) -> None:
    """Before anything is assembled: the safetensors files are complete, the index names existing shards that hold
    its tensors, and the tensors are exactly those the model of `config` needs, with its shapes."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no *.safetensors weights; convert them to safetensors first.")
    headers = {path.name: safetensors_header(path) for path in files}
    if (checkpoint / INDEX_FILE).is_file():
        weight_map = read_json(checkpoint / INDEX_FILE).get("weight_map") or {}
        absent = sorted(set(weight_map.values()) - set(headers))
        if absent:
            raise FileNotFoundError(f"{INDEX_FILE} names shards that are not in {checkpoint}: {', '.join(absent)}. "
                                    "Download them, or rebuild the index.")
        misplaced = sorted(key for key, shard in weight_map.items() if key not in headers[shard])
        if misplaced:
            raise ValueError(f"{INDEX_FILE} places tensors in shards that do not hold them: {misplaced[:5]}. "
                             "Rebuild the index from the shards.")
        unindexed = sorted(set(headers) - set(weight_map.values()))
        if unindexed:
            raise ValueError(f"{', '.join(unindexed)} not named in {INDEX_FILE}: transformers would not load them. "
                             "Remove stray files, or rebuild the index.")
    elif len(files) > 1:
        raise FileNotFoundError(f"{checkpoint} holds {len(files)} safetensors files but no {INDEX_FILE}; add the "
                                "index that maps every tensor to its shard.")
    # in the released names: transformers' native layout (fused experts, decay tables) is converted when loading
    on_disk = {name: torch.empty(tensor["shape"], device="meta") for header in headers.values()
               for name, tensor in header.items()}
    released_names = load("checkpoint_layouts").released_state_dict_from_native(on_disk)
    found = {name: tuple(t.shape) for name, t in released_names.items()}
    summarize = load("loading_checks").summarize_keys
    expected = {name: tuple(t.shape) for name, t in build_meta_model(config).state_dict().items()}
    problems = []
    if missing := sorted(set(expected) - set(found)):
        problems.append(f"missing {len(missing)} tensor{'s' * (len(missing) > 1)} the model needs: "
                        f"{summarize(missing)}")
    if unused := sorted(set(found) - set(expected)):
        problems.append(f"{len(unused)} tensor{'s' * (len(unused) > 1)} the model does not use: {summarize(unused)}")
    if wrong := sorted(name for name in set(found) & set(expected) if found[name] != expected[name]):
        problems.append("wrong shapes: " + "; ".join(f"{n} {found[n]} vs {expected[n]}" for n in wrong[:5]))
    if problems:
        raise ValueError(f"The weights in {checkpoint} do not fit its config.json: {'; '.join(problems)}. Check that "
                         "config.json belongs to these weights, or download the missing files.")


def copy_checkpoint_files(checkpoint: Path, out: Path, vl: bool) -> list[str]:
    """(Checked) weights, generation config, tokenizer and processor files; returns the copied names."""
    weights = sorted(p.name for p in checkpoint.glob("*.safetensors"))
    names = weights + [p.name for p in checkpoint.glob("*.safetensors.index.json")]
    names += [n for n in ["generation_config.json", *TOKENIZER_FILES] if (checkpoint / n).is_file()]
    if not any(n.startswith("tokenizer") for n in names):
        raise FileNotFoundError(f"{checkpoint} has no tokenizer files (tokenizer.json / tokenizer_config.json).")
    if vl:
        processor_files = [n for n in PROCESSOR_FILES if (checkpoint / n).is_file()]
        if not processor_files:
            raise FileNotFoundError(
                f"{checkpoint} is a VL-01 checkpoint without processor_config.json or preprocessor_config.json; "
                "save the processor into it first (MiniMaxVL01Processor.save_pretrained)."
            )
        names += processor_files
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(checkpoint / name, out / name)
    if (checkpoint / CHAT_TEMPLATE_DIR).is_dir():  # named chat templates ("tool_use", ...)
        shutil.copytree(checkpoint / CHAT_TEMPLATE_DIR, out / CHAT_TEMPLATE_DIR)
        names.append(CHAT_TEMPLATE_DIR)
    return names


def model_family(checkpoint: Path, vl: bool) -> str:
    """"vl", "m1" or "text". MiniMax-M1 is told by its config.json names, or (for the native `-hf` repositories,
    whose config is Text-01's) by its chat template, the only one that starts with `<begin_of_document>`."""
    if vl:
        return "vl"
    values = read_json(checkpoint / "config.json")
    names = [values.get("model_type"), *(values.get("architectures") or []), *(values.get("auto_map") or {}).values()]
    if any(m1 in str(name) for name in names for m1 in M1_MODEL_TYPES):  # a model_type, class or class path
        return "m1"
    tokenizer_config = checkpoint / "tokenizer_config.json"
    template = read_json(tokenizer_config).get("chat_template") if tokenizer_config.is_file() else None
    return "m1" if isinstance(template, str) and "<begin_of_document>" in template else "text"


def write_config(checkpoint: Path, out: Path, config, vl: bool) -> list[str]:
    """The checkpoint's config.json with the canonical model_type (older files say "MiniMaxText01", M1's
    "minimax_m1", native "minimax"), this repository's auto_map and class name, in the released spelling.
    Returns what changed, for the model card."""
    values = read_json(checkpoint / "config.json")
    changes = []
    layouts = load("checkpoint_layouts")
    if layouts.is_native_config(values):
        values = layouts.released_config_from_native(values)
        changes.append("config.json converted from transformers' native `minimax` spelling to the released one "
                       "(`layer_types` -> `attn_type_list`, `*_alpha_factor` / `*_beta_factor` -> `layernorm_*`, "
                       "`rope_parameters` -> `rope_theta`)")
    auto_map = VL_AUTO_MAP if vl else TEXT_AUTO_MAP
    architectures = [auto_map["AutoModelForCausalLM"].rpartition(".")[2]]
    if values.get("model_type") != type(config).model_type or values.get("architectures") != architectures:
        changes.append(f"`model_type` {values.get('model_type')!r} -> {type(config).model_type!r}, `architectures` "
                       f"{values.get('architectures')} -> {architectures}")
    if values.get("auto_map") != auto_map:
        changes.append("`auto_map` points at this repository's classes"
                       + (f" (it named {sorted(set(values['auto_map'].values()))})" if values.get("auto_map") else ""))
    values.update(model_type=type(config).model_type, architectures=architectures, auto_map=auto_map)
    write_json(out / "config.json", values)
    return changes


def write_m1_generation_config(checkpoint: Path, out: Path) -> list[str]:
    """MiniMax-M1 ships no generation_config.json: write its recommended sampling, stopping at the tokenizer's eos
    (`<end_of_sentence>`). A checkpoint's own generation_config.json is kept instead. Returns what changed."""
    if (checkpoint / "generation_config.json").is_file():
        return []
    settings = {**M1_SAMPLING, **({"eos_token_id": eos} if (eos := tokenizer_eos_id(checkpoint)) is not None else {})}
    GenerationConfig(**settings).save_pretrained(out)
    listed = ", ".join(f"{key}={value}" for key, value in settings.items())
    return [f"`generation_config.json` written with M1's recommended sampling: {listed}"]


def tokenizer_eos_id(checkpoint: Path) -> int | None:
    """The id of tokenizer_config.json's eos token, looked up in tokenizer.json (None when either is absent)."""
    if not (checkpoint / "tokenizer_config.json").is_file() or not (checkpoint / "tokenizer.json").is_file():
        return None
    eos = read_json(checkpoint / "tokenizer_config.json").get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    tokenizer = read_json(checkpoint / "tokenizer.json")
    added = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
    return added.get(eos, (tokenizer.get("model") or {}).get("vocab", {}).get(eos))


def write_processor_auto_maps(out: Path) -> None:
    for name, auto_map in [
        ("processor_config.json", PROCESSOR_AUTO_MAP),
        ("preprocessor_config.json", IMAGE_PROCESSOR_AUTO_MAP),
        ("tokenizer_config.json", PROCESSOR_AUTO_MAP),
    ]:
        if (out / name).is_file():
            values = read_json(out / name)
            values["auto_map"] = auto_map
            if isinstance(values.get("image_processor"), dict):  # newer processors embed the image processor config
                values["image_processor"]["auto_map"] = IMAGE_PROCESSOR_AUTO_MAP
            write_json(out / name, values)


def write_chat_format(out: Path, kind: str) -> None:
    """OUT's chat format becomes this repository's for `kind` ("m1", "text"): its chat template as
    chat_template.jinja, also named "tool_use" (it renders what the released one renders for valid input, and what
    that one drops, such as OpenAI tool calls or plain strings, correctly); the released template stays available as
    `chat_template="released"`; and the `response_template` in tokenizer_config.json, for `tokenizer.parse_response`
    and `transformers serve` (one the checkpoint already carries is kept)."""
    config_path, default_path = out / "tokenizer_config.json", out / "chat_template.jinja"
    values = read_json(config_path) if config_path.is_file() else {}
    released = values.pop("chat_template", None)  # inline in the released tokenizer_config.json
    if default_path.is_file():  # a template file takes precedence over the inline one
        released = default_path.read_text()
    templates = named_chat_templates(kind)
    if isinstance(released, str) and released not in templates.values():
        templates["released"] = released
    default_path.write_text(templates.pop("default"))
    (out / CHAT_TEMPLATE_DIR).mkdir(exist_ok=True)
    for name, template in templates.items():
        (out / CHAT_TEMPLATE_DIR / f"{name}.jinja").write_text(template)
    if values.get("response_template") is None:
        values["response_template"] = RESPONSE_TEMPLATES[kind]
    write_json(config_path, values)


def defined_classes(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}


def validate_auto_maps(out: Path) -> None:
    """Every `auto_map` entry "module.Class" must name a class defined in OUT/module.py."""
    for config_file in sorted(out.glob("*.json")):
        values = read_json(config_file)
        maps = [values.get("auto_map") or {}, (values.get("image_processor") or {}).get("auto_map") or {}]
        for auto_class, reference in [item for auto_map in maps for item in auto_map.items()]:
            module, _, class_name = reference.rpartition(".")
            code = out / f"{module}.py"
            if not code.is_file() or class_name not in defined_classes(code):
                raise ValueError(
                    f"{config_file.name}: auto_map {auto_class} -> {reference}, but {code.name} "
                    f"{'does not define ' + class_name if code.is_file() else 'is missing'}."
                )
    architecture = (read_json(out / "config.json").get("architectures") or [None])[0]
    if architecture not in {ref.rpartition(".")[2] for ref in read_json(out / "config.json")["auto_map"].values()}:
        raise ValueError(f"config.json: architectures[0] = {architecture!r} is not a class named in its auto_map.")


def prepare_repo(checkpoint, out, base_model: str | None = None) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    check_paths(checkpoint, out)
    config = load_config(checkpoint)
    vl = is_vl(config)
    family = model_family(checkpoint, vl)
    check_weights(checkpoint, config)
    files = copy_checkpoint_files(checkpoint, out, vl)
    copy_remote_code(out, REMOTE_CODE_FILES if vl else TEXT_CODE_FILES)
    changes = write_config(checkpoint, out, config, vl)
    if stale := sorted(p.name for p in checkpoint.glob("*.py")):
        changes.append(f"the checkpoint's own Python files not copied ({', '.join(stale)}); this repository's "
                       "code replaces them")
    if family == "m1":
        changes += write_m1_generation_config(checkpoint, out)
        write_chat_format(out, "m1")
        changes.append("the chat format: this repository's M1 chat template is the default (`chat_template.jinja`, "
                       "also named `tool_use`), the released one stays available as `chat_template=\"released\"`, "
                       "and tokenizer_config.json gains M1's `response_template` (for `tokenizer.parse_response`)")
        files += ["generation_config.json", "chat_template.jinja", CHAT_TEMPLATE_DIR]
    if vl:
        write_processor_auto_maps(out)
    validate_auto_maps(out)
    metadata = {**source_card_metadata(checkpoint), **({"base_model": base_model} if base_model else {})}
    card = model_card(config, sorted(set(files)), metadata, family, changes)
    check_card_metadata(card)
    (out / "README.md").write_text(card)
    return out


def source_card_metadata(checkpoint: Path) -> dict:
    """The YAML metadata of the checkpoint's own README.md (empty when it has none)."""
    readme = checkpoint / "README.md"
    return (metadata_load(readme) or {}) if readme.is_file() else {}


def card_metadata(family: str, source: dict) -> dict:
    """The card's metadata: licence and base model carried over from the source card when it names them."""
    vl = family == "vl"
    licence = {k: source[k] for k in RELEASED_LICENSE if k in source} if "license" in source else RELEASED_LICENSE
    return {
        **licence,
        "base_model": source.get("base_model", BASE_MODELS[family]),
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text" if vl else "text-generation",
        "tags": ["minimax", "mixture-of-experts", "linear-attention", "custom_code"],
    }


def check_card_metadata(card: str) -> None:
    """Parse the card as huggingface_hub does (its ModelCard, strict) and check the fields the Hub requires of this
    repo. The Hub's own check (`ModelCard.validate`, online) runs before `--push` uploads."""
    data = ModelCard(card, ignore_metadata_errors=False).data
    missing = [key for key in ("license", "base_model", "library_name", "pipeline_tag") if not data.get(key)]
    if data.get("license") == "other":
        missing += [key for key in ("license_name", "license_link") if not data.get(key)]
    if missing:
        raise ValueError(f"The model card's metadata lacks {', '.join(missing)}; add them to the card's YAML block.")


def push(out: Path, repo_id: str, private: bool = False) -> str:
    """Create the Hub repo if needed and upload OUT; returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    ModelCard.load(out / "README.md").validate()  # the Hub's metadata check, before anything is created
    create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = upload_folder(folder_path=out, repo_id=repo_id, repo_type="model",
                           commit_message="MiniMax-01 remote code for transformers 5")
    return commit.commit_url


def model_card(config, files: list[str], source_metadata: dict | None = None, family: str | None = None,
               changes: list[str] | None = None) -> str:
    vl = is_vl(config)
    family = family or ("vl" if vl else "text")
    text_config, prefix = text_part(config)
    n_params = sum(p.numel() for p in build_meta_model(config).parameters())
    types = text_config.layer_types
    name = NAMES[family]
    skip = (
        (', "vision_tower", "multi_modal_projector", "image_newline"' if vl else "")
        + f']\nskip += [f"{prefix}model.layers.{{i}}.{{m}}" for i in range({text_config.num_hidden_layers}) '
        'for m in ("coefficient", "block_sparse_moe.gate")]'
    )
    usage = VL_USAGE if vl else TEXT_USAGE
    return CARD.format(
        metadata=ModelCardData(**card_metadata(family, source_metadata or {})).to_yaml(),
        name=name,
        params=f"{n_params / 1e9:.1f} B" if n_params >= 1e9 else f"{n_params / 1e6:.1f} M",
        layers=len(types),
        lightning=types.count("linear_attention"),
        softmax=types.count("full_attention"),
        experts=text_config.num_local_experts,
        top_k=text_config.num_experts_per_tok,
        vision=" A CLIP ViT vision tower, a two-layer projector and an anyres image processor (336-px tiles "
        "plus a thumbnail) feed the language model." if vl else "",
        range=TRANSFORMERS_RANGE,
        usage=usage,
        device_map=DEVICE_MAP_USAGE.format(
            prefix=prefix,
            layers=text_config.num_hidden_layers,
            vision='device_map.update({"vision_tower": 0, "multi_modal_projector": 0, "image_newline": 0})\n'
            if vl else "",
        ),
        processor="`AutoTokenizer` and `AutoProcessor`" if vl else "`AutoTokenizer`",
        skip=f'skip = ["{prefix}lm_head", "{prefix}model.embed_tokens"' + skip,
        files=file_list(files, REMOTE_CODE_FILES if vl else TEXT_CODE_FILES),
        changes="\n".join(f"- {change}" for change in changes or ["none besides the files above"]),
        m1=M1_NOTES if family == "m1" else "",
    )


def file_list(copied: list[str], code_files: list[str]) -> str:
    weights = [name for name in copied if name.endswith(".safetensors")]
    others = sorted(set(copied) - set(weights) | {"config.json", "README.md"})
    lines = [f"- weights: {len(weights)} safetensors file(s) ({weights[0]}{' ...' if len(weights) > 1 else ''})"]
    lines += [f"- `{name}`" for name in others]
    return "\n".join(lines + [f"- `{name}` (remote code)" for name in code_files])


M1_NOTES = """
MiniMax-M1 is MiniMax-Text-01's architecture with other weights: the same code runs it. Recommended sampling:
temperature 1.0, top-p 0.95 (in `generation_config.json`); give thinking room with `max_new_tokens` up to the
RL output limit (40K for M1-40k, 80K for M1-80k). Replies start with a `<think>` block.
"""

TEXT_USAGE = """\
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "REPO_ID_OR_FOLDER"
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16", device_map="auto")
# AutoModel loads the base model (hidden states, no LM head)
messages = [{"role": "user", "content": [{"type": "text", "text": "What is lightning attention?"}]}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs.to(model.device), max_new_tokens=200)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""

VL_USAGE = """\
```python
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

path = "REPO_ID_OR_FOLDER"
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16", device_map="auto")
# AutoModelForImageTextToText loads the same class; AutoModel loads the base model (hidden states, no LM head)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(text=prompt, images=[Image.open("photo.jpg")], return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=200)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""

DEVICE_MAP_USAGE = """\
```python
import torch
from transformers import AutoModelForCausalLM

gpus, layers = torch.cuda.device_count(), {layers}
device_map = {{f"{prefix}model.layers.{{i}}": i * gpus // layers for i in range(layers)}}
device_map.update({{"{prefix}model.embed_tokens": 0, "{prefix}model.norm": gpus - 1, "{prefix}lm_head": gpus - 1}})
{vision}model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16", device_map=device_map)
```"""

CARD = """\
---
{metadata}
---

# {name} (remote code for transformers 5)

{params} parameters: {layers} decoder layers ({lightning} lightning-attention, {softmax} softmax-attention),
each with a {experts}-expert top-{top_k} mixture of experts.{vision}
The weights are those of the source checkpoint, unchanged; the modelling code is a rewrite for transformers 5
that follows the released math.

## Requirements

- `transformers{range}` and `torch` (any build; no flash-attn needed), `accelerate` for `device_map`,
  `optimum-quanto` for int8. Loading needs `trust_remote_code=True`.
- Pass `trust_remote_code=True` to {processor} too, not only to the model: without it transformers
  stops and asks in the terminal whether to run the repository's code.

## Usage

{usage}

The released model needs several GPUs: in bfloat16 the weights alone take about 2 bytes per parameter, in int8
(below) about half. Pass `device_map="auto"`, or a whole-layer map `{{module name: GPU}}` (embeddings on the first
GPU, final norm and `lm_head` on the last), with room left on every GPU for the K/V cache of the softmax layers
(4 KiB per token per layer in bf16), the lightning states (4 MiB per layer per sequence, fp32) and activations.
An even whole-layer split:

{device_map}

### int8 weights (optimum-quanto)

```python
from transformers import AutoModelForCausalLM, QuantoConfig

{skip}
quantization_config = QuantoConfig(weights="int8", modules_to_not_convert=skip)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype="bfloat16", device_map="auto",
                                             quantization_config=quantization_config)
```

Every expert and attention projection is quantized; router gates, embeddings and `lm_head` stay in bfloat16.

## What changed from the source folder

The weights are the source's, unchanged. Besides the remote code and this card:
{changes}
{m1}
## Differences from the code published with the release

- Runs on transformers 5 (the original code imports only on 4.x) and needs no flash-attn: the softmax layers use
  transformers' attention interface (eager, sdpa, or flash-attention when installed).
- A transformers `Cache` subclass (fp32 lightning states plus K/V) replaces the legacy tuple caches, so
  `generate()` works with greedy search, sampling, beam search and left-padded batches.
- The lightning layers have a training path (autograd through a chunked, memory-bounded prefill).
- The chat template also renders plain-string message content (the released one rendered it as nothing).

## Differences from transformers' native `minimax`

- RoPE is applied to the first `rotary_dim` (64) channels of each head only, as released; native rotates all 128.
- Lightning decays and states are always fp32; native stores the decays as buffers that are cast with the model,
  so in bf16 about 9% of them round to exactly 1.0 and long decodes drift.
- The released key names and per-expert `nn.Linear` experts are kept; native fuses the experts into 3-D tensors,
  which int8 quanto does not quantize.
- Positions count the tokens already in the cache even though layer 0 is a lightning layer, so manual decoding
  without `position_ids` is right.

## Limitations

- Plain `transformers serve` cannot load this model: its loader looks the model class up by its name among
  transformers' own classes (`architectures` in config.json), which a remote-code class is not.
  `python scripts/serve.py CHECKPOINT` (in the repository this code comes from) registers the class, then runs that
  same OpenAI-compatible server. Continuous batching is unavailable: transformers' paged cache has no
  linear-attention layers.
- Assisted generation and prompt lookup need the default dynamic cache (they give the tokens of plain greedy
  decoding); the static cache cannot roll its lightning states back to drop rejected draft tokens.
- `output_attentions=True` (with `attn_implementation="eager"`) returns the weights of the softmax layers only;
  the lightning layers have no attention matrix.

## Behaviours worth knowing

- Right padding is refused while a cache is kept (a lightning state would keep decaying over the pad tokens); use
  left padding, or `use_cache=False` for scoring.
- Prompts longer than `max_position_embeddings` run with a warning.

## Files

{files}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (config.json, safetensors, tokenizer)")
    parser.add_argument("out", type=Path, help="new or empty folder to assemble the repository in")
    parser.add_argument("--base-model", metavar="REPO_ID", help="the card's base_model (default: the source card's, "
                        "else the released repository, e.g. MiniMaxAI/MiniMax-M1-80k for M1)")
    parser.add_argument("--push", metavar="REPO_ID", help="upload OUT to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    try:
        out = prepare_repo(args.checkpoint, args.out, args.base_model)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.error(str(error))
    print(f"assembled {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.push:
        print(f"uploaded: {push(out, args.push, args.private)}")


if __name__ == "__main__":
    main()
