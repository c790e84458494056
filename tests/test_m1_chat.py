"""MiniMax-M1's chat format: the tiny M1 checkpoint, its chat template against the released renderings (the spec's
worked examples, and conversations built for each rule checked against a plain-Python statement of the released
rules), reading replies with `parse_response`, the README's tool-call round trip, and generate.py's display."""

import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from jinja2 import TemplateError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import generate as gen
from chat_format import M1_RESPONSE_TEMPLATE, named_chat_templates
from helpers import render
from minimax_code import REPO_ROOT
from prepare_hub_repo import model_family, write_chat_format
from tiny_tokenizer import build_tiny_tokenizer

pytestmark = pytest.mark.smoke

GEN = "<beginning_of_sentence>ai name=assistant\n"
WEATHER = {
    "name": "get_weather",
    "description": "Get weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def text(value: str) -> list[dict]:
    return [{"type": "text", "text": value}]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(model="m1")


# ------------------------------------------------------------------------------ the spec's worked renderings (§3)


WORKED_RENDERINGS = [
    (
        [{"role": "system", "content": text("You are a helpful assistant.")}, {"role": "user", "content": text("Hi!")}],
        "<begin_of_document><beginning_of_sentence>system ai_setting=assistant\nYou are a helpful assistant."
        "<end_of_sentence>\n<beginning_of_sentence>user name=user\nHi!<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n",
    ),
    (  # the think block kept in the history
        [{"role": "user", "content": text("2+2?")},
         {"role": "assistant", "content": text("<think>\nEasy.\n</think>\n4")},
         {"role": "user", "content": text("Thanks")}],
        "<begin_of_document><beginning_of_sentence>user name=user\n2+2?<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n<think>\nEasy.\n</think>\n4<end_of_sentence>\n"
        "<beginning_of_sentence>user name=user\nThanks<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n",
    ),
]  # fmt: skip


@pytest.mark.parametrize("messages, expected", WORKED_RENDERINGS)
def test_worked_renderings(tok, messages, expected):
    assert render(tok, messages, add_generation_prompt=True) == expected


TOOL_ROUND_TRIP = (
    "<begin_of_document><beginning_of_sentence>system tool_setting=tools\nYou are provided with these tools:\n<tools>\n"
    '{"name": "get_weather", "description": "Get weather.", "parameters": {"type": "object", "properties": {"city": '
    '{"type": "string"}}}}\n</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML '
    "tags, and provide tool-name and json-object of arguments, following the format below:\n<tool_calls>\n"
    "{name: <tool-name-1>, arguments: <args-json-object-1>}\n...\n</tool_calls><end_of_sentence>\n"
    "<beginning_of_sentence>user name=user\nWeather in Paris?<end_of_sentence>\n"
    "<beginning_of_sentence>ai name=assistant\n<think>\nUse the tool.\n</think>\n<tool_calls>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls><end_of_sentence>\n'
    "<beginning_of_sentence>tool name=tools\ntool name: get_weather\ntool result: 20C\n\n<end_of_sentence>\n"
    "<beginning_of_sentence>ai name=assistant\n"
)
TOOL_CALL_TEXT = (
    "<think>\nUse the tool.\n</think>\n"
    '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls>'
)


def test_worked_rendering_tools_and_tool_role(tok):
    messages = [
        {"role": "user", "content": text("Weather in Paris?")},
        {"role": "assistant", "content": text(TOOL_CALL_TEXT)},
        {"role": "tool", "content": [{"name": "get_weather", "type": "text", "text": "20C"}]},
    ]
    assert render(tok, messages, tools=[WEATHER], add_generation_prompt=True) == TOOL_ROUND_TRIP


# --------------------------------------------------------- held-out style: the released rules stated in plain Python


def released_m1_rendering(messages, tools=None, add_generation_prompt=False) -> str:
    """The released M1 template's output for list-of-parts conversations, written from the rules of the spec (§3):
    system text hoisted and concatenated, the tools preamble, user = first part, assistant = all text parts, tool =
    one "tool name / tool result" block per part, no default system prompt."""
    dumps = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731  (transformers' tojson)
    out = "<begin_of_document>"
    system = "".join(m["content"][0]["text"] for m in messages if m["role"] == "system")
    if system:
        out += f"<beginning_of_sentence>system ai_setting=assistant\n{system}<end_of_sentence>\n"
    if tools:
        out += "<beginning_of_sentence>system tool_setting=tools\nYou are provided with these tools:\n<tools>\n"
        out += "".join(dumps(tool) + "\n" for tool in tools)
        out += (
            "</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide"
            " tool-name and json-object of arguments, following the format below:\n<tool_calls>\n{name: <tool-name-1>,"
            " arguments: <args-json-object-1>}\n...\n</tool_calls><end_of_sentence>\n"
        )
    for m in messages:
        if m["role"] == "user":
            out += f"<beginning_of_sentence>user name=user\n{m['content'][0]['text']}<end_of_sentence>\n"
        elif m["role"] == "assistant":
            body = "".join(part["text"] for part in m["content"] if part["type"] == "text")
            out += f"<beginning_of_sentence>ai name=assistant\n{body}<end_of_sentence>\n"
        elif m["role"] == "tool":
            body = "".join(f"tool name: {p['name']}\ntool result: {p['text']}\n\n" for p in m["content"])
            out += f"<beginning_of_sentence>tool name=tools\n{body}<end_of_sentence>\n"
    return out + (GEN if add_generation_prompt else "")


SNIPPETS = [
    "Hi!", "Grüße, 東京 🙂", 'quotes " and \\ backslash', "two\nlines", "  spaced  ", "{name: x}",
    "<think>\nhm\n</think>\nok",
]  # fmt: skip


def random_conversation(rng: random.Random):
    """Systems anywhere (hoisted), several text parts per assistant turn, tool turns with several results, tools
    bare or OpenAI-wrapped."""
    messages = []
    for _ in range(rng.randint(1, 6)):
        role = rng.choice(["system", "user", "user", "assistant", "tool"])
        if role == "assistant":
            content = [{"type": "text", "text": rng.choice(SNIPPETS)} for _ in range(rng.randint(1, 3))]
        elif role == "tool":
            content = [{"type": "text", "name": rng.choice(["get_weather", "now"]), "text": rng.choice(SNIPPETS)}
                       for _ in range(rng.randint(1, 3))]  # fmt: skip
        else:
            content = text(rng.choice(SNIPPETS + [""]))
        messages.append({"role": role, "content": content})
    wrapped = {"type": "function", "function": {"name": "now", "description": "Time (UTC).", "parameters": {}}}
    tools = rng.choice([None, [], [WEATHER], [wrapped, WEATHER]])
    return messages, tools


def test_matches_released_rules_on_built_conversations(tok):
    rng = random.Random(19)
    for _ in range(60):
        messages, tools = random_conversation(rng)
        prompt = rng.random() < 0.5
        expected = released_m1_rendering(messages, tools, prompt)
        assert render(tok, messages, tools=tools, add_generation_prompt=prompt) == expected, (messages, tools)


def test_each_released_rule(tok):
    sys_a, sys_b = {"role": "system", "content": text("A.")}, {"role": "system", "content": text("B.")}
    user = {"role": "user", "content": text("Q")}
    # several system turns anywhere: concatenated without separator, before everything else
    assert render(tok, [user, sys_a, user, sys_b]) == released_m1_rendering([user, sys_a, user, sys_b])
    assert "system ai_setting=assistant\nA.B.<end_of_sentence>" in render(tok, [user, sys_a, user, sys_b])
    # an empty system text and tools=[]: no turn at all; no default system prompt
    empty = {"role": "system", "content": text("")}
    assert render(tok, [empty, user], tools=[]) == (
        "<begin_of_document><beginning_of_sentence>user name=user\nQ<end_of_sentence>\n"
    )
    # the preamble's format line has no quotes, as released
    assert "{name: <tool-name-1>, arguments: <args-json-object-1>}" in render(tok, [user], tools=[WEATHER])


# ----------------------------------------------------------------- friendlier than the released template (§3 edges)


def test_plain_strings_render_like_parts(tok):
    as_parts = [{"role": "system", "content": text("S")}, {"role": "user", "content": text("U")},
                {"role": "assistant", "content": text("A")}]  # fmt: skip
    as_strings = [{**m, "content": m["content"][0]["text"]} for m in as_parts]
    assert render(tok, as_strings) == render(tok, as_parts) == released_m1_rendering(as_parts)
    tool = {"role": "tool", "name": "now", "content": "12:00"}
    assert render(tok, [tool]).endswith("tool name=tools\ntool name: now\ntool result: 12:00\n\n<end_of_sentence>\n")
    assert "tool result: {\"hour\": 12}\n" in render(tok, [{**tool, "content": {"hour": 12}}])  # a dict result


def test_every_text_part_of_a_user_turn(tok):
    # the released template keeps only the first part of a user or system turn
    messages = [{"role": "user", "content": text("one ") + text("two")}]
    assert "user name=user\none two<end_of_sentence>" in render(tok, messages)


def test_openai_tool_calls_and_reasoning_render_as_the_model_wrote_them(tok):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "Use the tool.", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
    ]  # fmt: skip
    assert render(tok, messages, tools=[WEATHER], add_generation_prompt=True) == TOOL_ROUND_TRIP
    # a call without arguments takes none
    no_arguments = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "now"}}]}
    assert render(tok, [no_arguments]).endswith(
        '\n<tool_calls>\n{"name": "now", "arguments": {}}\n</tool_calls><end_of_sentence>\n'
    )
    # arguments as a dict, content beside the calls, two calls
    messages[1] = {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}  # fmt: skip
    assert render(tok, messages[:2]).endswith(
        'ai name=assistant\nChecking.\n<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_calls><end_of_sentence>\n'
    )


