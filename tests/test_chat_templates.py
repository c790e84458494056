"""The MiniMax-Text-01 / VL-01 chat templates (scripts/chat_format.py) on unusual input: rendered correctly or refused
with the message and the fix, never dropped; Text-01's tool calls written and read back (`parse_response`).
MiniMax-M1's template is tested in test_m1_chat.py, the released Text-01 / VL-01 renderings in test_tokenizer.py."""

import pytest
from jinja2 import TemplateError

from chat_format import chat_template
from helpers import render
from minimax_code import load
from tiny_tokenizer import build_tiny_tokenizer

pytestmark = pytest.mark.smoke

USER = "<beginning_of_sentence>user name=user\n"
AI = "<beginning_of_sentence>ai name=assistant\n"
EOS = "<end_of_sentence>\n"


@pytest.fixture(scope="module")
def text_tok():
    return build_tiny_tokenizer(model="text")


@pytest.fixture(scope="module")
def vl_tok():
    return build_tiny_tokenizer(model="vl")


def test_one_source_per_model_differences():
    text, vl, m1 = chat_template("text"), chat_template("vl"), chat_template("m1")
    assert text.replace("MiniMax-Text-01", "MiniMax-VL-01").replace("images = false", "images = true") == vl
    assert "<begin_of_document>" in m1 and "<begin_of_document>" not in text
    with pytest.raises(ValueError, match="Unknown model 'm2'; choose one of text, vl, m1"):
        chat_template("m2")


def test_image_parts_need_the_vl_model(text_tok, vl_tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert render(vl_tok, messages) == USER + "<image>What is it?" + EOS
    with pytest.raises(TemplateError, match=r"message 0 \(user\): an image part, but MiniMax-Text-01 reads text only"):
        render(text_tok, messages)


def test_text_like_parts_all_rendered(vl_tok):
    messages = [{"role": "user", "content": [{"type": "input_text", "text": "a "}, {"type": "text", "text": "b "},
                                             {"type": "output_text", "text": "c "}, {"text": "d"}]}]  # fmt: skip
    assert render(vl_tok, messages) == USER + "a b c d" + EOS


@pytest.mark.parametrize(
    "content, error",
    [
        ([{"type": "text", "text": None}], "a text part whose text is None; give its \"text\" as a string"),
        ([{"type": "text"}], "a text part whose text is missing"),
        ([{"type": "video", "video": "clip.mp4"}], 'a content part of type video, which MiniMax-VL-01 cannot read; it '
                                                   'reads "text" and "image" parts'),
        ([{"type": "audio"}], "part of type audio"),
        ([42], "a content part must be a dict"),
        (42, "content must be a string or a list of parts, got 42"),
        ({"type": "text", "text": "hi"}, "content must be a string or a list of parts"),
        (None, "message 0 (user): no content; give it as a string or a list of parts"),
    ],
)
def test_unreadable_content_refused(vl_tok, content, error):
    with pytest.raises(TemplateError, match=error.replace("(", r"\(").replace(")", r"\)")):
        render(vl_tok, [{"role": "user", "content": content}])


def test_roles(text_tok):
    developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(text_tok, developer) == render(text_tok, as_system)
    function = [{"role": "function", "name": "now", "content": "12:00"}]
    assert render(text_tok, function) == render(text_tok, [{**function[0], "role": "tool"}]) == (
        '<beginning_of_sentence>system function_response=functions\n{"name": "now", "response": 12:00}' + EOS
    )
    with pytest.raises(TemplateError, match=r"message 1 \(ipython\): unsupported role; MiniMax-Text-01 knows system"):
        render(text_tok, [{"role": "user", "content": "x"}, {"role": "ipython", "content": "x"}])


def test_tool_result_names(text_tok):
    call = {"id": "call_7", "type": "function", "function": {"name": "now", "arguments": {}}}
    messages = [{"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_7", "content": {"time": "12:00"}}]  # fmt: skip
    assert render(text_tok, messages).endswith(
        '<beginning_of_sentence>system function_response=functions\n{"name": "now", "response": {"time": "12:00"}}'
        + EOS
    )
    with pytest.raises(TemplateError, match='a tool result without a tool name; add "name" to the message'):
        render(text_tok, [{"role": "tool", "tool_call_id": "other", "content": "12:00"}])


def test_openai_tool_calls_as_function_call_blocks(text_tok):
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
             {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]  # fmt: skip
    messages = [{"role": "user", "content": "Weather in Paris and Oslo?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": calls}]  # fmt: skip
    rendered = render(text_tok, messages)
    assert rendered == USER + "Weather in Paris and Oslo?" + EOS + AI + (
        'Checking.<function_call>```typescript\nfunctions.get_weather({"city": "Paris"})\n```'
        '<function_call>```typescript\nfunctions.get_weather({"city": "Oslo"})\n```'
    ) + EOS
    # the call text is part of what the assistant-tokens mask marks as the model's
    encoded = text_tok.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    marked = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert text_tok.decode(marked) == rendered[len(USER + "Weather in Paris and Oslo?" + EOS + AI) : -1]


def test_text01_tool_conversation_byte_for_byte(text_tok):
    # Text-01's layout: system turn in place; the call in the assistant's `{% generation %}` part; the function
    # result text inserted unquoted; every tool after the last message; then the generation prompt
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "function", "name": "get_weather", "content": [{"type": "text", "text": '{"sky": "rain", "c": 4}'}]},
    ]
    expected = (
        "<beginning_of_sentence>system ai_setting=assistant\nBe brief.<end_of_sentence>\n"
        "<beginning_of_sentence>user name=user\nWeather in Oslo?<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
        '<function_call>```typescript\nfunctions.get_weather({"city": "Oslo"})\n```<end_of_sentence>\n'
        "<beginning_of_sentence>system function_response=functions\n"
        '{"name": "get_weather", "response": {"sky": "rain", "c": 4}}<end_of_sentence>\n'
        "<beginning_of_sentence>system function_setting=functions\n"
        '{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}'
        "<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
    )
    assert render(text_tok, messages, tools=tools, add_generation_prompt=True) == expected
    # the role `tool` is the same turn as `function`
    as_tool = [*messages[:3], {**messages[3], "role": "tool"}]
    assert render(text_tok, as_tool, tools=tools, add_generation_prompt=True) == expected
    # the assistant-tokens mask marks the call and its <end_of_sentence>, nothing of the turns after it
    encoded = text_tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                           return_assistant_tokens_mask=True, return_dict=True)  # fmt: skip
    marked = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert text_tok.decode(marked) == (
        '<function_call>```typescript\nfunctions.get_weather({"city": "Oslo"})\n```<end_of_sentence>'
    )


