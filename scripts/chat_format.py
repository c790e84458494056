"""The chat formats of the MiniMax-01 family, as Jinja chat templates and transformers response templates.

One template source serves the three models; what differs is a small per-model setting and the body:

* MiniMax-Text-01 and MiniMax-VL-01 share one body (`MINIMAX_01_BODY`); VL-01 renders image parts as `<image>`,
  Text-01 refuses them.
* MiniMax-M1 has its own body (`M1_BODY`): for list-of-parts conversations it renders byte for byte what the
  released M1 template renders (`<begin_of_document>`, every system turn hoisted to the top, the tools preamble,
  the `tool` role, earlier think blocks kept verbatim).

Where the released templates fail or drop content without a word, these render it correctly or stop with an error
that names the message and the fix (`raise_exception`); nothing is dropped:

* plain-string content (besides lists of parts); `None` content of an assistant message that only calls tools;
* text-like parts (`text`, `input_text`, `output_text`) all rendered, in order; a text part whose text is not a
  string, content that is a number or a dict (except a tool result), and parts of other types (`video`, `audio`,
  an image for a text-only model) are refused;
* an assistant's OpenAI-style `tool_calls` field, rendered in the model's own tool-call format (M1: a
  `<tool_calls>` block of `{"name": ..., "arguments": ...}` lines; Text-01: `<function_call>` blocks), and its
  `reasoning_content` (M1: a `<think>` block, as the model wrote it);
* the `developer` role read as `system`, the legacy `function` role as `tool`; any other unknown role refused;
* a tool result's name taken from its content part, its message, or the earlier assistant tool call with the same
  `tool_call_id`; refused when none gives one.

The tokenizers carry the template under the names "default" and "tool_use", so `chat_template="tool_use"` selects
it (a name the tokenizer does not know would be read by transformers as template source).

`RESPONSE_TEMPLATES` hold the transformers `response_template` of each format: `tokenizer.parse_response(...)` and
`transformers serve` read a reply into `reasoning_content`, `content` and OpenAI-style `tool_calls` with it.
"""

import json

# ----------------------------------------------------------------------------------------------- chat templates

