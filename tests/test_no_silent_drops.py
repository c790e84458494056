"""No silent drops: every input either works (checked against an independent computation) or fails with an error
naming the problem and the fix, at the first place the project can see it.

Categories: processor keyword arguments (routed to the image processor or refused), VL inputs (image tokens without
images, (width, height) image sizes, a split image-token run, images given to the text model), training and
generation settings (labels, logits_to_keep, prefill_chunk_size, generation_config.json), checkpoint folders
(shards, index, dtype name, model kind, missing path, device map) and the scripts' command lines.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import benchmark
import benchmark_long_context
import device_map as dm
import generate as gen
import gpu_check
import make_tiny_checkpoint as mtc
import tiny_tokenizer
import tp_decode
from helpers import edited_checkpoint, random_ids, random_image, sharded_copy
from minimax_code import load

mm = load("modeling_minimax_text_01")
vl = load("modeling_minimax_vl_01")
image_processing = load("image_processing_minimax_vl_01")


def photo(seed=0, width=90, height=40):
    return random_image(width, height, seed)


# ================================================================================ processor keyword arguments


def test_top_level_do_normalize_reaches_the_image_processor(vl_processor):
    out = vl_processor(text="a<image>b", images=[photo()], do_normalize=False, return_tensors="pt")
    expected = vl_processor.image_processor(photo(), do_normalize=False, return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"], expected)
    # raw 0..1 pixels, not the CLIP-normalised ones the default gives
    assert out["pixel_values"].min() >= 0 and out["pixel_values"].max() <= 1
    default = vl_processor(text="a<image>b", images=[photo()], return_tensors="pt")["pixel_values"]
    assert not torch.allclose(default, expected)


def test_top_level_max_image_pixels_reaches_the_image_processor(vl_processor):
    with pytest.raises(ValueError, match=r"exceeds max_image_pixels=100"):
        vl_processor(text="a<image>", images=[photo()], max_image_pixels=100, return_tensors="pt")


@pytest.mark.parametrize("pinpoints", [[[336, 336]], [[336, 672], [672, 336]]])
def test_top_level_pinpoints_tile_the_image_and_count_its_tokens_alike(vl_processor, pinpoints):
    out = vl_processor(text="x<image>y", images=[photo()], image_grid_pinpoints=pinpoints, return_tensors="pt")
    hw = (40, 90)
    assert out["pixel_values"].shape[0] == image_processing.num_crops(hw, pinpoints)
    tokens = int((out["input_ids"] == vl_processor.image_token_id).sum())
    assert tokens == image_processing.num_image_tokens(hw, pinpoints)
    assert vl_processor.image_processor.image_grid_pinpoints != pinpoints  # the processor itself is unchanged


@pytest.mark.parametrize(
    "setting, phrase",
    [
        (dict(do_resize=False), "do_resize=False: anyres tiling always resizes"),
        (dict(do_center_crop=True, crop_size={"height": 224, "width": 224}), "crop_size="),
        (dict(crop_size={"height": 224, "width": 224}), "crop_size="),
        (dict(do_pad=False), "do_pad=False"),
        (dict(image_seq_length=576), "image_seq_length=576"),
        (dict(data_format="channels_last"), "data_format='channels_last'"),
        (dict(device="cuda"), "device='cuda'"),
    ],
)
def test_image_settings_the_anyres_processor_cannot_honour(vl_processor, setting, phrase):
    with pytest.raises(ValueError, match=rf"MiniMaxVL01ImageProcessor cannot honour {phrase}"):
        vl_processor(text="a<image>", images=[photo()], return_tensors="pt", **setting)
    with pytest.raises(ValueError, match=r"cannot honour"):
        vl_processor.image_processor(photo(), return_tensors="pt", **setting)


def test_image_settings_it_honours_anyway_are_accepted(vl_processor):
    plain = vl_processor.image_processor(photo(), return_tensors="pt")["pixel_values"]
    same = vl_processor.image_processor(photo(), do_resize=True, do_pad=True, data_format="channels_first",
                                        device="cpu",
                                     do_center_crop=True, crop_size={"height": 336, "width": 336},
                                     return_tensors="pt")["pixel_values"]
    assert torch.equal(plain, same)


def test_tokenizer_arguments_still_reach_the_tokenizer(vl_processor):
    out = vl_processor(text=["a<image>", "a longer prompt<image>"], images=[photo(), photo(seed=1)],
                    padding_side="right", return_tensors="pt")
    assert out["attention_mask"][0, 0] == 1 and out["attention_mask"][0, -1] == 0  # padded on the right


def test_unknown_processor_argument_is_refused(vl_processor):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'do_nomalize'.*neither the image processor"):
        vl_processor(text="a<image>", images=[photo()], do_nomalize=False)


def test_unknown_images_kwargs_entry_is_refused(vl_processor):
    with pytest.raises(TypeError, match=r"images_kwargs holds \['foo'\]"):
        vl_processor(text="a<image>", images=[photo()], images_kwargs={"foo": 1})


def test_argument_given_twice_with_different_values_is_refused(vl_processor):
    with pytest.raises(ValueError, match=r"'do_normalize' is given twice"):
        vl_processor(text="a<image>", images=[photo()], do_normalize=False, images_kwargs={"do_normalize": True})


# ================================================================================================ VL inputs


@pytest.fixture(scope="module")
def vl_inputs(vl_processor):
    return vl_processor(text="look<image>here", images=[photo()], return_tensors="pt")


def test_image_tokens_without_pixel_values_in_forward(vl_model, vl_inputs):
    with pytest.raises(ValueError, match=r"no pixel_values were given\. Pass the processor's pixel_values"):
        vl_model(input_ids=vl_inputs["input_ids"])


def test_image_tokens_without_pixel_values_in_generate(vl_model, vl_inputs):
    with pytest.raises(ValueError, match=r"no pixel_values were given"):
        vl_model.generate(input_ids=vl_inputs["input_ids"], max_new_tokens=2, do_sample=False)


def test_generated_image_token_in_a_decode_step_is_accepted(vl_model, vl_inputs):
    """The model may generate the <image> id itself; a decode step holding it runs as its plain embedding."""
    with torch.no_grad():
        out = vl_model(**vl_inputs, use_cache=True)
        step = torch.tensor([[vl_model.config.image_token_index]])
        mask = torch.cat([vl_inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        logits = vl_model(input_ids=step, attention_mask=mask, past_key_values=out.past_key_values).logits
    assert logits.shape == (1, 1, vl_model.config.text_config.vocab_size) and torch.isfinite(logits).all()


def test_image_sizes_given_as_width_height_are_named(vl_model, vl_inputs):
    sizes = vl_inputs["image_sizes"].flip(-1)  # (90, 40): width first
    with pytest.raises(ValueError, match=r"read as \(width, height\) the counts match.*\(height, width\)"):
        vl_model(input_ids=vl_inputs["input_ids"], pixel_values=vl_inputs["pixel_values"], image_sizes=sizes)


@pytest.mark.parametrize("sizes", [torch.tensor([40, 90, 1]), torch.tensor([[40.0, 90.0]]), torch.tensor([[[40, 90]]])])
def test_malformed_image_sizes(vl_model, vl_inputs, sizes):
    with pytest.raises(ValueError, match=r"image_sizes must be an integer tensor \[num_images, 2\]"):
        vl_model(input_ids=vl_inputs["input_ids"], pixel_values=vl_inputs["pixel_values"], image_sizes=sizes)


def test_image_token_run_split_by_text(vl_model, vl_inputs):
    ids = vl_inputs["input_ids"]
    first = int((ids[0] == vl_model.config.image_token_index).nonzero()[0])
    split = torch.cat([ids[:, : first + 10], random_ids(1, 1), ids[:, first + 10 :]], dim=1)
    with pytest.raises(ValueError, match=r"do not form one unbroken run per image: runs of \[10, \d+\]"):
        vl_model(input_ids=split, pixel_values=vl_inputs["pixel_values"], image_sizes=vl_inputs["image_sizes"])


def test_two_adjacent_images_share_one_run(vl_model, vl_processor):
    """Two placeholders side by side give one run of both images' tokens: accepted, and the first image's
    features stay on its own tokens (the causal prefix gives the logits of the first image alone)."""
    images = [photo(), photo(seed=1, width=30, height=60)]
    both = vl_processor(text="a<image><image>b", images=images, return_tensors="pt")
    alone = vl_processor(text="a<image>", images=[photo()], return_tensors="pt")
    with torch.no_grad():
        logits_both, logits_alone = vl_model(**both).logits, vl_model(**alone).logits
    prefix = alone["input_ids"].shape[1]
    assert torch.equal(both["input_ids"][:, :prefix], alone["input_ids"])
    assert torch.allclose(logits_both[:, :prefix], logits_alone, atol=1e-4)


def test_image_token_count_not_matching_the_images(vl_model, vl_inputs):
    extra = torch.cat([vl_inputs["input_ids"], torch.tensor([[vl_model.config.image_token_index]])], dim=1)
    with pytest.raises(ValueError, match=r"input_ids contain \d+ image tokens, but the 1 images give"):
        vl_model(input_ids=extra, pixel_values=vl_inputs["pixel_values"], image_sizes=vl_inputs["image_sizes"])


@pytest.mark.parametrize("name", ["pixel_values", "image_sizes"])
def test_image_inputs_to_the_text_model_are_refused(text_model, name):
    value = torch.zeros(1, 3, 336, 336) if name == "pixel_values" else torch.tensor([[40, 90]])
    with pytest.raises(ValueError, match=rf"MiniMax-Text-01 is text-only and would ignore {name}.*MiniMaxVL01"):
        text_model(random_ids(1, 5), **{name: value})
    with pytest.raises(ValueError, match=r"text-only"):
        text_model.model(random_ids(1, 5), **{name: value})  # the base model (AutoModel) too


# ========================================================================== training and generation settings


def reference_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of token t's logits against label t+1 over the labels that are not -100, in float64."""
    log_probs = logits[:, :-1].double().log_softmax(-1)
    targets = labels[:, 1:]
    keep = targets != -100
    return -log_probs[keep].gather(-1, targets[keep][:, None]).mean()


