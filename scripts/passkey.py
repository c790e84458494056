"""The pass-key retrieval task (one fact hidden in a long haystack) and the word-level tokenizer of the tiny
pass-key checkpoint.

A prompt is INTRO, FILLER repeated, NEEDLE, FILLER repeated, QUESTION, joined by single spaces; the needle sits
after a fraction `depth` of the filler repetitions. The answer is right when the first five digits the model
generates are the key. Lengths are counted in the tokens of the checkpoint being tested.
"""

from __future__ import annotations

import random
import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, MODEL_MAX_LENGTH

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5


def random_key(rng: random.Random) -> int:
    """A 5-digit key, 10000-99999."""
    return rng.randint(10**(KEY_DIGITS - 1), 10**KEY_DIGITS - 1)


def split_filler(repetitions: int, depth: float) -> tuple[int, int]:
    """-> (repetitions before the needle, after it): the needle goes after a fraction `depth` of them."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}; it is the fraction of the filler before the needle.")
    before = round(depth * repetitions)
    return before, repetitions - before


def passkey_text(repetitions: int, depth: float, key: int) -> str:
    before, after = split_filler(repetitions, depth)
    parts = [INTRO] + [FILLER] * before + [NEEDLE.format(key=key)] + [FILLER] * after + [QUESTION]
    return " ".join(parts)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def filler_repetitions(tokenizer, length: int) -> int:
    """How many filler repetitions bring a prompt closest to `length` tokens of this tokenizer (at least one)."""
    fixed = count_tokens(tokenizer, passkey_text(0, 0.0, 10**(KEY_DIGITS - 1)))
    per_filler = count_tokens(tokenizer, passkey_text(1, 0.0, 10**(KEY_DIGITS - 1))) - fixed
    return max(1, round((length - fixed) / per_filler))


def answer_digits(generated: str) -> str:
    """The first five digits of the generated text (fewer when it has fewer)."""
    return "".join(re.findall(r"\d", generated)[:KEY_DIGITS])


# ---- the tiny checkpoint's tokenizer: one token per word, per digit and per punctuation mark -------------------

UNK_TOKEN = "<unk>"  # bos, eos and the length limit are the tiny tokenizer's (scripts/tiny_tokenizer.py)


def _pre_tokenizer():
    # "▁word" pieces (the space is part of the word, so decoding restores the text exactly), then "." and "?"
    # alone, then every digit alone: "▁12345." -> "▁", "1", "2", "3", "4", "5", "."
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])  # fmt: skip


def build_passkey_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the task's words, the ten digits, "▁", "." and "?" (plus bos,
    eos and unk, ids 0-2). One filler repetition is 24 tokens; a key is 5 tokens after a "▁"."""
    pre = _pre_tokenizer()
    texts = [INTRO, FILLER, NEEDLE.format(key=1234567890), QUESTION]
    pieces = sorted({piece for text in texts for piece, _ in pre.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate([BOS_TOKEN, EOS_TOKEN, UNK_TOKEN] + pieces)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=EOS_TOKEN,  # as in the tiny byte-level tokenizer: left padding + attention mask
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
