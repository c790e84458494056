"""Argument types shared by the scripts' command lines: counts that must be at least 1 are refused at parse time
(`--steps 0` would otherwise time nothing, `--chunk 0` silently mean "no chunking", a negative count crash later)."""

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