def test_partly_ignored_labels_give_the_reference_loss(text_model):
    ids = random_ids(2, 7)
    labels = ids.clone()
    labels[0, :4] = -100
    out = text_model(ids, labels=labels)
    assert abs(out.loss.item() - reference_loss(out.logits, labels).item()) < 1e-5


@pytest.mark.parametrize("kept", [None, 0])  # every label ignored / only the first, which nothing predicts
def test_labels_with_nothing_to_predict_give_zero_loss_not_nan(text_model, kept):
    ids = random_ids(2, 6)
    labels = torch.full_like(ids, -100)
    if kept is not None:
        labels[:, kept] = ids[:, kept]
    model = mm.MiniMaxText01ForCausalLM(text_model.config)  # a trainable copy
    model.load_state_dict(text_model.state_dict())
    loss = model(ids, labels=labels).loss
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_nothing_to_predict_with_num_items_in_batch_zero(text_model):
    ids = random_ids(1, 5)
    loss = text_model(ids, labels=torch.full_like(ids, -100), num_items_in_batch=torch.tensor(0)).loss
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "labels, error, phrase",
    [
        (lambda ids: ids.float(), TypeError, r"labels must hold token ids \(torch.long\), got torch.float32"),
        (lambda ids: ids.bool(), TypeError, r"labels must hold token ids"),
        (lambda ids: ids[:, :4], ValueError, r"labels must have the shape of input_ids \(2, 6\), got \(2, 4\)"),
        (lambda ids: ids[0], ValueError, r"labels must have the shape of input_ids \(2, 6\), got \(6,\)"),
        (lambda ids: ids + 1000, ValueError, r"outside the vocabulary 0\.\.511"),
        (lambda ids: ids.tolist(), TypeError, r"labels must be a torch tensor"),
    ],
)
def test_bad_labels(text_model, labels, error, phrase):
    ids = random_ids(2, 6)
    with pytest.raises(error, match=phrase):
        text_model(ids, labels=labels(ids))