# Shared macros. `images` (set per model in the header) says whether image parts become `<image>`.
MACROS = r"""
{%- macro where(message, index) -%}
{{- 'message ' ~ index ~ ' (' ~ message['role'] ~ ')' -}}
{%- endmacro -%}
{%- macro render_content(message, index) -%}
{%- set content = message['content'] -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is none or content is not defined -%}
{%- if message['role'] != 'assistant' -%}
{{- raise_exception(where(message, index) + ': no content; give it as a string or a list of parts (only an assistant message that calls tools may have none)') -}}
{%- endif -%}
{%- elif content is sequence and content is not mapping -%}
{%- for part in content -%}
{%- if part is string -%}
{{- part -}}
{%- elif part is not mapping -%}
{{- raise_exception(where(message, index) + ': a content part must be a dict like {"type": "text", "text": ...}, got ' ~ part) -}}
{%- elif part['type'] in ['text', 'input_text', 'output_text'] or (part['type'] is not defined and 'text' in part) -%}
{%- if part['text'] is string -%}
{{- part['text'] -}}
{%- else -%}
{{- raise_exception(where(message, index) + ': a ' ~ (part['type'] if part['type'] is defined else 'text') ~ ' part whose text is ' ~ (part['text'] if part['text'] is defined else 'missing') ~ '; give its "text" as a string, or leave the part out') -}}
{%- endif -%}
{%- elif part['type'] in ['image', 'image_url'] or (part['type'] is not defined and ('image' in part or 'image_url' in part)) -%}
{%- if images -%}
{{- '<image>' -}}
{%- else -%}
{{- raise_exception(where(message, index) + ': an image part, but ' + model + ' reads text only; use MiniMax-VL-01 for images, or leave the part out') -}}
{%- endif -%}
{%- else -%}
{{- raise_exception(where(message, index) + ': a content part of type ' ~ (part['type'] if part['type'] is defined else 'missing') ~ ', which ' + model + ' cannot read; it reads "text"' + (' and "image"' if images else '') + ' parts') -}}
{%- endif -%}
{%- endfor -%}
{%- else -%}
{{- raise_exception(where(message, index) + ': content must be a string or a list of parts, got ' ~ content) -}}
{%- endif -%}
{%- endmacro -%}
{%- macro reasoning_of(message) -%}
{#- the first of the names transformers accepts for a message's reasoning -#}
{%- set found = namespace(text='') -%}
{%- for key in ['reasoning_content', 'reasoning', 'thinking'] -%}
{%- if not found.text and message[key] is string -%}
{%- set found.text = message[key] -%}
{%- endif -%}
{%- endfor -%}
{{- found.text -}}
{%- endmacro -%}
{%- macro call_arguments(call, message, index) -%}
{#- the arguments, as JSON text, of an OpenAI-style call {"function": {...}} or a bare {"name", "arguments"} -#}
{%- set function = call['function'] if call is mapping and call['function'] is mapping else call -%}
{%- if function is not mapping or function['name'] is not string -%}
{{- raise_exception(where(message, index) + ': a tool call without a name; give each call as {"type": "function", "function": {"name": ..., "arguments": {...}}}') -}}
{%- elif function['arguments'] is not defined or function['arguments'] is none -%}
{{- '{}' -}}
{%- elif function['arguments'] is mapping -%}
{{- function['arguments'] | tojson -}}
{%- elif function['arguments'] is string and function['arguments'] | trim | first == '{' and function['arguments'] | trim | last == '}' -%}
{{- function['arguments'] | trim -}}
{%- else -%}
{{- raise_exception(where(message, index) + ': tool call ' + function['name'] + ' has arguments ' ~ function['arguments'] ~ '; give them as a dict or a JSON object string') -}}
{%- endif -%}
{%- endmacro -%}
{%- macro call_name(call) -%}
{#- the function name of a call already checked by call_arguments -#}
{{- (call['function'] if call['function'] is mapping else call)['name'] -}}
{%- endmacro -%}
{%- macro tool_name(message, part, index) -%}
{%- set found = namespace(name=none) -%}
{%- if part is mapping and part['name'] is string -%}
{%- set found.name = part['name'] -%}
{%- elif message['name'] is string -%}
{%- set found.name = message['name'] -%}
{%- elif message['tool_call_id'] is defined -%}
{%- for earlier in messages if earlier['role'] == 'assistant' and earlier['tool_calls'] is sequence -%}
{%- for call in earlier['tool_calls'] if call is mapping and call['id'] == message['tool_call_id'] -%}
{%- set function = call['function'] if call['function'] is mapping else call -%}
{%- set found.name = function['name'] -%}
{%- endfor -%}
{%- endfor -%}
{%- endif -%}
{%- if found.name is string -%}
{{- found.name -}}
{%- else -%}
{{- raise_exception(where(message, index) + ': a tool result without a tool name; add "name" to the message (or to each content part), or a "tool_call_id" equal to the "id" of the earlier assistant tool call') -}}
{%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
{%- if message['role'] is not string -%}
{{- raise_exception('message ' ~ loop.index0 ~ ' has no "role"; give each message one: system, user, assistant or tool') -}}
{%- elif message['role'] not in ['system', 'developer', 'user', 'assistant', 'tool', 'function'] -%}
{{- raise_exception(where(message, loop.index0) + ': unsupported role; ' + model + ' knows system (or developer), user, assistant and tool (or function)') -}}
{%- endif -%}
{%- endfor -%}
"""

