"""Tests for the tiny MiniMax-01-style tokenizer and chat template (scripts/tiny_tokenizer.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from chat_format import named_chat_templates
from helpers import WEATHER_TOOL, render
from tiny_tokenizer import build_tiny_tokenizer, special_token_ids

# Also run on the oldest supported transformers (make test-oldest): tokenizer saving/loading and chat
# templates differ between transformers versions.
pytestmark = pytest.mark.smoke

BOS = "<beginning_of_sentence>"
EOS = "<end_of_sentence>"

SYSTEM_TURN = "<beginning_of_sentence>system ai_setting=assistant\nYou are a helpful assistant.<end_of_sentence>\n"
USER_TURN = "<beginning_of_sentence>user name=user\nWhat is the capital of France?<end_of_sentence>\n"
AI_TURN = "<beginning_of_sentence>ai name=assistant\nParis.<end_of_sentence>\n"
GEN_PROMPT = "<beginning_of_sentence>ai name=assistant\n"

PLAIN_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
LIST_MESSAGES = [
    {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
    {"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
]

WEATHER_TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# ----------------------------------------------------------------------------------------------- chat template


def test_chat_template_attached(tok):
    assert tok.chat_template == named_chat_templates("vl")


def test_plain_string_conversation(tok):
    assert render(tok, PLAIN_MESSAGES) == SYSTEM_TURN + USER_TURN + AI_TURN


def test_list_of_items_conversation(tok):
    assert render(tok, LIST_MESSAGES) == SYSTEM_TURN + USER_TURN + AI_TURN


def test_generation_prompt(tok):
    assert render(tok, PLAIN_MESSAGES[:2], add_generation_prompt=True) == SYSTEM_TURN + USER_TURN + GEN_PROMPT
    assert render(tok, LIST_MESSAGES[:2], add_generation_prompt=True) == SYSTEM_TURN + USER_TURN + GEN_PROMPT
    # no BOS is prepended: the output starts with the first turn
    assert render(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True) == (
        "<beginning_of_sentence>user name=user\nhi<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n"
    )


def test_image_items(tok):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Compare "},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
                {"type": "text", "text": " with "},
                {"type": "image", "image": "b.png"},
                {"type": "text", "text": "."},
            ],
        }
    ]
    assert render(tok, messages, add_generation_prompt=True) == (
        "<beginning_of_sentence>user name=user\n<image>Compare <image> with <image>.<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
    )


def test_tools_after_all_messages(tok):
    # Text-01's layout: system turn in place, the tool result text inserted unquoted, the tools after the last
    # message and before the generation prompt
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "tool", "name": "get_weather", "content": "rain, 4 C"},
    ]
    assert render(tok, messages, tools=[WEATHER_TOOL], add_generation_prompt=True) == (
        SYSTEM_TURN
        + "<beginning_of_sentence>user name=user\nWeather in Oslo?<end_of_sentence>\n"
        + '<beginning_of_sentence>system function_response=functions\n{"name": "get_weather", "response": rain, 4 C}'
        + "<end_of_sentence>\n"
        + "<beginning_of_sentence>system function_setting=functions\n" + WEATHER_TOOL_JSON + "<end_of_sentence>\n"
        + GEN_PROMPT
    )


def test_one_turn_per_tool(tok):
    other = {"name": "now", "parameters": {}}
    messages = [{"role": "user", "content": "hi"}]
    assert render(tok, messages, tools=[WEATHER_TOOL, other]) == (
        "<beginning_of_sentence>user name=user\nhi<end_of_sentence>\n"
        + "<beginning_of_sentence>system function_setting=functions\n" + WEATHER_TOOL_JSON + "<end_of_sentence>\n"
        + '<beginning_of_sentence>system function_setting=functions\n{"name": "now", "parameters": {}}'
        + "<end_of_sentence>\n"
    )


def test_tool_response_with_list_content(tok):
    # the text goes in as written, not JSON-quoted: its quotes stay unescaped
    messages = [{"role": "tool", "name": "now", "content": [{"type": "text", "text": '12:00 "noon"'}]}]
    assert render(tok, messages) == (
        '<beginning_of_sentence>system function_response=functions\n{"name": "now", "response": 12:00 "noon"}'
        "<end_of_sentence>\n"
    )


def test_unknown_role_raises(tok):
    with pytest.raises(Exception, match="unsupported role"):
        render(tok, [{"role": "narrator", "content": "x"}])


# ------------------------------------------------------------------------------------------------- vocabulary


def test_vocab_size_and_special_ids(tok):
    assert len(tok) == 512
    assert special_token_ids(tok) == {"bos": 0, "eos": 1, "image": 2}
    assert (tok.bos_token, tok.bos_token_id) == (BOS, 0)
    assert (tok.eos_token, tok.eos_token_id) == (EOS, 1)
    assert (tok.pad_token, tok.pad_token_id) == (EOS, 1)  # no dedicated pad token: pad with eos
    assert (tok.image_token, tok.image_token_id) == ("<image>", 2)
    assert tok.padding_side == "left"
    assert tok.add_bos_token is False
    assert tok.model_max_length >= 1_000_000


def test_without_image_token():
    tok = build_tiny_tokenizer(vocab_size=400, with_image_token=False)
    assert len(tok) == 400
    assert special_token_ids(tok) == {"bos": 0, "eos": 1}
    assert "<image>" not in tok.get_vocab()


def test_deterministic():
    assert build_tiny_tokenizer()._tokenizer.to_str() == build_tiny_tokenizer()._tokenizer.to_str()


def test_special_tokens_are_single_ids(tok):
    for token, token_id in ((BOS, 0), (EOS, 1), ("<image>", 2)):
        assert tok.convert_tokens_to_ids(token) == token_id
        assert tok(token)["input_ids"] == [token_id]
    ids = tok("look<image>here <image>")["input_ids"]
    assert ids.count(2) == 2
    assert tok.decode(ids) == "look<image>here <image>"
    assert tok.decode(ids, skip_special_tokens=True) == "lookhere "


def test_no_bos_prepended(tok):
    ids = tok("hi")["input_ids"]
    assert 0 not in ids
    assert tok.decode(ids) == "hi"
    assert tok("hi", add_special_tokens=True)["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]


def test_rendered_chat_encodes_specials_as_single_ids(tok):
    text = render(tok, PLAIN_MESSAGES, add_generation_prompt=True)
    ids = tok(text)["input_ids"]
    assert ids[0] == 0
    assert ids.count(0) == 4 and ids.count(1) == 3
    assert tok.decode(ids) == text
    ids2 = tok.apply_chat_template(PLAIN_MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(ids2["input_ids"]) == ids


def test_unicode_round_trip(tok):
    text = "Grüße aus Köln — naïve café, 東京 🚀🙂, Ελλάδα, \t tabs\nand  double  spaces."
    ids = tok(text)["input_ids"]
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == text


# ------------------------------------------------------------------------------------------- save / load / pad


_LOADER = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    texts = json.loads(sys.argv[2])
    messages = json.loads(sys.argv[3])
    out = {
        "ids": [tok(t)["input_ids"] for t in texts],
        "render": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        "template": tok.chat_template,
        "specials": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.image_token_id],
        "padding_side": tok.padding_side,
        "len": len(tok),
    }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_save_load_round_trip_fresh_process(tok, tmp_path):
    save_dir = tmp_path / "tiny_tokenizer"
    tok.save_pretrained(str(save_dir))
    assert (save_dir / "tokenizer.json").is_file()
    assert (save_dir / "tokenizer_config.json").is_file()

    texts = ["hi", "Grüße 🙂 <image> ok", render(tok, LIST_MESSAGES)]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, str(save_dir), json.dumps(texts), json.dumps(messages)],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])

    assert out["ids"] == [tok(t)["input_ids"] for t in texts]
    assert out["template"] == named_chat_templates("vl")
    assert out["render"] == (
        SYSTEM_TURN + "<beginning_of_sentence>user name=user\n<image>Describe.<end_of_sentence>\n" + GEN_PROMPT
    )
    assert out["render"] == render(tok, messages, add_generation_prompt=True)
    assert out["specials"] == [0, 1, 1, 2]
    assert out["padding_side"] == "left"
    assert out["len"] == 512


def test_left_padding(tok):
    prompts = ["hi", "Tell me a short story about the lighthouse keeper."]
    batch = tok(prompts, padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    short, long = tok(prompts[0])["input_ids"], tok(prompts[1])["input_ids"]
    assert len(long) > len(short)
    n_pad = len(long) - len(short)
    assert ids[0] == [tok.eos_token_id] * n_pad + short
    assert mask[0] == [0] * n_pad + [1] * len(short)
    assert ids[1] == long
    assert mask[1] == [1] * len(long)
    assert tok.pad_token_id == tok.eos_token_id == 1