@pytest.mark.parametrize(
    "keep, labels, error, phrase",
    [
        (-1, False, ValueError, r"logits_to_keep must be 0 \(all tokens\) or a positive count.*got -1"),
        (True, False, TypeError, r"logits_to_keep must be an int"),
        (1.5, False, TypeError, r"logits_to_keep must be an int"),
        (2, True, ValueError, r"labels need the logits of every token"),
    ],
)
def test_bad_logits_to_keep(text_model, keep, labels, error, phrase):
    ids = random_ids(1, 6)
    with pytest.raises(error, match=phrase):
        text_model(ids, logits_to_keep=keep, labels=ids if labels else None)


def test_logits_to_keep_keeps_the_last_tokens(text_model):
    ids = random_ids(1, 6)
    with torch.no_grad():
        full, last2 = text_model(ids).logits, text_model(ids, logits_to_keep=2).logits
    assert last2.shape[1] == 2 and torch.allclose(last2, full[:, -2:], atol=1e-5)


@pytest.mark.parametrize(
    "size, error, phrase",
    [
        (0, ValueError, r"prefill_chunk_size must be a positive token count, got 0"),
        (-3, ValueError, r"prefill_chunk_size must be a positive token count, got -3"),
        (2.5, TypeError, r"prefill_chunk_size must be an int token count or None, got 2.5 \(float\)"),
        (True, TypeError, r"got True \(bool\)"),
        ("4", TypeError, r"got '4' \(str\)"),
    ],
)
def test_bad_prefill_chunk_size(text_model, size, error, phrase):
    with pytest.raises(error, match=phrase):
        text_model(random_ids(1, 6), prefill_chunk_size=size)