# MiniMax-Text-01 / VL-01, laid out as the chat template released with MiniMax-Text-01 lays it out: no
# <begin_of_document>; system turns in place; a tool (or function) result as
# `<beginning_of_sentence>system function_response=functions\n{"name": "<name>", "response": <result>}<end_of_sentence>\n`
# with the result text inserted as it is, not JSON-quoted (the released template inserts its first text part; this
# one joins all text parts, and writes a dict result, an extension, as JSON); the tools after all messages, one
# `<beginning_of_sentence>system function_setting=functions\n<tool as JSON><end_of_sentence>\n` each, then the
# generation prompt. Assistant text and its closing <end_of_sentence> are the `{% generation %}` part (TRL's
# assistant-only loss reads it).
# Tool calls: `<function_call>` and a typescript block `functions.NAME({...})` per call (Text-01's function-call
# format; the whitespace around the block is this template's choice).
MINIMAX_01_BODY = r"""
{%- macro assistant_text(message, index) -%}
{%- if reasoning_of(message) -%}
{{- raise_exception(where(message, index) + ': ' + model + ' has no reasoning format; leave out "reasoning_content", or put it in the content') -}}
{%- endif -%}
{{- render_content(message, index) -}}
{%- for call in message['tool_calls'] or [] -%}
{%- set arguments = call_arguments(call, message, index) -%}
{{- '<function_call>```typescript\nfunctions.' + call_name(call) + '(' + arguments + ')\n```' -}}
{%- endfor -%}
{%- endmacro -%}
{%- for message in messages -%}
{%- set role = {'developer': 'system', 'function': 'tool'}.get(message['role'], message['role']) -%}
{%- if role == 'system' -%}
{{- '<beginning_of_sentence>system ai_setting=assistant\n' + render_content(message, loop.index0) + '<end_of_sentence>\n' -}}
{%- elif role == 'user' -%}
{{- '<beginning_of_sentence>user name=user\n' + render_content(message, loop.index0) + '<end_of_sentence>\n' -}}
{%- elif role == 'assistant' -%}
{{- '<beginning_of_sentence>ai name=assistant\n' -}}
{%- generation -%}
{{- assistant_text(message, loop.index0) + '<end_of_sentence>' -}}
{%- endgeneration -%}
{{- '\n' -}}
{%- elif role == 'tool' -%}
{%- set response = message['content'] | tojson if message['content'] is mapping else render_content(message, loop.index0) -%}
{%- set name = tool_name(message, none, loop.index0) -%}
{{- '<beginning_of_sentence>system function_response=functions\n{"name": ' + (name | tojson) + ', "response": ' + response + '}<end_of_sentence>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- for tool in tools or [] -%}
{{- '<beginning_of_sentence>system function_setting=functions\n' + (tool | tojson) + '<end_of_sentence>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<beginning_of_sentence>ai name=assistant\n' -}}
{%- endif -%}
"""

