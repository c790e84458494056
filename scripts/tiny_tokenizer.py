"""A tiny, offline, deterministic stand-in for the MiniMax-01 tokenizer.

The released MiniMax-Text-01 / MiniMax-VL-01 tokenizer is a byte-level BPE with ~200k ids. For tests and
tiny random checkpoints we only need something with the same *shape of behaviour*:

* byte-level BPE, so any text (any unicode) round-trips through encode/decode;
* the special tokens ``<beginning_of_sentence>`` (bos), ``<end_of_sentence>`` (eos) and ``<image>``, each a
  single id that is never split;
* no BOS prepended by ``tokenizer(text)`` (``add_bos_token`` is false): the chat template writes every
  ``<beginning_of_sentence>`` itself;
* the model's chat format (scripts/chat_format.py) as ``chat_template``, named "default" and "tool_use", and its
  ``response_template`` for ``tokenizer.parse_response``. MiniMax-M1's tokenizer adds ``<begin_of_document>`` (which
  its template writes first) and ``<end_of_document>`` (unk), as released.

Padding: the released tokenizer has no dedicated pad token. For left-padded batching this tokenizer sets
``pad_token = <end_of_sentence>`` (so ``pad_token_id == eos_token_id``) and ``padding_side = "left"``. Padded
positions are masked out by ``attention_mask``; the model must rely on the mask, not on the pad id.

Special-token ids of the tiny tokenizer: the specials are trained in first, so ``<beginning_of_sentence>`` = 0,
``<end_of_sentence>`` = 1 and ``<image>`` = 2 (VL-01) or ``<begin_of_document>`` = 2, ``<end_of_document>`` = 3
(M1); byte tokens and merges follow. Use :func:`special_token_ids` rather than hard-coding them.

Usage::

    python scripts/tiny_tokenizer.py OUT_DIR [--vocab-size 512] [--model vl|text|m1]
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from cli_args import positive_int

from chat_format import RESPONSE_TEMPLATES, named_chat_templates

BOS_TOKEN = "<beginning_of_sentence>"
EOS_TOKEN = "<end_of_sentence>"
IMAGE_TOKEN = "<image>"
# MiniMax-M1's template starts every conversation with <begin_of_document>; <end_of_document> is its unk token.
DOCUMENT_TOKENS = ["<begin_of_document>", "<end_of_document>"]

# Large enough for any sequence the model family handles (10,240,000 is the largest context length quoted
# for the family); the model's own config bounds the real limit.
MODEL_MAX_LENGTH = 10_240_000

# Built-in training text (original prose written for this file). Byte-level BPE merges are learned from it.
_TRAINING_TEXT = """\
The lighthouse on the northern cape was built of grey stone more than a century ago. Every evening the keeper
climbed the spiral stairs, trimmed the wick, wound the clockwork and watched the beam sweep across the water.
Ships that passed in the night never saw him, but they counted the flashes and knew where the rocks were.

A small language model reads text one token at a time. It does not see letters or words the way a person does;
it sees numbers, and each number stands for a piece of text that appeared often enough in its training data
to earn a place in the vocabulary. Common words become single pieces, while rare words are spelled out from
smaller parts, down to single bytes when nothing larger fits.

The user asked the assistant to summarise the weather report. The assistant answered that the morning would
be cold and clear, that clouds would gather in the afternoon, and that light rain was expected after sunset.
The user thanked the assistant and asked for a short poem about the rain, and the assistant wrote four lines.

In the market square there were stalls selling bread, cheese, apples, honey and fresh flowers. Children ran
between the tables while their parents compared prices and talked about the harvest. At noon the bell in the
old tower rang twelve times, and the traders began to pack their baskets for the long walk home.

System settings describe how the assistant should behave: be helpful, be honest, answer the question that was
asked, and say so plainly when the answer is not known. A function can be called with a name and a set of
arguments; the function returns a response, and the assistant uses that response to write its reply.

Numbers appear in text as well: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 100, 2025, 3.14 and 1,000,000. Dates
such as 12 March 1998 and times such as 07:45 are split into small pieces, and so are symbols like #, $, %, &,
(, ), [, ], {, }, <, >, /, \\, |, ~, ^, *, +, = and the quotation marks " and '.

She opened the window and listened. Far away a train was crossing the bridge, its wheels beating a steady
rhythm on the rails. The river below was high after the storm, brown and fast, carrying branches and leaves
towards the sea. By morning the water would be calm again, and the fishermen would return to their boats.
"""


def _training_corpus() -> list[str]:
    return [line for line in _TRAINING_TEXT.splitlines() if line.strip()]


def build_tiny_tokenizer(
    vocab_size: int = 512, with_image_token: bool = True, model: str | None = None
) -> PreTrainedTokenizerFast:
    """Build the tiny MiniMax-style tokenizer (offline, deterministic) of `model`: "vl" (the default with
    `with_image_token`), "text" (the default without) or "m1".

    A byte-level BPE is trained in-process on the built-in text so that the total number of ids, special
    tokens included, is ``vocab_size`` (the training text is large enough for a few thousand ids; with a larger
    request the trainer stops when no pair is left to merge). Special tokens come first: bos = 0, eos = 1, then
    ``<image>`` (VL-01) or the document tokens (M1).
    """
    model = model or ("vl" if with_image_token else "text")
    with_image_token = model == "vl"
    specials = [BOS_TOKEN, EOS_TOKEN] + ([IMAGE_TOKEN] if with_image_token else [])
    specials += DOCUMENT_TOKENS if model == "m1" else []
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
        raise ValueError(
            f"vocab_size must be at least {len(specials) + len(alphabet)} (specials plus the 256 byte tokens)"
        )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=specials,  # added as special, non-normalized tokens: single ids, never split
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)

    extra = {"image_token": IMAGE_TOKEN} if with_image_token else None
    unk = {"unk_token": DOCUMENT_TOKENS[1]} if model == "m1" else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        # No dedicated pad token exists in the released vocabulary: pad with eos (left padding + attention mask).
        pad_token=EOS_TOKEN,
        extra_special_tokens=extra,
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=named_chat_templates(model),
        response_template=RESPONSE_TEMPLATES[model],
        **unk,
    )
    return tokenizer


def special_token_ids(tokenizer) -> dict:
    """Return ``{"bos": id, "eos": id[, "image": id]}`` for a MiniMax-01-style tokenizer."""
    ids = {
        "bos": tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        "eos": tokenizer.convert_tokens_to_ids(EOS_TOKEN),
    }
    if IMAGE_TOKEN in tokenizer.get_vocab():
        ids["image"] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=positive_int, default=512)
    parser.add_argument("--model", choices=["vl", "text", "m1"], default="vl", help="whose tokens and chat format")
    args = parser.parse_args(argv)
    try:
        tokenizer = build_tiny_tokenizer(args.vocab_size, model=args.model)
    except ValueError as error:  # a vocabulary too small for the byte alphabet
        parser.error(str(error))
    tokenizer.save_pretrained(args.out_dir)
    print(f"saved {len(tokenizer)} ids to {args.out_dir}: {special_token_ids(tokenizer)}")


if __name__ == "__main__":
    main()