@pytest.mark.parametrize("size", [0, -2, 2.5, True])
def test_bad_prefill_chunk_size_in_generate(text_model, size):
    with pytest.raises((TypeError, ValueError), match=r"prefill_chunk_size must be"):
        text_model.generate(random_ids(1, 9), max_new_tokens=2, do_sample=False, prefill_chunk_size=size)


def test_generate_with_prefill_chunks_matches_unchunked(text_model):
    ids = random_ids(1, 9)
    plain = text_model.generate(ids, max_new_tokens=3, do_sample=False)
    chunked = text_model.generate(ids, max_new_tokens=3, do_sample=False, prefill_chunk_size=4)
    assert torch.equal(plain, chunked)


def test_prefill_chunk_size_gives_the_unchunked_logits(text_model):
    ids = random_ids(1, 9)
    with torch.no_grad():
        whole, chunked = text_model(ids).logits, text_model(ids, prefill_chunk_size=4).logits
    assert torch.allclose(whole, chunked, atol=1e-4)


def test_truncated_generation_config_is_refused(tiny_text, tmp_path):
    folder = shutil.copytree(tiny_text, tmp_path / "ckpt")
    path = folder / "generation_config.json"
    path.write_text(path.read_text()[:25])
    with pytest.raises(ValueError, match=r"generation_config.json is not valid JSON .*truncated or damaged"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("eos", [99_999, [1, 512], -1])
def test_generation_config_eos_outside_the_vocabulary(tiny_text, tmp_path, eos):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", generation_config={"eos_token_id": eos})
    with pytest.raises(ValueError, match=r"`eos_token_id` .* is not a token id of the vocabulary \(0\.\.511\)"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_generation_config_with_the_released_eos_loads(tiny_text):
    model = mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text)
    assert model.generation_config.eos_token_id == json.loads((tiny_text / "config.json").read_text())["eos_token_id"]


# ============================================================================================ checkpoint folders


def first_tensor_name(folder: Path) -> str:
    """The first tensor name of a sharded checkpoint's index (sharded_copy puts it in shard 1)."""
    return min(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])


