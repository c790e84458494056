"""transformers' own server (scripts/serve.py) answering a real OpenAI client, on tiny checkpoints.

Each server runs in a subprocess on a free loopback port. Greedy answers (`temperature: 0`) must equal `generate()`
on the same chat template, run here in the test process: the non-streamed text is the decoded tokens, the streamed
deltas joined are what the tokenizers' incremental decoder (`DecodeStream`) makes of the same tokens, and the token
counts agree. Those checkpoints are served without a `response_template` (the text passes through as decoded). The
tiny M1 checkpoint's own `response_template` turns a reply with thinking and a tool call (forced through the
request's `generation_config`) into `reasoning_content`, `content` and OpenAI `tool_calls`, streamed or not.
"""

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import NamedTuple

import pytest
import torch
from PIL import Image

import serve
from helpers import WEATHER_TOOL, random_image
from minimax_code import REPO_ROOT

openai = pytest.importorskip("openai", reason='serving needs `pip install "transformers[serving]"`')

SERVE = REPO_ROOT / "scripts" / "serve.py"
START_TIMEOUT_S = 420  # imports, the model's process and the weights, on a loaded 2-core machine
REQUEST_TIMEOUT_S = 300
MAX_NEW_TOKENS = 12
TEXT_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about lightning attention."},
]


class Served(NamedTuple):
    client: "openai.OpenAI"
    model: str  # the name the server answers to: the checkpoint as given on its command line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint, log_path):
    """Starts scripts/serve.py on CHECKPOINT, waits for /health, yields a Served; kills the server after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, str(SERVE), str(checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(server, port, log_path)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0
        )
        yield Served(client, model=str(checkpoint))
    finally:
        server.terminate()  # its model's process exits with it
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_healthy(server, port, log_path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(1)
    pytest.fail(f"the server did not answer /health in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def greedy_reference(model, inputs) -> list[int]:
    """The tokens generate() answers with (the checkpoint's generation config: eos stops it)."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def incremental_text(tokenizer, ids: list[int]) -> str:
    """What a streaming decoder emits for IDS (a trailing incomplete UTF-8 sequence is held back, not guessed)."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(skip_special_tokens=True)
    return "".join(piece for piece in (stream.step(tokenizer._tokenizer, i) for i in ids) if piece is not None)


def ask(served, messages, **kwargs):
    """A greedy chat completion request."""
    settings = {"temperature": 0, "max_tokens": MAX_NEW_TOKENS, **kwargs}
    return served.client.chat.completions.create(model=served.model, messages=messages, **settings)


class Streamed(NamedTuple):
    text: str  # the content deltas joined
    reasoning: str  # the reasoning_content deltas joined
    tool_calls: list
    usage: object
    finish_reason: str


def ask_streaming(served, messages, **kwargs) -> Streamed:
    chunks = list(ask(served, messages, stream=True, stream_options={"include_usage": True}, **kwargs))
    deltas = [choice.delta for chunk in chunks for choice in chunk.choices]
    finish = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason is not None]
    assert len(finish) == 1 and chunks[-1].usage is not None
    return Streamed(
        text="".join(delta.content or "" for delta in deltas),
        reasoning="".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas),
        tool_calls=[call for delta in deltas for call in (delta.tool_calls or [])],
        usage=chunks[-1].usage,
        finish_reason=finish[0],
    )


def assert_served_like_generate(served, messages, tokenizer, prompt_ids, expected_ids):
    assert expected_ids, "the reference generated nothing"
    answer = ask(served, messages)
    assert answer.choices[0].message.content == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.completion_tokens == len(expected_ids)

    streamed = ask_streaming(served, messages)
    assert streamed.text == incremental_text(tokenizer, expected_ids) and not streamed.tool_calls
    assert streamed.usage.completion_tokens == len(expected_ids)
    assert streamed.finish_reason == answer.choices[0].finish_reason


# ------------------------------------------------------------------------------------------------------------------
# Text-01
# ------------------------------------------------------------------------------------------------------------------


def without_response_template(checkpoint) -> None:
    """Serve the decoded text as it is: no response parser between generate() and the answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer.response_template = None
    tokenizer.save_pretrained(checkpoint)


def load_reference(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True, dtype="auto").eval()


@pytest.mark.slow
def test_text_server_answers_like_generate(tiny_text, tmp_path):
    from transformers import AutoTokenizer

    checkpoint = shutil.copytree(tiny_text, tmp_path / "tiny-text")
    without_response_template(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    inputs = tokenizer.apply_chat_template(
        TEXT_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    expected = greedy_reference(load_reference(checkpoint), inputs)
    with running_server(checkpoint, tmp_path / "server.log") as served:
        assert_served_like_generate(served, TEXT_MESSAGES, tokenizer, inputs["input_ids"][0], expected)


# ------------------------------------------------------------------------------------------------------------------
# VL-01: the image as a data URL
# ------------------------------------------------------------------------------------------------------------------


def data_url(image: Image.Image) -> str:
    png = io.BytesIO()
    image.save(png, format="PNG")  # lossless: the server decodes the very pixels
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


@pytest.mark.slow
def test_vl_server_answers_like_generate_with_a_data_url_image(tiny_vl, tmp_path):
    from transformers import AutoProcessor

    checkpoint = shutil.copytree(tiny_vl, tmp_path / "tiny-vl")
    without_response_template(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    image = random_image(40, 30)
    question = {"type": "text", "text": "What is in this picture?"}
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}, question]}]
    # The reference: the template with an image placeholder, and the PIL image given to the processor directly
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, question]}], add_generation_prompt=True
    )
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum() > 576  # the image's tokens are in the prompt
    expected = greedy_reference(load_reference(checkpoint), inputs)
    with running_server(checkpoint, tmp_path / "server.log") as served:
        assert_served_like_generate(served, messages, processor.tokenizer, inputs["input_ids"][0], expected)


