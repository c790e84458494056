"""The pass-key task, the trained tiny checkpoint (checkpoints/tiny-passkey) and scripts/needle.py."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimax_code import REPO_ROOT, TEXT_CODE_FILES
from passkey import answer_digits, build_passkey_tokenizer, filler_repetitions, passkey_text

CHECKPOINT = REPO_ROOT / "checkpoints" / "tiny-passkey"

# The format as the issue states it, written out here independently of scripts/passkey.py.
ISSUE_INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about it."
)
ISSUE_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ISSUE_QUESTION = "What is the pass key? The pass key is"


def issue_prompt(before: int, after: int, key: int) -> str:
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return " ".join([ISSUE_INTRO] + [ISSUE_FILLER] * before + [needle] + [ISSUE_FILLER] * after + [ISSUE_QUESTION])


@pytest.mark.parametrize("depth, before", [(0.0, 0), (0.25, 2), (0.5, 4), (1.0, 8)])
def test_prompt_is_the_issue_format(depth, before):
    assert passkey_text(8, depth, 31415) == issue_prompt(before, 8 - before, 31415)


def test_tokenizer_counts_words_digits_and_punctuation():
    tokenizer = build_passkey_tokenizer()
    text = issue_prompt(3, 2, 27182)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # exact round trip, no unknown words
    assert tokenizer.unk_token_id not in ids
    assert len(tokenizer(ISSUE_FILLER)["input_ids"]) == 24  # 19 words + 5 periods
    assert tokenizer.convert_ids_to_tokens(tokenizer(" 27182")["input_ids"]) == ["▁", "2", "7", "1", "8", "2"]
    # prompt length = fixed part + 24 per filler repetition, so lengths are hit to within 12 tokens
    for length in (1024, 2048, 4096):
        prompt = passkey_text(filler_repetitions(tokenizer, length), 0.5, 27182)
        assert abs(len(tokenizer(prompt)["input_ids"]) - length) <= 12


def test_answer_digits_takes_the_first_five():
    assert answer_digits(" 12345. Remember") == "12345"
    assert answer_digits(" 1 2 3 4 5 6") == "12345"
    assert answer_digits(" key 12") == "12"


def test_committed_checkpoint_is_small_and_links_the_project_code():
    size = sum(p.stat().st_size for p in CHECKPOINT.iterdir() if p.is_file() and not p.is_symlink())
    assert size <= 10 * 2**20
    for name in TEXT_CODE_FILES:  # symlinks to the top-level modules: never stale, no second copy
        link = CHECKPOINT / name
        assert link.is_symlink() and link.resolve() == (REPO_ROOT / name).resolve(), (
            f"checkpoints/tiny-passkey/{name} should link to the top-level module; after adding a remote-code module "
            "run: python -c 'import sys; sys.path.insert(0, \"scripts\"); from train_passkey import link_remote_code; "
            "from pathlib import Path; link_remote_code(Path(\"checkpoints/tiny-passkey\"), copy=False)'"
        )


@pytest.mark.smoke  # also on transformers 5.17: the word-level tokenizer and the remote code load there too
def test_committed_checkpoint_finds_fresh_keys(tmp_path, monkeypatch):
    """The issue's bar, on fresh keys and depths through the Auto classes and greedy generate(): >= 95 % near 1K
    tokens, >= 85 % near 3.5K."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # a fresh remote-code import
    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, trust_remote_code=True).eval()
    assert type(model).__name__ == "MiniMaxText01ForCausalLM"
    rng = random.Random(20261206)  # keys and depths the training data (seeded from 0) did not fix
    for length, prompts, least_right in ((1024, 12, 12), (3584, 8, 7)):
        repetitions = filler_repetitions(tokenizer, length)
        right = 0
        for _ in range(prompts):
            key, depth = rng.randint(10000, 99999), rng.random()
            ids = tokenizer(passkey_text(repetitions, depth, key), return_tensors="pt")["input_ids"]
            assert abs(ids.shape[1] - length) <= 12
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
            right += answer_digits(tokenizer.decode(out[0, ids.shape[1] :])) == str(key)
        assert right >= least_right, f"{right}/{prompts} keys found at {length} tokens"


@pytest.mark.slow
def test_needle_script_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "needle.py"), str(CHECKPOINT), "--lengths", "512", "1K",
               "--depths", "0", "0.5", "1", "--samples", "3", "2", "--out", str(out), "--prefill-chunk", "256",
               "--seed", "7", "--threads", "1"]  # fmt: skip
    subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)

    result = json.loads((out / "needle.json").read_text())
    records = result["records"]
    assert result["settings"]["prefill_chunk"] == 256
    assert [r["target_length"] for r in records] == [512] * 9 + [1024] * 6  # 3 and 2 keys per depth
    assert {(r["target_length"], r["depth"]) for r in records} == {(n, d) for n in (512, 1024) for d in (0, 0.5, 1)}
    tokenizer = build_passkey_tokenizer()
    for r in records:
        assert 10000 <= r["key"] <= 99999
        assert abs(r["length"] - r["target_length"]) <= 12
        prompt = passkey_text(filler_repetitions(tokenizer, r["target_length"]), r["depth"], r["key"])
        assert r["length"] == len(tokenizer(prompt)["input_ids"])
        assert r["correct"] == (answer_digits(r["generated"]) == str(r["key"]))
        assert r["prefill_seconds"] > 0 and r["peak_memory_mib"] > 0
    assert sum(r["correct"] for r in records) >= 13  # the trained model: at most 2 of 15 wrong
    table = (out / "needle.md").read_text()
    assert table.count("\n| ") == 3 + 2 + 1  # header, 3 depths, overall, prefill seconds
    png = (out / "needle.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    import needle  # --merge: one table from several sweeps (here the same one twice: every cell doubles)

    needle.main(["--merge", str(out), str(out), "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "needle.json").read_text())["records"]
    assert merged == records + records
    assert "| all | **" in (tmp_path / "merged" / "needle.md").read_text()
    assert "(18)" in (tmp_path / "merged" / "needle.md").read_text()  # 512 tokens: 2 x 3 depths x 3 keys


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(tmp_path):
    """Two short runs with one seed write identical weights, and the folder loads through the Auto classes."""
    import train_passkey
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        out = tmp_path / run
        train_passkey.main([
            "--out", str(out), "--seed", "3", "--max-steps", "4", "--final-steps", "2", "--warmup", "2",
            "--tokens-per-step", "512", "--hidden-size", "32", "--threads", "1",
        ])  # fmt: skip
        weights.append(load_file(out / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a", trust_remote_code=True)
    assert model.config.attn_type_list == [0, 0, 0, 1] and model.config.rope_theta == 1e7


def test_needle_chat_prompt_is_the_user_turn_of_the_template():
    """--chat: the same haystack, rendered as the user message of the checkpoint's chat template."""
    from needle import plan_prompts
    from tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    plain, chat = (plan_prompts(tokenizer, [300], [0.5], [1], seed=5, chat=c)[0] for c in (False, True))
    assert plain["key"] == chat["key"]  # same seed, same key
    text = tokenizer.decode(plain["ids"][0])
    user_turn = f"<beginning_of_sentence>user name=user\n{text}<end_of_sentence>\n"
    expected = user_turn + "<beginning_of_sentence>ai name=assistant\n"
    assert tokenizer.decode(chat["ids"][0]) == expected