def test_one_tensor_in_two_shards_with_different_values(tiny_text, tmp_path):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt", duplicate=lambda tensor: tensor + 1)
    key = first_tensor_name(folder)
    with pytest.raises(ValueError, match=rf"the tensor {key} is in both model-00001-of-00002.safetensors and "
                                         r"model-00002-of-00002.safetensors, with different values"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


# a sharded checkpoint with a consistent index, and one holding a tensor in both shards with equal values
@pytest.mark.parametrize("duplicate", [None, torch.clone], ids=["consistent_index", "one_tensor_in_two_shards"])
def test_sharded_checkpoint_loads(tiny_text, text_model, tmp_path, duplicate):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt", duplicate=duplicate)
    model = mm.MiniMaxText01ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), text_model.state_dict().values()))


@pytest.mark.parametrize("index_text", ['{"metadata": {}, "weight_map": {"lm_head.wei', '{"metadata": {}}', "[1, 2]"])
def test_malformed_shard_index(tiny_text, tmp_path, index_text):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    (folder / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(ValueError, match=r"model.safetensors.index.json (is not valid JSON|has no `weight_map`)"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def move_to_shard_2(weight_map, key):
    weight_map[key] = "model-00002-of-00002.safetensors"


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (move_to_shard_2, "the index names {key} in shards that do not hold them"),  # the tensor is in shard 1
        (dict.pop, "the shards hold {key}, which the index does not list"),
    ],
)
def test_index_that_does_not_match_the_shards(tiny_text, tmp_path, edit, phrase):
    folder = sharded_copy(tiny_text, tmp_path / "ckpt")
    key = first_tensor_name(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    edit(index["weight_map"], key)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not match the shards: " + phrase.format(key=key)):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_unknown_dtype_name_in_config(tiny_text, tmp_path, key):
    folder = edited_checkpoint(tiny_text, tmp_path / "ckpt", config={key: "bfloat17"})
    with pytest.raises(ValueError, match=rf"config.json: `{key}` is 'bfloat17', which is not a torch dtype"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(folder)


def test_unknown_dtype_name_in_a_vl_sub_config(tiny_vl, tmp_path):
    folder = shutil.copytree(tiny_vl, tmp_path / "ckpt")
    values = json.loads((folder / "config.json").read_text())
    values["text_config"]["torch_dtype"] = "bf16"
    (folder / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"`text_config.torch_dtype` is 'bf16', which is not a torch dtype"):
        vl.MiniMaxVL01ForConditionalGeneration.from_pretrained(folder)


def test_unknown_dtype_name_as_argument(tiny_text):
    with pytest.raises(ValueError, match=r"the `dtype` argument is 'float33', which is not a torch dtype"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text, dtype="float33")


def test_vl_folder_loaded_with_the_text_class(tiny_vl):
    with pytest.raises(ValueError, match=r"holds a MiniMax-VL-01 checkpoint, which MiniMaxText01ForCausalLM cannot "
                                         r"load. Load it with MiniMaxVL01ForConditionalGeneration"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_vl)


def test_text_folder_loaded_with_the_vl_class(tiny_text):
    with pytest.raises(ValueError, match=r"holds a MiniMax-Text-01 checkpoint, which MiniMaxVL01Model cannot load"):
        vl.MiniMaxVL01Model.from_pretrained(tiny_text)


def test_auto_class_still_picks_the_right_class(tiny_vl):
    model = AutoModelForCausalLM.from_pretrained(tiny_vl, trust_remote_code=True)
    assert type(model).__name__ == "MiniMaxVL01ForConditionalGeneration"


@pytest.mark.parametrize("path", ["/no/such/folder/ckpt", "./no-such-ckpt", "a/b/c"])
def test_missing_local_path_is_not_called_a_bad_repo_id(path):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint folder at .*Check the path"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device_map", ["cuda:0", "cuda", {"": 0}, {"model": "cpu", "lm_head": "cuda:1"}])
def test_device_map_naming_a_gpu_on_a_cpu_machine(tiny_text, device_map):
    with pytest.raises(ValueError, match=r"device_map names the GPU 'cuda(:\d)?', but this machine has 0 CUDA GPU"):
        mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text, device_map=device_map)