def test_developer_and_function_roles(tok):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Time?"},
                {"role": "function", "name": "now", "content": "12:00"}]  # fmt: skip
    assert render(tok, messages) == (
        "<begin_of_document><beginning_of_sentence>system ai_setting=assistant\nBe brief.<end_of_sentence>\n"
        "<beginning_of_sentence>user name=user\nTime?<end_of_sentence>\n"
        "<beginning_of_sentence>tool name=tools\ntool name: now\ntool result: 12:00\n\n<end_of_sentence>\n"
    )


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "ipython", "content": "x"}], r"message 0 \(ipython\): unsupported role"),
        ([{"content": "x"}], 'message 0 has no "role"'),
        ([{"role": "user", "content": [{"type": "image"}]}], "an image part, but MiniMax-M1 reads text only"),
        ([{"role": "user", "content": [{"type": "text", "text": None}]}], "text part whose text is None"),
        ([{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}], "part of type video"),
        ([{"role": "user", "content": 7}], "content must be a string or a list of parts, got 7"),
        ([{"role": "user", "content": {"text": "hi"}}], "content must be a string or a list of parts"),
        ([{"role": "tool", "content": "20C"}], "tool result without a tool name"),
        ([{"role": "tool", "name": "now"}], r"message 0 \(tool\): a tool result without content"),
        ([{"role": "tool", "content": [{"type": "image", "name": "x"}]}], "each tool result part must be"),
        ([{"role": "assistant", "content": "x", "tool_calls": [{"function": {"arguments": {}}}]}],
         "tool call without a name"),
        ([{"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "Paris"}}]}],
         "tool call f has arguments Paris"),
        ([{"role": "assistant", "reasoning_content": "r", "content": "<think>\nr\n</think>\nx"}],
         "reasoning given twice"),
    ],
)
def test_refused_with_the_fix(tok, messages, error):
    with pytest.raises(TemplateError, match=error):
        render(tok, messages)