# MiniMax-M1, as its released template renders it; the preamble's `{name: <tool-name-1>, ...}` has no quotes there
# either. An assistant's `reasoning_content` becomes `<think>\n...\n</think>\n` before its text, and
# its `tool_calls` a `<tool_calls>` block after it: the text the model wrote, which parse_response reads back.
M1_BODY = r"""
{%- macro assistant_text(message, index) -%}
{%- set text = render_content(message, index) -%}
{%- set reasoning = reasoning_of(message) -%}
{%- if reasoning and '<think>' in text -%}
{{- raise_exception(where(message, index) + ': reasoning given twice, as "reasoning_content" and as a <think> block in the content; keep one') -}}
{%- elif reasoning -%}
{%- set text = '<think>\n' + reasoning + '\n</think>\n' + text -%}
{%- endif -%}
{{- text -}}
{%- if message['tool_calls'] -%}
{{- ('\n' if text and not text.endswith('\n') else '') + '<tool_calls>\n' -}}
{%- for call in message['tool_calls'] -%}
{%- set arguments = call_arguments(call, message, index) -%}
{{- '{"name": ' + (call_name(call) | tojson) + ', "arguments": ' + arguments + '}\n' -}}
{%- endfor -%}
{{- '</tool_calls>' -}}
{%- endif -%}
{%- endmacro -%}
{%- macro tool_results(message, index) -%}
{%- set content = message['content'] -%}
{%- if content is not defined or content is none -%}
{{- raise_exception(where(message, index) + ': a tool result without content; give the result as a string or a list of text parts') -}}
{%- elif content is string or content is mapping -%}
{{- 'tool name: ' + tool_name(message, none, index) + '\ntool result: ' + (content if content is string else content | tojson) + '\n\n' -}}
{%- elif content is sequence -%}
{%- for part in content -%}
{%- if part is not mapping or (part['type'] is defined and part['type'] not in ['text', 'input_text', 'output_text']) or part['text'] is not string -%}
{{- raise_exception(where(message, index) + ': each tool result part must be {"type": "text", "name": ..., "text": "..."}, got ' ~ part) -}}
{%- endif -%}
{{- 'tool name: ' + tool_name(message, part, index) + '\ntool result: ' + part['text'] + '\n\n' -}}
{%- endfor -%}
{%- else -%}
{{- raise_exception(where(message, index) + ': a tool result must be a string, a dict or a list of text parts, got ' ~ content) -}}
{%- endif -%}
{%- endmacro -%}
{{- '<begin_of_document>' -}}
{%- set system = namespace(text='') -%}
{%- for message in messages -%}
{%- if message['role'] in ['system', 'developer'] -%}
{%- set system.text = system.text + render_content(message, loop.index0) -%}
{%- endif -%}
{%- endfor -%}
{%- if system.text -%}
{{- '<beginning_of_sentence>system ai_setting=assistant\n' + system.text + '<end_of_sentence>\n' -}}
{%- endif -%}
{%- if tools -%}
{{- '<beginning_of_sentence>system tool_setting=tools\nYou are provided with these tools:\n<tools>\n' -}}
{%- for tool in tools -%}
{{- (tool | tojson) + '\n' -}}
{%- endfor -%}
{{- '</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide tool-name and json-object of arguments, following the format below:\n<tool_calls>\n{name: <tool-name-1>, arguments: <args-json-object-1>}\n...\n</tool_calls><end_of_sentence>\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}
{{- '<beginning_of_sentence>user name=user\n' + render_content(message, loop.index0) + '<end_of_sentence>\n' -}}
{%- elif message['role'] == 'assistant' -%}
{{- '<beginning_of_sentence>ai name=assistant\n' -}}
{%- generation -%}
{{- assistant_text(message, loop.index0) + '<end_of_sentence>' -}}
{%- endgeneration -%}
{{- '\n' -}}
{%- elif message['role'] in ['tool', 'function'] -%}
{{- '<beginning_of_sentence>tool name=tools\n' + tool_results(message, loop.index0) + '<end_of_sentence>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<beginning_of_sentence>ai name=assistant\n' -}}
{%- endif -%}
"""

# model -> (display name, reads images, body)
MODELS = {
    "text": ("MiniMax-Text-01", False, MINIMAX_01_BODY),
    "vl": ("MiniMax-VL-01", True, MINIMAX_01_BODY),
    "m1": ("MiniMax-M1", False, M1_BODY),
}


def chat_template(model: str) -> str:
    """The Jinja chat template of `model` ("text", "vl" or "m1")."""
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    name, images, body = MODELS[model]
    header = (
        f"{{#- {name} chat format: written from the format's description (scripts/chat_format.py). -#}}\n"
        f"{{%- set model = {json.dumps(name)} -%}}\n{{%- set images = {str(images).lower()} -%}}"
    )
    return header + MACROS + body


def named_chat_templates(model: str) -> dict:
    """What a tokenizer of `model` carries: the template as "default" and as "tool_use"."""
    template = chat_template(model)
    return {"default": template, "tool_use": template}


# ------------------------------------------------------------------------------------------ response templates

# The start of the reply being parsed: the generation prompt (the prompt's last one, when a prefix is given).
REPLY_START = "<beginning_of_sentence>ai name=assistant\n"
# The reply ends at <end_of_sentence>; whitespace before it stays out of the content.
CONTENT_UNTIL_EOS = {"close_pattern": r"\s*<end_of_sentence>", "content": "text", "repeats": True, "join": "\n"}