# ------------------------------------------------------------------------------------------------------------------
# Tool calls through the tokenizer's response_template
# ------------------------------------------------------------------------------------------------------------------

# An M1 reply: its thinking, a sentence, then a <tool_calls> block with one JSON line per call
M1_REPLY = (
    "<think>\nThe user wants the weather; I will call get_weather.\n</think>\nLet me check.\n<tool_calls>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls>'
)


def forcing_sequence_bias(prompt_ids: list[int], answer_ids: list[int]) -> list:
    """A `sequence_bias` under which greedy decoding writes ANSWER_IDS after PROMPT_IDS: each answer token gets
    +100 after the n tokens before it, n the shortest context that tells every answer position apart."""
    ids = prompt_ids + answer_ids
    starts = range(len(prompt_ids), len(ids))
    n = next(n for n in range(1, len(prompt_ids)) if len({tuple(ids[i - n : i]) for i in starts}) == len(starts))
    return [[ids[i - n : i + 1], 100.0] for i in starts]


@pytest.mark.slow
def test_m1_thinking_and_tool_calls_come_back_parsed_by_its_response_template(tiny_m1, tmp_path):
    from transformers import AutoTokenizer

    # tiny_m1's architectures is MiniMaxM1ForCausalLM: the Text-01 class
    tokenizer = AutoTokenizer.from_pretrained(tiny_m1, trust_remote_code=True)
    assert tokenizer.response_template is not None  # M1's, which the server reads

    messages = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL], add_generation_prompt=True, return_dict=True)
    reply_ids = tokenizer.encode(M1_REPLY, add_special_tokens=False) + [tokenizer.eos_token_id]
    forced = {"generation_config": json.dumps({"sequence_bias": forcing_sequence_bias(prompt["input_ids"], reply_ids)})}
    request = dict(tools=[WEATHER_TOOL], max_tokens=len(reply_ids) + 4, extra_body=forced)

    with running_server(tiny_m1, tmp_path / "server.log") as served:
        answer = ask(served, messages, **request)
        streamed = ask_streaming(served, messages, **request)

    choice = answer.choices[0]
    assert answer.usage.completion_tokens == len(reply_ids)  # the forcing held: the reply is M1_REPLY
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    assert choice.message.reasoning_content == "The user wants the weather; I will call get_weather."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    assert streamed.finish_reason == "tool_calls" and streamed.usage.completion_tokens == len(reply_ids)
    # transformers' streaming parser sends the newlines around the thinking and the answer; the whole-reply parse
    # strips them
    assert streamed.reasoning.strip() == choice.message.reasoning_content
    assert streamed.text.strip() == choice.message.content
    [streamed_call] = streamed.tool_calls
    assert streamed_call.function.name == "get_weather"
    assert json.loads(streamed_call.function.arguments) == {"city": "Paris"}


# ------------------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------------------


def test_serve_passes_transformers_options_through_and_refuses_continuous_batching():
    assert serve.split_command_line(["ckpt", "--port", "9000", "--dtype", "bfloat16"]) == (
        "ckpt", ["--port", "9000", "--dtype", "bfloat16"]
    )
    with pytest.raises(SystemExit, match="Invalid layer type: linear_attention"):
        serve.split_command_line(["ckpt", "--continuous-batching"])
    with pytest.raises(SystemExit, match="usage: python scripts/serve.py CHECKPOINT"):
        serve.split_command_line(["--port", "9000"])