def test_tool_use_template_by_name(tok):
    messages = [{"role": "user", "content": "Weather?"}]
    by_name = render(tok, messages, tools=[WEATHER], chat_template="tool_use")
    assert by_name == render(tok, messages, tools=[WEATHER]) and "tool_setting=tools" in by_name
    with pytest.raises(ValueError, match="Tools should either be a JSON schema"):  # transformers' own check
        render(tok, messages, tools={"name": "f"})


# ----------------------------------------------------------------------------------------------- parse_response


def parse(tok, reply, tools=None):
    prefix = render(tok, [{"role": "user", "content": "Weather?"}], add_generation_prompt=True)
    return tok.parse_response(reply, prefix=prefix, tools=tools)


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def test_parse_thinking_and_answer(tok):
    assert parse(tok, "<think>\nEasy.\n</think>\n4<end_of_sentence>") == {
        "role": "assistant", "reasoning_content": "Easy.", "content": "4"}  # fmt: skip
    assert parse(tok, "Just text.") == {"role": "assistant", "content": "Just text."}


def test_parse_several_tool_calls_and_a_malformed_line(tok):
    reply = (
        "<think>\nTwo cities.\n</think>\nLet me check.\n<tool_calls>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "{name: get_weather, arguments: {city: Rome}}\n"  # not JSON: skipped
        '{"name": "get_weather"}\n'  # no arguments: skipped
        '{"name": "get_weather", "arguments": {"city": "Oslo", "days": [1, 2], "note": "a } b"}}\n'
        "</tool_calls><end_of_sentence>"
    )
    expected = {
        "role": "assistant",
        "reasoning_content": "Two cities.",
        "content": "Let me check.",
        "tool_calls": [call("get_weather", {"city": "Paris"}),
                       call("get_weather", {"city": "Oslo", "days": [1, 2], "note": "a } b"})],
    }  # fmt: skip
    assert parse(tok, reply) == expected
    ids = tok(reply)["input_ids"]  # from token ids, and streamed a few characters at a time: the same message
    prefix = render(tok, [{"role": "user", "content": "Weather?"}], add_generation_prompt=True)
    assert tok.parse_response(ids, prefix=tok(prefix)["input_ids"]) == expected
    stream = tok.get_response_parser(prefix=prefix)
    for start in range(0, len(reply), 3):
        stream.feed(reply[start : start + 3])
    assert stream.finalize()[0] == expected