# A JSON object line {"name": "...", "arguments": {...}} (any member order, other members allowed), matched by
# recursion (the `regex` module transformers uses), so that a malformed line never opens a tool call.
_JSON_GRAMMAR = (
    r"(?(DEFINE)"
    r'(?<str>"(?>[^"\\\x00-\x1f]++|\\(?>["\\/bfnrt]|u[0-9a-fA-F]{4}))*+")'
    r"(?<num>-?(?>0|[1-9][0-9]*+)(?>\.[0-9]++)?+(?>[eE][+-]?+[0-9]++)?+)"
    r"(?<val>[ \t]*+(?>(?&str)|(?&num)|(?&obj)|(?&arr)|true|false|null)[ \t]*+)"
    r"(?<mem>[ \t]*+(?&str)[ \t]*+:(?&val))"
    r"(?<obj>\{(?>(?&mem)(?>,(?&mem))*+|[ \t]*+)\})"
    r"(?<arr>\[(?>(?&val)(?>,(?&val))*+|[ \t]*+)\])"
    r")"
)
_CALL_LINE = (
    r"[ \t]*\{"
    r'(?=(?:(?&mem),)*?[ \t]*"name"[ \t]*:[ \t]*(?&str)[ \t]*[,}])'
    r'(?=(?:(?&mem),)*?[ \t]*"arguments"[ \t]*:[ \t]*(?&obj)[ \t]*[,}])'
    r"(?&mem)(?>,(?&mem))*+\}[ \t]*(?:\n|</tool_calls>|\Z)"
)
_IN_BLOCK = r"(?<=<tool_calls>(?:(?!</tool_calls>).)*)"  # after an opening tag not yet closed
# A line start inside a <tool_calls> block: right after its opening tag, or a newline while the block is open.
_M1_LINE_START = r"(?:\s*<tool_calls>[ \t]*\n?|\n" + _IN_BLOCK + ")"
# A call ends at its newline, or at the closing tag right after its closing brace. Other lines end at their newline
# or take the closing tag with them; a bare closing tag is such a line.
_M1_CALL_END = r"(?=\n)|(?<=\})(?=[ \t]*</tool_calls>)"
_M1_LINE_END = r"\s*</tool_calls>|(?=\n)"

M1_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": REPLY_START,
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
        # one region per line of a <tool_calls> block that holds a call; the parsed object is the function
        "tool_calls": {
            "open_pattern": _M1_LINE_START + r"(?=" + _CALL_LINE + r")" + _JSON_GRAMMAR,
            "close_pattern": _M1_CALL_END,
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        # any other line of the block (not JSON, or no name / arguments object): skipped, as vLLM's parser does;
        # parsed to "" and so left out of the message
        "skipped_tool_call_line": {
            "open_pattern": r"(?:" + _M1_LINE_START + "|" + _IN_BLOCK + r"(?=[ \t]*</tool_calls>))(?!" + _CALL_LINE
            + r")" + _JSON_GRAMMAR,
            "close_pattern": _M1_LINE_END,
            "content": "text",
            "transform": "",
        },
        "content": CONTENT_UNTIL_EOS,
    },
}

# Text-01: `<function_call>```typescript\nfunctions.NAME({...})\n```` per call. Arguments that are not JSON are kept
# as the model wrote them (a string), so that nothing is lost.
MINIMAX_01_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": REPLY_START,
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<function_call>\s*```typescript\s*functions\.(?P<name>[A-Za-z_][\w.\-]*)\(",
            "close_pattern": r"\)\s*```",
            "repeats": True,
            "content": "json",
            "content_args": {"allow_non_json": True},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": CONTENT_UNTIL_EOS,
    },
}

RESPONSE_TEMPLATES = {
    "text": MINIMAX_01_RESPONSE_TEMPLATE,
    "vl": MINIMAX_01_RESPONSE_TEMPLATE,
    "m1": M1_RESPONSE_TEMPLATE,
}