def test_cpu_device_map_still_loads(tiny_text):
    model = mm.MiniMaxText01ForCausalLM.from_pretrained(tiny_text, device_map={"": "cpu"})
    assert model.device.type == "cpu"


# ===================================================================================================== scripts


def test_tiny_text_checkpoint_over_a_vl_one_leaves_no_vl_files(tiny_vl, tmp_path):
    out = shutil.copytree(tiny_vl, tmp_path / "ckpt")
    mtc.main(["--model", "text", "--out", str(out)])
    names = {p.name for p in out.iterdir()}
    assert not names & {"processor_config.json", "preprocessor_config.json", "modeling_minimax_vl_01.py"}
    assert not gen.has_processor(out)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "MiniMaxText01ForCausalLM"


def test_tiny_checkpoint_into_a_folder_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        mtc.main(["--out", str(tmp_path)])
    assert "is not empty and holds no checkpoint" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "main, argv, flag",
    [
        (benchmark.parse_args, ["--reps", "0"], "--reps"),
        (benchmark.parse_args, ["--prefill", "4096", "-5"], "--prefill"),
        (benchmark.parse_args, ["--memory-chunks", "0"], "--memory-chunks"),
        (benchmark.parse_args, ["--decode-tokens", "0"], "--decode-tokens"),
        (benchmark_long_context.main, ["--lengths", "0"], "--lengths"),
        (benchmark_long_context.main, ["--chunk", "0"], "--chunk"),
        (gpu_check.main, ["--reps", "0"], "--reps"),
        (mtc.main, ["--out", "unused", "--heads", "0"], "--heads"),
        (tiny_tokenizer.main, ["unused", "--vocab-size", "-1"], "--vocab-size"),
        (tp_decode.main, ["unused", "--out", "unused", "--steps", "0"], "--steps"),
        (tp_decode.main, ["unused", "--out", "unused", "--prompt", "0"], "--prompt"),
        (gen.main, ["unused", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
        (gen.main, ["unused", "--prompt", "hi", "--pp", "0"], "--pp"),
        (dm.main, ["unused", "--gpus", "2", "--prefill-chunk", "0"], "--prefill-chunk"),
        (benchmark.parse_args, ["--threads", "two"], "--threads"),
    ],
)
def test_counts_below_one_are_refused_when_parsed(main, argv, flag, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and ("must be at least 1" in err or "expected a whole number" in err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_benchmark_refuses_a_gpu_on_a_cpu_machine_when_parsed(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--device", "cuda"])
    assert "--device names the GPU 'cuda', but this machine has 0 CUDA GPU" in capsys.readouterr().err


def test_tiny_tokenizer_too_small_a_vocabulary_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tiny_tokenizer.main([str(tmp_path / "tok"), "--vocab-size", "10"])
    assert "vocab_size must be at least 259" in capsys.readouterr().err


def test_generate_script_names_a_missing_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "missing"), "--prompt", "hi"])
    assert "missing does not exist. Pass the path of a local checkpoint folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_generate_script_refuses_a_gpu_device_map_before_loading(tiny_text, tmp_path, capsys):
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps({"model": 0, "lm_head": 0}))
    with pytest.raises(SystemExit):
        gen.main([str(tiny_text), "--prompt", "hi", "--device-map", str(map_file)])
    assert "device_map names the GPU 'cuda:0', but this machine has 0 CUDA GPU" in capsys.readouterr().err