def test_parse_edge_cases(tok):
    # calls inside the thinking are not calls; an unterminated block still gives its calls
    inside = '<think>\n<tool_calls>\n{"name": "f", "arguments": {}}\n</tool_calls>\n</think>\nNo.'
    assert parse(tok, inside) == {"role": "assistant", "content": "No.",
                                  "reasoning_content": '<tool_calls>\n{"name": "f", "arguments": {}}\n</tool_calls>'}
    assert parse(tok, '<tool_calls>\n{"name": "f", "arguments": {"x": 1}}')["tool_calls"] == [call("f", {"x": 1})]
    # a block of malformed lines only: no calls, nothing in the content
    assert parse(tok, "<tool_calls>\nnot json\n</tool_calls>") == {"role": "assistant"}
    # with the tools, arguments are cast to the declared types
    days = {"name": "forecast", "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}}}
    reply = '<tool_calls>\n{"name": "forecast", "arguments": {"days": "3"}}\n</tool_calls>'
    assert parse(tok, reply, tools=[days])["tool_calls"] == [call("forecast", {"days": 3})]


# --------------------------------------------------------------------------------------- the tiny M1 checkpoint


def test_tiny_m1_checkpoint_has_m1_identifiers(tiny_m1):
    config = json.loads((tiny_m1 / "config.json").read_text())
    assert config["model_type"] == "minimax_m1" and config["architectures"] == ["MiniMaxM1ForCausalLM"]
    assert config["rope_theta"] == 10_000_000 and isinstance(config["rope_theta"], int)
    assert "dtype" not in config and "torch_dtype" not in config
    generation = json.loads((tiny_m1 / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["temperature"], generation["top_p"]) == (True, 1.0, 0.95)
    loaded = AutoConfig.from_pretrained(tiny_m1, trust_remote_code=True)
    assert loaded.rope_theta == 10_000_000 and loaded.dtype is None
    model = AutoModelForCausalLM.from_pretrained(tiny_m1, trust_remote_code=True, dtype="auto")
    assert model.dtype == torch.float32  # the weights' dtype
    tokenizer = AutoTokenizer.from_pretrained(tiny_m1, trust_remote_code=True)
    assert tokenizer.response_template == M1_RESPONSE_TEMPLATE
    assert tokenizer("<begin_of_document>")["input_ids"] == [tokenizer.convert_tokens_to_ids("<begin_of_document>")]
    messages = [
        {"role": "user", "content": text("Weather in Paris?")},
        {"role": "assistant", "content": text(TOOL_CALL_TEXT)},
        {"role": "tool", "content": [{"name": "get_weather", "type": "text", "text": "20C"}]},
    ]
    assert render(tokenizer, messages, tools=[WEATHER], add_generation_prompt=True) == TOOL_ROUND_TRIP


def test_prepare_hub_repo_writes_the_chat_format(tiny_m1, tmp_path):
    assert model_family(tiny_m1, vl=False) == "m1"
    released = "{{ messages[0]['content'][0]['text'] }}"  # stands for the released template, inline as released
    tokenizer = AutoTokenizer.from_pretrained(tiny_m1, trust_remote_code=True)
    tokenizer.chat_template, tokenizer.response_template = released, None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": released}))
    write_chat_format(tmp_path, "m1")
    written = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert written["response_template"] == M1_RESPONSE_TEMPLATE and "chat_template" not in written
    prepared = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    assert prepared.chat_template == {**named_chat_templates("m1"), "released": released}
    assert prepared.response_template == M1_RESPONSE_TEMPLATE
    messages = [{"role": "user", "content": text("Hi!")}]
    assert render(prepared, messages, chat_template="released") == "Hi!"
    assert render(prepared, messages) == released_m1_rendering(messages)


def readme_round_trip() -> str:
    """The README's M1 tool-call round trip (the python block after its marker)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("<!-- m1-round-trip -->") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_round_trip_runs(tiny_m1):
    scope = {}
    exec(compile(readme_round_trip().replace("path/to/MiniMax-M1-80k", str(tiny_m1)), "README", "exec"), scope)
    assert scope["message"]["tool_calls"] == [call("get_weather", {"city": "Paris"})]
    assert scope["message"]["reasoning_content"] == "The user wants the weather in Paris; I will call get_weather."
    # appended as parsed, the assistant turn renders as the text the model wrote
    prompt = scope["tokenizer"].apply_chat_template(scope["messages"], tools=scope["tools"], add_generation_prompt=True,
                                                    tokenize=False)  # fmt: skip
    assert scope["reply"].removesuffix("<end_of_sentence>") + "<end_of_sentence>\n" in prompt
    tool_turn = "tool name=tools\ntool name: get_weather\ntool result: 18 C, clear\n\n<end_of_sentence>\n"
    assert prompt.endswith(tool_turn + GEN)


# --------------------------------------------------------------------------------------------------- generate.py


def printed(tokenizer, reply: str, capsys) -> tuple[str, str]:
    prompt = render(tokenizer, [{"role": "user", "content": "Weather?"}], add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    streamer = gen.reply_streamer(tokenizer, inputs)
    streamer.put(inputs["input_ids"])  # generate() sends the prompt first
    for token in tokenizer(reply)["input_ids"]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert streamer.message == tokenizer.parse_response(reply, prefix=prompt)
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_generate_shows_thinking_answer_and_tool_calls(tok, capsys):
    out, _ = printed(tok, "<think>\nEasy.\n</think>\n4<end_of_sentence>", capsys)
    assert out == "thinking: Easy.\nassistant: 4\n"
    reply = ('<think>\nUse the tool.\n</think>\n<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
             "\nbroken line\n</tool_calls><end_of_sentence>")  # fmt: skip
    out, err = printed(tok, reply, capsys)
    assert out == 'thinking: Use the tool.\ntool call: get_weather {"city": "Paris"}\n'
    assert "skipped a malformed tool-call line: 'broken line'" in err


def test_read_tools(tmp_path):
    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    assert gen.read_tools(str(tmp_path / "tools.json")) == [WEATHER]
    (tmp_path / "one.json").write_text(json.dumps(WEATHER))
    with pytest.raises(ValueError, match="must hold a JSON list of tool definitions"):
        gen.read_tools(str(tmp_path / "one.json"))
    with pytest.raises(ValueError, match="not a readable JSON file"):
        gen.read_tools(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_generate_cli_m1_with_tools(tiny_m1, tmp_path):
    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    command = [sys.executable, "scripts/generate.py", str(tiny_m1), "--prompt", "Weather in Paris?", "--tools",
               str(tmp_path / "tools.json"), "--max-new-tokens", "4"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["tools: get_weather", "user: Weather in Paris?"]
    assert lines[2].startswith(("thinking: ", "assistant: ", "tool call: "))
    tokenizer = AutoTokenizer.from_pretrained(tiny_m1, trust_remote_code=True)
    messages = [{"role": "user", "content": text("Weather in Paris?")}]
    prompt = tokenizer.apply_chat_template(messages, tools=[WEATHER], add_generation_prompt=True, tokenize=False)
    assert f"(prompt {len(tokenizer(prompt)['input_ids'])} tokens)" in result.stderr  # the tools reached the prompt
