"""Import this repository's remote-code modules from scripts and tests.

The model files are Hub remote code, so they import their siblings relatively (`from .configuration_... import`).
Outside transformers' dynamic-module loader that needs a package: the repository root is registered as the
package `minimax01`, then `minimax01.modeling_minimax_text_01` etc. import normally.
"""

import importlib
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "minimax01"
# the text model's files (what a Text-01 repo ships), then VL's on top
TEXT_CODE_FILES = [
    "configuration_minimax_text_01.py",
    "modeling_minimax_text_01.py",
    "lightning_attention.py",
    "cache_minimax_text_01.py",
    "tensor_parallel_minimax_text_01.py",
    "loading_checks.py",
    "checkpoint_layouts.py",
]
REMOTE_CODE_FILES = TEXT_CODE_FILES + [
    "configuration_minimax_vl_01.py",
    "modeling_minimax_vl_01.py",
    "processing_minimax_vl_01.py",
    "image_processing_minimax_vl_01.py",
]


def load(module: str):
    """`load("modeling_minimax_text_01")` -> the module, imported as part of the package `minimax01`."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(REPO_ROOT)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{module}")