def test_text01_refuses_reasoning(text_tok):
    with pytest.raises(TemplateError, match="MiniMax-Text-01 has no reasoning format"):
        render(text_tok, [{"role": "assistant", "content": "4", "reasoning_content": "Easy."}])


def test_tool_use_template_by_name(text_tok, vl_tok):
    tool = {"name": "now", "parameters": {}}
    messages = [{"role": "user", "content": "Time?"}]
    for tok in (text_tok, vl_tok):
        rendered = render(tok, messages, tools=[tool], chat_template="tool_use")
        assert rendered == render(tok, messages, tools=[tool])
        assert rendered == USER + "Time?" + EOS + (
            '<beginning_of_sentence>system function_setting=functions\n{"name": "now", "parameters": {}}' + EOS
        )


def test_vl_processor_uses_the_named_templates(vl_tok):
    processor = load("processing_minimax_vl_01").MiniMaxVL01Processor(
        load("image_processing_minimax_vl_01").MiniMaxVL01ImageProcessor(), vl_tok
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert processor.apply_chat_template(messages, chat_template="tool_use") == USER + "<image>What is it?" + EOS
    with pytest.raises(TemplateError, match="part of type video"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}])


# ------------------------------------------------------------------------------- Text-01's response template


def parse(tok, reply):
    prefix = render(tok, [{"role": "user", "content": "Weather?"}], add_generation_prompt=True)
    return tok.parse_response(reply, prefix=prefix)


def test_parse_text01_function_calls(text_tok):
    reply = ('Checking.<function_call>```typescript\nfunctions.get_weather({"city": "Paris"})\n```'
             "<function_call>```typescript\nfunctions.now({})\n```<end_of_sentence>")  # fmt: skip
    assert parse(text_tok, reply) == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "now", "arguments": {}}},
        ],
    }
    # arguments that are not JSON stay as written (a string), not dropped
    odd = parse(text_tok, "<function_call>```typescript\nfunctions.f(city=Paris)\n```")
    as_written = {"type": "function", "function": {"name": "f", "arguments": "city=Paris"}}
    assert odd == {"role": "assistant", "tool_calls": [as_written]}
    assert parse(text_tok, "Paris is sunny.<end_of_sentence>") == {"role": "assistant", "content": "Paris is sunny."}


def test_text01_calls_render_and_parse_back(text_tok):
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Köln", "days": 2}}}]
    rendered = render(text_tok, [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "",
                                                                           "tool_calls": calls}])  # fmt: skip
    reply = rendered.split(AI, 1)[1].removesuffix("\n")
    assert parse(text_tok, reply) == {"role": "assistant", "tool_calls": calls}
